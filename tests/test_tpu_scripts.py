"""Tests for the launchers in tpu_scripts/ (TPU pods via gcloud, GPU clusters via SLURM).

No cloud and no cluster: dry-run output is parsed back with shlex, and the remote / batch
shell code is executed for real by a local shell against fake gcloud, uv, srun, scontrol and
instruct-jax programs that record what they were given.
"""
import ctypes
import io
import json
import os
import pathlib
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "tpu_scripts"
sys.path.insert(0, str(SCRIPTS))

import slurm_gpu  # noqa: E402
import tpu_pod  # noqa: E402
import train_flags  # noqa: E402

WHERE = ["--name=my-tpu", "--zone=us-central2-b"]
TRAIN_ARGS = [
    "--gin_file=runs/finetune.gin",
    "--gin_file=models/flan_t5/base.gin",
    "--gin.MODEL_DIR='gs://my-bucket/flan t5/run 1'",
    "--gin.MIXTURE_OR_TASK_NAME=\"it's_a_mixture\"",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 128}",
    "--gin.TRAIN_STEPS=1000",
    "--gin.INITIAL_CHECKPOINT_PATH='gs://t5-data/pretrained_models/t5x/flan_t5_base/checkpoint_1184000'",
    "--gin.PROMPT='costs $5 `not run` \\\\ done'",
    "--gin_search_paths=my configs",
]
SHELLS = [s for s in ("sh", "bash") if subprocess.run(["which", s], capture_output=True).returncode == 0]


# ---------------------------------------------------------------- helpers

def dry_run(main, argv):
  """Runs a launcher's main with --dry_run (before any `--`); returns what it printed."""
  argv = list(argv)
  argv.insert(argv.index("--") if "--" in argv else len(argv), "--dry_run")
  out = io.StringIO()
  assert main(argv, out=out) == 0
  return out.getvalue()


def commands(text):
  """Printed gcloud lines -> argv lists, as a shell would split them."""
  return [shlex.split(line) for line in text.splitlines() if line and not line.startswith("#")]


def shell_words(line):
  """Splits a shell line into words and operators (;, &&, >>, |, &) the way sh does."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  return list(lexer)


def flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def write_program(path, body):
  """A fake command: a Python script with this interpreter, made executable."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f"#!{sys.executable}\n{body}")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


FAKE_TRAINER = """\
import json, os, sys, time
print("trainer started", flush=True)
record = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in
          ("JAX_LOCAL_DEVICE_IDS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "NCCL_DEBUG",
           "TF_FORCE_GPU_ALLOW_GROWTH",
           "TFDS_DATA_DIR", "COORDINATOR_ADDRESS")}}
rank = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--process_id=")]
name = "argv%s.json" % (rank[0] if rank else "")
with open(os.path.join(os.environ["RECORD_DIR"], name + ".tmp"), "w") as f:
  json.dump(record, f)
os.replace(os.path.join(os.environ["RECORD_DIR"], name + ".tmp"),
           os.path.join(os.environ["RECORD_DIR"], name))
if os.environ.get("FAKE_TRAINER_SLEEP"):
  time.sleep(float(os.environ["FAKE_TRAINER_SLEEP"]))
sys.exit(int(os.environ.get("FAKE_TRAINER_EXIT", "0")))
"""


def wait_for(predicate, what, timeout=60.0):
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


def is_alive(pid):
  """False once pid has exited; reaps it when it is our (adopted) child."""
  try:
    if os.waitpid(pid, os.WNOHANG)[0] == pid:
      return False
  except ChildProcessError:
    pass
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


# ---------------------------------------------------------------- train_flags

@pytest.mark.parametrize("word", [
    "plain", "--gin.X='a b'", "it's", 'say "hi"', "$HOME", "`date`", "back\\slash", "bang!",
    "new\nline", "tab\tand space", "{'inputs': 512}", "", "ünïcode 'ok'", "'", '"'])
