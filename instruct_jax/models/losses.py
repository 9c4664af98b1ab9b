"""Token losses: cross-entropy with z-loss / label smoothing; distillation KL.

The semantics follow t5x so that hyperparameters (Z_LOSS, LABEL_SMOOTHING,
LOSS_NORMALIZING_FACTOR) carry over unchanged from t5x gin files:

* z-loss adds `z_loss * log(Z)^2` per token (Z = softmax normaliser), which
  keeps the logits from drifting and is what made bf16 T5 training stable.
* Label smoothing puts `1 - ls` on the target and `ls / (V - 1)` on every other
  token, then subtracts the entropy of that soft target so a perfect model still
  reports a loss of 0 (the number stays comparable across smoothing settings).
* The loss normalising factor decides what the summed loss is divided by; it is
  computed from the batch by `loss_normalizing_factor_and_weights`.

All functions return SUMS (plus the weight sum) rather than means, so the
trainer can add microbatches and data-parallel shards before dividing.
"""

from collections.abc import Mapping
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Names accepted for `loss_normalizing_factor` besides None and numbers. These
# are the member names of t5x's SpecialLossNormalizingFactor, so t5x gin files
# that pass the string keep working.
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
NUM_TOTAL_TARGET_TOKENS = "NUM_TOTAL_TARGET_TOKENS"
AVERAGE_PER_SEQUENCE = "AVERAGE_PER_SEQUENCE"
SPECIAL_LOSS_NORMALIZING_FACTORS = (
    NUM_REAL_TARGET_TOKENS,
    NUM_TOTAL_TARGET_TOKENS,
    AVERAGE_PER_SEQUENCE,
)


def _special_factor_name(loss_normalizing_factor: Any) -> str | None:
  """Returns the canonical special-factor name, None for numbers/None."""
  if loss_normalizing_factor is None:
    return None
  # Accept enum-like objects (e.g. t5x's SpecialLossNormalizingFactor members).
  name = getattr(loss_normalizing_factor, "name", loss_normalizing_factor)
  if not isinstance(name, str):
    return None
  canonical = name.strip().upper()
  if canonical not in SPECIAL_LOSS_NORMALIZING_FACTORS:
    raise ValueError(
        f"Unknown loss_normalizing_factor {loss_normalizing_factor!r}. "
        "Expected None (sum of the per-token losses), a number (constant "
        f"divisor) or one of {', '.join(SPECIAL_LOSS_NORMALIZING_FACTORS)} "
        "(case-insensitive). Fix the LOSS_NORMALIZING_FACTOR gin binding.")
  return canonical


