"""What the trainer sees of a model: features, parameter init, loss and scores.

One class per family (encoder-decoder, decoder-only). Both share the loss and
metrics logic in `_LossMixin`; they differ in the feature converter and in
which batch features reach the network.

`predict_batch` decodes with instruct_jax.decoding on the KV cache API of the
networks (or without a cache, recomputing the prefix, when
DecodeConfig.use_cache is False); both paths give the same tokens.

Metrics are float32 SUMS over the batch (microbatches and shards just add):
  loss            the returned loss (includes z-loss; normalised when a loss
                  normalising factor is active)
  z_loss          the z-loss part of `loss`
  cross_ent_loss  loss - z_loss
  correct_tokens  argmax hits on weighted target tokens
  num_tokens      weighted target tokens
  num_examples    sequences with at least one weighted token (packed segments
                  count separately)
"""

from collections.abc import Mapping
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import seqio

from instruct_jax import decoding
from instruct_jax.train import losses

Array = jax.Array
Batch = Mapping[str, Array]

# Marks "use the model's own loss_normalizing_factor" in loss_fn.
_MODEL_FACTOR = object()


def _num_examples(token_counts: Array, segment_ids: Optional[Array]) -> Array:
  """Number of sequences (packed segments counted separately) with weighted tokens."""
  if segment_ids is None:
    return jnp.sum(jnp.any(token_counts > 0, axis=-1)).astype(jnp.float32)
  batch, length = segment_ids.shape
  # One bucket per (row, segment id); segment ids are < length + 1.
  flat = (jnp.arange(batch)[:, None] * (length + 1) + segment_ids.astype(jnp.int32)).reshape(-1)
  per_segment = jax.ops.segment_sum(token_counts.reshape(-1), flat,
                                    num_segments=batch * (length + 1))
  return jnp.sum(per_segment > 0).astype(jnp.float32)


def loss_metrics(logits: Array, batch: Batch, loss: Array, z_loss: Array) -> dict[str, Array]:
  """The summed metrics every loss_fn reports (see the module docstring).

  Token counts come from `decoder_token_counts` when the trainer pre-normalised
  the loss weights for microbatching, else from the nonzero loss weights.
  """
  targets = batch["decoder_target_tokens"]
  token_counts = batch.get("decoder_token_counts")
  if token_counts is None:
    raw = batch.get("decoder_loss_weights")
    token_counts = (targets > 0) if raw is None else (raw > 0)
  token_counts = jnp.asarray(token_counts, jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  metrics = {
      "loss": loss,
      "z_loss": z_loss,
      "cross_ent_loss": loss - z_loss,
      "correct_tokens": jnp.sum(correct * token_counts),
      "num_tokens": jnp.sum(token_counts),
      "num_examples": _num_examples(token_counts, batch.get("decoder_segment_ids")),
  }
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


class _LossMixin:
  """Loss, metrics, scoring and decoding shared by both model families."""

  module: nn.Module
  z_loss: float
  label_smoothing: float
  loss_normalizing_factor: Any

  def _logits(self, params: Any, batch: Batch, dropout_rng: Optional[Array]) -> Array:
    raise NotImplementedError

  def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[Array],
              loss_normalizing_factor: Any = _MODEL_FACTOR) -> tuple[Array, dict[str, Array]]:
    """Teacher-forced loss and summed metrics; dropout_rng None => no dropout.

    `loss_normalizing_factor` overrides the model's own (the trainer passes 1.0
    after folding the factor into decoder_loss_weights for microbatching, and
    may then pass `decoder_token_counts` for the token-count metrics).
    """
    if loss_normalizing_factor is _MODEL_FACTOR:
      loss_normalizing_factor = self.loss_normalizing_factor
    logits = self._logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    factor, weights = losses.loss_normalizing_factor_and_weights(loss_normalizing_factor, batch)
    loss, z_loss, _ = losses.weighted_cross_entropy(
        logits, targets, weights, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        loss_normalizing_factor=factor)

    return loss, loss_metrics(logits, batch, loss, z_loss)

  def score_batch(self, params: Any, batch: Batch) -> Array:
    """[batch] float32 sum of target log-likelihoods (weighted; no z-loss, no smoothing)."""
    logits = self._logits(params, batch, None)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    token_ll = -optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(token_ll * jnp.asarray(weights, jnp.float32), axis=-1)

  def predict_batch(self, params: Any, batch: Batch,
                    decode_cfg: Optional[decoding.DecodeConfig] = None,
                    rng: Optional[Array] = None) -> tuple[Array, Array]:
    """Decodes every row: (tokens [batch, max_decode_length] int32, scores [batch]).

    Tokens exclude BOS, include EOS and are 0 after it (seqio's vocabularies
    decode up to EOS). Scores are as in decoding.decode. jit-able, with
    decode_cfg static (close over it). `rng` is needed for sampling only.
    """
    cfg = decode_cfg or decoding.DecodeConfig()
    first_logits, state, step_fn, max_length, limits = self._decoding_setup(params, batch, cfg)
    return decoding.decode(first_logits, state, step_fn, max_length=max_length, cfg=cfg,
                           limits=limits, rng=rng)

  def _decoding_setup(self, params: Any, batch: Batch, cfg: decoding.DecodeConfig):
    """(first_logits, state, step_fn, max_length, limits) for instruct_jax.decoding."""
    raise NotImplementedError

  def _rngs(self, dropout_rng: Optional[Array]) -> dict[str, Array]:
    return {} if dropout_rng is None else {"dropout": dropout_rng}


