#!/usr/bin/env python3
"""Write and submit a SLURM batch script that runs `instruct-jax train` on several GPU nodes.

    python tpu_scripts/slurm_gpu.py --nodes=2 --gpus_per_node=8 --partition=gpu \\
        --setup="source ~/venvs/instruct_jax/bin/activate" \\
        -- --gin_file=runs/finetune.gin --gin_file=models/flan_t5/base.gin \\
           --gin.MODEL_DIR="'/shared/runs/flan_t5_base'" ...

Everything after `--` goes to `instruct-jax train` exactly as typed. The script starts one
process per GPU (default) or one per node with srun, and gives every process
  --coordinator_address=<first node of the job>:<port>   (`scontrol show hostnames`)
  --num_processes=<nodes * gpus_per_node, or nodes>
  --process_id=$SLURM_PROCID
plus JAX_LOCAL_DEVICE_IDS (which GPUs the process drives), XLA_FLAGS for GPUs and your --env.
Default: write the script (--script) and `sbatch` it. --no_submit only writes it; --dry_run
prints it and writes nothing. Output of all processes, each line prefixed by its rank,
goes to LOG_DIR/<job name>-<job id>.out. Submitting the same script again resumes from the
latest MODEL_DIR/checkpoint_<step> (MODEL_DIR must be on storage every node sees).
When the trainer exits with status 75 (stopped by SIGTERM after saving a checkpoint: the
time limit's --term_before_end warning, or preemption), the script requeues its own job
(`scontrol requeue`), which resumes when SLURM starts it again; `scancel` ends it for good.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from typing import Sequence, TextIO

import train_flags

# Every flag here must exist in the installed jaxlib: XLA aborts on unknown XLA_FLAGS.
DEFAULT_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)
# jax preallocates 75% of GPU memory by default; a training job is the GPU's only user.
# tf.data (seqio) imports TensorFlow, which must not grab GPU memory if it sees the GPUs.
DEFAULT_ENV = ("XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "TF_FORCE_GPU_ALLOW_GROWTH=true")


@dataclasses.dataclass(frozen=True)
class SlurmJob:
  """Shape of the allocation and how each process is started."""
  nodes: int
  gpus_per_node: int
  process_per: str = "gpu"                  # "gpu": one process per GPU; "node": per node
  job_name: str = "instruct_jax"
  log_dir: str = "slurm_logs"
  partition: str | None = None
  account: str | None = None
  time: str | None = None                   # SLURM time limit, e.g. "24:00:00"
  cpus_per_task: int | None = None
  sbatch_options: tuple[str, ...] = ()      # extra "#SBATCH" options, e.g. "--qos=high"
  requeue: bool = False
  term_before_end: int = 300                # SIGTERM this many seconds before the time limit
  port: int | None = None                   # coordinator port; default derived from job id
  launcher: tuple[str, ...] = ("instruct-jax",)
  setup: tuple[str, ...] = ()               # shell lines run first, e.g. activating a venv
  env: tuple[str, ...] = DEFAULT_ENV        # KEY=VALUE exported to every process
  xla_flags: tuple[str, ...] = DEFAULT_XLA_FLAGS

  def __post_init__(self):
    if self.nodes < 1 or self.gpus_per_node < 1:
      raise ValueError(f"Expected --nodes >= 1 and --gpus_per_node >= 1, found "
                       f"{self.nodes} and {self.gpus_per_node}.")
    if self.process_per not in ("gpu", "node"):
      raise ValueError(f"Expected --process_per gpu or node, found {self.process_per!r}.")
    bad = [e for e in self.env if not train_flags.is_env_assignment(e)]
    if bad:
      raise ValueError(f"Expected --env KEY=VALUE (KEY a shell variable name), found {bad}.")

  @property
  def tasks_per_node(self) -> int:
    return self.gpus_per_node if self.process_per == "gpu" else 1

  @property
  def num_processes(self) -> int:
    return self.nodes * self.tasks_per_node


def train_argv(job: SlurmJob, train_args: Sequence[str]) -> list[str]:
  """What every process runs, before srun's wrapper appends --process_id=$SLURM_PROCID."""
  return [*job.launcher, "train", *train_args,
          "--coordinator_address=$COORDINATOR_ADDRESS", f"--num_processes={job.num_processes}"]


