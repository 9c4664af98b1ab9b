"""HuggingFaceTokenizerVocabulary: a seqio vocabulary over a `tokenizers` JSON file.

A small byte-level BPE with Llama 3's special tokens is trained in a fixture and
saved as tokenizer.json; the vocabulary must give the ids `tokenizers` gives
(shifted by one: its id 0 is "!" as in Llama 3, and seqio keeps 0 for padding),
in Python and in tf.data, and work in a seqio Task feeding the decoder-only model.
"""
import copy
import pickle
import shutil

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

from instruct_jax.cli import gin_setup
from instruct_jax.data.hf_tokenizer_vocabulary import HuggingFaceTokenizerVocabulary
from instruct_jax.errors import UsageError
import factories

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
BPE_SIZE = 400

_WORDS = ("the model reads a tokenizer file and every word becomes ids again "
          "naïve café résumé Übermäßig straße привет мир γειά σου 東京 日本語 "
          "안녕하세요 مرحبا שלום").split()
_SYMBOLS = ["!", "?", "...", "!!", "(", ")", "-", "'s", '"', "42", "3.14", "#", "@", "\\"]
_EMOJI = ["🙂", "👍🏽", "👩‍💻", "🇯🇵", "🎉🎉", "❤️"]
_SPACES = [" ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\r\n", "\u00a0", "\u3000"]


def _texts(count, seed):
  """Text with unicode, emoji, punctuation and runs of whitespace, seeded."""
  rng = np.random.default_rng(seed)
  pools = [_WORDS] * 6 + [_SYMBOLS, _EMOJI]
  texts = []
  for _ in range(count):
    pieces = []
    for _ in range(rng.integers(1, 14)):
      pool = pools[rng.integers(len(pools))]
      pieces += [pool[rng.integers(len(pool))], _SPACES[rng.integers(len(_SPACES))]]
    texts.append("".join(pieces[:-1] if rng.random() < 0.7 else pieces))
  return texts