def test_shell_quote_round_trips_through_shlex_and_real_shells(word):
  assert shlex.split(train_flags.shell_quote(word)) == [word]
  for shell in SHELLS:
    out = subprocess.run([shell, "-c", "printf '%s\\0' " + train_flags.shell_join([word, "x"])],
                         capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == [word, "x"]


def test_shell_quote_prefers_readable_double_quotes_for_gin_strings():
  assert train_flags.shell_quote("--gin.MODEL_DIR='gs://b/run'") == "\"--gin.MODEL_DIR='gs://b/run'\""
  assert train_flags.shell_quote("--gin.TRAIN_STEPS=10") == "--gin.TRAIN_STEPS=10"


def test_gin_string_helpers():
  assert train_flags.gin_string("gs://b/it's") == '"gs://b/it\'s"'
  assert train_flags.parse_gin_string(train_flags.gin_string("gs://b/it's")) == "gs://b/it's"
  assert train_flags.parse_gin_string("gs://b/run") is None
  assert train_flags.parse_gin_string("123") is None
  assert train_flags.gin_overrides(["--gin.A=1", "--gin_file=f", "--gin.A='x=y'"]) == {"A": "'x=y'"}


@pytest.mark.parametrize("args, message", [
    ([], "after `--`"),
    (["--gin.MODEL_DIR=gs://b/run"], "need their own quotes"),
    (["--gin.INITIAL_CHECKPOINT_PATH=/ckpt", "--gin.MODEL_DIR='gs://b'"], "need their own quotes"),
    (["--gin_file=f.gin"], "found no MODEL_DIR"),
    (["--gin.MODEL_DIR='/local/run'"], "Expected MODEL_DIR on gs://"),
    (["--gin.MODEL_DIR=None"], "Expected MODEL_DIR on gs://"),
    (["--gin.MODEL_DIR='gs://b'", "--process_id=0"], "Remove --process_id"),
])
def test_check_train_args_rejects_costly_mistakes(args, message):
  with pytest.raises(ValueError, match=message):
    train_flags.check_train_args(args, model_dir_prefix="gs://")


def test_check_train_args_accepts_good_flags():
  train_flags.check_train_args(TRAIN_ARGS, model_dir_prefix="gs://")
  train_flags.check_train_args(["--gin.MODEL_DIR='/shared/run'"])  # SLURM: any shared path


# ---------------------------------------------------------------- tpu_pod: dry-run output

@pytest.fixture(autouse=True)
def _no_real_commands(monkeypatch):
  """Dry runs must not execute anything; tests that want execution put fakes on PATH."""
  real_run = subprocess.run

  def guarded(argv, *a, **k):
    if argv and argv[0] in ("gcloud", "sbatch") and not os.environ.get("FAKE_BIN_ON_PATH"):
      raise AssertionError(f"tried to run {argv}")
    return real_run(argv, *a, **k)
  monkeypatch.setattr(subprocess, "run", guarded)


def test_create_commands_for_spot_preemptible_and_runtime_defaults():
  [spot] = commands(dry_run(tpu_pod.main, ["create", *WHERE, "--accelerator_type=v4-32", "--spot",
                                           "--project=my-proj"]))
  assert spot[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
  assert flag(spot, "--zone") == "us-central2-b"
  assert flag(spot, "--project") == "my-proj"
  assert flag(spot, "--accelerator-type") == "v4-32"
  assert flag(spot, "--version") == "tpu-ubuntu2204-base"
  assert "--spot" in spot and "--preemptible" not in spot

  [pre] = commands(dry_run(tpu_pod.main, ["create", *WHERE, "--accelerator_type=v5litepod-16",
                                          "--preemptible"]))
  assert "--preemptible" in pre and "--spot" not in pre
  assert flag(pre, "--version") == "v2-alpha-tpuv5-lite"
  assert not any(a.startswith("--project") for a in pre)

  [plain] = commands(dry_run(tpu_pod.main, ["create", *WHERE, "--accelerator_type=v6e-64",
                                            "--runtime_version=my-runtime"]))
  assert flag(plain, "--version") == "my-runtime"
  assert "--spot" not in plain and "--preemptible" not in plain

  assert tpu_pod.default_runtime_version("v5p-128") == "v2-alpha-tpuv5"
  assert tpu_pod.default_runtime_version("v6e-8") == "v2-alpha-tpuv6e"
  with pytest.raises(ValueError, match="--runtime_version"):
    tpu_pod.default_runtime_version("v9x-8")


def test_spot_and_preemptible_are_exclusive():
  with pytest.raises(SystemExit):
    tpu_pod.main(["create", *WHERE, "--accelerator_type=v4-8", "--spot", "--preemptible",
                  "--dry_run"], out=io.StringIO())
  with pytest.raises(ValueError, match="not both"):
    tpu_pod.create_command(tpu_pod.Tpu("t", "z"), "v4-8", spot=True, preemptible=True)


def test_install_from_git_ref_runs_on_all_workers_without_copying():
  [ssh] = commands(dry_run(tpu_pod.main, ["install", *WHERE, "--git_url=https://github.com/o/r",
                                          "--git_ref=v1.2"]))
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in ssh
  remote = shell_words(flag(ssh, "--command"))
  assert "instruct_jax[tpu] @ git+https://github.com/o/r@v1.2" in remote
  assert "--reinstall-package" in remote and "--allow-existing" in remote
  assert remote[remote.index("--python") + 1] == "3.11"


def test_install_from_tarball_copies_to_all_workers_first():
  scp, ssh = commands(dry_run(tpu_pod.main, ["install", *WHERE, "--tarball=dist/my src.tar.gz"]))
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5:7] == ["dist/my src.tar.gz", "my-tpu:instruct_jax.tar.gz"]
  assert "--worker=all" in scp and "--worker=all" in ssh
  remote = flag(ssh, "--command")
  assert "tar -xzf instruct_jax.tar.gz -C instruct_jax_src --strip-components=1" in remote
  assert "./instruct_jax_src[tpu]" in shell_words(remote)


def test_install_needs_exactly_one_source():
  with pytest.raises(SystemExit):
    tpu_pod.main(["install", *WHERE, "--dry_run"], out=io.StringIO())
  with pytest.raises(SystemExit):
    tpu_pod.main(["install", *WHERE, "--git_url=u", "--tarball=t", "--dry_run"], out=io.StringIO())


def launched_argv(remote):
  """The argv the status-recording `sh -c WRAPPER NAME` runs in a launch line."""
  words = shell_words(remote)
  start = words.index("nohup", words.index("setsid")) + 1
  assert words[start:start + 2] == ["sh", "-c"], words[start:]
  return words[start + 4:words.index(">>", start)]


def test_train_runs_exact_argv_on_all_workers_then_follows_worker_0():
  text = dry_run(tpu_pod.main, ["train", *WHERE, "--env", "TFDS_DATA_DIR=gs://b/tf ds",
                                "--", *TRAIN_ARGS])
  launch, follow = commands(text)
  assert launch[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in launch
  assert launched_argv(flag(launch, "--command")) == [
      "env", "TFDS_DATA_DIR=gs://b/tf ds", "instruct_jax_venv/bin/instruct-jax", "train",
      *TRAIN_ARGS]
  assert tpu_pod.train_argv(TRAIN_ARGS) == ["instruct_jax_venv/bin/instruct-jax", "train",
                                            *TRAIN_ARGS]
  # No coordinator flags on a TPU VM: jax.distributed.initialize() auto-detects the hosts.
  assert not any(a.startswith(train_flags.DISTRIBUTED_FLAGS) for a in launched_argv(
      flag(launch, "--command")))
  assert "--worker=0" in follow and "tail" in flag(follow, "--command")

  [launch_only] = commands(dry_run(tpu_pod.main, ["train", *WHERE, "--no_follow", "--", *TRAIN_ARGS]))
  assert launched_argv(flag(launch_only, "--command"))[2:] == TRAIN_ARGS


def test_train_refuses_bad_flags_before_touching_the_cloud(capsys):
  for args in (["--gin.MODEL_DIR=gs://b/unquoted"], ["--gin_file=f.gin"],
               ["--gin.MODEL_DIR='gs://b'", "--num_processes=4"]):
    with pytest.raises(SystemExit) as e:
      tpu_pod.main(["train", *WHERE, "--dry_run", "--", *args], out=io.StringIO())
    assert e.value.code == 2
  assert "tpu_pod.py train: error" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    tpu_pod.main(["train", *WHERE, "--dry_run", "--env", "1BAD=x", "--", *TRAIN_ARGS[:3]])
  with pytest.raises(SystemExit):  # train flags only make sense for train / up
    tpu_pod.main(["delete", *WHERE, "--dry_run", "--", *TRAIN_ARGS])


def test_logs_stop_status_delete_commands():
  [follow] = commands(dry_run(tpu_pod.main, ["logs", *WHERE, "--worker=all"]))
  assert "--worker=all" in follow
  [fetch] = commands(dry_run(tpu_pod.main, ["logs", *WHERE, "--fetch=run logs"]))
  assert "--worker=all" in fetch and flag(fetch, "--output-directory") == "run logs"
  assert flag(fetch, "--command") == "cat instruct_jax_train.log"
  [stop] = commands(dry_run(tpu_pod.main, ["stop", *WHERE]))
  assert "--worker=all" in stop and flag(stop, "--command").startswith("kill -s TERM")
  [status] = commands(dry_run(tpu_pod.main, ["status", *WHERE]))
  assert status[4:6] == ["describe", "my-tpu"] and flag(status, "--format") == "value(state)"
  [delete] = commands(dry_run(tpu_pod.main, ["delete", *WHERE, "--project=p"]))
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu",
                    "--zone=us-central2-b", "--project=p", "--quiet"]


def test_up_is_create_install_train_follow_and_recreate_deletes_first():
  up = ["--accelerator_type=v4-32", "--spot", "--git_url=https://g/r", "--", *TRAIN_ARGS]
  verbs = [c[4] for c in commands(dry_run(tpu_pod.main, ["up", *WHERE, *up]))]
  assert verbs == ["create", "ssh", "ssh", "ssh"]
  recreate = commands(dry_run(tpu_pod.main, ["all", *WHERE, "--recreate", "--no_follow", *up]))
  assert [c[4] for c in recreate] == ["delete", "create", "ssh", "ssh"]
  assert launched_argv(flag(recreate[-1], "--command"))[2:] == TRAIN_ARGS


def test_dry_run_output_is_a_shell_script():
  text = dry_run(tpu_pod.main, ["up", *WHERE, "--accelerator_type=v4-32", "--tarball=x.tgz", "--",
                                *TRAIN_ARGS])
  assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


@pytest.mark.parametrize("argv", [["tpu_pod.py", "--help"], ["tpu_pod.py", "up", "--help"],
                                  ["slurm_gpu.py", "--help"]])
def test_scripts_run_standalone_with_help(argv):
  result = subprocess.run([sys.executable, str(SCRIPTS / argv[0]), *argv[1:]], capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("usage: " + argv[0])
  assert os.access(SCRIPTS / argv[0], os.X_OK)


def remote_commands():
  tpu = tpu_pod.Tpu("t", "z")
  return {
      "install_git": tpu_pod.install_steps(tpu, git_url="https://g/r")[-1].argv,
      "install_tarball": tpu_pod.install_steps(tpu, tarball="x.tgz")[-1].argv,
      "train": tpu_pod.train_command(tpu, TRAIN_ARGS, ["K=v w"]),
      "follow": tpu_pod.follow_log_command(tpu),
      "fetch": tpu_pod.fetch_logs_command(tpu, "d"),
      "stop": tpu_pod.stop_command(tpu),
  }


@pytest.mark.skipif(subprocess.run(["which", "shellcheck"], capture_output=True).returncode,
                    reason="shellcheck not installed (apt-get install shellcheck)")
def test_generated_shell_code_passes_shellcheck():
  for name, argv in remote_commands().items():
    for shell in ("sh", "bash"):
      # Warnings and errors only: TRAIN_ARGS deliberately single-quote a literal "$5".
      result = subprocess.run(["shellcheck", "-S", "warning", "-s", shell, "-"],
                              input=flag(argv, "--command"), capture_output=True, text=True)
      assert result.returncode == 0, (name, shell, result.stdout)
  for process_per in ("gpu", "node"):
    job = slurm_gpu.SlurmJob(nodes=2, gpus_per_node=8, process_per=process_per,
                             setup=("source ~/venv/bin/activate", "module load cuda"))
    for train_args, severity in ((TRAIN_ARGS, "warning"), (TRAIN_ARGS[:3], "style")):
      result = subprocess.run(["shellcheck", "-S", severity, "-"], capture_output=True, text=True,
                              input=slurm_gpu.sbatch_script(job, train_args))
      assert result.returncode == 0, result.stdout


# ---------------------------------------------------------------- tpu_pod: real execution

@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
  """A `gcloud` on PATH that records its argv and fails for the verbs in FAIL_VERBS."""
  bin_dir = tmp_path / "fakebin"
  write_program(bin_dir / "gcloud", """\
import json, os, sys
with open(os.environ["GCLOUD_RECORD"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
if any("tail" in a for a in sys.argv) and os.environ.get("FOLLOW_EXIT"):
  sys.exit(int(os.environ["FOLLOW_EXIT"]))  # following the log ends with the trainer's status
sys.exit(1 if sys.argv[4] in os.environ.get("FAIL_VERBS", "").split(",") else 0)
""")
  record = tmp_path / "gcloud.jsonl"
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("GCLOUD_RECORD", str(record))
  monkeypatch.setenv("FAKE_BIN_ON_PATH", "1")

  def calls():
    if not record.exists():
      return []
    return [["gcloud", *json.loads(line)] for line in record.read_text().splitlines()]
  return calls


def test_running_executes_exactly_the_dry_run_commands(fake_gcloud, monkeypatch):
  argv = ["up", *WHERE, "--accelerator_type=v4-8", "--git_url=https://g/r", "--no_follow", "--",
          *TRAIN_ARGS]
  expected = commands(dry_run(tpu_pod.main, argv))
  assert tpu_pod.main(argv) == 0
  assert fake_gcloud() == expected


def test_running_stops_at_a_failed_step_but_not_at_a_failed_recreate_delete(
    fake_gcloud, monkeypatch):
  monkeypatch.setenv("FAIL_VERBS", "delete")
  argv = ["up", *WHERE, "--recreate", "--accelerator_type=v4-8", "--git_url=https://g/r", "--",
          *TRAIN_ARGS]
  assert tpu_pod.main(argv) == 0
  assert [c[4] for c in fake_gcloud()] == ["delete", "create", "ssh", "ssh", "ssh"]
  monkeypatch.setenv("FAIL_VERBS", "create")
  assert tpu_pod.main(argv[:3] + argv[4:]) == 1
  assert [c[4] for c in fake_gcloud()][5:] == ["create"]


def test_exit_status_75_is_reported_as_resumable_not_as_a_failure(fake_gcloud, monkeypatch,
                                                                  capsys):
  assert train_flags.EXIT_STOPPED == 75
  errors = pytest.importorskip("instruct_jax.errors")
  assert train_flags.EXIT_STOPPED == errors.EXIT_STOPPED
  monkeypatch.setenv("FOLLOW_EXIT", "75")
  assert tpu_pod.main(["train", *WHERE, "--", *TRAIN_ARGS]) == 75
  err = capsys.readouterr().err
  assert "stopped by SIGTERM" in err and "again to resume" in err
  assert "Step failed" not in err
  assert tpu_pod.main(["logs", *WHERE]) == 75
  assert "again to resume" in capsys.readouterr().err
  monkeypatch.setenv("FOLLOW_EXIT", "1")  # A trainer that failed is still a failure.
  assert tpu_pod.main(["train", *WHERE, "--", *TRAIN_ARGS]) == 1
  err = capsys.readouterr().err
  assert "Step failed with exit code 1" in err and "resume" not in err


def test_fetch_logs_creates_the_directory_gcloud_requires(fake_gcloud, tmp_path):
  out_dir = tmp_path / "fetched" / "logs"
  assert tpu_pod.main(["logs", *WHERE, f"--fetch={out_dir}"]) == 0
  assert out_dir.is_dir()


def make_tarball(path, top="instruct_jax"):
  with tarfile.open(path, "w:gz") as tar:
    for name, text in ((f"{top}/setup.py", "# setup"), (f"{top}/README.md", "readme")):
      data = text.encode()
      info = tarfile.TarInfo(name.lstrip("/"))
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def test_tarball_layout_is_checked_locally(tmp_path, fake_gcloud):
  good, flat = tmp_path / "good.tar.gz", tmp_path / "flat.tar.gz"
  make_tarball(good)
  with tarfile.open(flat, "w:gz") as tar:
    tar.add(good, arcname="setup.py")
  tpu_pod.check_tarball(str(good))
  with pytest.raises(ValueError, match="git archive"):
    tpu_pod.check_tarball(str(flat))
  with pytest.raises(SystemExit):
    tpu_pod.main(["install", *WHERE, f"--tarball={flat}"])
  with pytest.raises(SystemExit):
    tpu_pod.main(["install", *WHERE, f"--tarball={tmp_path / 'missing.tgz'}"])
  assert fake_gcloud() == []
  assert tpu_pod.main(["install", *WHERE, f"--tarball={good}"]) == 0


@pytest.fixture
def worker_home(tmp_path):
  """A directory standing in for a TPU worker's home, with a fake trainer in the venv.

  The detached trainer outlives the shell that started it. On a TPU VM init reaps it when it
  exits; in a container whose init does not, a dead trainer would look alive to `kill -0`
  and `tail --pid`. So this process adopts orphans (subreaper) and is_alive() reaps them.
  """
  libc = ctypes.CDLL(None, use_errno=True)
  pr_set_child_subreaper = 36
  if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
    pytest.skip("needs Linux prctl(PR_SET_CHILD_SUBREAPER)")
  home = tmp_path / "home"
  write_program(home / "instruct_jax_venv" / "bin" / "instruct-jax", FAKE_TRAINER)
  yield home
  libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)
  pid_file = home / "instruct_jax_train.pid"
  if pid_file.exists():
    pid = int(pid_file.read_text())
    if is_alive(pid):  # a failed test may leave a sleeping fake trainer behind
      os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(pid), "the last fake trainer to exit")


