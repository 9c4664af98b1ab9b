"""Tests of the T5 / decoder-only networks and the model wrappers the trainer uses."""

import functools
import glob
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

import factories
import gin_configs
from instruct_jax.models import api
from instruct_jax.models import decoder_only
from instruct_jax.models import encoder_decoder
from instruct_jax.models.networks import decoder
from instruct_jax.models.networks import layers
from instruct_jax.models.networks import t5

VOCAB = 384
ALLOWED_AXES = {"batch", "length", "embed", "mlp", "heads", "kv", "joined_kv", "vocab",
                "relpos_buckets"}
TINY_T5 = dict(vocab_size=VOCAB, emb_dim=32, num_heads=4, num_encoder_layers=2,
               num_decoder_layers=2, head_dim=8, mlp_dim=64, dtype="float32")
TINY_DECODER = dict(vocab_size=VOCAB, emb_dim=32, num_heads=4, num_layers=2, head_dim=8,
                    mlp_dim=64, dtype="float32")


def _flat_shapes(params):
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
  return {"/".join(k.key for k in path): tuple(v.shape) for path, v in flat}


def _t5_model(**overrides):
  return encoder_decoder.EncoderDecoderModel(
      t5.Transformer(t5.T5Config(**{**TINY_T5, **overrides})), seqio.ByteVocabulary(),
      seqio.ByteVocabulary())


def _decoder_model(prefix=False, **overrides):
  module = decoder.DecoderOnly(decoder.DecoderConfig(**{**TINY_DECODER, **overrides}))
  return decoder_only.DecoderOnlyModel(module, seqio.ByteVocabulary(),
                                       inputs_bidirectional_attention=prefix)


def _shift_right(targets):
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def _encdec_batch(seed=0, batch=2, enc_len=7, dec_len=6):
  rng = np.random.RandomState(seed)
  enc = rng.randint(1, 259, (batch, enc_len)).astype(np.int32)
  enc[1, 5:] = 0  # padding
  targets = rng.randint(1, 259, (batch, dec_len)).astype(np.int32)
  targets[0, 4:] = 0
  return {"encoder_input_tokens": enc, "decoder_target_tokens": targets,
          "decoder_input_tokens": _shift_right(targets),
          "decoder_loss_weights": (targets > 0).astype(np.float32)}


def _input_shapes(batch):
  return {k: v.shape for k, v in batch.items()}


# Tiny graphs: XLA's backend optimisations cost more compile time than they save here.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _init(model, shapes, seed=0):
  """Unboxed params; jitted because eager init compiles every op separately (slow)."""
  init = _jit(functools.partial(model.init_params, input_shapes=shapes))
  return nn.meta.unbox(init(jax.random.PRNGKey(seed)))


@pytest.fixture(scope="module")
def t5_setup():
  model = _t5_model()
  batch = _encdec_batch()
  params = _init(model, _input_shapes(batch))
  return model, params, batch


@pytest.fixture(scope="module")
def decoder_setup():
  model = _decoder_model(prefix=True)
  rng = np.random.RandomState(1)
  targets = rng.randint(1, 259, (2, 8)).astype(np.int32)
  targets[1, 6:] = 0
  batch = {"decoder_target_tokens": targets, "decoder_input_tokens": _shift_right(targets),
           "decoder_loss_weights": np.array([[0, 0, 0, 1, 1, 1, 1, 1],
                                             [0, 0, 1, 1, 1, 1, 0, 0]], np.float32),
           "decoder_causal_attention": np.array([[1, 1, 1, 1, 0, 0, 0, 0],
                                                 [1, 1, 1, 0, 0, 0, 0, 0]], np.int32)}
  params = _init(model, _input_shapes(batch))
  return model, params, batch


# --- parameter tree ---------------------------------------------------------------


