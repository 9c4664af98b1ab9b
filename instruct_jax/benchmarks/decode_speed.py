"""Benchmark of decoding: greedy and beam search, each with and without the KV cache.

Prompts are random and input_length tokens long; every row generates exactly
target_length tokens (EOS is disabled), so tokens/s = batch_size x
target_length / seconds. Beam search does num_beams times the work for the
same output tokens.
"""
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from instruct_jax.benchmarks import train_step
from instruct_jax.models import decoding
from instruct_jax.train import partitioning
from instruct_jax.train import state as state_lib


def _decode_batch(model: Any, batch_size: int, input_length: int,
                  target_length: int) -> dict[str, np.ndarray]:
  """Random prompts of input_length tokens leaving room for target_length new ones."""
  lengths = model.feature_converter(pack=False).get_model_feature_lengths(
      {"inputs": input_length, "targets": target_length})
  batch = train_step.synthetic_batch(lengths, batch_size, model.module.config.vocab_size)
  if "decoder_causal_attention" in batch:  # decoder-only: the prompt plus its BOS slot
    batch["decoder_causal_attention"][:, :input_length + 1] = 1
  return batch


def benchmark_decode(model: Any, batch_size: int = 8, input_length: int = 512,
                     target_length: int = 128, steps: int = 3, num_partitions: int = 1,
                     parameter_partitioning_dims: int = 1, num_beams: int = 4,
                     methods: tuple[str, ...] = ("greedy", "beam"),
                     use_cache: tuple[bool, ...] = (True, False)) -> dict[str, Any]:
  """Times whole-batch decodes (compilation excluded) for each method x cache setting."""
  partitioner = partitioning.Partitioner(num_partitions, parameter_partitioning_dims)
  _, shardings, _ = state_lib.abstract_params(model, partitioner)
  host_batch = _decode_batch(model, batch_size, input_length, target_length)
  with partitioner.activation_context():
    params = jax.jit(lambda rng: nn.meta.unbox(model.init_params(
        rng, {k: v.shape for k, v in host_batch.items()})), out_shardings=shardings)(
            jax.random.PRNGKey(0))
  batch = {k: jax.device_put(v, partitioner.batch_sharding) for k, v in host_batch.items()}
  results = {"devices": len(jax.devices()), "device_kind": jax.devices()[0].device_kind,
             "batch_size": batch_size, "input_length": input_length,
             "target_length": target_length}
  for method in methods:
    for cached in use_cache:
      # eos_id=-1 is never produced: every row decodes the full target_length.
      cfg = decoding.DecodeConfig(method=method, max_decode_length=target_length,
                                  num_beams=num_beams, eos_id=-1, use_cache=cached)
      fn = jax.jit(lambda p, b, cfg=cfg: model.predict_batch(p, b, cfg),
                   in_shardings=(shardings, partitioner.batch_sharding),
                   out_shardings=partitioner.replicated)
      with partitioner.activation_context():
        start = time.perf_counter()
        compiled = fn.lower(params, batch).compile()
        compile_seconds = time.perf_counter() - start
        jax.block_until_ready(compiled(params, batch))  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
          tokens, _ = compiled(params, batch)
        jax.block_until_ready(tokens)
      seconds = (time.perf_counter() - start) / steps
      name = (f"beam{num_beams}" if method == "beam" else method) + (
          "_cached" if cached else "_uncached")
      results[f"{name}_seconds_per_batch"] = seconds
      results[f"{name}_tokens_per_second"] = batch_size * target_length / seconds
      results[f"{name}_compile_seconds"] = compile_seconds
  return results