def run_remote(shell, remote, home, **env):
  """Runs a --command string the way sshd does: `$SHELL -c COMMAND` in the home directory."""
  full_env = {**os.environ, "HOME": str(home), "RECORD_DIR": str(home), **env}
  return subprocess.run([shell, "-c", remote], cwd=home, env=full_env, capture_output=True,
                        text=True, timeout=120)


@pytest.mark.parametrize("shell", SHELLS)
def test_remote_launch_runs_the_exact_argv_detached_and_logs_stop_work(shell, worker_home):
  tpu = tpu_pod.Tpu("t", "z")
  launch = flag(tpu_pod.train_command(tpu, TRAIN_ARGS, ["NCCL_DEBUG=it's on"]), "--command")
  result = run_remote(shell, launch, worker_home, FAKE_TRAINER_SLEEP="60")
  assert result.returncode == 0, result.stderr
  wait_for(lambda: (worker_home / "argv.json").exists(), "the fake trainer to start")
  record = json.loads((worker_home / "argv.json").read_text())
  assert record["argv"] == ["train", *TRAIN_ARGS]
  assert record["env"]["NCCL_DEBUG"] == "it's on"
  pid = int((worker_home / "instruct_jax_train.pid").read_text())
  assert is_alive(pid)
  assert os.getpgid(pid) == pid  # own process group, which `stop` signals

  # A second launch while the first still runs is refused.
  (worker_home / "argv.json").unlink()
  again = run_remote(shell, launch, worker_home)
  assert again.returncode == 1 and "still running" in again.stderr
  assert not (worker_home / "argv.json").exists()

  assert run_remote(shell, flag(tpu_pod.stop_command(tpu), "--command"),
                    worker_home).returncode == 0
  wait_for(lambda: not is_alive(pid), "the trainer to stop")

  # Once the trainer is gone, following its log prints the log and returns the trainer's
  # status: 128 + SIGTERM, as this fake has no handler (the real one checkpoints, exits 75).
  follow = run_remote(shell, flag(tpu_pod.follow_log_command(tpu), "--command"), worker_home)
  assert follow.returncode == 128 + signal.SIGTERM
  assert "launching on" in follow.stdout and "trainer started" in follow.stdout
  fetch = run_remote(shell, flag(tpu_pod.fetch_logs_command(tpu, "d"), "--command"), worker_home)
  assert "trainer started" in fetch.stdout

  # Relaunching the same command after the run ended starts it again (the trainer resumes).
  assert run_remote(shell, launch, worker_home).returncode == 0
  wait_for(lambda: (worker_home / "argv.json").exists(), "the relaunched trainer")
  wait_for(lambda: (worker_home / "instruct_jax_train.log").read_text().count("launching on") == 2,
           "the second launch header")


