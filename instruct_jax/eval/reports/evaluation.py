"""Evaluation reports: per-task and per-cluster tables (markdown + JSON) and a bar chart.

A held-out-cluster run (train on some task clusters, evaluate zero-shot on
another) is read at a glance from the cluster table and the PNG. Which
cluster a task belongs to comes from the caller as `cluster_of(task_name)`;
`cluster_lookup` builds one from a registry table such as
tasks_registry.smoke.CLUSTERS or tasks_registry.flan.clusters.CLUSTERS.

Each task is summarised by one primary score: the first of PRIMARY_METRICS it
reports (metrics are percentages in seqio's convention), else its first
metric. A cluster's score is the mean of its tasks' primary scores.
"""

import pkgutil
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Union

import numpy as np

from instruct_jax.checkpoints import layout
from instruct_jax.eval.reports import toolkit

PRIMARY_METRICS = ("accuracy", "exact_match", "em", "f1", "rougeLsum", "rougeL", "rouge1",
                   "bleu", "matthews_corrcoef", "pearson_corrcoef", "spearman_corrcoef")
# Bookkeeping values some metric functions report next to their scores.
_NOT_SCORES = ("num_examples",)
UNKNOWN_CLUSTER = "other"
ALL_TASKS = "all"


def primary_metric(task_metrics: Mapping[str, float]) -> Optional[tuple[str, float]]:
  """(name, value) of the metric that summarises a task, or None if it has none."""
  for name in PRIMARY_METRICS:
    if name in task_metrics:
      return name, float(task_metrics[name])
  for name, value in task_metrics.items():
    if name not in _NOT_SCORES:
      return name, float(value)
  return None


ClusterTable = Mapping[str, Iterable[Union[str, Callable[..., Any]]]]


def cluster_lookup(clusters: Union[None, str, ClusterTable], prefix: str = "",
                   default: str = UNKNOWN_CLUSTER) -> Callable[[str], str]:
  """cluster_of(task_name) from a {cluster: members} table.

  `clusters` is the table itself or its dotted import path, e.g.
  "tasks_registry.smoke.CLUSTERS" (handy in gin files, which cannot name a
  module constant); None puts every task in one cluster, "all".

  Members are task-name stems: strings, or functions matched by __name__ (as
  tasks_registry.smoke.CLUSTERS lists its example builders). A task belongs to
  the cluster of the longest member m such that the task name, without
  `prefix`, is m or starts with m + "_" (so "flan_anli_r1_eval" with prefix
  "flan_" finds member "anli"). Unmatched tasks go to `default`.
  """
  if clusters is None:
    return lambda task_name: ALL_TASKS
  if isinstance(clusters, str):
    clusters = _import_attribute(clusters)
  stems = {}
  for cluster, members in clusters.items():
    for member in members:
      stem = member if isinstance(member, str) else getattr(member, "__name__", None)
      if not isinstance(stem, str):
        raise ValueError(f"Cluster {cluster!r} member {member!r} is neither a task-name "
                         "stem nor a named function.")
      stems[stem] = cluster
  ordered = sorted(stems, key=len, reverse=True)

  def cluster_of(task_name: str) -> str:
    name = task_name[len(prefix):] if prefix and task_name.startswith(prefix) else task_name
    for stem in ordered:
      if name == stem or name.startswith(stem + "_"):
        return stems[stem]
    return default

  return cluster_of


def _import_attribute(dotted_path: str) -> Any:
  try:
    return pkgutil.resolve_name(dotted_path)
  except (ImportError, AttributeError, ValueError) as e:
    raise ValueError(f"Cannot import the cluster table {dotted_path!r} ({e}); give a dotted "
                     "path such as 'tasks_registry.smoke.CLUSTERS'.") from e