def _shell_word(arg: str) -> str:
  """Quotes arg for bash, leaving the one $COORDINATOR_ADDRESS reference expandable."""
  if arg == "--coordinator_address=$COORDINATOR_ADDRESS":
    return '--coordinator_address="$COORDINATOR_ADDRESS"'
  return train_flags.shell_quote(arg)


def sbatch_script(job: SlurmJob, train_args: Sequence[str]) -> str:
  """The batch script text; it runs on the job's first node and starts all processes."""
  directives = [f"--job-name={job.job_name}", f"--nodes={job.nodes}",
                f"--ntasks-per-node={job.tasks_per_node}", f"--gpus-per-node={job.gpus_per_node}",
                "--exclusive", f"--output={job.log_dir}/%x-%j.out", "--open-mode=append"]
  for name, value in (("partition", job.partition), ("account", job.account),
                      ("time", job.time), ("cpus-per-task", job.cpus_per_task)):
    if value is not None:
      directives.append(f"--{name}={value}")
  if job.term_before_end > 0:  # the trainer saves a checkpoint on SIGTERM, then exits
    directives.append(f"--signal=TERM@{job.term_before_end}")
  if job.requeue:
    directives.append("--requeue")
  directives += job.sbatch_options

  per = "GPU" if job.process_per == "gpu" else "node"
  lines = ["#!/bin/bash"]
  if job.setup:
    lines.append("# shellcheck disable=SC1090,SC1091  # --setup lines may source any file")
  lines += [f"# instruct-jax train on {job.nodes} node(s) x {job.gpus_per_node} GPU(s), one "
           f"process per {per}: {job.num_processes} processes. Written by tpu_scripts/slurm_gpu.py."]
  lines += [f"#SBATCH {d}" for d in directives]
  lines += ["set -euo pipefail", ""]
  if job.setup:
    lines += ["# Setup given with --setup.", *job.setup, ""]
  port = str(job.port) if job.port else "$((20000 + SLURM_JOB_ID % 20000))"
  lines += [
      "# Process 0 hosts the jax.distributed coordinator on the job's first node. (No",
      "# `| head -n1`: under pipefail, scontrol dying of SIGPIPE would end the job.)",
      'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
      'COORDINATOR_HOST="${NODES[0]}"',
      f'COORDINATOR_PORT="${{COORDINATOR_PORT:-{port}}}"',
      'export COORDINATOR_ADDRESS="$COORDINATOR_HOST:$COORDINATOR_PORT"',
      "",
      "# GPU settings: XLA flags (yours, already in XLA_FLAGS, come last and win) and env.",
      f'export XLA_FLAGS="{" ".join(job.xla_flags)}${{XLA_FLAGS:+ $XLA_FLAGS}}"',
  ]
  for assignment in job.env:
    key, value = assignment.split("=", 1)
    lines.append(f"export {key}={shlex.quote(value)}")
  if job.process_per == "node":
    all_gpus = ",".join(str(i) for i in range(job.gpus_per_node))
    lines += ["# One process per node drives all of the node's GPUs.",
              f"export JAX_LOCAL_DEVICE_IDS={all_gpus}"]
    per_task = 'exec "$@" --process_id="$SLURM_PROCID"'
  else:
    lines += ["# One process per GPU: task k on a node drives that node's GPU k (unless",
              "# JAX_LOCAL_DEVICE_IDS is set, e.g. to 0 where SLURM shows each task one GPU)."]
    per_task = ('export JAX_LOCAL_DEVICE_IDS="${JAX_LOCAL_DEVICE_IDS:-$SLURM_LOCALID}"; '
                'exec "$@" --process_id="$SLURM_PROCID"')
  lines += ["", "TRAIN_CMD=("]
  lines += [f"  {_shell_word(arg)}" for arg in train_argv(job, train_args)]
  lines += [")", "",
            f'echo "instruct-jax: {job.num_processes} processes, coordinator $COORDINATOR_ADDRESS"',
            "# srun starts the tasks; each appends its own rank to TRAIN_CMD.",
            "status=0",
            "# shellcheck disable=SC2016  # $SLURM_* expand in each task, not here",
            f"srun --label --kill-on-bad-exit=1 bash -c {shlex.quote(per_task)} "
            'instruct-jax-task "${TRAIN_CMD[@]}" || status=$?',
            "",
            f"# {train_flags.EXIT_STOPPED}: stopped by SIGTERM (time limit, preemption) after "
            "saving a checkpoint;",
            "# requeued, the job resumes from it. Any other status is the job's.",
            f'if [ "$status" -eq {train_flags.EXIT_STOPPED} ]; then',
            '  if scontrol requeue "$SLURM_JOB_ID"; then',
            '    echo "instruct-jax: stopped after saving a checkpoint; requeued job '
            '$SLURM_JOB_ID, it resumes when it starts again."',
            "    exit 0",
            "  fi",
            '  echo "instruct-jax: stopped after saving a checkpoint, but job $SLURM_JOB_ID '
            'could not be requeued; submit the same script again with sbatch to resume." >&2',
            "fi",
            'exit "$status"', ""]
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="slurm_gpu.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus_per_node", type=int, required=True)
  parser.add_argument("--process_per", choices=("gpu", "node"), default="gpu",
                      help="one process per GPU (default) or one per node")
  parser.add_argument("--job_name", default="instruct_jax")
  parser.add_argument("--partition")
  parser.add_argument("--account")
  parser.add_argument("--time", help='SLURM time limit, e.g. "24:00:00"')
  parser.add_argument("--cpus_per_task", type=int)
  parser.add_argument("--sbatch_option", action="append", default=[],
                      help='extra #SBATCH option, e.g. "--qos=high" (repeatable)')
  parser.add_argument("--requeue", action="store_true",
                      help="let SLURM requeue the job after preemption; it resumes")
  parser.add_argument("--term_before_end", type=int, default=300, metavar="SECONDS",
                      help="SIGTERM the processes this long before the time limit, so the "
                      "trainer can save a checkpoint (0: don't)")
  parser.add_argument("--port", type=int, help="coordinator port (default: from job id)")
  parser.add_argument("--launcher", default="instruct-jax",
                      help='command before "train", e.g. "python -m instruct_jax"')
  parser.add_argument("--setup", action="append", default=[],
                      help='shell line run first, e.g. "source venv/bin/activate" (repeatable)')
  parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                      help="exported to every process, e.g. NCCL_SOCKET_IFNAME=ib0 (repeatable)")
  parser.add_argument("--xla_flag", action="append", default=[],
                      help="extra XLA flag, added to the defaults (repeatable)")
  parser.add_argument("--log_dir", default="slurm_logs")
  parser.add_argument("--script", default="instruct_jax_train.sbatch",
                      help="where to write the batch script")
  parser.add_argument("--no_submit", action="store_true", help="write the script, don't sbatch")
  parser.add_argument("--dry_run", "--dry-run", action="store_true",
                      help="print the script and the sbatch command; write nothing")
  return parser


