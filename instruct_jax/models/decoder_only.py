"""The decoder-only LM (networks.decoder.DecoderOnly) behind the model API.

Decoding prefills each row's prompt into the KV cache and continues from it (or,
with DecodeConfig.use_cache False, recomputes the whole prefix each step; both
paths give the same tokens).
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


class DecoderOnlyModel(api.Model):
  """Decoder-only LM; a prefix LM when inputs_bidirectional_attention=True.

  Tasks with "inputs" are concatenated inputs+targets by the feature converter
  and the loss covers targets only (seqio's decoder_loss_weights).
  """

  FEATURE_CONVERTER_CLS = seqio.DecoderFeatureConverter

  def __init__(self, module: nn.Module, vocabulary: seqio.Vocabulary, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor: Any = None,
               inputs_bidirectional_attention: bool = False):
    super().__init__(module, z_loss=z_loss, label_smoothing=label_smoothing,
                     loss_normalizing_factor=loss_normalizing_factor)
    self.vocabulary = vocabulary
    self.inputs_bidirectional_attention = inputs_bidirectional_attention

  @property
  def input_vocabulary(self) -> seqio.Vocabulary:
    return self.vocabulary

  @property
  def output_vocabulary(self) -> seqio.Vocabulary:
    return self.vocabulary

  def feature_converter(self, pack: bool) -> seqio.FeatureConverter:
    if self.inputs_bidirectional_attention:
      return seqio.PrefixLMFeatureConverter(pack=pack)
    return self.FEATURE_CONVERTER_CLS(pack=pack)

  def init_params(self, rng: Array, input_shapes: Mapping[str, tuple]) -> Any:
    """LogicallyPartitioned-boxed params (wrap in jax.eval_shape for an abstract tree)."""
    batch = api.dummy_batch(input_shapes, (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids"))
    variables = self.module.init(
        {"params": rng}, batch["decoder_input_tokens"], batch["decoder_target_tokens"],
        decoder_segment_ids=batch.get("decoder_segment_ids"), enable_dropout=False)
    return variables["params"]

  def _decoding_setup(self, params: Any, batch: Batch,
                      cfg: decoding.DecodeConfig) -> decoding.DecodingSetup:
    """Continues each row after its prompt.

    The prompt is the BOS token plus the inputs part of decoder_input_tokens:
    sum(decoder_causal_attention) tokens (seqio marks the inputs and one more
    position), or BOS alone for tasks without inputs. The cache spans the
    batch's decoder length L, so row i generates at most
    min(max_decode_length, L - prompt_length_i + 1) tokens; give "targets" a
    length that leaves room for the answer.
    """
    module = self.module
    decoder_tokens = jnp.asarray(batch["decoder_input_tokens"], jnp.int32)
    rows, length = decoder_tokens.shape
    causal = batch.get("decoder_causal_attention")
    if causal is None:
      prompt_lengths = jnp.ones((rows,), jnp.int32)
    else:
      prompt_lengths = jnp.sum(jnp.asarray(causal, jnp.int32), axis=-1)
    positions = jnp.arange(length, dtype=jnp.int32)[None, :]
    prompt = jnp.where(positions < prompt_lengths[:, None], decoder_tokens, 0)
    bidirectional = None
    if self.inputs_bidirectional_attention:
      if causal is None:
        raise ValueError("inputs_bidirectional_attention=True needs the feature "
                         "'decoder_causal_attention' to find each prompt; use the model's "
                         "feature converter on a task with 'inputs'.")
      bidirectional = jnp.asarray(causal, jnp.int32)
    max_length = cfg.max_decode_length or length
    limits = jnp.minimum(max_length, length - prompt_lengths + 1)
    variables = {"params": params}
    last_prompt_position = prompt_lengths - 1

    if cfg.use_cache:
      def step_fn(tokens, state, context):
        del context  # The cache holds everything a step reads.
        logits, mutated = module.apply(
            {"params": params, "cache": api.clip_cache_index(state["cache"], length - 1)},
            tokens[:, None], None, enable_dropout=False, decode=True,
            max_decode_length=length, mutable=["cache"])
        return logits[:, 0], {"cache": mutated["cache"]}

      logits, mutated = module.apply(
          variables, prompt, None, decoder_causal_attention=bidirectional,
          enable_dropout=False, decode=True, prefill=True, prefill_lengths=prompt_lengths,
          max_decode_length=length, logits_positions=last_prompt_position, mutable=["cache"])
      state, context = {"cache": mutated["cache"]}, None
    else:
      def forward(buffer, causal_attention, index):
        return module.apply(variables, buffer, jnp.ones_like(buffer),
                            decoder_causal_attention=causal_attention, enable_dropout=False,
                            logits_positions=index)

      def step_fn(tokens, state, context):
        index = jnp.minimum(state["index"], length - 1)
        buffer = api.write_tokens(state["decoder_input_tokens"], index, tokens)
        logits = forward(buffer, context, index)
        return logits[:, 0], {"decoder_input_tokens": buffer, "index": state["index"] + 1}

      logits = forward(prompt, bidirectional, last_prompt_position)
      state = {"decoder_input_tokens": prompt, "index": prompt_lengths}
      context = bidirectional  # The prefix-LM attention pattern, or None.
    first_logits = logits[:, 0]
    return decoding.DecodingSetup(first_logits, state, step_fn, max_length, limits, context)

  def _logits(self, params: Any, batch: Batch, dropout_rng: Optional[Array]) -> Array:
    causal_attention = None
    if self.inputs_bidirectional_attention:
      causal_attention = batch.get("decoder_causal_attention")
      if causal_attention is None:
        raise ValueError("inputs_bidirectional_attention=True needs the feature "
                         "'decoder_causal_attention'; use seqio.PrefixLMFeatureConverter "
                         "(model.feature_converter) on a task with 'inputs'.")
    return self.module.apply(
        {"params": params}, batch["decoder_input_tokens"], batch["decoder_target_tokens"],
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        decoder_positions=batch.get("decoder_positions"),
        decoder_causal_attention=causal_attention,
        enable_dropout=dropout_rng is not None, rngs=self._rngs(dropout_rng))
