"""`instruct-jax sweep flan-holdout`: planned commands, orchestration, one real tiny run.

The real run trains the tiny byte-vocabulary T5 (runs/sweep_smoke.gin) in this
process on a byte-vocabulary copy of FLAN under TFDS mock data, so it needs no
network, no SentencePiece model and no downloaded datasets.
"""
import ast
import json
import os
import shlex
import signal
import sys

import gin
import pytest
import seqio
import tensorflow_datasets as tfds

from instruct_jax import cli
from instruct_jax import errors
from instruct_jax.checkpoints import layout
from instruct_jax.cli import gin_setup
from instruct_jax.cli import sweep as sweep_cli
from instruct_jax.experiments import holdout_sweep as sweep
from tasks_registry import flan
from tasks_registry import registration
from tasks_registry.flan.holdout_sweep import RECIPE

PREFIX = "sweeptest_"


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _instruct_jax(argv, monkeypatch):
  """Runs the CLI exactly as the console script does (argv read from sys.argv)."""
  monkeypatch.setattr(sys, "argv", ["instruct-jax", *argv])
  cli.main()


def _flag_value(argv, name):
  """The Python value of --gin.NAME=VALUE in argv."""
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--gin.{name}=")]
  assert len(values) == 1, (name, argv)
  return ast.literal_eval(values[0])


# ---------------------------------------------------------------------------
# Dry run: the exact commands.
# ---------------------------------------------------------------------------


def test_dry_run_prints_each_clusters_train_and_eval_commands(tmp_path, monkeypatch, capsys):
  root = tmp_path / "sweep root"  # A space: the printed lines must quote it.
  _instruct_jax(["sweep", "flan-holdout", "--dry-run", "--clusters=nli,coreference",
                 f"--model_dir_root={root}", "--gin_file=models/t5_1_1/tiny.gin",
                 "--gin.TRAIN_STEPS=7", "--gin.INITIAL_CHECKPOINT_PATH=None",
                 "--train_binding=trainer.train.log_period=2",
                 "--eval_binding=DECODE_METHOD='beam'"], monkeypatch)
  out = capsys.readouterr().out
  assert not root.exists()  # Nothing ran.
  lines = [line for line in out.splitlines() if line.startswith("instruct-jax ")]
  assert len(lines) == 4
  commands = [shlex.split(line) for line in lines]  # Valid shell; round-trips.
  model_dirs = {c: os.path.join(str(root), f"holdout_{c}") for c in ("nli", "coreference")}
  train, evaluate = {}, {}
  for argv in commands:
    assert argv[0] == "instruct-jax"
    if argv[1] == "train":
      train[_flag_value(argv, "MODEL_DIR")] = argv
    else:
      evaluate[_flag_value(argv, "CHECKPOINT_PATH")] = argv
  assert set(train) == set(evaluate) == set(model_dirs.values())
  for cluster, model_dir in model_dirs.items():
    assert train[model_dir] == [
        "instruct-jax", "train", f"--gin_file=experiments/flan/holdout_{cluster}.gin",
        "--gin_file=models/t5_1_1/tiny.gin", f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPS=7", "--gin.INITIAL_CHECKPOINT_PATH=None",
        "--gin.trainer.train.log_period=2"]
    assert evaluate[model_dir] == [
        "instruct-jax", "eval", "--gin_file=runs/eval.gin", "--gin_file=models/t5_1_1/tiny.gin",
        f"--gin.CHECKPOINT_PATH='{model_dir}'",
        f"--gin.EVAL_OUTPUT_DIR='{model_dir}/zero_shot'",
        f"--gin.MIXTURE_OR_TASK_NAME='flan_holdout_{cluster}_eval'",
        "--gin.CLUSTER_TABLE='tasks_registry.flan.clusters.CLUSTERS'",
        "--gin.CLUSTER_PREFIX='flan_'", "--gin.TRAIN_STEPS=7",
        "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.DECODE_METHOD='beam'"]
    # House quoting style: gin strings keep inner quotes inside double quotes.
    assert f"--gin.MODEL_DIR=\"'{model_dir}'\"" in out
  assert out.index("holdout_nli'") < out.index("holdout_coreference'")  # Requested order.
  assert os.path.join(str(root), "sweep_report.{md,json,png}") in out


