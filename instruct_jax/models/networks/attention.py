"""Dot-product attention math, in two interchangeable implementations.

* "einsum": explicit float32 logits, bias, mask, softmax and weighted sum. The
  reference in tests, and the only path that can drop attention weights out.
* "fused": `jax.nn.dot_product_attention`, so GPUs get cuDNN's fused (flash)
  kernel for bfloat16 / float16 inputs it supports; everywhere else, and for
  inputs cuDNN rejects, XLA's implementation of the same function.

Both implement grouped-query attention: query [batch, q_len, heads, head_dim]
attends to key / value [batch, kv_len, kv_heads, head_dim] with `heads` a
multiple of `kv_heads`, query head h reading kv head h // (heads // kv_heads)
(the head order of Llama / Mistral checkpoints). With kv_heads == heads this is
plain multi-head attention.
"""

from collections.abc import Callable
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp

Array = jax.Array

IMPLEMENTATIONS = ("einsum", "fused")

# Large negative logit for masked positions; finite so that fully masked rows
# (padding queries) give a uniform softmax instead of NaNs, as in the fused path.
MASKED_LOGIT = -1e10

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def check_implementation(name: str) -> None:
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention_implementation {name!r}; expected one of "
                     f"{IMPLEMENTATIONS} ('einsum' is the reference, 'fused' uses "
                     "jax.nn.dot_product_attention).")


def dot_product_attention(query: Array, key: Array, value: Array, *,
                          bias: Optional[Array] = None, mask: Optional[Array] = None,
                          scale: float = 1.0, implementation: str = "einsum",
                          dropout: Optional[Callable[[Array], Array]] = None) -> Array:
  """softmax(scale * q k^T + bias, masked) v -> [batch, q_len, heads, head_dim].

  bias: broadcastable to [batch, heads, q_len, kv_len]; mask: same, nonzero =
  may attend. `dropout` (einsum only) maps the attention weights
  [batch, heads, q_len, kv_len] to their dropped-out version.
  """
  check_implementation(implementation)
  heads, kv_heads = query.shape[2], key.shape[2]
  if heads % kv_heads:
    raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads; "
                     "num_heads must be a multiple of num_kv_heads.")
  if implementation == "fused":
    if dropout is not None:
      raise ValueError("The fused attention has no dropout; use the einsum implementation "
                       "while attention dropout is active.")
    return _fused(query, key, value, bias, mask, scale)
  return _einsum(query, key, value, bias, mask, scale, dropout)


def _einsum(query, key, value, bias, mask, scale, dropout):
  batch, q_len, heads, head_dim = query.shape
  kv_len, kv_heads = key.shape[1], key.shape[2]
  groups = heads // kv_heads
  # Multi-head attention keeps t5x's einsums (and so its exact float32 gradients);
  # grouped-query attention splits the query heads into [kv_heads, groups].
  if groups == 1:
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  else:
    grouped_query = query.reshape(batch, q_len, kv_heads, groups, head_dim)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", grouped_query, key,
                        preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, heads, q_len, kv_len)
  if scale != 1.0:
    logits = logits * jnp.float32(scale)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask > 0, logits, MASKED_LOGIT)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout is not None:
    weights = dropout(weights)
  weights = weights.astype(value.dtype)
  if groups == 1:
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)
  weights = weights.reshape(batch, kv_heads, groups, q_len, kv_len)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", weights, value)
  return out.reshape(batch, q_len, heads, head_dim)


def _fused(query, key, value, bias, mask, scale):
  if mask is not None:
    mask = mask.astype(jnp.bool_)
  call = lambda implementation: jax.nn.dot_product_attention(  # noqa: E731
      query, key, value, bias, mask, scale=scale, implementation=implementation)
  if jax.default_backend() == "gpu" and query.dtype in _CUDNN_DTYPES:
    try:
      return call("cudnn")
    except (ValueError, NotImplementedError, RuntimeError) as e:
      logging.log_first_n(logging.WARNING, "cuDNN attention does not take these inputs (%s); "
                          "using XLA's dot_product_attention.", 1, e)
  return call("xla")
