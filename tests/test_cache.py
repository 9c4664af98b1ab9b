"""Offline caches: `instruct-jax cache` (seqio's Beam pipeline, DirectRunner) and reading them.

The smoke tasks (shrunk to a few dozen examples each) and a byte-vocabulary copy of FLAN's
RTE tasks under TFDS mock data are cached once per module into a temporary directory.
Cached examples are compared with uncached ones as multisets: Beam's Reshuffle (kept on
purpose, it is the cache's global shuffle) scatters the examples over the output files,
so the cached order is not the source order and first batches cannot be compared one to
one; the same examples, the same number of times, is what must hold.
"""
import builtins
import collections
import importlib.util
import json
import os

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from instruct_jax import cli
from instruct_jax.benchmarks import input_pipeline
from instruct_jax.cli import gin_setup
from instruct_jax.data import cache
from instruct_jax.data import mixture_inspection
from instruct_jax.data import pipeline
from instruct_jax.errors import UsageError
from tasks_registry import registration
from tasks_registry import smoke
from tasks_registry.flan import tasks as flan_tasks

needs_beam = pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                                reason="apache-beam (the beam extra) is not installed")
FLAN_PREFIX = "flancache_"
BYTES = seqio.ByteVocabulary()
# Lengths at which nothing is cut (mock RTE sentences are short).
LENGTHS = {"inputs": 1024, "targets": 64}
CACHED_TASKS = "smoke_reverse_word,flancache_rte"
SMALL_SMOKE = {"train": 40, "validation": 12}


@pytest.fixture(scope="module")
def registered():
  """Small smoke tasks and byte-vocabulary FLAN RTE tasks, under TFDS mock data."""
  patch = pytest.MonkeyPatch()
  for split, count in SMALL_SMOKE.items():
    patch.setitem(smoke.NUM_EXAMPLES, split, count)
  smoke.generate_examples.cache_clear()
  smoke._register()  # pylint: disable=protected-access
  flan_tasks.register_flan_tasks(vocabulary=BYTES, prefix=FLAN_PREFIX, datasets=["rte"])
  # Mock data has no split metadata: no example counts (seqio only uses them for in-memory
  # caching) and no file list, so each split is read as one shard.
  patch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)
  patch.setattr(seqio.TfdsDataSource, "list_shards",
                lambda self, split: [f"{self.tfds_dataset.name}-{split}.mock"])
  cache_dirs = list(seqio.utils.get_global_cache_dirs())
  with tfds.testing.mock_data(num_examples=10):
    yield
  seqio.set_global_cache_dirs(cache_dirs)
  registration.remove_with_prefix(FLAN_PREFIX)
  patch.undo()
  smoke.generate_examples.cache_clear()
  smoke._register()  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def cache_dir(registered, tmp_path_factory):
  """The cache of CACHED_TASKS, built by the CLI with the DirectRunner."""
  del registered
  root = str(tmp_path_factory.mktemp("seqio_cache"))
  cli.run_command(["cache", f"--tasks={CACHED_TASKS}", f"--output_cache_dir={root}",
                   "--min_shards=2"], join_job=False)
  seqio.add_global_cache_dirs([root])
  return root


def _key(example):
  return tuple(sorted((name, repr(np.asarray(value).tolist())) for name, value in example.items()))


def _examples(name, split, use_cached, lengths=LENGTHS):
  dataset = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split=split, use_cached=use_cached, shuffle=False)
  return collections.Counter(_key(ex) for ex in dataset.as_numpy_iterator())


