"""Symbol pools for symbol tuning: labels that mean nothing, drawn fresh for every prompt.

Symbol tuning (Wei et al., 2023) replaces a classification task's natural labels
("positive" / "negative") with arbitrary symbols, so the model can only solve
the prompt by reading the input-label mapping of its in-context exemplars.
Three families of symbols, each split into a tuning pool and a DISJOINT
evaluation pool, so evaluation prompts use symbols never seen in tuning:

  family     tuning pool                           evaluation pool
  integers   "0" ... "9999"                        5-digit integers "10000" ... "99999"
  letters    the first 10,000 strings of A, B,     the rest of the 3-letter strings and
             ..., Z, AA, ..., ZZ, AAA, ...         every 4-letter string
             (1-2 letters and 3-letter AAA..NTP)
  words      the 10,000 most frequent English      the next 20,000 words by frequency
             words (wordfreq), alphabetic only

(about 30k tuning symbols in all, as in the paper). Words come from the
`wordfreq` package's English ranking, lower-case ASCII words of two letters or
more; callers pass the natural labels of their datasets as `exclude_words` so no
symbol is a real label in disguise. Integer and letter pools are arithmetic
(nothing is materialised), so the 465k evaluation letter strings cost nothing.

Per prompt, one family is picked and distinct symbols are drawn for the task's
labels; both are deterministic functions of (seed, example index), computed with
TensorFlow stateless random ops so the same code runs inside tf.data pipelines
and in plain Python (`draw_symbols`).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import string
from typing import Iterable, Sequence

import tensorflow as tf

FAMILIES = ("integers", "letters", "words")
TUNING_POOL_SIZE = 10_000  # per family: integers 0-9999, 10k letter strings, 10k words
EVALUATION_WORDS = 20_000
_MAX_LETTERS = 4
_WORD = re.compile(r"[a-z]{2,}")
_ALPHABET = string.ascii_uppercase

# Salts for the independent random streams of one prompt (tf stateless fold-in).
STREAM_FAMILY = 1
STREAM_SYMBOLS = 2


# --------------------------------------------------------------------------
# Pools.


@dataclasses.dataclass(frozen=True)
class IntegerPool:
  """Decimal integers start ... stop - 1 (no leading zeros)."""
  start: int
  stop: int
  family: str = "integers"

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, index: int) -> str:
    if not 0 <= index < len(self):
      raise IndexError(f"IntegerPool index {index} out of range [0, {len(self)}).")
    return str(self.start + index)

  def __contains__(self, symbol: object) -> bool:
    return (isinstance(symbol, str) and symbol.isdigit() and str(int(symbol)) == symbol
            and self.start <= int(symbol) < self.stop)

  def symbols_tf(self, indices: tf.Tensor) -> tf.Tensor:
    return tf.strings.as_string(tf.cast(indices, tf.int64) + self.start)


def letter_string(index: int) -> str:
  """index-th string of A, B, ..., Z, AA, AB, ..., ZZ, AAA, ... (0-based)."""
  if index < 0:
    raise ValueError(f"letter_string needs a non-negative index; got {index}.")
  n, letters = index + 1, []
  while n:
    n, remainder = divmod(n - 1, 26)
    letters.append(_ALPHABET[remainder])
  return "".join(reversed(letters))


def letter_index(symbol: str) -> int | None:
  """Inverse of letter_string; None when `symbol` is not upper-case A-Z letters."""
  if not symbol or any(c not in _ALPHABET for c in symbol):
    return None
  n = 0
  for c in symbol:
    n = n * 26 + _ALPHABET.index(c) + 1
  return n - 1


@dataclasses.dataclass(frozen=True)
class LetterPool:
  """Strings start ... stop - 1 of the A, B, ..., Z, AA, ... enumeration."""
  start: int
  stop: int
  family: str = "letters"

  def __post_init__(self):
    if len(letter_string(self.stop - 1)) > _MAX_LETTERS:
      raise ValueError(f"LetterPool supports strings of at most {_MAX_LETTERS} letters; "
                       f"stop={self.stop} goes beyond that.")

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, index: int) -> str:
    if not 0 <= index < len(self):
      raise IndexError(f"LetterPool index {index} out of range [0, {len(self)}).")
    return letter_string(self.start + index)

  def __contains__(self, symbol: object) -> bool:
    index = letter_index(symbol) if isinstance(symbol, str) else None
    return index is not None and self.start <= index < self.stop

  def symbols_tf(self, indices: tf.Tensor) -> tf.Tensor:
    n = tf.cast(indices, tf.int64) + self.start + 1
    alphabet = tf.constant(list(_ALPHABET))
    letters = []
    for _ in range(_MAX_LETTERS):  # Least significant letter first.
      active = n > 0
      remainder = tf.math.floormod(n - 1, 26)
      letters.append(tf.where(active, tf.gather(alphabet, tf.maximum(remainder, 0)), ""))
      n = tf.where(active, tf.math.floordiv(n - 1, 26), 0)
    return tf.strings.join(letters[::-1])


@dataclasses.dataclass(frozen=True, eq=False)
class WordPool:
  """An explicit list of words."""
  words: tuple[str, ...]
  family: str = "words"

  def __len__(self) -> int:
    return len(self.words)

  def __getitem__(self, index: int) -> str:
    return self.words[index]

  def __contains__(self, symbol: object) -> bool:
    return symbol in self._word_set

  @functools.cached_property
  def _word_set(self) -> frozenset[str]:
    return frozenset(self.words)

  def symbols_tf(self, indices: tf.Tensor) -> tf.Tensor:
    return tf.gather(tf.constant(self.words), indices)


SymbolPool = IntegerPool | LetterPool | WordPool


@dataclasses.dataclass(frozen=True)
class SymbolPools:
  """One pool per family; a prompt's symbols all come from one of them."""
  integers: IntegerPool
  letters: LetterPool
  words: WordPool

  @property
  def pools(self) -> tuple[SymbolPool, ...]:
    return (self.integers, self.letters, self.words)

  def __contains__(self, symbol: object) -> bool:
    return any(symbol in pool for pool in self.pools)

  def family_of(self, symbol: str) -> str | None:
    """The family whose pool holds `symbol`, or None."""
    return next((pool.family for pool in self.pools if symbol in pool), None)


