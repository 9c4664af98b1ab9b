"""The `instruct-jax` command end to end: smoke run, SIGTERM + resume, configuration errors."""
import json
import os
import signal
import subprocess
import sys
import time

import gin
import pytest

from instruct_jax import cli
from instruct_jax import errors
from instruct_jax.checkpoints import conversion
from instruct_jax.checkpoints import hf
from instruct_jax.checkpoints import layout
from instruct_jax.cli import flags
from instruct_jax.cli import gin_setup
from instruct_jax.cli import sweep
from instruct_jax.eval import inference
from instruct_jax.eval import selection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  return env


def _smoke_command(model_dir, *bindings):
  return [sys.executable, "-m", "instruct_jax", "train", "--gin_file=runs/smoke.gin",
          f"--gin.MODEL_DIR='{model_dir}'", *bindings]


def _run_to_completion(command):
  """Runs an `instruct-jax` command line to its end; asserts it exited 0; returns the result."""
  result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _logged(model_dir):
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(line) for line in open(path)]


def _train_records(model_dir):
  return [r for r in _logged(model_dir) if "loss" in r]


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
  model_dir = tmp_path / "smoke"
  result = _run_to_completion(
      _smoke_command(model_dir, "--gin.TRAIN_STEPS=120", "--gin.LOG_PERIOD=10",
                     "--gin.EVAL_PERIOD=120", "--gin.SAVE_PERIOD=60"))
  assert "step 120/120" in result.stdout
  records = _train_records(model_dir)
  assert [r["step"] for r in records] == list(range(10, 121, 10))
  first, last = records[0]["cross_ent_loss_per_token"], records[-1]["cross_ent_loss_per_token"]
  assert last < 0.75 * first, (first, last)
  evals = [r for r in _logged(model_dir) if any(k.startswith("eval/") for k in r)]
  assert evals and "eval/smoke_reverse_word/accuracy" in evals[-1]
  assert sorted(p for p in os.listdir(model_dir) if p.startswith("checkpoint_")) == [
      "checkpoint_120", "checkpoint_60"]
  assert "MODEL_DIR" in (model_dir / "config.gin").read_text()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(model_dir / "train"))


