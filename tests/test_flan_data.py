"""FLAN pipelines under TFDS mock data (hermetic): templates, options, formats, rank rows.

A byte-vocabulary copy of every FLAN task and mixture is registered under the
prefix "flantest_", so nothing touches the SentencePiece model or the network.
"""
import functools
import re

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from instruct_jax.data import templates as templates_lib
from tasks_registry import flan
from tasks_registry import registration
from tasks_registry.flan import formats
from tasks_registry.flan import tasks as flan_tasks_lib

PREFIX = "flantest_"
BYTES = seqio.ByteVocabulary()
# Large enough that nothing is truncated: checks see whole prompts.
LENGTHS = {"inputs": 4096, "targets": 1024}
FLAN_TASKS = flan_tasks_lib.flan_tasks()
OPTION_TASKS = [t for t in FLAN_TASKS if t.spec.has_options]
# Formats are shared code: sample fixed options, per-example options with long
# prompts, an eval-only dataset, QA with "unanswerable", translation, summaries.
FORMAT_SAMPLE = ["rte", "record", "wsc273", "squad_v2", "para_crawl_en_de", "cnn_dailymail"]
_BY_BASE = {t.base_name: t for t in FLAN_TASKS}


@pytest.fixture(scope="module", autouse=True)
def mocked_flan():
  """Byte-vocabulary FLAN copy + TFDS mock data for the whole module."""
  flan.register(vocabulary=BYTES, prefix=PREFIX)
  patch = pytest.MonkeyPatch()
  # Mock data has no split metadata; seqio only uses the count for in-memory caching.
  patch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)
  # max_value bounds the plain integer labels (hellaswag, story_cloze, wsc273, sentiment140).
  with tfds.testing.mock_data(num_examples=8, max_value=5):
    yield
  patch.undo()
  registration.remove_with_prefix(PREFIX)


def _examples(name, split="validation", n=3, lengths=LENGTHS):
  task = seqio.get_mixture_or_task(name)
  dataset = task.get_dataset(lengths, split=split, shuffle=False)
  return list(dataset.take(n).as_numpy_iterator())


def _name(task, **kwargs):
  return flan_tasks_lib.task_name(task.base_name, prefix=PREFIX, **kwargs)


def _assert_filled(text: str, where: str):
  assert text.strip(), f"empty text in {where}"
  assert not re.search(r"\{[a-z_0-9]*\}", text), f"unfilled field in {where}: {text!r}"


@pytest.mark.parametrize("task", FLAN_TASKS, ids=lambda t: t.base_name)
def test_every_template_renders_every_field(task):
  """All ten templates of every dataset: no unfilled fields, options block last."""
  split = "train" if task.has_train_split else "validation"
  source = seqio.TfdsDataSource(task.source.tfds_name, splits=dict(task.source.splits))
  prepared = formats.prepare_fields(source.get_dataset(split, shuffle=False), spec=task.spec,
                                    params=task.source.params)

  def render(ex):
    values = {**{f: ex[f] for f in task.spec.fields}, "answer": ex["answer"]}
    options = ex["options"] if task.spec.has_options else None
    inputs, targets = templates_lib.render_templates_tf(task.templates, values, options)
    return {"inputs": inputs, "targets": targets, "options": ex["options"],
            "answer": ex["answer"]}

  render = tf.autograph.experimental.do_not_convert(render)
  examples = list(prepared.map(render).take(3).as_numpy_iterator())
  assert examples, f"{task.base_name}: mock data produced no usable example"
  for ex in examples:
    options = [o.decode() for o in ex["options"]]
    answer = ex["answer"].decode()
    assert answer
    if task.spec.has_options:
      assert answer in options
      if task.spec.options:
        assert options == list(task.spec.options)
    else:
      assert not options
    for i, template in enumerate(task.templates):
      inputs, targets = ex["inputs"][i].decode(), ex["targets"][i].decode()
      where = f"{task.base_name} template {i}"
      _assert_filled(inputs, where)
      _assert_filled(targets, where)
      has_block = bool(options) and inputs.endswith(
          "\n\n" + templates_lib.render_options(options))
      assert has_block == (task.spec.has_options and not template.turned_around), where
      if task.spec.has_options and not template.turned_around:
        assert targets == answer


