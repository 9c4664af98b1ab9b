"""The model API: what the trainer and the evaluators see of a model.

`Model` declares the contract (vocabularies, feature converter, parameter init,
loss, scores, decoding) and implements everything that does not depend on the
architecture. A family (encoder_decoder.EncoderDecoderModel,
decoder_only.DecoderOnlyModel) supplies only the network calls: `_logits` for
teacher forcing and `_decoding_setup` for instruct_jax.models.decoding.

Loss normalisation is explicit: `loss_weights(batch)` resolves the model's
loss_normalizing_factor into per-token weights (`LossWeights`) with the factor
folded in, and `loss_fn` is a plain weighted sum of token losses under them.
Because of that the trainer can compute the weights once on the full batch and
slice them with the batch: microbatch losses and gradients then add up exactly
to the full-batch ones whatever the normalisation mode.

Metrics are float32 SUMS over the batch (microbatches and shards just add):
  loss            the returned loss (includes z-loss; normalised when the
                  weights carry a loss normalising factor)
  z_loss          the z-loss part of `loss`
  cross_ent_loss  loss - z_loss
  correct_tokens  argmax hits on weighted target tokens
  num_tokens      weighted target tokens
  num_examples    sequences with at least one weighted token (packed segments
                  count separately)
"""

import abc
from collections.abc import Mapping
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import seqio

from instruct_jax.models import decoding
from instruct_jax.models import losses

