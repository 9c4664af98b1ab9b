"""Transformer building blocks with t5x parameter names, shapes and initialisers.

Every parameter is created through `nn.with_logical_partitioning`, so the
partitioner can map logical axes (embed, mlp, heads, joined_kv, vocab,
relpos_buckets) onto the device mesh, and key activations carry
`nn.with_logical_constraint` annotations (no-ops outside a mesh/rules scope).

Parameters are stored in float32; `dtype` is the activation / compute dtype.
Kernels are stored 2-D exactly as t5x stores them (e.g. a query kernel is
[embed, heads * head_dim]) and reshaped when used, so released t5x checkpoints
load without any renaming or reshaping.
"""

import functools
import math
import operator
import typing
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax.errors import UsageError
from instruct_jax.models.networks import attention

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

# t5x initialisers (facts about the released models' training setup).
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
relpos_embedding_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
token_embedding_init = nn.initializers.normal(stddev=1.0)

REMAT_POLICIES = ("none", "full", "minimal")
# Variable collection of keys/values that stay fixed while decoding (cross-attention
# to the encoder outputs): written once at decode setup, read by every step.
CROSS_CACHE = "cross_cache"


def _as_tuple(x: Union[int, Sequence[int]]) -> tuple[int, ...]:
  return tuple(x) if isinstance(x, Sequence) else (x,)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction or bias, computed in float32."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(mean_square + self.epsilon) * scale
    return y.astype(self.dtype)


class DenseGeneral(nn.Module):
  """Linear map over trailing axes with a 2-D stored kernel [prod(in), prod(out)].

  t5x keeps every kernel 2-D in its checkpoints (e.g. attention out is
  [heads * head_dim, embed]). The contraction is one [tokens, prod(in)] x
  [prod(in), prod(out)] matmul on the flattened inputs: same sums, and its
  weight gradient needs no transposed copies of the activations, which on
  XLA:CPU made the batched form's backward pass much slower.
  """
  features: Union[int, Sequence[int]]
  kernel_axes: tuple[str, str]
  axis: Union[int, Sequence[int]] = -1
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = _as_tuple(self.features)
    axis = tuple(a % inputs.ndim for a in _as_tuple(self.axis))
    if axis != tuple(range(inputs.ndim - len(axis), inputs.ndim)):
      raise ValueError(f"DenseGeneral contracts trailing axes only; got axis={self.axis} "
                       f"for inputs of rank {inputs.ndim}.")
    in_dims = tuple(inputs.shape[a] for a in axis)
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (math.prod(in_dims), math.prod(features)), jnp.float32)
    kernel = jnp.asarray(kernel, self.dtype)
    batch_dims = inputs.shape[:inputs.ndim - len(axis)]
    matrix = jnp.asarray(inputs, self.dtype).reshape(math.prod(batch_dims), kernel.shape[0])
    return jnp.dot(matrix, kernel).reshape(batch_dims + features)


class Embed(nn.Module):
  """Token embedding table [vocab, embed]; `attend` gives tied output logits."""
  num_embeddings: int
  features: int
  dtype: Dtype = jnp.float32
  attend_dtype: Dtype = jnp.float32
  embedding_init: Initializer = token_embedding_init

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, inputs: Array) -> Array:
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f"Embed expects integer token ids, got dtype {inputs.dtype}; "
                       "cast the token array with .astype(jnp.int32).")
    embedded = jnp.take(jnp.asarray(self.embedding, self.dtype), inputs, axis=0)
    return nn.with_logical_constraint(embedded, ("batch", "length", "embed"))

  def attend(self, query: Array) -> Array:
    """Logits against the embedding table: query [..., embed] -> [..., vocab]."""
    embedding = jnp.asarray(self.embedding, self.attend_dtype)
    return jnp.dot(jnp.asarray(query, self.attend_dtype), embedding.T)


def _activation(name: str) -> Callable[[Array], Array]:
  if name == "linear":
    return lambda x: x
  fn = getattr(nn, name, None)
  if not callable(fn):
    raise ValueError(f"Unknown MLP activation {name!r}; expected 'linear' or the name of a "
                     "flax.linen activation such as 'gelu', 'relu' or 'silu'.")
  return fn