def _t5x_encoder_layer(i):
  p = f"encoder/layers_{i}/"
  return {
      p + "pre_attention_layer_norm/scale": (32,),
      p + "attention/query/kernel": (32, 32),
      p + "attention/key/kernel": (32, 32),
      p + "attention/value/kernel": (32, 32),
      p + "attention/out/kernel": (32, 32),
      p + "pre_mlp_layer_norm/scale": (32,),
      p + "mlp/wi_0/kernel": (32, 64),
      p + "mlp/wi_1/kernel": (32, 64),
      p + "mlp/wo/kernel": (64, 32),
  }


def _t5x_decoder_layer(i):
  p = f"decoder/layers_{i}/"
  return {
      p + "pre_self_attention_layer_norm/scale": (32,),
      p + "self_attention/query/kernel": (32, 32),
      p + "self_attention/key/kernel": (32, 32),
      p + "self_attention/value/kernel": (32, 32),
      p + "self_attention/out/kernel": (32, 32),
      p + "pre_cross_attention_layer_norm/scale": (32,),
      p + "encoder_decoder_attention/query/kernel": (32, 32),
      p + "encoder_decoder_attention/key/kernel": (32, 32),
      p + "encoder_decoder_attention/value/kernel": (32, 32),
      p + "encoder_decoder_attention/out/kernel": (32, 32),
      p + "pre_mlp_layer_norm/scale": (32,),
      p + "mlp/wi_0/kernel": (32, 64),
      p + "mlp/wi_1/kernel": (32, 64),
      p + "mlp/wo/kernel": (64, 32),
  }


def test_t5_param_tree_is_t5x(t5_setup):
  _, params, _ = t5_setup
  expected = {
      "token_embedder/embedding": (VOCAB, 32),
      "encoder/relpos_bias/rel_embedding": (4, 32),
      **_t5x_encoder_layer(0),
      **_t5x_encoder_layer(1),
      "encoder/encoder_norm/scale": (32,),
      "decoder/relpos_bias/rel_embedding": (4, 32),
      **_t5x_decoder_layer(0),
      **_t5x_decoder_layer(1),
      "decoder/decoder_norm/scale": (32,),
      "decoder/logits_dense/kernel": (32, VOCAB),
  }
  assert _flat_shapes(params) == expected
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_t5_v1_0_variant_names():
  """Single activation -> mlp/wi; tied logits -> no logits_dense."""
  model = _t5_model(mlp_activations=("relu",), logits_via_embedding=True)
  shapes = _flat_shapes(jax.eval_shape(functools.partial(
      model.init_params, input_shapes=_input_shapes(_encdec_batch())), jax.random.PRNGKey(0)))
  assert shapes["encoder/layers_0/mlp/wi/kernel"] == (32, 64)
  assert "encoder/layers_0/mlp/wi_0/kernel" not in shapes
  assert "decoder/logits_dense/kernel" not in shapes


def test_decoder_only_param_tree(decoder_setup):
  _, params, _ = decoder_setup
  expected = {"decoder/token_embedder/embedding": (VOCAB, 32),
              "decoder/relpos_bias/rel_embedding": (4, 32),
              "decoder/decoder_norm/scale": (32,),
              "decoder/logits_dense/kernel": (32, VOCAB)}
  for i in range(2):
    p = f"decoder/layers_{i}/"
    expected.update({
        p + "pre_self_attention_layer_norm/scale": (32,),
        p + "self_attention/query/kernel": (32, 32),
        p + "self_attention/key/kernel": (32, 32),
        p + "self_attention/value/kernel": (32, 32),
        p + "self_attention/out/kernel": (32, 32),
        p + "pre_mlp_layer_norm/scale": (32,),
        p + "mlp/wi_0/kernel": (32, 64),
        p + "mlp/wi_1/kernel": (32, 64),
        p + "mlp/wo/kernel": (64, 32),
    })
  assert _flat_shapes(params) == expected


