"""The checkpoint-selection report: a table of every step's scores and a plot over steps.

Rows are checkpoint steps, columns the mean primary score and each task's
primary score (instruct_jax.eval.reports.evaluation.primary_metric); the chosen
step is marked in both. Written as selection.{md,json,png}.
"""
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from instruct_jax.eval.reports import evaluation as reports
from instruct_jax.eval.reports import toolkit

REPORT_NAME = "selection"
StepMetrics = Mapping[int, Mapping[str, Mapping[str, float]]]  # step -> task -> metric -> value


def _primary(metrics: Mapping[str, float]) -> Optional[float]:
  found = reports.primary_metric(metrics)
  return None if found is None else found[1]


def _tasks(task_metrics: StepMetrics) -> list[str]:
  return sorted({t for m in task_metrics.values() for t in m})


def render_markdown(mixture: str, task_metrics: StepMetrics,
                    mean_scores: Mapping[int, Optional[float]], best_step: int,
                    best_checkpoint: str) -> str:
  fmt = toolkit.format_score
  tasks = _tasks(task_metrics)
  lines = [f"# Checkpoint selection on {mixture}", "",
           f"Chosen: step {best_step} ({best_checkpoint}), mean score "
           f"{fmt(mean_scores.get(best_step))}.", ""]
  rows = [[f"{step}" + (" **(chosen)**" if step == best_step else ""),
           fmt(mean_scores.get(step)),
           *(fmt(_primary(task_metrics[step].get(t, {}))) for t in tasks)]
          for step in sorted(task_metrics)]
  lines += toolkit.markdown_table(["Step", "Mean", *tasks], ["---:"] * (2 + len(tasks)), rows)
  return "\n".join(lines) + "\n"


def plot_selection(mixture: str, task_metrics: StepMetrics,
                   mean_scores: Mapping[int, Optional[float]], best_step: int) -> bytes:
  """PNG bytes: every task's primary score and the mean over training steps."""
  steps = sorted(task_metrics)

  def draw(figure):
    axes = figure.add_subplot(1, 1, 1)
    for task in _tasks(task_metrics):
      values = [_primary(task_metrics[s].get(task, {})) for s in steps]
      axes.plot(steps, [np.nan if v is None else v for v in values], marker="o", alpha=0.6,
                linewidth=1, label=task)
    means = [mean_scores.get(s) for s in steps]
    axes.plot(steps, [np.nan if v is None else v for v in means], color="black",
              linewidth=2.5, marker="s", label="mean")
    if mean_scores.get(best_step) is not None:
      axes.scatter([best_step], [mean_scores[best_step]], s=220, marker="*", color="#C44E52",
                   zorder=5, label=f"chosen (step {best_step})")
    axes.set_xlabel("training step")
    axes.set_ylabel("score (primary metric)")
    axes.set_title(f"Checkpoint selection on {mixture}")
    axes.legend(fontsize=7, loc="best")
    axes.grid(alpha=0.3)

  return toolkit.render_png(draw, (7.0, 4.5))


def render_report(mixture: str, task_metrics: StepMetrics,
                  mean_scores: Mapping[int, Optional[float]], best_step: int,
                  best_checkpoint: str) -> toolkit.Report:
  """selection.{md,json,png}: the table, every step's metrics and mean, and the plot."""
  record: dict[str, Any] = {
      "mixture_or_task_name": mixture,
      "best_step": best_step,
      "best_checkpoint": best_checkpoint,
      "steps": [{"step": step, "mean_score": mean_scores.get(step),
                 "tasks": task_metrics[step]} for step in sorted(task_metrics)],
  }
  return toolkit.Report(
      REPORT_NAME,
      render_markdown(mixture, task_metrics, mean_scores, best_step, best_checkpoint), record,
      plot_selection(mixture, task_metrics, mean_scores, best_step))
