#!/usr/bin/env python3
"""Run `instruct-jax train` on a Cloud TPU VM or pod slice, one gcloud command per step.

    python tpu_scripts/tpu_pod.py up --name=my-tpu --zone=us-central2-b \\
        --accelerator_type=v4-32 --spot --git_url=https://github.com/ORG/instruct_jax \\
        -- --gin_file=runs/finetune.gin --gin_file=models/flan_t5/base.gin \\
           --gin.MODEL_DIR="'gs://BUCKET/flan_t5_base'" ...

Subcommands: create, install, train, logs, stop, status, delete, and up (= create, install,
train). Everything after `--` goes to `instruct-jax train` on every worker exactly as typed
(gin string values need their own inner quotes). --dry_run prints the gcloud commands, one
per line and ready to paste into a shell, instead of running them.

On each worker (paths relative to the remote home directory):
  instruct_jax_venv/       Python 3.11 virtualenv holding instruct_jax[tpu] (made with uv)
  instruct_jax_train.log   stdout+stderr of every launch, appended
  instruct_jax_train.pid   process group of the running trainer (used by `stop` and `logs`)
  instruct_jax_train.status  exit status of the last trainer, once it has exited
Checkpoints go to MODEL_DIR/checkpoint_<step> on gs://; launching the same train command
again (after a crash, or after recreating a preempted spot VM) resumes from the latest one.
Following the log (`train`, `up`, `logs`) ends with worker 0's trainer and exits with its
status: 0 finished, 75 stopped by SIGTERM after saving a checkpoint (preempted, or `stop`:
run the same `train` / `up` command again to resume; tpu_pod.py exits 75 too), else failed.
No coordinator flags are passed: on a TPU VM, jax.distributed.initialize() finds the other
hosts itself, one process per host.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import tarfile
from typing import NamedTuple, Sequence, TextIO

import train_flags

VENV = "instruct_jax_venv"
LOG_FILE = "instruct_jax_train.log"
PID_FILE = "instruct_jax_train.pid"
STATUS_FILE = "instruct_jax_train.status"
REMOTE_TARBALL = "instruct_jax.tar.gz"
REMOTE_SOURCE_DIR = "instruct_jax_src"

# Runtime images per TPU generation (see `gcloud compute tpus tpu-vm versions list`).
_RUNTIME_BY_TYPE_PREFIX = (
    ("v6e", "v2-alpha-tpuv6e"),
    ("v5litepod", "v2-alpha-tpuv5-lite"),
    ("v5p", "v2-alpha-tpuv5"),
    ("v4", "tpu-ubuntu2204-base"),
    ("v3", "tpu-ubuntu2204-base"),
    ("v2", "tpu-ubuntu2204-base"),
)


@dataclasses.dataclass(frozen=True)
class Tpu:
  """Which TPU VM the gcloud commands address."""
  name: str
  zone: str
  project: str | None = None

  def gcloud(self, verb: str, *flags: str) -> list[str]:
    """`gcloud compute tpus tpu-vm VERB NAME --zone=... [--project=...] FLAGS`."""
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, self.name, *self._location(), *flags]

  def ssh(self, remote_command: str, worker: str = "all", *flags: str) -> list[str]:
    """Runs one shell command line on the given workers ("all", "0", "1-3", ...)."""
    return self.gcloud("ssh", f"--worker={worker}", f"--command={remote_command}", *flags)

  def scp_to_workers(self, local_path: str, remote_path: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local_path,
            f"{self.name}:{remote_path}", *self._location(), "--worker=all"]

  def _location(self) -> list[str]:
    flags = [f"--zone={self.zone}"]
    if self.project:
      flags.append(f"--project={self.project}")
    return flags


class Step(NamedTuple):
  """One local command; `may_fail` steps (deleting a VM that may be gone) don't stop the run.

  `trainer_status` steps exit with the trainer's status, so EXIT_STOPPED there means
  "stopped after checkpointing, relaunch to resume" rather than a failure.
  """
  description: str
  argv: list[str]
  may_fail: bool = False
  trainer_status: bool = False


def default_runtime_version(accelerator_type: str) -> str:
  for prefix, version in _RUNTIME_BY_TYPE_PREFIX:
    if accelerator_type.startswith(prefix + "-"):
      return version
  raise ValueError(
      f"No default runtime version for accelerator type {accelerator_type!r} (expected "
      f"one starting with {', '.join(p for p, _ in _RUNTIME_BY_TYPE_PREFIX)}). Pass "
      f"--runtime_version; `gcloud compute tpus tpu-vm versions list --zone=ZONE` lists them.")


def create_command(tpu: Tpu, accelerator_type: str, runtime_version: str | None = None,
                   spot: bool = False, preemptible: bool = False) -> list[str]:
  if spot and preemptible:
    raise ValueError("Pass either --spot or --preemptible, not both (spot is the newer kind).")
  flags = [f"--accelerator-type={accelerator_type}",
           f"--version={runtime_version or default_runtime_version(accelerator_type)}"]
  if spot:
    flags.append("--spot")
  if preemptible:
    flags.append("--preemptible")
  return tpu.gcloud("create", *flags)


def install_script(requirement: str, unpack_tarball: bool = False,
                   python_version: str = "3.11") -> str:
  """Remote shell line that puts `requirement` into a fresh-or-existing venv on a worker.

  TPU runtime images ship an older system Python than the package needs, so uv (from PyPI,
  or its installer where pip --user is not allowed) provides a managed Python in a venv.
  """
  steps = [
      "set -e",
      'export PATH="$HOME/.local/bin:$PATH"',
      "command -v uv >/dev/null || python3 -m pip install --user --quiet uv "
      "|| curl -LsSf https://astral.sh/uv/install.sh | sh",
  ]
  if unpack_tarball:
    steps += [f"rm -rf {REMOTE_SOURCE_DIR}", f"mkdir {REMOTE_SOURCE_DIR}",
              f"tar -xzf {REMOTE_TARBALL} -C {REMOTE_SOURCE_DIR} --strip-components=1"]
  steps += [
      f"uv venv --python {shlex.quote(python_version)} --seed --allow-existing {VENV}",
      f"uv pip install --python {VENV}/bin/python --reinstall-package instruct_jax "
      f"{shlex.quote(requirement)}",
      f"{VENV}/bin/python -c {shlex.quote(_INSTALL_CHECK)}",
  ]
  return "; ".join(steps)


_INSTALL_CHECK = ('import socket, instruct_jax, jax; '
                  'print(socket.gethostname(), "has instruct_jax; jax", jax.__version__)')


def check_tarball(path: str) -> None:
  """The tarball must unpack to one top-level directory holding setup.py (sdist layout)."""
  if not os.path.isfile(path):
    raise ValueError(f"Expected a source tarball at {path}, found no such file.")
  with tarfile.open(path, "r:*") as tar:
    names = [n for n in tar.getnames() if n not in ("", ".")]
  tops = {n.lstrip("./").split("/", 1)[0] for n in names}
  has_setup = any(n.lstrip("./").count("/") == 1 and n.endswith("/setup.py") for n in names)
  if len(tops) != 1 or not has_setup:
    raise ValueError(
        f"Expected {path} to hold one top-level directory with setup.py inside, found "
        f"top-level entries {sorted(tops)[:5]}. Make it with\n"
        f"  git archive --format=tar.gz --prefix=instruct_jax/ -o {path} HEAD\n"
        f"or `python -m build --sdist`.")


def install_steps(tpu: Tpu, git_url: str | None = None, git_ref: str = "main",
                  tarball: str | None = None, extra: str = "tpu",
                  python_version: str = "3.11") -> list[Step]:
  """Installs instruct_jax[extra] on every worker, from a git ref or from a local tarball."""
  if (git_url is None) == (tarball is None):
    raise ValueError("Expected exactly one source to install from: --git_url (with "
                     "--git_ref) or --tarball.")
  if tarball is not None:
    script = install_script(f"./{REMOTE_SOURCE_DIR}[{extra}]", unpack_tarball=True,
                            python_version=python_version)
    return [Step("copy the source tarball to every worker",
                 tpu.scp_to_workers(tarball, REMOTE_TARBALL)),
            Step(f"install instruct_jax[{extra}] from it on every worker", tpu.ssh(script))]
  requirement = f"instruct_jax[{extra}] @ git+{git_url}@{git_ref}"
  script = install_script(requirement, python_version=python_version)
  return [Step(f"install instruct_jax[{extra}] from {git_url}@{git_ref} on every worker",
               tpu.ssh(script))]


def train_argv(train_args: Sequence[str], env: Sequence[str] = ()) -> list[str]:
  """The argv every worker runs: `[env K=V ...] instruct_jax_venv/bin/instruct-jax train ...`."""
  for assignment in env:
    if not train_flags.is_env_assignment(assignment):
      raise ValueError(f"Expected --env KEY=VALUE (KEY a shell variable name), found "
                       f"{assignment!r}.")
  prefix = ["env", *env] if env else []
  return [*prefix, f"{VENV}/bin/instruct-jax", "train", *train_args]


def launch_script(argv: Sequence[str]) -> str:
  """Remote shell line that starts `argv` detached, so closing the ssh session doesn't end it.

  setsid gives the trainer its own process group (its pid is the group id `stop` signals);
  all output is appended to LOG_FILE. A small sh wrapper, the group leader, writes the
  trainer's exit status to STATUS_FILE (its `trap :` lets it outlive the SIGTERM of `stop`
  and record the 75 of a trainer that checkpointed; a trapped signal is reset to the
  default in the trainer). A worker that still runs a trainer refuses to start a second one, which
  would fail anyway because the TPU chips are taken.
  """
  wrapper = f'trap : TERM; "$@"; echo $? > {STATUS_FILE}'
  return (
      f'if [ -f {PID_FILE} ] && kill -0 "$(cat {PID_FILE})" 2>/dev/null; then '
      f"echo \"$(hostname): instruct-jax train is still running (pid $(cat {PID_FILE})); "
      f"stop it first with: tpu_pod.py stop\" >&2; exit 1; fi; "
      f"rm -f {STATUS_FILE}; "
      f'echo "=== $(date -u) launching on $(hostname)" >> {LOG_FILE}; '
      f"setsid nohup sh -c {shlex.quote(wrapper)} instruct-jax-train "
      f"{train_flags.shell_join(argv)} >> {LOG_FILE} 2>&1 < /dev/null & "
      f"echo $! > {PID_FILE}")


def train_command(tpu: Tpu, train_args: Sequence[str], env: Sequence[str] = ()) -> list[str]:
  return tpu.ssh(launch_script(train_argv(train_args, env)))


def follow_log_command(tpu: Tpu, worker: str = "0") -> list[str]:
  """Streams a worker's log until its trainer exits, then exits with the trainer's status.

  (Ctrl-C stops following, not training.)
  """
  return tpu.ssh(f"pid=$(cat {PID_FILE} 2>/dev/null); "
                 f"tail -n 50 -F ${{pid:+--pid=$pid}} {LOG_FILE}; "
                 f"if [ -f {STATUS_FILE} ]; then status=$(cat {STATUS_FILE}); "
                 f'echo "=== $(hostname): instruct-jax train exited with status $status"; '
                 f'exit "$status"; fi', worker)


def fetch_logs_command(tpu: Tpu, out_dir: str) -> list[str]:
  """Copies every worker's whole log into OUT_DIR/<worker>.log (gcloud names the files)."""
  return tpu.ssh(f"cat {LOG_FILE}", "all", f"--output-directory={out_dir}")