@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_every_param_has_logical_axes(family):
  if family == "t5":
    model, shapes = _t5_model(), _input_shapes(_encdec_batch())
  else:
    model, shapes = _decoder_model(), {"decoder_input_tokens": (2, 8),
                                       "decoder_target_tokens": (2, 8)}
  boxed = jax.eval_shape(functools.partial(model.init_params, input_shapes=shapes),
                         jax.random.PRNGKey(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= ALLOWED_AXES, leaf.names
  specs = jax.tree.leaves(nn.get_partition_spec(boxed),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  spec_by_name = dict(zip(_flat_shapes(boxed), specs))
  if family == "t5":
    assert tuple(spec_by_name["encoder/layers_0/attention/query/kernel"]) == ("embed",
                                                                               "joined_kv")
    assert tuple(spec_by_name["encoder/layers_0/attention/out/kernel"]) == ("joined_kv",
                                                                             "embed")
    assert tuple(spec_by_name["encoder/relpos_bias/rel_embedding"]) == ("heads",
                                                                       "relpos_buckets")
    assert tuple(spec_by_name["token_embedder/embedding"]) == ("vocab", "embed")
    assert tuple(spec_by_name["decoder/logits_dense/kernel"]) == ("embed", "vocab")


def test_initialisers_follow_t5x(t5_setup):
  _, params, _ = t5_setup
  attn = params["encoder"]["layers_0"]["attention"]
  # Query carries the 1/sqrt(head_dim) scale that the attention does not apply.
  ratio = float(jnp.std(attn["query"]["kernel"]) / jnp.std(attn["key"]["kernel"]))
  assert ratio == pytest.approx(1 / np.sqrt(8), rel=0.3)
  assert float(jnp.std(params["token_embedder"]["embedding"])) == pytest.approx(1.0, rel=0.1)
  np.testing.assert_array_equal(params["encoder"]["encoder_norm"]["scale"], np.ones(32))


def test_relative_position_buckets():
  rel = np.array([-200, -20, -1, 0, 1, 20, 200])
  bi = layers.relative_position_bucket(rel, True, 32, 128)
  # Keys before the query use buckets 0-15, after it 16-31; far offsets saturate.
  np.testing.assert_array_equal(bi[[2, 3, 4]], [1, 0, 17])
  assert bi[0] == 15 and bi[-1] == 31 and 8 <= bi[1] < 15 and 24 <= bi[5] < 31
  uni = layers.relative_position_bucket(rel, False, 32, 128)
  np.testing.assert_array_equal(uni[3:], 0)  # the future is one bucket
  assert uni[2] == 1 and uni[0] == 31


# --- packing ------------------------------------------------------------------------


def _seqio_features(converter, examples, lengths):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]})
  return [{k: np.asarray(v)[None] for k, v in ex.items()}
          for ex in converter(ds, lengths).as_numpy_iterator()]


def test_packed_encdec_matches_unpacked(t5_setup):
  model, params, _ = t5_setup
  examples = [{"inputs": [5, 6, 7, 1], "targets": [8, 9, 1]},
              {"inputs": [10, 11, 12, 13, 1], "targets": [14, 15, 16, 17, 1]}]
  lengths = {"inputs": 12, "targets": 10}
  packed = _seqio_features(seqio.EncDecFeatureConverter(pack=True), examples, lengths)
  assert len(packed) == 1, "both examples should share one packed row"
  packed = packed[0]
  # One compiled function (XLA shares the forward pass) per feature structure.
  logits_and_scores = _jit(lambda b: (model._logits(params, b, None),
                                         model.score_batch(params, b)))
  packed_logits, packed_scores = logits_and_scores(packed)
  offset, per_example = 0, []
  for ex, src in zip(_seqio_features(seqio.EncDecFeatureConverter(pack=False), examples,
                                     lengths), examples):
    n = len(src["targets"])
    alone, scores = logits_and_scores(ex)
    np.testing.assert_allclose(packed_logits[0, offset:offset + n], alone[0, :n],
                               atol=1e-4, rtol=1e-4)
    per_example.append(scores[0])
    offset += n
  # The score of a packed row is the sum of its examples' scores.
  np.testing.assert_allclose(packed_scores[0], sum(per_example), rtol=1e-5)