class MlpBlock(nn.Module):
  """Feed-forward block; several activations multiply together (gated, e.g. GeGLU).

  Names follow t5x: `wi` for one activation, `wi_0`, `wi_1`, ... for several,
  then `wo`.
  """
  intermediate_dim: int
  activations: Sequence[str] = ("gelu", "linear")
  intermediate_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = False) -> Array:
    hidden = []
    for i, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      h = DenseGeneral(self.intermediate_dim, ("embed", "mlp"), dtype=self.dtype,
                       kernel_init=self.kernel_init, name=name)(inputs)
      hidden.append(_activation(act)(h))
    x = functools.reduce(operator.mul, hidden)
    x = nn.Dropout(self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "mlp"))
    return DenseGeneral(inputs.shape[-1], ("mlp", "embed"), dtype=self.dtype,
                        kernel_init=self.kernel_init, name="wo")(x)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """T5 bucketing of (memory - query) offsets: exact when near, log-spaced when far.

  Bidirectional buckets spend half the range on each direction; unidirectional
  ones (decoder) map every future offset to bucket 0.
  """
  relative_position = np.asarray(relative_position)
  bucket = np.zeros_like(relative_position, dtype=np.int32)
  distance = -relative_position  # > 0 when the key lies before the query.
  if bidirectional:
    num_buckets //= 2
    bucket += (distance < 0).astype(np.int32) * num_buckets
    distance = np.abs(distance)
  else:
    distance = np.maximum(distance, 0)
  max_exact = num_buckets // 2
  with np.errstate(divide="ignore"):
    log_ratio = (np.log(distance.astype(np.float32) / max_exact + np.finfo(np.float32).eps) /
                 np.log(max_distance / max_exact))
  far_bucket = max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int32)
  far_bucket = np.minimum(far_bucket, num_buckets - 1)
  return bucket + np.where(distance < max_exact, distance, far_bucket).astype(np.int32)


