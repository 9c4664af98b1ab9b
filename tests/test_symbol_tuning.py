"""Symbol-tuning registry: datasets, tasks under TFDS mock data, mixtures, suites, a tiny run.

Byte-vocabulary copies of the tasks are registered under test prefixes, so
nothing touches the SentencePiece model or the network; TFDS datasets are
mocked (tfds.testing.mock_data) and BIG-bench files are written by the tests.
"""
import collections
import json
import os
import re

import optax
import pytest
import seqio
import tensorflow_datasets as tfds

import tasks_registry  # noqa: F401  (smoke tasks: the instruction side of test mixtures)
from instruct_jax.eval import symbol_suites as symbol_eval
from instruct_jax.data import in_context
from instruct_jax.data import pipeline
from instruct_jax.data import symbols
from instruct_jax.train import partitioning
from instruct_jax.train import trainer as trainer_lib
from tasks_registry import registration
from tasks_registry import symbol_tuning as st
from tasks_registry.flan import datasets as flan_datasets
import factories

PREFIX = "sttest_"
BYTES = seqio.ByteVocabulary()
LENGTHS = {"inputs": 2048, "targets": 64}  # Nothing truncated: checks see whole prompts.
TUNING_SAMPLE = ("anli_r1", "multirc", "rte", "sst2", "trec", "wsc")
EVAL_SAMPLE = ("scicite", "wikipedia_toxicity")
SETTINGS = st.PromptSettings(num_per_class=2, pool_per_class=8)
ALL_LABELS = {label.lower() for label in st.natural_labels()}
FMT = in_context.InContextFormat()


def _sample(datasets, names):
  return [d for d in datasets if d.name in names]


def _mock_tfds():
  # max_value bounds plain integer fields (sentiment140's polarity: 0 and 4 are valid).
  return tfds.testing.mock_data(num_examples=30, max_value=5)


@pytest.fixture(scope="module")
def mocked():
  """Byte-vocabulary copies of a sample of the tasks, mock TFDS data, smoke instruction data."""
  patch = pytest.MonkeyPatch()
  # Mock data has no split metadata; mixture rates need example counts.
  patch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: 100)
  st.register_tuning_tasks(BYTES, PREFIX, SETTINGS, _sample(st.TUNING_DATASETS, TUNING_SAMPLE))
  for percent in (16, 50):
    st.register_symbol_mix(percent, PREFIX, instruction_mixture="smoke_train")
  st.register_eval_tasks(BYTES, PREFIX, SETTINGS, _sample(st.EVAL_DATASETS, EVAL_SAMPLE))
  with _mock_tfds():
    yield
  patch.undo()
  registration.remove_with_prefix(PREFIX)


def _examples(name, split, n=4, lengths=LENGTHS):
  task = seqio.get_mixture_or_task(name)
  dataset = task.get_dataset(lengths, split=split, shuffle=False)
  return list(dataset.take(n).as_numpy_iterator())


def _shown_labels(prompt: str) -> list[str]:
  """Labels shown after each exemplar (the query's answer is missing)."""
  marker = FMT.target_separator + FMT.target_prefix
  return [block.rsplit(marker, 1)[1] for block in prompt.split(FMT.exemplar_separator)[:-1]
          if marker in block]


def _text(value) -> str:
  return value.decode("utf-8")


# --------------------------------------------------------------------------
# The dataset lists.


def _known_versions(tfds_name):
  builder, _, _ = tfds_name.partition(":")
  builder_name, _, config_name = builder.partition("/")
  cls = tfds.builder_cls(builder_name)
  versions = {str(v) for v in [cls.VERSION, *getattr(cls, "SUPPORTED_VERSIONS", [])] if v}
  if config_name:
    configs = {c.name: c for c in cls.BUILDER_CONFIGS}
    assert config_name in configs, f"{tfds_name}: no config {config_name!r}"
    config = configs[config_name]
    versions |= {str(v) for v in [config.version, *(config.supported_versions or [])] if v}
  return versions


