"""The einsum attention's speed-ups keep the straightforward formula's values and gradients.

add_broadcast_bias has a hand-written backward (a ones-vector matmul over the
batch); the softmax is normalised after the weighted sum; keys / values may come
heads-major (the decoding caches' layout).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax.models.networks import attention
import factories

LOGITS_SHAPE = (3, 4, 5, 6)  # [batch, heads, q_len, kv_len]


def _reference_attention(query, key, value, bias, mask):
  """softmax(q k^T + bias, masked) v, written out plainly (query heads share kv heads)."""
  groups = query.shape[2] // key.shape[2]
  key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) + bias
  logits = jnp.where(mask > 0, logits, attention.MASKED_LOGIT)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), value)


def _attention_inputs(seed, q_len, kv_len, kv_heads, batch=3, heads=4, head_dim=8):
  """Random (query, key, value, bias, mask), keys / values length-major."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  query = jax.random.normal(keys[0], (batch, q_len, heads, head_dim))
  key = jax.random.normal(keys[1], (batch, kv_len, kv_heads, head_dim))
  value = jax.random.normal(keys[2], (batch, kv_len, kv_heads, head_dim))
  bias = jax.random.normal(keys[3], (1, heads, q_len, kv_len))
  mask = jax.random.bernoulli(keys[4], 0.7, (batch, 1, q_len, kv_len))
  return query, key, value, bias, mask


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_einsum_attention_values_and_gradients_equal_the_plain_formula(kv_heads):
  query, key, value, bias, mask = _attention_inputs(1, q_len=5, kv_len=6, kv_heads=kv_heads)
  mask = mask.at[0, 0, 1].set(False)  # a fully masked query row (padding)
  cotangent = jax.random.normal(jax.random.PRNGKey(2), query.shape)

  def outputs_and_gradients(fn):
    out, vjp = jax.vjp(lambda q, k, v, b: fn(q, k, v, b, mask), query, key, value, bias)
    return (out, *vjp(cotangent))

  ours = jax.jit(lambda: outputs_and_gradients(
      lambda q, k, v, b, m: attention.dot_product_attention(q, k, v, bias=b, mask=m)))()
  reference = jax.jit(lambda: outputs_and_gradients(_reference_attention))()
  for name, got, want in zip(("output", "query", "key", "value", "bias"), ours, reference):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("implementation", attention.IMPLEMENTATIONS)
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_heads_major_keys_values_give_the_same_attention(implementation, kv_heads):
  """The decoding caches' layout [batch, kv_heads, kv_len, head_dim], read as stored."""
  query, key, value, bias, mask = _attention_inputs(3, q_len=2, kv_len=7, kv_heads=kv_heads)

  def attend(k, v, heads_major):
    return attention.dot_product_attention(query, k, v, bias=bias, mask=mask,
                                           implementation=implementation,
                                           kv_heads_major=heads_major)

  length_major = jax.jit(lambda: attend(key, value, False))()
  heads_major = jax.jit(lambda: attend(key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3),
                                       True))()
  np.testing.assert_allclose(heads_major, length_major, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(length_major, _reference_attention(query, key, value, bias, mask),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias_shape", [
    (1, 4, 5, 6),   # T5: one relative bias for the whole batch
    (4, 5, 6),      # lower rank, broadcast like numpy
    (1, 4, 1, 6),   # a leading and an inner broadcast axis
    (3, 4, 1, 6),   # only an inner broadcast axis
    (3, 4, 5, 6),   # no broadcasting
])
def test_bias_gradient_equals_autodiff(bias_shape):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  logits = jax.random.normal(keys[0], LOGITS_SHAPE)
  bias = jax.random.normal(keys[1], bias_shape)
  cotangent = jax.random.normal(keys[2], LOGITS_SHAPE)

  def gradients(add):
    out, vjp = jax.vjp(add, logits, bias)
    return (out, *vjp(cotangent))

  ours = jax.jit(lambda: gradients(attention.add_broadcast_bias))()
  reference = jax.jit(lambda: gradients(lambda x, b: x + b))()
  for got, want in zip(ours, reference):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_t5_gradients_equal_those_of_a_plain_bias_add(monkeypatch):
  """End to end: every parameter gradient (relpos tables included) of a tiny T5."""
  model = factories.tiny_t5()
  batch = factories.synthetic_batch(4)
  params = jax.jit(lambda rng: model.init_params(rng, factories.input_shapes(4)))(
      jax.random.PRNGKey(0))

  def loss_and_grads():
    return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch, None)[0]))(params)

  loss, grads = loss_and_grads()
  monkeypatch.setattr(attention, "add_broadcast_bias", lambda x, b: x + b)
  plain_loss, plain_grads = loss_and_grads()
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  flat, plain_flat = jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(plain_grads)
  for (path, got), want in zip(flat, plain_flat):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  relpos = [g for path, g in flat if "relpos_bias" in jax.tree_util.keystr(path)]
  assert len(relpos) == 2 and all(jnp.any(g != 0) for g in relpos)
