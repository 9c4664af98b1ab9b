"""Aligning a teacher's tokens to a student's tokens for distribution-matching distillation.

The teacher (any LM, any tokenizer) wrote a chain of thought and, per token, its
top-k alternatives with log-probabilities. The student (a T5 with SentencePiece)
tokenizes the same text differently. To train the student on the teacher's
per-step distributions we need, for each STUDENT position, a distribution over
the STUDENT vocabulary. Following the CoT-specialization recipe:

1. Pair costs: cost(teacher i, student j) = Levenshtein distance between the
   teacher token without whitespace (and without 'Ġ' / '▁' / 'Ċ' markers that
   byte-level and SentencePiece tokenizers print for spaces and newlines) and the
   student piece without SentencePiece's '▁'.
2. Edit-distance DTW: D[i][j] = cost(i, j) + min(D[i-1][j], D[i][j-1], D[i-1][j-1]),
   backtracked from the last pair to the first. Every token appears on the path.
3. A student token that the path pairs with exactly one teacher token, which in
   turn is paired only with it, and whose text equals that teacher token's
   (after normalisation, and not empty), takes the teacher's top-k distribution
   mapped into the student vocabulary. Every other student token gets a one-hot
   on itself.
   Pure-whitespace tokens (SentencePiece's lone '▁' before a piece that does not
   start a word, a teacher's '\n') do not count as partners here: they carry no
   text, and counting them would break every " +" ~ ['▁', '+'] match.

Teacher alternatives that are not a single student piece are dropped and the
remaining probabilities are NOT renormalised (the missing mass stays missing, as
in the recipe). Alternatives that map to the same student piece add up.

Optional refinement (`span_penalty=True`, off by default = the recipe as
published): pairs whose characters do not overlap in the two texts pay extra.
Plain Levenshtein costs make short tokens cheap partners for anything, so a
split like ' sat' ~ ['▁s', 'at'] can pull a neighbour off its 1:1 match; on
synthetic BPE-vs-unigram text (100 chains, 27k student tokens) 20.0% instead of
16.6% of student tokens became 1:1 matches; 20.2% share exact character spans
with a teacher token, the most any alignment can match.

Speed. The DTW runs one vectorised numpy step per teacher row: along a row,
x_j = c_j + min(a_j, x_{j-1}) unrolls to x = S + cummin(a - S_prev) with S the
running sum of the row's costs, so no Python loop over student positions.
Edit distances are computed only inside a band around the character diagonal
(`band` characters of slack on each side, after scaling both texts to the same
length, Sakoe-Chiba style); pairs outside it cost `OUT_OF_BAND_COST`. When the
banded optimum leaves the band (texts that differ a lot), the alignment is
recomputed exactly with the full matrix, so the band only ever saves time.
`band=None` always computes the full matrix. Each distinct (teacher text,
student text) pair is computed once per example, since chains repeat tokens.

Measured with `benchmark_alignment`, one core of a loaded 2-core machine, k=5:
  varied text, ~212 teacher / ~270 student tokens per chain:
    band=24   ~170 chains/s (~46k student tokens/s)
    exact     ~40-55 chains/s (~11-15k student tokens/s)
  GSM8K-like chains, ~122 teacher / ~244 student tokens: 130-180 chains/s either way.
So GSM8K's 7.5k training chains align in about a minute (band 24) to three
minutes (exact); 40 samples per question (~130k chains after filtering) in ~15
minutes on one core.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterable, Mapping, Protocol, Sequence

import editdistance
import numpy as np
import seqio

SENTENCEPIECE_SPACE = "\u2581"  # '▁'
# Characters that tokenizers print for whitespace; removed before comparing texts.
_SPACE_MARKERS = (SENTENCEPIECE_SPACE, "\u0120", "\u010a")  # '▁', 'Ġ' (space), 'Ċ' (newline)
OUT_OF_BAND_COST = 1 << 20
DEFAULT_BAND = 24
DEFAULT_TOP_K = 5

TopK = Sequence[tuple[str, float]]  # (token text, log-probability), best first


def normalize_teacher_token(text: str) -> str:
  """Teacher token text as compared: no whitespace, no space/newline markers."""
  for marker in _SPACE_MARKERS:
    text = text.replace(marker, "")
  return "".join(text.split())


def normalize_student_piece(piece: str) -> str:
  """Student piece text as compared: no '▁' (nor spaces, for byte-level students)."""
  return "".join(piece.replace(SENTENCEPIECE_SPACE, "").split())


def _starts_with_space(text: str) -> bool:
  return bool(text) and (text[0].isspace() or text[0] in _SPACE_MARKERS)


# --------------------------------------------------------------------------
# Student vocabularies.


class StudentVocabulary(Protocol):
  """What alignment needs to know about the student's tokenizer."""

  space_marker: str

  def pieces(self, ids: Sequence[int]) -> list[str]:
    """Text of each token id, with the tokenizer's own space marker."""

  def piece_to_id(self, piece: str) -> int | None:
    """Id of the token whose text is exactly `piece`, or None."""


