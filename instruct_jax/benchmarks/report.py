"""Benchmark results as aligned `name value` lines (bytes in MiB)."""
from typing import Any, Mapping


def format_report(results: Mapping[str, Any]) -> str:
  lines = []
  width = max([40, *map(len, results)])
  for key, value in results.items():
    if isinstance(value, float):
      value = f"{value:,.4g}"
    elif isinstance(value, int) and "bytes" in key:
      value = f"{value / 2**20:,.1f} MiB"
    lines.append(f"{key:{width}s} {value}")
  return "\n".join(lines)
