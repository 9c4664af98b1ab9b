"""In-context prompts with remapped labels (instruct_jax.data.in_context), on generated data."""
import collections
import re

import pytest
import seqio
import tensorflow as tf

from instruct_jax.data import in_context
from instruct_jax.data import symbols

BYTES = seqio.ByteVocabulary()
FEATURES = {"inputs": seqio.Feature(BYTES), "targets": seqio.Feature(BYTES)}
LABELS = ("alpha label", "beta label", "gamma label")
FMT = in_context.InContextFormat()


def _examples(n, offset=0):
  """Distinct texts whose class is written in them (so tests can recover it)."""
  texts = [f"item {i} of class {(i + offset) % 3} " + "z" * (i % 5) for i in range(n)]
  return texts, [(i + offset) % 3 for i in range(n)]


def _dataset(texts, labels):
  return tf.data.Dataset.from_tensor_slices({"text": texts, "label": labels})


TRAIN = _examples(60)
QUERIES = _examples(40)  # The same texts as the first 40 train examples: queries are in the pool.


def _prompts(mode=in_context.SYMBOLS, lengths=None, **kwargs):
  kwargs.setdefault("num_per_class", 3)
  kwargs.setdefault("pool_per_class", 10)
  kwargs.setdefault("symbol_pools_fn", lambda: symbols.tuning_pools(LABELS))
  dataset = in_context.in_context_prompts(
      _dataset(*QUERIES), lengths, FEATURES, fields=["text"], label_names=LABELS,
      exemplars_fn=lambda: _dataset(*TRAIN), label_mode=mode, **kwargs)
  return list(dataset.as_numpy_iterator())


def _parse(prompt: str):
  """(instruction or None, [(exemplar input text, shown label)], query text)."""
  instruction = None
  blocks = prompt.split(FMT.exemplar_separator)
  if not blocks[0].startswith(FMT.input_prefix):
    instruction, blocks = blocks[0], blocks[1:]
  exemplars = []
  for block in blocks[:-1]:
    inputs, label = block.split(FMT.target_separator + FMT.target_prefix)
    exemplars.append((inputs[len(FMT.input_prefix):], label))
  query = blocks[-1]
  assert query.endswith(FMT.target_separator + FMT.target_prefix.rstrip())
  return instruction, exemplars, query[len(FMT.input_prefix):-len(FMT.target_prefix.rstrip()) - 1]


def _class_of(text: str) -> int:
  return int(re.search(r"of class (\d)", text).group(1))


def test_symbol_prompts_are_balanced_consistent_and_never_contain_the_query():
  mappings = set()
  for ex in _prompts():
    instruction, exemplars, query = _parse(ex["inputs"].decode())
    assert instruction is None
    options = [o.decode() for o in ex["options"]]
    # Consistent mapping: every exemplar of class c shows options[c]; the target is the
    # query's class symbol.
    for text, label in exemplars:
      assert label == options[_class_of(text)]
    assert ex["targets"].decode() == options[_class_of(query)] == options[ex["label_index"]]
    assert [a.decode() for a in ex["answers"]] == [ex["targets"].decode()]
    assert len(set(options)) == 3 and not set(options) & set(LABELS)
    family = symbols.FAMILIES[ex["symbol_family"]]
    assert all(symbols.tuning_pools(LABELS).family_of(o) == family for o in options)
    # Class-balanced, k per class, shuffled, never the query itself.
    counts = collections.Counter(_class_of(text) for text, _ in exemplars)
    assert counts == {0: 3, 1: 3, 2: 3} and ex["num_per_class"] == 3
    assert [_class_of(t) for t, _ in exemplars] == list(ex["exemplar_classes"])
    assert query not in [t for t, _ in exemplars]
    mappings.add(tuple(options))
  assert len(mappings) > 30  # Fresh symbols for (almost) every prompt.


