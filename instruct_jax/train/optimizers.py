"""Optimizers and learning-rate schedules, built from optax.

`create` picks one by name: the run gins' OPTIMIZER macro ('adafactor' | 'adamw'),
stepping with `learning_rate_schedule` scaled by their LEARNING_RATE macro.

`adafactor` reproduces t5x's Adafactor update rule (the one every released T5 /
Flan-T5 checkpoint was trained with) as a chain of optax transformations (the
two marked * are this module's versions of optax's, the same rule in fewer
passes over the big arrays on XLA:CPU):

  t5x hyperparameter        optax piece
  ------------------------  -----------------------------------------------
  decay_rate (0.8),         scale_by_factored_rms*(decay_rate, step_offset):
    step_offset               beta2_t = 1 - (t - step_offset + 1)^-0.8,
                              t = number of updates already applied
  epsilon1 (1e-30)          scale_by_factored_rms(epsilon=...), added to g^2
  factored,                 scale_by_factored_rms: row/col statistics over
    min_dim_size_to_factor    the two largest dims when both are >= 128
  clipping_threshold (1.0)  clip_by_block_rms: u / max(1, RMS(u) / threshold)
  learning_rate             scale_by_learning_rate (schedule or float)
  multiply_by_parameter_    scale_by_param_rms*(min_scale=epsilon2):
    scale, epsilon2 (1e-3)    step *= max(RMS(param), epsilon2)
  momentum (None = off)     ema(momentum, debias=False)  (t5x's beta1)
  weight_decay_rate         add_decayed_weights: param * (1 - rate), not
                              multiplied by the learning rate (as in t5x)

The chain has the same order as `optax.adafactor`, so the optimizer state has
the same tree as optax.adafactor's for the same options: a tuple whose first
entry is an `optax.FactoredState` with fields `v_row`, `v_col`, `v` (and
`count`). Those are t5x's Adafactor state names and shapes, which lets
checkpoint conversion carry them over leaf by leaf; `factored_state(opt_state)`
finds them without relying on the tuple position.
"""

from collections.abc import Callable, Mapping
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from instruct_jax.errors import UsageError
from instruct_jax.models.networks import stack

SCHEDULE_NAMES = ("constant", "rsqrt_decay", "linear", "cosine")


def _second_moment_decay(step: Any, exponent: Any) -> Any:
  """t5x's beta2 schedule 1 - (step + 1)^-exponent, step already offset.

  Steps before `step_offset` are clamped to 0 (beta2 = 0: the statistics are
  just the latest squared gradient). Unclamped, as in t5x and optax's default,
  those steps raise a non-positive base to a negative power: inf or NaN.
  """
  t = jnp.maximum(jnp.asarray(step, jnp.float32), 0.0) + 1.0
  return 1.0 - t ** (-exponent)