def test_packed_prefix_lm_matches_unpacked(decoder_setup):
  model, params, _ = decoder_setup
  examples = [{"inputs": [5, 6, 7, 1], "targets": [8, 9, 1]},
              {"inputs": [10, 11, 1], "targets": [14, 15, 16, 1]}]
  lengths = {"inputs": 8, "targets": 8}
  converter = model.feature_converter(pack=True)
  assert isinstance(converter, seqio.PrefixLMFeatureConverter)
  packed = _seqio_features(converter, examples, lengths)
  assert len(packed) == 1
  logits_fn = _jit(model._logits)
  packed_logits = logits_fn(params, packed[0], None)
  offset = 0
  for ex, src in zip(_seqio_features(model.feature_converter(pack=False), examples, lengths),
                     examples):
    n = len(src["inputs"]) + len(src["targets"])
    alone = logits_fn(params, ex, None)
    np.testing.assert_allclose(packed_logits[0, offset:offset + n], alone[0, :n],
                               atol=1e-4, rtol=1e-4)
    offset += n
  _, metrics = model.loss_fn(params, packed[0], None)
  assert float(metrics["num_examples"]) == 2
  assert float(metrics["num_tokens"]) == 7


# --- cached decoding -----------------------------------------------------------------


def test_cached_encdec_decoding_matches_teacher_forcing(t5_setup):
  model, params, batch = t5_setup
  module, length = model.module, batch["decoder_input_tokens"].shape[1]
  variables = {"params": params}
  full = model._logits(params, batch, None)
  encoded = module.apply(variables, batch["encoder_input_tokens"], enable_dropout=False,
                         method=module.encode)
  _, state = module.apply(variables, encoded, batch["encoder_input_tokens"],
                          batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                          enable_dropout=False, decode=True, max_decode_length=length,
                          mutable=["cache"], method=module.decode)
  cache = state["cache"]
  assert cache["decoder"]["layers_0"]["self_attention"]["cached_key"].shape == (2, 4, length, 8)

  @_jit
  def step(cache, token):
    return module.apply({"params": params, "cache": cache}, encoded,
                        batch["encoder_input_tokens"], token, token, enable_dropout=False,
                        decode=True, max_decode_length=length, mutable=["cache"],
                        method=module.decode)

  for i in range(length):
    step_logits, state = step(cache, batch["decoder_input_tokens"][:, i:i + 1])
    cache = state["cache"]
    real = batch["decoder_target_tokens"][:, i] > 0  # padded positions' logits are junk
    np.testing.assert_allclose(step_logits[real, 0], full[real, i], atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(
      cache["decoder"]["layers_1"]["self_attention"]["cache_index"], [length, length])


def test_cached_decoder_only_decoding_matches_teacher_forcing():
  model = _decoder_model(prefix=False)
  targets = np.random.RandomState(2).randint(1, 259, (2, 6)).astype(np.int32)
  batch = {"decoder_target_tokens": targets, "decoder_input_tokens": _shift_right(targets)}
  params = _init(model, _input_shapes(batch), seed=1)
  full = model._logits(params, batch, None)
  module = model.module
  _, state = module.apply({"params": params}, batch["decoder_input_tokens"], targets,
                          enable_dropout=False, decode=True, max_decode_length=6,
                          mutable=["cache"])
  cache = state["cache"]
  step = _jit(lambda cache, token: module.apply(
      {"params": params, "cache": cache}, token, None, enable_dropout=False, decode=True,
      max_decode_length=6, mutable=["cache"]))
  for i in range(6):
    step_logits, state = step(cache, batch["decoder_input_tokens"][:, i:i + 1])
    cache = state["cache"]
    np.testing.assert_allclose(step_logits[:, 0], full[:, i], atol=1e-4, rtol=1e-4)


def test_prefix_lm_prefill_then_steps_match_teacher_forcing(decoder_setup):
  """Prompts of different lengths prefill the cache at once, then decode per example."""
  model, params, batch = decoder_setup
  module = model.module
  full = model._logits(params, batch, None)
  causal = batch["decoder_causal_attention"]
  prompt_len = int(causal.sum(axis=1).max())
  logits, state = module.apply(
      {"params": params}, batch["decoder_input_tokens"][:, :prompt_len], None,
      decoder_causal_attention=causal[:, :prompt_len], enable_dropout=False, decode=True,
      prefill=True, max_decode_length=8, mutable=["cache"])
  lengths = causal.sum(axis=1)
  np.testing.assert_array_equal(
      state["cache"]["decoder"]["layers_0"]["self_attention"]["cache_index"], lengths)
  rows = np.arange(2)
  np.testing.assert_allclose(logits[rows, lengths - 1], full[rows, lengths - 1],
                             atol=1e-4, rtol=1e-4)
  cache = state["cache"]
  step = _jit(lambda cache, token: module.apply(
      {"params": params, "cache": cache}, token, None, enable_dropout=False, decode=True,
      max_decode_length=8, mutable=["cache"]))
  for s in range(3):
    step_logits, state = step(cache, batch["decoder_input_tokens"][rows, lengths + s][:, None])
    cache = state["cache"]
    np.testing.assert_allclose(step_logits[:, 0], full[rows, lengths + s],
                               atol=1e-4, rtol=1e-4)


def test_cached_step_rejects_multiple_tokens(t5_setup):
  model, params, batch = t5_setup
  module = model.module
  encoded = module.apply({"params": params}, batch["encoder_input_tokens"],
                         enable_dropout=False, method=module.encode)
  args = (encoded, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
          batch["decoder_target_tokens"])
  _, state = module.apply({"params": params}, *args, enable_dropout=False, decode=True,
                          mutable=["cache"], method=module.decode)
  with pytest.raises(ValueError, match="one new token per call"):
    module.apply({"params": params, **state}, *args, enable_dropout=False, decode=True,
                 max_decode_length=6, mutable=["cache"], method=module.decode)


# --- loss and scores -----------------------------------------------------------------


def test_loss_metrics_are_consistent(t5_setup):
  model, params, batch = t5_setup
  loss, metrics = model.loss_fn(params, batch, None)
  logits = model._logits(params, batch, None)
  weights = batch["decoder_loss_weights"]
  log_probs = jax.nn.log_softmax(logits)
  token_ll = np.take_along_axis(np.asarray(log_probs), batch["decoder_target_tokens"][..., None],
                                axis=-1)[..., 0]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  expected_z = float(np.sum(1e-4 * np.square(log_z) * weights))
  assert float(metrics["loss"]) == pytest.approx(float(loss))
  assert float(metrics["z_loss"]) == pytest.approx(expected_z, rel=1e-4)
  assert float(metrics["cross_ent_loss"]) == pytest.approx(-np.sum(token_ll * weights),
                                                           rel=1e-5)
  assert float(loss) == pytest.approx(float(metrics["cross_ent_loss"] + metrics["z_loss"]),
                                      rel=1e-6)
  assert float(metrics["num_tokens"]) == weights.sum() == 10
  assert float(metrics["num_examples"]) == 2
  assert 0 <= float(metrics["correct_tokens"]) <= 10
  assert all(v.dtype == jnp.float32 and v.shape == () for v in metrics.values())
  scores = model.score_batch(params, batch)
  assert scores.shape == (2,)
  np.testing.assert_allclose(scores, np.sum(token_ll * weights, axis=-1), rtol=1e-5)
  np.testing.assert_allclose(-scores.sum(), metrics["cross_ent_loss"], rtol=1e-5)

  grads = _jit(jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(3))[0]))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_loss_normalizing_factor_and_override(t5_setup):
  _, params, batch = t5_setup
  model = _t5_model()
  model.loss_normalizing_factor = "NUM_REAL_TARGET_TOKENS"
  loss, metrics = model.loss_fn(params, batch, None)
  plain, plain_metrics = model.loss_fn(params, batch, None,
                                       model.loss_weights(batch, normalize=False))
  assert float(loss) == pytest.approx(float(plain) / 10, rel=1e-5)
  # Metric token counts never depend on the normalisation.
  assert float(metrics["num_tokens"]) == float(plain_metrics["num_tokens"]) == 10