@pytest.mark.parametrize("task", FLAN_TASKS, ids=lambda t: t.base_name)
def test_training_task_yields_tokenized_examples(task):
  split = "train" if task.has_train_split else "validation"
  examples = _examples(_name(task), split=split, n=2)
  assert examples
  for ex in examples:
    assert ex["inputs"].size > 1 and ex["targets"].size > 1
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS
    assert BYTES.decode(ex["inputs"].tolist()) == ex["inputs_pretokenized"].decode()
    _assert_filled(ex["inputs_pretokenized"].decode(), task.base_name)
    _assert_filled(ex["targets_pretokenized"].decode(), task.base_name)
    assert 0 <= ex["template_index"] < 10
    assert ex["answers"].size >= 1


@pytest.mark.parametrize("task", OPTION_TASKS, ids=lambda t: t.base_name)
def test_eval_task_is_rank_classification(task):
  rows = _examples(_name(task, evaluation=True), n=60)
  assert rows
  groups = {}
  for row in rows:
    assert set(row) >= {"inputs", "targets", "example_id", "option_index", "is_correct"}
    groups.setdefault(int(row["example_id"]), []).append(row)
  for example_rows in list(groups.values())[:-1]:  # The last group may be cut by take().
    assert [int(r["option_index"]) for r in example_rows] == list(range(len(example_rows)))
    assert len({r["inputs_pretokenized"] for r in example_rows}) == 1
    assert sum(bool(r["is_correct"]) for r in example_rows) >= 1
    if task.spec.options:
      assert [r["targets_pretokenized"].decode() for r in example_rows] == list(
          task.spec.options)
    prompt = example_rows[0]["inputs_pretokenized"].decode()
    options = [r["targets_pretokenized"].decode() for r in example_rows]
    assert prompt.endswith(templates_lib.render_options(options))


@pytest.mark.parametrize("base", FORMAT_SAMPLE)
def test_no_options_and_few_shot_formats(base):
  task = _BY_BASE[base]
  split = "train" if task.has_train_split else "validation"
  zero = _examples(_name(task), split=split)
  no_options = _examples(_name(task, prompt_format=formats.NO_OPTIONS), split=split)
  few = _examples(_name(task, prompt_format=formats.FEW_SHOT), split=split)
  assert zero and len(zero) == len(no_options) == len(few)
  for z, n, f in zip(zero, no_options, few):
    assert "OPTIONS:" not in n["inputs_pretokenized"].decode()
    assert z["template_index"] == n["template_index"] == f["template_index"]
    assert z["targets_pretokenized"] == n["targets_pretokenized"] == f["targets_pretokenized"]
    prompt, query = f["inputs_pretokenized"].decode(), z["inputs_pretokenized"].decode()
    assert prompt.endswith(query)  # Exemplars first, then the zero-shot prompt.
    assert 0 <= f["num_shots"] <= formats.DEFAULT_NUM_SHOTS
    if f["num_shots"]:
      assert prompt.count("\n\n\n") >= f["num_shots"]
      assert len(BYTES.encode(prompt)) <= formats.DEFAULT_FEW_SHOT_MAX_INPUT_TOKENS
    else:  # Not even one exemplar fits the budget next to this query.
      assert prompt == query
  for eval_format in (formats.NO_OPTIONS, formats.FEW_SHOT):
    rows = _examples(_name(task, prompt_format=eval_format, evaluation=True))
    assert rows and all(r["inputs"].size > 1 for r in rows)
    assert ("is_correct" in rows[0]) == task.spec.has_options
    assert all(int(r["template_index"]) in task.eval_templates for r in rows)


@pytest.mark.parametrize("input_length", [64, 150, 400])
def test_few_shot_pruning_keeps_inputs_within_the_budget(input_length):
  task = _BY_BASE["rte"]
  lengths = {"inputs": input_length, "targets": 32}
  name = _name(task, prompt_format=formats.FEW_SHOT)
  examples = _examples(name, split="train", n=8, lengths=lengths)
  assert examples
  for ex in examples:
    prompt = ex["inputs_pretokenized"].decode()
    if ex["num_shots"] > 0:
      # Budget = input length minus EOS: the prompt is never truncated.
      assert len(BYTES.encode(prompt)) <= input_length - 1
      assert ex["inputs"].size == len(BYTES.encode(prompt)) + 1
    else:
      assert "\n\n\n" not in prompt  # Only the query is left.
  if input_length == 400:
    assert all(ex["num_shots"] >= 1 for ex in examples)


