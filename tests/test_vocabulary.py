"""SentencePiece vocabularies bound in model gins (seqio.SentencePieceVocabulary).

A small SentencePiece model is trained in a fixture on generated text, bound in
a tiny model gin exactly as the real model gins bind the public T5 vocabulary,
and used end to end: tokenising a seqio task, feeding the model, decoding. A
Llama 2 / Mistral style model (BPE with byte fallback, unk 0, bos 1, eos 2) does
the same for the decoder-only model.
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
import factories

PUBLIC_T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
PIECES = 256
EXTRA_IDS = 10
LLAMA_STYLE_PIECES = 400


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

  inputs, targets = _sentences(16, seed=1), _sentences(16, seed=2)
  batch = factories.first_task_batch(model, inputs, targets,
                                    task_name="test_vocabulary_sentencepiece_task")
  assert vocab.decode(batch["decoder_target_tokens"][0].tolist()) == targets[0]
  assert vocab.decode(batch["encoder_input_tokens"][1].tolist()) == inputs[1]
  _assert_finite_loss(model, batch)


def _assert_finite_loss(model, batch):
  shapes = {k: v.shape for k, v in batch.items()}
  params = nn.meta.unbox(jax.jit(lambda rng: model.init_params(rng, shapes))(jax.random.key(0)))
  loss, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, None))(params, batch)
  assert np.isfinite(float(loss)) and float(metrics["num_tokens"]) > 0


@pytest.fixture(scope="module")
def llama_style_sentencepiece_file(tmp_path_factory):
  """BPE with byte fallback and Llama 2 / Mistral's ids: unk 0, bos 1, eos 2, no pad."""
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(_sentences(2000, seed=0)), model_writer=model,
      vocab_size=LLAMA_STYLE_PIECES, model_type="bpe", byte_fallback=True, unk_id=0,
      bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2)
  path = tmp_path_factory.mktemp("llama_style") / "tokenizer.model"
  path.write_bytes(model.getvalue())
  return str(path)


def test_llama_style_sentencepiece_feeds_the_decoder_only_model(
    llama_style_sentencepiece_file, tmp_path, clean_gin):
  """seqio's padding id 0 is Llama 2's <unk>, which never carries text with byte fallback."""
  model = _model_from_gin(f"""
include 'models/decoder_only/tiny.gin'

from __gin__ import dynamic_registration
import seqio

VOCABULARY = @seqio.SentencePieceVocabulary()
seqio.SentencePieceVocabulary.sentencepiece_model_file = '{llama_style_sentencepiece_file}'
""", tmp_path, ["ACTIVATION_DTYPE = 'float32'", "decoder.DecoderConfig.vocab_size = 512"])
  vocab = model.output_vocabulary
  assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 0, 1, 2)
  assert vocab.vocab_size == LLAMA_STYLE_PIECES <= model.module.config.vocab_size
  unseen = "naïve 🙂 — 東京"  # characters the training text lacks: byte fallback pieces
  ids = vocab.encode(unseen)
  assert vocab.unk_id not in ids and vocab.decode(ids) == unseen
  assert vocab.decode(ids + [vocab.eos_id, 5]) == unseen
  assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == unseen

  inputs, targets = _sentences(8, seed=3), [t + " 🙂" for t in _sentences(8, seed=4)]
  batch = factories.first_task_batch(model, inputs, targets,
                                    task_name="test_vocabulary_sentencepiece_task")
  prompt = vocab.encode(inputs[0]) + [vocab.eos_id]
  answer = vocab.encode(targets[0]) + [vocab.eos_id]
  tokens = batch["decoder_target_tokens"][0]
  assert tokens[:len(prompt) + len(answer)].tolist() == prompt + answer
  assert batch["decoder_loss_weights"][0].sum() == len(answer)
  assert vocab.decode(tokens[len(prompt):].tolist()) == targets[0]
  _assert_finite_loss(model, batch)


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
