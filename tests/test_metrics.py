"""Metric functions, their postprocessors, and rank classification through seqio.Evaluator."""
import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from instruct_jax.eval import metrics
from instruct_jax.data import templates
from tasks_registry import registration


def test_accuracy():
  assert metrics.accuracy(["yes", "no"], ["yes", "yes"]) == {"accuracy": 50.0}
  assert metrics.accuracy([b"yes"], [" yes\n"]) == {"accuracy": 100.0}
  assert metrics.accuracy([["a", "b"], ["c"]], ["b", "a"]) == {"accuracy": 50.0}
  assert metrics.accuracy([], []) == {"accuracy": 0.0}
  with pytest.raises(ValueError, match="pair up"):
    metrics.accuracy(["a"], [])


def test_normalisation_exact_match_and_squad():
  assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
  assert metrics.normalize_answer("an apple, a pear") == "apple pear"
  assert metrics.exact_match([["Paris", "the city of Paris"]], ["paris."]) == {
      "exact_match": 100.0}
  scores = metrics.squad([["the cat sat"], ["blue"]], ["cat sat down", "red"])
  # Example 1: 2 common tokens, precision 2/3, recall 2/2 -> F1 0.8; example 2: 0.
  assert scores["em"] == 0.0
  assert scores["f1"] == pytest.approx(40.0)
  best = metrics.squad([np.array([b"no", b"Barack Obama"], dtype=object)], ["obama barack"])
  assert best == {"em": 0.0, "f1": pytest.approx(100.0)}
  assert metrics.squad([[""]], [""]) == {"em": 100.0, "f1": 100.0}


def test_rouge():
  same = metrics.rouge(["The cat sat on the mat. It purred."],
                       ["The cat sat on the mat. It purred."])
  assert set(same) == {"rouge1", "rouge2", "rougeLsum"}
  assert all(v == pytest.approx(100.0) for v in same.values())
  assert metrics.rouge(["alpha beta"], ["gamma delta"])["rouge1"] == 0.0
  multi = metrics.rouge([["wrong words here", "gamma delta"]], ["gamma delta"])
  assert multi["rouge1"] == pytest.approx(100.0)


def test_bleu():
  assert metrics.bleu(["the quick brown fox jumps"], ["the quick brown fox jumps"])[
      "bleu"] == pytest.approx(100.0)
  partial = metrics.bleu(["the quick brown fox jumps over the dog"],
                         ["the quick brown cat jumps over a dog"])["bleu"]
  assert 0.0 < partial < 100.0
  two_refs = metrics.bleu([["a b c d e", "the quick brown fox jumps"]],
                          ["the quick brown fox jumps"])["bleu"]
  assert two_refs == pytest.approx(100.0)


def test_postprocessors():
  example = {"answers": np.array([b"Paris", b"paris city"], dtype=object),
             "example_id": np.int64(7), "is_correct": np.bool_(True)}
  assert metrics.answers_postprocessor("Paris", example=example, is_target=True) == [
      "Paris", "paris city"]
  assert metrics.answers_postprocessor("pred", example=example) == "pred"
  assert metrics.answers_postprocessor("x", example={}, is_target=True) == "x"
  assert metrics.rank_classification_postprocessor("opt", example=example, is_target=True) == (
      7, True)
  assert metrics.rank_classification_postprocessor(-1.5, example=example) == -1.5
  with pytest.raises(ValueError, match="rank_classification_rows"):
    metrics.rank_classification_postprocessor("opt", example={"targets": 1}, is_target=True)


def test_rank_classification_accuracy():
  targets = [(5, False), (5, True), (9, True), (9, False), (9, False), (2, True), (2, False)]
  scores = [-3.0, -1.0, -2.0, -0.5, -4.0, -1.0, -1.0]
  # Example 5: correct option wins. 9: a wrong option wins. 2: tie -> first row (correct).
  result = metrics.rank_classification_accuracy(targets, scores)
  assert result == {"accuracy": pytest.approx(200 / 3), "num_examples": 3.0}
  per_token = [np.array([-1.0, -2.0]), np.array([-0.5])]  # sums: -3.0 vs -0.5
  assert metrics.rank_classification_accuracy([(1, True), (1, False)], per_token)[
      "accuracy"] == 0.0
  with pytest.raises(ValueError, match="pair up"):
    metrics.rank_classification_accuracy([(1, True)], [])


# --------------------------------------------------------------------------
# Rank classification with seqio's own Evaluator, on a generated task.

_PREFIX = "metricstest_"
_QUESTIONS = [("Is fire hot?", ["yes", "no"], "yes"),
              ("Capital of France?", ["Rome", "Paris", "Oslo"], "Paris"),
              ("2 + 2 = ?", ["3", "4"], "4"),
              ("Is ice hot?", ["yes", "no"], "no")]


def _dataset_fn(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({
      "inputs": [q for q, _, _ in _QUESTIONS],
      "targets": [a for _, _, a in _QUESTIONS],
      "options": tf.ragged.constant([o for _, o, _ in _QUESTIONS]),
  }).map(lambda ex: {**ex, "options": ex["options"]})


def _densify(dataset):
  return dataset.map(lambda ex: {k: (v.to_tensor() if isinstance(v, tf.RaggedTensor) else v)
                                 for k, v in ex.items()})


@pytest.fixture(scope="module")
def rank_task():
  vocab = seqio.ByteVocabulary()
  name = _PREFIX + "rank"
  registration.replace_task(
      name,
      source=seqio.FunctionDataSource(_dataset_fn, splits=("validation",)),
      preprocessors=[_densify, templates.rank_classification_rows,
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)},
      postprocess_fn=metrics.rank_classification_postprocessor,
      metric_fns=[metrics.rank_classification_accuracy])
  yield name
  registration.remove_with_prefix(_PREFIX)


def _score_fn(dataset, model_feature_shapes=None, *, pick):
  """Fake model: scores each row by pick(question text, option text)."""
  del model_feature_shapes
  vocab = seqio.ByteVocabulary()

  def text(tokens):
    return vocab.decode([t for t in tokens if t > 1])

  return [(index, pick(text(ex["encoder_input_tokens"]), text(ex["decoder_target_tokens"])))
          for index, ex in dataset.as_numpy_iterator()]


def test_rank_classification_with_seqio_evaluator(rank_task):
  evaluator = seqio.Evaluator(
      mixture_or_task_name=rank_task,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="validation")
  answers = {q: a for q, _, a in _QUESTIONS}
  oracle = functools.partial(_score_fn, pick=lambda q, o: 0.0 if answers[q] == o else -5.0)
  result, _ = evaluator.evaluate(compute_metrics=True, score_fn=oracle)
  assert result.result()[rank_task] == {"accuracy": 100.0, "num_examples": 4.0}
  # Prefer the longest option (ties: first): right for "yes" (fire) and "Paris" only.
  longest = functools.partial(_score_fn, pick=lambda q, o: float(len(o)))
  result, _ = evaluator.evaluate(compute_metrics=True, score_fn=longest)
  assert result.result()[rank_task]["accuracy"] == pytest.approx(50.0)
