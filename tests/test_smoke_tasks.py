"""Smoke tasks: well-formed, deterministic, options rendered, mixtures hold out a cluster."""
import collections
import importlib
import re

import numpy as np
import pytest
import seqio

import tasks_registry
from instruct_jax.data import templates
from instruct_jax.eval import metrics
from tasks_registry import smoke

ALL_TASKS = smoke.task_names()
OPTION_TASKS = [name for name in ALL_TASKS if smoke.generate_examples(name, "validation")[0].options]


def _first_examples(name, split, n=5, shuffle=False, seed=None):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(smoke.TASK_FEATURE_LENGTHS, split=split, shuffle=shuffle, seed=seed)
  return list(ds.take(n).as_numpy_iterator())


def test_three_or_more_clusters_with_two_or_more_tasks_each():
  assert len(smoke.CLUSTERS) >= 3
  assert all(len(builders) >= 2 for builders in smoke.CLUSTERS.values())
  assert smoke.HELD_OUT_CLUSTER in smoke.CLUSTERS
  assert len(set(ALL_TASKS)) == len(ALL_TASKS)


@pytest.mark.parametrize("split", ["train", "validation"])
@pytest.mark.parametrize("name", ALL_TASKS)
def test_every_task_yields_nonempty_tokenized_examples(name, split):
  examples = smoke.generate_examples(name, split)
  assert len(examples) == smoke.NUM_EXAMPLES[split]
  assert seqio.get_mixture_or_task(name).num_input_examples(split) == smoke.NUM_EXAMPLES[split]
  # Every example fits the smoke lengths with its EOS, so nothing is truncated.
  assert max(len(e.inputs.encode()) for e in examples) < smoke.TASK_FEATURE_LENGTHS["inputs"]
  assert max(len(e.targets.encode()) for e in examples) < smoke.TASK_FEATURE_LENGTHS["targets"]
  assert min(len(e.targets) for e in examples) > 0
  for ex in _first_examples(name, split, n=3):
    assert ex["inputs"].size > 1 and ex["targets"].size > 1
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS appended.
    assert smoke.VOCABULARY.decode(ex["targets"].tolist()) == ex["targets_pretokenized"].decode()


def test_generation_is_deterministic_and_splits_differ():
  name = "smoke_reverse_word"
  first = smoke.generate_examples(name, "train")
  smoke.generate_examples.cache_clear()
  assert smoke.generate_examples(name, "train") == first
  assert smoke.generate_examples(name, "validation") != first[:smoke.NUM_EXAMPLES["validation"]]


def test_shuffled_dataset_is_deterministic_per_seed():
  a = _first_examples("smoke_add_digits", "train", n=8, shuffle=True, seed=5)
  b = _first_examples("smoke_add_digits", "train", n=8, shuffle=True, seed=5)
  assert [x["inputs_pretokenized"] for x in a] == [x["inputs_pretokenized"] for x in b]


def test_answers_are_correct_on_a_few_examples():
  for ex in smoke.generate_examples("smoke_reverse_word", "validation")[:20]:
    word = ex.inputs.split(": ")[-1] if ": " in ex.inputs else ex.inputs.split("'")[1]
    assert ex.targets == word[::-1]
  for ex in smoke.generate_examples("smoke_reverse_choice", "validation")[:20]:
    assert ex.targets == ex.inputs.split("'")[1][::-1]
  for ex in smoke.generate_examples("smoke_successor_choice", "validation")[:20]:
    assert int(ex.targets) == int(re.search(r"\d+", ex.inputs).group()) + 1


@pytest.mark.parametrize("name", OPTION_TASKS)
def test_options_block_renders_and_target_is_an_option(name):
  for ex in smoke.generate_examples(name, "validation"):
    assert ex.inputs.endswith("\n" + templates.render_options(ex.options))
    assert "\nOPTIONS:\n- " in ex.inputs
    assert ex.targets in ex.options
  tf_ex = _first_examples(name, "validation", n=1)[0]
  options = [o.decode() for o in tf_ex["options"]]
  assert tf_ex["targets_pretokenized"].decode() in options


