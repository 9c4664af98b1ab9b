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

from instruct_jax.cli import gin_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  return env


def _smoke_command(model_dir, *bindings):
  return [sys.executable, "-m", "instruct_jax", "train", "--gin_file=runs/smoke.gin",
          f"--gin.MODEL_DIR='{model_dir}'", *bindings]


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
  result = subprocess.run(
      _smoke_command(model_dir, "--gin.TRAIN_STEPS=120", "--gin.LOG_PERIOD=10",
                     "--gin.EVAL_PERIOD=120", "--gin.SAVE_PERIOD=60"),
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
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
  assert process.returncode == 0, stderr[-3000:]
  assert "Stopped by SIGTERM" in stdout
  saved = [int(p.split("_")[1]) for p in os.listdir(model_dir) if p.startswith("checkpoint_")]
  assert len(saved) == 1 and saved[0] >= 5
  stopped_at = saved[0]

  result = subprocess.run(
      _smoke_command(model_dir, f"--gin.TRAIN_STEPS={stopped_at + 5}", "--gin.LOG_PERIOD=1",
                     "--gin.EVAL_PERIOD=None"),
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  resumed_steps = [r["step"] for r in _train_records(model_dir) if r["step"] > stopped_at]
  assert resumed_steps == list(range(stopped_at + 1, stopped_at + 6))
  assert os.path.isdir(model_dir / f"checkpoint_{stopped_at + 5}")


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


def test_gin_binding_flag_parsing():
  rest, bindings = gin_setup.split_gin_bindings(
      ["train", "--gin.A=1", "--gin.B", "'x'", "--gin_file=f.gin"])
  assert rest == ["train", "--gin_file=f.gin"]
  assert bindings == ["A = 1", "B = 'x'"]
