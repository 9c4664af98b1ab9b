"""Chain-of-thought data formats, prompts, answer extraction and numeric scoring.

The CoT-specialization recipe tunes a student on four formats of the same
solved math problems and mixes them:

  zero_shot      question                          -> "The answer is N."
  zero_shot_cot  question + "Let's think step by step." -> reasoning ... "The answer is N."
  few_shot       4 solved exemplars (answer only) + question -> "The answer is N."
  few_shot_cot   4 exemplars with reasoning + question      -> reasoning ... "The answer is N."

In-context formats keep both in-context and zero-shot ability; zero-shot
formats trade in-context ability for zero-shot ability.

Evaluation reads the LAST number of the model's output and compares it
numerically with the gold answer ("1,234" is 1234; "$5.50" is 5.5).

Everything here is plain Python (the CoT sources build their prompts in Python,
where exemplar sampling and token budgets are easy); the seqio side lives in
tasks_registry/cot.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from instruct_jax.data import alignment

ZERO_SHOT = "zero_shot"
ZERO_SHOT_COT = "zero_shot_cot"
FEW_SHOT = "few_shot"
FEW_SHOT_COT = "few_shot_cot"
FORMATS = (ZERO_SHOT, ZERO_SHOT_COT, FEW_SHOT, FEW_SHOT_COT)
COT_FORMATS = (ZERO_SHOT_COT, FEW_SHOT_COT)
NUM_EXEMPLARS = 4

COT_TRIGGER = "Let's think step by step."
ANSWER_PREFIX = "The answer is"
EXEMPLAR_SEPARATOR = "\n\n"


def check_format(name: str) -> str:
  if name not in FORMATS:
    raise ValueError(f"Unknown CoT format {name!r}; expected one of {', '.join(FORMATS)}.")
  return name


def is_cot(name: str) -> bool:
  return check_format(name) in COT_FORMATS


def is_few_shot(name: str) -> bool:
  return check_format(name) in (FEW_SHOT, FEW_SHOT_COT)


# --------------------------------------------------------------------------
# Numbers and answers.

# A number: optional sign, digits with optional thousands commas, optional
# decimals; or a bare decimal like ".5". Commas must sit between digit groups
# of three, so "3,4" (a list) reads as 3 and 4.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w\d])-?\.\d+")


def find_numbers(text: str) -> list[float]:
  """Every number in `text`, in order, as floats (commas removed)."""
  return [float(match.replace(",", "")) for match in _NUMBER.findall(text)]


def extract_answer(text: str) -> float | None:
  """The last number in a model output (None if it has no number)."""
  numbers = find_numbers(text)
  return numbers[-1] if numbers else None


def parse_number(value: Any) -> float | None:
  """A gold answer as a float: numbers as they are, strings through `extract_answer`."""
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return parse_number(value.item())
  return extract_answer(str(value))


def answers_match(prediction: float | None, gold: float | None,
                  rel_tol: float = 1e-6, abs_tol: float = 1e-4) -> bool:
  """Numeric equality with a small tolerance ("18.0" equals 18)."""
  if prediction is None or gold is None:
    return False
  return math.isclose(prediction, gold, rel_tol=rel_tol, abs_tol=abs_tol)


def format_number(value: float) -> str:
  """Gold numbers as text: integers without '.0', others as given."""
  if float(value).is_integer():
    return str(int(value))
  return repr(float(value))


def math_accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """seqio metric: % of predictions whose last number equals the gold number.

  Targets may be numbers or texts ending with the answer (the last number is
  used); predictions are raw model outputs.
  """
  if len(targets) != len(predictions):
    raise ValueError(f"math_accuracy got {len(targets)} targets but {len(predictions)} "
                     "predictions; they must pair up one to one.")
  hits = [answers_match(parse_number(p) if isinstance(p, (int, float)) else
                        extract_answer(_text(p)), parse_number(t))
          for t, p in zip(targets, predictions)]
  return {"accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)


# --------------------------------------------------------------------------
# Problems and their texts.


@dataclasses.dataclass(frozen=True)
class MathProblem:
  """One solved problem; `rationale` is the worked solution ('' when unknown)."""
  question: str
  answer: float
  rationale: str = ""


_CALCULATOR = re.compile(r"<<[^>]*>>")


def parse_gsm8k_answer(answer: str) -> tuple[str, float]:
  """GSM8K 'answer' field -> (rationale without calculator marks, final number).

  The field is the worked solution, one step per line with <<48/2=24>>
  calculator annotations, then a line '#### 72'.
  """
  if "####" not in answer:
    raise ValueError(f"GSM8K answer {answer[:80]!r}... has no '#### <number>' line; is "
                     "this really a GSM8K record (question, answer)?")
  rationale, final = answer.rsplit("####", 1)
  number = extract_answer(final)
  if number is None:
    raise ValueError(f"GSM8K final answer {final.strip()!r} is not a number.")
  rationale = _CALCULATOR.sub("", rationale)
  rationale = " ".join(line.strip() for line in rationale.splitlines() if line.strip())
  return rationale, number


def answer_sentence(answer: float) -> str:
  return f"{ANSWER_PREFIX} {format_number(answer)}."


def cot_target(rationale: str, answer: float) -> str:
  """Reasoning that ends with 'The answer is N.' (appended unless already there)."""
  rationale = " ".join(rationale.split())
  tail = rationale[-80:]
  if ANSWER_PREFIX.lower() in tail.lower() and answers_match(extract_answer(tail), answer):
    return rationale
  return f"{rationale} {answer_sentence(answer)}".strip()


def target_text(problem: MathProblem, fmt: str) -> str:
  if is_cot(fmt):
    return cot_target(problem.rationale, problem.answer)
  return answer_sentence(problem.answer)


def question_block(question: str, fmt: str) -> str:
  """How one question is posed; zero-shot CoT adds the step-by-step trigger.

  In-context CoT needs no trigger: the exemplars' reasoning shows what to do.
  """
  block = f"Q: {' '.join(question.split())}\nA:"
  return f"{block} {COT_TRIGGER}" if fmt == ZERO_SHOT_COT else block


def exemplar_text(problem: MathProblem, fmt: str) -> str:
  return f"{question_block(problem.question, fmt)} {target_text(problem, fmt)}"


def build_prompt(question: str, fmt: str, exemplars: Sequence[MathProblem] = (),
                 max_tokens: int | None = None,
                 count_tokens: Callable[[str], int] | None = None) -> str:
  """The model input for `question` in format `fmt`.

  Few-shot formats put the exemplars first (answer-only or with reasoning, as
  the format says), separated by blank lines. With `max_tokens`, exemplars are
  dropped from the end until the prompt fits (`count_tokens` measures it), so
  the question itself is never cut by later truncation.
  """
  query = question_block(question, fmt)
  if not is_few_shot(fmt):
    return query
  shots = [exemplar_text(e, fmt) for e in exemplars]
  keep = len(shots)
  while keep > 0 and max_tokens is not None and count_tokens is not None and count_tokens(
      EXEMPLAR_SEPARATOR.join([*shots[:keep], query])) > max_tokens:
    keep -= 1
  return EXEMPLAR_SEPARATOR.join([*shots[:keep], query])


def sample_exemplars(pool_size: int, count: int, exclude: int, seed: int) -> list[int]:
  """`count` distinct indices of the pool other than `exclude`, fixed per (seed, exclude)."""
  rng = np.random.default_rng([seed, exclude])
  candidates = pool_size - (1 if 0 <= exclude < pool_size else 0)
  count = min(count, candidates)
  picks = rng.choice(candidates, size=count, replace=False)
  return [int(p) + (1 if 0 <= exclude <= p else 0) for p in picks]


# Fixed exemplars for few-shot evaluation prompts (our own problems), so every
# checkpoint and every held-out set sees the same prompt.
EVAL_EXEMPLARS = (
    MathProblem(
        question="A baker made 24 muffins and sold 15 of them. How many muffins are left?",
        answer=9,
        rationale="The baker started with 24 muffins and sold 15. 24 - 15 = 9."),
    MathProblem(
        question="Each box holds 6 pencils. How many pencils are in 7 boxes?",
        answer=42,
        rationale="There are 7 boxes with 6 pencils each. 7 * 6 = 42."),
    MathProblem(
        question="Leo had 12 stickers. His sister gave him 8 more, and he then shared "
                 "the stickers equally with his friend. How many stickers did each get?",
        answer=10,
        rationale="Leo had 12 + 8 = 20 stickers. Shared between 2 children, each gets "
                  "20 / 2 = 10."),
    MathProblem(
        question="A ticket costs $3.50. How much do 4 tickets cost in dollars?",
        answer=14,
        rationale="Four tickets cost 4 * 3.50 = 14 dollars."),
)


# --------------------------------------------------------------------------
# Files: teacher chains of thought and the held-out math sets.


@dataclasses.dataclass(frozen=True)
class TeacherRecord:
  """A teacher's solution; the token lists are empty when the file has none."""
  problem: MathProblem  # rationale = the teacher's chain of thought
  teacher_tokens: tuple[str, ...] = ()
  teacher_top_k: tuple[tuple[tuple[str, float], ...], ...] = ()


