"""What a user sees of `instruct-jax train`: a quiet console, the banner, the summary.

One tiny smoke run (4 steps, the held-out rank eval cut to 8 examples per task)
is shared by the tests; each test then runs one more command against it. The
quiet relaunch is not run separately: its console is the train run's.
"""
import logging
import os
import re
import shlex
import subprocess
import sys
import warnings

import pytest

from instruct_jax.cli import console
from instruct_jax.eval import initial_vs_trained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow / XLA C++ log lines, absl's Python ones and seqio's warnings.
NOISE = re.compile(r"^[IWEF]\d{4} |WARNING:absl|absl::InitializeLog|cuInit|FunctionDataset",
                   re.MULTILINE)


def _env() -> dict:
  env = dict(os.environ)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest silences TF; here its noise must exist
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return env


def _run(argv, cwd=REPO) -> subprocess.CompletedProcess:
  result = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result


def _train_argv(model_dir, *extra):
  return [sys.executable, "-m", "instruct_jax", "train", "--gin_file=runs/smoke.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=4", "--gin.LOG_PERIOD=2",
          "--gin.EVAL_PERIOD=None",
          "--gin.initial_vs_trained.InitialVsTrained.num_examples=8", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("console") / "run"
  return model_dir, _run(_train_argv(model_dir))


@pytest.mark.slow
def test_quiet_train_shows_banner_progress_heldout_table_and_summary(finished_run):
  model_dir, result = finished_run
  assert result.stderr == ""
  assert not NOISE.search(result.stdout), result.stdout
  lines = result.stdout.splitlines()
  assert lines[0] == "instruct-jax train: fresh start"
  banner = "\n".join(lines[1:7])
  assert f"MODEL_DIR  {model_dir}" in banner
  assert re.search(r"model +EncoderDecoderModel, T5Config\(.*\), [\d.]+k parameters", banner)
  assert re.search(r"mesh +data 1 x model 1", banner)
  assert "data       smoke_train | lengths inputs 64, targets 16 | batch 32 | 4 steps" in banner
  log_line = next(line for line in lines if line.startswith("  log "))
  log_path = log_line.split()[1]
  assert os.path.dirname(log_path) == str(model_dir / "logs")
  assert "FunctionDataset" in open(log_path).read()  # the noise went to the log file

  assert re.search(r"^step 1: compiled and ran in [\d.]+s$", result.stdout, re.MULTILINE)
  progress = [line for line in lines if line.startswith("step 4/4 |")]
  assert len(progress) == 1
  assert re.search(r"\| loss/token \d+\.\d{4} \|", progress[0])
  assert "| loss " not in progress[0]  # the summed loss stays in metrics.jsonl
  assert re.search(r"steps/s \| ETA 0:00:00$", progress[0])

  table = lines.index("| Task | Chance | Initial (step 0) | Trained (step 4) |")
  rows = {line.split(" | ")[0].strip("| "): line for line in lines[table + 2:table + 7]}
  assert set(rows) == {"smoke_repeat_choice_rank", "smoke_reverse_choice_rank",
                       "smoke_successor_choice_rank", "smoke_uppercase_choice_rank",
                       "mean (4 tasks)"}
  assert re.fullmatch(r"\| mean \(4 tasks\) \| 50\.0 \| [\d.]+ \| [\d.]+ \|", rows["mean (4 tasks)"])

  summary = "\n".join(lines[lines.index(next(l for l in lines if l.startswith("Done:"))):])
  assert summary.startswith("Done: step 4 of 4 (4 steps this launch,")
  assert re.search(r"train +loss/token \d+\.\d+", summary)
  assert re.search(r"final eval +smoke_holdout_rank_eval: initial [\d.]+% -> trained "
                   r"[\d.]+% \(chance 50\.0%\)", summary)
  assert f"checkpoint  {model_dir / 'checkpoint_4'}" in summary
  assert f"metrics     {model_dir / 'metrics.jsonl'}" in summary
  assert lines[-2] == "Evaluate this checkpoint:"
  assert lines[-1].startswith("  instruct-jax eval ")


@pytest.mark.slow
def test_the_printed_eval_command_evaluates_the_checkpoint_from_anywhere(finished_run,
                                                                         tmp_path):
  model_dir, train = finished_run
  argv = shlex.split(train.stdout.splitlines()[-1])
  assert argv[:2] == ["instruct-jax", "eval"]
  result = _run([sys.executable, "-m", "instruct_jax", *argv[1:]], cwd=tmp_path)
  assert result.stderr == ""
  assert "# Evaluation (step 4)" in result.stdout
  assert "| smoke_reverse_choice_rank |" in result.stdout
  assert os.path.exists(model_dir / "inference_eval" / "metrics_step_4.json")


@pytest.mark.slow
def test_relaunch_of_a_finished_run_is_one_line_and_verbose_shows_library_messages(
    finished_run):
  model_dir, _ = finished_run
  result = _run(_train_argv(model_dir, "--verbose"))
  assert result.stdout.splitlines() == [
      f"The run in {model_dir} already finished (step 4 of 4); nothing to do."]
  assert "FunctionDataset" in result.stderr  # seqio's warning, shown as without the quiet console


def test_quiet_console_moves_noise_to_its_log_and_restores_everything(tmp_path, monkeypatch,
                                                                       capfd):
  monkeypatch.setattr(console, "default_log_dir", lambda: str(tmp_path / "start"))
  handlers = list(logging.getLogger().handlers)
  with console.for_command("probe", verbose=False) as quiet:
    os.write(2, b"C++ noise on descriptor 2\n")
    logging.getLogger("seqio").warning("a library warning")
    warnings.warn("a Python warning")
    print("our own line")
    moved = console.move_log_into(str(tmp_path / "model_dir"))
    os.write(2, b"noise after the move\n")
  assert moved == quiet.path and moved.startswith(str(tmp_path / "model_dir" / "logs") + "/")
  assert os.listdir(tmp_path / "start") == []
  log = open(moved).read()
  for text in ("C++ noise on descriptor 2", "a library warning", "a Python warning",
               "noise after the move"):
    assert text in log
  captured = capfd.readouterr()
  assert captured.out == "our own line\n" and captured.err == ""
  assert logging.getLogger().handlers == handlers and console.log_path() is None
  os.write(2, b"back on the console\n")
  assert capfd.readouterr().err == "back on the console\n"


def test_verbose_console_changes_nothing(capfd):
  with console.for_command("probe", verbose=True) as quiet:
    os.write(2, b"shown\n")
  assert quiet is None and capfd.readouterr().err == "shown\n"


def test_chance_is_the_share_of_correct_options_per_example():
  rows = [{"example_id": 1, "is_correct": True}, {"example_id": 1, "is_correct": False},
          {"example_id": 2, "is_correct": True}, {"example_id": 2, "is_correct": False},
          {"example_id": 2, "is_correct": False}, {"example_id": 2, "is_correct": True}]
  assert initial_vs_trained.chance_accuracy(rows) == pytest.approx(50.0)
  rows = rows[:2] + [{"example_id": 3, "is_correct": True}] + [
      {"example_id": 3, "is_correct": False}] * 3
  assert initial_vs_trained.chance_accuracy(rows) == pytest.approx(100 * (1 / 2 + 1 / 4) / 2)
  assert initial_vs_trained.chance_accuracy([{"inputs": "generative"}]) is None