@pytest.mark.parametrize("factor", [None, 7.0, "NUM_REAL_TARGET_TOKENS",
                                    "NUM_TOTAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE"])
def test_sliced_loss_weights_add_up_to_the_whole_batch(t5_setup, factor):
  """The microbatching contract: whole-batch weights, sliced with the batch, sum exactly."""
  _, params, _ = t5_setup
  model = _t5_model()
  model.loss_normalizing_factor = factor
  batch = _encdec_batch(seed=1, batch=4)
  batch["decoder_loss_weights"][2] = 0  # a row without weighted tokens
  weights = model.loss_weights(batch)
  assert isinstance(weights, api.LossWeights)
  value_and_grad = _jit(jax.value_and_grad(model.loss_fn, has_aux=True))
  (loss, metrics), grads = value_and_grad(params, batch, None, weights)
  (default_loss, _), _ = value_and_grad(params, batch, None)
  assert float(default_loss) == pytest.approx(float(loss), rel=1e-6)
  halves = [jax.tree.map(lambda x, rows=rows: x[rows], (batch, weights))
            for rows in (slice(0, 2), slice(2, 4))]
  parts = [value_and_grad(params, b, None, w) for b, w in halves]
  np.testing.assert_allclose(sum(p[0][0] for p in parts), loss, rtol=1e-5)
  for name in metrics:
    np.testing.assert_allclose(sum(p[0][1][name] for p in parts), metrics[name], rtol=1e-5,
                               atol=1e-6)
  jax.tree.map(lambda a, b, g: np.testing.assert_allclose(a + b, g, rtol=1e-4, atol=1e-7),
               parts[0][1], parts[1][1], grads)
  # Raw weights sum the token losses whatever the factor (evaluation's numbers).
  summed, summed_metrics = model.loss_fn(params, batch, None,
                                         model.loss_weights(batch, normalize=False))
  plain = _t5_model().loss_fn(params, batch, None)[0]
  assert float(summed) == pytest.approx(float(plain), rel=1e-6)
  assert float(summed_metrics["num_tokens"]) == float(metrics["num_tokens"]) == np.sum(
      batch["decoder_loss_weights"] > 0)
  assert float(metrics["num_examples"]) == 3


