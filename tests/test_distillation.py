"""Distillation model: KL against sparse teacher rows, objectives, feature converter."""
import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

import factories
from instruct_jax.errors import UsageError
from instruct_jax.models import distillation
from instruct_jax.models import encoder_decoder
from instruct_jax.models.networks import t5

K = 4
BATCH = 4


def _model(objective=distillation.DISTRIBUTION_MATCHING, **kwargs):
  vocab = seqio.ByteVocabulary()
  config = factories.tiny_t5_config(emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                    num_encoder_layers=1, num_decoder_layers=1)
  return distillation.DistillationModel(t5.Transformer(config), vocab, vocab,
                                        objective=objective, **kwargs)


@pytest.fixture(scope="module")
def params():
  model = _model()
  init = jax.jit(lambda rng: model.init_params(rng, factories.input_shapes(BATCH)))
  return nn.meta.unbox(init(jax.random.PRNGKey(0)))


def _loss_and_grads(model, params, batch):
  return jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)


def _one_hot_teacher(batch):
  targets = batch["decoder_target_tokens"]
  indices = np.zeros(targets.shape + (K,), np.int32)
  probs = np.zeros(targets.shape + (K,), np.float32)
  indices[..., 0] = targets
  probs[..., 0] = 1.0
  return {**batch, "teacher_indices": indices, "teacher_probs": probs}


def _sparse_teacher(batch, seed=1):
  rng = np.random.default_rng(seed)
  targets = batch["decoder_target_tokens"]
  indices = rng.integers(3, 259, size=targets.shape + (K,)).astype(np.int32)
  indices[..., 0] = targets
  probs = rng.dirichlet(np.ones(K + 1), size=targets.shape)[..., :K].astype(np.float32)
  probs[..., -1] = 0.0  # an unused slot, as when fewer alternatives map to the student
  return {**batch, "teacher_indices": indices, "teacher_probs": probs}


@pytest.mark.parametrize("factor", [None, "NUM_REAL_TARGET_TOKENS"])
def test_kl_with_one_hot_teacher_equals_nll(params, factor):
  batch = _one_hot_teacher(factories.synthetic_batch(BATCH))
  distil = _model(loss_normalizing_factor=factor)
  plain = encoder_decoder.EncoderDecoderModel(distil.module, distil.input_vocabulary,
                                              distil.output_vocabulary,
                                              loss_normalizing_factor=factor)
  both = jax.jit(lambda p, b: (_loss_and_grads(distil, p, b), _loss_and_grads(plain, p, b)))
  ((loss, metrics), grads), ((ref_loss, ref_metrics), ref_grads) = both(params, batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for name in ("z_loss", "cross_ent_loss", "correct_tokens", "num_tokens", "num_examples"):
    np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, atol=1e-6)
  for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)


def test_kl_value_gradients_and_masking(params):
  model = _model(z_loss=0.0)
  batch = _sparse_teacher(factories.synthetic_batch(BATCH))
  step = jax.jit(lambda p, b: (_loss_and_grads(model, p, b),
                               model._logits(p, b, None)))  # pylint: disable=protected-access
  ((loss, metrics), grads), logits = step(params, batch)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # Reference: sum over weighted positions of sum_k p (log p - log q).
  log_q = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  p, idx = batch["teacher_probs"], batch["teacher_indices"]
  log_q_top = np.take_along_axis(log_q, idx, axis=-1)
  per_entry = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q_top), 0.0)
  expected = (per_entry.sum(-1) * batch["decoder_loss_weights"]).sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics["cross_ent_loss"]) == pytest.approx(float(loss))
  # Positions with zero loss weight (padding) do not count, whatever their teacher rows hold.
  garbage = dict(batch)
  pad = batch["decoder_loss_weights"] == 0
  garbage["teacher_probs"] = np.where(pad[..., None], 0.7, batch["teacher_probs"])
  garbage["teacher_indices"] = np.where(pad[..., None], 5, batch["teacher_indices"])
  np.testing.assert_allclose(step(params, garbage)[0][0][0], loss, rtol=1e-6)