def test_dry_run_commands_parse_as_gin(tmp_path, monkeypatch, capsys):
  """What the sweep would run configures train and eval as intended."""
  _instruct_jax(["sweep", "flan-holdout", "--dry-run", "--clusters=sentiment",
                 f"--model_dir_root={tmp_path}", "--gin_file=models/t5_1_1/tiny.gin",
                 "--gin.TRAIN_STEPS=7", "--train_binding=trainer.train.log_period=2"],
                monkeypatch)
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("instruct-jax ")]
  train_argv, eval_argv = (shlex.split(l)[1:] for l in lines)
  for argv in (train_argv, eval_argv):
    gin.clear_config()
    rest, bindings = gin_setup.split_gin_bindings(argv)
    files = [a.split("=", 1)[1] for a in rest if a.startswith("--gin_file=")]
    gin_setup.parse_gin(files, bindings)
    assert gin.query_parameter("%TRAIN_STEPS") == 7
    if argv[0] == "train":
      assert gin.query_parameter("%MODEL_DIR") == str(tmp_path / "holdout_sentiment")
      assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "flan_holdout_sentiment_train"
      assert gin.query_parameter("trainer.train.log_period") == 2
    else:
      assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "flan_holdout_sentiment_eval"
      assert gin.query_parameter("%EVAL_OUTPUT_DIR") == str(
          tmp_path / "holdout_sentiment" / "zero_shot")


def test_task_prefix_targets_the_registered_copy(tmp_path):
  flan.register(vocabulary=seqio.ByteVocabulary(), prefix=PREFIX)
  try:
    config = sweep.SweepConfig(str(tmp_path), RECIPE, clusters=("misc",), task_prefix=PREFIX,
                               gin_files=("runs/sweep_smoke.gin",))
    (run,) = sweep.plan(config)
    sweep.check_mixtures_registered([run], seqio.MixtureRegistry.names())
  finally:
    registration.remove_with_prefix(PREFIX)
  assert _flag_value(run.train_argv, "MIXTURE_OR_TASK_NAME") == f"{PREFIX}holdout_misc_train"
  assert _flag_value(run.eval_argv, "MIXTURE_OR_TASK_NAME") == f"{PREFIX}holdout_misc_eval"
  assert _flag_value(run.eval_argv, "CLUSTER_PREFIX") == PREFIX
  with pytest.raises(sweep.UsageError, match="not registered"):
    sweep.check_mixtures_registered([run], seqio.MixtureRegistry.names())


@pytest.mark.parametrize("argv, expected", [
    (["--clusters=nli,sentimnet"], "sentiment"),
    (["--gin.MODEL_DIR='/tmp/x'"], "--model_dir_root"),
    (["--train_binding=MIXTURE_OR_TASK_NAME='x'"], "--task_prefix"),
    ([], "needs a model gin"),
])
def test_bad_requests_are_explained(argv, expected, tmp_path, monkeypatch, capsys):
  with pytest.raises(SystemExit) as exit_info:
    model = ["--gin_file=models/t5_1_1/tiny.gin"] if argv else []
    _instruct_jax(["sweep", "flan-holdout", "--dry-run", f"--model_dir_root={tmp_path}",
                   *model, *argv], monkeypatch)
  assert exit_info.value.code == 1
  assert expected in capsys.readouterr().err


def test_shell_quote_round_trips():
  for arg in ["--gin.X='a b'", "--gin.X=\"q\"", "--gin.X='$HOME'", "plain", "--gin.D={'a': 1}",
              "it's", "--gin_file=my dir/x.gin"]:
    assert shlex.split(sweep.shell_quote(arg)) == [arg]
  assert sweep.shell_quote("--gin.MODEL_DIR='/r'") == "--gin.MODEL_DIR=\"'/r'\""


# ---------------------------------------------------------------------------
# Orchestration with a fake launcher: failures, resuming, the aggregate.
# ---------------------------------------------------------------------------


class FakeLauncher:
  """Records commands; train of `failing` clusters fails, eval writes fake metrics."""

  def __init__(self, failing=(), preempted=()):
    self.failing = set(failing)
    self.preempted = set(preempted)
    self.calls = []

  def __call__(self, argv):
    self.calls.append(list(argv))
    if argv[0] == "train":
      model_dir = _flag_value(argv, "MODEL_DIR")
      cluster = os.path.basename(model_dir).removeprefix("holdout_")
      if cluster in self.failing:
        raise sweep.StepFailedError("exit status 1: Out of memory (fake)")
      # What a real run leaves behind; a preempted one stops early but exits 0.
      step = 4 if cluster in self.preempted else 10
      os.makedirs(os.path.join(model_dir, f"checkpoint_{step}"), exist_ok=True)
      layout.write_run_status(model_dir, layout.RunStatus(
          total_steps=10, last_step=step, status="stopped" if step < 10 else "finished",
          time=0.0))
      return
    results = os.path.join(_flag_value(argv, "EVAL_OUTPUT_DIR"), "inference_eval")
    os.makedirs(results, exist_ok=True)
    mixture = _flag_value(argv, "MIXTURE_OR_TASK_NAME")
    tasks = {t.name: {"accuracy": 40.0 + i} for i, t in
             enumerate(seqio.get_mixture_or_task(mixture).tasks)}
    with open(os.path.join(results, "metrics_step_5.json"), "w") as f:
      json.dump({"step": 5, "tasks": tasks}, f)