def stop_command(tpu: Tpu) -> list[str]:
  """SIGTERM to each worker's trainer process group, so it can finish writing a checkpoint."""
  return tpu.ssh(f'kill -s TERM -- "-$(cat {PID_FILE})"')


def status_command(tpu: Tpu) -> list[str]:
  """READY, PREEMPTED, ... A preempted spot/preemptible VM must be deleted and created again."""
  return tpu.gcloud("describe", "--format=value(state)")


def delete_command(tpu: Tpu) -> list[str]:
  return tpu.gcloud("delete", "--quiet")


def run_steps(steps: Sequence[Step], dry_run: bool, out: TextIO = sys.stdout) -> int:
  """Prints each step; unless dry_run, runs it and stops at the first failure."""
  for step in steps:
    line = shlex.join(step.argv)
    if dry_run:
      print(f"# {step.description}\n{line}", file=out)
      continue
    print(f"# {step.description}\n+ {line}", file=sys.stderr, flush=True)
    try:
      returncode = subprocess.run(step.argv, check=False).returncode
    except KeyboardInterrupt:
      print("\nInterrupted. A launched trainer keeps running on the TPU; see it with "
            "`tpu_pod.py logs`, end it with `tpu_pod.py stop`.", file=sys.stderr)
      return 130
    if returncode == train_flags.EXIT_STOPPED and step.trainer_status:
      print("instruct-jax train was stopped by SIGTERM (preemption or `tpu_pod.py stop`) "
            "after saving a checkpoint. Run the same `tpu_pod.py train` command again to "
            "resume (or `tpu_pod.py up --recreate` if the VM was preempted).", file=sys.stderr)
      return returncode
    if returncode != 0 and not step.may_fail:
      print(f"Step failed with exit code {returncode}: {step.description}", file=sys.stderr)
      return returncode
  return 0