def test_per_template_tasks_fix_the_template():
  task = _BY_BASE["sst2"]
  for index, template in enumerate(task.templates):
    examples = _examples(_name(task, template=index), split="train", n=3)
    assert {int(ex["template_index"]) for ex in examples} == {index}
    literal = template.inputs.split("{")[0]
    assert all(ex["inputs_pretokenized"].decode().startswith(literal) for ex in examples)
    eval_name = _name(task, template=index, evaluation=True)
    assert (eval_name in seqio.TaskRegistry.names()) == (not template.turned_around)


def test_template_choice_is_deterministic_and_varies():
  name = _name(_BY_BASE["cola"])
  first = [int(ex["template_index"]) for ex in _examples(name, split="train", n=8)]
  again = [int(ex["template_index"]) for ex in _examples(name, split="train", n=8)]
  assert first == again
  assert len(set(first)) > 1
  eval_indices = {int(ex["template_index"])
                  for ex in _examples(_name(_BY_BASE["cola"], prompt_format=formats.NO_OPTIONS,
                                            evaluation=True), n=40)}
  assert eval_indices <= set(_BY_BASE["cola"].eval_templates)


def _fake_scores(dataset, model_feature_shapes=None):
  del model_feature_shapes
  # Prefers short targets: a deterministic, imperfect "model".
  return [(i, -float((ex["decoder_target_tokens"] > 0).sum()))
          for i, ex in dataset.as_numpy_iterator()]


def _echo_targets(dataset, model_feature_shapes=None):
  del model_feature_shapes
  return [(i, ex["decoder_target_tokens"]) for i, ex in dataset.as_numpy_iterator()]


def test_eval_tasks_run_through_seqio_evaluator():
  """A rank-classified task (ARC) next to a generative one (TriviaQA, squad F1/EM)."""
  names = [PREFIX + "arc_easy_eval", PREFIX + "trivia_qa_eval"]
  assert set(names) <= {t.name for t in seqio.get_mixture_or_task(
      PREFIX + "holdout_closed_book_qa_eval").tasks}
  registration.replace_mixture(PREFIX + "mini_eval", names, default_rate=1.0)
  evaluator = seqio.Evaluator(
      mixture_or_task_name=PREFIX + "mini_eval",
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="validation", sequence_length=LENGTHS)
  result, _ = evaluator.evaluate(compute_metrics=True, score_fn=_fake_scores,
                                 predict_fn=_echo_targets)
  result = result.result()
  assert set(result) == set(names)
  assert 0.0 <= result[PREFIX + "arc_easy_eval"]["accuracy"] <= 100.0
  assert result[PREFIX + "arc_easy_eval"]["num_examples"] >= 1
  # Echoing the target is an exact answer.
  assert result[PREFIX + "trivia_qa_eval"] == {"em": 100.0, "f1": 100.0}


def test_capped_rate_mixture_yields_examples():
  """A small mixture with FLAN's rate function, as the holdout training mixtures use."""
  names = [PREFIX + n for n in ("rte", "squad_v1", "cnn_dailymail")]
  registration.replace_mixture(PREFIX + "mini_train", names,
                               default_rate=functools.partial(seqio.mixing_rate_num_examples,
                                                              maximum=3000))
  patch = pytest.MonkeyPatch()
  patch.setattr(seqio.Task, "num_input_examples", lambda self, split: 100)
  try:
    mixture = seqio.get_mixture_or_task(PREFIX + "mini_train")
    assert [mixture.get_rate(t) for t in mixture.tasks] == [100, 100, 100]
    dataset = mixture.get_dataset({"inputs": 512, "targets": 64}, split="train", shuffle=True,
                                  seed=0)
    examples = list(dataset.take(4).as_numpy_iterator())
  finally:
    patch.undo()
  assert len(examples) == 4
  assert all(set(ex) == {"inputs", "targets"} for ex in examples)
  assert all(ex["inputs"].size and ex["targets"].size for ex in examples)


def test_tf_dataset_fields_are_strings():
  task = _BY_BASE["record"]
  source = seqio.TfdsDataSource(task.source.tfds_name, splits=dict(task.source.splits))
  prepared = formats.prepare_fields(source.get_dataset("train", shuffle=False), spec=task.spec,
                                    params={})
  spec = prepared.element_spec
  assert all(spec[f].dtype == tf.string and spec[f].shape == [] for f in task.spec.fields)
  assert spec["options"].shape.rank == 1 and spec["answers"].shape.rank == 1
