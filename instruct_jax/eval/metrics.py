"""seqio metric functions and the target postprocessors that pair with them.

Metric functions follow seqio's legacy contract: `fn(targets, predictions)` for
generated text, `fn(targets, scores)` for score-based evaluation; each returns a
{name: float} dict of percentages in [0, 100] (BLEU on its usual 0-100 scale,
`num_examples` a count). Targets are what the task's
`postprocess_fn` returned for each example with `is_target=True`: a string, a
list of reference strings (QA, multi-reference generation), or for rank
classification an (example_id, is_correct) pair.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Any, Mapping, Sequence

import numpy as np


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return _text(value.item())
  return str(value)


def _references(target: Any) -> list[str]:
  """A target as a non-empty list of reference strings."""
  if isinstance(target, (str, bytes)):
    return [_text(target)]
  refs = [_text(t) for t in np.asarray(target, dtype=object).reshape(-1)]
  return refs or [""]


def _check_paired(name: str, targets: Sequence[Any], outputs: Sequence[Any], what: str) -> None:
  if len(targets) != len(outputs):
    raise ValueError(f"{name} got {len(targets)} targets but {len(outputs)} {what}; they "
                     "must pair up one to one (same examples, same order).")


def _mean_percent(values: Sequence[float]) -> float:
  return 100.0 * float(np.mean(values)) if len(values) else 0.0


# --------------------------------------------------------------------------
# Classification / exact string metrics.


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Percentage of predictions equal to their target (surrounding whitespace ignored).

  A list target counts as correct when any of its references matches.
  """
  _check_paired("accuracy", targets, predictions, "predictions")
  hits = [_text(p).strip() in {r.strip() for r in _references(t)}
          for t, p in zip(targets, predictions)]
  return {"accuracy": _mean_percent(hits)}


def normalize_answer(text: str) -> str:
  """SQuAD answer normalisation: lower case, no punctuation, articles or extra spaces."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(reference: str, prediction: str) -> float:
  ref_tokens = normalize_answer(reference).split()
  pred_tokens = normalize_answer(prediction).split()
  if not ref_tokens or not pred_tokens:
    return float(ref_tokens == pred_tokens)
  common = collections.Counter(ref_tokens) & collections.Counter(pred_tokens)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision = overlap / len(pred_tokens)
  recall = overlap / len(ref_tokens)
  return 2 * precision * recall / (precision + recall)


def exact_match(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Percentage of predictions equal to a reference after SQuAD normalisation."""
  _check_paired("exact_match", targets, predictions, "predictions")
  hits = [max(normalize_answer(r) == normalize_answer(_text(p)) for r in _references(t))
          for t, p in zip(targets, predictions)]
  return {"exact_match": _mean_percent(hits)}


def squad(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """SQuAD-style EM and token F1, each the best over an example's references."""
  _check_paired("squad", targets, predictions, "predictions")
  em, f1 = [], []
  for target, prediction in zip(targets, predictions):
    prediction = _text(prediction)
    refs = _references(target)
    em.append(max(normalize_answer(r) == normalize_answer(prediction) for r in refs))
    f1.append(max(_token_f1(r, prediction) for r in refs))
  return {"em": _mean_percent(em), "f1": _mean_percent(f1)}


# --------------------------------------------------------------------------
# Generation metrics.

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences_on_lines(text: str) -> str:
  # rougeLsum compares summaries sentence by sentence, one sentence per line.
  return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge(targets: Sequence[Any], predictions: Sequence[Any],
          score_keys: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")) -> dict[str, float]:
  """Mean ROUGE F-measure (x100) via rouge_score; best reference per example."""
  from rouge_score import rouge_scorer  # Imported here: only generation tasks need it.
  _check_paired("rouge", targets, predictions, "predictions")
  scorer = rouge_scorer.RougeScorer(list(score_keys), use_stemmer=True)
  totals = {key: [] for key in score_keys}
  for target, prediction in zip(targets, predictions):
    prediction = _sentences_on_lines(_text(prediction))
    best = {key: 0.0 for key in score_keys}
    for reference in _references(target):
      scores = scorer.score(_sentences_on_lines(reference), prediction)
      for key in score_keys:
        best[key] = max(best[key], scores[key].fmeasure)
    for key in score_keys:
      totals[key].append(best[key])
  return {key: _mean_percent(values) for key, values in totals.items()}


def bleu(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Corpus BLEU via sacrebleu (international tokenisation, as T5 reports it).

  List targets give several reference streams; shorter lists are padded by
  repeating their first reference.
  """
  import sacrebleu  # Imported here: only translation tasks need it.
  _check_paired("bleu", targets, predictions, "predictions")
  references = [_references(t) for t in targets]
  num_streams = max((len(r) for r in references), default=1)
  streams = [[r[i] if i < len(r) else r[0] for r in references] for i in range(num_streams)]
  score = sacrebleu.corpus_bleu([_text(p) for p in predictions], streams,
                                smooth_method="exp", tokenize="intl")
  return {"bleu": float(score.score)}


# --------------------------------------------------------------------------
# Postprocessors (seqio postprocess_fn) that shape targets for the metrics above.


def answers_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                          is_target: bool = False) -> Any:
  """Targets become the example's "answers" list (all references); outputs pass through."""
  if is_target and example is not None and "answers" in example:
    return _references(example["answers"])
  return output


def rank_classification_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                                      is_target: bool = False) -> Any:
  """Targets of rank-classification rows become (example_id, is_correct); scores pass through."""
  if not is_target:
    return output
  if example is None or "example_id" not in example or "is_correct" not in example:
    raise ValueError("rank_classification_postprocessor needs rows made by "
                     "instruct_jax.data.templates.rank_classification_rows (features "
                     f"example_id and is_correct); got {sorted(example or {})}.")
  return int(example["example_id"]), bool(example["is_correct"])


def rank_classification_accuracy(targets: Sequence[tuple[int, bool]],
                                 scores: Sequence[float]) -> dict[str, float]:
  """Accuracy of picking each example's highest-scoring option.

  `targets[i]` is row i's (example_id, is_correct) and `scores[i]` the model's
  log-likelihood of row i's target. Rows are grouped by example_id; an example
  is right when its best-scoring row is a correct option (ties go to the first
  row). Works with seqio.Evaluator score functions, whose outputs come back in
  dataset order.
  """
  _check_paired("rank_classification_accuracy", targets, scores, "scores")
  best: dict[int, tuple[float, bool]] = {}
  for (example_id, is_correct), score in zip(targets, scores):
    score = float(np.asarray(score).sum())  # Per-token scores sum to the sequence score.
    example_id = int(example_id)
    if example_id not in best or score > best[example_id][0]:
      best[example_id] = (score, bool(is_correct))
  return {"accuracy": _mean_percent([correct for _, correct in best.values()]),
          "num_examples": float(len(best))}
