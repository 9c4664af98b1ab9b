"""Tests for instruct_jax.models.losses, with values checked by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax.models import losses


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# --- weighted_cross_entropy -------------------------------------------------


def test_plain_cross_entropy_matches_negative_log_likelihood():
  logits = jnp.array([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]])
  targets = jnp.array([[1, 0]])
  total, z, weight_sum = losses.weighted_cross_entropy(logits, targets)
  lsm = _log_softmax(logits)
  expected = -(lsm[0, 0, 1] + lsm[0, 1, 0])
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert float(z) == 0.0
  assert float(weight_sum) == 2.0


def test_z_loss_is_coefficient_times_squared_log_partition():
  # Uniform logits of value 0 over V=4: log Z = log 4 and CE = log 4.
  logits = jnp.zeros((1, 1, 4))
  targets = jnp.array([[2]])
  total, z, _ = losses.weighted_cross_entropy(logits, targets, z_loss=0.1)
  np.testing.assert_allclose(z, 0.1 * math.log(4) ** 2, rtol=1e-6)
  np.testing.assert_allclose(total, math.log(4) + 0.1 * math.log(4) ** 2,
                             rtol=1e-6)


def test_label_smoothing_hand_checked_value():
  # V=3, ls=0.3: soft target (0.15, 0.7, 0.15) for target 1.
  logits = jnp.array([[[0.0, math.log(2.0), 0.0]]])  # softmax = (.25,.5,.25)
  targets = jnp.array([[1]])
  total, _, _ = losses.weighted_cross_entropy(
      logits, targets, label_smoothing=0.3)
  cross_entropy = -(0.15 * math.log(0.25) * 2 + 0.7 * math.log(0.5))
  entropy = -(0.15 * math.log(0.15) * 2 + 0.7 * math.log(0.7))
  np.testing.assert_allclose(total, cross_entropy - entropy, rtol=1e-5)


def test_label_smoothing_perfect_prediction_scores_zero():
  # Logits whose softmax equals the smoothed target exactly.
  soft = np.array([0.1 / 4] * 5)
  soft[3] = 0.9
  logits = jnp.asarray(np.log(soft), jnp.float32)[None, None]
  total, _, _ = losses.weighted_cross_entropy(
      logits, jnp.array([[3]]), label_smoothing=0.1)
  np.testing.assert_allclose(total, 0.0, atol=1e-6)


def test_weights_and_constant_factor():
  logits = jnp.array([[[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
  targets = jnp.array([[0, 0, 1]])
  weights = jnp.array([[1.0, 0.0, 1.0]])
  total, z, weight_sum = losses.weighted_cross_entropy(
      logits, targets, weights, z_loss=1e-2, loss_normalizing_factor=4.0)
  lsm = _log_softmax(logits)
  log_z = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
  z_expected = 1e-2 * (log_z[0, 0] ** 2 + log_z[0, 2] ** 2) / 4.0
  ce_expected = -(lsm[0, 0, 0] + lsm[0, 2, 1]) / 4.0
  np.testing.assert_allclose(z, z_expected, rtol=1e-5)
  np.testing.assert_allclose(total, ce_expected + z_expected, rtol=1e-5)
  assert float(weight_sum) == 2.0


def test_string_factor_is_rejected_with_a_hint():
  with pytest.raises(TypeError, match="loss_normalizing_factor_and_weights"):
    losses.weighted_cross_entropy(
        jnp.zeros((1, 1, 2)), jnp.array([[0]]),
        loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")


def test_gradients_are_finite():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 3, 7)) * 30, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 7, size=(2, 3)))
  weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

  def f(x):
    return losses.weighted_cross_entropy(
        x, targets, weights, label_smoothing=0.1, z_loss=1e-4,
        loss_normalizing_factor=3.0)[0]

  grad = jax.grad(f)(logits)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[0, 2], 0.0)  # zero weight, zero grad


# --- loss_normalizing_factor_and_weights ------------------------------------

# Two rows, packed: row 0 holds segment 1 (3 tokens) and segment 2 (1 token),
# then padding; row 1 holds one segment of 2 tokens, then padding.
PACKED_BATCH = {
    "decoder_target_tokens": jnp.array([[5, 6, 7, 8, 0], [3, 4, 0, 0, 0]]),
    "decoder_loss_weights": jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]],
                                      jnp.float32),
    "decoder_segment_ids": jnp.array([[1, 1, 1, 2, 0], [1, 1, 0, 0, 0]]),
}


def test_factor_none_keeps_weights():
  factor, weights = losses.loss_normalizing_factor_and_weights(
      None, PACKED_BATCH)
  assert factor is None
  np.testing.assert_array_equal(weights, PACKED_BATCH["decoder_loss_weights"])


def test_factor_constant():
  factor, weights = losses.loss_normalizing_factor_and_weights(
      233472, PACKED_BATCH)
  assert factor == 233472.0
  np.testing.assert_array_equal(weights, PACKED_BATCH["decoder_loss_weights"])


def test_factor_num_real_target_tokens_case_insensitive():
  factor, _ = losses.loss_normalizing_factor_and_weights(
      "num_real_target_tokens", PACKED_BATCH)
  assert float(factor) == 6.0


def test_factor_num_total_target_tokens():
  factor, _ = losses.loss_normalizing_factor_and_weights(
      "NUM_TOTAL_TARGET_TOKENS", PACKED_BATCH)
  assert float(factor) == 10.0


def test_factor_average_per_sequence_is_segment_aware():
  factor, weights = losses.loss_normalizing_factor_and_weights(
      "AVERAGE_PER_SEQUENCE", PACKED_BATCH)
  assert float(factor) == pytest.approx(3.0)  # three packed sequences
  expected = np.array([[1 / 3, 1 / 3, 1 / 3, 1.0, 0.0],
                       [0.5, 0.5, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_factor_average_per_sequence_unpacked_uses_rows():
  batch = {k: v for k, v in PACKED_BATCH.items() if k != "decoder_segment_ids"}
  batch["decoder_loss_weights"] = jnp.array(
      [[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], jnp.float32)
  factor, weights = losses.loss_normalizing_factor_and_weights(
      "AVERAGE_PER_SEQUENCE", batch)
  assert float(factor) == pytest.approx(1.0)  # empty row adds nothing, no NaN
  np.testing.assert_allclose(weights[0], [0.25] * 4 + [0.0])
  np.testing.assert_array_equal(weights[1], 0.0)


def test_average_per_sequence_loss_is_mean_of_sequence_means():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)
  targets = PACKED_BATCH["decoder_target_tokens"]
  factor, weights = losses.loss_normalizing_factor_and_weights(
      "AVERAGE_PER_SEQUENCE", PACKED_BATCH)
  total, _, _ = losses.weighted_cross_entropy(
      logits, targets, weights, loss_normalizing_factor=factor)
  nll = -np.take_along_axis(
      _log_softmax(logits), np.asarray(targets)[..., None], -1)[..., 0]
  per_sequence = [nll[0, :3].mean(), nll[0, 3], nll[1, :2].mean()]
  np.testing.assert_allclose(total, np.mean(per_sequence), rtol=1e-5)


def test_missing_loss_weights_default_to_nonpadding():
  batch = {"decoder_target_tokens": jnp.array([[4, 2, 0]])}
  factor, weights = losses.loss_normalizing_factor_and_weights(
      "NUM_REAL_TARGET_TOKENS", batch)
  assert float(factor) == 2.0
  np.testing.assert_array_equal(weights, [[1.0, 1.0, 0.0]])


def test_unknown_factor_lists_valid_options():
  with pytest.raises(ValueError) as info:
    losses.loss_normalizing_factor_and_weights("PER_TOKEN", PACKED_BATCH)
  message = str(info.value)
  for option in ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS",
                 "AVERAGE_PER_SEQUENCE", "None"):
    assert option in message


# --- distillation_kl ----------------------------------------------------------


def test_kl_with_one_hot_teacher_equals_nll():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(2, 3, 9)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 9, size=(2, 3)))
  # Top-3 teacher with all mass on the target; the other two slots are 0.
  indices = jnp.stack([targets, (targets + 1) % 9, (targets + 2) % 9], -1)
  probs = jnp.zeros((2, 3, 3)).at[..., 0].set(1.0)
  weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  kl, weight_sum = losses.distillation_kl(logits, indices, probs, weights)
  nll, _, _ = losses.weighted_cross_entropy(logits, targets, weights)
  np.testing.assert_allclose(kl, nll, rtol=1e-6)
  assert float(weight_sum) == 5.0


def test_kl_hand_checked_top_k_without_renormalisation():
  logits = jnp.zeros((1, 1, 4))  # student q = 1/4 everywhere
  indices = jnp.array([[[0, 2]]])
  probs = jnp.array([[[0.5, 0.3]]])  # 0.2 of teacher mass not in the top-k
  kl, weight_sum = losses.distillation_kl(logits, indices, probs)
  expected = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25)
  np.testing.assert_allclose(kl, expected, rtol=1e-6)
  assert float(weight_sum) == 1.0


def test_kl_gradients_finite_with_zero_probabilities():
  logits = jnp.array([[[0.0, 1.0, -1.0]]])
  indices = jnp.array([[[1, 0]]])
  probs = jnp.array([[[1.0, 0.0]]])
  grad = jax.grad(lambda x: losses.distillation_kl(x, indices, probs)[0])(
      logits)
  assert np.all(np.isfinite(grad))
  # Same as the NLL gradient for target 1: softmax - one_hot.
  expected = np.exp(_log_softmax(logits)) - np.array([0.0, 1.0, 0.0])
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