def test_prompts_are_reproducible_for_a_seed_and_change_with_it():
  first, again = _prompts(seed=3), _prompts(seed=3)
  assert [e["inputs"] for e in first] == [e["inputs"] for e in again]
  assert [list(e["options"]) for e in first] == [list(e["options"]) for e in again]
  other = _prompts(seed=4)
  assert sum(a["inputs"] != b["inputs"] for a, b in zip(first, other)) > 30


def test_natural_and_flipped_labels():
  for ex in _prompts(in_context.LABELS, instruction="Name the class."):
    instruction, exemplars, query = _parse(ex["inputs"].decode())
    assert instruction == "Name the class."
    assert all(label == LABELS[_class_of(text)] for text, label in exemplars)
    assert ex["targets"].decode() == LABELS[_class_of(query)] and ex["symbol_family"] == -1
  flipped = _prompts(in_context.FLIPPED)
  assert flipped
  for ex in flipped:
    _, exemplars, query = _parse(ex["inputs"].decode())
    # Every exemplar and the gold show the next class's label.
    assert all(label == LABELS[(_class_of(text) + 1) % 3] for text, label in exemplars)
    assert ex["targets"].decode() == LABELS[(_class_of(query) + 1) % 3]
    assert [o.decode() for o in ex["options"]] == list(LABELS)


def test_binary_flip_swaps_the_labels():
  texts, labels = [f"t{i}" for i in range(12)], [i % 2 for i in range(12)]
  dataset = in_context.in_context_prompts(
      _dataset(texts, labels), None, FEATURES, fields=["text"], label_names=("no", "yes"),
      exemplars_fn=lambda: _dataset(texts, labels), label_mode=in_context.FLIPPED,
      num_per_class=2)
  for ex in dataset.as_numpy_iterator():
    _, exemplars, query = _parse(ex["inputs"].decode())
    truth = dict(zip(texts, labels))
    assert all(label == ("yes", "no")[truth[text]] for text, label in exemplars)
    assert ex["targets"].decode() == ("yes", "no")[truth[query]]


def test_budget_drops_whole_rounds_and_queries_that_cannot_fit():
  budget = 200
  prompts = _prompts(lengths={"inputs": budget + 1, "targets": 8}, num_per_class=5)
  assert prompts
  for ex in prompts:
    assert len(BYTES.encode(ex["inputs"].decode())) <= budget
    counts = collections.Counter(ex["exemplar_classes"].tolist())
    assert set(counts.values()) == {int(ex["num_per_class"])} and len(counts) == 3
  assert max(int(e["num_per_class"]) for e in prompts) < 5
  assert not _prompts(lengths={"inputs": 40, "targets": 8})  # Not one round fits.


def test_multi_field_inputs_and_truncation():
  fmt = in_context.InContextFormat(max_field_chars=5)
  example = {"premise": tf.constant("  a long premise "), "sentence2": tf.constant("short")}
  text = in_context.render_inputs_tf(example, ["premise", "sentence2"], fmt).numpy().decode()
  assert text == "Premise: a lon\nSentence 2: short"
  assert text == fmt.render_inputs({"premise": "  a long premise ", "sentence2": "short"},
                                   ["premise", "sentence2"])
  assert fmt.prompt([fmt.exemplar("x", "A")], fmt.query("y"), "Do it.") == (
      "Do it.\n\nx\nAnswer: A\n\ny\nAnswer:")


def test_a_class_missing_from_the_pool_is_an_error():
  with pytest.raises(ValueError, match=r"no exemplar of class\(es\) \['gamma label'\]"):
    in_context.in_context_prompts(
        _dataset(*QUERIES), None, FEATURES, fields=["text"], label_names=LABELS,
        exemplars_fn=lambda: _dataset(["a", "b"], [0, 1]), label_mode=in_context.LABELS)
  with pytest.raises(ValueError, match="symbol_pools_fn"):
    in_context.in_context_prompts(
        _dataset(*QUERIES), None, FEATURES, fields=["text"], label_names=LABELS,
        exemplars_fn=lambda: _dataset(*TRAIN), label_mode=in_context.SYMBOLS)