def adafactor(
    learning_rate: optax.ScalarOrSchedule,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    min_dim_size_to_factor: int = 128,
    epsilon1: float = 1e-30,
    epsilon2: float = 1e-3,
    factored: bool = True,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
) -> optax.GradientTransformation:
  """Adafactor with t5x semantics (see the module docstring for the mapping).

  Args:
    learning_rate: float or optax schedule (a function of the update count).
    decay_rate: exponent of the second-moment decay 1 - (t + 1)^-decay_rate.
    step_offset: subtracted from the step before computing the decay; set it
      to the pretraining step count when fine-tuning restarts the statistics.
    multiply_by_parameter_scale: scale the step by max(RMS(param), epsilon2),
      making the learning rate relative to each parameter's size.
    clipping_threshold: cap on the RMS of each parameter's normalised update;
      None disables clipping.
    min_dim_size_to_factor: factor the second moment only when the two largest
      dims are both at least this size.
    epsilon1: added to squared gradients.
    epsilon2: floor of the parameter scale.
    factored: False keeps a full second moment for every parameter.
    momentum: t5x's beta1; None (default) keeps no first moment at all.
    weight_decay_rate: decoupled decay applied as param * (1 - rate).

  Returns:
    An optax GradientTransformation; its state is structured exactly like
    `optax.adafactor`'s (a tuple led by the FactoredState).
  """
  if clipping_threshold is not None and not clipping_threshold > 0:
    raise ValueError(
        f"clipping_threshold must be positive or None, got "
        f"{clipping_threshold}. t5x uses 1.0; pass None to disable update "
        "clipping.")
  if momentum is not None and not 0.0 <= momentum < 1.0:
    raise ValueError(
        f"momentum must be None or in [0, 1), got {momentum}. It is t5x's "
        "beta1; leave it None for the memory-light default.")

  chain = [
      scale_by_factored_rms(
          factored=factored,
          decay_rate=decay_rate,
          step_offset=step_offset,
          min_dim_size_to_factor=min_dim_size_to_factor,
          epsilon=epsilon1),
  ]
  if clipping_threshold is not None:
    chain.append(per_layer(optax.clip_by_block_rms(clipping_threshold)))
  chain.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    chain.append(per_layer(scale_by_param_rms(min_scale=epsilon2)))
  if momentum is not None:
    chain.append(optax.ema(
        momentum, debias=False, accumulator_dtype=jnp.float32))
  if weight_decay_rate is not None:
    chain.append(optax.add_decayed_weights(weight_decay_rate))
  # Gradient descent: step against the normalised gradient.
  chain.append(optax.scale(-1.0))
  return optax.chain(*chain)


def _mean(x: jax.Array, axis: int) -> jax.Array:
  """jnp.mean(x, axis), as a matmul with a ones vector unless `axis` is the last one.

  XLA:CPU reduces over a leading axis (the column means of a [512, 32128]
  kernel) tens of times slower than over the last one; a matmul gives the same
  mean, up to float32 rounding of the summation order, at matmul speed.
  """
  if axis == x.ndim - 1:
    return jnp.mean(x, axis=axis)
  rows, size = math.prod(x.shape[:axis]), x.shape[axis]
  blocks = x.reshape(rows, size, -1)
  ones = jnp.ones((rows, 1, size), x.dtype)
  sums = jax.lax.dot_general(ones, blocks, (((2,), (1,)), ((0,), (0,))))
  return (sums / size).reshape(x.shape[:axis] + x.shape[axis + 1:])


def scale_by_factored_rms(factored: bool, decay_rate: float, step_offset: int,
                          min_dim_size_to_factor: int,
                          epsilon: float) -> optax.GradientTransformation:
  """optax.scale_by_factored_rms with t5x's decay, its means computed by `_mean`.

  Same rule and same state (optax's own init builds it, so checkpoints and
  optax.adafactor states stay interchangeable): a matrix whose two largest
  dims are both >= min_dim_size_to_factor keeps the means of g^2 + epsilon
  over each of them (v_row, v_col) and is scaled by their rank-1 estimate of
  1/sqrt(E[g^2]); any other array keeps the full E[g^2] (v).
  """
  reference = optax.scale_by_factored_rms(
      factored=factored, decay_rate=decay_rate, step_offset=step_offset,
      min_dim_size_to_factor=min_dim_size_to_factor, epsilon=epsilon,
      decay_rate_fn=_second_moment_decay)

  def update_fn(updates, state, params=None):
    del params
    beta2 = _second_moment_decay(state.count - step_offset, decay_rate)

    def one_array(grad, v_row, v_col, v):
      grad_sqr = jnp.square(grad) + epsilon
      dims = _factored_dims(grad.shape, factored, min_dim_size_to_factor)
      if dims is None:
        v = (beta2 * v + (1.0 - beta2) * grad_sqr).astype(v.dtype)
        return grad * v ** -0.5, v_row, v_col, v
      second, largest = dims
      v_row = (beta2 * v_row + (1.0 - beta2) * _mean(grad_sqr, largest)).astype(v_row.dtype)
      v_col = (beta2 * v_col + (1.0 - beta2) * _mean(grad_sqr, second)).astype(v_col.dtype)
      row_axis = second - 1 if second > largest else second  # `second` within v_row
      row_factor = (v_row / jnp.mean(v_row, axis=row_axis, keepdims=True)) ** -0.5
      update = (grad * jnp.expand_dims(row_factor, largest)
                * jnp.expand_dims(v_col ** -0.5, second))
      return update, v_row, v_col, v

    treedef = jax.tree.structure(updates)
    results = [one_array(*leaves) for leaves in zip(
        treedef.flatten_up_to(updates), treedef.flatten_up_to(state.v_row),
        treedef.flatten_up_to(state.v_col), treedef.flatten_up_to(state.v))]
    new_updates, v_row, v_col, v = (treedef.unflatten(column) for column in zip(*results))
    return new_updates, optax.FactoredState(
        count=optax.safe_increment(state.count), v_row=v_row, v_col=v_col, v=v)

  return optax.GradientTransformation(reference.init, update_fn)


