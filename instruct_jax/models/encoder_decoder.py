"""The T5-style encoder-decoder model (networks.t5.Transformer) behind the model API.

Decoding runs the encoder once, then steps the decoder on its KV cache (or,
with DecodeConfig.use_cache False, recomputes the decoder prefix each step;
both paths give the same tokens).
"""

from collections.abc import Mapping
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import seqio

from instruct_jax.models import api
from instruct_jax.models import decoding

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

  def _decoding_setup(self, params: Any, batch: Batch, cfg: decoding.DecodeConfig):
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
    context = {"encoded": encoded, "encoder_input_tokens": encoder_tokens}

    if cfg.use_cache:
      def step_fn(tokens, state):
        token = tokens[:, None]
        logits, mutated = module.apply(
            {"params": params, "cache": api.clip_cache_index(state["cache"], length - 1)},
            state["encoded"], state["encoder_input_tokens"], token, token,
            enable_dropout=False, decode=True, max_decode_length=length, mutable=["cache"],
            method=module.decode)
        return logits[:, 0], {**state, "cache": mutated["cache"]}

      placeholder = jnp.zeros((rows, length), jnp.int32)
      cache_shapes = jax.eval_shape(lambda: module.apply(
          variables, encoded, encoder_tokens, placeholder, placeholder, enable_dropout=False,
          decode=True, max_decode_length=length, mutable=["cache"],
          method=module.decode)[1]["cache"])
      state = {**context, "cache": api.zeros_like_shapes(cache_shapes)}
    else:
      def step_fn(tokens, state):
        index = jnp.minimum(state["index"], length - 1)
        buffer = api.write_tokens(state["decoder_input_tokens"], index, tokens)
        logits = module.apply(variables, state["encoded"], state["encoder_input_tokens"],
                              buffer, jnp.ones_like(buffer), enable_dropout=False,
                              method=module.decode)
        return api.at_positions(logits, index), {**state, "decoder_input_tokens": buffer,
                                              "index": state["index"] + 1}

      state = {**context, "decoder_input_tokens": jnp.zeros((rows, length), jnp.int32),
               "index": jnp.zeros((rows,), jnp.int32)}
    # The BOS step (token 0 at position 0) gives the first distribution.
    first_logits, state = step_fn(jnp.zeros((rows,), jnp.int32), state)
    return first_logits, state, step_fn, length, None

  def _logits(self, params: Any, batch: Batch, dropout_rng: Optional[Array]) -> Array:
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch["decoder_target_tokens"], encoder_segment_ids=batch.get("encoder_segment_ids"),
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        encoder_positions=batch.get("encoder_positions"),
        decoder_positions=batch.get("decoder_positions"),
        enable_dropout=dropout_rng is not None, rngs=self._rngs(dropout_rng))
