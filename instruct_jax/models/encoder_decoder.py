"""The T5-style encoder-decoder model (networks.t5.Transformer) behind the model API.

Decoding runs the encoder once and projects its outputs into every decoder
layer's cross-attention keys/values once, then steps the decoder on its KV
cache (or, with DecodeConfig.use_cache False, recomputes the decoder prefix
each step; both paths give the same tokens).
"""

from collections.abc import Mapping
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import seqio

from instruct_jax.models import api
from instruct_jax.models import decoding
from instruct_jax.models.networks import layers

Array = jax.Array
Batch = api.Batch


class EncoderDecoderModel(api.Model):
  """T5-style encoder-decoder trained with seqio's EncDecFeatureConverter features."""

  FEATURE_CONVERTER_CLS = seqio.EncDecFeatureConverter

  def __init__(self, module: nn.Module, input_vocabulary: seqio.Vocabulary,
               output_vocabulary: seqio.Vocabulary, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor: Any = None):
    super().__init__(module, z_loss=z_loss, label_smoothing=label_smoothing,
                     loss_normalizing_factor=loss_normalizing_factor)
    self._input_vocabulary = input_vocabulary
    self._output_vocabulary = output_vocabulary

  @property
  def input_vocabulary(self) -> seqio.Vocabulary:
    return self._input_vocabulary

  @property
  def output_vocabulary(self) -> seqio.Vocabulary:
    return self._output_vocabulary

  def feature_converter(self, pack: bool) -> seqio.FeatureConverter:
    return self.FEATURE_CONVERTER_CLS(pack=pack)

  def init_params(self, rng: Array, input_shapes: Mapping[str, tuple]) -> Any:
    """LogicallyPartitioned-boxed params (wrap in jax.eval_shape for an abstract tree)."""
    batch = api.dummy_batch(input_shapes, (
        "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
        "encoder_segment_ids", "decoder_segment_ids"))
    variables = self.module.init(
        {"params": rng}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch["decoder_target_tokens"], encoder_segment_ids=batch.get("encoder_segment_ids"),
        decoder_segment_ids=batch.get("decoder_segment_ids"), enable_dropout=False)
    return variables["params"]

  def _decoding_setup(self, params: Any, batch: Batch,
                      cfg: decoding.DecodeConfig) -> decoding.DecodingSetup:
    """Encodes the batch once; the decoding context holds what every step reads of it.

    With the KV cache the context is each layer's cross-attention keys/values
    (layers.CROSS_CACHE, projected once by the BOS step) and the encoder tokens
    for the padding mask; the state is the self-attention cache. Without it,
    the context is the encoder outputs and each step reruns the decoder.
    """
    module = self.module
    encoder_tokens = jnp.asarray(batch["encoder_input_tokens"], jnp.int32)
    length = cfg.max_decode_length
    if length is None:
      if "decoder_target_tokens" not in batch:
        raise ValueError("predict_batch needs DecodeConfig.max_decode_length or the feature "
                         "decoder_target_tokens (whose length is the default); got "
                         f"{sorted(batch)}.")
      length = batch["decoder_target_tokens"].shape[1]
    variables = {"params": params}
    encoded = module.apply(variables, encoder_tokens, enable_dropout=False,
                           method=module.encode)
    rows = encoder_tokens.shape[0]
    bos = jnp.zeros((rows,), jnp.int32)

    if cfg.use_cache:
      def cached_step(tokens, cache, context, encoded=None):
        """One token per row on the KV cache -> (logits, mutated collections).

        Given `encoded` (the BOS step), the cross-attention projects its
        keys/values into the returned CROSS_CACHE; later steps read them from
        the context.
        """
        token = tokens[:, None]
        cross_cache = {} if encoded is not None else {
            layers.CROSS_CACHE: context[layers.CROSS_CACHE]}
        logits, mutated = module.apply(
            {"params": params, "cache": api.clip_cache_index(cache, length - 1),
             **cross_cache},
            encoded, context["encoder_input_tokens"], token, token, enable_dropout=False,
            decode=True, max_decode_length=length, mutable=["cache", layers.CROSS_CACHE],
            method=module.decode)
        return logits[:, 0], mutated

      def step_fn(tokens, state, context):
        logits, mutated = cached_step(tokens, state["cache"], context)
        return logits, {"cache": mutated["cache"]}

      placeholder = jnp.zeros((rows, length), jnp.int32)
      cache_shapes = jax.eval_shape(lambda: module.apply(
          variables, encoded, encoder_tokens, placeholder, placeholder, enable_dropout=False,
          decode=True, max_decode_length=length, mutable=["cache"],
          method=module.decode)[1]["cache"])
      # The BOS step (token 0 at position 0) gives the first distribution.
      context = {"encoder_input_tokens": encoder_tokens}
      first_logits, mutated = cached_step(bos, api.zeros_like_shapes(cache_shapes), context,
                                          encoded)
      state = {"cache": mutated["cache"]}
      context[layers.CROSS_CACHE] = mutated[layers.CROSS_CACHE]
    else:
      def step_fn(tokens, state, context):
        index = jnp.minimum(state["index"], length - 1)
        buffer = api.write_tokens(state["decoder_input_tokens"], index, tokens)
        logits = module.apply(variables, context["encoded"], context["encoder_input_tokens"],
                              buffer, jnp.ones_like(buffer), enable_dropout=False,
                              method=module.decode)
        return api.at_positions(logits, index), {"decoder_input_tokens": buffer,
                                              "index": state["index"] + 1}

      context = {"encoded": encoded, "encoder_input_tokens": encoder_tokens}
      state = {"decoder_input_tokens": jnp.zeros((rows, length), jnp.int32),
               "index": jnp.zeros((rows,), jnp.int32)}
      # The BOS step (token 0 at position 0) gives the first distribution.
      first_logits, state = step_fn(bos, state, context)
    return decoding.DecodingSetup(first_logits, state, step_fn, length, context=context)

  def _logits(self, params: Any, batch: Batch, dropout_rng: Optional[Array]) -> Array:
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch["decoder_target_tokens"], encoder_segment_ids=batch.get("encoder_segment_ids"),
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        encoder_positions=batch.get("encoder_positions"),
        decoder_positions=batch.get("decoder_positions"),
        enable_dropout=dropout_rng is not None, rngs=self._rngs(dropout_rng))
