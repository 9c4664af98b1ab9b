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
plain multi-head attention. Keys / values may also come heads-major,
[batch, kv_heads, kv_len, head_dim] (kv_heads_major=True): the layout of the
decoding caches, which the einsum path then reads without a transposed copy.
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
                          dropout: Optional[Callable[[Array], Array]] = None,
                          kv_heads_major: bool = False) -> Array:
  """softmax(scale * q k^T + bias, masked) v -> [batch, q_len, heads, head_dim].

  bias: broadcastable to [batch, heads, q_len, kv_len]; mask: same, nonzero =
  may attend. `dropout` (einsum only) maps the attention weights
  [batch, heads, q_len, kv_len] to their dropped-out version. kv_heads_major:
  key / value are [batch, kv_heads, kv_len, head_dim].
  """
  check_implementation(implementation)
  heads, kv_heads = query.shape[2], key.shape[1 if kv_heads_major else 2]
  if heads % kv_heads:
    raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads; "
                     "num_heads must be a multiple of num_kv_heads.")
  if implementation == "fused":
    if dropout is not None:
      raise ValueError("The fused attention has no dropout; use the einsum implementation "
                       "while attention dropout is active.")
    if kv_heads_major:  # jax.nn.dot_product_attention takes [batch, len, heads, dim] only.
      key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
    return _fused(query, key, value, bias, mask, scale)
  return _einsum(query, key, value, bias, mask, scale, dropout, kv_heads_major)


def _kv_subscripts(kv_heads_major: bool) -> str:
  """einsum subscripts of key / value: k = kv position, h = kv head, d = head_dim."""
  return "bhkd" if kv_heads_major else "bkhd"


def _einsum(query, key, value, bias, mask, scale, dropout, kv_heads_major=False):
  batch, q_len, heads, head_dim = query.shape
  kv = _kv_subscripts(kv_heads_major)
  kv_len = key.shape[kv.index("k")]
  kv_heads = key.shape[kv.index("h")]
  groups = heads // kv_heads
  # Multi-head attention keeps t5x's einsums (and so its exact float32 gradients);
  # grouped-query attention splits the query heads into [kv_heads, groups].
  if groups == 1:
    logits = jnp.einsum(f"bqhd,{kv}->bhqk", query, key, preferred_element_type=jnp.float32)
  else:
    grouped_query = query.reshape(batch, q_len, kv_heads, groups, head_dim)
    logits = jnp.einsum(f"bqhgd,{kv}->bhgqk", grouped_query, key,
                        preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, heads, q_len, kv_len)
  if scale != 1.0:
    logits = logits * jnp.float32(scale)
  if bias is not None:
    logits = add_broadcast_bias(logits, bias.astype(jnp.float32))
  if mask is not None:
    logits = jnp.where(mask > 0, logits, MASKED_LOGIT)
  if dropout is not None:
    return _weighted_sum(dropout(jax.nn.softmax(logits, axis=-1)).astype(value.dtype), value,
                         kv_heads, kv_heads_major)
  # Softmax normalised after the weighted sum: dividing the [.., head_dim] outputs
  # instead of the [.., kv_len] weights saves passes over the largest tensor.
  unnormalized = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  denominator = jnp.sum(unnormalized, axis=-1).transpose(0, 2, 1)[..., None]  # [b, q, h, 1]
  out = _weighted_sum(unnormalized.astype(value.dtype), value, kv_heads, kv_heads_major,
                      jnp.float32)
  return (out / denominator).astype(value.dtype)


def _weighted_sum(weights, value, kv_heads, kv_heads_major, preferred_element_type=None):
  """weights [batch, heads, q_len, kv_len] times value -> [batch, q_len, heads, head_dim]."""
  batch, heads, q_len, kv_len = weights.shape
  kv = _kv_subscripts(kv_heads_major)
  if preferred_element_type == jnp.float32 and jax.default_backend() == "cpu":
    # XLA:CPU has no kernel for some bfloat16 x bfloat16 -> float32 products (a
    # grouped-query decode step's); upcasting first gives the same float32 result.
    weights, value = weights.astype(jnp.float32), value.astype(jnp.float32)
  if heads == kv_heads:
    return jnp.einsum(f"bhqk,{kv}->bqhd", weights, value,
                      preferred_element_type=preferred_element_type)
  weights = weights.reshape(batch, kv_heads, heads // kv_heads, q_len, kv_len)
  out = jnp.einsum(f"bhgqk,{kv}->bqhgd", weights, value,
                   preferred_element_type=preferred_element_type)
  return out.reshape(batch, q_len, heads, value.shape[-1])


@jax.custom_vjp
def add_broadcast_bias(logits: Array, bias: Array) -> Array:
  """logits + bias, where bias broadcasts over logits' leading (batch) axes.

  Autodiff would reduce the logits' gradient over the broadcast batch axis with
  a reduction, which XLA:CPU runs tens of times slower than the same sum as a
  matmul with a ones vector; the backward pass here uses the matmul. Same
  gradient to float32 rounding.
  """
  return logits + bias


def _add_broadcast_bias_fwd(logits, bias):
  return logits + bias, bias


def _add_broadcast_bias_bwd(bias, grad):
  shape = (1,) * (grad.ndim - bias.ndim) + bias.shape
  summed = [i for i, (b, g) in enumerate(zip(shape, grad.shape)) if b == 1 and g != 1]
  leading = 0  # Broadcast axes at the front: one ones-vector matmul sums them.
  while leading < len(summed) and summed[leading] == leading:
    leading += 1
  bias_grad = grad
  if leading:
    rows = grad.reshape(-1, *grad.shape[leading:])
    bias_grad = jnp.tensordot(jnp.ones(rows.shape[:1], grad.dtype), rows, axes=1)
    bias_grad = bias_grad.reshape((1,) * leading + grad.shape[leading:])
  if summed[leading:]:
    bias_grad = jnp.sum(bias_grad, axis=tuple(summed[leading:]), keepdims=True)
  return grad, bias_grad.reshape(bias.shape).astype(bias.dtype)


add_broadcast_bias.defvjp(_add_broadcast_bias_fwd, _add_broadcast_bias_bwd)


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