@needs_beam
@pytest.mark.parametrize("name", ["smoke_reverse_word", "flancache_rte"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_cached_examples_equal_uncached(cache_dir, name, split):
  task = seqio.get_mixture_or_task(name)
  if split not in task.splits:
    pytest.skip(f"{name} has no {split} split")
  assert task.cache_dir == cache.task_cache_dir(cache_dir, name)
  cached = _examples(name, split, use_cached=True)
  assert cached == _examples(name, split, use_cached=False)
  assert sum(cached.values()) == task.get_cached_stats(split)["examples"] > 0


@needs_beam
@pytest.mark.parametrize("lengths", [{"inputs": 9, "targets": 3}, {"inputs": 64, "targets": 16}])
def test_one_cache_serves_every_length(cache_dir, lengths):
  """seqio caches before any length-dependent step, so each run's lengths apply on read."""
  del cache_dir
  cached = _examples("smoke_reverse_word", "train", True, lengths)
  assert cached == _examples("smoke_reverse_word", "train", False, lengths)
  longest = max(len(eval(dict(key)["inputs"])) for key in cached)  # pylint: disable=eval-used
  assert longest <= lengths["inputs"]


@needs_beam
def test_training_pipeline_reads_the_cache(cache_dir):
  """get_dataset with use_cached and cache_dir yields the uncached rows (unpacked)."""
  converter = seqio.EncDecFeatureConverter(pack=False)

  def rows(use_cached):
    cfg = pipeline.DatasetConfig("smoke_reverse_word", smoke.TASK_FEATURE_LENGTHS, "train",
                                 batch_size=4, shuffle=False, seed=0, use_cached=use_cached,
                                 cache_dir=cache_dir)
    batches = pipeline.get_dataset(cfg, 0, 1, converter, repeat=False).as_numpy_iterator()
    return collections.Counter(_key({k: v[i] for k, v in batch.items()})
                               for batch in batches for i in range(4))

  assert rows(use_cached=True) == rows(use_cached=False)


@needs_beam
@pytest.mark.slow
def test_train_run_from_the_cache(cache_dir, tmp_path, monkeypatch):
  """`instruct-jax train` with USE_CACHED_TASKS/CACHE_DIR never preprocesses on the fly.

  Its losses are not compared with an uncached run's: the cache's example order differs
  (module docstring), so the packed batches differ from the first step on.
  """
  def uncached(*args, **kwargs):
    raise AssertionError("preprocessed on the fly although USE_CACHED_TASKS=True")

  monkeypatch.setattr(seqio.Task, "preprocess_precache", uncached)
  model_dir = tmp_path / "run"
  gin.clear_config()
  try:
    cli.run_command(["train", "--gin_file=runs/smoke.gin", f"--gin.MODEL_DIR='{model_dir}'",
                     "--gin.MIXTURE_OR_TASK_NAME='smoke_reverse_word'",
                     "--gin.TRAIN_EVAL_MIXTURE_OR_TASK_NAME='smoke_reverse_word'",
                     "--gin.TRAIN_STEPS=2", "--gin.LOG_PERIOD=1", "--gin.EVAL_PERIOD=None",
                     "--gin.BATCH_SIZE=8", "--gin.trainer.train.final_eval_fn=None",
                     "--gin.USE_CACHED_TASKS=True", f"--gin.CACHE_DIR='{cache_dir}'"],
                    join_job=False)
  finally:
    gin.clear_config()
  records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["cross_ent_loss_per_token"] for r in records if "cross_ent_loss_per_token" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert os.path.isdir(model_dir / "checkpoint_2")


@needs_beam
def test_inspect_counts_from_the_cache(cache_dir):
  (summary,) = mixture_inspection.summarize(seqio.get_mixture_or_task("smoke_reverse_word"),
                                            "train", num_samples=1, cache_dir=cache_dir)
  assert (summary.examples, summary.counted_from, summary.cached) == (
      SMALL_SMOKE["train"], "cache", True)
  texts = {(e.inputs, e.targets) for e in smoke.generate_examples("smoke_reverse_word", "train")}
  assert (summary.samples[0]["inputs"], summary.samples[0]["targets"]) in texts


@needs_beam
def test_input_benchmark_times_uncached_and_cached(cache_dir):
  gin.clear_config()
  try:
    gin_setup.parse_gin(["models/t5_1_1/tiny.gin"], [], [])
    model = gin_setup.build_macro("MODEL", "a model gin")
  finally:
    gin.clear_config()
  results = input_pipeline.benchmark_input_pipeline(
      model, ["smoke_reverse_word"], 64, 16, batch_size=4, batches=2, cache_dir=cache_dir)
  assert [(r.mixture, r.cached) for r in results["rates"]] == [
      ("smoke_reverse_word", False), ("smoke_reverse_word", True)]
  assert all(r.examples_per_second > 0 and r.tokens_per_second > 0 for r in results["rates"])
  assert "  cached" in input_pipeline.format_table(results)


def _numbered_task(name, vocabulary=BYTES):
  registration.replace_task(
      name,
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": [f"q {i}" for i in range(6)], "targets": [f"a {i}" for i in range(6)]}),
          splits=("train",)),
      output_features={k: seqio.Feature(vocabulary, add_eos=True) for k in ("inputs", "targets")},
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim])


