"""`instruct-jax symbol-eval`: the symbol-tuning evaluation suites on one checkpoint.

    instruct-jax symbol-eval --gin_file=models/flan_t5/base.gin \
      --gin_file=experiments/symbol_tuning/eval.gin \
      --gin.CHECKPOINT_PATH="'gs://bucket/symbol_tuned/checkpoint_2000'" \
      --gin.BIGBENCH_DIR="'/data/BIG-bench'"

Runs every EvalRun of a SuiteLayout (tasks_registry.symbol_tuning.
evaluation_suites: unseen in-context classification under four prompt
settings, flipped labels, and — given a BIG-bench checkout — list_functions
and simp_turing_concept) with one set of loaded parameters, through one
EvalSession (instruct_jax.eval.session), then writes under OUTPUT_DIR
(default: the checkpoint's MODEL_DIR)/inference_eval:
  metrics_step_<step>.json, report_step_<step>.*     every task (the eval report)
  symbol_report_step_<step>.{md,json,png}             the settings side by side
                                                      (instruct_jax.eval.reports.symbols)
plus seqio's per-task metrics / predictions files.

The layout types live here, next to the function that runs them; the task
registry builds a SuiteLayout and the report renderer reads its cells.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from instruct_jax.checkpoints import layout
from instruct_jax.eval import session as session_lib
from instruct_jax.eval.reports import evaluation as reports
from instruct_jax.eval.reports import symbols as symbol_report
from instruct_jax.models import decoding
from instruct_jax.train import partitioning


@dataclasses.dataclass(frozen=True)
class Cell:
  """Where one task's score goes in the report."""
  table: str
  row: str
  column: str


@dataclasses.dataclass(frozen=True)
class EvalRun:
  """One seqio.Evaluator pass: a task or mixture on one split."""
  mixture_or_task_name: str
  split: str = "validation"


@dataclasses.dataclass(frozen=True)
class SuiteLayout:
  """The evaluation runs of the suites and each task's cell in the report."""
  runs: tuple[EvalRun, ...]
  cells: Mapping[str, Cell]

  def __post_init__(self):
    if not self.runs:
      raise ValueError("A SuiteLayout needs at least one EvalRun.")

  def cluster_of(self, task_name: str) -> str:
    """The task's table, for the generic per-cluster report (reports.evaluation)."""
    cell = self.cells.get(task_name)
    return cell.table if cell else reports.UNKNOWN_CLUSTER


def evaluate_suites(*,
                    model: Any,
                    checkpoint_path: str,
                    partitioner: partitioning.Partitioner,
                    suites: SuiteLayout,
                    batch_size: int = 32,
                    task_feature_lengths: Optional[dict[str, int]] = None,
                    output_dir: Optional[str] = None,
                    decode_cfg: Optional[decoding.DecodeConfig] = None,
                    num_examples: Optional[int] = None,
                    use_cached: bool = False,
                    seed: int = 0,
                    title: str = symbol_report.DEFAULT_TITLE) -> dict[str, Any]:
  """Evaluates `checkpoint_path` on every run of `suites`; prints and returns the report data.

  `task_feature_lengths` None: each task's longest example (one compilation
  per task); fixed lengths compile once and bound the in-context prompts'
  token budget (inputs length - 1). `num_examples` caps each task. `seed`:
  the evaluators' data seed and the decoding rng.
  """
  output_dir = layout.eval_dir(output_dir or layout.model_dir_of_checkpoint(checkpoint_path))
  session = session_lib.EvalSession(model, partitioner, batch_size, decode_cfg, seed)
  step = session.load(checkpoint_path)
  task_metrics = {}
  for run_cfg in suites.runs:
    task_metrics.update(session.evaluate(
        run_cfg.mixture_or_task_name, run_cfg.split, task_feature_lengths, log_dir=output_dir,
        num_examples=num_examples, use_cached=use_cached))
  report = symbol_report.build_report(task_metrics, suites.cells, step, checkpoint_path)
  written = session.write_results(
      output_dir, step=step, task_metrics=task_metrics, cluster_of=suites.cluster_of,
      extra={"checkpoint": checkpoint_path,
             "runs": [f"{r.mixture_or_task_name}:{r.split}" for r in suites.runs]})
  if written.paths:  # Process 0 only.
    rendered = symbol_report.render_report(report, title)
    paths = {**written.paths,
             **{f"symbol_{k}": v for k, v in rendered.write(output_dir).items()}}
    session_lib.print_written(session_lib.Written(rendered.markdown, paths))
    report["paths"] = paths
  return report
