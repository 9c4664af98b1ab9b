"""T5 v1.1 / Flan-T5 encoder-decoder with t5x's exact parameter tree.

Pre-norm residual blocks (RMS norm, no biases), gated-GELU MLP, one relative
position bias table per stack, a shared token embedding and (v1.1) an untied
float32 output projection `decoder/logits_dense`. Set logits_via_embedding=True
for T5 v1.0 style tied logits.

Packed rows are supported through segment ids: attention never crosses
segments, and since relative biases depend only on offsets inside a row, a
packed sequence gets exactly the logits it would get alone. The
`*_positions` arguments are accepted for interface compatibility and unused.
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
class T5Config(layers.NetworkConfig):
  """Architecture hyperparameters (field names as in t5x's network.T5Config)."""
  vocab_size: int
  emb_dim: int
  num_heads: int
  num_encoder_layers: int
  num_decoder_layers: int
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


def _relpos(config, name: str) -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(
      num_heads=config.num_heads, num_buckets=config.relative_attention_num_buckets,
      max_distance=config.relative_attention_max_distance, dtype=config.activation_dtype,
      name=name)


def _attention(config, name: str) -> layers.MultiHeadDotProductAttention:
  return layers.MultiHeadDotProductAttention(
      num_heads=config.num_heads, head_dim=config.head_dim, dtype=config.activation_dtype,
      dropout_rate=config.dropout_rate, implementation=config.attention_implementation,
      name=name)


def _mlp(config) -> layers.MlpBlock:
  return layers.MlpBlock(intermediate_dim=config.mlp_dim, activations=config.mlp_activations,
                         intermediate_dropout_rate=config.dropout_rate,
                         dtype=config.activation_dtype, name="mlp")


def _dropout(config) -> nn.Dropout:
  # Same mask at every position of a sequence (t5x broadcasts over length).
  return nn.Dropout(config.dropout_rate, broadcast_dims=(-2,))


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block."""
  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, encoder_bias: Array, encoder_mask: Optional[Array],
               deterministic: bool = False) -> Array:
    cfg = self.config
    x = layers.RMSNorm(dtype=cfg.activation_dtype, name="pre_attention_layer_norm")(inputs)
    x = _attention(cfg, "attention")(x, x, encoder_mask, encoder_bias,
                                     deterministic=deterministic)
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs
    y = layers.RMSNorm(dtype=cfg.activation_dtype, name="pre_mlp_layer_norm")(x)
    y = _mlp(cfg)(y, deterministic=deterministic)
    y = _dropout(cfg)(y, deterministic=deterministic) + x
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and MLP block."""
  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, encoded: Optional[Array], decoder_bias: Array,
               decoder_mask: Optional[Array], encoder_decoder_mask: Optional[Array],
               deterministic: bool = False, decode: bool = False, prefill: bool = False,
               prefill_lengths: Optional[Array] = None,
               max_decode_length: Optional[int] = None) -> Array:
    cfg = self.config
    x = layers.RMSNorm(dtype=cfg.activation_dtype, name="pre_self_attention_layer_norm")(inputs)
    x = _attention(cfg, "self_attention")(
        x, x, decoder_mask, decoder_bias, deterministic=deterministic, decode=decode,
        prefill=prefill, prefill_lengths=prefill_lengths, max_decode_length=max_decode_length)
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs
    y = layers.RMSNorm(dtype=cfg.activation_dtype, name="pre_cross_attention_layer_norm")(x)
    # While decoding, the encoder's keys/values are projected once (layers.CROSS_CACHE).
    y = _attention(cfg, "encoder_decoder_attention")(y, encoded, encoder_decoder_mask,
                                                     deterministic=deterministic,
                                                     decode=decode, static_kv=True)
    y = _dropout(cfg)(y, deterministic=deterministic) + x
    z = layers.RMSNorm(dtype=cfg.activation_dtype, name="pre_mlp_layer_norm")(y)
    z = _mlp(cfg)(z, deterministic=deterministic)
    z = _dropout(cfg)(z, deterministic=deterministic) + y
    return nn.with_logical_constraint(z, ("batch", "length", "embed"))


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, encoder_mask: Optional[Array] = None,
               deterministic: bool = False) -> Array:
    cfg = self.config
    length = encoder_input_tokens.shape[-1]
    bias = _relpos(cfg, "relpos_bias")(length, length, bidirectional=True)
    x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
    x = _dropout(cfg)(x, deterministic=deterministic).astype(cfg.activation_dtype)
    x = stack.run_layers(EncoderLayer, cfg, cfg.num_encoder_layers, x, bias, encoder_mask,
                         deterministic, scan=cfg.scan_layers, remat_policy=cfg.remat_policy,
                         static_argnums=(4,))
    x = layers.RMSNorm(dtype=cfg.activation_dtype, name="encoder_norm")(x)
    return _dropout(cfg)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Optional[Array], decoder_input_tokens: Array,
               decoder_mask: Optional[Array], encoder_decoder_mask: Optional[Array],
               deterministic: bool = False, decode: bool = False, prefill: bool = False,
               prefill_lengths: Optional[Array] = None,
               max_decode_length: Optional[int] = None) -> Array:
    cfg = self.config
    # Cached steps need the bias for the whole cache; the attention picks its row.
    length = (max_decode_length if decode and max_decode_length
              else decoder_input_tokens.shape[-1])
    bias = _relpos(cfg, "relpos_bias")(length, length, bidirectional=False)
    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = _dropout(cfg)(y, deterministic=deterministic).astype(cfg.activation_dtype)
    # Remat only pays off when differentiating; cached decoding never is.
    y = stack.run_layers(
        DecoderLayer, cfg, cfg.num_decoder_layers, y, encoded, bias, decoder_mask,
        encoder_decoder_mask, deterministic, decode, prefill, prefill_lengths, max_decode_length,
        scan=cfg.scan_layers, remat_policy="none" if decode else cfg.remat_policy,
        static_argnums=(6, 7, 8, 10))
    y = layers.RMSNorm(dtype=cfg.activation_dtype, name="decoder_norm")(y)
    y = _dropout(cfg)(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      # Tied logits (T5 v1.0): rescale because the embedding is not scaled on input.
      logits = self.shared_embedding.attend(y) / jnp.sqrt(jnp.float32(y.shape[-1]))
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32,
                                   name="logits_dense")(y)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """Encoder-decoder network; __call__ returns float32 logits [batch, len, vocab]."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim,
                                       dtype=cfg.activation_dtype, attend_dtype=jnp.float32)
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             encoder_positions: Optional[Array] = None, enable_dropout: bool = True) -> Array:
    """Encoder outputs [batch, len, emb] (activation dtype)."""
    del encoder_positions  # Relative attention needs no absolute positions.
    _check_tokens("encoder_input_tokens", encoder_input_tokens)
    valid = encoder_input_tokens > 0
    mask = nn.make_attention_mask(valid, valid, dtype=jnp.bool_)
    if encoder_segment_ids is not None:
      mask = nn.combine_masks(mask, nn.make_attention_mask(
          encoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=jnp.bool_), dtype=jnp.bool_)
    return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout)

  def decode(self, encoded: Optional[Array], encoder_input_tokens: Array,
             decoder_input_tokens: Array,
             decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
             decode: bool = False, max_decode_length: Optional[int] = None,
             prefill: bool = False, prefill_lengths: Optional[Array] = None) -> Array:
    """Decoder logits given encoder outputs.

    decode=True uses the KV cache (see layers.MultiHeadDotProductAttention):
    a first call with full-length tokens creates it, then one token per call
    (pass max_decode_length = cache length). prefill=True instead writes a
    forced decoder prefix of `prefill_lengths` tokens per example in one go.
    A decode=True call with the layers.CROSS_CACHE collection mutable also
    stores every layer's cross-attention keys/values of `encoded`; calls given
    that collection back may pass encoded=None.
    """
    del decoder_positions
    _check_tokens("decoder_input_tokens", decoder_input_tokens)
    encoder_valid = encoder_input_tokens > 0
    if decode and not prefill:
      # Steps attend to the cache (the attention masks future slots itself).
      decoder_mask = None
      encoder_decoder_mask = nn.make_attention_mask(
          jnp.ones_like(decoder_input_tokens, jnp.bool_), encoder_valid, dtype=jnp.bool_)
    else:
      if prefill:
        decoder_target_tokens = _prefill_validity(decoder_input_tokens, prefill_lengths)
      decoder_mask = layers.decoder_attention_mask(
          decoder_target_tokens, jnp.bool_, decoder_segment_ids=decoder_segment_ids)
      encoder_decoder_mask = nn.make_attention_mask(decoder_target_tokens > 0, encoder_valid,
                                                    dtype=jnp.bool_)
      if encoder_segment_ids is not None and decoder_segment_ids is not None:
        encoder_decoder_mask = nn.combine_masks(
            encoder_decoder_mask,
            nn.make_attention_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal,
                                   dtype=jnp.bool_), dtype=jnp.bool_)
    return self.decoder(encoded, decoder_input_tokens, decoder_mask, encoder_decoder_mask,
                        deterministic=not enable_dropout, decode=decode, prefill=prefill,
                        prefill_lengths=prefill_lengths, max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                       decoder_positions, enable_dropout, decode, max_decode_length)


def _check_tokens(name: str, tokens: Array) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"{name} must be [batch, length], got shape {tokens.shape}.")


def _prefill_validity(decoder_input_tokens: Array, prefill_lengths: Optional[Array]) -> Array:
  """Nonzero where a prompt token is real, so the padding mask follows prefill_lengths.

  During prefill the true targets are unknown; validity comes from the lengths
  (the default, None, means every position is part of the prompt).
  """
  positions = jnp.arange(decoder_input_tokens.shape[-1], dtype=jnp.int32)[None, :]
  if prefill_lengths is None:
    return jnp.ones_like(decoder_input_tokens, jnp.int32)
  return (positions < jnp.asarray(prefill_lengths, jnp.int32)[:, None]).astype(jnp.int32)
