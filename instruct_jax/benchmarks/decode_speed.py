"""Benchmark of decoding: greedy and beam search, each with and without the KV cache.

Prompts are random and input_length tokens long; every row generates exactly
target_length tokens (EOS is disabled), so tokens/s = batch_size x
target_length / seconds. Beam search does num_beams times the work for the
same output tokens.
"""
import dataclasses
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from instruct_jax.benchmarks import decode_roofline
from instruct_jax.benchmarks import matmul_replay
from instruct_jax.benchmarks import report
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


@dataclasses.dataclass
class PreparedDecode:
  """Initialised params and a batch of random prompts on the devices, ready to decode."""
  model: Any
  partitioner: partitioning.Partitioner
  shardings: Any
  params: Any
  batch: dict[str, jax.Array]
  host_batch: dict[str, np.ndarray]
  input_length: int
  target_length: int

  def floor_tokens_per_second(self, roofline: decode_roofline.Roofline,
                              num_beams: int) -> float:
    """The decode floor of this batch with `num_beams` rows per example, on all devices."""
    weight_bytes = max(x.dtype.itemsize for x in jax.tree_util.tree_leaves(self.params))
    shape = decode_roofline.DecodeShape(
        len(next(iter(self.host_batch.values()))), num_beams, self.input_length,
        self.target_length, "encoder_input_tokens" in self.host_batch, weight_bytes,
        self.model.module.config.activation_dtype.itemsize)
    return roofline.floor_tokens_per_second(self.model.module.config, shape,
                                            len(jax.devices()))

  def matmuls_alone_tokens_per_second(self, cfg: decoding.DecodeConfig) -> float:
    """New tokens per second if the decode were only its matmuls (benchmarks/matmul_replay).

    Each weight and activation is its own array, as in the decode, so the replay
    reads as many bytes. Every row decodes target_length tokens (EOS is off), so
    the decode loop runs target_length times.
    """
    with self.partitioner.activation_context():
      jaxpr = jax.make_jaxpr(lambda p, b: self.model.predict_batch(p, b, cfg))(self.params,
                                                                             self.batch)
    seconds = matmul_replay.seconds(
        matmul_replay.dots_of(jaxpr, while_trips=self.target_length), distinct_values=True)
    return len(next(iter(self.host_batch.values()))) * self.target_length / seconds

  def compile(self, cfg: decoding.DecodeConfig) -> tuple[Callable[[], Any], float]:
    """(a call that decodes the batch and returns its tokens on the host, compile seconds)."""
    fn = jax.jit(lambda p, b: self.model.predict_batch(p, b, cfg),
                 in_shardings=(self.shardings, self.partitioner.batch_sharding),
                 out_shardings=self.partitioner.replicated)
    with self.partitioner.activation_context():
      start = time.perf_counter()
      compiled = fn.lower(self.params, self.batch).compile()
      compile_seconds = time.perf_counter() - start

    def decode():
      with self.partitioner.activation_context():
        tokens, _ = compiled(self.params, self.batch)
        return np.asarray(tokens)
    return decode, compile_seconds


def prepare_decode(model: Any, batch_size: int, input_length: int, target_length: int,
                   num_partitions: int = 1, parameter_partitioning_dims: int = 1
                   ) -> PreparedDecode:
  partitioner = partitioning.Partitioner(num_partitions, parameter_partitioning_dims)
  _, shardings, _ = state_lib.abstract_params(model, partitioner)
  host_batch = _decode_batch(model, batch_size, input_length, target_length)
  with partitioner.activation_context():
    params = jax.jit(lambda rng: nn.meta.unbox(model.init_params(
        rng, {k: v.shape for k, v in host_batch.items()})), out_shardings=shardings)(
            jax.random.PRNGKey(0))
  batch = {k: jax.device_put(v, partitioner.batch_sharding) for k, v in host_batch.items()}
  return PreparedDecode(model, partitioner, shardings, params, batch, host_batch, input_length,
                        target_length)


def decode_config(method: str, target_length: int, num_beams: int,
                  use_cache: bool = True) -> decoding.DecodeConfig:
  # eos_id=-1 is never produced: every row decodes the full target_length.
  return decoding.DecodeConfig(method=method, max_decode_length=target_length,
                               num_beams=num_beams, eos_id=-1, use_cache=use_cache)


def method_name(method: str, num_beams: int) -> str:
  return f"beam{num_beams}" if method == "beam" else method


def benchmark_decode(model: Any, batch_size: int = 8, input_length: int = 512,
                     target_length: int = 128, steps: int = 3, num_partitions: int = 1,
                     parameter_partitioning_dims: int = 1, num_beams: int = 4,
                     methods: tuple[str, ...] = ("greedy", "beam"),
                     use_cache: tuple[bool, ...] = (True, False),
                     replay_matmuls: bool = True) -> dict[str, Any]:
  """Times whole-batch decodes (compilation excluded) for each method x cache setting.

  Cached decodes also report their fraction of the device's decode floor
  (benchmarks/decode_roofline) and, with replay_matmuls, the rate of their
  matmuls alone (PreparedDecode.matmuls_alone_tokens_per_second).
  """
  prepared = prepare_decode(model, batch_size, input_length, target_length, num_partitions,
                            parameter_partitioning_dims)
  roofline = decode_roofline.Roofline.of_device()
  results = {**report.device_lines(), "batch_size": batch_size, "input_length": input_length,
             "target_length": target_length, **roofline.report_lines()}
  for method in methods:
    beams = num_beams if method == "beam" else 1
    floor = prepared.floor_tokens_per_second(roofline, beams)
    results[f"{method_name(method, num_beams)}_floor_tokens_per_second"] = floor
    for cached in use_cache:
      decode, compile_seconds = prepared.compile(
          decode_config(method, target_length, num_beams, cached))
      decode()  # warm-up
      start = time.perf_counter()
      for _ in range(steps):
        decode()
      seconds = (time.perf_counter() - start) / steps
      name = method_name(method, num_beams) + ("_cached" if cached else "_uncached")
      results[f"{name}_seconds_per_batch"] = seconds
      results[f"{name}_tokens_per_second"] = batch_size * target_length / seconds
      results[f"{name}_compile_seconds"] = compile_seconds
      if cached:  # the floor assumes the KV cache
        results[f"{name}_fraction_of_floor"] = batch_size * target_length / seconds / floor
        if replay_matmuls:
          results[f"{name}_matmuls_alone_tokens_per_second"] = (
              prepared.matmuls_alone_tokens_per_second(
                  decode_config(method, target_length, num_beams, cached)))
  return results