def normalize_exclusions(words: Iterable[str]) -> frozenset[str]:
  """Lower-cased labels plus each of their words ("not toxic" -> not, toxic, not toxic)."""
  result = set()
  for label in words:
    label = label.strip().lower()
    result.add(label)
    result.update(re.findall(r"[a-z]+", label))
  return frozenset(result)


@functools.lru_cache(maxsize=8)
def word_lists(exclude_words: frozenset[str] = frozenset()
               ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(tuning words, evaluation words) from wordfreq's English frequency ranking.

  Tuning: the TUNING_POOL_SIZE most frequent alphabetic words not excluded;
  evaluation: the EVALUATION_WORDS words that follow them in the ranking.
  """
  import wordfreq  # pylint: disable=g-import-not-at-top  # Only word pools need it.
  wanted = TUNING_POOL_SIZE + EVALUATION_WORDS
  size = 2 * wanted
  while True:
    ranked = wordfreq.top_n_list("en", size)
    words = [w for w in ranked if _WORD.fullmatch(w) and w not in exclude_words]
    words = list(dict.fromkeys(words))  # Keep the first (most frequent) occurrence.
    if len(words) >= wanted or len(ranked) < size:
      break
    size *= 2
  if len(words) < wanted:
    raise ValueError(f"wordfreq's English list has only {len(words)} usable words; symbol "
                     f"pools need {wanted}. Upgrade wordfreq or lower EVALUATION_WORDS.")
  return tuple(words[:TUNING_POOL_SIZE]), tuple(words[TUNING_POOL_SIZE:wanted])


def _num_letter_strings(max_length: int) -> int:
  return sum(26 ** n for n in range(1, max_length + 1))


def tuning_pools(exclude_words: Iterable[str] = ()) -> SymbolPools:
  """Symbols used in symbol-tuning prompts."""
  tuning_words, _ = word_lists(normalize_exclusions(exclude_words))
  return SymbolPools(IntegerPool(0, TUNING_POOL_SIZE), LetterPool(0, TUNING_POOL_SIZE),
                     WordPool(tuning_words))


def evaluation_pools(exclude_words: Iterable[str] = ()) -> SymbolPools:
  """Symbols used in evaluation prompts; disjoint from tuning_pools(same exclusions)."""
  _, evaluation_words = word_lists(normalize_exclusions(exclude_words))
  return SymbolPools(IntegerPool(10_000, 100_000),
                     LetterPool(TUNING_POOL_SIZE, _num_letter_strings(_MAX_LETTERS)),
                     WordPool(evaluation_words))


# --------------------------------------------------------------------------
# Per-prompt draws.


def example_index_tf(text: tf.Tensor) -> tf.Tensor:
  """Stable int64 index of an example from its text (survives sharding and shuffling)."""
  return tf.strings.to_hash_bucket_strong(text, 2**62, key=[0x5EED, 0x57B0])


def prompt_seed_tf(seed: int, example_index: tf.Tensor) -> tf.Tensor:
  """The [2] int64 stateless-random seed of one prompt."""
  return tf.stack([tf.cast(example_index, tf.int64), tf.constant(seed, tf.int64)])


def stream_seed_tf(prompt_seed: tf.Tensor, stream: int) -> tf.Tensor:
  """An independent random stream of a prompt (family, symbols, exemplars, order)."""
  return tf.random.experimental.stateless_fold_in(prompt_seed, stream)


def distinct_indices_tf(size: int, count: int, seed: tf.Tensor) -> tf.Tensor:
  """`count` distinct uniform indices in [0, size), int64, deterministic for `seed`."""
  if count > size:
    raise ValueError(f"Cannot draw {count} distinct symbols from a pool of {size}.")
  draws = tf.random.stateless_uniform([4 * count], seed=seed, minval=0, maxval=size,
                                      dtype=tf.int64)
  # Consecutive indices after the first draw guarantee `count` distinct
  # candidates even in the (vanishingly rare) case of many collisions.
  fallback = tf.math.floormod(draws[0] + tf.range(count, dtype=tf.int64), size)
  unique, _ = tf.unique(tf.concat([draws, fallback], axis=0))
  return unique[:count]


def draw_symbols_tf(pools: SymbolPools, num_labels: int,
                    prompt_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(symbols [num_labels] tf.string, family index int32) for one prompt.

  Symbol i stands for label i. The family is uniform over FAMILIES; symbols
  are distinct and uniform within the family's pool.
  """
  family = tf.random.stateless_uniform([], seed=stream_seed_tf(prompt_seed, STREAM_FAMILY),
                                       minval=0, maxval=len(pools.pools), dtype=tf.int32)
  symbol_seed = stream_seed_tf(prompt_seed, STREAM_SYMBOLS)

  def branch(pool):
    return lambda: pool.symbols_tf(distinct_indices_tf(len(pool), num_labels, symbol_seed))

  symbols = tf.switch_case(family, [branch(pool) for pool in pools.pools])
  return tf.ensure_shape(symbols, [num_labels]), family


def draw_symbols(pools: SymbolPools, num_labels: int, seed: int,
                 example_index: int) -> tuple[str, list[str]]:
  """Python form of draw_symbols_tf: (family name, symbols) for one prompt."""
  symbols, family = draw_symbols_tf(pools, num_labels, prompt_seed_tf(seed, example_index))
  return FAMILIES[int(family)], [s.decode("utf-8") for s in symbols.numpy()]


def check_labels_are_not_symbols(labels: Sequence[str], pools: Sequence[SymbolPools]) -> None:
  """Raises if a natural label could be drawn as a symbol (it would leak the answer)."""
  clashes = sorted({label for label in labels for p in pools if label in p
                    or label.lower() in p.words})
  if clashes:
    raise ValueError(f"Natural label(s) {clashes} are also symbols of a symbol pool; pass "
                     "them as exclude_words when building the pools (or rename the labels).")