@pytest.mark.parametrize("shell", SHELLS)
def test_following_the_log_exits_with_the_trainers_status(shell, worker_home):
  """Stopped after checkpointing (75), also by `stop`'s SIGTERM to the group, comes back."""
  tpu = tpu_pod.Tpu("t", "z")
  launch = flag(tpu_pod.train_command(tpu, TRAIN_ARGS), "--command")
  follow = flag(tpu_pod.follow_log_command(tpu), "--command")
  pid_file, status_file = worker_home / "instruct_jax_train.pid", worker_home / "instruct_jax_train.status"

  assert run_remote(shell, launch, worker_home, FAKE_TRAINER_EXIT="75").returncode == 0
  pid = int(pid_file.read_text())
  wait_for(lambda: not is_alive(pid), "the trainer to exit")
  result = run_remote(shell, follow, worker_home)
  assert result.returncode == 75, result.stderr
  assert "exited with status 75" in result.stdout and "trainer started" in result.stdout

  # A trainer that handles SIGTERM (checkpoint, exit 75) while the wrapper survives `stop`.
  handler = worker_home / "instruct_jax_venv" / "bin" / "instruct-jax"
  handler.write_text(f"#!{sys.executable}\n" + """\
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))
open("ready", "w").close()
time.sleep(60)
""")
  assert run_remote(shell, launch, worker_home).returncode == 0
  assert not status_file.exists()  # The old status is cleared at launch.
  wait_for(lambda: (worker_home / "ready").exists(), "the trainer to install its handler")
  pid = int(pid_file.read_text())
  assert run_remote(shell, flag(tpu_pod.stop_command(tpu), "--command"),
                    worker_home).returncode == 0
  wait_for(lambda: not is_alive(pid), "the trainer to stop")
  assert status_file.read_text().strip() == "75"
  assert run_remote(shell, follow, worker_home).returncode == 75

  write_program(handler, FAKE_TRAINER)  # A finished run: 0.
  assert run_remote(shell, launch, worker_home).returncode == 0
  pid = int(pid_file.read_text())
  wait_for(lambda: not is_alive(pid), "the trainer to finish")
  assert run_remote(shell, follow, worker_home).returncode == 0