class SentencePieceStudent:
  """A seqio.SentencePieceVocabulary seen as pieces ('▁the', 'ir', ...)."""

  space_marker = SENTENCEPIECE_SPACE

  def __init__(self, vocabulary: seqio.SentencePieceVocabulary):
    self._sp = vocabulary.tokenizer
    self._unk_id = self._sp.unk_id()
    self._cache: dict[str, int | None] = {}

  def pieces(self, ids: Sequence[int]) -> list[str]:
    size = self._sp.get_piece_size()
    # Extra ids (T5 sentinels) lie beyond the SentencePiece model; they never match.
    return [self._sp.id_to_piece(int(i)) if 0 <= i < size else f"<extra_{i}>" for i in ids]

  def piece_to_id(self, piece: str) -> int | None:
    if piece not in self._cache:
      index = self._sp.piece_to_id(piece)
      known = index != self._unk_id or piece == self._sp.id_to_piece(self._unk_id)
      self._cache[piece] = int(index) if known and not self._sp.is_control(index) else None
    return self._cache[piece]


class ByteStudent:
  """seqio.ByteVocabulary: one token per UTF-8 byte (ids = byte + 3); a space is ' '."""

  space_marker = " "

  _OFFSET = 3  # pad, EOS, UNK come first in seqio.ByteVocabulary

  def __init__(self, vocabulary: seqio.ByteVocabulary | None = None):
    del vocabulary  # Every ByteVocabulary maps byte b to id b + 3.
    self._offset = self._OFFSET

  def pieces(self, ids: Sequence[int]) -> list[str]:
    return [bytes([int(i) - self._offset]).decode("latin-1") if int(i) >= self._offset
            else f"<special_{i}>" for i in ids]

  def piece_to_id(self, piece: str) -> int | None:
    data = piece.encode("utf-8")
    return data[0] + self._offset if len(data) == 1 else None


