"""Side-by-side report of the symbol-tuning evaluation suites for one checkpoint.

The suites are many seqio tasks (one per dataset and prompt setting); the
report puts them back into tables where the settings sit side by side:

  In-context classification, unseen tasks   rows: datasets + mean
                                            columns: instruction / no instruction
                                                     x natural labels / symbols
  Flipped labels                            rows: datasets + mean
  Algorithmic reasoning                     rows: list_functions, simp_turing_concept
                                            (mean over their subtasks)

A SuiteLayout (instruct_jax.eval.symbol_suites, built by the task registry,
e.g. tasks_registry.symbol_tuning.evaluation_suites) says where each task's
score goes: task -> Cell(table, row, column); this renderer takes those cells.
Each task contributes its primary metric (instruct_jax.eval.reports.evaluation.primary_metric);
several tasks in one cell (BIG-bench subtasks) are averaged. Outputs:
symbol_report_step_<step>.md (tables), .json (the same data) and .png (one
grouped bar chart per table).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from instruct_jax.checkpoints import layout
from instruct_jax.eval.reports import evaluation as reports
from instruct_jax.eval.reports import toolkit

MEAN_ROW = "mean"
DEFAULT_TITLE = "Symbol-tuning evaluation"


def _ordered(values):
  return list(dict.fromkeys(values))


def _mean(values) -> Optional[float]:
  return float(np.mean(values)) if values else None


def build_report(task_metrics: Mapping[str, Mapping[str, float]], cells: Mapping[str, Any],
                 step: Optional[int] = None, checkpoint: Optional[str] = None) -> dict[str, Any]:
  """The report as plain data: one table per cell table, settings as columns.

  `cells`: task -> symbol_suites.Cell (anything with .table, .row, .column).
  """
  all_cells = cells
  tables = []
  for title in _ordered(cell.table for cell in all_cells.values()):
    cells = {task: cell for task, cell in all_cells.items() if cell.table == title}
    columns = _ordered(cell.column for cell in cells.values())
    rows = []
    for row in _ordered(cell.row for cell in cells.values()):
      scores, counts = {}, {}
      for column in columns:
        values = []
        for task, cell in cells.items():
          primary = (reports.primary_metric(task_metrics[task]) if task in task_metrics
                     else None)
          if cell.row == row and cell.column == column and primary is not None:
            values.append(primary[1])
        scores[column], counts[column] = _mean(values), len(values)
      rows.append({"row": row, "scores": scores, "num_tasks": counts})
    mean = {column: _mean([r["scores"][column] for r in rows
                           if r["scores"][column] is not None]) for column in columns}
    tables.append({"title": title, "columns": columns, "rows": rows, "mean": mean})
  missing = sorted(task for task in all_cells if task not in task_metrics)
  return {"step": step, "checkpoint": checkpoint, "tables": tables, "missing": missing}


def _header(name: str) -> str:
  return name.replace("_", " ")


def render_markdown(report: Mapping[str, Any], title: str = DEFAULT_TITLE) -> str:
  step = report.get("step")
  lines = [f"# {title}" + (f" (step {step})" if step is not None else "")]
  if report.get("checkpoint"):
    lines += ["", f"Checkpoint: `{report['checkpoint']}`"]
  fmt = toolkit.format_score
  for table in report["tables"]:
    columns = table["columns"]
    rows = [[row["row"], *(fmt(row["scores"][c]) for c in columns)] for row in table["rows"]]
    if len(table["rows"]) > 1:
      rows.append([f"**{MEAN_ROW}**", *(f"**{fmt(table['mean'][c])}**" for c in columns)])
    lines += ["", f"## {table['title']}", ""]
    lines += toolkit.markdown_table(["", *(_header(c) for c in columns)],
                                    ["---", *("---:" for _ in columns)], rows)
  if report.get("missing"):
    lines += ["", "Not evaluated (no metrics): " + ", ".join(report["missing"])]
  return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], title: str = DEFAULT_TITLE) -> bytes:
  """PNG bytes: per table, groups of bars (one group per row + mean, one bar per column)."""
  tables = report["tables"] or [{"title": "no results", "columns": [], "rows": [], "mean": {}}]
  width = max(7.0, max(1.5 + 0.3 * max(1, len(t["columns"])) * (len(t["rows"]) + 1)
                       for t in tables))

  def draw(figure):
    for index, table in enumerate(tables):
      axes = figure.add_subplot(len(tables), 1, index + 1)
      groups = [r["row"] for r in table["rows"]]
      values = [[r["scores"][c] for c in table["columns"]] for r in table["rows"]]
      if len(groups) > 1:
        groups.append(MEAN_ROW)
        values.append([table["mean"][c] for c in table["columns"]])
      columns = table["columns"]
      bar_width = 0.8 / max(1, len(columns))
      positions = np.arange(len(groups))
      for j, column in enumerate(columns):
        heights = [v[j] if v[j] is not None else 0.0 for v in values]
        bars = axes.bar(positions + (j - (len(columns) - 1) / 2) * bar_width, heights,
                        bar_width, label=_header(column))
        for bar, value in zip(bars, (v[j] for v in values)):
          axes.annotate(toolkit.format_score(value),
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=6)
      axes.set_xticks(positions)
      axes.set_xticklabels(groups, rotation=15, ha="right", fontsize=8)
      axes.set_ylim(0, 125)  # Headroom for the legend above 100.
      axes.set_yticks([0, 20, 40, 60, 80, 100])
      axes.set_ylabel("score")
      axes.set_title(table["title"], fontsize=10)
      if columns:
        axes.legend(fontsize=7, loc="upper center", ncol=min(len(columns), 5), frameon=False)
    step = report.get("step")
    figure.suptitle(title + (f" (step {step})" if step is not None else ""), fontsize=11)

  return toolkit.render_png(draw, (width, 3.4 * len(tables) + 0.6))


def render_report(report: Mapping[str, Any], title: str = DEFAULT_TITLE) -> toolkit.Report:
  """The rendered report, named symbol_report[_step_<step>] (checkpoints.layout)."""
  return toolkit.Report(layout.report_stem("symbol_report", report.get("step")),
                        render_markdown(report, title), report, plot_report(report, title))
