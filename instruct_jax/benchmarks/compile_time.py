"""Compile time of the train step against model depth, with and without layer scanning.

Unrolled, XLA compiles every layer separately, so compile time grows with
depth; scanned (networks.stack), it compiles one layer body. The step is
lowered from abstract arrays (jax.ShapeDtypeStruct with shardings) and compiled,
so no parameter is ever materialised and the largest shapes compile anywhere.
"""
import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from instruct_jax.train import partitioning
from instruct_jax.train import trainer as trainer_lib

_COLUMNS = ("size", "layers", "params_M", "unrolled_s", "scanned_s", "scanned_vs_first")


def resized(model: Any, **config_updates: Any) -> Any:
  """A copy of `model` whose network config has `config_updates` (e.g. depth, scan_layers)."""
  config = model.module.config
  unknown = set(config_updates) - {f.name for f in dataclasses.fields(config)}
  if unknown:
    raise ValueError(f"{type(config).__name__} has no field(s) {sorted(unknown)}; the "
                     "compile-time sizes (BENCH_COMPILE_SIZES) must use its field names.")
  result = copy.copy(model)
  result.module = model.module.clone(config=dataclasses.replace(config, **config_updates))
  return result


def compile_seconds(model: Any, optimizer: Any, batch_size: int, input_length: int,
                    target_length: int) -> tuple[float, int]:
  """(seconds to lower and compile one train step, parameter count) on one device."""
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  lengths = model.feature_converter(pack=True).get_model_feature_lengths(
      {"inputs": input_length, "targets": target_length})
  shapes = {k: (batch_size, v) for k, v in lengths.items()}
  trainer = trainer_lib.Trainer(model, optimizer, partitioner, shapes)
  batch = {k: jax.ShapeDtypeStruct(shape, "int32", sharding=partitioner.batch_sharding)
           for k, shape in shapes.items()}
  start = time.perf_counter()
  trainer.compile_train_step(trainer.abstract_state, batch)
  seconds = time.perf_counter() - start
  num_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_params))
  return seconds, num_params


def _depth(config: Any) -> str:
  if hasattr(config, "num_encoder_layers"):
    return f"{config.num_encoder_layers}+{config.num_decoder_layers}"
  return str(config.num_layers)


def benchmark_compile_time(model: Any, optimizer: Any, sizes: Mapping[str, Mapping[str, Any]],
                           batch_size: int = 8, input_length: int = 128,
                           target_length: int = 32,
                           scan_settings: Sequence[bool] = (False, True),
                           repeats: int = 1) -> list[dict]:
  """One row per size: train-step compile seconds unrolled and scanned.

  `sizes` maps a name to network-config updates (e.g. the T5 v1.1 widths and
  depths); everything else (vocabulary, activations, remat policy, optimizer)
  comes from `model` and `optimizer`. Each time is the fastest of `repeats`
  rounds over all sizes (rounds, not back-to-back repeats, so a busy spell on a
  shared machine does not land on one size only). `scanned_vs_first` is each
  size's scanned time over the first size's (the goal: close to 1 at any depth).
  """
  if repeats < 1:
    raise ValueError(f"repeats={repeats} must be at least 1.")
  rows = {name: {"size": name} for name in sizes}
  for _ in range(repeats):
    for name, updates in sizes.items():
      row = rows[name]
      for scan in scan_settings:
        sized = resized(model, **updates, scan_layers=scan)
        seconds, num_params = compile_seconds(sized, optimizer, batch_size, input_length,
                                              target_length)
        row.update(layers=_depth(sized.module.config), params_M=num_params / 1e6)
        column = "scanned_s" if scan else "unrolled_s"
        row[column] = min(seconds, row.get(column, seconds))
        print(f"compiled {name} scan_layers={scan}: {seconds:.1f} s", flush=True)
  rows = list(rows.values())
  first = rows[0].get("scanned_s") if rows else None
  for row in rows:
    row["scanned_vs_first"] = (row["scanned_s"] / first
                               if first and "scanned_s" in row else None)
  return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows as an aligned text table (missing cells shown as '-')."""
  def cell(value):
    if value is None:
      return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)

  table = [list(_COLUMNS)] + [[cell(row.get(c)) for c in _COLUMNS] for row in rows]
  widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
  return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in table)