def _parser() -> argparse.ArgumentParser:
  where = argparse.ArgumentParser(add_help=False)
  where.add_argument("--name", required=True, help="TPU VM name")
  where.add_argument("--zone", required=True, help="e.g. us-central2-b")
  where.add_argument("--project", help="GCP project (default: gcloud's configured one)")
  where.add_argument("--dry_run", "--dry-run", action="store_true",
                     help="print the gcloud commands instead of running them")

  create = argparse.ArgumentParser(add_help=False)
  create.add_argument("--accelerator_type", required=True, help="e.g. v4-32, v5litepod-16")
  create.add_argument("--runtime_version",
                      help="TPU software version (default: the usual one for the type)")
  kind = create.add_mutually_exclusive_group()
  kind.add_argument("--spot", action="store_true", help="spot VM: cheap, may be preempted")
  kind.add_argument("--preemptible", action="store_true", help="older preemptible VM")

  install = argparse.ArgumentParser(add_help=False)
  source = install.add_mutually_exclusive_group(required=True)
  source.add_argument("--git_url", help="repository to pip-install from")
  source.add_argument("--tarball", help="local source tarball to copy to every worker")
  install.add_argument("--git_ref", default="main", help="branch, tag or commit of --git_url")
  install.add_argument("--extra", default="tpu", help="package extra to install")
  install.add_argument("--python_version", default="3.11")

  train = argparse.ArgumentParser(add_help=False)
  train.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="environment variable for the trainer (repeatable)")
  train.add_argument("--no_follow", action="store_true",
                     help="don't stream worker 0's log after launching")

  parser = argparse.ArgumentParser(
      prog="tpu_pod.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("create", parents=[where, create], help="create the TPU VM / pod slice")
  sub.add_parser("install", parents=[where, install], help="install instruct_jax on all workers")
  after_dashes = ("Flags after -- go to `instruct-jax train` on every worker unchanged, e.g.\n"
                  "  -- --gin_file=runs/finetune.gin --gin.MODEL_DIR=\"'gs://BUCKET/run'\"")
  sub.add_parser("train", parents=[where, train], epilog=after_dashes,
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 help="launch `instruct-jax train` on all workers (flags after --)")
  logs = sub.add_parser("logs", parents=[where], help="stream or fetch the training logs")
  logs.add_argument("--worker", default="0", help='worker(s) to stream: "0", "all", "1-3"')
  logs.add_argument("--fetch", metavar="DIR",
                    help="instead of streaming, copy every worker's log to DIR/<worker>.log")
  sub.add_parser("stop", parents=[where], help="SIGTERM the trainer on all workers")
  sub.add_parser("status", parents=[where], help="print the VM state (READY, PREEMPTED, ...)")
  sub.add_parser("delete", parents=[where], help="delete the TPU VM")
  up = sub.add_parser("up", aliases=["all"], parents=[where, create, install, train],
                      epilog=after_dashes, formatter_class=argparse.RawDescriptionHelpFormatter,
                      help="create + install + train (+ stream the log)")
  up.add_argument("--recreate", action="store_true",
                  help="delete the VM first (e.g. after preemption); its gs:// run resumes")
  return parser


def plan(args: argparse.Namespace, train_args: Sequence[str]) -> list[Step]:
  """The steps a parsed command line stands for."""
  tpu = Tpu(args.name, args.zone, args.project)
  command = "up" if args.command == "all" else args.command
  steps = []
  if command == "up" and args.recreate:
    steps.append(Step("delete the old VM (fails harmlessly if it is gone)",
                      delete_command(tpu), may_fail=True))
  if command in ("create", "up"):
    steps.append(Step(f"create {args.accelerator_type} TPU VM {tpu.name}", create_command(
        tpu, args.accelerator_type, args.runtime_version, args.spot, args.preemptible)))
  if command in ("install", "up"):
    steps += install_steps(tpu, args.git_url, args.git_ref, args.tarball, args.extra,
                           args.python_version)
  if command in ("train", "up"):
    train_flags.check_train_args(train_args, model_dir_prefix="gs://")
    steps.append(Step("launch instruct-jax train on every worker",
                      train_command(tpu, train_args, args.env)))
    if not args.no_follow:
      steps.append(Step("stream worker 0's log (Ctrl-C stops following, not training)",
                        follow_log_command(tpu), trainer_status=True))
  if command == "logs":
    if args.fetch:
      steps.append(Step(f"copy every worker's log into {args.fetch}/",
                        fetch_logs_command(tpu, args.fetch)))
    else:
      steps.append(Step(f"stream the log of worker {args.worker}",
                        follow_log_command(tpu, args.worker), trainer_status=True))
  if command == "stop":
    steps.append(Step("stop the trainer on every worker", stop_command(tpu)))
  if command == "status":
    steps.append(Step("print the VM state", status_command(tpu)))
  if command == "delete":
    steps.append(Step(f"delete TPU VM {tpu.name}", delete_command(tpu)))
  return steps


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
  own_args, train_args = train_flags.split_at_double_dash(
      sys.argv[1:] if argv is None else argv)
  parser = _parser()
  args = parser.parse_args(own_args)
  if train_args and args.command not in ("train", "up", "all"):
    parser.error(f"flags after -- are for `train` and `up`, not `{args.command}`")
  try:
    steps = plan(args, train_args)
    tarball = getattr(args, "tarball", None)
    if tarball and (not args.dry_run or os.path.exists(tarball)):
      check_tarball(tarball)
  except ValueError as e:
    parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")
  if getattr(args, "fetch", None) and not args.dry_run:
    os.makedirs(args.fetch, exist_ok=True)  # gcloud wants the directory to exist
  return run_steps(steps, args.dry_run, out)


if __name__ == "__main__":
  sys.exit(main())