def test_held_out_cluster_is_all_option_tasks():
  held_out = smoke.task_names([smoke.HELD_OUT_CLUSTER])
  assert held_out and set(held_out) <= set(OPTION_TASKS)


def _question_and_subject(ex):
  question = ex.inputs.split("\n")[0]
  subject = re.search(r"'([a-z]+)'|(\d+)", question)
  return question, subject.group(1) or subject.group(2)


@pytest.mark.parametrize("name", smoke.task_names([smoke.HELD_OUT_CLUSTER]))
def test_held_out_distractor_is_a_same_length_near_miss(name):
  kinds = collections.Counter()
  for ex in smoke.generate_examples(name, "validation"):
    (distractor,) = [o for o in ex.options if o != ex.targets]
    assert len(ex.options) == 2 and len(distractor) == len(ex.targets)
    changed = sum(a != b for a, b in zip(distractor, ex.targets))
    assert changed in (1, 2)
    kinds[sorted(distractor) == sorted(ex.targets)] += 1
  if name == "smoke_reverse_choice":  # Mostly the right letters, two neighbours swapped.
    assert kinds[True] > 0.9 * sum(kinds.values())


def test_held_out_questions_are_phrased_unlike_any_training_prompt():
  training_inputs = [ex.inputs for name in smoke.task_names()
                     if name not in smoke.task_names([smoke.HELD_OUT_CLUSTER])
                     for ex in smoke.generate_examples(name, "train")]
  for name in smoke.task_names([smoke.HELD_OUT_CLUSTER]):
    for ex in smoke.generate_examples(name, "validation")[:50]:
      question, subject = _question_and_subject(ex)
      wording = max(question.split(subject), key=len)
      assert not any(wording in text for text in training_inputs), (name, wording)


def _mixture_tasks(name):
  return {task.name for task in seqio.get_mixture_or_task(name).tasks}


def test_mixtures_contain_exactly_the_expected_tasks():
  held_out = set(smoke.task_names([smoke.HELD_OUT_CLUSTER]))
  assert _mixture_tasks("smoke_all_train") == set(ALL_TASKS)
  assert _mixture_tasks("smoke_holdout_eval") == held_out
  assert _mixture_tasks("smoke_train") == set(ALL_TASKS) - held_out
  for cluster in smoke.CLUSTERS:
    cluster_tasks = set(smoke.task_names([cluster]))
    assert _mixture_tasks(f"smoke_eval_{cluster}") == cluster_tasks
    assert _mixture_tasks(f"smoke_train_without_{cluster}") == set(ALL_TASKS) - cluster_tasks


def test_mixing_rate_is_number_of_examples():
  mixture = seqio.get_mixture_or_task("smoke_train")
  rates = [mixture.get_rate(task) for task in mixture.tasks]
  np.testing.assert_allclose(rates, smoke.NUM_EXAMPLES["train"])


def test_mixture_yields_examples():
  mixture = seqio.get_mixture_or_task("smoke_train")
  ds = mixture.get_dataset(smoke.TASK_FEATURE_LENGTHS, split="train", shuffle=True, seed=0)
  examples = list(ds.take(4).as_numpy_iterator())
  assert all(ex["inputs"].size and ex["targets"].size for ex in examples)


def test_smoke_tasks_score_exact_matches():
  assert seqio.get_mixture_or_task("smoke_successor_choice").metric_fns == [metrics.accuracy]
  assert metrics.accuracy(["odd", "7"], ["odd", "8"]) == {"accuracy": 50.0}
  assert metrics.accuracy([b"odd"], [" odd"]) == {"accuracy": 100.0}
  with pytest.raises(ValueError, match="pair up"):
    metrics.accuracy(["a"], [])


def test_importing_or_reloading_twice_does_not_crash():
  importlib.reload(smoke)
  importlib.reload(tasks_registry)
  assert set(ALL_TASKS) <= set(seqio.TaskRegistry.names())


def test_unknown_cluster_is_rejected():
  with pytest.raises(ValueError, match="Unknown smoke cluster"):
    smoke.task_names(["poetry"])