def _open_text(path: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile reads gs:// too)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"No such file: {path!r}. Check the path (local or gs://).")
  return tf.io.gfile.GFile(path, "r")


def _record_answer(value: Any, where: str) -> float:
  number = parse_number(value)
  if number is None:
    raise ValueError(f"{where}: answer {value!r} is not a number; CoT math records need a "
                     "numeric answer (e.g. 18 or \"1,234\").")
  return number


def parse_teacher_record(record: Mapping[str, Any], where: str = "record") -> TeacherRecord:
  """One JSON line of a teacher file (see `load_teacher_file`)."""
  missing = [k for k in ("question", "answer", "chain_of_thought") if k not in record]
  if missing:
    raise ValueError(f"{where} lacks {missing}; each teacher line needs question, answer, "
                     f"chain_of_thought (and optionally teacher_tokens). Got keys "
                     f"{sorted(record)}.")
  problem = MathProblem(question=str(record["question"]),
                        answer=_record_answer(record["answer"], where),
                        rationale=str(record["chain_of_thought"]))
  entries = record.get("teacher_tokens") or ()
  tokens, top_k = [], []
  for position, entry in enumerate(entries):
    if not isinstance(entry, Mapping) or "token" not in entry:
      raise ValueError(f"{where}: teacher_tokens[{position}] = {entry!r}; expected an "
                       "object {\"token\": text, \"top_k\": [[text, log_prob], ...]}.")
    tokens.append(str(entry["token"]))
    top_k.append(tuple(alignment.parse_top_k(entry.get("top_k") or [])))
  return TeacherRecord(problem, tuple(tokens), tuple(top_k))


def load_teacher_file(path: str) -> list[TeacherRecord]:
  """Reads a teacher JSON-lines file.

  One object per line:
    {"question": str, "answer": number or numeric string,
     "chain_of_thought": str,                      # the teacher's reasoning text
     "teacher_tokens": [                           # optional, for distribution matching
        {"token": " Natalia", "top_k": [[" Natalia", -0.01], [" She", -4.7], ...]},
        ...]}
  `teacher_tokens` are the teacher's tokens of `chain_of_thought` in order, as
  decoded text (leading spaces kept; 'Ġ'/'▁' markers are understood too), each
  with its top-k alternatives as [token, natural-log probability] pairs (a
  {token: log_prob} object works as well). Blank lines are skipped.
  """
  records = []
  with _open_text(path) as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e}); teacher files hold one JSON "
                         "object per line.") from e
      records.append(parse_teacher_record(record, where))
  if not records:
    raise ValueError(f"Teacher file {path!r} holds no records.")
  return records


