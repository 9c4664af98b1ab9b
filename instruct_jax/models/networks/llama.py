"""Llama / Mistral-family decoder: rotary positions, grouped-query attention, SwiGLU, RMSNorm.

Pre-norm residual blocks without biases, as in Hugging Face's LlamaForCausalLM
and MistralForCausalLM (checkpoints.hf_llama maps the weights one to one).
Parameters are named like the T5-style decoder-only network
(networks.decoder), so the same partitioning, flops and loading code applies:
  decoder/token_embedder/embedding,
  decoder/layers_N/{pre_self_attention_layer_norm, self_attention/{query, key,
  value, out}, pre_mlp_layer_norm, mlp/{wi_0 (gate), wi_1 (up), wo (down)}},
  decoder/decoder_norm, decoder/logits_dense (absent with tied embeddings).

Positions for the rotary encoding come from `decoder_positions` when given
(packed rows restart them in every segment, so a packed sequence gets the
logits it would get alone), else 0, 1, ...; a cached decoding step uses its
example's cache index. Mistral's sliding window is a mask over the same
positions, so the KV cache keeps every position and masks the old ones.
"""

import dataclasses
from collections.abc import Sequence
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from instruct_jax.models.networks import decoder
from instruct_jax.models.networks import layers
from instruct_jax.models.networks import rotary
from instruct_jax.models.networks import stack

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig(layers.NetworkConfig):
  """Architecture hyperparameters of a Llama / Mistral-style decoder.

  num_kv_heads < num_heads gives grouped-query attention (num_heads must be a
  multiple); tie_word_embeddings computes the logits with the input embedding
  (unscaled); sliding_window (Mistral) limits attention to keys less than that
  many positions back.
  """
  vocab_size: int
  emb_dim: int
  num_heads: int
  num_kv_heads: int
  num_layers: int
  head_dim: int
  mlp_dim: int
  rope: rotary.RotaryEmbedding = rotary.RotaryEmbedding()
  norm_epsilon: float = 1e-5
  tie_word_embeddings: bool = False
  sliding_window: Optional[int] = None
  mlp_activations: Sequence[str] = ("silu", "linear")
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"
  remat_policy: str = "none"
  attention_implementation: str = "einsum"
  scan_layers: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LlamaConfig.num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads} (grouped-query attention).")
    if self.head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim={self.head_dim} must be even for the rotary "
                       "position embedding.")
    if self.sliding_window is not None and (
        isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int)
        or self.sliding_window < 1):
      raise ValueError(f"LlamaConfig.sliding_window={self.sliding_window!r} must be None "
                       "(full attention) or a positive number of positions.")


def _embedding_init(emb_dim: int) -> layers.Initializer:
  # Unit-scale logits at initialisation when the embedding is tied to the output.
  return nn.initializers.normal(stddev=emb_dim ** -0.5)


class LlamaLayer(nn.Module):
  """Pre-norm grouped-query self-attention + SwiGLU MLP block."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, inputs: Array, mask: Optional[Array], positions: Array,
               deterministic: bool = False, decode: bool = False, prefill: bool = False,
               prefill_lengths: Optional[Array] = None,
               max_decode_length: Optional[int] = None) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = layers.RMSNorm(cfg.norm_epsilon, dtype=dtype, name="pre_self_attention_layer_norm")(
        inputs)
    x = layers.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=dtype,
        dropout_rate=cfg.dropout_rate, num_kv_heads=cfg.num_kv_heads, rotary=cfg.rope,
        scale_logits=True, sliding_window=cfg.sliding_window,
        implementation=cfg.attention_implementation, name="self_attention")(
            x, x, mask, positions=positions, deterministic=deterministic, decode=decode,
            prefill=prefill, prefill_lengths=prefill_lengths,
            max_decode_length=max_decode_length)
    x = dropout(x, deterministic=deterministic) + inputs
    y = layers.RMSNorm(cfg.norm_epsilon, dtype=dtype, name="pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                        intermediate_dropout_rate=cfg.dropout_rate, dtype=dtype,
                        name="mlp")(y, deterministic=deterministic)
    y = dropout(y, deterministic=deterministic) + x
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))


class _LlamaStack(nn.Module):
  """Embedding, layers, final norm and logits (the `decoder/` scope)."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, decoder_input_tokens: Array, mask: Optional[Array], positions: Array,
               deterministic: bool, decode: bool, prefill: bool,
               prefill_lengths: Optional[Array], max_decode_length: Optional[int],
               logits_positions: Optional[Array] = None) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    embedder = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=dtype,
                            attend_dtype=jnp.float32,
                            embedding_init=_embedding_init(cfg.emb_dim), name="token_embedder")
    y = embedder(decoder_input_tokens.astype(jnp.int32))
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    y = y.astype(dtype)
    # Remat only pays off when differentiating; cached decoding never is.
    y = stack.run_layers(LlamaLayer, cfg, cfg.num_layers, y, mask, positions, deterministic,
                         decode, prefill, prefill_lengths, max_decode_length,
                         scan=cfg.scan_layers,
                         remat_policy="none" if decode else cfg.remat_policy,
                         static_argnums=(4, 5, 6, 8))
    y = layers.RMSNorm(cfg.norm_epsilon, dtype=dtype, name="decoder_norm")(y)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    if logits_positions is not None:  # Decoding reads one position per row.
      y = jnp.take_along_axis(y, logits_positions[:, None, None], axis=1)
    if cfg.tie_word_embeddings:
      logits = embedder.attend(y)
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32,
                                   name="logits_dense")(y)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Llama(nn.Module):
  """Causal / prefix language model; __call__ returns float32 logits [batch, len, vocab].

  The call signature and cache behaviour are networks.decoder.DecoderOnly's, so
  models.decoder_only.DecoderOnlyModel trains, scores and decodes it unchanged.
  """
  config: LlamaConfig

  def setup(self):
    self.decoder = _LlamaStack(self.config)

  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Optional[Array],
               decoder_segment_ids: Optional[Array] = None,
               decoder_positions: Optional[Array] = None,
               decoder_causal_attention: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None,
               prefill: bool = False, prefill_lengths: Optional[Array] = None,
               logits_positions: Optional[Array] = None) -> Array:
    """Logits for every position (decode / prefill / logits_positions as in
    DecoderOnly.__call__)."""
    mask, prefill_lengths = decoder.self_attention_mask(
        decoder_input_tokens, decoder_target_tokens, decoder_segment_ids,
        decoder_causal_attention, decode, prefill, prefill_lengths)
    if decoder_positions is None:
      decoder_positions = jnp.broadcast_to(
          jnp.arange(decoder_input_tokens.shape[-1], dtype=jnp.int32),
          decoder_input_tokens.shape)
    return self.decoder(decoder_input_tokens, mask, jnp.asarray(decoder_positions, jnp.int32),
                        not enable_dropout, decode, prefill, prefill_lengths, max_decode_length,
                        logits_positions)