def test_22_tuning_datasets_from_real_tfds_builders():
  assert st.NUM_TUNING_DATASETS == 22
  assert len({d.name for d in st.TUNING_DATASETS}) == len(st.TUNING_DATASETS) == 24
  for data in st.TUNING_DATASETS + st.EVAL_DATASETS:
    source = data.source
    builder, _, version = source.tfds_name.partition(":")
    assert version in _known_versions(source.tfds_name), source.tfds_name
    for split in source.splits.values():
      tfds.core.ReadInstruction.from_spec(split)  # Parses.
    assert len(set(data.labels)) == len(data.labels) >= 2
    assert not {label for label in data.labels if label.isdigit()}  # Digits are symbols.
  for data in st.TUNING_DATASETS:
    assert set(data.source.splits) == {"train", "validation"}
    cap = re.search(r"\[:(\d+)\]$", data.source.splits["train"])
    assert cap is None or int(cap.group(1)) <= st.MAX_TRAIN_EXAMPLES
    if data.spec.name in flan_datasets.DATASETS:  # FLAN's definition is reused.
      flan = flan_datasets.DATASETS[data.spec.name]
      assert data.spec.to_fields is flan.to_fields and data.labels == flan.options
      assert data.source.tfds_name == flan.sources[data.variant].tfds_name
  reused = {d.spec.name for d in st.TUNING_DATASETS if d.spec.name in flan_datasets.DATASETS}
  assert len(reused) == 20  # Plus movie_rationales and wsc, defined in symbol_tuning.py.


def test_evaluation_datasets_are_unseen():
  def builders(datasets):
    return {d.source.tfds_name.split(":")[0].split("/")[0] for d in datasets}
  flan_builders = {s.tfds_name.split(":")[0].split("/")[0]
                   for spec in flan_datasets.DATASETS.values() for s in spec.sources.values()}
  unseen = builders(st.EVAL_DATASETS)
  assert len(unseen) == len(st.EVAL_DATASETS) >= 4
  assert not unseen & builders(st.TUNING_DATASETS) and not unseen & flan_builders
  assert all(d.instruction for d in st.EVAL_DATASETS)


@pytest.mark.parametrize("kind", ["tuning", "evaluation"])
def test_no_natural_label_is_a_symbol(kind):
  pools = st.symbol_pools(kind)
  for label in st.natural_labels():
    assert label not in pools and label.lower() not in pools.words, label


def test_registered_names():
  tasks, mixtures = set(seqio.TaskRegistry.names()), set(seqio.MixtureRegistry.names())
  assert {st.tuning_task_name(d) for d in st.TUNING_DATASETS} <= tasks
  train = seqio.get_mixture_or_task("symbol_tuning_train")
  assert {t.name for t in train.tasks} == {st.tuning_task_name(d) for d in st.TUNING_DATASETS}
  assert {st.mix_name(p) for p in st.MIX_PERCENTS} <= mixtures
  assert "symbol_tuning_mix_16" in mixtures and st.mix_name(12.5) == "symbol_tuning_mix_12p5"
  for data in st.EVAL_DATASETS:
    for setting in [*st.SETTINGS, st.FLIPPED_LABELS]:
      task = seqio.get_mixture_or_task(st.eval_task_name(data, setting))
      assert list(task.score_metric_fns)  # Rank classification: every option is scored.
  unseen = seqio.get_mixture_or_task("symbol_eval_unseen")
  assert len(unseen.tasks) == 4 * len(st.EVAL_DATASETS)
  with pytest.raises(ValueError, match="strictly between"):
    st.register_symbol_mix(100)
  with pytest.raises(ValueError, match="not registered"):
    st.register_symbol_mix(20, instruction_mixture="no_such_mixture")


# --------------------------------------------------------------------------
# Tasks under mock data.


def _check_tuning_task(name):
  examples = _examples(name, "train")
  assert examples, f"{name}: mock data produced no prompt"
  tuning, evaluation = st.symbol_pools("tuning"), st.symbol_pools("evaluation")
  for ex in examples:
    prompt, target = _text(ex["inputs_pretokenized"]), _text(ex["targets_pretokenized"])
    options = [_text(o) for o in ex["options"]]
    # Never a natural label: a tuning-pool symbol, of the prompt's family.
    assert target.lower() not in ALL_LABELS and target in tuning and target not in evaluation
    assert {tuning.family_of(o) for o in options} == {symbols.FAMILIES[ex["symbol_family"]]}
    assert target == options[ex["label_index"]] and len(set(options)) == len(options)
    # No instruction; one symbol per class used consistently; balanced exemplars.
    assert prompt.startswith(FMT.input_prefix) or ": " in prompt.split("\n", 1)[0]
    assert _shown_labels(prompt) == [options[c] for c in ex["exemplar_classes"]]
    counts = collections.Counter(ex["exemplar_classes"].tolist())
    assert len(counts) == len(options) and set(counts.values()) == {ex["num_per_class"]}
    assert prompt.endswith(FMT.target_separator + FMT.target_prefix.rstrip())