@pytest.mark.parametrize("from_tarball", [True, False])
def test_remote_install_script_builds_the_venv_with_uv(tmp_path, from_tarball):
  home = tmp_path / "home"
  write_program(home / ".local" / "bin" / "uv", """\
import json, os, sys
with open(os.path.join(os.environ["HOME"], "uv_calls.jsonl"), "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "venv":
  os.makedirs(os.path.join(sys.argv[-1], "bin"), exist_ok=True)
  with open(os.path.join(sys.argv[-1], "bin", "python"), "w") as f:
    f.write("#!/bin/sh\\necho checked > \\"$HOME/check.txt\\"\\n")
  os.chmod(os.path.join(sys.argv[-1], "bin", "python"), 0o755)
""")
  if from_tarball:
    make_tarball(home / "instruct_jax.tar.gz", top="instruct_jax-0.1.0")
    steps = tpu_pod.install_steps(tpu_pod.Tpu("t", "z"), tarball="local.tgz")
  else:
    steps = tpu_pod.install_steps(tpu_pod.Tpu("t", "z"), git_url="https://g/r", git_ref="abc")
  result = run_remote("sh", flag(steps[-1].argv, "--command"), home)
  assert result.returncode == 0, result.stderr
  calls = [json.loads(line) for line in (home / "uv_calls.jsonl").read_text().splitlines()]
  requirement = "./instruct_jax_src[tpu]" if from_tarball else "instruct_jax[tpu] @ git+https://g/r@abc"
  assert calls == [
      ["venv", "--python", "3.11", "--seed", "--allow-existing", "instruct_jax_venv"],
      ["pip", "install", "--python", "instruct_jax_venv/bin/python", "--reinstall-package",
       "instruct_jax", requirement]]
  assert (home / "check.txt").exists()
  assert (home / "instruct_jax_src" / "setup.py").exists() == from_tarball