def _factored_dims(shape: tuple, factored: bool, min_dim_size_to_factor: int):
  """(second largest, largest) axis of `shape` when both are large enough to factor, else None.

  The same choice as optax.scale_by_factored_rms (ties: argsort order).
  """
  if not factored or len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


def scale_by_param_rms(min_scale: float) -> optax.GradientTransformation:
  """Updates times max(RMS(param), min_scale): optax.scale_by_param_block_rms's value.

  optax computes the RMS twice around a masking pass that only keeps its
  gradient finite at 0; nothing differentiates through an optimizer step, so
  one pass over the parameter gives the same number.
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_param_rms needs the params: pass them to update().")
    return jax.tree.map(
        lambda u, p: u * jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(p))), min_scale),
        updates, params), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _in_layer_stack(path: tuple) -> bool:
  """Whether a leaf sits in a scanned layer stack (its leading axis is the layer)."""
  return any(getattr(key, "key", None) == stack.SCANNED_NAME for key in path)


def per_layer(transform: optax.GradientTransformation) -> optax.GradientTransformation:
  """A stateless per-array `transform` applied to each layer of a scanned stack alone.

  Scanned models hold a layer's parameters as one array with a leading layer
  axis (models/networks/stack.py). Steps that take one RMS per array (update
  clipping, parameter scale) would otherwise pool every layer, and a scanned
  run would step differently from the unrolled one with the same weights.
  Leaves outside a stack are passed to `transform` unchanged.
  """

  def update_fn(updates, state, params=None):
    def one_array(path, update, param=None):
      def apply(u, p):
        return transform.update(u, state, p)[0]
      if _in_layer_stack(path):
        return jax.vmap(apply)(update, param) if param is not None else jax.vmap(
            lambda u: apply(u, None))(update)
      return apply(update, param)

    if params is None:
      return jax.tree_util.tree_map_with_path(one_array, updates), state
    return jax.tree_util.tree_map_with_path(one_array, updates, params), state

  return optax.GradientTransformation(transform.init, update_fn)


def factored_state(opt_state: Any) -> optax.FactoredState:
  """The Adafactor second-moment statistics (v_row / v_col / v) in opt_state.

  Works for any optax state that contains exactly one FactoredState (e.g.
  wrapped by MultiSteps or inject_hyperparams), so checkpoint conversion does
  not depend on the position of the statistics in the chain.
  """
  found = [
      node for node in jax.tree.leaves(
          opt_state,
          is_leaf=lambda x: isinstance(x, optax.FactoredState))
      if isinstance(node, optax.FactoredState)]
  if len(found) != 1:
    raise ValueError(
        f"Expected exactly one optax.FactoredState in the optimizer state, "
        f"found {len(found)}. Is the optimizer Adafactor (optimizers.adafactor "
        "or optax.adafactor)?")
  return found[0]


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay), mainly for decoder-only models.

  `weight_decay_mask` (a pytree of bools or a function of the params) lets a
  caller spare e.g. norm scales from decay; None decays every parameter.
  """
  return optax.adamw(
      learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
      mask=weight_decay_mask)