def student_vocabulary(vocabulary: seqio.Vocabulary) -> StudentVocabulary:
  """The alignment view of a seqio vocabulary (SentencePiece or bytes)."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return SentencePieceStudent(vocabulary)
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return ByteStudent(vocabulary)
  raise TypeError(
      f"Tokenizer alignment supports seqio.SentencePieceVocabulary and "
      f"seqio.ByteVocabulary students, got {type(vocabulary).__name__}. Wrap your "
      "vocabulary in a class with `space_marker`, `pieces(ids)` and `piece_to_id(piece)`.")


# --------------------------------------------------------------------------
# Edit-distance DTW.


def _char_spans(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  lengths = np.fromiter((len(t) for t in texts), np.int64, len(texts))
  ends = np.cumsum(lengths)
  return ends - lengths, ends


def _codes(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
  """(distinct texts, [len(texts)] index of each text among them)."""
  index: dict[str, int] = {}
  codes = np.fromiter((index.setdefault(t, len(index)) for t in texts), np.int64, len(texts))
  return list(index), codes


def pair_costs(teacher_texts: Sequence[str], student_texts: Sequence[str],
               band: int | None = DEFAULT_BAND) -> np.ndarray:
  """[n, m] int64 Levenshtein costs of NORMALISED texts; OUT_OF_BAND_COST outside the band.

  The band keeps pairs whose character spans, with the teacher's positions
  scaled to the student text's total length, lie within `band` characters.
  Chains of thought repeat their tokens ('.', 'the', numbers), so each distinct
  (teacher text, student text) pair is computed once and gathered.
  """
  n, m = len(teacher_texts), len(student_texts)
  t_distinct, t_codes = _codes(teacher_texts)
  s_distinct, s_codes = _codes(student_texts)
  if band is None:
    table = np.array([[editdistance.eval(a, b) for b in s_distinct] for a in t_distinct],
                     np.int64).reshape(len(t_distinct), len(s_distinct))
    return table[t_codes[:, None], s_codes[None, :]]
  t_start, t_end = _char_spans(teacher_texts)
  s_start, s_end = _char_spans(student_texts)
  scale = (s_end[-1] / t_end[-1]) if n and m and t_end[-1] else 1.0
  t_start, t_end = t_start * scale, t_end * scale
  inside = ((t_start[:, None] < s_end[None, :] + band) &
            (s_start[None, :] < t_end[:, None] + band))
  rows, cols = np.nonzero(inside)
  pair_codes = t_codes[rows] * len(s_distinct) + s_codes[cols]
  distinct, inverse = np.unique(pair_codes, return_inverse=True)
  t_of, s_of = np.divmod(distinct, len(s_distinct))
  distances = np.fromiter((editdistance.eval(t_distinct[a], s_distinct[b])
                           for a, b in zip(t_of.tolist(), s_of.tolist())),
                          np.int64, len(distinct))
  costs = np.full((n, m), OUT_OF_BAND_COST, np.int64)
  costs[rows, cols] = distances[inverse]
  return costs


def span_penalties(teacher_texts: Sequence[str], student_texts: Sequence[str]) -> np.ndarray:
  """[n, m] extra cost for pairs whose characters do not overlap (the optional refinement).

  Positions are offsets in the two normalised texts. A pair whose spans share no
  character pays len(a) + len(b) + 1, more than pairing either token with the text
  it really covers. Empty tokens and tokens past the end of the shorter text
  (e.g. an appended answer sentence) pay nothing, as in the plain recipe.
  """
  t_start, t_end = _char_spans(teacher_texts)
  s_start, s_end = _char_spans(student_texts)
  common = min(t_end[-1], s_end[-1]) if len(t_end) and len(s_end) else 0
  exempt_t = (t_start == t_end) | (t_start >= common)
  exempt_s = (s_start == s_end) | (s_start >= common)
  overlap = (t_start[:, None] < s_end[None, :]) & (s_start[None, :] < t_end[:, None])
  free = overlap | exempt_t[:, None] | exempt_s[None, :]
  penalty = (t_end - t_start)[:, None] + (s_end - s_start)[None, :] + 1
  return np.where(free, 0, penalty)


def accumulated_costs(costs: np.ndarray) -> np.ndarray:
  """DTW table D[i][j] = costs[i][j] + min(D[i-1][j], D[i][j-1], D[i-1][j-1])."""
  n, m = costs.shape
  table = np.empty((n, m), np.int64)
  table[0] = np.cumsum(costs[0])
  for i in range(1, n):
    above = table[i - 1]
    reach = above.copy()  # a_j = min(D[i-1][j], D[i-1][j-1])
    np.minimum(reach[1:], above[:-1], out=reach[1:])
    running = np.cumsum(costs[i])
    previous = running - costs[i]  # S_{j-1}
    table[i] = running + np.minimum.accumulate(reach - previous)
  return table


def backtrack(table: np.ndarray) -> np.ndarray:
  """[P, 2] (teacher, student) index pairs of the optimal path, first pair first.

  Ties prefer the diagonal, then the step that keeps the teacher index.
  """
  i, j = table.shape[0] - 1, table.shape[1] - 1
  path = [(i, j)]
  while i > 0 or j > 0:
    if i == 0:
      j -= 1
    elif j == 0:
      i -= 1
    else:
      diagonal, up, left = table[i - 1, j - 1], table[i - 1, j], table[i, j - 1]
      if diagonal <= up and diagonal <= left:
        i, j = i - 1, j - 1
      elif left <= up:
        j -= 1
      else:
        i -= 1
    path.append((i, j))
  return np.asarray(path[::-1], np.int64)


@dataclasses.dataclass(frozen=True)
class Alignment:
  """Optimal monotone alignment of n teacher tokens with m student tokens."""
  path: np.ndarray         # [P, 2] (teacher index, student index), in order
  cost: int                # total cost of the path
  teacher_for_student: np.ndarray  # [m] teacher index of a 1:1 same-text match, else -1


def align_tokens(teacher_tokens: Sequence[str], student_pieces: Sequence[str],
                 band: int | None = DEFAULT_BAND, span_penalty: bool = False) -> Alignment:
  """Edit-distance DTW between raw teacher token texts and raw student pieces.

  `span_penalty=True` adds `span_penalties` to the recipe's costs (see there).
  """
  teacher = [normalize_teacher_token(t) for t in teacher_tokens]
  student = [normalize_student_piece(p) for p in student_pieces]
  n, m = len(teacher), len(student)
  if n == 0 or m == 0:
    return Alignment(np.zeros((0, 2), np.int64), 0, np.full((m,), -1, np.int64))

  def solve(band):
    costs = pair_costs(teacher, student, band)
    if span_penalty:
      costs = costs + span_penalties(teacher, student)
    return costs, accumulated_costs(costs)

  costs, table = solve(band)
  if band is not None and table[-1, -1] >= OUT_OF_BAND_COST:
    costs, table = solve(None)  # The optimum left the band: be exact.
  path = backtrack(table)
  t_idx, s_idx = path[:, 0], path[:, 1]
  # Pure-whitespace tokens (a lone '▁', a teacher '\n') carry no text: they do not
  # count as a second partner, so ' +' ~ ['▁', '+'] still matches '+' one to one.
  t_text = np.fromiter((bool(t) for t in teacher), bool, n)
  s_text = np.fromiter((bool(s) for s in student), bool, m)
  per_teacher = np.bincount(t_idx, weights=s_text[s_idx], minlength=n)
  per_student = np.bincount(s_idx, weights=t_text[t_idx], minlength=m)
  same_text = np.fromiter((teacher[i] == student[j] for i, j in path.tolist()), bool,
                          len(path))
  one_to_one = ((per_teacher[t_idx] == 1) & (per_student[s_idx] == 1) & s_text[s_idx] &
                same_text)
  teacher_for_student = np.full((m,), -1, np.int64)
  teacher_for_student[s_idx[one_to_one]] = t_idx[one_to_one]
  return Alignment(path, int(table[-1, -1]), teacher_for_student)


# --------------------------------------------------------------------------
# Sparse teacher targets for the student.


@dataclasses.dataclass(frozen=True)
class TeacherTargets:
  """Per student position: k student ids and teacher probabilities (0 = unused slot)."""
  indices: np.ndarray  # [m, k] int32
  probs: np.ndarray    # [m, k] float32
  matched: np.ndarray  # [m] bool: True where the teacher's distribution was used
  cost: int            # total cost of the optimal alignment path


def one_hot_targets(student_ids: Sequence[int], k: int = DEFAULT_TOP_K) -> TeacherTargets:
  """Teacher features that make the KL loss equal to the NLL of `student_ids`."""
  m = len(student_ids)
  indices = np.zeros((m, k), np.int32)
  probs = np.zeros((m, k), np.float32)
  indices[:, 0] = np.asarray(student_ids, np.int32)
  probs[:, 0] = 1.0
  return TeacherTargets(indices, probs, np.zeros((m,), bool), 0)


def map_alternatives(top_k: TopK, chosen_text: str, student_piece: str,
                     vocab: StudentVocabulary, k: int) -> tuple[list[int], list[float]]:
  """Teacher alternatives at one position as (student ids, probs), merged and capped at k.

  An alternative keeps its spacing relative to the teacher's chosen token: if both
  start with a space (or neither), it gets the student piece's own spacing; else the
  opposite. So " So" next to a chosen " The" that became '▁The' maps to '▁So'.
  """
  student_spaced = student_piece.startswith(vocab.space_marker)
  chosen_spaced = _starts_with_space(chosen_text)
  merged: dict[int, float] = {}
  for text, log_prob in top_k:
    core = text.lstrip()
    for marker in _SPACE_MARKERS:
      core = core.lstrip(marker)
    if not core:
      continue
    spaced = student_spaced if _starts_with_space(text) == chosen_spaced else not student_spaced
    piece = (vocab.space_marker if spaced else "") + core.replace(" ", vocab.space_marker)
    index = vocab.piece_to_id(piece)
    if index is None:
      continue
    merged[index] = merged.get(index, 0.0) + math.exp(float(log_prob))
  best = sorted(merged.items(), key=lambda item: -item[1])[:k]
  return [i for i, _ in best], [p for _, p in best]


def teacher_targets(teacher_tokens: Sequence[str], teacher_top_k: Sequence[TopK],
                    student_ids: Sequence[int], vocab: StudentVocabulary,
                    k: int = DEFAULT_TOP_K, band: int | None = DEFAULT_BAND,
                    span_penalty: bool = False) -> TeacherTargets:
  """Sparse per-student-position targets from a teacher's tokens and top-k lists.

  Args:
    teacher_tokens: the teacher's token texts (spaces included, as decoded).
    teacher_top_k: per teacher token, its (token text, log-prob) alternatives.
    student_ids: the student's token ids of the same text (no EOS).
    vocab: the student vocabulary (see `student_vocabulary`).
    k: number of slots per position; extra alternatives are dropped, missing ones
      padded with (id 0, prob 0).
    band: DTW band in characters (None = exact full matrix).
    span_penalty: add `span_penalties` to the costs (off = the recipe as published).
  """
  if len(teacher_tokens) != len(teacher_top_k):
    raise ValueError(f"Got {len(teacher_tokens)} teacher tokens but {len(teacher_top_k)} "
                     "top-k lists; every teacher token needs its own list.")
  targets = one_hot_targets(student_ids, k)
  pieces = vocab.pieces(student_ids)
  alignment = align_tokens(teacher_tokens, pieces, band, span_penalty)
  matched = np.zeros((len(student_ids),), bool)
  for j in np.nonzero(alignment.teacher_for_student >= 0)[0].tolist():
    i = int(alignment.teacher_for_student[j])
    ids, probs = map_alternatives(teacher_top_k[i], teacher_tokens[i], pieces[j], vocab, k)
    if not ids:
      continue  # No alternative exists in the student vocabulary: keep the one-hot.
    targets.indices[j] = 0
    targets.probs[j] = 0.0
    targets.indices[j, :len(ids)] = ids
    targets.probs[j, :len(ids)] = probs
    matched[j] = True
  return TeacherTargets(targets.indices, targets.probs, matched, alignment.cost)


def parse_top_k(entry: Mapping | Sequence) -> list[tuple[str, float]]:
  """One position's alternatives from JSON: [[text, logprob], ...] or {text: logprob}."""
  if isinstance(entry, Mapping):
    return [(str(t), float(lp)) for t, lp in entry.items()]
  try:
    return [(str(t), float(lp)) for t, lp in entry]
  except (TypeError, ValueError) as e:
    raise ValueError(f"Teacher top-k entry {entry!r} is neither [[token, log_prob], ...] "
                     "nor {token: log_prob}.") from e


def benchmark_alignment(examples: Iterable[tuple[Sequence[str], Sequence[TopK], Sequence[int]]],
                        vocab: StudentVocabulary, k: int = DEFAULT_TOP_K,
                        band: int | None = DEFAULT_BAND,
                        span_penalty: bool = False) -> dict[str, float]:
  """Times `teacher_targets` over (teacher tokens, top-k lists, student ids) examples.

  Returns examples/s, student tokens/s and the fraction of student tokens that
  took the teacher's distribution (numbers in the module docstring).
  """
  start = time.perf_counter()
  count = tokens = matched = 0
  for teacher_tokens, top_k, student_ids in examples:
    result = teacher_targets(teacher_tokens, top_k, student_ids, vocab, k, band, span_penalty)
    matched += int(result.matched.sum())
    count += 1
    tokens += len(student_ids)
  seconds = time.perf_counter() - start
  return {"examples": count, "seconds": seconds, "examples_per_second": count / seconds,
          "student_tokens_per_second": tokens / seconds,
          "matched_fraction": matched / max(tokens, 1)}