def test_a_failed_cluster_is_reported_and_the_rerun_retries_only_it(tmp_path):
  config = sweep.SweepConfig(str(tmp_path), RECIPE, clusters=("nli", "coreference"),
                             gin_files=("models/t5_1_1/tiny.gin",))
  launcher = FakeLauncher(failing={"nli"})
  messages = []
  with pytest.raises(sweep.SweepFailedError, match=r"1 of 2 .*nli \(train: .*Out of memory"):
    sweep.run_sweep(config, launcher, say=messages.append)
  assert [c[0] for c in launcher.calls] == ["train", "train", "eval"]  # coreference went on.
  record = json.loads((tmp_path / "sweep_report.json").read_text())
  runs = {r["cluster"]: r for r in record["runs"]}
  assert runs["nli"]["status"] == "failed" and runs["nli"]["stage"] == "train"
  assert "Out of memory" in runs["nli"]["error"]
  assert runs["coreference"]["status"] == "evaluated" and runs["coreference"]["step"] == 5
  assert runs["coreference"]["train_command"].startswith("instruct-jax train ")
  assert [c["cluster"] for c in record["clusters"]] == ["coreference"]
  assert record["clusters"][0]["mean_score"] == pytest.approx(41.0)  # 40, 41, 42
  markdown = (tmp_path / "sweep_report.md").read_text()
  assert "| coreference | 3 | 41.00 |" in markdown and "nli (train)" in markdown

  launcher = FakeLauncher()
  messages.clear()
  outcomes = sweep.run_sweep(config, launcher, say=messages.append)
  assert [o.status for o in outcomes] == ["evaluated", "existing"]
  assert all("holdout_coreference" not in " ".join(c) for c in launcher.calls)
  assert any("coreference: zero-shot results exist" in m and "--force" in m for m in messages)
  record = json.loads((tmp_path / "sweep_report.json").read_text())
  assert [c["cluster"] for c in record["clusters"]] == ["coreference", "nli"]

  launcher = FakeLauncher()
  sweep.run_sweep(config, launcher, force=True, say=messages.append)
  assert len(launcher.calls) == 4


def test_a_preempted_training_stops_the_sweep_before_its_eval(tmp_path):
  config = sweep.SweepConfig(str(tmp_path), RECIPE, clusters=("sentiment", "nli"))
  launcher = FakeLauncher(preempted={"sentiment"})
  with pytest.raises(sweep.SweepInterruptedError, match="stopped at step 4 of 10"):
    sweep.run_sweep(config, launcher, say=lambda message: None)
  assert [c[0] for c in launcher.calls] == ["train"]


def test_sigterm_during_a_run_lets_it_finish_then_stops_the_sweep(tmp_path):
  config = sweep.SweepConfig(str(tmp_path), RECIPE, clusters=("sentiment", "nli"))
  fake = FakeLauncher()

  def launcher(argv):
    os.kill(os.getpid(), signal.SIGTERM)  # Reaches the run too; it saves and exits.
    fake(argv)

  messages = []
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(sweep.SweepInterruptedError, match="SIGTERM during the train run"):
    sweep.run_sweep(config, launcher, say=messages.append)
  assert [c[0] for c in fake.calls] == ["train"]
  assert any("waiting for the current run" in m for m in messages)
  assert signal.getsignal(signal.SIGTERM) is handler  # Restored.


def test_an_interrupted_run_stops_the_sweep_even_without_run_json(tmp_path):
  """Exit status 75 (StepInterruptedError) alone stops the sweep: no eval, no next cluster."""
  config = sweep.SweepConfig(str(tmp_path), RECIPE, clusters=("sentiment", "nli"))
  calls = []

  def launcher(argv):
    calls.append(argv[0])
    raise sweep.StepInterruptedError("exit status 75: stopped by a signal after saving a "
                                     "checkpoint")

  messages = []
  with pytest.raises(sweep.SweepInterruptedError,
                     match=r"train run of held-out cluster sentiment was stopped.*Rerun the "
                           r"same command to resume"):
    sweep.run_sweep(config, launcher, say=messages.append)
  assert calls == ["train"]
  assert not any("FAILED" in m for m in messages)
  assert not (tmp_path / "sweep_report.json").exists()


def test_exit_status_maps_to_the_launcher_error():
  assert sweep.step_error(0, ["noise"]) is None
  stopped = sweep.step_error(75, ["Traceback", "ValueError: not this"])
  assert type(stopped) is sweep.StepInterruptedError and "exit status 75" in str(stopped)
  failed = sweep.step_error(1, ["x", "instruct-jax: error: bad flag; fix it", "y"])
  assert type(failed) is sweep.StepFailedError
  assert str(failed) == "exit status 1: bad flag; fix it"
  assert type(sweep.step_error(-9, [])) is sweep.StepFailedError  # Killed: a failure.


