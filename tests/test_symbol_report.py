"""The side-by-side symbol-tuning report, the symbol-eval command and the experiment gins."""
import json

import gin
import pytest

from instruct_jax import cli

from instruct_jax.cli import gin_setup
from instruct_jax.eval import symbol_suites
from instruct_jax.eval.reports import symbols as symbol_report

LAYOUT = symbol_suites.SuiteLayout(
    runs=(symbol_suites.EvalRun("eval_mix"), symbol_suites.EvalRun("bb_mix", "all")),
    cells={
        "a_instr": symbol_suites.Cell("Unseen", "a", "instruction"),
        "a_plain": symbol_suites.Cell("Unseen", "a", "plain"),
        "b_instr": symbol_suites.Cell("Unseen", "b", "instruction"),
        "b_plain": symbol_suites.Cell("Unseen", "b", "plain"),
        "lf_c001": symbol_suites.Cell("Algorithmic", "list_functions", "generation"),
        "lf_c002": symbol_suites.Cell("Algorithmic", "list_functions", "generation"),
        "never_run": symbol_suites.Cell("Algorithmic", "simp_turing_concept", "generation"),
    })
METRICS = {
    "a_instr": {"accuracy": 80.0, "num_examples": 10.0},
    "a_plain": {"accuracy": 60.0},
    "b_instr": {"accuracy": 40.0},
    "b_plain": {"accuracy": 20.0},
    "lf_c001": {"accuracy": 10.0},
    "lf_c002": {"accuracy": 30.0},
    "other_task": {"accuracy": 99.0},  # Not in the layout: ignored.
}


def test_report_puts_settings_side_by_side_and_averages_subtasks():
  report = symbol_report.build_report(METRICS, LAYOUT.cells, step=7, checkpoint="/ckpt")
  unseen, algorithmic = report["tables"]
  assert unseen["title"] == "Unseen" and unseen["columns"] == ["instruction", "plain"]
  assert [(r["row"], r["scores"]) for r in unseen["rows"]] == [
      ("a", {"instruction": 80.0, "plain": 60.0}), ("b", {"instruction": 40.0, "plain": 20.0})]
  assert unseen["mean"] == {"instruction": 60.0, "plain": 40.0}
  rows = {r["row"]: r for r in algorithmic["rows"]}
  assert rows["list_functions"]["scores"] == {"generation": 20.0}
  assert rows["list_functions"]["num_tasks"] == {"generation": 2}
  assert rows["simp_turing_concept"]["scores"] == {"generation": None}
  assert report["missing"] == ["never_run"]
  assert LAYOUT.cluster_of("b_plain") == "Unseen" and LAYOUT.cluster_of("x") == "other"


def test_markdown_png_and_json_files(tmp_path):
  report = symbol_report.build_report(METRICS, LAYOUT.cells, step=7)
  markdown = symbol_report.render_markdown(report, title="T")
  assert "# T (step 7)" in markdown
  assert "| | instruction | plain |" in markdown
  assert "| a | 80.00 | 60.00 |" in markdown and "| **mean** | **60.00** | **40.00** |" in markdown
  assert "| simp_turing_concept | - |" in markdown and "Not evaluated" in markdown
  paths = symbol_report.render_report(report, title="T").write(str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "symbol_report_step_7.json", "symbol_report_step_7.md", "symbol_report_step_7.png"]
  assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert json.load(open(paths["json"]))["tables"][0]["mean"]["plain"] == 40.0
  empty = symbol_report.build_report({}, LAYOUT.cells)
  assert symbol_report.plot_report(empty)[:4] == b"\x89PNG"


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_symbol_eval_command_needs_its_gin_file(clean_gin, capsys):
  with pytest.raises(SystemExit):
    cli.main(["symbol-eval", "--gin_file=models/t5_1_1/tiny.gin"])
  assert "symbol_eval.evaluate_suites" in capsys.readouterr().err


def test_experiment_gins_parse(clean_gin):
  model_dir = ["MODEL_DIR = '/tmp/symbol_run'"]
  gin_setup.parse_gin(["models/t5_1_1/tiny.gin", "experiments/symbol_tuning/base.gin"], model_dir)
  assert gin.query_parameter("MIXTURE_OR_TASK_NAME/macro.value") == "symbol_tuning_mix_16"
  assert gin.query_parameter("TRAIN_STEPS/macro.value") == 2000
  assert "flan_t5" in gin.query_parameter("INITIAL_CHECKPOINT_PATH/macro.value")
  gin.clear_config()
  gin_setup.parse_gin(["models/t5_1_1/tiny.gin", "experiments/symbol_tuning/symbols_only.gin"],
                model_dir)
  assert gin.query_parameter("MIXTURE_OR_TASK_NAME/macro.value") == "symbol_tuning_train"
  gin.clear_config()
  gin_setup.parse_gin(["models/t5_1_1/tiny.gin", "experiments/symbol_tuning/eval.gin"],
                ["CHECKPOINT_PATH = '/tmp/ckpt'", "BIGBENCH_DIR = '/data/BIG-bench'"])
  assert gin.query_parameter("BIGBENCH_DIR/macro.value") == "/data/BIG-bench"
  assert gin.query_parameter("TASK_FEATURE_LENGTHS/macro.value")["inputs"] == 1024
