"""A seqio Vocabulary over a Hugging Face `tokenizer.json` (e.g. Llama 3's byte-level BPE).

seqio reads SentencePiece models (T5, Llama 2, Mistral) but has no vocabulary for
the `tokenizers` JSON format; this one makes such a tokenizer usable in every
seqio Task, in Python and inside tf.data pipelines.

Ids. seqio reserves id 0: feature converters pad with 0, weight the loss by
`targets != 0`, the models mask attention on it, and the decoder's first input
token is 0. In Llama 3 (and GPT-2 style BPEs) id 0 is "!", a real token, so ids
are shifted: model id = tokenizer id + `id_offset`, with `id_offset` 1 and model
id 0 meaning padding / start of sequence. When the tokenizer's id 0 already is a
special token that carries no text (e.g. `<pad>`, `<unk>`; never BOS or EOS),
`id_offset` is 0 and ids are the tokenizer's own. A checkpoint converted from
Hugging Face moves its embedding and output rows by `id_offset`; row 0 of the
embedding is the start token, so giving it the BOS row makes seqio's start token
play Llama 3's `<|begin_of_text|>`.

BOS is not added by default (seqio tasks don't; the decoder's start token stands
in for it); `add_bos=True` puts the BOS id in front of every encoded text.
Decoding stops at the first EOS and drops padding, BOS and the tokenizer's other
special tokens, as SentencePieceVocabulary drops control symbols.

The file is read on first use, not at construction, so model gins naming a
gs:// tokenizer parse and build without network access; pickling keeps only the
constructor arguments (seqio caches, Beam workers and gin deep copies pickle
vocabularies).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from typing import Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from instruct_jax.errors import UsageError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


@dataclasses.dataclass(frozen=True)
class _Loaded:
  """What is read from the files once: the tokenizer (extra ids appended) and the ids."""
  tokenizer: tokenizers.Tokenizer
  content_hash: str
  id_offset: int
  tokenizer_size: int  # tokenizer ids [0, tokenizer_size), extra ids excluded
  eos_id: int
  bos_id: Optional[int]
  unk_id: Optional[int]


class HuggingFaceTokenizerVocabulary(seqio.Vocabulary):
  """seqio Vocabulary reading a Hugging Face `tokenizers` JSON file (see module docstring).

  Args:
    tokenizer_path: a `tokenizer.json` file or a directory holding one; local or
      any tf.io.gfile URL (gs://...).
    extra_ids: sentinel ids appended after the tokenizer's ids, `<extra_id_0>`
      the highest, as seqio's SentencePieceVocabulary numbers them.
    eos_token / bos_token: the EOS / BOS token strings (Llama 3 base:
      "<|end_of_text|>" / "<|begin_of_text|>"). Unset, they are read from the
      `tokenizer_config.json` next to the tokenizer file; EOS is required, BOS
      optional.
    add_bos: put the BOS id in front of every encoded text.
  """

  def __init__(self, tokenizer_path: str, extra_ids: int = 0,
               eos_token: Optional[str] = None, bos_token: Optional[str] = None,
               add_bos: bool = False):
    self._tokenizer_path = tokenizer_path
    self._eos_token = eos_token
    self._bos_token = bos_token
    self._add_bos = add_bos
    self._loaded: Optional[_Loaded] = None
    super().__init__(extra_ids=extra_ids)

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_loaded"] = None  # the Rust tokenizer is re-read from the file on first use
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  @property
  def tokenizer_path(self) -> str:
    return self._tokenizer_path

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    """The loaded tokenizer, with this vocabulary's extra ids added (tokenizer ids)."""
    return self._load().tokenizer

  @property
  def id_offset(self) -> int:
    """Model id = tokenizer id + id_offset (1 unless the tokenizer's id 0 is a textless special token)."""
    return self._load().id_offset

  @property
  def add_bos(self) -> bool:
    return self._add_bos

  @property
  def pad_id(self) -> int:
    return seqio.PAD_ID

  @property
  def eos_id(self) -> int:
    return self._load().eos_id

  @property
  def bos_id(self) -> Optional[int]:
    return self._load().bos_id

  @property
  def unk_id(self) -> Optional[int]:
    return self._load().unk_id

  @property
  def _base_vocab_size(self) -> int:
    loaded = self._load()
    return loaded.tokenizer_size + loaded.id_offset

  def _encode(self, s: Union[str, bytes, np.ndarray]) -> Sequence[int]:
    if isinstance(s, np.ndarray):  # eager tf.numpy_function passes a 0-d object array
      s = s.item()
    if isinstance(s, bytes):
      s = s.decode("utf-8")
    offset = self.id_offset
    ids = [i + offset for i in self.tokenizer.encode(s, add_special_tokens=False).ids]
    if self._add_bos:
      if self.bos_id is None:
        raise UsageError(f"add_bos=True but {self._tokenizer_path} names no BOS token: set "
                         "HuggingFaceTokenizerVocabulary.bos_token.")
      ids.insert(0, self.bos_id)
    return ids

  def _decode(self, ids: Sequence[int]) -> str:
    loaded = self._load()
    dropped = {self.pad_id, loaded.eos_id, loaded.bos_id}
    end = loaded.id_offset + loaded.tokenizer_size + self.extra_ids
    tokenizer_ids = [i - loaded.id_offset for i in map(int, ids)
                     if loaded.id_offset <= i < end and i not in dropped]
    return loaded.tokenizer.decode(tokenizer_ids, skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A scalar string gives a 1-D int32 tensor, a string tensor of rank >= 1 a RaggedTensor."""
    s = tf.convert_to_tensor(s, dtype=tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(lambda text: np.asarray(self._encode(text), np.int32), [s],
                              tf.int32, stateful=False)
      ids.set_shape([None])
      return ids

    def encode_all(texts):
      rows = [self._encode(text) for text in texts]
      values = np.fromiter((i for row in rows for i in row), np.int32)
      return values, np.asarray([len(row) for row in rows], np.int64)

    values, lengths = tf.numpy_function(encode_all, [tf.reshape(s, [-1])],
                                        [tf.int32, tf.int64], stateful=False)
    values.set_shape([None])
    lengths.set_shape([None])
    ids = tf.RaggedTensor.from_row_lengths(values, lengths)
    outer_shape = tf.shape(s, out_type=tf.int64)
    for axis in reversed(range(1, s.shape.rank)):
      ids = tf.RaggedTensor.from_uniform_row_length(ids, outer_shape[axis])
    return ids

  def _decode_tf(self, ids: Union[tf.Tensor, tf.RaggedTensor]) -> tf.Tensor:
    """Decodes the last axis: [..., length] ids (dense or ragged) give [...] strings."""
    if isinstance(ids, tf.RaggedTensor):
      texts = self._decode_rows_tf(ids.flat_values, ids.nested_row_splits[-1])
      if ids.ragged_rank > 1:
        return tf.RaggedTensor.from_nested_row_splits(texts, ids.nested_row_splits[:-1])
      return texts
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank == 1:
      return tf.reshape(self._decode_rows_tf(ids, tf.stack([0, tf.size(ids)])), [])
    length = tf.shape(ids)[-1]
    rows = tf.reshape(ids, [-1, length])
    splits = tf.range(tf.shape(rows)[0] + 1) * length
    return tf.reshape(self._decode_rows_tf(tf.reshape(rows, [-1]), splits), tf.shape(ids)[:-1])

  def _decode_rows_tf(self, values: tf.Tensor, splits: tf.Tensor) -> tf.Tensor:
    """One string per row of a ragged [rows, None] id tensor given as values and row splits."""
    def decode_rows(flat, bounds):
      return np.asarray([self._decode(flat[start:end]).encode("utf-8")
                         for start, end in zip(bounds[:-1], bounds[1:])], dtype=object)

    texts = tf.numpy_function(decode_rows, [values, splits], tf.string, stateful=False)
    texts.set_shape([None])
    return texts

  def __eq__(self, other) -> bool:
    if not isinstance(other, HuggingFaceTokenizerVocabulary):
      return False
    mine, theirs = self._load(), other._load()
    return (mine.content_hash == theirs.content_hash and self.extra_ids == other.extra_ids
            and (mine.eos_id, mine.bos_id, self._add_bos) == (
                theirs.eos_id, theirs.bos_id, other._add_bos))

  def __str__(self) -> str:
    return (f"HuggingFaceTokenizerVocabulary(file={self._tokenizer_path}, "
            f"extra_ids={self.extra_ids}, add_bos={self._add_bos})")

  def _load(self) -> _Loaded:
    if self._loaded is None:
      self._loaded = self._read()
    return self._loaded

  def _read(self) -> _Loaded:
    path = self._tokenizer_path
    if tf.io.gfile.isdir(path):
      path = posixpath.join(path, TOKENIZER_FILE)
    if not tf.io.gfile.exists(path):
      raise UsageError(
          f"No Hugging Face tokenizer file at {path}: set "
          f"HuggingFaceTokenizerVocabulary.tokenizer_path to a {TOKENIZER_FILE} file or a "
          f"directory holding one (local or gs://).")
    with tf.io.gfile.GFile(path, "rb") as f:
      content = f.read()
    try:
      tokenizer = tokenizers.Tokenizer.from_str(content.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
      raise UsageError(f"{path} is not a Hugging Face tokenizers JSON file ({e}); point "
                       f"HuggingFaceTokenizerVocabulary.tokenizer_path at a {TOKENIZER_FILE} "
                       f"saved by `tokenizers` or `transformers`.") from e

    eos_token, bos_token = self._eos_token, self._bos_token
    if eos_token is None or bos_token is None:
      config = _read_tokenizer_config(posixpath.dirname(path))
      eos_token = eos_token or config.get("eos_token")
      bos_token = bos_token or config.get("bos_token")
    if eos_token is None:
      raise UsageError(
          f"No EOS token for {path}: set HuggingFaceTokenizerVocabulary.eos_token (Llama 3: "
          f"'<|end_of_text|>') or keep the model's {TOKENIZER_CONFIG_FILE} next to it.")
    raw_eos_id = _token_id(tokenizer, eos_token, path)
    raw_bos_id = None if bos_token is None else _token_id(tokenizer, bos_token, path)
    unk_token = getattr(tokenizer.model, "unk_token", None)
    raw_unk_id = None if unk_token is None else tokenizer.token_to_id(unk_token)

    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokenizer_size = max(vocab.values()) + 1
    special_ids = {i for i, token in tokenizer.get_added_tokens_decoder().items()
                   if token.special}
    textless_zero = (0 in special_ids or raw_unk_id == 0) and 0 not in (raw_eos_id, raw_bos_id)
    id_offset = 0 if textless_zero else 1
    _add_extra_ids(tokenizer, self.extra_ids, tokenizer_size, path)
    shift = lambda i: None if i is None else i + id_offset
    return _Loaded(tokenizer=tokenizer, content_hash=hashlib.sha256(content).hexdigest(),
                   id_offset=id_offset, tokenizer_size=tokenizer_size,
                   eos_id=shift(raw_eos_id), bos_id=shift(raw_bos_id), unk_id=shift(raw_unk_id))


def _read_tokenizer_config(directory: str) -> dict:
  """The special token strings of a `tokenizer_config.json`, {} when there is none."""
  path = posixpath.join(directory, TOKENIZER_CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    config = json.load(f)
  tokens = {}
  for key in ("eos_token", "bos_token"):
    value = config.get(key)
    tokens[key] = value.get("content") if isinstance(value, dict) else value
  return tokens


def _token_id(tokenizer: tokenizers.Tokenizer, token: str, path: str) -> int:
  token_id = tokenizer.token_to_id(token)
  if token_id is None:
    raise UsageError(f"Token {token!r} is not in {path}; set HuggingFaceTokenizerVocabulary."
                     "eos_token / bos_token to tokens of this tokenizer.")
  return token_id


def _add_extra_ids(tokenizer: tokenizers.Tokenizer, extra_ids: int, tokenizer_size: int,
                   path: str) -> None:
  """Appends `<extra_id_N>` tokens, N counting down from the top id as in seqio."""
  if not extra_ids:
    return
  tokenizer.add_tokens([tokenizers.AddedToken(f"<extra_id_{n}>", special=False,
                                              normalized=False)
                        for n in reversed(range(extra_ids))])
  top = tokenizer.token_to_id("<extra_id_0>")
  if top != tokenizer_size + extra_ids - 1:
    raise UsageError(f"{path} already holds tokens named <extra_id_N> or has gaps in its ids; "
                     "use extra_ids=0 with this tokenizer.")