Array = jax.Array
Batch = Mapping[str, Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Per-token loss weights for one batch, sliceable along the batch like the batch.

  weights: float32 [B, L]; the loss is sum(token_loss * weights), so any loss
    normalisation is already folded in (weights / factor).
  token_counts: float32 [B, L]; 1 where a target token is weighted at all, for
    the token and example metrics, which never depend on the normalisation.
  """
  weights: Array
  token_counts: Array


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


def _loss_metrics(logits: Array, batch: Batch, token_counts: Array, loss: Array,
                  z_loss: Array) -> dict[str, Array]:
  """The summed metrics every loss_fn reports (see the module docstring)."""
  targets = batch["decoder_target_tokens"]
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


class Model(abc.ABC):
  """A trainable, scorable, decodable model over seqio features.

  Subclasses implement the abstract members; `loss_fn`, `score_batch` and
  `predict_batch` are shared and should not need overriding (a different
  objective overrides only `_token_losses`, as distillation does).
  """

  def __init__(self, module: nn.Module, z_loss: float = 1e-4, label_smoothing: float = 0.0,
               loss_normalizing_factor: Any = None):
    self.module = module
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    # See losses.loss_normalizing_factor_and_weights for the accepted values.
    self.loss_normalizing_factor = loss_normalizing_factor

  # ---- the contract each family implements ----------------------------------------

  @property
  @abc.abstractmethod
  def input_vocabulary(self) -> seqio.Vocabulary:
    """Vocabulary of the task's "inputs" feature."""

  @property
  @abc.abstractmethod
  def output_vocabulary(self) -> seqio.Vocabulary:
    """Vocabulary of "targets"; predictions decode with it."""

  @abc.abstractmethod
  def feature_converter(self, pack: bool) -> seqio.FeatureConverter:
    """The converter from task features to this model's batch features."""

  @abc.abstractmethod
  def init_params(self, rng: Array, input_shapes: Mapping[str, tuple]) -> Any:
    """LogicallyPartitioned-boxed params (wrap in jax.eval_shape for an abstract tree)."""

  @abc.abstractmethod
  def _logits(self, params: Any, batch: Batch, dropout_rng: Optional[Array]) -> Array:
    """Teacher-forced float32 logits [B, L, V] for the decoder targets."""

  @abc.abstractmethod
  def _decoding_setup(self, params: Any, batch: Batch,
                      cfg: decoding.DecodeConfig) -> decoding.DecodingSetup:
    """The initial distribution, state, context and step of instruct_jax.models.decoding."""

  # ---- loss -----------------------------------------------------------------------

  def loss_weights(self, batch: Batch, normalize: bool = True) -> LossWeights:
    """The batch's per-token loss weights under this model's loss_normalizing_factor.

    normalize=False gives the raw weights (a summed loss), as evaluation reports.
    Slices of the result along the batch weigh slices of the batch consistently,
    so summing their losses gives the loss of the whole batch.
    """
    factor, weights = losses.loss_normalizing_factor_and_weights(
        self.loss_normalizing_factor if normalize else None, batch)
    raw = batch.get("decoder_loss_weights")
    token_counts = (batch["decoder_target_tokens"] > 0) if raw is None else (raw > 0)
    if factor is not None:
      weights = weights / factor
    return LossWeights(weights=weights, token_counts=jnp.asarray(token_counts, jnp.float32))

  def loss_fn(self, params: Any, batch: Batch, dropout_rng: Optional[Array],
              weights: Optional[LossWeights] = None) -> tuple[Array, dict[str, Array]]:
    """Teacher-forced loss and summed metrics; dropout_rng None => no dropout.

    weights None means `self.loss_weights(batch)`; the trainer passes slices of
    the full batch's weights instead so that microbatches normalise as one batch.
    """
    if weights is None:
      weights = self.loss_weights(batch)
    logits = self._logits(params, batch, dropout_rng)
    loss, z_loss = self._token_losses(logits, batch, weights.weights)
    return loss, _loss_metrics(logits, batch, weights.token_counts, loss, z_loss)

  def _token_losses(self, logits: Array, batch: Batch, weights: Array) -> tuple[Array, Array]:
    """(loss, z_loss): weighted sums of the per-token objective, z-loss included in loss."""
    loss, z_loss, _ = losses.weighted_cross_entropy(
        logits, batch["decoder_target_tokens"], weights,
        label_smoothing=self.label_smoothing, z_loss=self.z_loss)
    return loss, z_loss

  # ---- scores and decoding --------------------------------------------------------

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
    cfg = (decode_cfg or decoding.DecodeConfig()).for_vocabulary(self.output_vocabulary)
    setup = self._decoding_setup(params, batch, cfg)
    return decoding.decode(setup.first_logits, setup.state, setup.step_fn,
                           max_length=setup.max_length, cfg=cfg, limits=setup.limits, rng=rng,
                           context=setup.context)

  @staticmethod
  def _rngs(dropout_rng: Optional[Array]) -> dict[str, Array]:
    return {} if dropout_rng is None else {"dropout": dropout_rng}


# ---- helpers shared by the implementations ---------------------------------------------


def dummy_batch(input_shapes: Mapping[str, tuple], keys: tuple[str, ...]) -> dict[str, Array]:
  """All-ones int32 features of the given shapes, for tracing `module.init`."""
  missing = [k for k in keys if k not in input_shapes and not k.endswith(("_ids", "_positions"))]
  if missing:
    raise ValueError(f"input_shapes lacks {missing}; got keys {sorted(input_shapes)}. Pass the "
                     "feature converter's model feature shapes.")
  return {k: jnp.ones(tuple(input_shapes[k]), jnp.int32) for k in keys if k in input_shapes}


def clip_cache_index(cache: Any, last: int) -> Any:
  """Keeps every cache write inside the cache.

  A row that has finished (EOS or length limit) is still stepped along with the
  others; clipping its index makes it overwrite its own last slot instead of
  indexing past the end. Its outputs are ignored.
  """
  def clip(path, leaf):
    name = getattr(path[-1], "key", None)
    return jnp.minimum(leaf, last) if name == "cache_index" else leaf
  return jax.tree_util.tree_map_with_path(clip, cache)


def write_tokens(buffer: Array, index: Array, tokens: Array) -> Array:
  """buffer[row, index[row]] = tokens[row] for every row (cache-free decoding)."""
  column = jnp.arange(buffer.shape[1], dtype=jnp.int32)[None, :] == index[:, None]
  return jnp.where(column, tokens[:, None], buffer)


def at_positions(logits: Array, index: Array) -> Array:
  """logits[row, index[row]] -> [batch, vocab]."""
  return jnp.take_along_axis(logits, index[:, None, None], axis=1)[:, 0]


def zeros_like_shapes(tree: Any) -> Any:
  """Zero arrays for a tree of ShapeDtypeStructs (an empty KV cache)."""
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