def test_uncached_task_error_names_the_cache_command(tmp_path):
  _numbered_task("cachetest_uncached")
  cfg = pipeline.DatasetConfig("cachetest_uncached", {"inputs": 8, "targets": 8}, "train",
                               batch_size=2, shuffle=False, seed=0, use_cached=True,
                               cache_dir=str(tmp_path), module="tasks_registry")
  cache_dirs = list(seqio.utils.get_global_cache_dirs())
  try:
    with pytest.raises(cache.TaskNotCachedError) as error:
      pipeline.get_dataset(cfg, 0, 1, seqio.EncDecFeatureConverter(pack=False))
  finally:
    seqio.set_global_cache_dirs(cache_dirs)
    registration.remove_with_prefix("cachetest_")
  message = str(error.value)
  assert (f"instruct-jax cache --tasks=cachetest_uncached --output_cache_dir={tmp_path} "
          "--module=tasks_registry") in message
  assert "USE_CACHED_TASKS=False" in message


@needs_beam
def test_cache_of_another_vocabulary_is_refused(cache_dir):
  """Same task name, cache tokenized with bytes, task now with 100 extra ids."""
  del cache_dir
  flan_tasks.register_flan_tasks(vocabulary=seqio.ByteVocabulary(extra_ids=100),
                                 prefix=FLAN_PREFIX, datasets=["rte"])
  try:
    with pytest.raises(cache.CacheMismatchError) as error:
      cache.require_cached(seqio.get_mixture_or_task("flancache_rte"), "train")
  finally:
    flan_tasks.register_flan_tasks(vocabulary=BYTES, prefix=FLAN_PREFIX, datasets=["rte"])
  assert "another vocabulary" in str(error.value)
  assert "ByteVocabulary of 259 ids" in str(error.value)  # what the cache holds
  assert "instruct-jax cache --tasks=flancache_rte" in str(error.value)
  cache.require_cached(seqio.get_mixture_or_task("flancache_rte"), "train")  # fits again


def test_task_selection(registered):
  del registered
  holdout = seqio.get_mixture_or_task("smoke_holdout_eval")
  assert ([t.name for t in cache.select_tasks(mixture=holdout)]
          == sorted(smoke.task_names([smoke.HELD_OUT_CLUSTER])))
  assert [t.name for t in cache.select_tasks(["flancache_rte.*"], exclude_patterns=[
      ".*few_shot", ".*template_.*", ".*no_options"])] == ["flancache_rte", "flancache_rte_eval"]
  with pytest.raises(UsageError, match="CacheDatasetPlaceholder.*--exclude_tasks"):
    cache.select_tasks(["flancache_rte_few_shot"])
  with pytest.raises(UsageError, match="exactly one of"):
    cache.select_tasks(["smoke_.*"], holdout)
  with pytest.raises(UsageError, match="No registered task matches"):
    cache.select_tasks(["no_such_task"])


def test_missing_beam_names_the_extra(tmp_path, monkeypatch, capsys):
  real_import = builtins.__import__

  def no_beam(name, *args, **kwargs):
    if name == "apache_beam" or name.startswith("apache_beam."):
      raise ImportError("No module named 'apache_beam'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_beam)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["cache", "--tasks=smoke_reverse_word", f"--output_cache_dir={tmp_path}"])
  assert exit_info.value.code == 1
  assert 'pip install ".[beam]"' in capsys.readouterr().err
  assert not os.listdir(tmp_path)