@pytest.mark.parametrize("stem", TUNING_SAMPLE)
def test_tuning_prompts_use_symbols_never_natural_labels(mocked, stem):
  _check_tuning_task(f"{PREFIX}symbol_tuning_{stem}")


@pytest.mark.slow
def test_every_tuning_task_under_mock_data():
  prefix = "stall_"
  patch = pytest.MonkeyPatch()
  patch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)
  names = st.register_tuning_tasks(BYTES, prefix, SETTINGS)
  try:
    with _mock_tfds():
      for name in names[:-1]:  # The last one is the mixture.
        _check_tuning_task(name)
  finally:
    patch.undo()
    registration.remove_with_prefix(prefix)


def _rows_by_example(name):
  rows = collections.defaultdict(list)
  task = seqio.get_mixture_or_task(name)
  for row in task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator():
    rows[int(row["example_id"])].append(row)
  assert rows, f"{name}: mock data produced no example"
  return list(rows.values())


@pytest.mark.parametrize("stem", EVAL_SAMPLE)
def test_eval_settings_rank_the_prompts_own_labels(mocked, stem):
  data = _sample(st.EVAL_DATASETS, [stem])[0]
  tuning, evaluation = st.symbol_pools("tuning"), st.symbol_pools("evaluation")
  for setting, (with_instruction, mode) in st.SETTINGS.items():
    for rows in _rows_by_example(st.eval_task_name(data, setting, PREFIX)):
      options = [_text(r["targets_pretokenized"]) for r in rows]
      prompt = _text(rows[0]["inputs_pretokenized"])
      assert sum(bool(r["is_correct"]) for r in rows) == 1
      assert prompt.startswith(data.instruction) == with_instruction
      assert set(_shown_labels(prompt)) == set(options)
      if mode == in_context.LABELS:
        assert options == list(data.labels)
      else:  # Evaluation-pool symbols, never seen in tuning.
        assert all(o in evaluation and o not in tuning for o in options)


def _labels_by_text(data):
  """Rendered inputs -> true label, over the train and validation splits."""
  source = seqio.TfdsDataSource(data.source.tfds_name, splits=dict(data.source.splits))
  truth = {}
  for split in ("train", "validation"):
    examples = st.prepare_examples(source.get_dataset(split, shuffle=False), data)
    examples = examples.map(lambda ex: {"text": in_context.render_inputs_tf(
        ex, data.spec.fields, FMT), "label": ex["label"]})
    for ex in examples.as_numpy_iterator():
      truth[_text(ex["text"])] = int(ex["label"])
  return truth


@pytest.mark.parametrize("stem", EVAL_SAMPLE)
def test_flipped_labels_flip_every_exemplar_and_the_gold(mocked, stem):
  data = _sample(st.EVAL_DATASETS, [stem])[0]
  labels, truth = data.labels, _labels_by_text(data)
  flipped = {label: labels[(i + 1) % len(labels)] for i, label in enumerate(labels)}
  marker = FMT.target_separator + FMT.target_prefix
  for rows in _rows_by_example(st.eval_task_name(data, st.FLIPPED_LABELS, PREFIX)):
    blocks = _text(rows[0]["inputs_pretokenized"]).split(FMT.exemplar_separator)
    assert not blocks[0].startswith(data.instruction)
    for block in blocks[:-1]:
      text, shown = block.rsplit(marker, 1)
      assert shown == flipped[labels[truth[text]]]
    query = blocks[-1][:-len(marker.rstrip())]
    (gold,) = [_text(r["targets_pretokenized"]) for r in rows if r["is_correct"]]
    assert gold == flipped[labels[truth[query]]]
    assert [_text(r["targets_pretokenized"]) for r in rows] == list(labels)


# --------------------------------------------------------------------------
# Mixtures.


