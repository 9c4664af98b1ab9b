"""Checkpoint selection, and the CoT recipe end to end: distil, then `instruct-jax select`."""
import json
import os

import gin
import pytest
import seqio

import cot_data
from instruct_jax import cli
from instruct_jax.cli import selection as selection_cli
from instruct_jax.eval import selection
from instruct_jax.eval.reports import selection as selection_report
from instruct_jax.errors import UsageError
from tasks_registry import cot as cot_tasks
from tasks_registry import registration


def test_choose_step_takes_the_best_mean_and_the_earliest_on_ties():
  assert selection.choose_step({100: 30.0, 200: 55.0, 300: 40.0}) == 200
  assert selection.choose_step({100: 50.0, 200: 50.0, 300: None}) == 100
  with pytest.raises(UsageError, match="No checkpoint produced a score"):
    selection.choose_step({100: None})


def test_mean_primary_score_averages_each_tasks_primary_metric():
  metrics = {"a": {"accuracy": 40.0, "num_examples": 10.0}, "b": {"accuracy": 60.0},
             "c": {}}
  assert selection.mean_primary_score(metrics) == 50.0
  assert selection.mean_primary_score({}) is None


def test_checkpoint_steps_lists_finished_steps_only(tmp_path):
  with pytest.raises(UsageError, match="No finished checkpoint"):
    selection.checkpoint_steps(str(tmp_path))
  (tmp_path / "checkpoint_20.orbax-checkpoint-tmp-12").mkdir()
  with pytest.raises(UsageError, match="not a directory"):
    selection.checkpoint_steps(str(tmp_path / "missing"))


def test_reports_mark_the_chosen_step(tmp_path):
  metrics = {10: {"cot_eval_svamp": {"accuracy": 20.0}, "cot_eval_asdiv": {"accuracy": 30.0}},
             20: {"cot_eval_svamp": {"accuracy": 40.0}, "cot_eval_asdiv": {"accuracy": 10.0}}}
  means = {10: 25.0, 20: 25.0}
  paths = selection_report.render_report("mix", metrics, means, 10, "/run/ckpt_10").write(
      str(tmp_path))
  table = open(paths["markdown"]).read()
  assert "| 10 **(chosen)** | 25.00 | 30.00 | 20.00 |" in table
  assert json.load(open(paths["json"]))["best_step"] == 10
  assert open(paths["png"], "rb").read(4) == b"\x89PNG"


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()
  registration.remove_with_prefix("test_sel")


def _select_config(*flags):
  """What `select` would run with: the model gin, runs/select.gin, then the flags."""
  args = cli.build_parser().parse_args(
      ["select", "--gin_file=models/t5_1_1/tiny.gin", "--model_dir=/runs/r", *flags])
  args.gin_bindings = []
  cli.gin_setup.parse_gin(args.gin_file, [])  # What `instruct-jax` does before run(args).
  selection_cli.configure(args)
  cfg = gin.query_parameter("selection.select_checkpoint.dataset_cfg").scoped_configurable_fn()
  macro = lambda name: gin.query_parameter(f"{name}/macro.value")
  return cfg, macro


def test_select_flags_are_shortcuts_for_select_gin_macros(clean_gin):
  cfg, macro = _select_config()
  assert (cfg.mixture_or_task_name, cfg.split, cfg.batch_size, cfg.module, cfg.seed) == (
      selection.DEFAULT_MIXTURE, "test", 32, "tasks_registry", 42)
  assert cfg.task_feature_lengths == {"inputs": 1024, "targets": 256}
  assert macro("MODEL_DIR") == "/runs/r" and macro("SELECT_STEPS") is None
  gin.clear_config()
  cfg, macro = _select_config("--mixture=m", "--split=validation", "--batch_size=8",
                              "--targets_length=16", "--num_examples=3", "--steps=2,4",
                              "--output_dir=/out", "--module=mod", "--num_partitions=2")
  assert (cfg.mixture_or_task_name, cfg.split, cfg.batch_size, cfg.module) == (
      "m", "validation", 8, "mod")
  assert cfg.task_feature_lengths == {"inputs": 1024, "targets": 16}
  assert [macro(n) for n in ("EVAL_NUM_EXAMPLES", "SELECT_STEPS", "EVAL_OUTPUT_DIR",
                             "NUM_PARTITIONS")] == [3, [2, 4], "/out", 2]


@pytest.mark.slow
def test_distil_then_select_end_to_end(tmp_path, clean_gin, capsys):
  teacher = cot_data.write_teacher_file(str(tmp_path / "teacher.jsonl"), num=32)
  heldout = cot_data.write_heldout_files(str(tmp_path), num=4)
  model_dir = tmp_path / "run"
  cli.main([
      "train", "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=experiments/cot/distill.gin",
      f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TEACHER_FILE='{teacher}'",
      "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.TRAIN_STEPS=4", "--gin.WARMUP_STEPS=1",
      "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=4", "--gin.LOG_PERIOD=2",
      "--gin.BATCH_SIZE=8", "--gin.ACTIVATION_DTYPE='float32'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 96}",
      "--gin.cot.register_teacher_tasks.prefix='test_sel_teacher'",
      "--gin.cot.register_teacher_tasks.max_input_tokens=256",
      "--gin.cot.register_teacher_tasks.validation_fraction=0.2",
  ])
  config = (model_dir / "config.gin").read_text()
  assert "MODEL = @distillation.DistillationModel()" in config
  assert "DISTILLATION_OBJECTIVE = 'distribution_matching'" in config
  records = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 2 and all(l > 0 for l in losses)
  assert any("eval/test_sel_teacher_few_shot_cot/loss" in r for r in records)
  assert sorted(p for p in os.listdir(model_dir) if p.startswith("checkpoint_")) == [
      "checkpoint_2", "checkpoint_4"]

  # Held-out math sets from generated files, tokenised like the tiny model (bytes).
  cot_tasks.register_math_eval_tasks(seqio.ByteVocabulary(), files=heldout,
                                     prefix="test_sel_eval", mixture_prefix="test_sel",
                                     max_input_tokens=256)
  gin.clear_config()
  capsys.readouterr()
  cli.main(["select", f"--model_dir={model_dir}", "--mixture=test_sel_heldout_math_eval",
            "--batch_size=8", "--inputs_length=256", "--targets_length=16"])
  out = capsys.readouterr().out
  result = json.load(open(model_dir / "selection" / "selection.json"))
  assert [s["step"] for s in result["steps"]] == [2, 4]
  for step in result["steps"]:
    assert sorted(step["tasks"]) == ["test_sel_eval_asdiv_few_shot_cot",
                                     "test_sel_eval_multiarith_few_shot_cot",
                                     "test_sel_eval_svamp_few_shot_cot"]
    assert 0.0 <= step["mean_score"] <= 100.0
  best = result["best_step"]
  assert result["best_checkpoint"] == str(model_dir / f"checkpoint_{best}")
  assert f"Chosen checkpoint: {model_dir / f'checkpoint_{best}'}" in out
  assert (model_dir / "selection" / "selection.png").exists()
  assert "**(chosen)**" in (model_dir / "selection" / "selection.md").read_text()
