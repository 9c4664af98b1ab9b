"""matmul_replay finds every matmul a step runs (scans and gradients included) and times them."""
import jax
import jax.numpy as jnp
import optax
import pytest

from instruct_jax.benchmarks import matmul_replay
from instruct_jax.benchmarks import train_step
import factories


def test_dots_of_counts_gradients_and_scanned_layers():
  head = jnp.ones((8, 2))

  def loss(w, x):
    def layer(h, w_layer):
      return jnp.tanh(h @ w_layer), None
    h, _ = jax.lax.scan(layer, x, w)  # 3 layers: [4, 8] x [8, 8]
    return jnp.sum(h @ head)

  w, x = jnp.ones((3, 8, 8)), jnp.ones((4, 8))
  dots = matmul_replay.dots_of(jax.make_jaxpr(jax.grad(loss))(w, x))
  layer, head_flops = 2 * 4 * 8 * 8, 2 * 4 * 8 * 2
  # Forward: 3 layers and the head. Backward: the head's input gradient (the head
  # itself is a constant), and per layer the gradients of its input and weight.
  assert sum(d.flops() for d in dots) == 3 * layer + head_flops + head_flops + 3 * 2 * layer
  assert len(dots) == 3 + 1 + 1 + 3 * 2


def test_a_while_loop_runs_its_body_in_order_for_the_given_trips():
  def decode(x, w_a, w_b):
    def body(carry):
      i, h = carry
      return i + 1, jnp.tanh(jnp.tanh(h @ w_a) @ w_b)  # [2, 4] x [4, 6], then [2, 6] x [6, 4]
    return jax.lax.while_loop(lambda c: jnp.sum(c[1]) < 1e9, body, (0, x))[1]

  jaxpr = jax.make_jaxpr(decode)(jnp.ones((2, 4)), jnp.ones((4, 6)), jnp.ones((6, 4)))
  dots = matmul_replay.dots_of(jaxpr, while_trips=3)
  assert [d.rhs.shape for d in dots] == [(4, 6), (6, 4)] * 3
  # One array per program value: two weights and two activations, read as the loop does.
  assert len({(d.operands[i], (d.lhs, d.rhs)[i].shape) for d in dots for i in (0, 1)}) == 4
  assert matmul_replay.seconds(dots, repeats=1, distinct_values=True) > 0


def test_bfloat16_dots_replay_on_cpu():
  """XLA:CPU has no bfloat16 x bfloat16 -> float32 dot kernel; the replay upcasts as XLA does."""
  lhs, rhs = jnp.ones((4, 8), jnp.bfloat16), jnp.ones((8, 2), jnp.bfloat16)
  dots = matmul_replay.dots_of(jax.make_jaxpr(
      lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))(lhs, rhs))
  assert dots[0].lhs.dtype == jnp.bfloat16
  assert matmul_replay.seconds(dots, repeats=1) > 0


def test_batched_dot_flops():
  dot, = matmul_replay.dots_of(jax.make_jaxpr(lambda q, k: jnp.einsum("bqd,bkd->bqk", q, k))(
      jnp.ones((2, 3, 5)), jnp.ones((2, 7, 5))))
  assert dot.flops() == 2 * 2 * 3 * 7 * 5


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_t5_train_steps_matmuls_are_its_model_flops_and_replay(scan_layers):
  model = factories.tiny_t5(scan_layers=scan_layers)
  prepared = train_step.prepare_train_step(model, optax.adafactor(1e-3), 8, 16, 8)
  dots = matmul_replay.dots_of(prepared.trainer.train_step_jaxpr(prepared.state, prepared.batch))
  # flops.py counts the weight and attention matmuls; the replay also sees the
  # relative-position bias gradient's ones-vector sum, a small extra.
  model_flops = train_step.train_flops_per_step(model, 8, 16, 8)
  assert sum(d.flops() for d in dots) == pytest.approx(model_flops, rel=0.02)
  assert matmul_replay.seconds(dots, repeats=1) > 0
