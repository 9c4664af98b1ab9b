"""The small toolkit every report renderer is built on: scores, tables, figures, files.

Each report (evaluation, symbol suites, checkpoint selection, the hold-out
sweep) renders markdown + JSON data + a PNG; sharing these pieces keeps the
number formats, table syntax and file names identical across reports.
"""
import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import tensorflow as tf

MISSING = "-"


def format_score(value: Optional[float]) -> str:
  """A score as shown in every report table: two decimals, "-" when there is none."""
  return MISSING if value is None else f"{value:.2f}"


def _table_line(cells: Sequence[Any]) -> str:
  return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"


def markdown_table(header: Sequence[str], align: Sequence[str],
                   rows: Sequence[Sequence[Any]]) -> list[str]:
  """Lines of a markdown table; `align` holds "---" (left) or "---:" (right) per column."""
  return ([_table_line(header), "|" + "|".join(align) + "|"]
          + [_table_line(row) for row in rows])


def render_png(draw: Callable[[Any], None], figsize: tuple[float, float],
               dpi: int = 100) -> bytes:
  """PNG bytes of a matplotlib Figure that `draw(figure)` fills in.

  The object-oriented API (Figure + Agg canvas) leaves pyplot's global state
  and backend alone, so reports can be drawn inside training or tests.
  """
  # matplotlib is slow to import and only needed when a report is drawn.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  figure = Figure(figsize=figsize, dpi=dpi)
  FigureCanvasAgg(figure)
  draw(figure)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  return buffer.getvalue()


def write_files(output_dir: str, name: str, markdown: str, data: Mapping[str, Any],
                png: bytes) -> dict[str, str]:
  """Writes <name>.md, <name>.json and <name>.png (any filesystem tf.io.gfile knows).

  Returns their paths by kind: "markdown", "json", "png".
  """
  stem = os.path.join(output_dir, name)
  tf.io.gfile.makedirs(output_dir)
  paths = {"markdown": stem + ".md", "json": stem + ".json", "png": stem + ".png"}
  with tf.io.gfile.GFile(paths["markdown"], "w") as f:
    f.write(markdown)
  with tf.io.gfile.GFile(paths["json"], "w") as f:
    json.dump(data, f, indent=2)
  with tf.io.gfile.GFile(paths["png"], "wb") as f:
    f.write(png)
  return paths


@dataclasses.dataclass(frozen=True)
class Report:
  """A rendered report: what is printed (markdown) and what is written next to it.

  Renderers return one; callers print `markdown` and `write` the files, so a
  report is never read back from disk to be shown.
  """
  name: str              # file stem, e.g. layout.report_stem("report", step)
  markdown: str
  data: Mapping[str, Any]
  png: bytes

  def write(self, output_dir: str) -> dict[str, str]:
    """Writes <name>.{md,json,png} into output_dir; returns their paths by kind."""
    return write_files(output_dir, self.name, self.markdown, self.data, self.png)
