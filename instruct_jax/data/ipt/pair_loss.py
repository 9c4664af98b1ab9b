"""Per-token loss weights for decoder-only training: loss on the pairs, never on the context.

seqio's LM converters weight every target token (LMFeatureConverter) or the
whole `targets` half after an `inputs` prefix (PrefixLMFeatureConverter). A
synthesizer-tuning sequence is several (context, pairs) examples back to back
that must see each other, so the zero-weight spans sit in the middle of one
sequence. Tasks carry a `targets_roles` feature, one id per target token:
ROLE_CONTEXT (no loss) or ROLE_PAIR (loss). The ids are non-zero because seqio's
packing takes a feature's length from its non-zero entries (0 is padding), so a
plain 0 / 1 weight feature would be cut short. `PairLossFeatureConverter` packs
and pads the roles with the targets and turns them into `decoder_loss_weights`.
Tasks without the feature convert exactly as seqio.DecoderFeatureConverter
does, so eval tasks mix freely.

`PairLossDecoderOnlyModel` is DecoderOnlyModel with this converter (set MODEL to
it in gin, see gin_configs/experiments/ipt/tune_synthesizer.gin).
"""
from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from instruct_jax.models import decoder_only

ROLES = "targets_roles"
ROLE_CONTEXT = 1
ROLE_PAIR = 2


class PairLossFeatureConverter(seqio.LMFeatureConverter):
  """LMFeatureConverter whose decoder_loss_weights come from the task's `targets_roles`."""

  TASK_FEATURES = {
      "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      ROLES: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if ROLES not in ds.element_spec:
      return seqio.DecoderFeatureConverter(pack=self.pack, bos_id=self.bos_id)(
          ds, task_feature_lengths)
    lengths = {**task_feature_lengths, ROLES: task_feature_lengths["targets"]}
    return super().__call__(ds, lengths)

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    converted = dict(super()._convert_example(features))
    is_pair = tf.cast(tf.equal(features[ROLES], ROLE_PAIR), tf.int32)
    converted["decoder_loss_weights"] = converted["decoder_loss_weights"] * is_pair
    return converted


class PairLossDecoderOnlyModel(decoder_only.DecoderOnlyModel):
  """A decoder-only LM trained with per-token loss weights from the task."""

  FEATURE_CONVERTER_CLS = PairLossFeatureConverter
