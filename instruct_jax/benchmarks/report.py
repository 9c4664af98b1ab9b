"""Benchmark results as aligned `name value` lines (bytes in MiB)."""
from typing import Any, Mapping

import jax


def device_lines() -> dict[str, Any]:
  """The report's first lines: how many jax devices ran it, and of which kind."""
  return {"devices": len(jax.devices()), "device_kind": jax.devices()[0].device_kind}


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