# ---------------------------------------------------------------- slurm_gpu

SLURM_TRAIN_ARGS = [a.replace("gs://my-bucket", "/shared") for a in TRAIN_ARGS]


def test_sbatch_script_per_gpu_contents():
  job = slurm_gpu.SlurmJob(nodes=2, gpus_per_node=8, partition="gpu", time="24:00:00")
  script = slurm_gpu.sbatch_script(job, SLURM_TRAIN_ARGS)
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=gpu", "#SBATCH --time=24:00:00",
               '#SBATCH --output=slurm_logs/%x-%j.out', "#SBATCH --signal=TERM@300",
               'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
               'COORDINATOR_HOST="${NODES[0]}"',
               "  --num_processes=16", '  --coordinator_address="$COORDINATOR_ADDRESS"'):
    assert line in script.splitlines(), line
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in script
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in script
  srun = [line for line in script.splitlines() if line.startswith("srun ")]
  assert len(srun) == 1
  per_task = shlex.split(srun[0])[shlex.split(srun[0]).index("-c") + 1]
  assert 'JAX_LOCAL_DEVICE_IDS="${JAX_LOCAL_DEVICE_IDS:-$SLURM_LOCALID}"' in per_task
  assert '--process_id="$SLURM_PROCID"' in per_task
  assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_train_cmd_array_parses_back_to_the_intended_argv():
  job = slurm_gpu.SlurmJob(nodes=3, gpus_per_node=4, launcher=("python", "-m", "instruct_jax"))
  lines = slurm_gpu.sbatch_script(job, SLURM_TRAIN_ARGS).splitlines()
  body = lines[lines.index("TRAIN_CMD=(") + 1:lines.index(")")]
  assert [w for line in body for w in shlex.split(line)] == [
      "python", "-m", "instruct_jax", "train", *SLURM_TRAIN_ARGS,
      "--coordinator_address=$COORDINATOR_ADDRESS", "--num_processes=12"]
  assert slurm_gpu.train_argv(job, ["--x"])[-1] == "--num_processes=12"


