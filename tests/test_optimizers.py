"""Tests for instruct_jax.train.optimizers.

Adafactor is checked against a small numpy implementation of the published
algorithm (Shazeer & Stern 2018, with t5x's defaults), written independently
of optax: the factored second moment is rebuilt as the rank-1 matrix
V = outer(row, col) / mean(row) rather than as separate row/column factors.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instruct_jax.checkpoints import layer_layout
from instruct_jax.train import optimizers


class ReferenceAdafactor:
  """Per-parameter numpy Adafactor (float64), t5x hyperparameter names."""

  def __init__(self, shape, learning_rate, decay_rate=0.8, step_offset=0,
               clipping_threshold=1.0, epsilon1=1e-30, epsilon2=1e-3,
               multiply_by_parameter_scale=True, min_dim_size_to_factor=128):
    self.lr = learning_rate
    self.decay_rate = decay_rate
    self.step_offset = step_offset
    self.clip = clipping_threshold
    self.eps1 = epsilon1
    self.eps2 = epsilon2
    self.param_scale = multiply_by_parameter_scale
    self.factored = (len(shape) == 2 and min(shape) >= min_dim_size_to_factor)
    if self.factored:
      self.row = np.zeros(shape[0])  # mean of g^2 over columns
      self.col = np.zeros(shape[1])  # mean of g^2 over rows
    else:
      self.v = np.zeros(shape)
    self.step = 0

  def update(self, grad, param):
    grad = np.asarray(grad, np.float64)
    param = np.asarray(param, np.float64)
    t = self.step - self.step_offset + 1
    beta2 = 1.0 - t ** -self.decay_rate
    g2 = grad ** 2 + self.eps1
    if self.factored:
      self.row = beta2 * self.row + (1 - beta2) * g2.mean(axis=1)
      self.col = beta2 * self.col + (1 - beta2) * g2.mean(axis=0)
      v_hat = np.outer(self.row, self.col) / self.row.mean()
    else:
      self.v = beta2 * self.v + (1 - beta2) * g2
      v_hat = self.v
    u = grad / np.sqrt(v_hat)
    if self.clip is not None:
      u = u / max(1.0, np.sqrt(np.mean(u ** 2)) / self.clip)
    scale = self.lr
    if self.param_scale:
      scale *= max(self.eps2, np.sqrt(np.mean(param ** 2)))
    self.step += 1
    return param - scale * u


def _run_optax(tx, params, grads_per_step):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for grads in grads_per_step:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_adafactor_matches_reference_for_matrix_and_vector():
  rng = np.random.default_rng(0)
  shapes = {"kernel": (128, 160), "scale": (32,)}
  params = {k: rng.normal(size=s).astype(np.float32) * 0.05
            for k, s in shapes.items()}
  params["scale"] = np.full((32,), 1e-4, np.float32)  # below the eps2 floor
  grads_per_step = [
      {k: (rng.normal(size=s) * (1 + 5 * step)).astype(np.float32)
       for k, s in shapes.items()} for step in range(3)]

  tx = optimizers.adafactor(learning_rate=1e-2)
  got, state = _run_optax(tx, jax.tree.map(jnp.asarray, params),
                          grads_per_step)

  for name, shape in shapes.items():
    ref = ReferenceAdafactor(shape, learning_rate=1e-2)
    p = params[name]
    for grads in grads_per_step:
      p = ref.update(grads[name], p)
    np.testing.assert_allclose(got[name], p, rtol=2e-5, atol=1e-7)

  # The factored statistics keep t5x's names and shapes.
  stats = optimizers.factored_state(state)
  assert stats is state[0]
  assert isinstance(stats, optax.FactoredState)
  assert stats.v_row["kernel"].shape == (128,)
  assert stats.v_col["kernel"].shape == (160,)
  assert stats.v["kernel"].shape == (1,)
  assert stats.v["scale"].shape == (32,)
  assert stats.v_row["scale"].shape == (1,)
  assert int(stats.count) == 3


def test_same_state_tree_and_updates_as_optax_adafactor():
  # Our chain mirrors optax.adafactor's (which hard-codes epsilon2 = 1e-3), so
  # states are interchangeable and updates agree for the same options, up to
  # float32 rounding of the array's scale (the statistics' means are summed in
  # another order; with weight decay some entries nearly cancel).
  rng = np.random.default_rng(3)
  params = {"a": jnp.asarray(rng.normal(size=(130, 129)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  grads = jax.tree.map(lambda p: p * 0.3 + 0.1, params)
  for kwargs in ({}, {"momentum": 0.9, "weight_decay_rate": 1e-3}):
    ours = optimizers.adafactor(1e-2, **kwargs)
    ref = optax.adafactor(1e-2, **kwargs)
    ours_state, ref_state = ours.init(params), ref.init(params)
    assert (jax.tree.structure(ours_state) ==
            jax.tree.structure(ref_state))
    for _ in range(2):
      u1, ours_state = ours.update(grads, ours_state, params)
      u2, ref_state = ref.update(grads, ref_state, params)
      jax.tree.map(lambda x, y: np.testing.assert_allclose(
          x, y, rtol=1e-6, atol=1e-6 * float(np.abs(y).max())), u1, u2)


def test_adafactor_steps_a_scanned_stack_like_its_unrolled_layers():
  """Clipping and parameter scale take one RMS per layer of a stacked array.

  Layers of very different scale make pooled RMS values visibly wrong, so
  the stacked run matches the unrolled one only if each layer is on its own.
  """
  rng = np.random.default_rng(0)
  shapes = {"mlp": {"wi": (160, 192), "wo": (192, 160)}, "norm": {"scale": (160,)}}

  def layer(scale):
    return {group: {name: jnp.asarray(scale * rng.normal(size=shape), jnp.float32)
                    for name, shape in leaves.items()} for group, leaves in shapes.items()}

  unrolled = {"decoder": {f"layers_{i}": layer(10.0 ** i) for i in range(3)},
              "token_embedder": {"embedding": jnp.asarray(rng.normal(size=(64, 160)),
                                                          jnp.float32)}}
  like = {"decoder": {"layers": {}}, "token_embedder": {}}
  like["decoder"]["layers"] = jax.tree.map(lambda x: None, unrolled["decoder"]["layers_0"])
  params = {"unrolled": unrolled,
            "stacked": layer_layout.materialize(layer_layout.match_layout(unrolled, like))}
  assert params["stacked"]["decoder"]["layers"]["mlp"]["wi"].shape == (3, 160, 192)
  optimizer = optimizers.adafactor(0.1, clipping_threshold=1.0)
  states = {k: optimizer.init(p) for k, p in params.items()}
  for step in range(3):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32) * (
        1.0 + step), params["unrolled"])
    grads = {"unrolled": grads,
             "stacked": layer_layout.materialize(layer_layout.match_layout(grads, like))}
    for k in params:
      updates, states[k] = optimizer.update(grads[k], states[k], params[k])
      params[k] = optax.apply_updates(params[k], updates)
    back = layer_layout.materialize(layer_layout.to_per_layer(params["stacked"]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 back, params["unrolled"])


def test_factored_state_requires_adafactor():
  with pytest.raises(ValueError, match="FactoredState"):
    optimizers.factored_state(optax.sgd(0.1).init({"w": jnp.zeros(2)}))


def test_small_matrix_is_not_factored():
  tx = optimizers.adafactor(learning_rate=1.0)
  state = tx.init({"w": jnp.zeros((64, 256))})
  assert optimizers.factored_state(state).v["w"].shape == (64, 256)


def test_step_offset_restarts_second_moment_decay():
  params = {"w": jnp.ones((4,))}
  new_grad = {"w": jnp.full((4,), 2.0)}

  def second_moment_after(step_offset):
    tx = optimizers.adafactor(learning_rate=1.0, step_offset=step_offset)
    state = tx.init(params)
    # Pretend 10 updates already happened with small gradients.
    stats = state[0]._replace(count=jnp.asarray(10, jnp.int32),
                              v={"w": jnp.full((4,), 0.01)})
    state = (stats,) + tuple(state[1:])
    _, state = tx.update(new_grad, state, params)
    return float(optimizers.factored_state(state).v["w"][0])

  beta2 = 1.0 - 11.0 ** -0.8
  assert second_moment_after(0) == pytest.approx(
      beta2 * 0.01 + (1 - beta2) * 4.0, rel=1e-5)
  # step - offset = 0 -> beta2 = 0 -> statistics equal the fresh g^2.
  assert second_moment_after(10) == pytest.approx(4.0, rel=1e-5)
  # Offsets beyond the step stay finite (clamped to step 0) instead of NaN.
  assert second_moment_after(20) == pytest.approx(4.0, rel=1e-5)


def test_clipping_caps_update_rms():
  params = {"w": jnp.ones((8,))}
  grads = [{"w": jnp.full((8,), 1e-3)}, {"w": jnp.full((8,), 1.0)}]

  def last_update_rms(clipping_threshold):
    tx = optimizers.adafactor(
        learning_rate=1.0, multiply_by_parameter_scale=False,
        clipping_threshold=clipping_threshold)
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, params)
    return float(jnp.sqrt(jnp.mean(updates["w"] ** 2)))

  beta2 = 1.0 - 2.0 ** -0.8
  unclipped = 1.0 / math.sqrt(beta2 * 1e-6 + (1 - beta2) * 1.0)
  assert last_update_rms(None) == pytest.approx(unclipped, rel=1e-5)
  assert unclipped > 1.2
  assert last_update_rms(1.0) == pytest.approx(1.0, rel=1e-5)
  with pytest.raises(ValueError, match="clipping_threshold"):
    optimizers.adafactor(learning_rate=1.0, clipping_threshold=0.0)


def test_momentum_and_weight_decay_follow_t5x():
  params = {"w": jnp.full((4,), 2.0)}
  grads = {"w": jnp.full((4,), 3.0)}
  tx = optimizers.adafactor(
      learning_rate=0.1, multiply_by_parameter_scale=False, momentum=0.9,
      weight_decay_rate=0.01)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  # Normalised step is 1 (first step: g / |g|); momentum m = 0.1 * lr * 1;
  # weight decay subtracts rate * param without the learning rate (t5x).
  np.testing.assert_allclose(updates["w"], -(0.1 * 0.1 + 0.01 * 2.0),
                             rtol=1e-6)
  assert any(isinstance(s, optax.EmaState) for s in state)


def test_adafactor_with_schedule():
  schedule = optimizers.learning_rate_schedule(
      "linear", base_learning_rate=1.0, warmup_steps=2, total_steps=4)
  tx = optimizers.adafactor(schedule, multiply_by_parameter_scale=False)
  params = {"w": jnp.zeros((3,))}
  state = tx.init(params)
  sizes = []
  for _ in range(3):
    updates, state = tx.update({"w": jnp.ones((3,))}, state, params)
    sizes.append(float(-updates["w"][0]))
  np.testing.assert_allclose(sizes, [0.0, 0.5, 1.0], atol=1e-6)


def test_adamw_matches_optax():
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.5])}
  ours = optimizers.adamw(1e-2, weight_decay=0.1)
  ref = optax.adamw(1e-2, weight_decay=0.1)
  u1, _ = ours.update(grads, ours.init(params), params)
  u2, _ = ref.update(grads, ref.init(params), params)
  np.testing.assert_allclose(u1["w"], u2["w"])


def test_adamw_weight_decay_mask():
  params = {"w": jnp.ones((2,)), "scale": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  tx = optimizers.adamw(1.0, weight_decay=0.5,
                        weight_decay_mask={"w": True, "scale": False})
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5)
  np.testing.assert_allclose(updates["scale"], 0.0)


# --- schedules ----------------------------------------------------------------


def _values(schedule, steps):
  return [float(schedule(jnp.asarray(s))) for s in steps]


def test_constant_schedule():
  s = optimizers.learning_rate_schedule("constant", base_learning_rate=1e-3)
  np.testing.assert_allclose(_values(s, [0, 7, 10_000]), [1e-3] * 3)
  s = optimizers.learning_rate_schedule(
      "Constant", base_learning_rate=1e-3, warmup_steps=4)
  np.testing.assert_allclose(_values(s, [0, 2, 4, 100]),
                             [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_rsqrt_decay_schedule():
  s = optimizers.learning_rate_schedule(
      "rsqrt_decay", base_learning_rate=1.0, warmup_steps=10_000)
  np.testing.assert_allclose(
      _values(s, [0, 5_000, 10_000, 40_000]),
      [0.01, 0.01, 0.01, 0.005], rtol=1e-6)
  s = optimizers.learning_rate_schedule("rsqrt_decay", base_learning_rate=2.0)
  np.testing.assert_allclose(_values(s, [0, 1, 4]), [2.0, 2.0, 1.0])


def test_linear_schedule():
  s = optimizers.learning_rate_schedule(
      "linear", base_learning_rate=1.0, warmup_steps=10, total_steps=110,
      end_learning_rate=0.1)
  np.testing.assert_allclose(
      _values(s, [0, 5, 10, 60, 110, 500]),
      [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6, atol=1e-7)


def test_cosine_schedule():
  s = optimizers.learning_rate_schedule(
      "cosine", base_learning_rate=1.0, warmup_steps=10, total_steps=110)
  np.testing.assert_allclose(
      _values(s, [0, 5, 10, 60, 110, 200]),
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], rtol=1e-6, atol=1e-7)


def test_schedule_errors():
  with pytest.raises(ValueError, match="rsqrt_decay"):
    optimizers.learning_rate_schedule("exponential")
  with pytest.raises(ValueError, match="total_steps"):
    optimizers.learning_rate_schedule("cosine", warmup_steps=5)


@pytest.mark.parametrize("shape", [(300, 130), (130, 300), (3, 200, 140), (140, 3, 200)])
def test_factored_statistics_match_optax_whichever_axis_is_reduced(shape):
  # The means over a leading axis are matmuls (fast on XLA:CPU); they must give
  # optax's statistics and updates whichever axes of the array get factored.
  rng = np.random.default_rng(5)
  kwargs = dict(factored=True, decay_rate=0.8, step_offset=0, min_dim_size_to_factor=128,
                epsilon=1e-30)
  ours = optimizers.scale_by_factored_rms(**kwargs)
  ref = optax.scale_by_factored_rms(**kwargs, decay_rate_fn=optimizers._second_moment_decay)
  params = {"w": jnp.asarray(rng.normal(size=shape), jnp.float32)}
  ours_state, ref_state = ours.init(params), ref.init(params)
  for step in range(2):
    grads = {"w": jnp.asarray(rng.normal(size=shape) * (1 + 3 * step), jnp.float32)}
    ours_updates, ours_state = jax.jit(ours.update)(grads, ours_state, params)
    ref_updates, ref_state = jax.jit(ref.update)(grads, ref_state, params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(
        x, y, rtol=1e-6, atol=1e-6 * float(np.abs(y).max())),
                 (ours_updates, ours_state), (ref_updates, ref_state))
  assert optimizers.factored_state(ours_state).v_row["w"].shape == ref_state.v_row["w"].shape


def test_parameter_scale_is_optax_block_rms_with_its_floor():
  params = {"big": jnp.full((4, 3), 2.0), "tiny": jnp.full((5,), 1e-5)}
  updates = {"big": jnp.ones((4, 3)), "tiny": jnp.ones((5,))}
  ours, _ = optimizers.scale_by_param_rms(1e-3).update(updates, None, params)
  ref, _ = optax.scale_by_param_block_rms(1e-3).update(updates, None, params)
  jax.tree.map(np.testing.assert_array_equal, ours, ref)
  np.testing.assert_allclose(ours["tiny"], 1e-3)