def job_from_args(args: argparse.Namespace) -> SlurmJob:
  return SlurmJob(
      nodes=args.nodes, gpus_per_node=args.gpus_per_node, process_per=args.process_per,
      job_name=args.job_name, log_dir=args.log_dir, partition=args.partition,
      account=args.account, time=args.time, cpus_per_task=args.cpus_per_task,
      sbatch_options=tuple(args.sbatch_option), requeue=args.requeue,
      term_before_end=args.term_before_end, port=args.port,
      launcher=tuple(shlex.split(args.launcher)), setup=tuple(args.setup),
      env=DEFAULT_ENV + tuple(args.env), xla_flags=DEFAULT_XLA_FLAGS + tuple(args.xla_flag))


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
  own_args, train_args = train_flags.split_at_double_dash(
      sys.argv[1:] if argv is None else argv)
  parser = _parser()
  args = parser.parse_args(own_args)
  try:
    train_flags.check_train_args(train_args)
    job = job_from_args(args)
  except ValueError as e:
    parser.error(str(e))
  script = sbatch_script(job, train_args)
  submit = ["sbatch", args.script]
  if args.dry_run:
    print(script, file=out)
    print(f"# then: mkdir -p {shlex.quote(job.log_dir)} && {shlex.join(submit)}", file=out)
    return 0
  os.makedirs(job.log_dir, exist_ok=True)  # SLURM does not create the --output directory
  with open(args.script, "w", encoding="utf-8") as f:
    f.write(script)
  print(f"Wrote {args.script}; logs go to {job.log_dir}/{job.job_name}-<job id>.out",
        file=sys.stderr)
  if args.no_submit:
    return 0
  print(f"+ {shlex.join(submit)}", file=sys.stderr)
  return subprocess.run(submit, check=False).returncode


if __name__ == "__main__":
  sys.exit(main())
