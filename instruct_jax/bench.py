"""Benchmarks of a model gin: the train step (--mode=train) or decoding (--mode=decode).

    instruct-jax bench --gin_file=models/t5_1_1/base.gin --batch_size=32 \
        --input_length=512 --target_length=128 --steps=10
    instruct-jax bench --mode=decode --gin_file=models/t5_1_1/small.gin \
        --batch_size=8 --input_length=64 --target_length=32

Train: batches are synthetic and fully packed (one segment per row), so every
token counts. FLOPs use the exact matmul count of instruct_jax.models.flops
(training = 3 x forward); MFU is reported where the device's peak is known.

Decode: greedy and beam search, each with and without the KV cache, on random
prompts of input_length tokens; every row generates exactly target_length
tokens (EOS is disabled), so tokens/s = batch_size x target_length / seconds.
Beam search does num_beams times the work for the same output tokens.
"""
import time
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import numpy as np

from instruct_jax import decoding
from instruct_jax import evaluation
from instruct_jax.errors import UsageError
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
  tokens = batch_size * sum(v for k, v in lengths.items()
                            if k in ("encoder_input_tokens", "decoder_target_tokens"))
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


def _decode_batch(model: Any, batch_size: int, input_length: int,
                  target_length: int) -> dict[str, np.ndarray]:
  """Random prompts of input_length tokens leaving room for target_length new ones."""
  lengths = model.feature_converter(pack=False).get_model_feature_lengths(
      {"inputs": input_length, "targets": target_length})
  batch = synthetic_batch(lengths, batch_size, model.module.config.vocab_size)
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
  _, shardings = evaluation.abstract_params_and_shardings(model, partitioner)
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


def format_report(results: Mapping[str, Any]) -> str:
  lines = []
  for key, value in results.items():
    if isinstance(value, float):
      value = f"{value:,.4g}"
    elif isinstance(value, int) and "bytes" in key:
      value = f"{value / 2**20:,.1f} MiB"
    lines.append(f"{key:40s} {value}")
  return "\n".join(lines)


def add_arguments(parser) -> None:
  parser.add_argument("--batch_size", type=int, default=8, help="Global batch size.")
  parser.add_argument("--input_length", type=int, default=512)
  parser.add_argument("--target_length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="Timed steps after 2 warm-up steps.")
  parser.add_argument("--num_partitions", type=int, default=1)
  parser.add_argument("--parameter_partitioning_dims", type=int, default=1)
  parser.add_argument("--mode", choices=("train", "decode"), default="train",
                      help="train: the train step; decode: greedy and beam-search decoding "
                           "with and without the KV cache.")
  parser.add_argument("--num_beams", type=int, default=4, help="Beams for --mode=decode.")
  parser.add_argument("--decode_methods", default="greedy,beam",
                      help="Comma-separated decoding methods for --mode=decode.")


def run(args) -> None:
  """`instruct-jax bench`: the model gin must already be parsed (it defines MODEL)."""
  if not args.gin_file:
    raise UsageError("bench needs a model gin, e.g. --gin_file=models/t5_1_1/base.gin.")
  if getattr(args, "mode", "train") == "decode":
    _run_decode(args)
    return
  with gin.unlock_config():
    gin.parse_config([
        "from __gin__ import dynamic_registration",
        "from instruct_jax import bench",
        "bench.benchmark_train_step.model = %MODEL",
        "bench.benchmark_train_step.optimizer = %OPTIMIZER",
    ])
  results = gin.get_configurable(benchmark_train_step)(
      batch_size=args.batch_size, input_length=args.input_length,
      target_length=args.target_length, steps=args.steps,
      num_partitions=args.num_partitions,
      parameter_partitioning_dims=args.parameter_partitioning_dims)
  print(format_report(results), flush=True)


def _run_decode(args) -> None:
  methods = tuple(m.strip() for m in args.decode_methods.split(",") if m.strip())
  unknown = set(methods) - {"greedy", "beam"}
  if unknown or not methods:
    raise UsageError(f"--decode_methods={args.decode_methods!r}; use a comma-separated "
                     "subset of greedy,beam.")
  with gin.unlock_config():
    gin.parse_config([
        "from __gin__ import dynamic_registration",
        "from instruct_jax import bench",
        "bench.benchmark_decode.model = %MODEL",
    ])
  results = gin.get_configurable(benchmark_decode)(
      batch_size=args.batch_size, input_length=args.input_length,
      target_length=args.target_length, steps=args.steps,
      num_partitions=args.num_partitions,
      parameter_partitioning_dims=args.parameter_partitioning_dims,
      num_beams=args.num_beams, methods=methods)
  print(format_report(results), flush=True)
