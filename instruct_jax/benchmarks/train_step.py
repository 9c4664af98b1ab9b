"""Benchmark of the train step of a model: tokens/s, model TFLOP/s, MFU, memory.

Batches are synthetic and fully packed (one segment per row), so every token
counts. FLOPs use the exact matmul count of instruct_jax.models.flops
(training = 3 x forward); MFU is reported where the device's peak is known.
"""
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np

from instruct_jax.models import flops
from instruct_jax.train import partitioning
from instruct_jax.train import trainer as trainer_lib


def synthetic_batch(feature_lengths: Mapping[str, int], batch_size: int, vocab_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Random tokens for every model feature, shaped like a packed seqio batch."""
  rng = np.random.default_rng(seed)
  batch = {}
  for name, length in feature_lengths.items():
    shape = (batch_size, length)
    if name.endswith("_segment_ids") or name.endswith("_loss_weights"):
      batch[name] = np.ones(shape, np.int32)
    elif name.endswith("_positions"):
      batch[name] = np.broadcast_to(np.arange(length, dtype=np.int32), shape).copy()
    elif name == "decoder_causal_attention":
      batch[name] = np.zeros(shape, np.int32)
    else:
      batch[name] = rng.integers(2, vocab_size, size=shape, dtype=np.int32)
  return batch


def forward_flops_per_example(model: Any, input_length: int, target_length: int) -> int:
  config = model.module.config
  if "encoder_input_tokens" in model.feature_converter(pack=True).get_model_feature_lengths(
      {"inputs": input_length, "targets": target_length}):
    return flops.encoder_decoder_forward_flops(config, input_length, target_length)
  return flops.decoder_only_forward_flops(config, input_length + target_length)


def benchmark_train_step(model: Any, optimizer: Any, batch_size: int = 8,
                         input_length: int = 512, target_length: int = 128, steps: int = 5,
                         num_partitions: int = 1, parameter_partitioning_dims: int = 1,
                         warmup_steps: int = 2) -> dict[str, Optional[float]]:
  """Times `steps` train steps after `warmup_steps` (compilation excluded)."""
  partitioner = partitioning.Partitioner(num_partitions, parameter_partitioning_dims)
  converter = model.feature_converter(pack=True)
  lengths = converter.get_model_feature_lengths({"inputs": input_length,
                                                 "targets": target_length})
  shapes = {k: (batch_size, v) for k, v in lengths.items()}
  trainer = trainer_lib.Trainer(model, optimizer, partitioner, shapes)
  host_batch = synthetic_batch(lengths, batch_size, model.module.config.vocab_size)
  batch = {k: jax.device_put(v, partitioner.batch_sharding) for k, v in host_batch.items()}
  state = trainer.init_state(0)

  compiled = trainer.compile_train_step(state, batch)
  memory = compiled.memory_analysis()
  state_bytes = sum(
      int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
      for x, s in zip(jax.tree.leaves(trainer.abstract_state),
                      jax.tree.leaves(trainer.state_shardings)))

  for _ in range(warmup_steps):
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps

  num_devices = len(jax.devices())
  tokens = trainer_lib.tokens_per_step(shapes)
  train_flops = flops.training_flops(
      forward_flops_per_example(model, input_length, target_length)) * batch_size
  tflops_per_device = train_flops / seconds / num_devices / 1e12
  peak = flops.peak_flops_per_device(jax.devices()[0])
  return {
      "devices": num_devices,
      "device_kind": jax.devices()[0].device_kind,
      "seconds_per_step": seconds,
      "tokens_per_second": tokens / seconds,
      "tokens_per_second_per_device": tokens / seconds / num_devices,
      "model_tflops_per_second_per_device": tflops_per_device,
      "mfu": (tflops_per_device * 1e12 / peak) if peak else None,
      "state_bytes_per_device": state_bytes,
      "compiled_argument_bytes_per_device": getattr(memory, "argument_size_in_bytes", None),
      "compiled_temp_bytes_per_device": getattr(memory, "temp_size_in_bytes", None),
      "final_loss": float(metrics["loss"]),
  }