def test_dropout_needs_rng_and_changes_loss(t5_setup):
  _, params, batch = t5_setup
  params = _one_layer(params)
  model = _t5_model(dropout_rate=0.3, **ONE_LAYER)
  deterministic = model.loss_fn(params, batch, None)[0]
  assert float(deterministic) == pytest.approx(
      float(_t5_model(**ONE_LAYER).loss_fn(params, batch, None)[0]))
  dropped = _jit(lambda rng: model.loss_fn(params, batch, rng)[0])(jax.random.PRNGKey(0))
  assert float(dropped) != pytest.approx(float(deterministic))


def test_feature_converters_give_each_family_its_model_features():
  """Which features reach each network: what a user's task must provide and what packs."""
  lengths = {"inputs": 6, "targets": 4}

  def features(model, pack):
    return set(model.feature_converter(pack=pack).get_model_feature_lengths(lengths))

  assert features(_t5_model(), pack=True) == {
      "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
      "decoder_segment_ids", "decoder_positions"}
  # Decoder-only models see one concatenated sequence; decoder_causal_attention marks the
  # prompt (decoding continues after it; a prefix LM also attends over it bidirectionally).
  decoder_features = {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                      "decoder_causal_attention"}
  assert features(_decoder_model(), pack=False) == decoder_features
  assert features(_decoder_model(prefix=True), pack=False) == decoder_features