def _train_bpe(special_tokens_first=()):
  """A byte-level BPE like Llama 3's: byte alphabet first, so id 0 is "!"."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=BPE_SIZE, special_tokens=list(special_tokens_first),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tokenizer.train_from_iterator(_texts(500, seed=0), trainer=trainer)
  tokenizer.add_special_tokens([BOS, EOS, "<|reserved_special_token_0|>", EOT])
  return tokenizer


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  return _train_bpe()


@pytest.fixture(scope="module")
def tokenizer_dir(bpe, tmp_path_factory):
  """tokenizer.json plus the tokenizer_config.json naming BOS/EOS, as a model download has."""
  directory = tmp_path_factory.mktemp("llama3_style")
  bpe.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(
      f'{{"bos_token": "{BOS}", "eos_token": {{"content": "{EOS}"}}}}')
  return directory


@pytest.fixture(scope="module")
def vocab(tokenizer_dir):
  return HuggingFaceTokenizerVocabulary(str(tokenizer_dir))


def test_encode_and_decode_match_tokenizers(bpe, vocab):
  assert bpe.id_to_token(0) == "!"  # Llama 3's id 0 is a real token too
  assert vocab.id_offset == 1 and vocab.pad_id == 0
  assert vocab.eos_id == bpe.token_to_id(EOS) + 1 and vocab.bos_id == bpe.token_to_id(BOS) + 1
  assert vocab.unk_id is None
  assert vocab.vocab_size == bpe.get_vocab_size() + 1
  for text in _texts(300, seed=1) + ["", "!", "!!!", "   ", "\n\n\n", "a  b\t\tc"]:
    expected = bpe.encode(text, add_special_tokens=False).ids
    ids = vocab.encode(text)
    assert ids == [i + 1 for i in expected], text
    assert vocab.decode(ids) == bpe.decode(expected) == text


def test_decode_stops_at_eos_and_drops_padding_and_special_tokens(vocab):
  text = "hello  world!\n🙂"
  ids = vocab.encode(text)
  assert 0 not in ids and vocab.encode("!") == [1]
  assert vocab.decode(ids + [vocab.eos_id] + vocab.encode("after eos")) == text
  assert vocab.decode([vocab.bos_id] + ids + [0, 0, 0]) == text
  assert vocab.decode(ids + vocab.encode(EOT)) == text
  # Ids past the tokenizer (rows the model's embedding rounds up to) carry no text.
  assert vocab.decode(ids + [vocab.vocab_size, vocab.vocab_size + 50]) == text
  assert vocab.decode([]) == ""


def test_tf_encode_and_decode_match_python(vocab):
  texts = _texts(24, seed=2) + [""]
  expected = [vocab.encode(t) for t in texts]
  dataset = tf.data.Dataset.from_tensor_slices(texts).map(vocab.encode_tf)
  assert dataset.element_spec == tf.TensorSpec([None], tf.int32)
  assert [ids.tolist() for ids in dataset.as_numpy_iterator()] == expected

  batched = vocab.encode_tf(tf.constant(texts))
  assert isinstance(batched, tf.RaggedTensor) and batched.to_list() == expected
  assert vocab.encode_tf(tf.constant([texts[:2], texts[2:4]])).to_list() == [
      expected[:2], expected[2:4]]

  with_eos = [ids + [vocab.eos_id, 7] for ids in expected]
  ragged = tf.ragged.constant(with_eos, dtype=tf.int32)
  padded = ragged.to_tensor(default_value=0)
  as_bytes = [t.encode("utf-8") for t in texts]
  assert vocab.decode_tf(ragged).numpy().tolist() == as_bytes
  assert vocab.decode_tf(padded).numpy().tolist() == as_bytes
  assert vocab.decode_tf(tf.reshape(padded, [5, 5, -1])).numpy().reshape(-1).tolist() == as_bytes
  assert vocab.decode_tf(tf.constant(with_eos[0])).numpy() == as_bytes[0]
  nested = tf.ragged.constant([with_eos[:2], with_eos[2:5]], dtype=tf.int32)
  assert vocab.decode_tf(nested).to_list() == [as_bytes[:2], as_bytes[2:5]]
  assert [vocab.decode(ids) for ids in padded.numpy().tolist()] == texts


def test_add_bos_and_explicit_special_tokens(tokenizer_dir, bpe):
  json_only = tokenizer_dir.parent / "json_only"
  json_only.mkdir()
  shutil.copy(tokenizer_dir / "tokenizer.json", json_only / "tokenizer.json")
  vocab = HuggingFaceTokenizerVocabulary(str(json_only / "tokenizer.json"), eos_token=EOT,
                                         bos_token=BOS, add_bos=True)
  assert vocab.eos_id == bpe.token_to_id(EOT) + 1
  ids = vocab.encode("two words")
  assert ids[0] == vocab.bos_id and vocab.decode(ids) == "two words"
  assert vocab.encode_tf(tf.constant("two words")).numpy().tolist() == ids

  with pytest.raises(UsageError, match="eos_token"):
    _ = HuggingFaceTokenizerVocabulary(str(json_only)).eos_id
  with pytest.raises(UsageError, match="not in"):
    _ = HuggingFaceTokenizerVocabulary(str(json_only), eos_token="</s>").eos_id


def test_textless_special_token_at_id_zero_keeps_the_tokenizer_ids(tmp_path):
  bpe = _train_bpe(special_tokens_first=["<pad>"])
  bpe.save(str(tmp_path / "tokenizer.json"))
  vocab = HuggingFaceTokenizerVocabulary(str(tmp_path), eos_token=EOS)
  assert vocab.id_offset == 0 and vocab.eos_id == bpe.token_to_id(EOS)
  for text in _texts(50, seed=3):
    assert vocab.encode(text) == bpe.encode(text, add_special_tokens=False).ids
    assert vocab.decode(vocab.encode(text) + [0, 0]) == text


def test_extra_ids_are_numbered_down_from_the_top(tokenizer_dir, vocab):
  with_extra = HuggingFaceTokenizerVocabulary(str(tokenizer_dir), extra_ids=3)
  assert with_extra.vocab_size == vocab.vocab_size + 3
  top = with_extra.vocab_size - 1
  assert with_extra.encode("a<extra_id_0>b") == vocab.encode("a") + [top] + vocab.encode("b")
  assert with_extra.encode("<extra_id_2>") == [top - 2]
  assert with_extra.tokenizer.decode([top - 1 - with_extra.id_offset]) == "<extra_id_1>"
  assert with_extra != vocab


def test_pickle_copy_and_equality(tokenizer_dir, vocab, tmp_path):
  unloaded = HuggingFaceTokenizerVocabulary(str(tokenizer_dir))
  for original in (unloaded, vocab):  # gin deep-copies unread ones, Beam pickles read ones
    restored = pickle.loads(pickle.dumps(original))
    assert restored == vocab and copy.deepcopy(original) == vocab
    assert restored.encode("copied 🙂 vocab!") == vocab.encode("copied 🙂 vocab!")

  moved = tmp_path / "elsewhere.json"
  shutil.copy(tokenizer_dir / "tokenizer.json", moved)
  assert HuggingFaceTokenizerVocabulary(str(moved), eos_token=EOS, bos_token=BOS) == vocab
  assert HuggingFaceTokenizerVocabulary(str(moved), eos_token=EOS) != vocab  # no BOS
  retrained = tmp_path / "other"
  retrained.mkdir()
  _train_bpe(special_tokens_first=["<pad>"]).save(str(retrained / "tokenizer.json"))
  assert HuggingFaceTokenizerVocabulary(str(retrained), eos_token=EOS, bos_token=BOS) != vocab
  assert vocab != seqio.ByteVocabulary()


def test_missing_or_malformed_file_names_the_expected_file(tmp_path):
  missing = HuggingFaceTokenizerVocabulary(str(tmp_path))  # construction reads nothing
  with pytest.raises(UsageError, match=f"No Hugging Face tokenizer file at {tmp_path}/tokenizer.json"):
    missing.encode("text")
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(UsageError, match="not a Hugging Face tokenizers JSON file"):
    _ = HuggingFaceTokenizerVocabulary(str(tmp_path)).vocab_size


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _decoder_gin(tmp_path, tokenizer_path):
  gin_file = tmp_path / "model.gin"
  gin_file.write_text(f"""