def test_per_node_mode_and_options():
  job = slurm_gpu.SlurmJob(nodes=4, gpus_per_node=8, process_per="node", requeue=True,
                           term_before_end=0,
                           port=4242, account="acct", cpus_per_task=32,
                           sbatch_options=("--qos=high",), setup=("module load cuda",),
                           env=("NCCL_SOCKET_IFNAME=ib0",), xla_flags=("--xla_a=1", "--xla_b=2"))
  assert job.num_processes == 4 and job.tasks_per_node == 1
  script = slurm_gpu.sbatch_script(job, SLURM_TRAIN_ARGS)
  lines = script.splitlines()
  for line in ("#SBATCH --ntasks-per-node=1", "#SBATCH --requeue", "#SBATCH --account=acct",
               "#SBATCH --cpus-per-task=32", "#SBATCH --qos=high", "module load cuda",
               "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", "export NCCL_SOCKET_IFNAME=ib0",
               'COORDINATOR_PORT="${COORDINATOR_PORT:-4242}"', "  --num_processes=4"):
    assert line in lines, line
  assert 'export XLA_FLAGS="--xla_a=1 --xla_b=2${XLA_FLAGS:+ $XLA_FLAGS}"' in lines
  assert "SLURM_LOCALID" not in script and "--signal" not in script


@pytest.mark.parametrize("kwargs, message", [
    ({"nodes": 0, "gpus_per_node": 8}, "--nodes >= 1"),
    ({"nodes": 1, "gpus_per_node": 8, "process_per": "core"}, "gpu or node"),
    ({"nodes": 1, "gpus_per_node": 8, "env": ("NO_EQUALS",)}, "KEY=VALUE"),
])
def test_slurm_job_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    slurm_gpu.SlurmJob(**kwargs)


def test_slurm_main_dry_run_writes_nothing_and_rejects_distributed_flags(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  text = dry_run(slurm_gpu.main, ["--nodes=2", "--gpus_per_node=4", "--env", "A=b c",
                                  "--xla_flag=--xla_x=1", "--launcher=python -m instruct_jax",
                                  "--", *SLURM_TRAIN_ARGS])
  assert text.startswith("#!/bin/bash") and "--num_processes=8" in text
  assert "export A='b c'" in text and "--xla_x=1" in text
  assert "sbatch instruct_jax_train.sbatch" in text.splitlines()[-1]
  assert list(tmp_path.iterdir()) == []
  for bad in (["--coordinator_address=h:1"], []):
    with pytest.raises(SystemExit):
      slurm_gpu.main(["--nodes=1", "--gpus_per_node=1", "--dry_run", "--", *bad], out=io.StringIO())


def test_slurm_main_writes_and_submits(tmp_path, monkeypatch):
  write_program(tmp_path / "bin" / "sbatch", """\
import os, sys
open(os.environ["SBATCH_RECORD"], "w").write(" ".join(sys.argv[1:]))
""")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("SBATCH_RECORD", str(tmp_path / "sbatch.txt"))
  monkeypatch.setenv("FAKE_BIN_ON_PATH", "1")
  args = ["--nodes=1", "--gpus_per_node=2", "--script=job.sbatch", "--log_dir=logs/x", "--",
          "--gin.MODEL_DIR='/shared/r'"]
  assert slurm_gpu.main(["--no_submit", *args]) == 0
  assert (tmp_path / "job.sbatch").exists() and (tmp_path / "logs" / "x").is_dir()
  assert not (tmp_path / "sbatch.txt").exists()
  assert slurm_gpu.main(args) == 0
  assert (tmp_path / "sbatch.txt").read_text() == "job.sbatch"


FAKE_SRUN = """\
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith("--"):  # srun's own options, always written as --name[=value]
  args.pop(0)
nodes, per_node = int(os.environ["FAKE_NODES"]), int(os.environ["FAKE_TASKS_PER_NODE"])
procs = []
for node in range(nodes):
  for local in range(per_node):
    env = dict(os.environ, SLURM_PROCID=str(node * per_node + local), SLURM_LOCALID=str(local),
               SLURM_NODEID=str(node))
    procs.append(subprocess.Popen(args, env=env))
sys.exit(max(p.wait() for p in procs))
"""
FAKE_SCONTROL = """\
import os, sys
if sys.argv[1] == "requeue":
  with open(os.path.join(os.environ["RECORD_DIR"], "requeued"), "w") as f:
    f.write(" ".join(sys.argv[2:]))
  sys.exit(int(os.environ.get("FAKE_REQUEUE_EXIT", "0")))
assert sys.argv[1:] == ["show", "hostnames", "node[7-8]"], sys.argv
print("localhost")
for i in range(20000):  # a big allocation: more output than a pipe buffer holds
  print("node%d" % (8 + i))
"""


def run_batch_script(tmp_path, job, train_args, extra_env=None):
  """Executes a generated batch script as SLURM would on the first node, with fakes."""
  bin_dir = tmp_path / "bin"
  write_program(bin_dir / "srun", FAKE_SRUN)
  write_program(bin_dir / "scontrol", FAKE_SCONTROL)
  write_program(bin_dir / "instruct-jax", FAKE_TRAINER)
  script = tmp_path / "job.sbatch"
  script.write_text(slurm_gpu.sbatch_script(job, train_args))
  env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
         "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[7-8]", "RECORD_DIR": str(tmp_path),
         "FAKE_NODES": str(job.nodes), "FAKE_TASKS_PER_NODE": str(job.tasks_per_node),
         "XLA_FLAGS": "--xla_user_flag=1", **(extra_env or {})}
  return subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.parametrize("process_per", ["gpu", "node"])