# --- prefix LM masking ---------------------------------------------------------------


def test_prefix_lm_sees_later_inputs_causal_lm_does_not(decoder_setup):
  _, params, batch = decoder_setup
  changed = {k: np.array(v) for k, v in batch.items()}
  changed["decoder_input_tokens"][0, 3] = (changed["decoder_input_tokens"][0, 3] % 250) + 1
  for prefix in (True, False):
    model = _decoder_model(prefix=prefix)
    before = model._logits(params, batch, None)
    after = model._logits(params, changed, None)
    earlier_changed = not np.allclose(before[0, :3], after[0, :3], atol=1e-6)
    assert earlier_changed == prefix
    # Targets part is causal either way, and other rows never see row 0.
    np.testing.assert_allclose(before[1], after[1], atol=1e-6)
    assert not np.allclose(before[0, 3:], after[0, 3:])


# --- remat and dtypes ----------------------------------------------------------------


def _one_layer(params):
  """The tiny T5 params cut to one layer per stack (smaller graphs compile faster)."""
  return {k: ({n: v for n, v in sub.items() if n != "layers_1"} if k != "token_embedder"
              else sub) for k, sub in params.items()}


ONE_LAYER = dict(num_encoder_layers=1, num_decoder_layers=1)


def test_remat_policies_match_no_remat(t5_setup):
  _, params, batch = t5_setup
  params = _one_layer(params)

  def loss_and_grads(m):
    return _jit(jax.value_and_grad(lambda p: m.loss_fn(p, batch, None)[0]))(params)

  ref_loss, ref_grads = loss_and_grads(_t5_model(**ONE_LAYER))
  for policy in ("full", "minimal"):
    loss, grads = loss_and_grads(_t5_model(remat_policy=policy, **ONE_LAYER))
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6), policy
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                 grads, ref_grads)


def test_remat_policy_is_validated():
  with pytest.raises(ValueError, match="remat_policy"):
    t5.T5Config(**{**TINY_T5, "remat_policy": "sometimes"})


def test_bfloat16_activations_give_float32_logits(t5_setup, decoder_setup):
  _, params, batch = t5_setup
  model = _t5_model(dtype="bfloat16")
  loss, logits = _jit(lambda p: (model.loss_fn(p, batch, None)[0],
                                    model._logits(p, batch, None)))(params)
  assert logits.dtype == jnp.float32 and np.isfinite(float(loss))
  ref = t5_setup[0]._logits(params, batch, None)
  assert float(jnp.mean(jnp.abs(logits - ref))) < 0.1 * float(jnp.mean(jnp.abs(ref)))
  _, dparams, dbatch = decoder_setup
  dec = _decoder_model(prefix=True, dtype="bfloat16")
  assert _jit(dec._logits)(dparams, dbatch, None).dtype == jnp.float32


# --- gin configs ---------------------------------------------------------------------

# Published T5 v1.1 dimensions: emb, heads, layers (each stack), mlp.
PUBLISHED = {"small": (512, 6, 8, 1024), "base": (768, 12, 12, 2048),
             "large": (1024, 16, 24, 2816), "xl": (2048, 32, 24, 5120),
             "xxl": (4096, 64, 24, 10240), "tiny": (32, 4, 2, 64)}
# models/llama/* (tokenizer paths to set, other macros) are checked by tests/test_llama.py.
MODEL_GINS = sorted(os.path.relpath(p, gin_configs.ROOT)
                    for p in glob.glob(os.path.join(gin_configs.ROOT, "models", "*", "*.gin"))
                    if os.path.basename(os.path.dirname(p)) != "llama")