def test_subprocess_launcher_raises_interrupted_on_exit_status_75(tmp_path, monkeypatch):
  fake_python = tmp_path / "python"
  fake_python.write_text("#!/bin/sh\necho 'Stopped by SIGTERM at step 3' >&2\nexit 75\n")
  fake_python.chmod(0o755)
  monkeypatch.setattr(sys, "executable", str(fake_python))
  with pytest.raises(sweep.StepInterruptedError, match="exit status 75"):
    sweep.run_subprocess(["train"])


def test_in_process_launcher_maps_run_stopped_to_interrupted(monkeypatch):
  def stopped(argv, join_job):
    del argv, join_job
    raise errors.RunStopped("Stopped by SIGTERM at step 3; checkpoint saved in /r. Run the "
                            "same command again to resume.")
  monkeypatch.setattr(cli, "run_command", stopped)
  with pytest.raises(sweep.StepInterruptedError, match="Stopped by SIGTERM at step 3"):
    sweep_cli.run_in_process(["train"])


def test_subprocess_launcher_reports_the_cli_error():
  with pytest.raises(sweep.StepFailedError) as error:
    sweep.run_subprocess(["eval"])  # No gin files: the CLI explains and exits 1.
  assert str(error.value).startswith("exit status 1: eval needs gin files")


# ---------------------------------------------------------------------------
# End to end: a tiny model, one held-out cluster, in this process.
# ---------------------------------------------------------------------------


@pytest.fixture
def byte_flan_under_mock_data(monkeypatch):
  """A byte-vocabulary FLAN copy with a small holdout train mixture, TFDS mock data."""
  flan.register(vocabulary=seqio.ByteVocabulary(), prefix=PREFIX)
  # Two training tasks from clusters that stay in training when coreference is held out.
  registration.replace_mixture(f"{PREFIX}holdout_coreference_train",
                               [f"{PREFIX}rte", f"{PREFIX}sst2"], default_rate=1.0)
  # Mock data has no split metadata; seqio only uses the count for in-memory caching.
  monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)
  # Nor file lists: seqio then shards the examples instead of the (unknown) files.
  monkeypatch.setattr(seqio.TfdsDataSource, "list_shards", lambda self, split: [])
  try:
    with tfds.testing.mock_data(num_examples=8, max_value=5):
      yield
  finally:
    registration.remove_with_prefix(PREFIX)


@pytest.mark.slow
def test_holdout_cluster_trains_evaluates_and_reports(tmp_path, monkeypatch, capsys,
                                                      byte_flan_under_mock_data):
  del byte_flan_under_mock_data
  root = tmp_path / "sweep"
  argv = ["sweep", "flan-holdout", "--clusters=coreference", f"--model_dir_root={root}",
          "--gin_file=runs/sweep_smoke.gin", f"--task_prefix={PREFIX}",
          "--launcher=in_process", "--gin.TRAIN_STEPS=3", "--gin.EVAL_NUM_EXAMPLES=4"]
  _instruct_jax(argv, monkeypatch)
  out = capsys.readouterr().out

  model_dir = root / "holdout_coreference"
  assert (model_dir / "checkpoint_3").is_dir()
  assert "holdout_coreference_train" in (model_dir / "config.gin").read_text()
  results = model_dir / "zero_shot" / "inference_eval"
  metrics = json.loads((results / "metrics_step_3.json").read_text())
  eval_tasks = {t.name for t in seqio.get_mixture_or_task(
      f"{PREFIX}holdout_coreference_eval").tasks}
  assert set(metrics["tasks"]) == eval_tasks
  # Every coreference dataset has options: rank classification accuracy.
  assert all(0.0 <= m["accuracy"] <= 100.0 for m in metrics["tasks"].values())

  report = json.loads((root / "sweep_report.json").read_text())
  assert [c["cluster"] for c in report["clusters"]] == ["coreference"]
  assert sorted(report["clusters"][0]["tasks"]) == sorted(eval_tasks)
  assert report["runs"][0]["status"] == "evaluated" and report["runs"][0]["step"] == 3
  markdown = (root / "sweep_report.md").read_text()
  assert "| coreference | 3 |" in markdown and "| coreference | evaluated | 3 |" in markdown
  assert (root / "sweep_report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
  assert "| coreference |" in out  # The aggregate is printed too.

  # Rerunning skips the finished cluster and rebuilds the same aggregate.
  _instruct_jax(argv, monkeypatch)
  out = capsys.readouterr().out
  assert "zero-shot results exist" in out and "skipping" in out
  again = json.loads((root / "sweep_report.json").read_text())
  assert again["clusters"] == report["clusters"]
  assert again["runs"][0]["status"] == "existing"
