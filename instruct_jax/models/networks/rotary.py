"""Rotary position embedding (RoPE), with the frequency scaling Llama 3.1 uses.

Each head's vector is split into two halves (x1, x2) and pair i = (x1[i],
x2[i]) is rotated by the angle position * inv_freq[i], with
inv_freq[i] = theta ** (-2 i / head_dim). That is the "rotate half" layout of
the Hugging Face Llama / Mistral checkpoints, so their q / k weights are used
as stored.

Llama 3.1's scaling stretches context: frequencies whose wavelength exceeds
original_max_positions / low_freq_factor are divided by `scaling_factor`,
those shorter than original_max_positions / high_freq_factor are kept, and the
band between is interpolated smoothly.
"""

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RotaryEmbedding:
  """Rotates x [batch, length, heads, head_dim] by its positions [batch, length].

  scaling_factor None: plain RoPE; otherwise Llama 3.1's scaling with the
  low / high frequency factors and the pre-training context length.
  """
  theta: float = 10000.0
  scaling_factor: Optional[float] = None
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_positions: int = 8192

  def __post_init__(self):
    if not self.theta > 1:
      raise ValueError(f"RotaryEmbedding.theta={self.theta!r} must be a number > 1 (Llama 2 "
                       "and Mistral 7B v0.1 use 10000, Llama 3 500000).")
    if self.scaling_factor is not None and not (
        self.scaling_factor >= 1 and self.high_freq_factor > self.low_freq_factor > 0
        and self.original_max_positions > 0):
      raise ValueError(
          f"Llama 3 rope scaling needs scaling_factor >= 1, high_freq_factor > "
          f"low_freq_factor > 0 and original_max_positions > 0; got {self}.")

  def inverse_frequencies(self, head_dim: int) -> np.ndarray:
    """float32 [head_dim // 2]: the rotation speed of each pair."""
    if head_dim % 2:
      raise ValueError(f"Rotary embedding needs an even head_dim, got {head_dim}.")
    inv_freq = 1.0 / self.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if self.scaling_factor is not None:
      wavelength = 2 * math.pi / inv_freq
      long_limit = self.original_max_positions / self.low_freq_factor
      short_limit = self.original_max_positions / self.high_freq_factor
      smooth = ((self.original_max_positions / wavelength - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor))
      interpolated = (1 - smooth) * inv_freq / self.scaling_factor + smooth * inv_freq
      inv_freq = np.where(wavelength > long_limit, inv_freq / self.scaling_factor,
                          np.where(wavelength < short_limit, inv_freq, interpolated))
    return inv_freq.astype(np.float32)

  def __call__(self, x: Array, positions: Array) -> Array:
    angles = (jnp.asarray(positions, jnp.float32)[..., None]
              * self.inverse_frequencies(x.shape[-1]))  # [batch, length, head_dim // 2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