def test_batch_script_gives_every_process_its_rank_and_devices(tmp_path, process_per):
  job = slurm_gpu.SlurmJob(nodes=2, gpus_per_node=2, process_per=process_per,
                           env=slurm_gpu.DEFAULT_ENV + ("NCCL_DEBUG=WARN",))
  result = run_batch_script(tmp_path, job, SLURM_TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  assert "coordinator localhost:21234" in result.stdout  # 20000 + 1234 % 20000
  for rank in range(job.num_processes):
    record = json.loads((tmp_path / f"argv{rank}.json").read_text())
    assert record["argv"] == ["train", *SLURM_TRAIN_ARGS, "--coordinator_address=localhost:21234",
                              f"--num_processes={job.num_processes}", f"--process_id={rank}"]
    env = record["env"]
    assert env["JAX_LOCAL_DEVICE_IDS"] == (str(rank % 2) if process_per == "gpu" else "0,1")
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true --xla_user_flag=1"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9" and env["NCCL_DEBUG"] == "WARN"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
  assert not (tmp_path / f"argv{job.num_processes}.json").exists()


def test_per_gpu_device_ids_can_be_overridden_for_clusters_that_bind_gpus(tmp_path):
  job = slurm_gpu.SlurmJob(nodes=1, gpus_per_node=2,
                           env=slurm_gpu.DEFAULT_ENV + ("JAX_LOCAL_DEVICE_IDS=0",))
  assert run_batch_script(tmp_path, job, ["--gin.MODEL_DIR='/r'"]).returncode == 0
  for rank in range(2):
    record = json.loads((tmp_path / f"argv{rank}.json").read_text())
    assert record["env"]["JAX_LOCAL_DEVICE_IDS"] == "0"


def test_batch_script_requeues_a_stopped_run_and_passes_other_statuses_on(tmp_path):
  job = slurm_gpu.SlurmJob(nodes=2, gpus_per_node=1)
  stopped = run_batch_script(tmp_path, job, ["--gin.MODEL_DIR='/r'"], {"FAKE_TRAINER_EXIT": "75"})
  assert stopped.returncode == 0, stopped.stderr
  assert (tmp_path / "requeued").read_text() == "1234"
  assert "requeued job 1234" in stopped.stdout

  (tmp_path / "requeued").unlink()
  failed = run_batch_script(tmp_path, job, ["--gin.MODEL_DIR='/r'"], {"FAKE_TRAINER_EXIT": "3"})
  assert failed.returncode == 3 and not (tmp_path / "requeued").exists()
  finished = run_batch_script(tmp_path, job, ["--gin.MODEL_DIR='/r'"])
  assert finished.returncode == 0 and not (tmp_path / "requeued").exists()

  refused = run_batch_script(tmp_path, job, ["--gin.MODEL_DIR='/r'"],
                             {"FAKE_TRAINER_EXIT": "75", "FAKE_REQUEUE_EXIT": "1"})
  assert refused.returncode == 75
  assert "could not be requeued" in refused.stderr and "sbatch" in refused.stderr


def test_default_xla_flags_exist_in_the_installed_jaxlib():
  """XLA aborts on an unknown XLA_FLAGS entry, so a stale default would kill every GPU job."""
  pytest.importorskip("jax")
  env = {**os.environ, "XLA_FLAGS": " ".join(slurm_gpu.DEFAULT_XLA_FLAGS), "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


FAKE_JAX_TRAINER = """\
import argparse, json, os, sys
import numpy as np
import jax
from jax.experimental import multihost_utils
p = argparse.ArgumentParser()
p.add_argument("command")
for name in ("--coordinator_address", "--num_processes", "--process_id"):
  p.add_argument(name, required=True)
args, _ = p.parse_known_args()
jax.distributed.initialize(args.coordinator_address, int(args.num_processes), int(args.process_id))
gathered = multihost_utils.process_allgather(np.array([jax.process_index() + 1]))
with open(os.path.join(os.environ["RECORD_DIR"], "rank%d.json" % jax.process_index()), "w") as f:
  json.dump({"count": jax.process_count(), "gathered": np.asarray(gathered).ravel().tolist()}, f)
"""


def test_batch_script_brings_up_jax_distributed_across_processes(tmp_path):
  """The generated flags drive jax.distributed.initialize for real (two CPU processes, gloo)."""
  pytest.importorskip("jax")
  trainer = write_program(tmp_path / "jax_trainer.py", FAKE_JAX_TRAINER)
  job = slurm_gpu.SlurmJob(nodes=2, gpus_per_node=1, port=free_port(),
                           launcher=(sys.executable, str(trainer)))
  result = run_batch_script(tmp_path, job, ["--gin.MODEL_DIR='/unused'"], {
      "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")})
  assert result.returncode == 0, result.stderr[-3000:]
  for rank in range(2):
    record = json.loads((tmp_path / f"rank{rank}.json").read_text())
    assert record == {"count": 2, "gathered": [1, 2]}
