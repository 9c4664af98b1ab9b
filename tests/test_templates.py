"""Templates, options blocks, few-shot pruning and rank-classification rows (Python == TF)."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from instruct_jax.data import templates
from instruct_jax.data.templates import Template

BYTES = seqio.ByteVocabulary()


def _text(tensor) -> str:
  return tensor.numpy().decode("utf-8")


def test_pattern_fields_and_validation():
  assert templates.pattern_fields("Premise: {premise}\n{hypothesis}? {{literal}}") == [
      "premise", "hypothesis"]
  assert Template("{a} and {b}", "{answer}").fields() == {"a", "b", "answer"}
  for bad in ("{0}", "{a!r}", "{a:>10}", "{a.b}"):
    with pytest.raises(ValueError, match="plain identifier"):
      templates.pattern_fields(bad)


def test_render_options_block():
  assert templates.render_options(["yes", "no"]) == "OPTIONS:\n- yes\n- no"
  with pytest.raises(ValueError, match="at least one"):
    templates.render_options([])
  block = templates.render_options_tf(tf.constant(["yes", "it is not possible to tell", "no"]))
  assert _text(block) == "OPTIONS:\n- yes\n- it is not possible to tell\n- no"


def test_template_render_appends_options_unless_turned_around():
  template = Template("Is {text} nice?")
  inputs, targets = template.render({"text": "x", "answer": "yes"}, options=["no", "yes"])
  assert inputs == "Is x nice?\n\nOPTIONS:\n- no\n- yes"
  assert inputs.endswith(templates.render_options(["no", "yes"]))
  assert targets == "yes"
  turned = Template("Write a {answer} review.", "{text}", turned_around=True)
  assert turned.render({"text": "x", "answer": "positive"}, options=["a"]) == (
      "Write a positive review.", "x")
  with pytest.raises(KeyError, match="needs field 'text'"):
    template.render({"answer": "yes"})


def test_field_values_are_inserted_verbatim():
  values = {"text": "a {text} with {braces}", "answer": "{answer}"}
  template = Template("T: {text}", "{answer}")
  assert template.render(values) == ("T: a {text} with {braces}", "{answer}")
  tf_inputs = templates.fill_pattern_tf(template.inputs,
                                        {k: tf.constant(v) for k, v in values.items()})
  assert _text(tf_inputs) == "T: a {text} with {braces}"


def test_tf_rendering_matches_python():
  tpls = (Template("Premise: {premise}\nHypothesis: {hypothesis}"),
          Template("{{literal}} {premise}", "{answer}!"),
          Template("Write for {answer}.", "{hypothesis}", turned_around=True),
          Template("No fields at all."))
  values = {"premise": "It rains.", "hypothesis": "It is wet.", "answer": "yes"}
  options = ["yes", "no"]
  inputs, targets = templates.render_templates_tf(
      tpls, {k: tf.constant(v) for k, v in values.items()}, tf.constant(options))
  for i, template in enumerate(tpls):
    assert (_text(inputs[i]), _text(targets[i])) == template.render(values, options)
  inputs, _ = templates.render_templates_tf(tpls, {k: tf.constant(v) for k, v in values.items()})
  assert [_text(x) for x in inputs] == [t.render(values)[0] for t in tpls]


def test_template_choice_is_deterministic_seeded_and_covers_candidates():
  keys = [f"example {i}" for i in range(200)]

  def choices(candidates, seed):
    return [int(templates.choose_template_tf(tf.constant(k), candidates, seed)) for k in keys]

  first = choices(range(10), seed=0)
  assert first == choices(range(10), seed=0)
  assert set(first) == set(range(10))
  assert first != choices(range(10), seed=1)
  restricted = choices((1, 4, 7), seed=0)
  assert set(restricted) == {1, 4, 7}
  assert set(choices((3,), seed=5)) == {3}
  with pytest.raises(ValueError, match="at least one candidate"):
    templates.choose_template_tf(tf.constant("k"), (), 0)


EXEMPLARS = [("Q: 1+1?", "2"), ("Q: 2+2?", "4"), ("Q: 3+3?", "6")]
QUERY = "Q: 4+4?"


def _num_bytes(text: str) -> int:
  return len(text.encode("utf-8"))


def test_few_shot_python_assembly_and_pruning():
  fmt = templates.FewShotFormat()
  full, kept = templates.assemble_few_shot(EXEMPLARS, QUERY, None, _num_bytes)
  assert kept == 3
  assert full == "Q: 1+1?\n\n2\n\n\nQ: 2+2?\n\n4\n\n\nQ: 3+3?\n\n6\n\n\nQ: 4+4?"
  assert full == fmt.join([fmt.exemplar(i, t) for i, t in EXEMPLARS], QUERY)
  two, kept = templates.assemble_few_shot(EXEMPLARS, QUERY, _num_bytes(full) - 1, _num_bytes)
  assert kept == 2 and two == fmt.join([fmt.exemplar(i, t) for i, t in EXEMPLARS[:2]], QUERY)
  alone, kept = templates.assemble_few_shot(EXEMPLARS, QUERY, 3, _num_bytes)
  assert (alone, kept) == (QUERY, 0)  # The query alone is over budget: returned as is.


@pytest.mark.parametrize("budget", [None, 0, 7, 20, 30, 43, 44, 60, 67, 200])
def test_few_shot_tf_matches_python_and_respects_budget(budget):
  inputs = tf.constant([i for i, _ in EXEMPLARS])
  targets = tf.constant([t for _, t in EXEMPLARS])
  prompt, kept = templates.assemble_few_shot_tf(inputs, targets, tf.constant(QUERY), budget,
                                                BYTES)
  expected, expected_kept = templates.assemble_few_shot(EXEMPLARS, QUERY, budget, _num_bytes)
  assert (_text(prompt), int(kept)) == (expected, expected_kept)
  if budget is not None and int(kept) > 0:
    assert len(BYTES.encode(_text(prompt))) <= budget


def test_few_shot_tf_with_no_exemplars():
  prompt, kept = templates.assemble_few_shot_tf(tf.zeros([0], tf.string), tf.zeros([0], tf.string),
                                                tf.constant(QUERY), 100, BYTES)
  assert (_text(prompt), int(kept)) == (QUERY, 0)


def _rank_rows(examples):
  columns = {key: [ex[key] for ex in examples] for key in examples[0]}
  dataset = tf.data.Dataset.from_tensor_slices(
      {k: tf.ragged.constant(v) if isinstance(v[0], list) else tf.constant(v)
       for k, v in columns.items()})
  dataset = dataset.map(lambda ex: {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v
                                    for k, v in ex.items()})
  return list(templates.rank_classification_rows(dataset).as_numpy_iterator())


def test_rank_classification_rows():
  rows = _rank_rows([
      {"inputs": "Is it wet?", "targets": "yes", "options": ["yes", "no"], "answers": ["yes"]},
      {"inputs": "Pick a city", "targets": "Paris", "options": ["Paris", "Rome", "Oslo"],
       "answers": ["Paris", "Oslo"]},
  ])
  assert [r["targets"].decode() for r in rows] == ["yes", "no", "Paris", "Rome", "Oslo"]
  assert [r["inputs"].decode() for r in rows] == ["Is it wet?"] * 2 + ["Pick a city"] * 3
  assert [int(r["option_index"]) for r in rows] == [0, 1, 0, 1, 2]
  assert [bool(r["is_correct"]) for r in rows] == [True, False, True, False, True]
  ids = [int(r["example_id"]) for r in rows]
  assert ids[0] == ids[1] and ids[2] == ids[3] == ids[4] and ids[0] != ids[2]
  assert all(r["example_id"].dtype == np.int64 for r in rows)


def test_rank_rows_use_targets_when_answers_are_absent():
  rows = _rank_rows([{"inputs": "q", "targets": "b", "options": ["a", "b"]}])
  assert [bool(r["is_correct"]) for r in rows] == [False, True]