def _dummy_batch(input_shapes: Mapping[str, tuple], keys: tuple[str, ...]) -> dict[str, Array]:
  missing = [k for k in keys if k not in input_shapes and not k.endswith(("_ids", "_positions"))]
  if missing:
    raise ValueError(f"input_shapes lacks {missing}; got keys {sorted(input_shapes)}. Pass the "
                     "feature converter's model feature shapes.")
  return {k: jnp.ones(tuple(input_shapes[k]), jnp.int32) for k in keys if k in input_shapes}


def _clip_cache_index(cache: Any, last: int) -> Any:
  """Keeps every cache write inside the cache.

  A row that has finished (EOS or length limit) is still stepped along with the
  others; clipping its index makes it overwrite its own last slot instead of
  indexing past the end. Its outputs are ignored.
  """
  def clip(path, leaf):
    name = getattr(path[-1], "key", None)
    return jnp.minimum(leaf, last) if name == "cache_index" else leaf
  return jax.tree_util.tree_map_with_path(clip, cache)


def _write_tokens(buffer: Array, index: Array, tokens: Array) -> Array:
  """buffer[row, index[row]] = tokens[row] for every row."""
  column = jnp.arange(buffer.shape[1], dtype=jnp.int32)[None, :] == index[:, None]
  return jnp.where(column, tokens[:, None], buffer)


def _at_positions(logits: Array, index: Array) -> Array:
  """logits[row, index[row]] -> [batch, vocab]."""
  return jnp.take_along_axis(logits, index[:, None, None], axis=1)[:, 0]


def _zeros_like_shapes(tree: Any) -> Any:
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


