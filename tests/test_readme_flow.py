"""The README's "Register a new seqio task" flow, run verbatim as a new user would.

The README marks its blocks with `<!-- readme-task-flow: NAME -->`: `my_tasks.py`
is written to a fresh directory and `commands` runs there in bash, through the
installed `instruct-jax` console script (which, unlike `python -m`, does not put
the working directory on sys.path), with no PYTHONPATH.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from instruct_jax.checkpoints import layout
from instruct_jax.data import pipeline
from instruct_jax.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCK = re.compile(r"<!-- readme-task-flow: (\S+) -->\s*```\w*\n(.*?)```", re.DOTALL)


def readme_blocks() -> dict[str, str]:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    return dict(_BLOCK.findall(f.read()))


def _user_env() -> dict:
  """The environment of a user's shell: the console script on PATH, nothing on PYTHONPATH."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "XLA_FLAGS", "PWD")}
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  return env


def _run(command, cwd):
  shell = isinstance(command, str)
  return subprocess.run(["bash", "-e", "-c", command] if shell else command, cwd=cwd,
                        env=_user_env(), capture_output=True, text=True, timeout=600)


def test_readme_marks_the_task_module_and_the_commands():
  blocks = readme_blocks()
  assert set(blocks) == {"my_tasks.py", "commands"}
  assert '"my_reverse_words"' in blocks["my_tasks.py"]
  assert "metric_fns=" in blocks["my_tasks.py"]


@pytest.mark.slow
def test_readme_task_flow_runs_verbatim(tmp_path):
  blocks = readme_blocks()
  (tmp_path / "my_tasks.py").write_text(blocks["my_tasks.py"])
  result = _run(blocks["commands"], tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr

  model_dir = tmp_path / "reverse_words_run"
  assert (model_dir / "checkpoint_30").is_dir()
  # eval printed the task's score and wrote the report next to the checkpoints.
  assert re.search(r"\| my_reverse_words \| all \| accuracy \| \d+\.\d+ \|", result.stdout), (
      result.stdout)
  report = json.loads((model_dir / "inference_eval" / "metrics_step_30.json").read_text())
  assert set(report["tasks"]["my_reverse_words"]) >= {"accuracy"}
  predictions = [json.loads(line) for line in (tmp_path / "reversed.jsonl").read_text()
                 .splitlines()]
  assert len(predictions) == 1 and isinstance(predictions[0]["prediction"], str)

  # The main job pointed at this MODEL_DIR: refused before anything is touched.
  before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
  run_status = (model_dir / "run.json").read_text()
  refused = _run(["instruct-jax", "train", "--gin_file=runs/smoke.gin",
                  f"--gin.MODEL_DIR='{model_dir}'"], tmp_path)
  assert refused.returncode == 1, refused.stdout + refused.stderr
  assert (f"MODEL_DIR {model_dir} holds checkpoints of a run trained on 'my_reverse_words'"
          in refused.stderr), refused.stderr
  assert "this run asks for 'smoke_train'" in refused.stderr
  assert f"--gin.INITIAL_CHECKPOINT_PATH=\"'{model_dir}/checkpoint_30'\"" in refused.stderr
  assert "Traceback" not in refused.stderr
  assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
  assert (model_dir / "run.json").read_text() == run_status


@pytest.fixture
def bare_sys_path(tmp_path, monkeypatch):
  """cwd = tmp_path, which is not on sys.path (as under the console script)."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  yield tmp_path
  for name in [n for n in sys.modules if n.startswith("readme_flow_probe")]:
    del sys.modules[name]


def test_task_module_is_found_in_the_working_directory(bare_sys_path):
  (bare_sys_path / "readme_flow_probe.py").write_text("REGISTERED = True\n")
  module = pipeline.import_registry_module("readme_flow_probe")
  assert module.REGISTERED
  assert module.__file__ == str(bare_sys_path / "readme_flow_probe.py")


def test_missing_task_module_names_the_working_directory_and_the_fix(bare_sys_path):
  with pytest.raises(UsageError, match=(
      r"Cannot import the task module 'readme_flow_probe_absent' \(MIXTURE_OR_TASK_MODULE\): "
      rf"it is not installed and the working directory {re.escape(str(bare_sys_path))} holds "
      r"no readme_flow_probe_absent\.py .*Run the command from the directory that holds")):
    pipeline.import_registry_module("readme_flow_probe_absent")
  with pytest.raises(UsageError, match="is a file name; give the module name, 'my_tasks'"):
    pipeline.import_registry_module("my_tasks.py")


def test_a_missing_import_inside_the_task_module_is_not_hidden(bare_sys_path):
  (bare_sys_path / "readme_flow_probe_broken.py").write_text("import readme_flow_no_such_dep\n")
  with pytest.raises(ModuleNotFoundError, match="readme_flow_no_such_dep"):
    pipeline.import_registry_module("readme_flow_probe_broken")


def test_mixture_check_reads_the_newest_launch_record(tmp_path):
  model_dir = str(tmp_path)
  layout.check_same_mixture(model_dir, "b")  # Nothing recorded, no checkpoints: nothing to do.
  layout.record_config(model_dir, "MIXTURE_OR_TASK_NAME = 'a'\n"
                                  "train/pipeline.DatasetConfig.mixture_or_task_name = "
                                  "%MIXTURE_OR_TASK_NAME\n")
  layout.check_same_mixture(model_dir, "b")  # No checkpoint to resume yet.
  (tmp_path / "checkpoint_5").mkdir()
  with pytest.raises(UsageError, match="trained on 'a' .*this run asks for 'b'"):
    layout.check_same_mixture(model_dir, "b")
  layout.check_same_mixture(model_dir, "a")
  # A later launch bound the name directly (no macro): that record wins.
  layout.record_config(model_dir, "train/pipeline.DatasetConfig.mixture_or_task_name = 'b'\n")
  assert layout.recorded_mixture(model_dir) == "b"
  layout.check_same_mixture(model_dir, "b")
