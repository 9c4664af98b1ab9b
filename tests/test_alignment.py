"""Teacher-to-student token alignment (edit-distance DTW) and sparse teacher targets."""
import itertools
import math
import random

import editdistance
import numpy as np
import pytest
import seqio

import cot_data
from instruct_jax.data import alignment

SPACE = alignment.SENTENCEPIECE_SPACE


class DictStudent:
  """A SentencePiece-like student with a hand-made vocabulary."""

  space_marker = SPACE

  def __init__(self, pieces):
    self.vocab = {piece: index for index, piece in enumerate(pieces)}
    self.by_id = dict(enumerate(pieces))

  def ids(self, pieces):
    return [self.vocab[p] for p in pieces]

  def pieces(self, ids):
    return [self.by_id[int(i)] for i in ids]

  def piece_to_id(self, piece):
    return self.vocab.get(piece)


STUDENT = DictStudent(["<pad>", "</s>", "<unk>", SPACE, f"{SPACE}The", f"{SPACE}cat",
                       f"{SPACE}dog", f"{SPACE}sat", ".", f"{SPACE}ca", "ts", f"{SPACE}cats",
                       "+", f"{SPACE}7", f"{SPACE}a", f"{SPACE}b", "cat", f"{SPACE}So"])


def reference_dtw_cost(teacher, student):
  """Textbook O(n*m) DTW over the recipe's costs, for comparison."""
  a = [alignment.normalize_teacher_token(t) for t in teacher]
  b = [alignment.normalize_student_piece(s) for s in student]
  table = {}
  for i, j in itertools.product(range(len(a)), range(len(b))):
    cost = editdistance.eval(a[i], b[j])
    previous = [table[p] for p in ((i - 1, j), (i, j - 1), (i - 1, j - 1)) if p in table]
    table[i, j] = cost + (min(previous) if previous else 0)
  return table[len(a) - 1, len(b) - 1]


def test_identical_tokenizations_align_one_to_one():
  teacher = [" The", " cat", " sat", "."]
  pieces = [f"{SPACE}The", f"{SPACE}cat", f"{SPACE}sat", "."]
  result = alignment.align_tokens(teacher, pieces, band=None)
  assert result.cost == 0
  np.testing.assert_array_equal(result.path, [[0, 0], [1, 1], [2, 2], [3, 3]])
  np.testing.assert_array_equal(result.teacher_for_student, [0, 1, 2, 3])


def test_teacher_token_split_into_two_student_tokens():
  teacher = [" The", " cats", " sat"]
  pieces = [f"{SPACE}The", f"{SPACE}ca", "ts", f"{SPACE}sat"]
  result = alignment.align_tokens(teacher, pieces, band=None)
  # lev("cats", "ca") + lev("cats", "ts") = 2 + 2.
  assert result.cost == 4 == reference_dtw_cost(teacher, pieces)
  np.testing.assert_array_equal(result.path, [[0, 0], [1, 1], [1, 2], [2, 3]])
  np.testing.assert_array_equal(result.teacher_for_student, [0, -1, -1, 2])


def test_two_teacher_tokens_merged_into_one_student_token():
  teacher = [" The", " ca", "ts", " sat"]
  pieces = [f"{SPACE}The", f"{SPACE}cats", f"{SPACE}sat"]
  result = alignment.align_tokens(teacher, pieces, band=None)
  assert result.cost == 4 == reference_dtw_cost(teacher, pieces)
  np.testing.assert_array_equal(result.path, [[0, 0], [1, 1], [2, 1], [3, 2]])
  np.testing.assert_array_equal(result.teacher_for_student, [0, -1, 3])


def test_whitespace_and_space_markers():
  assert alignment.normalize_teacher_token(" \u0120cat\n") == "cat"
  assert alignment.normalize_student_piece(f"{SPACE}cat") == "cat"
  # GPT-2 style 'Ġ' markers and a teacher newline token; SentencePiece '▁'.
  teacher = ["\u0120a", "\n", "\u0120b"]
  result = alignment.align_tokens(teacher, [f"{SPACE}a", f"{SPACE}b"], band=None)
  assert result.cost == 1  # the newline ('' after normalising) pairs with 'a'
  np.testing.assert_array_equal(result.teacher_for_student, [0, 2])
  # A lone '▁' carries no text: ' +' still matches '+' one to one.
  result = alignment.align_tokens([" +", " 7"], [SPACE, "+", f"{SPACE}7"], band=None)
  np.testing.assert_array_equal(result.teacher_for_student, [-1, 0, 1])