@pytest.mark.parametrize("percent", [16, 50])
def test_mixture_gives_the_configured_symbol_share(mocked, percent):
  # One symbol task and one instruction task keep the pipelines cheap; the share is set
  # between the two sub-mixtures, whatever they hold.
  prefix = "stmix_"
  st.register_tuning_tasks(BYTES, prefix, SETTINGS, _sample(st.TUNING_DATASETS, ["sst2"]))
  name = st.register_symbol_mix(percent, prefix, instruction_mixture="smoke_reverse_word")
  try:
    mixture = seqio.get_mixture_or_task(name)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates["stmix_symbol_tuning_sst2"] == pytest.approx(percent / 100)
    assert sum(rates.values()) == pytest.approx(1.0)
    dataset = mixture.get_dataset({"inputs": 512, "targets": 32}, split="train",
                                  shuffle=True, seed=7, num_epochs=None)
    num_samples = 1200
    is_symbol = [b"\nAnswer:" in BYTES.decode(ex["inputs"].tolist()).encode()
                 for ex in dataset.take(num_samples).as_numpy_iterator()]
    share = sum(is_symbol) / num_samples
    # Binomial standard deviation <= 1.5 points at this size; allow about 3.5 of them.
    assert abs(share - percent / 100) < 0.05, share
  finally:
    registration.remove_with_prefix(prefix)


# --------------------------------------------------------------------------
# BIG-bench algorithmic tasks and the suite layout.

LIST_FUNCTION_EXAMPLES = [
    {"input": "[1, 2, 3]", "target": "[3, 2, 1]"},
    {"input": "[4, 5]", "target": "[5, 4]"},
    {"input": "[7, 8, 9, 0]", "target": "[0, 9, 8, 7]"},
    {"input": "[6]", "target": "[6]"},
]
TURING_EXAMPLES = [
    {"input": "0 1 1", "target": "1 1 0"},
    {"input": "1 0", "target": "0 1"},
    {"input": "1 1 1 0", "target": "0 1 1 1"},
    {"input": "0", "target": "0"},
]


def _write_bigbench(root) -> str:
  tasks = root / "bigbench" / "benchmark_tasks"
  (tasks / "list_functions" / "c001").mkdir(parents=True)
  (tasks / "list_functions" / "c002").mkdir()
  (tasks / "simp_turing_concept").mkdir()
  (tasks / "list_functions" / "task.json").write_text(json.dumps(
      {"name": "list_functions", "subtasks": ["c001", "c002"]}))  # No examples: skipped.
  for sub in ("c001", "c002"):
    (tasks / "list_functions" / sub / "task.json").write_text(json.dumps(
        {"name": f"list_functions:{sub}", "examples": LIST_FUNCTION_EXAMPLES}))
  (tasks / "simp_turing_concept" / "task.json").write_text(json.dumps(
      {"name": "simp_turing_concept", "examples": TURING_EXAMPLES}))
  return str(root)


def test_algorithmic_tasks_are_registered_from_a_bigbench_checkout(tmp_path):
  prefix = "stbb_"
  try:
    registered = st.register_algorithmic_tasks(_write_bigbench(tmp_path), BYTES, prefix,
                                               num_shots=1)
    assert registered == {
        "list_functions": [f"{prefix}symbol_eval_bigbench_list_functions_c001_gen",
                           f"{prefix}symbol_eval_bigbench_list_functions_c002_gen"],
        "simp_turing_concept": [f"{prefix}symbol_eval_bigbench_simp_turing_concept_gen"]}
    mixture = seqio.get_mixture_or_task(f"{prefix}symbol_eval_algorithmic")
    assert len(mixture.tasks) == 3
    task = seqio.get_mixture_or_task(registered["simp_turing_concept"][0])
    (example,) = task.get_dataset(None, split="all", shuffle=False).take(1).as_numpy_iterator()
    assert _text(example["inputs_pretokenized"]).count("\nQ: ") == 2  # One shot + query.
    with pytest.raises(FileNotFoundError, match="BIG-bench task 'list_functions' not found"):
      st.register_algorithmic_tasks(str(tmp_path / "nowhere"), BYTES, prefix)
  finally:
    registration.remove_with_prefix(prefix)