def build_report(task_metrics: Mapping[str, Mapping[str, float]],
                 cluster_of: Optional[Callable[[str], str]] = None,
                 step: Optional[int] = None) -> dict[str, Any]:
  """The report as plain data (what report_step_<step>.json holds)."""
  tasks = []
  for task in sorted(task_metrics):
    values = {k: float(v) for k, v in task_metrics[task].items()}
    primary = primary_metric(values)
    tasks.append({
        "task": task,
        "cluster": cluster_of(task) if cluster_of else ALL_TASKS,
        "metric": primary[0] if primary else None,
        "score": primary[1] if primary else None,
        "metrics": values,
    })
  clusters = []
  for cluster in sorted({t["cluster"] for t in tasks}):
    scores = [t["score"] for t in tasks if t["cluster"] == cluster and t["score"] is not None]
    clusters.append({
        "cluster": cluster,
        "num_tasks": sum(t["cluster"] == cluster for t in tasks),
        "mean_score": float(np.mean(scores)) if scores else None,
        "tasks": [t["task"] for t in tasks if t["cluster"] == cluster],
    })
  scored = [t["score"] for t in tasks if t["score"] is not None]
  return {"step": step, "tasks": tasks, "clusters": clusters,
          "mean_task_score": float(np.mean(scored)) if scored else None}


def render_markdown(report: Mapping[str, Any], title: str = "Evaluation") -> str:
  fmt = toolkit.format_score
  step = report.get("step")
  lines = [f"# {title}" + (f" (step {step})" if step is not None else ""), "",
           "## Clusters", ""]
  lines += toolkit.markdown_table(
      ["Cluster", "Tasks", "Mean score"], ["---", "---:", "---:"],
      [[c["cluster"], c["num_tasks"], fmt(c["mean_score"])] for c in report["clusters"]])
  lines += ["", f"Mean over tasks: {fmt(report.get('mean_task_score'))}", "", "## Tasks", ""]
  lines += toolkit.markdown_table(
      ["Task", "Cluster", "Metric", "Score", "All metrics"], ["---", "---", "---", "---:", "---"],
      [[t["task"], t["cluster"], t["metric"] or toolkit.MISSING, fmt(t["score"]),
        ", ".join(f"{k}={v:.4g}" for k, v in sorted(t["metrics"].items()))]
       for t in report["tasks"]])
  return "\n".join(lines) + "\n"


def plot_clusters(report: Mapping[str, Any], title: str = "Evaluation") -> bytes:
  """PNG bytes: one bar per cluster (mean score), each task's score as a dot on it."""
  clusters = report["clusters"]

  def draw(figure):
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(clusters))
    means = [c["mean_score"] or 0.0 for c in clusters]
    bars = axes.bar(positions, means, color="#4C72B0", alpha=0.8)
    for bar, mean in zip(bars, means):
      axes.annotate(f"{mean:.1f}", (bar.get_x() + bar.get_width() / 2, mean),
                    ha="center", va="bottom", fontsize=8)
    by_cluster = {c["cluster"]: i for i, c in enumerate(clusters)}
    dots = [(by_cluster[t["cluster"]], t["score"]) for t in report["tasks"]
            if t["score"] is not None]
    if dots:
      xs, ys = zip(*dots)
      axes.scatter(xs, ys, color="black", s=12, zorder=3, label="task")
      axes.legend(loc="upper right", fontsize=8)
    axes.set_xticks(positions)
    axes.set_xticklabels([c["cluster"] for c in clusters], rotation=30, ha="right")
    axes.set_ylabel("score (primary metric)")
    step = report.get("step")
    axes.set_title(title + (f" (step {step})" if step is not None else ""))
    top = max([100.0] + [y for _, y in dots] + means)
    axes.set_ylim(0, top * 1.08)

  return toolkit.render_png(draw, (max(4.0, 1.2 * len(clusters) + 2), 4.0))


def render_report(task_metrics: Mapping[str, Mapping[str, float]],
                  step: Optional[int] = None, cluster_of: Optional[Callable[[str], str]] = None,
                  title: str = "Evaluation") -> toolkit.Report:
  """The per-task / per-cluster report, named report[_step_<step>] (checkpoints.layout)."""
  report = build_report(task_metrics, cluster_of, step)
  return toolkit.Report(layout.report_stem("report", step), render_markdown(report, title),
                        report, plot_clusters(report, title))
