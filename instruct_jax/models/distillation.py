"""Distillation from a teacher's sparse per-token distributions (CoT specialization).

Two objectives, chosen by `objective` (a gin binding in the experiment files):

* "distribution_matching": per target position, KL(teacher || student) against
  the teacher's top-k tokens and probabilities (features "teacher_indices" and
  "teacher_probs", [B, L, k]); the mass outside the top-k is not renormalised.
  Positions whose teacher row is a one-hot on the target (answer-only formats,
  tokens that did not align 1:1, EOS) reduce exactly to the NLL, so the
  per-example switch between KL and NLL is carried by the data itself
  (tasks_registry/cot.py decides per format).
* "sample_matching": plain NLL of the teacher's text (the targets), i.e. the
  ordinary EncoderDecoderModel loss; the teacher features are ignored.

Metrics keep the trainer's contract (float32 sums): "cross_ent_loss" is the KL
part under distribution matching (equal to cross-entropy where the teacher is
one-hot). Label smoothing does not apply to the KL. Only encoder-decoder
students are supported (the recipe's T5 / Flan-T5 students).

Packing: sparse [L, k] teacher rows cannot go through seqio's packing ops, so
distribution matching needs PACKING = False; sample matching may pack (the
teacher features are then dropped by seqio's plain converter).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import seqio
import tensorflow as tf

from instruct_jax.errors import UsageError
from instruct_jax.models import encoder_decoder
from instruct_jax.models import losses

TEACHER_INDICES = "teacher_indices"
TEACHER_PROBS = "teacher_probs"
DISTRIBUTION_MATCHING = "distribution_matching"
SAMPLE_MATCHING = "sample_matching"
OBJECTIVES = (DISTRIBUTION_MATCHING, SAMPLE_MATCHING)

_SPARSE_SPECS = {
    TEACHER_INDICES: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=2),
    TEACHER_PROBS: seqio.FeatureConverter.FeatureSpec(dtype=tf.float32, rank=2),
}


class DistillationFeatureConverter(seqio.EncDecFeatureConverter):
  """EncDecFeatureConverter that also pads and passes teacher_indices / teacher_probs.

  The teacher rows follow the 'targets' length; callers give the usual
  {"inputs": ..., "targets": ...} task feature lengths. No packing. Datasets
  without teacher features (evaluation tasks) convert like EncDecFeatureConverter,
  so the same model evaluates on ordinary tasks.
  """

  TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES, **_SPARSE_SPECS}
  MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES, **_SPARSE_SPECS}

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise UsageError(
          "Distribution-matching distillation cannot pack examples: the sparse teacher "
          "features [length, k] do not go through seqio's packing. Set PACKING = False "
          "(--gin.PACKING=False); gin_configs/experiments/cot/*.gin already do.")
    super().__init__(pack=False, **kwargs)

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
               ) -> tf.data.Dataset:
    if not all(name in ds.element_spec for name in _SPARSE_SPECS):
      # Tasks without a teacher (e.g. evaluation sets) convert as plain seq2seq data.
      return seqio.EncDecFeatureConverter(pack=False)(ds, task_feature_lengths)
    return super().__call__(ds, self._with_teacher_lengths(task_feature_lengths))

  @staticmethod
  def _with_teacher_lengths(task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    lengths = dict(task_feature_lengths)
    if "targets" not in lengths:
      raise ValueError(f"task_feature_lengths {lengths} lacks 'targets'; the teacher rows "
                       "take the targets length.")
    for name in _SPARSE_SPECS:
      lengths.setdefault(name, lengths["targets"])
    return lengths

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    converted = dict(super()._convert_example(features))
    for name in _SPARSE_SPECS:
      converted[name] = features[name]
    return converted

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = self._with_teacher_lengths(task_feature_lengths)
    model_lengths = dict(super().get_model_feature_lengths(lengths))
    for name in _SPARSE_SPECS:
      model_lengths[name] = lengths[name]
    return model_lengths


class DistillationModel(encoder_decoder.EncoderDecoderModel):
  """An EncoderDecoderModel whose loss can match a teacher's sparse distributions.

  Only the per-token objective differs (`_token_losses`); loss weights,
  normalisation and metrics are the model API's, so both report alike.
  """

  FEATURE_CONVERTER_CLS = DistillationFeatureConverter

  def __init__(self, module: nn.Module, input_vocabulary: seqio.Vocabulary,
               output_vocabulary: seqio.Vocabulary,
               objective: str = DISTRIBUTION_MATCHING, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, loss_normalizing_factor: Any = None):
    super().__init__(module, input_vocabulary, output_vocabulary, z_loss=z_loss,
                     label_smoothing=label_smoothing,
                     loss_normalizing_factor=loss_normalizing_factor)
    if objective not in OBJECTIVES:
      raise UsageError(f"Unknown distillation objective {objective!r}; expected one of "
                       f"{', '.join(OBJECTIVES)}.")
    self.objective = objective

  def feature_converter(self, pack: bool) -> seqio.FeatureConverter:
    if self.objective == SAMPLE_MATCHING and pack:
      return seqio.EncDecFeatureConverter(pack=True)
    return DistillationFeatureConverter(pack=pack)

  def init_params(self, rng: jax.Array, input_shapes: Mapping[str, tuple]) -> Any:
    shapes = {k: v for k, v in input_shapes.items() if k not in _SPARSE_SPECS}
    return super().init_params(rng, shapes)

  def _token_losses(self, logits: jax.Array, batch: Mapping[str, jax.Array],
                    weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """KL(teacher || student) + z-loss under distribution matching, else the NLL loss."""
    if self.objective == SAMPLE_MATCHING:
      return super()._token_losses(logits, batch, weights)
    if TEACHER_INDICES not in batch or TEACHER_PROBS not in batch:
      raise ValueError(
          "Distribution matching needs batch features 'teacher_indices' and 'teacher_probs' "
          f"[batch, length, k]; got {sorted(batch)}. Train on teacher tasks "
          "(tasks_registry.cot.register_teacher_tasks) with model.feature_converter(False), "
          "or use objective='sample_matching'.")
    kl, _ = losses.distillation_kl(logits, batch[TEACHER_INDICES], batch[TEACHER_PROBS],
                                   weights)
    log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    z_loss = self.z_loss * jnp.sum(jnp.square(log_z) * weights)
    return kl + z_loss, z_loss
