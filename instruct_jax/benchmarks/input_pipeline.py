"""Input-pipeline benchmark: can one host's packed, batched seqio pipeline feed the train step?

Times the training pipeline itself (pipeline.get_dataset: mixing, preprocessing or cache
reading, packing, batching) for a mixture, uncached and (when its tasks are cached)
cached, and sets its rate next to what a train step of the model would consume.

That consumption is derived, not measured here (a CPU host has no accelerator): the
train step's tokens per step (trainer.tokens_per_step, as `instruct-jax bench` counts
them) divided by the step time that the model's training FLOPs (instruct_jax.models.flops)
take on an accelerator of `peak_flops` at `mfu` utilisation. The defaults, an H100 SXM
(989 dense bf16 TFLOP/s, NVIDIA's datasheet) at 50% MFU, are an assumption of a
well-tuned run; the rate is per accelerator, so a host feeding k of them needs k times it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import numpy as np
import seqio

from instruct_jax.benchmarks import train_step
from instruct_jax.data import cache
from instruct_jax.data import pipeline
from instruct_jax.models import flops
from instruct_jax.train import trainer as trainer_lib

H100_BF16_FLOPS = 989e12


@dataclasses.dataclass(frozen=True)
class PipelineRate:
  """Throughput of one pipeline: examples (segments) and token positions per second."""
  mixture: str
  cached: bool
  examples_per_second: float
  tokens_per_second: float       # positions, padding included (what a step consumes)
  fill: float                    # fraction of positions holding real tokens


def _examples_in(batch: Mapping[str, np.ndarray]) -> int:
  if "decoder_segment_ids" in batch:  # Packed: one segment id per example in a row.
    return int(sum(len(np.unique(row[row > 0])) for row in batch["decoder_segment_ids"]))
  return int(np.sum(np.any(batch["decoder_target_tokens"] > 0, axis=1)))


def _token_features(batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
  return [batch[k] for k in ("encoder_input_tokens", "decoder_target_tokens") if k in batch]


def time_pipeline(cfg: pipeline.DatasetConfig, feature_converter: seqio.FeatureConverter,
                  batches: int = 20) -> PipelineRate:
  """Rate of `batches` batches of the training pipeline, after a first untimed one.

  The first batch builds the tf.data graphs and fills shuffle buffers, a one-off cost.
  """
  iterator = pipeline.get_dataset(cfg, 0, 1, feature_converter).as_numpy_iterator()
  next(iterator)
  examples = positions = real = 0
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
    examples += _examples_in(batch)
    tokens = _token_features(batch)
    positions += sum(t.size for t in tokens)
    real += sum(int(np.count_nonzero(t)) for t in tokens)
  seconds = time.perf_counter() - start
  return PipelineRate(cfg.mixture_or_task_name, cfg.use_cached, examples / seconds,
                      positions / seconds, real / max(positions, 1))


def train_step_consumption(model: Any, batch_size: int, input_length: int, target_length: int,
                           peak_flops: float = H100_BF16_FLOPS,
                           mfu: float = 0.5) -> dict[str, float]:
  """Token positions per second one accelerator's train step eats (see module doc)."""
  lengths = model.feature_converter(pack=True).get_model_feature_lengths(
      {"inputs": input_length, "targets": target_length})
  tokens = trainer_lib.tokens_per_step({k: (batch_size, v) for k, v in lengths.items()})
  step_flops = batch_size * flops.training_flops(
      train_step.forward_flops_per_example(model, input_length, target_length))
  seconds = step_flops / (peak_flops * mfu)
  return {"tokens_per_step": tokens, "seconds_per_step": seconds,
          "tokens_per_second": tokens / seconds}


def benchmark_input_pipeline(model: Any, mixtures: Sequence[str], input_length: int = 512,
                             target_length: int = 128, batch_size: int = 128,
                             batches: int = 20, cache_dir: str | None = None,
                             module: str | None = "tasks_registry",
                             peak_flops: float = H100_BF16_FLOPS, mfu: float = 0.5,
                             pack: bool = True) -> dict[str, Any]:
  """Uncached (and cached, where every task has a cache in cache_dir) rate per mixture."""
  consumption = train_step_consumption(model, batch_size, input_length, target_length,
                                       peak_flops, mfu)
  converter = model.feature_converter(pack=pack)
  lengths = {"inputs": input_length, "targets": target_length}
  rates = []
  for mixture in mixtures:
    for use_cached in (False, True):
      cfg = pipeline.DatasetConfig(mixture, lengths, "train", batch_size,
                                   shuffle=True, seed=0, use_cached=use_cached, pack=pack,
                                   module=module, cache_dir=cache_dir)
      if use_cached and not _all_cached(cfg):
        continue
      rates.append(time_pipeline(cfg, converter, batches))
  return {"consumption": consumption, "rates": rates, "peak_flops": peak_flops, "mfu": mfu}


def _all_cached(cfg: pipeline.DatasetConfig) -> bool:
  try:
    pipeline.provider_of(cfg)
  except cache.TaskNotCachedError:
    return False
  return True


def format_table(results: Mapping[str, Any]) -> str:
  """Rates next to the train step's consumption and the 5x goal."""
  need = results["consumption"]["tokens_per_second"]
  width = max([len(r.mixture) for r in results["rates"]] + [len("mixture")])
  lines = [
      f"Train step consumption: {need:,.0f} token positions/s per accelerator "
      f"({results['consumption']['tokens_per_step']:,} per step in "
      f"{results['consumption']['seconds_per_step'] * 1e3:.0f} ms, assuming "
      f"{results['peak_flops'] / 1e12:.0f} TFLOP/s at {results['mfu']:.0%} MFU); goal 5x.",
      "",
      f"{'mixture':<{width}}  {'cache':>8}  {'examples/s':>11}  {'tokens/s':>11}  {'fill':>5}  "
      f"{'x step':>7}",
  ]
  for r in results["rates"]:
    lines.append(f"{r.mixture:<{width}}  {'cached' if r.cached else 'uncached':>8}  "
                 f"{r.examples_per_second:>11,.0f}  {r.tokens_per_second:>11,.0f}  "
                 f"{r.fill:>5.2f}  {r.tokens_per_second / need:>7.2f}")
  return "\n".join(lines)
