"""Context-based QA datasets from TFDS as (context, pair) items for synthesizer tuning.

Each source names a TFDS dataset, its train / validation split names, and a
function from one decoded row to (context, QAPair) items; the tuning data
groups the items by context so one context carries all its questions. Forms:

  free-form         squad, coqa, quac, drop, trivia_qa (rc), hotpot_qa (mrqa)
  multiple choice   race, cosmos_qa, boolq (yes / no), multirc (one correct answer)
  chain of thought  qasc: the two facts are the context, the combined fact the reasoning

A row that cannot make a pair (no answer, an answer key outside the options,
"CANNOTANSWER") gives no items; nothing raises on odd rows.
"""
from __future__ import annotations

import dataclasses
import re
import string
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from instruct_jax.data.ipt import synthesizer_format as fmt

Row = Mapping[str, Any]
Item = tuple[str, fmt.QAPair]
EVIDENCE_WINDOW_WORDS = 400
YES_NO = ("yes", "no")


@dataclasses.dataclass(frozen=True)
class QASource:
  """A TFDS dataset and how its rows become (context, pair) items."""
  name: str
  tfds_name: str
  splits: Mapping[str, str]
  items: Callable[[Row], Iterator[Item]]


def text(value) -> str:
  """A TFDS text feature (bytes, str or a 0-d array) as clean str."""
  if isinstance(value, np.ndarray):
    value = value.item() if value.ndim == 0 else value.tolist()
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  return str(value).strip()


def texts(values) -> list[str]:
  return [text(v) for v in (values.tolist() if isinstance(values, np.ndarray) else values)]


def _pair(context: str, question: str, answer: str) -> Iterator[Item]:
  if context and question and answer:
    yield context, fmt.QAPair(question, answer)


def _multiple_choice(context: str, question: str, options: list[str], correct: int
                     ) -> Iterator[Item]:
  options = [o for o in options if o]
  if 0 <= correct < len(options) and len(options) >= 2:
    yield from _pair(context, fmt.multiple_choice_question(question, options), options[correct])


def _letter_index(key: str) -> int:
  key = key.strip().upper()
  return string.ascii_uppercase.index(key) if len(key) == 1 and key.isalpha() else -1


def squad_items(row: Row) -> Iterator[Item]:
  answers = texts(row["answers"]["text"])
  yield from _pair(text(row["context"]), text(row["question"]), answers[0] if answers else "")


def coqa_items(row: Row) -> Iterator[Item]:
  story = text(row["story"])
  for question, answer in zip(texts(row["questions"]), texts(row["answers"]["input_text"])):
    yield from _pair(story, question, answer)


def quac_items(row: Row) -> Iterator[Item]:
  answers = [a for a in texts(row["answers"]["text"]) if a != "CANNOTANSWER"]
  context = text(row["context"]).removesuffix("CANNOTANSWER").strip()
  yield from _pair(context, text(row["question"]), answers[0] if answers else "")


def drop_items(row: Row) -> Iterator[Item]:
  yield from _pair(text(row["passage"]), text(row["question"]), text(row["answer"]))


def boolq_items(row: Row) -> Iterator[Item]:
  question = text(row["question"])
  question = question[:1].upper() + question[1:] + ("" if question.endswith("?") else "?")
  label = int(row["label"])
  # super_glue/boolq: 1 = True. Its test split is unlabelled (-1).
  if label in (0, 1):
    yield from _multiple_choice(text(row["passage"]), question, list(YES_NO), 1 - label)


def race_items(row: Row) -> Iterator[Item]:
  article = text(row["article"])
  for question, options, key in zip(texts(row["questions"]), row["options"],
                                    texts(row["answers"])):
    yield from _multiple_choice(article, question, texts(options), _letter_index(key))


def trivia_qa_items(row: Row) -> Iterator[Item]:
  answer = text(row["answer"]["value"])
  evidence = texts(row["entity_pages"]["wiki_context"]) + texts(
      row["search_results"]["search_context"])
  evidence = [e for e in evidence if e]
  if not evidence or not answer:
    return
  with_answer = [e for e in evidence if answer.lower() in e.lower()]
  document = (with_answer or evidence)[0]
  words = document.split()
  start = 0
  if with_answer:
    position = document.lower().index(answer.lower())
    start = max(0, len(document[:position].split()) - EVIDENCE_WINDOW_WORDS // 2)
  context = " ".join(words[start:start + EVIDENCE_WINDOW_WORDS])
  yield from _pair(context, text(row["question"]), answer)


def cosmos_qa_items(row: Row) -> Iterator[Item]:
  options = [text(row[f"answer{i}"]) for i in range(4)]
  yield from _multiple_choice(text(row["context"]), text(row["question"]), options,
                              int(row["label"]))


def qasc_items(row: Row) -> Iterator[Item]:
  facts = " ".join(f for f in (text(row["fact1"]), text(row["fact2"])) if f)
  options = texts(row["choices"]["text"])
  correct = _letter_index(text(row["answerKey"]))
  reasoning = text(row["combinedfact"])
  if facts and reasoning and 0 <= correct < len(options):
    question = fmt.multiple_choice_question(text(row["question"]), options)
    if not reasoning.endswith((".", "!", "?")):
      reasoning += "."
    yield facts, fmt.chain_of_thought_pair(question, reasoning, options[correct])


def multirc_items(row: Row) -> Iterator[Item]:
  """One row per (question, candidate): a correct candidate is a free-form answer."""
  if int(row["label"]) == 1:
    yield from _pair(text(row["paragraph"]), text(row["question"]), text(row["answer"]))


_MRQA_MARKUP = re.compile(r"\s*\[(?:PAR|DOC|TLE|SEP)\]\s*")


def mrqa_items(row: Row) -> Iterator[Item]:
  context = _MRQA_MARKUP.sub("\n", text(row["context"])).strip()
  answers = texts(row["answers"])
  yield from _pair(context, text(row["question"]), answers[0] if answers else "")


_TRAIN_VALIDATION = {"train": "train", "validation": "validation"}
SOURCES = (
    QASource("squad", "squad/v1.1:3.*.*", _TRAIN_VALIDATION, squad_items),
    QASource("coqa", "coqa:1.*.*", {"train": "train", "validation": "test"}, coqa_items),
    QASource("quac", "quac:1.*.*", _TRAIN_VALIDATION, quac_items),
    QASource("drop", "drop:2.*.*", {"train": "train", "validation": "dev"}, drop_items),
    QASource("boolq", "super_glue/boolq:1.*.*", _TRAIN_VALIDATION, boolq_items),
    QASource("multirc", "super_glue/multirc:1.*.*", _TRAIN_VALIDATION, multirc_items),
    QASource("race_high", "race/high:2.*.*", {"train": "train", "validation": "dev"}, race_items),
    QASource("race_middle", "race/middle:2.*.*", {"train": "train", "validation": "dev"},
             race_items),
    QASource("trivia_qa", "trivia_qa/rc:1.*.*", _TRAIN_VALIDATION, trivia_qa_items),
    QASource("cosmos_qa", "cosmos_qa:1.*.*", _TRAIN_VALIDATION, cosmos_qa_items),
    QASource("qasc", "qasc:0.*.*", _TRAIN_VALIDATION, qasc_items),
    QASource("hotpot_qa", "mrqa/hotpot_qa:1.*.*", {"train": "train", "validation": "validation"},
             mrqa_items),
)
SOURCES_BY_NAME = {s.name: s for s in SOURCES}
