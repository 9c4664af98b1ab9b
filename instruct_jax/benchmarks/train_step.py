"""Benchmark of the train step of a model: tokens/s, model TFLOP/s, MFU, memory.

Batches are synthetic and fully packed (one segment per row), so every token
counts. FLOPs use the exact matmul count of instruct_jax.models.flops
(training = 3 x forward). The roofline is benchmarks/matmul_peak: MFU where the
device's peak is published, else the fraction of a matmul peak measured at start.
With replay_matmuls the report adds how long the step's matmuls take on their own
(benchmarks/matmul_replay) and the fraction of the peak that time allows.
"""
import dataclasses
import time
from typing import Any, Mapping

import jax
import numpy as np

from instruct_jax.benchmarks import matmul_peak
from instruct_jax.benchmarks import matmul_replay
from instruct_jax.benchmarks import report
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


@dataclasses.dataclass
class PreparedTrainStep:
  """A trainer, its initial state and one synthetic batch on the devices, ready to step."""
  trainer: trainer_lib.Trainer
  state: Any
  batch: dict[str, jax.Array]
  host_batch: dict[str, np.ndarray]
  shapes: dict[str, tuple[int, int]]

  def step(self) -> dict[str, jax.Array]:
    """One train step on the batch (asynchronous: block on the metrics to time it)."""
    self.state, metrics = self.trainer.train_step(self.state, self.batch)
    return metrics

  def matmuls_alone_seconds(self) -> float:
    """Seconds the step's matmuls take replayed on their own, on one device."""
    return matmul_replay.seconds(matmul_replay.dots_of(
        self.trainer.train_step_jaxpr(self.state, self.batch)))

  def matmul_lines(self, peak: matmul_peak.MatmulPeak, train_flops: int,
                   prefix: str = "") -> dict[str, Any]:
    """Report lines: the matmuls-alone time and the fraction of the peak it allows."""
    seconds = self.matmuls_alone_seconds()
    return {f"{prefix}matmuls_alone_seconds_per_step": seconds,
            f"{prefix}{peak.fraction_name}_with_matmuls_alone":
                peak.fraction(train_flops / seconds, 1)}


def prepare_train_step(model: Any, optimizer: Any, batch_size: int, input_length: int,
                       target_length: int, num_partitions: int = 1,
                       parameter_partitioning_dims: int = 1) -> PreparedTrainStep:
  partitioner = partitioning.Partitioner(num_partitions, parameter_partitioning_dims)
  lengths = model.feature_converter(pack=True).get_model_feature_lengths(
      {"inputs": input_length, "targets": target_length})
  shapes = {k: (batch_size, v) for k, v in lengths.items()}
  trainer = trainer_lib.Trainer(model, optimizer, partitioner, shapes)
  host_batch = synthetic_batch(lengths, batch_size, model.module.config.vocab_size)
  batch = {k: jax.device_put(v, partitioner.batch_sharding) for k, v in host_batch.items()}
  return PreparedTrainStep(trainer, trainer.init_state(0), batch, host_batch, shapes)


def train_flops_per_step(model: Any, batch_size: int, input_length: int,
                         target_length: int) -> int:
  return flops.training_flops(
      forward_flops_per_example(model, input_length, target_length)) * batch_size


def benchmark_train_step(model: Any, optimizer: Any, batch_size: int = 8,
                         input_length: int = 512, target_length: int = 128, steps: int = 5,
                         num_partitions: int = 1, parameter_partitioning_dims: int = 1,
                         warmup_steps: int = 2, replay_matmuls: bool = True) -> dict[str, Any]:
  """Times `steps` train steps after `warmup_steps` (compilation excluded)."""
  peak = matmul_peak.device_peak()
  prepared = prepare_train_step(model, optimizer, batch_size, input_length, target_length,
                                num_partitions, parameter_partitioning_dims)
  trainer = prepared.trainer
  compiled = trainer.compile_train_step(prepared.state, prepared.batch)
  memory = compiled.memory_analysis()
  state_bytes = sum(
      int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
      for x, s in zip(jax.tree.leaves(trainer.abstract_state),
                      jax.tree.leaves(trainer.state_shardings)))

  for _ in range(warmup_steps):
    metrics = prepared.step()
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    metrics = prepared.step()
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps

  num_devices = len(jax.devices())
  tokens = trainer_lib.tokens_per_step(prepared.shapes)
  train_flops = train_flops_per_step(model, batch_size, input_length, target_length)
  tflops_per_device = train_flops / seconds / num_devices / 1e12
  return {
      **report.device_lines(),
      "seconds_per_step": seconds,
      "tokens_per_second": tokens / seconds,
      "tokens_per_second_per_device": tokens / seconds / num_devices,
      "model_tflops_per_second_per_device": tflops_per_device,
      **peak.report_lines(),
      peak.fraction_name: peak.fraction(train_flops / seconds, num_devices),
      "state_bytes_per_device": state_bytes,
      "compiled_argument_bytes_per_device": getattr(memory, "argument_size_in_bytes", None),
      "compiled_temp_bytes_per_device": getattr(memory, "temp_size_in_bytes", None),
      "final_loss": float(metrics["loss"]),
      **(prepared.matmul_lines(peak, train_flops) if replay_matmuls else {}),
  }
