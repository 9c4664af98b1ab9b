"""The roofline of a KV-cached decode: the fastest it can run on a device.

A decode is a prefill (the encoder, or the decoder over the prompt), bound by
FLOPs, then one step per new token. Every step has to read each decoder weight
once and the filled part of the KV cache, however few rows it decodes; with a
handful of rows that read, not the arithmetic, sets the pace. So

  floor seconds = prefill FLOPs / matmul peak
                  + sum over steps of max(bytes read / memory bandwidth,
                                          step FLOPs / matmul peak)

and batch x new tokens / floor seconds is a rate no implementation beats on the
device. A decode's fraction of it is the decoding counterpart of MFU, and it
tells how far a speed goal can go: a goal above the floor needs fewer bytes
(lower-precision weights), not a better loop.

Memory bandwidth is the published HBM figure where known, else measured as the
best rate at which a jitted sum reads a 256 MiB float32 array, far larger than a
CPU's caches. (A jitted [8, 4096] x [4096, 8192] matmul, a decode step's access
pattern, streams its weight at only about half that rate on XLA:CPU: the rest of
the gap to the floor is that kernel's, not the memory's.)
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from instruct_jax.benchmarks import matmul_peak
from instruct_jax.models import flops

# Published memory bandwidths in bytes/s (vendor datasheets), matched against
# device_kind in order, so the more specific names come first.
PUBLISHED_MEMORY_BANDWIDTH = (
    ("tpu v5 lite", 819e9),  # v5e
    ("tpu v5e", 819e9),
    ("tpu v6 lite", 1640e9),  # v6e (Trillium)
    ("tpu v6e", 1640e9),
    ("tpu v5p", 2765e9),
    ("tpu v5", 2765e9),  # v5p reports itself as "TPU v5"
    ("tpu v4", 1200e9),
    ("a100-sxm4-40gb", 1555e9),
    ("a100", 2039e9),  # 80GB SXM
    ("h100 pcie", 2000e9),
    ("h100", 3350e9),  # SXM
    ("h200", 4800e9),
)

# The measured read: a [16384, 4096] float32 array (256 MiB).
_READ_SHAPE = (16384, 4096)


@dataclasses.dataclass(frozen=True)
class MemoryBandwidth:
  bytes_per_second: float
  published: bool

  def report_lines(self) -> dict[str, Any]:
    return {"memory_bandwidth_gb_per_second": self.bytes_per_second / 1e9,
            "memory_bandwidth_source": "published" if self.published else
            "measured: a jitted sum over 256 MiB of float32"}


def measure_bandwidth(device: jax.Device, repeats: int = 5) -> float:
  """Best bytes/s at which a jitted sum reads a 256 MiB array on `device`."""
  array = jax.device_put(jnp.ones(_READ_SHAPE, jnp.float32), device)
  return array.size * array.dtype.itemsize / matmul_peak.best_seconds(jnp.sum, (array,),
                                                                       repeats)


def memory_bandwidth(device: jax.Device | None = None) -> MemoryBandwidth:
  """The published bandwidth of `device` (default: the first) when known, else measured."""
  device = device or jax.devices()[0]
  published = flops.published_for_device(PUBLISHED_MEMORY_BANDWIDTH, device)
  if published:
    return MemoryBandwidth(published, True)
  return MemoryBandwidth(measure_bandwidth(device), False)


def _dims(config: Any) -> tuple[int, int, int, int]:
  """(layers doing a decode step, query inner width, key/value inner width, model width)."""
  layers = getattr(config, "num_decoder_layers", None) or getattr(config, "num_layers")
  kv_heads = getattr(config, "num_kv_heads", config.num_heads)
  return layers, config.num_heads * config.head_dim, kv_heads * config.head_dim, config.emb_dim


def step_weights(config: Any, encoder_decoder: bool) -> int:
  """Weights one decode step multiplies by: the decoder's layers and the LM head.

  Cross-attention keys and values are projected once per decode (layers.CROSS_CACHE),
  so only its query and output projections count.
  """
  layers, inner, kv_inner, emb = _dims(config)
  self_attention = 2 * emb * inner + 2 * emb * kv_inner
  cross_attention = 2 * emb * inner if encoder_decoder else 0
  mlp = (len(config.mlp_activations) + 1) * emb * config.mlp_dim
  return layers * (self_attention + cross_attention + mlp) + emb * config.vocab_size


@dataclasses.dataclass(frozen=True)
class DecodeShape:
  """What one decode does: rows (batch x beams), prompt and new-token lengths, dtypes."""
  batch_size: int
  num_beams: int
  input_length: int
  target_length: int
  encoder_decoder: bool
  weight_bytes: int      # bytes per parameter as stored
  activation_bytes: int  # bytes per KV-cache entry


def floor_seconds(config: Any, shape: DecodeShape, peak_flops: float,
                  bandwidth: float) -> float:
  """The module doc's floor for one whole-batch decode."""
  layers, inner, kv_inner, _ = _dims(config)
  rows = shape.batch_size * shape.num_beams
  if shape.encoder_decoder:
    # With no targets this is the encoder plus the cross-attention key/value projection.
    prefill = flops.encoder_decoder_forward_flops(config, shape.input_length, 0)
    steps, cross_keys, first_self_keys = shape.target_length, shape.input_length, 1
  else:  # the prompt and its BOS slot; the prefill's last position gives the first token
    prompt = shape.input_length + 1
    prefill = (flops.decoder_only_forward_flops(config, prompt)
               - flops.lm_head_flops(config, prompt) + flops.lm_head_flops(config, 1))
    steps, cross_keys, first_self_keys = shape.target_length - 1, 0, prompt + 1
  seconds = shape.batch_size * prefill / peak_flops
  weights = step_weights(config, shape.encoder_decoder)
  for step in range(steps):
    keys = first_self_keys + step + cross_keys
    cache_bytes = rows * layers * 2 * kv_inner * keys * shape.activation_bytes
    step_bytes = weights * shape.weight_bytes + cache_bytes
    step_flops = rows * (2 * weights + layers * 2 * 2 * inner * keys)  # + scores and values
    seconds += max(step_bytes / bandwidth, step_flops / peak_flops)
  return seconds


def floor_tokens_per_second(config: Any, shape: DecodeShape, peak_flops: float,
                            bandwidth: float) -> float:
  """New tokens per second (beams not counted) of a decode running at the floor."""
  return (shape.batch_size * shape.target_length
          / floor_seconds(config, shape, peak_flops, bandwidth))


@dataclasses.dataclass(frozen=True)
class Roofline:
  """A device's matmul peak and memory bandwidth, for the floor of decodes run on it."""
  peak: matmul_peak.MatmulPeak
  bandwidth: MemoryBandwidth

  @classmethod
  def of_device(cls, device: jax.Device | None = None) -> "Roofline":
    return cls(matmul_peak.device_peak(device), memory_bandwidth(device))

  def report_lines(self) -> dict[str, Any]:
    return {**self.peak.report_lines(), **self.bandwidth.report_lines()}

  def floor_tokens_per_second(self, config: Any, shape: DecodeShape,
                              num_devices: int) -> float:
    """The floor over `num_devices` devices (the host's once on CPU), work split evenly."""
    devices = 1 if self.peak.host_wide else num_devices
    return floor_tokens_per_second(config, shape, self.peak.flops_per_second * devices,
                                   self.bandwidth.bytes_per_second * devices)