def _load_json_list(path: str, name: str, expected: str) -> list[Mapping[str, Any]]:
  with _open_text(path) as f:
    data = json.load(f)
  if not isinstance(data, list):
    raise ValueError(f"{name} file {path!r} should be a JSON list of problems ({expected}); "
                     f"found a {type(data).__name__}.")
  return data


def load_multiarith(path: str) -> list[MathProblem]:
  """MultiArith's public JSON: [{"sQuestion": ..., "lSolutions": [N], ...}, ...]."""
  problems = []
  for index, item in enumerate(_load_json_list(path, "MultiArith",
                                               '{"sQuestion", "lSolutions"}')):
    solutions = item.get("lSolutions")
    if "sQuestion" not in item or not solutions:
      raise ValueError(f"MultiArith item {index} of {path!r} lacks sQuestion or lSolutions; "
                       f"got keys {sorted(item)}.")
    problems.append(MathProblem(item["sQuestion"].strip(),
                                _record_answer(solutions[0], f"{path}[{index}]")))
  return problems


def _body_question(item: Mapping[str, Any]) -> str:
  body, question = str(item["Body"]).strip(), str(item["Question"]).strip()
  if body and body[-1] not in ".?!":
    body += "."
  return f"{body} {question}".strip()


def load_svamp(path: str) -> list[MathProblem]:
  """SVAMP's public JSON: [{"Body": ..., "Question": ..., "Answer": N, ...}, ...]."""
  problems = []
  for index, item in enumerate(_load_json_list(path, "SVAMP",
                                               '{"Body", "Question", "Answer"}')):
    if not {"Body", "Question", "Answer"} <= set(item):
      raise ValueError(f"SVAMP item {index} of {path!r} needs Body, Question and Answer; "
                       f"got keys {sorted(item)}.")
    problems.append(MathProblem(_body_question(item),
                                _record_answer(item["Answer"], f"{path}[{index}]")))
  return problems


