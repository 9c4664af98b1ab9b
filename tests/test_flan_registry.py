"""FLAN registry structure: clusters, datasets, templates, task names, mixtures, rates.

No data is read here (see test_flan_data.py for pipelines under TFDS mock data).
"""
import importlib
import re
import zlib

import pytest
import seqio
import tensorflow_datasets as tfds

from instruct_jax.eval import metrics
from tasks_registry import flan
from tasks_registry import registration
from tasks_registry.flan import clusters
from tasks_registry.flan import formats
from tasks_registry.flan import mixtures
from tasks_registry.flan import tasks as flan_tasks_lib

# The paper's clusters and their dataset counts (62 datasets in all).
EXPECTED_CLUSTER_SIZES = {
    "nli": 7, "commonsense": 4, "sentiment": 4, "paraphrase": 4, "closed_book_qa": 3,
    "struct_to_text": 4, "translation": 8, "reading_comprehension": 5,
    "reading_comprehension_commonsense": 2, "coreference": 3, "misc": 7, "summarization": 11,
}
# Clusters left out of training when the key cluster is held out (FLAN's rules).
EXPECTED_EXCLUDED = {cluster: {cluster} for cluster in EXPECTED_CLUSTER_SIZES}
EXPECTED_EXCLUDED.update({
    "nli": {"nli", "paraphrase"},
    "paraphrase": {"paraphrase", "nli"},
    "reading_comprehension": {"reading_comprehension", "reading_comprehension_commonsense"},
    "commonsense": {"commonsense", "reading_comprehension_commonsense"},
    "reading_comprehension_commonsense": {"reading_comprehension_commonsense",
                                          "reading_comprehension", "commonsense"},
})
ALL_DATASETS = sorted(flan.DATASETS)
FLAN_TASKS = flan_tasks_lib.flan_tasks()


def test_twelve_clusters_of_62_datasets():
  assert {c: len(d) for c, d in flan.CLUSTERS.items()} == EXPECTED_CLUSTER_SIZES
  listed = [d for datasets in flan.CLUSTERS.values() for d in datasets]
  assert len(listed) == len(set(listed)) == sum(EXPECTED_CLUSTER_SIZES.values())
  assert set(listed) == set(flan.DATASETS) == set(flan.TEMPLATES)
  assert clusters.cluster_of("rte") == "nli"
  with pytest.raises(ValueError, match="no FLAN cluster"):
    clusters.cluster_of("poetry")


@pytest.mark.parametrize("cluster", sorted(EXPECTED_CLUSTER_SIZES))
def test_holdout_exclusion_rules(cluster):
  assert set(clusters.excluded_clusters(cluster)) == EXPECTED_EXCLUDED[cluster]
  assert set(clusters.training_clusters(cluster)) == (
      set(EXPECTED_CLUSTER_SIZES) - EXPECTED_EXCLUDED[cluster])


@pytest.mark.parametrize("name", ALL_DATASETS)
def test_every_dataset_has_ten_valid_templates(name):
  spec = flan.DATASETS[name]
  templates = flan.TEMPLATES[name]
  assert len(templates) == 10
  assert len(set(templates)) == 10, "templates of one dataset must differ"
  turned = [t for t in templates if t.turned_around]
  assert len(turned) <= 3  # "Up to three" invert the task; the rest pose it.
  allowed = set(spec.fields) | {"answer"}
  for template in templates:
    assert template.fields() <= allowed, (name, template)
    assert template.inputs.strip() and template.targets.strip()
    if spec.has_options and not template.turned_around:
      # Classification templates answer with the option text.
      assert template.targets == "{answer}", (name, template)
    if template.turned_around:
      assert template.targets != "{answer}", (name, template)
  # Every field the dataset provides is used by some template.
  used = set().union(*(t.fields() for t in templates))
  assert set(spec.fields) <= used, (name, set(spec.fields) - used)


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


@pytest.mark.parametrize("name", ALL_DATASETS)
def test_tfds_sources_are_real_builders_with_capped_train_splits(name):
  spec = flan.DATASETS[name]
  assert spec.metric in flan_tasks_lib.GENERATIVE_METRICS
  if spec.has_options:
    assert spec.metric == "accuracy"
    if spec.options:
      assert len(set(spec.options)) == len(spec.options) >= 2
  for source in spec.sources.values():
    builder, _, version = source.tfds_name.partition(":")
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), source.tfds_name
    assert version in _known_versions(source.tfds_name), source.tfds_name
    assert "validation" in source.splits
    for split in source.splits.values():
      tfds.core.ReadInstruction.from_spec(split)  # Parses.
    train = source.splits.get("train")
    if train is not None:
      cap = re.search(r"\[:(\d+)\]$", train)
      assert cap is None or int(cap.group(1)) <= flan.datasets.MAX_TRAIN_EXAMPLES
      assert train != source.splits["validation"]


def test_vocabulary_is_the_t5_sentencepiece_model_and_stays_unloaded():
  vocab = flan.vocabulary()
  assert isinstance(vocab, seqio.SentencePieceVocabulary)
  assert vocab.sentencepiece_model_file == (
      "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model")
  assert vocab is flan.vocabulary()
  assert vocab._model is None  # pylint: disable=protected-access  # Never loaded by imports.
  task = seqio.get_mixture_or_task("flan_rte")
  assert task.output_features["inputs"].vocabulary is vocab


def _expected_names(task):
  base = "flan_" + task.base_name
  names = {base, base + "_no_options", base + "_few_shot", base + "_eval",
           base + "_eval_no_options", base + "_eval_few_shot"}
  names |= {f"{base}_template_{i}" for i in range(10)}
  names |= {f"{base}_template_{i}_eval" for i in task.eval_templates}
  return names