class RelativePositionBiases(nn.Module):
  """Learned per-head attention bias indexed by the bucketed relative position.

  One table per stack, shared by all its layers (t5x `relpos_bias`).
  """
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  dtype: Dtype = jnp.float32
  embedding_init: Initializer = relpos_embedding_init

  @nn.compact
  def __call__(self, query_length: int, key_length: int, bidirectional: bool) -> Array:
    """Returns the bias [1, heads, query_length, key_length]."""
    table = self.param("rel_embedding",
                       nn.with_logical_partitioning(self.embedding_init,
                                                    ("heads", "relpos_buckets")),
                       (self.num_heads, self.num_buckets), jnp.float32)
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = relative_position_bucket(relative, bidirectional, self.num_buckets,
                                       self.max_distance)
    bias = jnp.take(jnp.asarray(table, self.dtype), jnp.asarray(buckets), axis=1)
    return bias[None]


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention without biases: T5 by default, Llama / Mistral through options.

  T5 (the defaults): as many key/value heads as query heads, no position
  encoding here (T5 adds a relative `bias`), and no logit scaling at runtime:
  the 1/sqrt(head_dim) factor lives in the query kernel initialiser instead, as
  in Mesh TensorFlow / t5x. Llama / Mistral: `num_kv_heads` < `num_heads`
  (grouped-query attention), a `rotary` position encoding applied to queries and
  keys at their positions, `scale_logits=True` (logits times 1/sqrt(head_dim),
  plain query initialiser) and optionally a `sliding_window`: a query sees
  only keys less than that many positions away. Rotary encoding and the window
  assume self-attention (queries and keys share positions).

  `implementation` picks the attention math (see networks.attention): "einsum"
  (the reference) or "fused" (jax.nn.dot_product_attention, cuDNN on GPUs).
  While attention dropout is active (dropout_rate > 0 and not deterministic)
  the fused path has no dropout, so the einsum one runs instead. Logits and
  softmax are float32 on both.

  Autoregressive cache (decode=True), collection "cache":
    cached_key, cached_value: [batch, kv_heads, cache_length, head_dim]
    cache_index: int32 [batch], the next position each example writes.
  Keys and values are stored heads-major, the layout the attention matmuls
  read, so a decode step does not transpose the whole cache (see _heads_major).
  Cache slot p holds the token at position p, so a cached step's position (for
  the rotary encoding and the window) is its example's cache_index.
  Call patterns with decode=True:
    * first call, no cache yet: creates a zeroed cache of length
      `max_decode_length` (or the input length) and attends as usual
      (outputs are usually discarded, as in t5x);
    * prefill=True: writes the keys/values of a whole prompt into the cache
      and sets cache_index = prefill_lengths (per example); attends over the
      prompt with the given mask;
    * otherwise: one new token per call at cache_index; attends over cache
      positions <= cache_index. `bias` must then be the full
      [1, heads, cache_length, cache_length] table; the current row is taken.
  The per-example index lets prompts of different lengths share one batch and
  makes every cache leaf batch-major (easy to expand for beam search).

  Cross-attention cache (decode=True and static_kv=True, collection
  CROSS_CACHE): `inputs_kv` (the encoder outputs) is the same at every step, so
  its keys/values are projected once, by a call in which that collection is
  mutable, and stored heads-major as cached_key / cached_value [batch,
  kv_heads, kv_len, head_dim]. Later calls read them and may pass inputs_kv=None. Without the
  collection (neither present nor mutable) the keys/values are projected as
  usual.
  """
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = attention_kernel_init
  num_kv_heads: Optional[int] = None  # None: num_heads.
  # (x [batch, len, heads, head_dim], positions [batch, len]) -> x encoded at its positions.
  rotary: Optional[Callable[[Array, Array], Array]] = None
  scale_logits: bool = False
  sliding_window: Optional[int] = None
  implementation: str = "einsum"

  @nn.compact
  def __call__(self,
               inputs_q: Array,
               inputs_kv: Array,
               mask: Optional[Array] = None,
               bias: Optional[Array] = None,
               *,
               positions: Optional[Array] = None,
               deterministic: bool = False,
               decode: bool = False,
               prefill: bool = False,
               prefill_lengths: Optional[Array] = None,
               max_decode_length: Optional[int] = None,
               static_kv: bool = False) -> Array:
    """[batch, q_len, embed] attending to [batch, kv_len, embed] -> [batch, q_len, embed].

    mask: [batch, 1, q_len, kv_len] (nonzero = may attend); bias: broadcastable
    to [batch, heads, q_len, kv_len], added to the logits. positions:
    [batch, q_len] int, for the rotary encoding and the window (default
    0, 1, ...; packed rows pass positions that restart in every segment).
    static_kv: inputs_kv does not change between decode steps (see the
    cross-attention cache above); only read with decode=True.
    """
    attention.check_implementation(self.implementation)
    depth_scaling = math.sqrt(self.head_dim)
    base_init = self.kernel_init

    def query_init(*args, **kwargs):
      return base_init(*args, **kwargs) / depth_scaling

    def projection(heads, kernel_init, name):
      return DenseGeneral(features=(heads, self.head_dim), kernel_axes=("embed", "joined_kv"),
                          dtype=self.dtype, kernel_init=kernel_init, name=name)

    kv_heads = self.num_kv_heads or self.num_heads
    query = projection(self.num_heads, self.kernel_init if self.scale_logits else query_init,
                       "query")(inputs_q)
    query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
    key_projection = projection(kv_heads, self.kernel_init, "key")
    value_projection = projection(kv_heads, self.kernel_init, "value")
    heads_major = False  # Keys / values in the cache layout [batch, kv_heads, len, head_dim].
    if decode and static_kv:
      key, value, heads_major = self._static_keys_values(inputs_kv, key_projection,
                                                         value_projection)
    else:
      key, value = _project(inputs_kv, key_projection), _project(inputs_kv, value_projection)

    cached_step = decode and not prefill and self.has_variable("cache", "cached_key")
    if self.rotary is not None or self.sliding_window is not None:
      if cached_step:
        positions = self.get_variable("cache", "cache_index")[:, None]
      elif positions is None:
        positions = jnp.broadcast_to(jnp.arange(query.shape[1], dtype=jnp.int32),
                                     query.shape[:2])
    if self.rotary is not None:
      query, key = self.rotary(query, positions), self.rotary(key, positions)

    if decode and not static_kv:
      key, value, mask, bias, heads_major = self._use_cache(
          key, value, mask, bias, prefill, prefill_lengths, max_decode_length)
    kv_len = key.shape[2 if heads_major else 1]
    if self.sliding_window is not None:
      key_positions = (jnp.arange(kv_len, dtype=jnp.int32)[None, :] if cached_step
                       else positions)
      distance = positions[:, :, None] - key_positions[:, None, :]
      mask = nn.combine_masks(mask, (jnp.abs(distance) < self.sliding_window)[:, None])
    if bias is not None and bias.shape[-2:] != (query.shape[1], kv_len):
      # A table built for the full decode length, used on a shorter sequence:
      # relative biases depend only on offsets, so the top-left corner is exact.
      bias = bias[..., :query.shape[1], :kv_len]

    dropout = None
    if self.dropout_rate > 0 and not deterministic:
      drop = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))
      dropout = lambda weights: drop(weights, deterministic=False)  # noqa: E731
    x = attention.dot_product_attention(
        query, key, value, bias=bias, mask=mask,
        scale=1.0 / depth_scaling if self.scale_logits else 1.0,
        implementation="einsum" if dropout is not None else self.implementation,
        dropout=dropout, kv_heads_major=heads_major)
    x = nn.with_logical_constraint(x, ("batch", "length", "heads", "kv"))
    out = DenseGeneral(inputs_q.shape[-1], ("joined_kv", "embed"), axis=(-2, -1),
                       dtype=self.dtype, kernel_init=self.kernel_init, name="out")(x)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))

  def _static_keys_values(self, inputs_kv, key_projection, value_projection):
    """(key, value, heads_major) of the unchanging inputs_kv: from CROSS_CACHE (heads-major,
    as stored), or projected (and stored)."""
    if self.has_variable(CROSS_CACHE, "cached_key"):
      return (self.get_variable(CROSS_CACHE, "cached_key"),
              self.get_variable(CROSS_CACHE, "cached_value"), True)
    if inputs_kv is None:
      raise ValueError("Cross-attention got inputs_kv=None but has no cached keys/values; "
                       f"pass the encoder outputs, or the '{CROSS_CACHE}' collection that a "
                       "first decode call made mutable returned.")
    key, value = _project(inputs_kv, key_projection), _project(inputs_kv, value_projection)
    if self.is_mutable_collection(CROSS_CACHE):
      self.put_variable(CROSS_CACHE, "cached_key", _heads_major(key))
      self.put_variable(CROSS_CACHE, "cached_value", _heads_major(value))
    return key, value, False

  def _use_cache(self, key, value, mask, bias, prefill, prefill_lengths, max_decode_length):
    """(key, value, mask, bias, heads_major) to attend with, after reading / writing the cache."""
    batch, length, heads, head_dim = key.shape
    is_initialized = self.has_variable("cache", "cached_key")
    cache_length = max_decode_length or length
    cached_key = self.variable("cache", "cached_key", jnp.zeros,
                               (batch, heads, cache_length, head_dim), key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros,
                                 (batch, heads, cache_length, head_dim), value.dtype)
    cache_index = self.variable("cache", "cache_index", jnp.zeros, (batch,), jnp.int32)
    cache_length = cached_key.value.shape[2]

    if prefill:
      if length > cache_length:
        raise ValueError(f"Prefill of {length} tokens does not fit the cache of length "
                         f"{cache_length}; pass a larger max_decode_length.")
      cached_key.value = jax.lax.dynamic_update_slice(
          cached_key.value, _heads_major(key).astype(cached_key.value.dtype), (0, 0, 0, 0))
      cached_value.value = jax.lax.dynamic_update_slice(
          cached_value.value, _heads_major(value).astype(cached_value.value.dtype), (0, 0, 0, 0))
      if prefill_lengths is None:
        prefill_lengths = jnp.full((batch,), length, jnp.int32)
      cache_index.value = jnp.asarray(prefill_lengths, jnp.int32)
      return key, value, mask, bias, False

    if not is_initialized:
      return key, value, mask, bias, False

    if length != 1:
      raise ValueError(f"Cached decoding takes one new token per call; got {length}. "
                       "Use prefill=True to fill the cache with a whole prompt.")
    if cached_key.value.shape[0] != batch:
      raise ValueError(f"Cache was built for batch {cached_key.value.shape[0]} but the step "
                       f"has batch {batch}; expand the cache (e.g. for beam search) first.")
    index = cache_index.value
    positions = jnp.arange(cache_length, dtype=jnp.int32)
    # A scatter of one slot per example updates the cache in place (a select over
    # the whole cache would rewrite it every step); an index past the end writes nothing.
    rows = jnp.arange(batch, dtype=jnp.int32)
    key = cached_key.value.at[rows, :, index].set(key[:, 0].astype(cached_key.value.dtype),
                                                  mode="drop")
    value = cached_value.value.at[rows, :, index].set(
        value[:, 0].astype(cached_value.value.dtype), mode="drop")
    cached_key.value, cached_value.value = key, value
    cache_index.value = index + 1

    visible = (positions[None, :] <= index[:, None])[:, None, None, :]
    mask = nn.combine_masks(mask, visible)
    if bias is not None:
      if bias.shape[-2:] != (cache_length, cache_length):
        raise ValueError(f"Cached decoding needs the relative-position bias for the full cache "
                         f"({cache_length}x{cache_length}), got {bias.shape[-2:]}; pass "
                         "max_decode_length equal to the cache length.")
      # Row `index` of the (shared) bias table for every example: [batch, heads, 1, cache].
      bias = jnp.take(bias[0], index, axis=1).transpose(1, 0, 2)[:, :, None, :]
    return key, value, mask, bias, True


def _heads_major(x: Array) -> Array:
  """Keys/values [batch, len, heads, head_dim] -> the cache layout [batch, heads, len, head_dim].

  The attention matmuls contract per (batch, head), so XLA:CPU wants each head's
  [len, head_dim] block contiguous; a cache stored length-major is copied into
  that layout on every decode step, which costs about as much as the step's
  attention itself.
  """
  return x.transpose(0, 2, 1, 3)


def _project(inputs: Array, projection: nn.Module) -> Array:
  """[batch, len, embed] -> keys or values [batch, len, heads, head_dim]."""
  return nn.with_logical_constraint(projection(inputs), ("batch", "length", "heads", "kv"))


def decoder_attention_mask(decoder_target_tokens: Array,
                           dtype: Dtype = jnp.float32,
                           decoder_causal_attention: Optional[Array] = None,
                           decoder_segment_ids: Optional[Array] = None) -> Array:
  """[batch, 1, len, len] decoder self-attention mask.

  Causal, except that positions marked in `decoder_causal_attention` (the
  inputs of a prefix LM) see each other bidirectionally; padding comes from
  target token 0 and packing from segment ids.
  """
  causal = nn.make_causal_mask(decoder_target_tokens, dtype=jnp.bool_)
  if decoder_causal_attention is not None:
    prefix = nn.make_attention_mask(decoder_causal_attention, decoder_causal_attention,
                                    jnp.logical_and, dtype=jnp.bool_)
    causal = jnp.logical_or(causal, prefix)
  padding = nn.make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0,
                                   dtype=jnp.bool_)
  segments = None
  if decoder_segment_ids is not None:
    segments = nn.make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal,
                                      dtype=jnp.bool_)
  return nn.combine_masks(causal, padding, segments, dtype=dtype)


class NetworkConfig:
  """What T5Config and DecoderConfig share: validation on construction, the activation dtype.

  A mixin for frozen dataclasses that have `mlp_activations`, `dtype`,
  `remat_policy` and `attention_implementation` fields (and `scan_layers`, read
  by networks.stack).
  """

  def __post_init__(self):
    _check_field_values(self)
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    remat_policy(self.remat_policy)
    attention.check_implementation(self.attention_implementation)
    try:
      jnp.dtype(self.dtype)
    except TypeError as e:
      raise ValueError(f"{type(self).__name__}.dtype={self.dtype!r} is not a dtype name; "
                       "use 'bfloat16' or 'float32'.") from e

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)


def _check_field_values(config: Any) -> None:
  """Every int field a positive integer, every bool a bool, float fields (dropout) in [0, 1).

  A gin value such as `num_heads = 4.5` would otherwise fail deep inside flax with a
  traceback that never names the field.
  """
  selector = f"{type(config).__module__.rsplit('.', 1)[-1]}.{type(config).__name__}"
  for name, kind in typing.get_type_hints(type(config)).items():
    value = getattr(config, name)
    if kind is int:
      ok, expected = (isinstance(value, int) and not isinstance(value, bool) and value > 0,
                      "a positive integer")
    elif kind is bool:
      ok, expected = isinstance(value, bool), "True or False"
    elif kind is float:
      ok, expected = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and 0 <= value < 1, "a number in [0, 1)")
    else:
      continue
    if not ok:
      raise UsageError(f"{selector}.{name} = {value!r} must be {expected} (set in the model "
                       f"gin, or with --gin.{selector}.{name}=...).")


def remat_policy(name: str) -> Optional[Callable[..., bool]]:
  """jax.checkpoint policy for a remat_policy name ("none" has no policy and no remat)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat_policy {name!r}; expected one of {REMAT_POLICIES}.")
  if name == "minimal":
    # Keep matmul outputs, recompute the cheap elementwise work.
    return jax.checkpoint_policies.dots_saveable
  return jax.checkpoint_policies.nothing_saveable if name == "full" else None


def maybe_remat(layer_cls: type[nn.Module], policy_name: str,
                static_argnums: tuple[int, ...]) -> type[nn.Module]:
  """`layer_cls` wrapped in nn.remat per the policy name; unchanged for "none".

  static_argnums count `self` as 0 (flax convention); they must cover the
  Python-bool arguments such as `deterministic`.
  """
  policy = remat_policy(policy_name)
  if policy_name == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=policy, static_argnums=static_argnums)