include 'models/decoder_only/tiny.gin'

from __gin__ import dynamic_registration
from instruct_jax.data import hf_tokenizer_vocabulary

VOCABULARY = @hf_tokenizer_vocabulary.HuggingFaceTokenizerVocabulary()
hf_tokenizer_vocabulary.HuggingFaceTokenizerVocabulary.tokenizer_path = '{tokenizer_path}'
""")
  gin_setup.parse_gin([str(gin_file)], ["ACTIVATION_DTYPE = 'float32'",
                                        "decoder.DecoderConfig.vocab_size = 512"])
  return gin_setup.build_macro("MODEL", "a model gin")


def test_gin_bound_vocabulary_is_read_on_first_use(tmp_path, clean_gin):
  """A model gin naming a remote tokenizer builds without reading it (no network in tests)."""
  model = _decoder_gin(tmp_path, "gs://no-such-bucket/llama3/tokenizer.json")
  assert isinstance(model.output_vocabulary, HuggingFaceTokenizerVocabulary)
  assert model.output_vocabulary.tokenizer_path == "gs://no-such-bucket/llama3/tokenizer.json"
  assert gin.query_parameter(
      "hf_tokenizer_vocabulary.HuggingFaceTokenizerVocabulary.tokenizer_path") == (
          "gs://no-such-bucket/llama3/tokenizer.json")


def test_seqio_task_feeds_the_decoder_only_model(tokenizer_dir, tmp_path, clean_gin):
  model = _decoder_gin(tmp_path, str(tokenizer_dir))
  vocab = model.output_vocabulary
  assert vocab.vocab_size <= model.module.config.vocab_size
  inputs = [f"question {i}: why!" for i in range(8)]
  targets = [t + "!" for t in _texts(8, seed=4)]
  batch = factories.first_task_batch(model, inputs, targets, input_length=32,
                                     task_name="test_hf_tokenizer_vocabulary_task")

  for row in range(8):
    prompt = vocab.encode(inputs[row]) + [vocab.eos_id]
    answer = vocab.encode(targets[row]) + [vocab.eos_id]
    length = len(prompt) + len(answer)
    tokens = batch["decoder_target_tokens"][row]
    assert tokens[:length].tolist() == prompt + answer and not tokens[length:].any()
    assert batch["decoder_input_tokens"][row][0] == 0  # seqio's start token is padding id 0
    weights = batch["decoder_loss_weights"][row]
    # Every answer token is weighted, "!" included (tokenizer id 0 would have been padding).
    assert weights[len(prompt):length].all() and not weights[:len(prompt)].any()
    assert vocab.decode(tokens[len(prompt):].tolist()) == targets[row]
  decoded = vocab.decode_tf(tf.constant(batch["decoder_target_tokens"])).numpy()
  assert decoded[0].decode("utf-8") == inputs[0]  # decoding stops at the prompt's EOS

  shapes = {k: v.shape for k, v in batch.items()}
  params = nn.meta.unbox(jax.jit(lambda rng: model.init_params(rng, shapes))(jax.random.key(0)))
  loss, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, None))(params, batch)
  assert np.isfinite(float(loss))
  assert float(metrics["num_tokens"]) == batch["decoder_loss_weights"].sum()
