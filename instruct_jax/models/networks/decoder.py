"""Decoder-only transformer: causal LM, or prefix LM with bidirectional inputs.

Built from the same blocks as the T5 stacks and named like t5x's decoder-only
example, so its checkpoints line up:
  decoder/token_embedder/embedding, decoder/relpos_bias/rel_embedding,
  decoder/layers_N/{pre_self_attention_layer_norm, self_attention,
  pre_mlp_layer_norm, mlp}, decoder/decoder_norm, decoder/logits_dense.

Prefix LM: seqio's PrefixLMFeatureConverter marks the inputs part of each
concatenated example in `decoder_causal_attention`; those positions attend to
each other bidirectionally, the rest causally.
"""

import dataclasses
from collections.abc import Sequence
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from instruct_jax.models.networks import layers
from instruct_jax.models.networks import stack

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DecoderConfig(layers.NetworkConfig):
  """Architecture hyperparameters of a decoder-only model."""
  vocab_size: int
  emb_dim: int
  num_heads: int
  num_layers: int
  head_dim: int
  mlp_dim: int
  mlp_activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  remat_policy: str = "none"
  attention_implementation: str = "einsum"  # or "fused" (networks.attention)
  scan_layers: bool = False


class DecoderOnlyLayer(nn.Module):
  """Pre-norm self-attention + MLP block."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, inputs: Array, bias: Array, mask: Optional[Array],
               deterministic: bool = False, decode: bool = False, prefill: bool = False,
               prefill_lengths: Optional[Array] = None,
               max_decode_length: Optional[int] = None) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    x = layers.RMSNorm(dtype=dtype, name="pre_self_attention_layer_norm")(inputs)
    x = layers.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=dtype,
        dropout_rate=cfg.dropout_rate, implementation=cfg.attention_implementation,
        name="self_attention")(
            x, x, mask, bias, deterministic=deterministic, decode=decode, prefill=prefill,
            prefill_lengths=prefill_lengths, max_decode_length=max_decode_length)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = x + inputs
    y = layers.RMSNorm(dtype=dtype, name="pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                        intermediate_dropout_rate=cfg.dropout_rate, dtype=dtype,
                        name="mlp")(y, deterministic=deterministic)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    return nn.with_logical_constraint(y + x, ("batch", "length", "embed"))


class _DecoderStack(nn.Module):
  """Embedding, layers, final norm and logits (the `decoder/` scope)."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, decoder_input_tokens: Array, mask: Optional[Array],
               deterministic: bool, decode: bool, prefill: bool,
               prefill_lengths: Optional[Array], max_decode_length: Optional[int],
               logits_positions: Optional[Array] = None) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    embedder = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=dtype,
                            attend_dtype=jnp.float32, name="token_embedder")
    length = (max_decode_length if decode and max_decode_length
              else decoder_input_tokens.shape[-1])
    bias = layers.RelativePositionBiases(
        num_heads=cfg.num_heads, num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance, dtype=dtype,
        name="relpos_bias")(length, length, bidirectional=False)
    y = embedder(decoder_input_tokens.astype(jnp.int32))
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    y = y.astype(dtype)
    # Remat only pays off when differentiating; cached decoding never is.
    y = stack.run_layers(DecoderOnlyLayer, cfg, cfg.num_layers, y, bias, mask, deterministic,
                         decode, prefill, prefill_lengths, max_decode_length,
                         scan=cfg.scan_layers,
                         remat_policy="none" if decode else cfg.remat_policy,
                         static_argnums=(4, 5, 6, 8))
    y = layers.RMSNorm(dtype=dtype, name="decoder_norm")(y)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    if logits_positions is not None:  # Decoding reads one position per row.
      y = jnp.take_along_axis(y, logits_positions[:, None, None], axis=1)
    if cfg.logits_via_embedding:
      logits = embedder.attend(y) / jnp.sqrt(jnp.float32(y.shape[-1]))
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32,
                                   name="logits_dense")(y)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class DecoderOnly(nn.Module):
  """Causal / prefix language model; __call__ returns float32 logits [batch, len, vocab]."""
  config: DecoderConfig

  def setup(self):
    self.decoder = _DecoderStack(self.config)

  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Optional[Array],
               decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None,
               decoder_causal_attention: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None,
               prefill: bool = False, prefill_lengths: Optional[Array] = None,
               logits_positions: Optional[Array] = None) -> Array:
    """Logits for every position (or at logits_positions).

    decode=True uses the KV cache: a first call creates it (length
    max_decode_length or the input length), then one token per call with
    max_decode_length = cache length. prefill=True fills the cache with whole
    prompts at once (bidirectional over `decoder_causal_attention` for a prefix
    LM); prefill_lengths [batch] defaults to sum(decoder_causal_attention) when
    given, else the full input length, and becomes each example's next write
    position. logits_positions [batch]: only that position's logits per row,
    [batch, 1, vocab] (decoding needs a prompt's last; the LM head then runs
    on one position instead of all).
    """
    del decoder_positions  # Relative attention needs no absolute positions.
    mask, prefill_lengths = self_attention_mask(
        decoder_input_tokens, decoder_target_tokens, decoder_segment_ids,
        decoder_causal_attention, decode, prefill, prefill_lengths)
    return self.decoder(decoder_input_tokens, mask, not enable_dropout, decode, prefill,
                        prefill_lengths, max_decode_length, logits_positions)


def self_attention_mask(decoder_input_tokens: Array, decoder_target_tokens: Optional[Array],
                        decoder_segment_ids: Optional[Array],
                        decoder_causal_attention: Optional[Array], decode: bool, prefill: bool,
                        prefill_lengths: Optional[Array]
                        ) -> tuple[Optional[Array], Optional[Array]]:
  """(self-attention mask, prefill_lengths) of a decoder-only network call.

  Causal (bidirectional over a prefix LM's inputs), padding and packing masks;
  None for a cached step. Prefill takes validity from prefill_lengths, which
  default to sum(decoder_causal_attention) when given.
  """
  if decoder_input_tokens.ndim != 2:
    raise ValueError(f"decoder_input_tokens must be [batch, length], got shape "
                     f"{decoder_input_tokens.shape}.")
  if decode and not prefill:
    # Steps attend to the cache; the attention masks future slots.
    return None, prefill_lengths
  if prefill:
    if prefill_lengths is None and decoder_causal_attention is not None:
      prefill_lengths = jnp.sum(decoder_causal_attention, axis=-1).astype(jnp.int32)
    if prefill_lengths is None:
      valid = jnp.ones_like(decoder_input_tokens, jnp.int32)
    else:
      positions = jnp.arange(decoder_input_tokens.shape[-1], dtype=jnp.int32)[None, :]
      valid = (positions < jnp.asarray(prefill_lengths, jnp.int32)[:, None]).astype(
          jnp.int32)
    decoder_target_tokens = valid
  elif decoder_target_tokens is None:
    raise ValueError("decoder_target_tokens is needed for the padding mask outside "
                     "cached decoding; pass the feature converter's targets.")
  mask = layers.decoder_attention_mask(decoder_target_tokens, jnp.bool_,
                                       decoder_causal_attention=decoder_causal_attention,
                                       decoder_segment_ids=decoder_segment_ids)
  return mask, prefill_lengths