def _per_segment_weight_sums(
    weights: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Sum of `weights` over each token's packed segment, broadcast per token.

  Segments are identified by (row, segment id); a segment id is at most the row
  length, so `row * (L + 1) + id` is a unique, bounded index and one
  `segment_sum` covers the whole batch in O(B * L).
  """
  batch, length = segment_ids.shape
  rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
  flat_ids = (rows * (length + 1) + segment_ids.astype(jnp.int32)).reshape(-1)
  num_segments = batch * (length + 1)
  sums = jax.ops.segment_sum(
      weights.reshape(-1), flat_ids, num_segments=num_segments)
  return sums[flat_ids].reshape(batch, length)


def loss_normalizing_factor_and_weights(
    loss_normalizing_factor: Any,
    batch: Mapping[str, jax.Array],
) -> tuple[Any, jax.Array]:
  """Resolves the normalising factor and the per-token loss weights for a batch.

  Args:
    loss_normalizing_factor: None (the loss is a plain sum), a number (constant
      divisor, t5x's usual choice for fine-tuning), or one of the strings
      "NUM_REAL_TARGET_TOKENS" (divide by the number of weighted tokens),
      "NUM_TOTAL_TARGET_TOKENS" (divide by B * L) or "AVERAGE_PER_SEQUENCE"
      (every sequence contributes its mean token loss; packed segments count as
      separate sequences). Strings are case-insensitive.
    batch: model features; needs "decoder_target_tokens" [B, L] and uses
      "decoder_loss_weights" [B, L] (defaults to targets > 0) and, for
      AVERAGE_PER_SEQUENCE, "decoder_segment_ids" when the batch is packed.

  Returns:
    (factor, weights): factor is None, a Python float or a float32 scalar;
    weights is a float32 [B, L] array to pass to `weighted_cross_entropy`.
  """
  targets = batch["decoder_target_tokens"]
  weights = batch.get("decoder_loss_weights")
  if weights is None:
    weights = targets > 0
  weights = jnp.asarray(weights, jnp.float32)

  name = _special_factor_name(loss_normalizing_factor)
  if loss_normalizing_factor is None:
    return None, weights
  if name is None:
    if isinstance(loss_normalizing_factor, (jax.Array, np.ndarray)):
      return jnp.asarray(loss_normalizing_factor, jnp.float32), weights
    try:
      return float(loss_normalizing_factor), weights
    except (TypeError, ValueError) as e:
      raise ValueError(
          "loss_normalizing_factor must be None, a number or one of "
          f"{', '.join(SPECIAL_LOSS_NORMALIZING_FACTORS)}; got "
          f"{loss_normalizing_factor!r} of type "
          f"{type(loss_normalizing_factor).__name__}.") from e
  if name == NUM_REAL_TARGET_TOKENS:
    return jnp.sum(weights), weights
  if name == NUM_TOTAL_TARGET_TOKENS:
    return float(math.prod(targets.shape)), weights

  # AVERAGE_PER_SEQUENCE: scale each sequence's weights to sum to 1, so the
  # summed loss is a sum of per-sequence means and the factor is the number of
  # sequences that have at least one weighted token.
  segment_ids = batch.get("decoder_segment_ids")
  if segment_ids is not None:
    per_token_total = _per_segment_weight_sums(weights, segment_ids)
  else:
    per_token_total = jnp.sum(weights, axis=-1, keepdims=True)
  safe_total = jnp.where(per_token_total > 0, per_token_total, 1.0)
  weights = jnp.where(per_token_total > 0, weights / safe_total, 0.0)
  return jnp.sum(weights), weights


def weighted_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Summed token cross-entropy with optional z-loss and label smoothing.

  Args:
    logits: float [B, L, V] unnormalised scores (computed in float32 upstream).
    targets: int [B, L] target token ids.
    weights: optional float [B, L] per-token weights (0 for padding).
    label_smoothing: t5x-style smoothing; the soft target's entropy is
      subtracted so a perfect prediction scores 0.
    z_loss: coefficient of the `log(Z)^2` auxiliary loss.
    loss_normalizing_factor: None or a numeric divisor (number or scalar
      array), usually the factor from `loss_normalizing_factor_and_weights`.

  Returns:
    (total_loss, total_z_loss, weight_sum): total_loss includes the z-loss;
    both are weighted sums divided by the factor when it is not None.
    weight_sum is sum(weights), or B * L when weights is None.
  """
  if isinstance(loss_normalizing_factor, str):
    raise TypeError(
        f"weighted_cross_entropy got loss_normalizing_factor="
        f"{loss_normalizing_factor!r}, expected None or a number. Resolve "
        "special factors first with loss_normalizing_factor_and_weights("
        "factor, batch) and pass the returned factor and weights.")
  if logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape:
    raise ValueError(
        f"logits shape {logits.shape} does not match targets shape "
        f"{targets.shape}; expected logits [..., V] with targets [...].")

  logits = logits.astype(jnp.float32)
  vocab_size = logits.shape[-1]
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low_confidence = label_smoothing / (vocab_size - 1)
    # Entropy of the soft target: the best achievable cross-entropy.
    normalizing_constant = -(
        confidence * math.log(confidence) +
        (vocab_size - 1) * low_confidence * math.log(low_confidence + 1e-20))
    soft_targets = (
        jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32) *
        (confidence - low_confidence) + low_confidence)
    loss = optax.softmax_cross_entropy(logits, soft_targets)
    loss = loss - normalizing_constant
  else:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)

  log_z = jax.nn.logsumexp(logits, axis=-1)
  token_z_loss = z_loss * jnp.square(log_z)
  loss = loss + token_z_loss

  if weights is None:
    weight_sum = jnp.asarray(math.prod(targets.shape), jnp.float32)
  else:
    weights = jnp.asarray(weights, jnp.float32)
    loss = loss * weights
    token_z_loss = token_z_loss * weights
    weight_sum = jnp.sum(weights)

  total_loss = jnp.sum(loss)
  total_z_loss = jnp.sum(token_z_loss)
  if loss_normalizing_factor is not None:
    total_loss = total_loss / loss_normalizing_factor
    total_z_loss = total_z_loss / loss_normalizing_factor
  return total_loss, total_z_loss, weight_sum


def distillation_kl(
    student_logits: jax.Array,
    teacher_indices: jax.Array,
    teacher_probs: jax.Array,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Summed KL(teacher || student) against a top-k teacher distribution.

  The teacher is given sparsely as its top-k tokens and their probabilities.
  The mass outside the top-k is NOT renormalised away: each position
  contributes sum_k p_k * (log p_k - log q(i_k)), so a one-hot teacher reduces
  this to the student's negative log-likelihood. Entries with p_k == 0 (e.g.
  padding of k) contribute exactly 0, with finite gradients.

  Args:
    student_logits: float [B, L, V] student logits.
    teacher_indices: int [B, L, K] teacher token ids.
    teacher_probs: float [B, L, K] teacher probabilities (not differentiated).
    weights: optional float [B, L] per-position weights.

  Returns:
    (total, weight_sum): weighted sum of per-position KL and sum of weights
    (B * L when weights is None).
  """
  if teacher_indices.shape != teacher_probs.shape:
    raise ValueError(
        f"teacher_indices shape {teacher_indices.shape} != teacher_probs shape "
        f"{teacher_probs.shape}; both must be [B, L, K].")
  if teacher_indices.shape[:-1] != student_logits.shape[:-1]:
    raise ValueError(
        f"teacher shape {teacher_indices.shape} does not match student logits "
        f"{student_logits.shape}; expected [B, L, K] against [B, L, V].")

  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  log_q_top = jnp.take_along_axis(log_q, teacher_indices, axis=-1)
  p = jax.lax.stop_gradient(jnp.asarray(teacher_probs, jnp.float32))
  positive = p > 0
  # Double-where keeps log(0) out of both the value and its gradient.
  log_p = jnp.log(jnp.where(positive, p, 1.0))
  per_entry = jnp.where(positive, p * (log_p - log_q_top), 0.0)
  per_position = jnp.sum(per_entry, axis=-1)

  if weights is None:
    weight_sum = jnp.asarray(math.prod(per_position.shape), jnp.float32)
  else:
    weights = jnp.asarray(weights, jnp.float32)
    per_position = per_position * weights
    weight_sum = jnp.sum(weights)
  return jnp.sum(per_position), weight_sum