def test_suite_layout_places_every_task():
  layout = st.evaluation_suites()
  assert [(r.mixture_or_task_name, r.split) for r in layout.runs] == [
      ("symbol_eval_classification", "validation")]
  classification = seqio.get_mixture_or_task("symbol_eval_classification")
  assert set(layout.cells) == {t.name for t in classification.tasks}
  cell = layout.cells["symbol_eval_scicite_instruction_symbols"]
  assert (cell.table, cell.row, cell.column) == (st.UNSEEN_TABLE, "scicite",
                                                 "instruction_symbols")
  assert layout.cluster_of("symbol_eval_sci_tail_flipped_labels") == st.FLIPPED_TABLE


# --------------------------------------------------------------------------
# A tiny CPU run: train on the symbol mixture, then evaluate the suites.


@pytest.mark.slow
def test_tiny_run_trains_on_the_mixture_and_writes_the_suite_report(mocked, tmp_path,
                                                                     monkeypatch):
  # TFDS mock data comes from a Python generator, whose tf.data iterator cannot be
  # checkpointed (real TFDS data can); the data position is not saved here. Mock data
  # has no shard files either: seqio then shards the examples instead.
  monkeypatch.setattr(pipeline.GlobalBatchIterator, "save", lambda self, directory: None)
  monkeypatch.setattr(seqio.TfdsDataSource, "list_shards", lambda self, split: [])
  # A small mixture keeps the number of pipelines (and the test) small.
  prefix = "strun_"
  st.register_tuning_tasks(BYTES, prefix, SETTINGS,
                           _sample(st.TUNING_DATASETS, ["sst2", "trec"]))
  mixture = st.register_symbol_mix(16, prefix, instruction_mixture="smoke_reverse_word")
  model_dir = tmp_path / "model"
  lengths = {"inputs": 256, "targets": 16}
  try:
    state = trainer_lib.train(
        model=factories.tiny_t5(),
        train_dataset_cfg=pipeline.DatasetConfig(
            mixture_or_task_name=mixture, task_feature_lengths=lengths, split="train",
            batch_size=8, shuffle=True, seed=0, pack=True),
        optimizer=optax.adafactor(1e-2), model_dir=str(model_dir), total_steps=3,
        partitioner=partitioning.Partitioner(),
        checkpoint_cfg=trainer_lib.CheckpointConfig(save_period=3, async_save=False),
        log_period=1)
  finally:
    registration.remove_with_prefix(prefix)
  assert int(state.step) == 3
  losses = [json.loads(line) for line in open(model_dir / "metrics.jsonl") if "loss" in line]
  assert [r["step"] for r in losses] == [1, 2, 3]

  layout = st.evaluation_suites(_write_bigbench(tmp_path / "bb"), prefix=PREFIX,
                                vocabulary=BYTES, num_shots=1,
                                datasets=_sample(st.EVAL_DATASETS, EVAL_SAMPLE))
  report = symbol_eval.evaluate_suites(
      model=factories.tiny_t5(), checkpoint_path=str(model_dir / "checkpoint_3"),
      partitioner=partitioning.Partitioner(), suites=layout, batch_size=8,
      task_feature_lengths=lengths, output_dir=str(tmp_path / "eval"), num_examples=6)
  assert not report["missing"]
  tables = {t["title"]: t for t in report["tables"]}
  unseen = tables[st.UNSEEN_TABLE]
  assert unseen["columns"] == list(st.SETTINGS)
  assert [r["row"] for r in unseen["rows"]] == list(EVAL_SAMPLE)
  assert tables[st.FLIPPED_TABLE]["columns"] == [st.FLIPPED_LABELS]
  assert [r["row"] for r in tables[st.ALGORITHMIC_TABLE]["rows"]] == list(st.ALGORITHMIC_TASKS)
  for table in tables.values():
    for row in table["rows"]:
      assert all(0.0 <= v <= 100.0 for v in row["scores"].values()), row
  out = tmp_path / "eval" / "inference_eval"
  for suffix in ("md", "json", "png"):
    assert (out / f"symbol_report_step_3.{suffix}").stat().st_size > 0
  markdown = (out / "symbol_report_step_3.md").read_text()
  assert "| scicite |" in markdown and "instruction symbols" in markdown
  assert os.path.exists(out / "metrics_step_3.json")