def _asdiv_answer(text: str) -> float | None:
  """ASDiv answers carry units in parentheses ('9 (apples)'); None unless one number."""
  numbers = find_numbers(re.sub(r"\([^)]*\)", " ", str(text)))
  return numbers[0] if len(numbers) == 1 else None


def load_asdiv(path: str) -> list[MathProblem]:
  """ASDiv as released (ASDiv.xml) or as JSON [{"Body", "Question", "Answer"}, ...].

  Answers keep their unit in parentheses ('9 (apples)'); problems whose answer
  is not a single number (ratios '3:4', several values '2; 5') are skipped, as is
  usual when scoring by the last number of the output.
  """
  if path.lower().endswith(".xml"):
    import xml.etree.ElementTree as ElementTree  # pylint: disable=g-import-not-at-top
    with _open_text(path) as f:
      root = ElementTree.fromstring(f.read())
    items = [{"Body": p.findtext("Body") or "", "Question": p.findtext("Question") or "",
              "Answer": p.findtext("Answer") or ""} for p in root.iter("Problem")]
  else:
    items = _load_json_list(path, "ASDiv", '{"Body", "Question", "Answer"}')
  problems = []
  for item in items:
    answer = _asdiv_answer(item.get("Answer", ""))
    if answer is not None and item.get("Question"):
      problems.append(MathProblem(_body_question(item), answer))
  if not problems:
    raise ValueError(f"ASDiv file {path!r} yielded no problems with a numeric answer.")
  return problems


HELDOUT_LOADERS: Mapping[str, Callable[[str], list[MathProblem]]] = {
    "multiarith": load_multiarith,
    "asdiv": load_asdiv,
    "svamp": load_svamp,
}
# File names looked for in a data directory, in order.
HELDOUT_FILE_NAMES: Mapping[str, tuple[str, ...]] = {
    "multiarith": ("MultiArith.json", "multiarith.json"),
    "asdiv": ("ASDiv.xml", "asdiv.xml", "ASDiv.json", "asdiv.json"),
    "svamp": ("SVAMP.json", "svamp.json"),
}
