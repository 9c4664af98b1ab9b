"""SentencePiece vocabularies bound in model gins (seqio.SentencePieceVocabulary).

A small SentencePiece model is trained in a fixture on generated text, bound in
a tiny model gin exactly as the real model gins bind the public T5 vocabulary,
and used end to end: tokenising a seqio task, feeding the model, decoding.
"""
import io
import os

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import seqio
import sentencepiece
import tensorflow as tf
import wordfreq

from instruct_jax.cli import gin_setup
from instruct_jax.data import pipeline

PUBLIC_T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
PIECES = 256
EXTRA_IDS = 10


def _sentences(count, seed):
  rng = np.random.default_rng(seed)
  words = wordfreq.top_n_list("en", 800)
  return [" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(count)]


@pytest.fixture(scope="module")
def sentencepiece_file(tmp_path_factory):
  """A unigram model with T5's special ids: pad 0, eos 1, unk 2, no bos."""
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(_sentences(2000, seed=0)), model_writer=model,
      vocab_size=PIECES, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0, num_threads=1, minloglevel=2)
  path = tmp_path_factory.mktemp("vocab") / "sentencepiece.model"
  path.write_bytes(model.getvalue())
  return str(path)


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _model_from_gin(gin_text, tmp_path, bindings=()):
  gin_file = tmp_path / "model.gin"
  gin_file.write_text(gin_text)
  gin_setup.parse_gin([str(gin_file)], list(bindings))
  return gin_setup.build_macro("MODEL", "a model gin")


def _tiny_gin(vocabulary_path):
  return f"""
include 'models/t5_1_1/tiny.gin'

from __gin__ import dynamic_registration
import seqio

VOCABULARY = @seqio.SentencePieceVocabulary()
seqio.SentencePieceVocabulary.sentencepiece_model_file = '{vocabulary_path}'
seqio.SentencePieceVocabulary.extra_ids = {EXTRA_IDS}
"""


def test_gin_bound_vocabulary_trains_a_tiny_model(sentencepiece_file, tmp_path, clean_gin):
  model = _model_from_gin(_tiny_gin(sentencepiece_file), tmp_path,
                          ["ACTIVATION_DTYPE = 'float32'"])
  vocab = model.output_vocabulary
  assert isinstance(vocab, seqio.SentencePieceVocabulary)
  assert model.input_vocabulary.sentencepiece_model_file == sentencepiece_file
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.vocab_size == PIECES + EXTRA_IDS <= model.module.config.vocab_size
  text = _sentences(1, seed=7)[0]
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text and max(ids) < PIECES

  task_name = "test_vocabulary_sentencepiece_task"
  inputs, targets = _sentences(16, seed=1), _sentences(16, seed=2)
  seqio.TaskRegistry.add(
      task_name,
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": inputs, "targets": targets}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)})
  try:
    cfg = pipeline.DatasetConfig(
        mixture_or_task_name=task_name, task_feature_lengths={"inputs": 64, "targets": 64},
        split="train", batch_size=8, shuffle=False, seed=0)
    dataset = pipeline.get_dataset(cfg, 0, 1, model.feature_converter(pack=False),
                                   repeat=False)
    batch = next(iter(dataset.as_numpy_iterator()))
  finally:
    seqio.TaskRegistry.remove(task_name)

  assert vocab.decode(batch["decoder_target_tokens"][0].tolist()) == targets[0]
  assert vocab.decode(batch["encoder_input_tokens"][1].tolist()) == inputs[1]
  shapes = {k: v.shape for k, v in batch.items()}
  params = nn.meta.unbox(jax.jit(lambda rng: model.init_params(rng, shapes))(jax.random.key(0)))
  loss, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, None))(params, batch)
  assert np.isfinite(float(loss)) and float(metrics["num_tokens"]) > 0


def test_vocabulary_file_is_read_through_gfile(sentencepiece_file, tmp_path, clean_gin):
  """seqio reads the model file with tf.io.gfile, so remote URLs (gs://) work like this one."""
  remote = "ram://instruct_jax_test/sentencepiece.model"
  with open(sentencepiece_file, "rb") as src, tf.io.gfile.GFile(remote, "wb") as dst:
    dst.write(src.read())
  model = _model_from_gin(_tiny_gin(remote), tmp_path)
  local = seqio.SentencePieceVocabulary(sentencepiece_file, extra_ids=EXTRA_IDS)
  text = "the model reads its vocabulary through gfile"
  assert model.output_vocabulary.encode(text) == local.encode(text)


@pytest.mark.parametrize("gin_file", ["models/flan_t5/base.gin", "models/t5_1_1/xxl.gin"])
def test_real_model_gins_default_to_the_public_t5_vocabulary(gin_file, tmp_path, clean_gin):
  """Parsing a real model gin and building its MODEL reads no vocabulary file (no network)."""
  model = _model_from_gin(f"include '{gin_file}'\n", tmp_path)
  vocab = model.output_vocabulary
  assert isinstance(vocab, seqio.SentencePieceVocabulary)
  assert vocab.sentencepiece_model_file == PUBLIC_T5_VOCABULARY
  assert model.module.config.vocab_size == 32128
  assert gin.query_parameter("seqio.SentencePieceVocabulary.sentencepiece_model_file") == (
      PUBLIC_T5_VOCABULARY)
  assert not os.path.exists(PUBLIC_T5_VOCABULARY)