def test_probabilities_land_on_the_right_student_ids():
  teacher = ["The", " cat", " sat", "."]
  top_k = [
      [("The", math.log(0.9)), ("So", math.log(0.05))],
      [(" cat", math.log(0.7)), (" dog", math.log(0.1)), ("\u0120dog", math.log(0.05)),
       (" zebra", math.log(0.1))],  # not a student piece: dropped, no renormalisation
      [(" sat", math.log(0.6)), ("cat", math.log(0.3))],
      [(".", 0.0)],
  ]
  pieces = [f"{SPACE}The", f"{SPACE}cat", f"{SPACE}sat", "."]
  targets = alignment.teacher_targets(teacher, top_k, STUDENT.ids(pieces), STUDENT, k=3,
                                      band=None)
  v = STUDENT.vocab
  assert targets.matched.tolist() == [True] * 4
  # "The" (no space, text start) became '▁The': its alternative "So" follows it to '▁So'.
  np.testing.assert_array_equal(targets.indices[0], [v[f"{SPACE}The"], v[f"{SPACE}So"], 0])
  np.testing.assert_allclose(targets.probs[0], [0.9, 0.05, 0.0], rtol=1e-6)
  # ' dog' and 'Ġdog' both become '▁dog' and add up; ' zebra' is dropped.
  np.testing.assert_array_equal(targets.indices[1], [v[f"{SPACE}cat"], v[f"{SPACE}dog"], 0])
  np.testing.assert_allclose(targets.probs[1], [0.7, 0.15, 0.0], rtol=1e-6)
  # 'cat' lacks the chosen token's space, so it maps to the unspaced piece 'cat'.
  np.testing.assert_array_equal(targets.indices[2], [v[f"{SPACE}sat"], v["cat"], 0])
  np.testing.assert_allclose(targets.probs[2], [0.6, 0.3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(targets.probs[3], [1.0, 0.0, 0.0])


def test_unmatched_positions_get_one_hot_on_the_student_token():
  teacher = [" The", " cats", " sat"]
  top_k = [[(t, -0.1), (" dog", -2.0)] for t in teacher]
  pieces = [f"{SPACE}The", f"{SPACE}ca", "ts", f"{SPACE}sat"]
  ids = STUDENT.ids(pieces)
  targets = alignment.teacher_targets(teacher, top_k, ids, STUDENT, k=2, band=None)
  assert targets.matched.tolist() == [True, False, False, True]
  for j in (1, 2):
    np.testing.assert_array_equal(targets.indices[j], [ids[j], 0])
    np.testing.assert_array_equal(targets.probs[j], [1.0, 0.0])
  np.testing.assert_allclose(targets.probs[0], [math.exp(-0.1), math.exp(-2.0)], rtol=1e-6)


def test_top_k_keeps_the_k_most_likely_alternatives():
  ids, probs = alignment.map_alternatives(
      [(" a", math.log(0.1)), (" b", math.log(0.5)), (" dog", math.log(0.3))],
      " a", f"{SPACE}a", STUDENT, k=2)
  assert ids == [STUDENT.vocab[f"{SPACE}b"], STUDENT.vocab[f"{SPACE}dog"]]
  np.testing.assert_allclose(probs, [0.5, 0.3])


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_dtw_cost_equals_the_textbook_recursion(seed):
  rng = random.Random(seed)
  words = ["a", "ab", "abc", "b", "bc", "c", " ", "cab", "7", "77"]
  teacher = [rng.choice(words) for _ in range(rng.randint(1, 9))]
  student = [rng.choice(words) for _ in range(rng.randint(1, 9))]
  exact = alignment.align_tokens(teacher, student, band=None)
  assert exact.cost == reference_dtw_cost(teacher, student)
  # The path is monotone, starts at (0, 0), ends at (n-1, m-1) and sums to the cost.
  steps = np.diff(exact.path, axis=0)
  assert tuple(exact.path[0]) == (0, 0)
  assert tuple(exact.path[-1]) == (len(teacher) - 1, len(student) - 1)
  assert ((steps >= 0) & (steps <= 1)).all() and (steps.sum(axis=1) >= 1).all()
  costs = alignment.pair_costs([alignment.normalize_teacher_token(t) for t in teacher],
                               [alignment.normalize_student_piece(s) for s in student], None)
  assert costs[exact.path[:, 0], exact.path[:, 1]].sum() == exact.cost
  # A narrow band either finds the same optimum or falls back to the exact one.
  assert alignment.align_tokens(teacher, student, band=1).cost >= exact.cost
  assert alignment.align_tokens(teacher, student, band=64).cost == exact.cost


def test_span_penalty_keeps_neighbours_on_their_own_text():
  # Plain Levenshtein pairs the split-off 's' with ' sat' (cost 2 < 3), which breaks
  # the ' sat' match; the optional span penalty keeps it.
  teacher = [" The", " cats", " sat"]
  pieces = [f"{SPACE}The", f"{SPACE}cat", "s", f"{SPACE}sat"]
  plain = alignment.align_tokens(teacher, pieces, band=None)
  assert plain.teacher_for_student.tolist() == [0, -1, -1, -1]
  refined = alignment.align_tokens(teacher, pieces, band=None, span_penalty=True)
  assert refined.teacher_for_student.tolist() == [0, -1, -1, 2]


def test_byte_student():
  vocab = alignment.student_vocabulary(seqio.ByteVocabulary())
  ids = seqio.ByteVocabulary().encode("a +b")
  targets = alignment.teacher_targets(["a", " +", "b"], [[("a", -0.1)], [(" +", -0.2),
                                                                         (" -", -1.0)],
                                                         [("b", 0.0)]], ids, vocab, k=2,
                                      band=None)
  # bytes: 'a', ' ', '+', 'b'; '+' follows a lone space, so ' -' maps to the byte '-'.
  assert targets.matched.tolist() == [True, False, True, True]
  np.testing.assert_array_equal(targets.indices[2], [ord("+") + 3, ord("-") + 3])


def test_length_mismatch_and_bad_top_k_raise():
  with pytest.raises(ValueError, match="top-k lists"):
    alignment.teacher_targets([" a"], [], [14], STUDENT)
  with pytest.raises(ValueError, match="token, log_prob"):
    alignment.parse_top_k([["a"]])
  assert alignment.parse_top_k({"a": -1.0}) == [("a", -1.0)]


def test_sentencepiece_student_on_generated_teacher_chains(tmp_path):
  model = cot_data.train_sentencepiece(str(tmp_path))
  vocab = seqio.SentencePieceVocabulary(model)
  student = alignment.student_vocabulary(vocab)
  rng = random.Random(3)
  record = cot_data.problem(rng)
  tokens = cot_data.teacher_tokens(record["chain_of_thought"])
  top_k = [[(t, -0.2), (" and", -3.0)] for t in tokens]
  ids = vocab.encode(record["chain_of_thought"])
  targets = alignment.teacher_targets(tokens, top_k, ids, student, k=2)
  pieces = vocab.tokenizer.id_to_piece(ids)
  assert targets.matched.any()
  for j in np.nonzero(targets.matched)[0]:
    # A matched position is a piece whose text is one teacher token; the teacher's
    # own token lands on exactly that student id.
    assert any(alignment.normalize_student_piece(pieces[j]) ==
               alignment.normalize_teacher_token(t) for t in tokens)
    assert targets.indices[j, 0] == ids[j]
    assert targets.probs[j, 0] == pytest.approx(math.exp(-0.2))
  unmatched = ~targets.matched
  np.testing.assert_array_equal(targets.indices[unmatched, 0], np.asarray(ids)[unmatched])
  np.testing.assert_array_equal(targets.probs[unmatched, 0], 1.0)
