"""The instruction synthesizer's serialisation: (text, pairs) <-> marked-up string.

A tuned synthesizer only works with the exact markers it was tuned on, so this
module is a file format, not a template choice:

  <s> <CON> {text} </CON>\\n\\n<QUE> {q1} <ANS> {a1} </END>\\n\\n<QUE> {q2} <ANS> {a2} </END></s>

Several examples are concatenated back to back with nothing between them
(`... </END></s><s> <CON> ...`). Multiple-choice questions carry an `Options:`
line and one `- option` line per option inside the question, their answer is the
option text; chain-of-thought questions end with "Let's think step by step." and
their answer is the reasoning followed by "Therefore, the answer is X".

Parsing is deliberately forgiving: generated text is model output, so bad text
never raises; it yields fewer (maybe zero) pairs and a count of what was skipped.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

BOS = "<s>"
EOS = "</s>"
CONTEXT_START = "<CON>"
CONTEXT_END = "</CON>"
QUESTION = "<QUE>"
ANSWER = "<ANS>"
PAIR_END = "</END>"
MARKERS = (BOS, EOS, CONTEXT_START, CONTEXT_END, QUESTION, ANSWER, PAIR_END)
PAIR_SEPARATOR = "\n\n"

OPTIONS_HEADER = "Options:"
OPTION_BULLET = "- "
COT_TRIGGER = "Let's think step by step."
COT_ANSWER_LEAD = "Therefore, the answer is"

FREE_FORM = "free_form"
MULTIPLE_CHOICE = "multiple_choice"
CHAIN_OF_THOUGHT = "chain_of_thought"
KINDS = (FREE_FORM, MULTIPLE_CHOICE, CHAIN_OF_THOUGHT)


@dataclasses.dataclass(frozen=True)
class QAPair:
  """One synthesized (or dataset) task on a text: an instruction and its response."""
  question: str
  answer: str

  @property
  def options(self) -> tuple[str, ...]:
    """The options of a multiple-choice question (empty for other kinds)."""
    return split_options(self.question)[1]

  @property
  def kind(self) -> str:
    """FREE_FORM, MULTIPLE_CHOICE or CHAIN_OF_THOUGHT, read from the markers in the text.

    Chain of thought wins over multiple choice: a reasoned answer to an options
    question is rendered with its reasoning.
    """
    if (self.question.rstrip().endswith(COT_TRIGGER) or COT_ANSWER_LEAD in self.answer):
      return CHAIN_OF_THOUGHT
    if self.options:
      return MULTIPLE_CHOICE
    return FREE_FORM

  def to_json(self) -> dict:
    return {"question": self.question, "answer": self.answer}

  @classmethod
  def from_json(cls, record) -> "QAPair":
    return cls(question=str(record["question"]), answer=str(record["answer"]))


def multiple_choice_question(question: str, options: Sequence[str]) -> str:
  """`question` with its options block; the answer of such a pair is the option text."""
  if not options:
    raise ValueError("A multiple-choice question needs at least one option.")
  lines = [question.rstrip(), OPTIONS_HEADER]
  lines += [OPTION_BULLET + " ".join(str(o).split()) for o in options]
  return "\n".join(lines)


def split_options(question: str) -> tuple[str, tuple[str, ...]]:
  """(stem, options) of a question with an options block; (question, ()) without one.

  The block is the last `Options:` line followed only by `- option` lines (a
  trailing "Let's think step by step." line may follow the options).
  """
  lines = question.split("\n")
  tail = len(lines)
  if tail and lines[-1].strip() == COT_TRIGGER:
    tail -= 1
  for header in range(tail - 1, -1, -1):
    if lines[header].strip() == OPTIONS_HEADER:
      bullets = lines[header + 1:tail]
      if bullets and all(b.startswith(OPTION_BULLET) for b in bullets):
        return ("\n".join(lines[:header]).rstrip(),
                tuple(b[len(OPTION_BULLET):].strip() for b in bullets))
      break
  return question, ()


def chain_of_thought_pair(question: str, reasoning: str, answer: str) -> QAPair:
  """A chain-of-thought pair: the trigger ends the question, the answer ends the response.

  After an options block the trigger gets its own line.
  """
  stem = question.rstrip()
  if not stem.endswith(COT_TRIGGER):
    separator = "\n" if split_options(stem)[1] else " "
    stem = f"{stem}{separator}{COT_TRIGGER}"
  reasoning = reasoning.strip()
  return QAPair(stem, f"{reasoning} {COT_ANSWER_LEAD} {answer.strip()}".lstrip())


def split_reasoning(answer: str) -> tuple[str, str]:
  """(reasoning, final answer) of a chain-of-thought answer; ("", answer) otherwise."""
  head, lead, tail = answer.rpartition(COT_ANSWER_LEAD)
  if not lead:
    return "", answer
  return head.strip(), tail.strip()


# --------------------------------------------------------------------------
# Serialisation.


def serialize_context(text: str) -> str:
  """The marked-up raw text that opens an example (and a round-1 prompt)."""
  return f"{BOS} {CONTEXT_START} {text} {CONTEXT_END}\n\n"


def serialize_pair(pair: QAPair) -> str:
  return f"{QUESTION} {pair.question} {ANSWER} {pair.answer} {PAIR_END}"


def serialize_pairs(pairs: Iterable[QAPair]) -> str:
  """The synthesizer's output for one text: pairs separated by a blank line."""
  return PAIR_SEPARATOR.join(serialize_pair(p) for p in pairs)