# The choices of the OPTIMIZER gin macro (cli/gin_macros.py checks names against these).
OPTIMIZERS = {"adafactor": adafactor, "adamw": adamw}


def create(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    factories: Mapping[str, Callable[..., optax.GradientTransformation]] | None = None,
) -> optax.GradientTransformation:
  """The optimizer called `name` ('adafactor' | 'adamw'; the OPTIMIZER gin macro).

  Choosing by name lets one command-line binding switch optimizers. `factories`
  maps each name to the function that builds it from `learning_rate`; the run
  gins pass gin's configured `optimizers.adafactor` / `optimizers.adamw`, so
  their other hyperparameters stay bindable (e.g. optimizers.adamw.weight_decay).
  None: this module's functions with their defaults.
  """
  factories = factories or OPTIMIZERS
  canonical = name.strip().lower() if isinstance(name, str) else name
  if canonical not in factories:
    raise UsageError(
        f"Unknown optimizer {name!r}; OPTIMIZER must be one of "
        f"{', '.join(repr(n) for n in factories)}, e.g. --gin.OPTIMIZER=\"'adamw'\".")
  return factories[canonical](learning_rate=learning_rate)


def _rsqrt_decay(
    base_learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """t5x's `constant * rsqrt_decay`: flat at base/sqrt(warmup), then 1/sqrt(t).

  The floor of 1 on the denominator avoids dividing by zero at step 0 when
  warmup_steps is 0 (t5x would return inf there).
  """
  floor = float(max(warmup_steps, 1))

  def schedule(count):
    step = jnp.asarray(count, jnp.float32)
    return base_learning_rate / jnp.sqrt(jnp.maximum(step, floor))

  return schedule


def learning_rate_schedule(
    name: str = "constant",
    base_learning_rate: float = 1e-3,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    end_learning_rate: float = 0.0,
) -> optax.Schedule:
  """Learning rate as a function of the optimizer step.

  Args:
    name: "constant" (linear warmup from 0 when warmup_steps > 0, then flat),
      "rsqrt_decay" (t5x: base / sqrt(max(step, warmup_steps)); T5 pretraining
      uses base 1.0, warmup 10000), "linear" (warmup, then linear decay to
      end_learning_rate at total_steps) or "cosine" (warmup, then cosine decay
      to end_learning_rate at total_steps). Case-insensitive.
    base_learning_rate: peak (or, for rsqrt_decay, numerator) learning rate.
    warmup_steps: length of the warmup.
    total_steps: schedule length including warmup; required by linear/cosine.
    end_learning_rate: final value of linear/cosine.

  Returns:
    An optax schedule (step -> learning rate).
  """
  canonical = name.strip().lower() if isinstance(name, str) else name
  if canonical not in SCHEDULE_NAMES:
    raise ValueError(
        f"Unknown learning-rate schedule {name!r}; expected one of "
        f"{', '.join(SCHEDULE_NAMES)}.")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")

  if canonical == "constant":
    if warmup_steps:
      return optax.schedules.warmup_constant_schedule(
          0.0, base_learning_rate, warmup_steps)
    return optax.schedules.constant_schedule(base_learning_rate)
  if canonical == "rsqrt_decay":
    return _rsqrt_decay(base_learning_rate, warmup_steps)

  if total_steps is None or total_steps <= warmup_steps:
    raise ValueError(
        f"The {canonical!r} schedule needs total_steps > warmup_steps, got "
        f"total_steps={total_steps}, warmup_steps={warmup_steps}. Set "
        "total_steps to the number of training steps (e.g. TRAIN_STEPS).")
  if canonical == "linear":
    return optax.schedules.join_schedules(
        [optax.schedules.linear_schedule(
            0.0, base_learning_rate, warmup_steps),
         optax.schedules.linear_schedule(
             base_learning_rate, end_learning_rate,
             total_steps - warmup_steps)],
        [warmup_steps])
  return optax.schedules.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=base_learning_rate,
      warmup_steps=warmup_steps,
      decay_steps=total_steps,
      end_value=end_learning_rate)
