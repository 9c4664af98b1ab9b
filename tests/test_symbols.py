"""Symbol pools and per-prompt symbol draws (instruct_jax.data.symbols)."""
import collections
import re

import numpy as np
import pytest
import tensorflow as tf
import wordfreq

from instruct_jax.data import symbols

LABELS = ("positive", "negative", "not toxic", "It's impossible to say")


@pytest.fixture(scope="module")
def tuning():
  return symbols.tuning_pools(LABELS)


@pytest.fixture(scope="module")
def evaluation():
  return symbols.evaluation_pools(LABELS)


def test_pools_have_the_papers_ranges(tuning, evaluation):
  assert [tuning.integers[0], tuning.integers[len(tuning.integers) - 1]] == ["0", "9999"]
  assert [evaluation.integers[0], evaluation.integers[len(evaluation.integers) - 1]] == [
      "10000", "99999"]
  letters = [tuning.letters[i] for i in range(len(tuning.letters))]
  assert len(letters) == 10_000 and letters[:3] == ["A", "B", "C"] and letters[26] == "AA"
  assert {len(s) for s in letters} == {1, 2, 3}
  assert sum(len(s) == 2 for s in letters) == 26 ** 2  # Every 1-2 letter string.
  first, last = evaluation.letters[0], evaluation.letters[len(evaluation.letters) - 1]
  assert len(first) == 3 and last == "ZZZZ"
  assert len(evaluation.letters) == 26 ** 3 + 26 ** 4 - (10_000 - 26 - 26 ** 2)
  assert len(tuning.words) == 10_000 and len(evaluation.words) == 20_000
  for word in tuning.words.words + evaluation.words.words:
    assert re.fullmatch(r"[a-z]{2,}", word), word
  assert {p.family for p in tuning.pools} == set(symbols.FAMILIES)


def test_tuning_and_evaluation_pools_are_disjoint(tuning, evaluation):
  assert set(tuning.words.words).isdisjoint(evaluation.words.words)
  eval_letters = {evaluation.letters[i] for i in range(len(evaluation.letters))}
  tuning_letters = {tuning.letters[i] for i in range(len(tuning.letters))}
  assert len(eval_letters) == len(evaluation.letters) and not eval_letters & tuning_letters
  tuning_integers = {tuning.integers[i] for i in range(len(tuning.integers))}
  eval_integers = {evaluation.integers[i] for i in range(len(evaluation.integers))}
  assert not tuning_integers & eval_integers
  every_tuning = tuning_integers | tuning_letters | set(tuning.words.words)
  assert len(every_tuning) == 30_000  # Families never share a symbol either.
  for symbol in list(every_tuning)[::7]:
    assert symbol in tuning and symbol not in evaluation
  for pool in evaluation.pools:
    for i in range(0, len(pool), max(1, len(pool) // 500)):
      assert pool[i] in evaluation and pool[i] not in tuning
  # Membership is exact for the arithmetic pools.
  assert "0100" not in tuning.integers and "100" in tuning.integers
  assert "a" not in tuning.letters and "AB" in tuning.letters


def test_words_are_wordfreq_ranks_without_natural_labels(tuning, evaluation):
  excluded = symbols.normalize_exclusions(LABELS)
  assert {"positive", "negative", "not", "toxic", "impossible", "say", "it",
          "it's impossible to say"} <= excluded
  ranked = [w for w in wordfreq.top_n_list("en", 80_000)
            if re.fullmatch(r"[a-z]{2,}", w) and w not in excluded]
  assert tuning.words.words == tuple(ranked[:10_000])
  assert evaluation.words.words == tuple(ranked[10_000:30_000])
  for word in excluded:
    assert word not in tuning and word not in evaluation
  assert "the" in symbols.tuning_pools().words  # Nothing excluded by default.


def test_letter_strings_round_trip():
  for index in [0, 25, 26, 701, 702, 18_277, 18_278, 475_253]:
    assert symbols.letter_index(symbols.letter_string(index)) == index
  assert symbols.letter_string(701) == "ZZ" and symbols.letter_string(702) == "AAA"
  assert symbols.letter_index("ab") is None and symbols.letter_index("") is None


@pytest.mark.parametrize("kind", ["tuning", "evaluation"])
def test_tensorflow_symbols_match_python(kind, tuning, evaluation):
  pools = tuning if kind == "tuning" else evaluation
  rng = np.random.default_rng(0)
  for pool in pools.pools:
    indices = np.concatenate([[0, len(pool) - 1], rng.integers(0, len(pool), size=50)])
    got = [s.decode() for s in pool.symbols_tf(tf.constant(indices, tf.int64)).numpy()]
    assert got == [pool[int(i)] for i in indices]


def test_draws_are_distinct_reproducible_and_vary_across_prompts(tuning):
  families = collections.Counter()
  mappings = set()
  for index in range(300):
    family, drawn = symbols.draw_symbols(tuning, 4, seed=0, example_index=index)
    assert len(set(drawn)) == 4
    assert all(tuning.family_of(s) == family for s in drawn)
    assert symbols.draw_symbols(tuning, 4, seed=0, example_index=index) == (family, drawn)
    families[family] += 1
    mappings.add(tuple(drawn))
  assert len(mappings) == 300
  assert set(families) == set(symbols.FAMILIES)
  assert min(families.values()) > 60  # Roughly uniform over the three families.
  other_seed = [symbols.draw_symbols(tuning, 4, seed=1, example_index=i) for i in range(20)]
  same_seed = [symbols.draw_symbols(tuning, 4, seed=0, example_index=i) for i in range(20)]
  assert sum(a != b for a, b in zip(other_seed, same_seed)) >= 18


def test_distinct_indices_cover_small_pools():
  for seed in range(20):
    drawn = symbols.distinct_indices_tf(3, 3, tf.constant([seed, 7], tf.int64)).numpy()
    assert sorted(drawn.tolist()) == [0, 1, 2]
  with pytest.raises(ValueError, match="distinct"):
    symbols.distinct_indices_tf(2, 3, tf.constant([0, 0], tf.int64))


def test_fingerprint_index_is_stable():
  index = symbols.example_index_tf(tf.constant("the same text")).numpy()
  assert index == symbols.example_index_tf(tf.constant("the same text")).numpy()
  assert index != symbols.example_index_tf(tf.constant("other text")).numpy()
  assert 0 <= index < 2**62


def test_natural_labels_that_are_symbols_are_rejected(tuning):
  symbols.check_labels_are_not_symbols(list(LABELS), [tuning])
  with pytest.raises(ValueError, match="exclude_words"):
    symbols.check_labels_are_not_symbols(["3", "yes"], [tuning])
  with pytest.raises(ValueError, match="'Table'"):
    symbols.check_labels_are_not_symbols(["Table"], [tuning])