def serialize_example(text: str, pairs: Iterable[QAPair]) -> str:
  """A finished example: context, its pairs, and the end-of-example marker."""
  return serialize_context(text) + serialize_pairs(pairs) + EOS


# --------------------------------------------------------------------------
# Parsing.


@dataclasses.dataclass
class ParsedPairs:
  """The pairs read from one generated text and what was skipped.

  malformed: complete pieces (ending in `</END>`) that broke a rule.
  incomplete_tail: text after the last `</END>` (besides an end-of-example
  marker) was dropped, e.g. generation hit its token limit. duplicates:
  well-formed pairs dropped because an earlier question was the same.
  """
  pairs: list[QAPair]
  malformed: int
  incomplete_tail: bool
  duplicates: int = 0


def _parse_piece(piece: str) -> QAPair | None:
  piece = piece.strip()
  if piece.startswith(EOS):  # the `</s>` of an example that continued with another one
    piece = piece[len(EOS):].lstrip()
  if not piece.startswith(QUESTION) or piece.count(ANSWER) != 1:
    return None
  question, answer = piece[len(QUESTION):].split(ANSWER)
  question, answer = question.strip(), answer.strip()
  if not question or not answer:
    return None
  if any(marker in question or marker in answer for marker in MARKERS):
    return None  # a nested marker: the model lost track of the format
  return QAPair(question, answer)


def parse_pairs(generated: str) -> ParsedPairs:
  """Reads the pairs of a synthesizer's continuation; never raises.

  Rules (the reference's, plus one): split on `</END>` and drop the incomplete
  last piece; a piece must start with `<QUE>`, hold exactly one `<ANS>` and a
  non-empty question and answer; a question repeated in any letter case is
  dropped (the first is kept). Ours: a piece with any other marker inside its
  question or answer (`<QUE> a <QUE> b <ANS> c`) is malformed too.
  """
  if not isinstance(generated, str):
    generated = bytes(generated).decode("utf-8", errors="replace")
  pieces = generated.split(PAIR_END)
  tail = pieces.pop().strip()
  if tail.startswith(EOS):
    tail = tail[len(EOS):].strip()
  pairs, seen, malformed, duplicates = [], set(), 0, 0
  for piece in pieces:
    pair = _parse_piece(piece)
    if pair is None:
      malformed += 1
    elif pair.question.lower() in seen:
      duplicates += 1
    else:
      seen.add(pair.question.lower())
      pairs.append(pair)
  return ParsedPairs(pairs=pairs, malformed=malformed, incomplete_tail=bool(tail),
                     duplicates=duplicates)