@pytest.mark.parametrize("task", FLAN_TASKS, ids=lambda t: t.base_name)
def test_registered_task_names_metrics_and_postprocessors(task):
  registered = {n for n in seqio.TaskRegistry.names() if n.startswith(f"flan_{task.base_name}_")
                or n == f"flan_{task.base_name}"}
  expected = _expected_names(task)
  assert expected <= registered
  for name in expected:
    seqio_task = seqio.TaskRegistry.get(name)
    assert set(seqio_task.splits) == set(task.source.splits)
    first = seqio_task.preprocessors[0]
    assert first.func is formats.prepare_fields and first.keywords["spec"] is task.spec
    rank = task.spec.has_options and name.split("_eval")[0] != name
    if rank:
      assert seqio_task.postprocessor is metrics.rank_classification_postprocessor
      assert list(seqio_task.score_metric_fns) == [metrics.rank_classification_accuracy]
      assert not seqio_task.predict_metric_fns
    else:
      assert seqio_task.postprocessor is metrics.answers_postprocessor
      assert list(seqio_task.predict_metric_fns) == list(
          flan_tasks_lib.GENERATIVE_METRICS[task.spec.metric])


def test_task_naming():
  assert flan_tasks_lib.task_name("rte") == "flan_rte"
  assert flan_tasks_lib.task_name("rte", prompt_format=formats.FEW_SHOT,
                                  evaluation=True) == "flan_rte_eval_few_shot"
  assert flan_tasks_lib.task_name("anli_r1", template=3, evaluation=True,
                                  prefix="x_") == "x_anli_r1_template_3_eval"
  assert [t.base_name for t in flan_tasks_lib.flan_tasks(["anli", "wsc273"])] == [
      "anli_r1", "anli_r2", "anli_r3", "wsc273"]
  with pytest.raises(ValueError, match="Unknown FLAN dataset"):
    flan_tasks_lib.flan_tasks(["poetry"])


def _tasks_of_clusters(cluster_names, train_only=False):
  tasks = [t for t in FLAN_TASKS if clusters.cluster_of(t.dataset) in cluster_names]
  return {t.base_name for t in tasks if t.has_train_split or not train_only}


def _mixture_tasks(name):
  return {task.name for task in seqio.get_mixture_or_task(name).tasks}


@pytest.mark.parametrize("cluster", sorted(EXPECTED_CLUSTER_SIZES))
def test_holdout_mixtures_contain_exactly_the_expected_tasks(cluster):
  trained = set(EXPECTED_CLUSTER_SIZES) - EXPECTED_EXCLUDED[cluster]
  expected_train = {f"flan_{b}" for b in _tasks_of_clusters(trained, train_only=True)}
  assert _mixture_tasks(f"flan_holdout_{cluster}_train") == expected_train
  held_out = _tasks_of_clusters({cluster})
  assert _mixture_tasks(f"flan_holdout_{cluster}_eval") == {f"flan_{b}_eval" for b in held_out}
  for suffix in ("no_options", "few_shot"):
    assert _mixture_tasks(f"flan_holdout_{cluster}_eval_{suffix}") == {
        f"flan_{b}_eval_{suffix}" for b in held_out}
  by_template = _mixture_tasks(f"flan_holdout_{cluster}_eval_by_template")
  assert {re.sub(r"_template_\d+_eval$", "", n)[len("flan_"):] for n in by_template} == held_out
  # Nothing evaluated is trained on.
  assert not {d for d in held_out} & {n[len("flan_"):] for n in expected_train}


def test_all_train_mixture_and_eval_only_datasets():
  expected = {f"flan_{t.base_name}" for t in FLAN_TASKS if t.has_train_split}
  assert _mixture_tasks("flan_all_train") == expected
  assert "flan_wsc273" not in expected and len(expected) == len(FLAN_TASKS) - 1
  assert "flan_wsc273_eval" in _mixture_tasks("flan_holdout_coreference_eval")


def _fake_num_examples(self, split):
  del split
  return zlib.crc32(self.tfds_dataset.name.encode()) % 6000 + 1


@pytest.mark.parametrize("cap", [3000, 500])
def test_mixture_rates_are_example_counts_capped(monkeypatch, cap):
  monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", _fake_num_examples)
  suffix = "" if cap == mixtures.DEFAULT_RATE_CAP else f"_cap{cap}"
  if suffix:
    names = mixtures.register_flan_mixtures(rate_cap=cap, suffix=suffix)
    assert "flan_holdout_nli_train_cap500" in names
  try:
    for name in ("flan_all_train", "flan_holdout_nli_train", "flan_holdout_translation_train"):
      mixture = seqio.get_mixture_or_task(name + suffix)
      rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
      expected = {t.name: min(_fake_num_examples(t.source, "train"), cap)
                  for t in mixture.tasks}
      assert rates == expected
      assert max(rates.values()) == cap and min(rates.values()) < cap
  finally:
    for name in list(seqio.MixtureRegistry.names()):
      if suffix and name.endswith(suffix):
        seqio.MixtureRegistry.remove(name)


def test_registration_is_idempotent():
  before = set(seqio.TaskRegistry.names())
  importlib.reload(flan)
  flan.register()
  assert set(seqio.TaskRegistry.names()) == before


def test_remove_with_prefix_and_empty_mixtures_are_rejected():
  with pytest.raises(ValueError, match="non-empty prefix"):
    registration.remove_with_prefix("")
  with pytest.raises(ValueError, match="empty"):
    registration.replace_mixture("flan_nothing", [])