class EncoderDecoderModel(_LossMixin):
  """T5-style encoder-decoder trained with seqio's EncDecFeatureConverter features."""

  FEATURE_CONVERTER_CLS = seqio.EncDecFeatureConverter

  def __init__(self, module: nn.Module, input_vocabulary: seqio.Vocabulary,
               output_vocabulary: seqio.Vocabulary, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor: Any = None):
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.loss_normalizing_factor = loss_normalizing_factor

  def feature_converter(self, pack: bool) -> seqio.FeatureConverter:
    return self.FEATURE_CONVERTER_CLS(pack=pack)

  def init_params(self, rng: Array, input_shapes: Mapping[str, tuple]) -> Any:
    """LogicallyPartitioned-boxed params (wrap in jax.eval_shape for an abstract tree)."""
    batch = _dummy_batch(input_shapes, (
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
            {"params": params, "cache": _clip_cache_index(state["cache"], length - 1)},
            state["encoded"], state["encoder_input_tokens"], token, token,
            enable_dropout=False, decode=True, max_decode_length=length, mutable=["cache"],
            method=module.decode)
        return logits[:, 0], {**state, "cache": mutated["cache"]}

      placeholder = jnp.zeros((rows, length), jnp.int32)
      cache_shapes = jax.eval_shape(lambda: module.apply(
          variables, encoded, encoder_tokens, placeholder, placeholder, enable_dropout=False,
          decode=True, max_decode_length=length, mutable=["cache"],
          method=module.decode)[1]["cache"])
      state = {**context, "cache": _zeros_like_shapes(cache_shapes)}
    else:
      def step_fn(tokens, state):
        index = jnp.minimum(state["index"], length - 1)
        buffer = _write_tokens(state["decoder_input_tokens"], index, tokens)
        logits = module.apply(variables, state["encoded"], state["encoder_input_tokens"],
                              buffer, jnp.ones_like(buffer), enable_dropout=False,
                              method=module.decode)
        return _at_positions(logits, index), {**state, "decoder_input_tokens": buffer,
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


class DecoderOnlyModel(_LossMixin):
  """Decoder-only LM; a prefix LM when inputs_bidirectional_attention=True.

  Tasks with "inputs" are concatenated inputs+targets by the feature converter
  and the loss covers targets only (seqio's decoder_loss_weights).
  """

  FEATURE_CONVERTER_CLS = seqio.DecoderFeatureConverter

  def __init__(self, module: nn.Module, vocabulary: seqio.Vocabulary, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor: Any = None,
               inputs_bidirectional_attention: bool = False):
    self.module = module
    self.vocabulary = vocabulary
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.loss_normalizing_factor = loss_normalizing_factor
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
    batch = _dummy_batch(input_shapes, (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids"))
    variables = self.module.init(
        {"params": rng}, batch["decoder_input_tokens"], batch["decoder_target_tokens"],
        decoder_segment_ids=batch.get("decoder_segment_ids"), enable_dropout=False)
    return variables["params"]

  def _decoding_setup(self, params: Any, batch: Batch, cfg: decoding.DecodeConfig):
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
      def step_fn(tokens, state):
        logits, mutated = module.apply(
            {"params": params, "cache": _clip_cache_index(state["cache"], length - 1)},
            tokens[:, None], None, enable_dropout=False, decode=True,
            max_decode_length=length, mutable=["cache"])
        return logits[:, 0], {"cache": mutated["cache"]}

      logits, mutated = module.apply(
          variables, prompt, None, decoder_causal_attention=bidirectional,
          enable_dropout=False, decode=True, prefill=True, prefill_lengths=prompt_lengths,
          max_decode_length=length, mutable=["cache"])
      state = {"cache": mutated["cache"]}
    else:
      def forward(buffer, causal_attention):
        return module.apply(variables, buffer, jnp.ones_like(buffer),
                            decoder_causal_attention=causal_attention, enable_dropout=False)

      def step_fn(tokens, state):
        index = jnp.minimum(state["index"], length - 1)
        buffer = _write_tokens(state["decoder_input_tokens"], index, tokens)
        logits = forward(buffer, state.get("decoder_causal_attention"))
        return _at_positions(logits, index), {**state, "decoder_input_tokens": buffer,
                                              "index": state["index"] + 1}

      logits = forward(prompt, bidirectional)
      state = {"decoder_input_tokens": prompt, "index": prompt_lengths}
      if bidirectional is not None:
        state["decoder_causal_attention"] = bidirectional
    first_logits = _at_positions(logits, last_prompt_position)
    return first_logits, state, step_fn, max_length, limits

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