def test_all_model_gins_present():
  expected = {f"models/t5_1_1/{s}.gin" for s in PUBLISHED}
  expected |= {f"models/flan_t5/{s}.gin" for s in PUBLISHED if s != "tiny"}
  expected |= {f"models/decoder_only/{s}.gin" for s in ("tiny", "small", "base")}
  assert expected <= set(MODEL_GINS)


@pytest.mark.parametrize("gin_file", MODEL_GINS)
def test_model_gin_parses(gin_file):
  gin.clear_config(clear_constants=True)
  gin.add_config_file_search_path(gin_configs.ROOT)
  try:
    gin.parse_config_files_and_bindings([gin_file], [], skip_unknown=False)
    macros = {name: gin.query_parameter(f"{name}/macro.value") for name in (
        "MODEL", "VOCABULARY", "OPTIMIZER", "Z_LOSS", "LABEL_SMOOTHING",
        "LOSS_NORMALIZING_FACTOR", "DROPOUT_RATE", "ACTIVATION_DTYPE")}
    assert macros["Z_LOSS"] == 1e-4 and macros["LABEL_SMOOTHING"] == 0.0
    assert macros["LOSS_NORMALIZING_FACTOR"] is None and macros["DROPOUT_RATE"] == 0.0
    assert macros["ACTIVATION_DTYPE"] == "bfloat16"
    size = os.path.splitext(os.path.basename(gin_file))[0]
    if "decoder_only" in gin_file:
      assert gin.query_parameter("decoder.DecoderConfig.vocab_size") == (
          VOCAB if size == "tiny" else 32128)
    else:
      emb, heads, num_layers, mlp = PUBLISHED[size]
      query = lambda field: gin.query_parameter(f"t5.T5Config.{field}")
      assert (query("emb_dim"), query("num_heads"), query("num_encoder_layers"),
              query("num_decoder_layers"), query("mlp_dim")) == (emb, heads, num_layers,
                                                                 num_layers, mlp)
      assert query("head_dim") == (8 if size == "tiny" else 64)
      assert query("vocab_size") == (VOCAB if size == "tiny" else 32128)
      assert query("mlp_activations") == ("gelu", "linear")
    if size == "tiny":
      model = macros["MODEL"].scoped_configurable_fn()
      assert isinstance(model.input_vocabulary, seqio.ByteVocabulary)
      assert model.input_vocabulary.vocab_size <= VOCAB
      assert macros["OPTIMIZER"] == "adafactor"
      if isinstance(model, encoder_decoder.EncoderDecoderModel):
        shapes = _input_shapes(_encdec_batch())
      else:
        shapes = {"decoder_input_tokens": (2, 8), "decoder_target_tokens": (2, 8)}
      abstract = jax.eval_shape(functools.partial(model.init_params, input_shapes=shapes),
                                jax.random.PRNGKey(0))
      assert _flat_shapes(abstract)
  finally:
    gin.clear_config(clear_constants=True)


@pytest.mark.parametrize("family", ["decoder", "llama"])
def test_logits_positions_are_those_positions_of_the_full_logits(decoder_setup, family):
  """Decoding asks for a prompt's last position only; the LM head then runs on it alone."""
  _, params, batch = decoder_setup
  if family == "llama":
    model = factories.tiny_llama()
    params = _init(model, _input_shapes(batch))
  else:
    model = decoder_setup[0]
  inputs = (batch["decoder_input_tokens"], batch["decoder_target_tokens"])
  causal = batch["decoder_causal_attention"]
  positions = jnp.asarray([3, 6], jnp.int32)
  full = model.module.apply({"params": params}, *inputs, decoder_causal_attention=causal,
                            enable_dropout=False)
  picked = model.module.apply({"params": params}, *inputs, decoder_causal_attention=causal,
                              enable_dropout=False, logits_positions=positions)
  assert picked.shape == (2, 1, full.shape[-1])
  np.testing.assert_allclose(picked[:, 0], api.at_positions(full, positions), rtol=1e-5,
                             atol=1e-5)