@pytest.mark.slow
def test_sigterm_saves_and_the_next_run_resumes(tmp_path):
  model_dir = tmp_path / "run"
  process = subprocess.Popen(
      _smoke_command(model_dir, "--gin.TRAIN_STEPS=100000", "--gin.LOG_PERIOD=5",
                     "--gin.SAVE_PERIOD=100000", "--gin.EVAL_PERIOD=None"),
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not _train_records(model_dir) and time.time() < deadline:
    time.sleep(0.5)
  assert _train_records(model_dir), "training never logged a step"
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == errors.EXIT_STOPPED == 75, stderr[-3000:]
  assert "Stopped by SIGTERM" in stdout
  assert "Run the same command again to resume." in stdout
  saved = [int(p.split("_")[1]) for p in os.listdir(model_dir) if p.startswith("checkpoint_")]
  assert len(saved) == 1 and saved[0] >= 5
  stopped_at = saved[0]

  _run_to_completion(
      _smoke_command(model_dir, f"--gin.TRAIN_STEPS={stopped_at + 5}", "--gin.LOG_PERIOD=1",
                     "--gin.EVAL_PERIOD=None"))
  resumed_steps = [r["step"] for r in _train_records(model_dir) if r["step"] > stopped_at]
  assert resumed_steps == list(range(stopped_at + 1, stopped_at + 6))
  assert os.path.isdir(model_dir / f"checkpoint_{stopped_at + 5}")


@pytest.mark.slow
def test_kill_9_then_relaunch_resumes_with_one_metrics_row_per_step(tmp_path):
  """A crash leaves a fresh lease and logged steps past the last checkpoint behind."""
  model_dir = tmp_path / "run"
  process = subprocess.Popen(
      _smoke_command(model_dir, "--gin.TRAIN_STEPS=100000", "--gin.LOG_PERIOD=1",
                     "--gin.SAVE_PERIOD=10", "--gin.EVAL_PERIOD=None"),
      cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:
    saved = layout.checkpoint_dirs(str(model_dir))
    if saved and max(r["step"] for r in _train_records(model_dir)) > saved[-1][0] + 2:
      break
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert (model_dir / layout.LEASE_FILE).exists()  # never released
  last_saved = layout.checkpoint_dirs(str(model_dir))[-1][0]
  assert max(r["step"] for r in _train_records(model_dir)) > last_saved

  total = last_saved + 12
  result = _run_to_completion(
      _smoke_command(model_dir, f"--gin.TRAIN_STEPS={total}", "--gin.LOG_PERIOD=1",
                     "--gin.SAVE_PERIOD=10", "--gin.EVAL_PERIOD=None"))
  assert "process is gone" in result.stderr  # the dead holder's lease was taken over
  steps = [r["step"] for r in _train_records(model_dir)]
  assert steps == list(range(1, total + 1))
  assert layout.read_run_status(str(model_dir)).finished


@pytest.mark.slow
def test_relaunching_a_finished_run_exits_0(tmp_path):
  model_dir = tmp_path / "run"
  command = _smoke_command(model_dir, "--gin.TRAIN_STEPS=2", "--gin.LOG_PERIOD=1",
                           "--gin.EVAL_PERIOD=None")
  _run_to_completion(command)
  logged = _train_records(model_dir)
  _run_to_completion(command)  # the relaunch of a finished run also exits 0
  assert _train_records(model_dir) == logged  # Nothing trained twice.
  assert layout.read_run_status(str(model_dir)).finished


@pytest.mark.slow
def test_force_takes_over_a_held_lease(tmp_path, capsys):
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  now = time.time()
  (model_dir / layout.LEASE_FILE).write_text(json.dumps(
      {"owner": "another-trainer", "host": "elsewhere", "pid": 1, "started": now,
       "heartbeat": now}))
  argv = ["train", "--gin_file=runs/smoke.gin", f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=None"]
  err = _run_main(argv, capsys)
  assert "in use by another training run" in err and "--force" in err
  assert not any(p.startswith("checkpoint_") for p in os.listdir(model_dir))

  _run_to_completion([sys.executable, "-m", "instruct_jax", *argv, "--force"])
  assert os.path.isdir(model_dir / "checkpoint_2")
  lease = model_dir / layout.LEASE_FILE
  assert not lease.exists() or "another-trainer" not in lease.read_text()


def _run_main(argv, capsys):
  gin.clear_config()
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  gin.clear_config()
  assert exit_info.value.code == 1
  return capsys.readouterr().err


def test_missing_required_macro_is_named(capsys, tmp_path):
  err = _run_main(["train", "--gin_file=runs/pretrain.gin", "--gin_file=models/t5_1_1/tiny.gin",
                   f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=1",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}"], capsys)
  assert "MIXTURE_OR_TASK_NAME" in err and "--gin.MIXTURE_OR_TASK_NAME=" in err


def test_malformed_binding_is_named(capsys):
  err = _run_main(["train", "--gin_file=runs/smoke.gin", "--gin.MODEL_DIR=/tmp/no quotes"],
                  capsys)
  assert "MODEL_DIR = /tmp/no quotes" in err and "inner quotes" in err


def test_unknown_binding_target_is_reported(capsys):
  err = _run_main(["train", "--gin_file=runs/smoke.gin", "--gin.trainer.train.no_such_arg=1"],
                  capsys)
  assert "no_such_arg" in err


def test_missing_gin_file_is_reported(capsys):
  err = _run_main(["train", "--gin_file=runs/does_not_exist.gin"], capsys)
  assert "does_not_exist.gin" in err


def test_unknown_task_lists_close_names(capsys, tmp_path):
  err = _run_main(["train", "--gin_file=runs/smoke.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                   "--gin.MIXTURE_OR_TASK_NAME='smoke_trian'"], capsys)
  assert "smoke_trian" in err and "smoke_train" in err


def test_run_stopped_exits_75_with_its_message(monkeypatch, capsys):
  def stopped(argv):
    del argv
    raise errors.RunStopped("Stopped by SIGTERM at step 7; checkpoint saved in /r. Run the "
                            "same command again to resume.")
  monkeypatch.setattr(cli, "run_command", stopped)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train"])
  assert exit_info.value.code == errors.EXIT_STOPPED
  assert "Stopped by SIGTERM at step 7" in capsys.readouterr().out


def test_train_accepts_force():
  args = cli.build_parser().parse_args(["train", "--gin_file=f.gin", "--force"])
  assert args.force
  assert not cli.build_parser().parse_args(["train"]).force


def test_gin_binding_flag_parsing():
  rest, bindings = gin_setup.split_gin_bindings(
      ["train", "--gin.A=1", "--gin.B", "'x'", "--gin_file=f.gin"])
  assert rest == ["train", "--gin_file=f.gin"]
  assert bindings == ["A = 1", "B = 'x'"]


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_imports_neither_jax_nor_tensorflow(command):
  """--help answers at once: no command module (they pull in jax and TF) is imported."""
  probe = ("import sys\n"
           "from instruct_jax import cli\n"
           "try:\n"
           f"  cli.main([{command!r}, '--help'])\n"
           "except SystemExit as e:\n"
           "  assert e.code == 0, e.code\n"
           "heavy = sorted(m for m in ('jax', 'tensorflow', 'seqio') if m in sys.modules)\n"
           "print('HEAVY', heavy)\n")
  result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "usage: instruct-jax" in result.stdout
  assert "HEAVY []" in result.stdout


def test_flag_choices_match_the_library():
  """flags.py repeats a few library constants so that --help stays light; keep them equal."""
  assert flags.INFER_MODES == tuple(inference.MODES)
  assert flags.INFER_FORMATS == tuple(inference.FORMATS)
  assert flags.EXPORT_DTYPES == tuple(sorted(conversion.DTYPES))
  assert flags.DEFAULT_MAX_SHARD_GB * 1e9 == hf.DEFAULT_MAX_SHARD_BYTES
  assert flags.SELECT_DEFAULT_MIXTURE == selection.DEFAULT_MIXTURE
  assert flags.SWEEPS == tuple(sweep.SWEEP_RECIPES)
  assert set(flags.ADD_ARGUMENTS) == set(cli.COMMANDS)