def test_sample_matching_is_the_plain_loss_and_may_pack(params):
  batch = _sparse_teacher(factories.synthetic_batch(BATCH))
  sample = _model(distillation.SAMPLE_MATCHING)
  plain = encoder_decoder.EncoderDecoderModel(sample.module, sample.input_vocabulary,
                                              sample.output_vocabulary)
  both = jax.jit(lambda p, b: (sample.loss_fn(p, b, None)[0], plain.loss_fn(p, b, None)[0]))
  np.testing.assert_allclose(*both(params, batch), rtol=1e-6)
  assert type(sample.feature_converter(pack=True)) is seqio.EncDecFeatureConverter
  with pytest.raises(UsageError, match="objective"):
    _model("forward_kl")


def test_distribution_matching_refuses_packing_and_missing_features(params):
  with pytest.raises(UsageError, match="PACKING = False"):
    _model().feature_converter(pack=True)
  with pytest.raises(ValueError, match="teacher_indices"):
    _model().loss_fn(params, factories.synthetic_batch(BATCH), None)


def _task_dataset():
  rows = [([5, 6, 7, 1], [[5, 9], [6, 0], [7, 0], [1, 0]], [[0.6, 0.3], [1, 0], [1, 0], [1, 0]]),
          ([8, 1], [[8, 0], [1, 0]], [[1, 0], [1, 0]])]

  def gen():
    for targets, indices, probs in rows:
      yield {"inputs": np.asarray([3, 4, 1], np.int32), "targets": np.asarray(targets, np.int32),
             "teacher_indices": np.asarray(indices, np.int32),
             "teacher_probs": np.asarray(probs, np.float32)}

  return tf.data.Dataset.from_generator(gen, output_signature={
      "inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32),
      "teacher_indices": tf.TensorSpec([None, 2], tf.int32),
      "teacher_probs": tf.TensorSpec([None, 2], tf.float32)})


def test_feature_converter_pads_teacher_rows_with_the_targets():
  converter = distillation.DistillationFeatureConverter(pack=False)
  lengths = {"inputs": 5, "targets": 6}
  assert converter.get_model_feature_lengths(lengths)["teacher_probs"] == 6
  first, second = list(converter(_task_dataset(), lengths).as_numpy_iterator())
  assert first["teacher_indices"].shape == first["teacher_probs"].shape == (6, 2)
  np.testing.assert_array_equal(first["decoder_target_tokens"], [5, 6, 7, 1, 0, 0])
  np.testing.assert_array_equal(first["decoder_input_tokens"], [0, 5, 6, 7, 1, 0])
  np.testing.assert_array_equal(first["teacher_indices"][:, 0], [5, 6, 7, 1, 0, 0])
  np.testing.assert_allclose(first["teacher_probs"][0], [0.6, 0.3])
  np.testing.assert_array_equal(second["teacher_probs"][2:], 0.0)
  # Datasets without a teacher (evaluation tasks) convert as plain seq2seq data.
  plain = _task_dataset().map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
  converted = next(converter(plain, lengths).as_numpy_iterator())
  assert "teacher_indices" not in converted
  np.testing.assert_array_equal(converted["decoder_target_tokens"], [5, 6, 7, 1, 0, 0])


@pytest.mark.parametrize("gin_file, objective", [
    ("experiments/cot/distill.gin", distillation.DISTRIBUTION_MATCHING),
    ("experiments/cot/sample_matching.gin", distillation.SAMPLE_MATCHING),
    ("experiments/cot/gsm8k_formats.gin", None),
])
def test_experiment_gins_parse_with_the_reference_hyperparameters(gin_file, objective):
  import gin  # pylint: disable=g-import-not-at-top
  from instruct_jax.cli import gin_setup  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_setup.parse_gin(["models/t5_1_1/tiny.gin", gin_file],
                  ["MODEL_DIR='/tmp/unused'", "TEACHER_FILE='/tmp/unused.jsonl'",
                   "INITIAL_CHECKPOINT_PATH=None"])
    assert gin.query_parameter("optimizers.learning_rate_schedule.name") == "cosine"
    assert gin.query_parameter("LEARNING_RATE/macro.value") == 5e-4
    assert gin.query_parameter("OPTIMIZER/macro.value") == "adamw"
    assert gin.query_parameter("optimizers.adamw.weight_decay") is not None
    assert gin.query_parameter("PACKING/macro.value") is False
    if objective:
      assert gin.query_parameter("DISTILLATION_OBJECTIVE/macro.value") == objective
  finally:
    gin.clear_config()
