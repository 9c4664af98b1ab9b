"""Offline seqio caches: choosing the tasks, the Beam pipeline that writes them, checks on read.

seqio caches a task at its `seqio.CacheDatasetPlaceholder`: the cache holds the examples
as the pre-cache preprocessors leave them (for our tasks: templated and tokenized, before
EOS and trimming). seqio refuses a pre-cache step that takes `sequence_length`, so a cache
does not depend on the run's lengths: every TASK_FEATURE_LENGTHS reads the same cache and
trims it exactly as the uncached pipeline would. What a cache does depend on is the
vocabulary, which seqio does not record; `cache_tasks` writes it next to seqio's
info/stats files (VOCABULARY_FILE) and `require_cached` refuses a cache tokenized with
another one.

The engine is seqio's own: `seqio.beam_utils` (PreprocessTask, WriteExampleTfRecord,
GetInfo, GetStats, WriteJson) on Apache Beam, the DirectRunner on one machine or
Dataflow / Flink / Spark through Beam pipeline options. apache-beam is the `beam` extra.
"""
from __future__ import annotations

import json
import os
import re
import types
from typing import Iterable, Sequence

import seqio
import tensorflow as tf

from instruct_jax.errors import ActionableError
from instruct_jax.errors import UsageError

# Written by cache_tasks next to seqio's files: {feature: vocabulary fingerprint}.
VOCABULARY_FILE = "vocabularies.json"
# seqio's marker of a finished cache (what Task.cache_dir looks for).
COMPLETED_FILE = "COMPLETED"
# Text whose token ids tell vocabularies apart (ids of bytes, pieces, extra ids).
_PROBE_TEXT = "Caching FLAN: 0123456789 éàü ∑ <extra_id_0> the quick brown fox."


class BeamMissingError(ActionableError, ImportError):
  """apache-beam (the `beam` extra) is not installed."""


class TaskNotCachedError(ActionableError, FileNotFoundError):
  """USE_CACHED_TASKS is on but a task has no cache in the cache directories."""


class CacheMismatchError(ActionableError, ValueError):
  """A cache was written with another vocabulary than the task now has."""


def import_beam() -> tuple[types.ModuleType, types.ModuleType]:
  """(apache_beam, seqio.beam_utils), or an error that names the extra to install."""
  try:
    import apache_beam  # pylint: disable=import-outside-toplevel
    from seqio import beam_utils  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise BeamMissingError(
        f"Caching tasks needs Apache Beam, which is not installed ({e}). Install the "
        "extra: pip install \".[beam]\" (or pip install \"instruct_jax[beam]\").") from e
  return apache_beam, beam_utils


def select_tasks(task_patterns: Sequence[str] = (),
                 mixture: seqio.Mixture | seqio.Task | None = None,
                 exclude_patterns: Sequence[str] = ()) -> list[seqio.Task]:
  """Registered tasks whose names fully match a pattern, or the tasks of `mixture`.

  Every chosen task must have a CacheDatasetPlaceholder (else UsageError naming them).
  """
  if bool(task_patterns) == bool(mixture):
    raise UsageError("Choose the tasks to cache with exactly one of --tasks=REGEX[,REGEX...] "
                     "and --mixture=NAME.")
  if mixture:
    tasks = mixture.tasks if isinstance(mixture, seqio.Mixture) else [mixture]
  else:
    included = [re.compile(p) for p in task_patterns]
    tasks = [seqio.TaskRegistry.get(name) for name in sorted(seqio.TaskRegistry.names())
             if any(p.fullmatch(name) for p in included)]
  excluded = [re.compile(p) for p in exclude_patterns]
  tasks = [t for t in tasks if not any(p.fullmatch(t.name) for p in excluded)]
  if not tasks:
    raise UsageError(
        f"No registered task matches --tasks={','.join(task_patterns)}"
        + (f" minus --exclude_tasks={','.join(exclude_patterns)}" if exclude_patterns else "")
        + ". Patterns must match whole task names (e.g. 'smoke_.*'); is the module that "
        "registers them given with --module?")
  uncacheable = [t.name for t in tasks if not t.supports_caching]
  if uncacheable:
    shown = ", ".join(uncacheable[:8]) + (" ..." if len(uncacheable) > 8 else "")
    raise UsageError(
        f"{len(uncacheable)} of the chosen tasks cannot be cached: their preprocessors have "
        f"no seqio.CacheDatasetPlaceholder ({shown}). Leave them out with "
        "--exclude_tasks=REGEX (e.g. '.*_few_shot': few-shot prompts depend on the run's "
        "input length) or add the placeholder after the task's deterministic steps.")
  return tasks


def vocabulary_fingerprints(task: seqio.Task) -> dict[str, dict]:
  """{feature: what identifies its vocabulary}: class, size and the ids of a probe text."""
  fingerprints = {}
  for name, feature in sorted(task.output_features.items()):
    vocabulary = feature.vocabulary
    fingerprints[name] = {
        "vocabulary": type(vocabulary).__name__,
        "vocab_size": int(vocabulary.vocab_size),
        "probe_ids": [int(i) for i in vocabulary.encode(_PROBE_TEXT)],
    }
  return fingerprints


def task_cache_dir(output_cache_dir: str, task_name: str) -> str:
  """Where seqio keeps `task_name`'s cache under a cache root."""
  return os.path.join(output_cache_dir, seqio.get_task_dir_from_name(task_name))


def cache_tasks(tasks: Iterable[seqio.Task], output_cache_dir: str,
                pipeline_options: Sequence[str] = (), *, overwrite: bool = False,
                min_shards: int = 64, modules: Sequence[str] = (),
                tfds_data_dir: str | None = None) -> dict[str, str]:
  """Runs seqio's Beam cache pipeline over `tasks`; {task: "cached" | "already cached"}.

  Every split of a task is preprocessed shard by shard, globally shuffled (Beam's
  Reshuffle: the cached order differs from the source order) and written as TFRecords
  with seqio's info and stats files, plus VOCABULARY_FILE; the COMPLETED marker comes
  last. A task already cached under `output_cache_dir` is skipped unless `overwrite`.
  `pipeline_options` are Beam's flags (default --runner=DirectRunner); `modules` are
  imported by remote workers so the task registrations exist there too.
  """
  beam, beam_utils = import_beam()
  outcome = {}
  options = beam.options.pipeline_options.PipelineOptions(
      list(pipeline_options) or ["--runner=DirectRunner"])
  tf.io.gfile.makedirs(output_cache_dir)
  with beam.Pipeline(options=options) as beam_pipeline:
    for task in tasks:
      task_dir = task_cache_dir(output_cache_dir, task.name)
      if tf.io.gfile.exists(os.path.join(task_dir, COMPLETED_FILE)):
        if not overwrite:
          outcome[task.name] = "already cached"
          continue
        tf.io.gfile.rmtree(task_dir)
      elif tf.io.gfile.exists(task_dir):
        tf.io.gfile.rmtree(task_dir)  # An unfinished cache from a stopped run.
      outcome[task.name] = "cached"
      written = []
      for split in task.splits:
        label = f"{task.name}/{split}"
        preprocess = beam_utils.PreprocessTask(task, split, modules_to_import=list(modules),
                                               tfds_data_dir=tfds_data_dir)
        num_shards = max(len(preprocess.shards), min_shards)
        examples = (beam_pipeline
                    | f"{label}/preprocess" >> preprocess
                    | f"{label}/shuffle" >> beam.Reshuffle())
        written.append(examples | f"{label}/write" >> beam_utils.WriteExampleTfRecord(
            seqio.get_cached_tfrecord_prefix(task_dir, split), num_shards=num_shards))
        written.append(examples
                       | f"{label}/info" >> beam_utils.GetInfo(num_shards)
                       | f"{label}/write_info" >> beam_utils.WriteJson(
                           seqio.get_cached_info_path(task_dir, split)))
        written.append(examples
                       | f"{label}/stats" >> beam_utils.GetStats(task.output_features)
                       | f"{label}/write_stats" >> beam_utils.WriteJson(
                           seqio.get_cached_stats_path(task_dir, split)))
      written.append(beam_pipeline
                     | f"{task.name}/vocabularies" >> beam.Create(
                         [vocabulary_fingerprints(task)])
                     | f"{task.name}/write_vocabularies" >> beam_utils.WriteJson(
                         os.path.join(task_dir, VOCABULARY_FILE)))
      # COMPLETED is written once everything above is: it waits on all of their outputs.
      _ = (written
           | f"{task.name}/all_written" >> beam.Flatten()
           | f"{task.name}/nothing" >> beam.Filter(lambda _: False)
           | f"{task.name}/completed" >> beam.io.WriteToText(
               os.path.join(task_dir, COMPLETED_FILE), num_shards=1,
               shard_name_template=""))
  return outcome


def add_cache_dirs(cache_dir: str | Sequence[str] | None) -> None:
  """Adds CACHE_DIR to the directories seqio searches for task caches."""
  if not cache_dir:
    return
  dirs = [cache_dir] if isinstance(cache_dir, str) else list(cache_dir)
  known = set(seqio.utils.get_global_cache_dirs())
  seqio.add_global_cache_dirs([d for d in dirs if d not in known])


def _cache_command(task_names: Sequence[str], mixture: str | None,
                   module: str | None, cache_dir: str | None) -> str:
  choice = (f"--mixture={mixture}" if mixture and len(task_names) > 1
            else "--tasks=" + ",".join(re.escape(n) for n in task_names))
  return " ".join(filter(None, [
      "instruct-jax cache", choice, f"--output_cache_dir={cache_dir or 'DIR'}",
      f"--module={module}" if module else None]))


def require_cached(provider: seqio.Task | seqio.Mixture, split: str,
                   cache_dir: str | None = None, module: str | None = None) -> None:
  """Checks that every cacheable task of `provider` has a cache of `split` that fits it.

  Tasks without a CacheDatasetPlaceholder are preprocessed on the fly (seqio's rule).
  Raises TaskNotCachedError naming the command that builds the missing caches, or
  CacheMismatchError when a cache's tokens come from another vocabulary.
  """
  add_cache_dirs(cache_dir)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  tasks = [t for t in tasks if t.supports_caching and split in t.splits]
  missing = [t.name for t in tasks if not t.cache_dir]
  if missing:
    mixture = provider.name if isinstance(provider, seqio.Mixture) else None
    searched = seqio.utils.get_global_cache_dirs()
    raise TaskNotCachedError(
        f"USE_CACHED_TASKS is on but {len(missing)} task(s) have no cache in "
        f"{searched or 'any cache directory (CACHE_DIR is not set)'}: "
        f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}. Build the caches "
        f"with: {_cache_command(missing, mixture, module, cache_dir)} ; then set "
        "--gin.CACHE_DIR=\"'<that directory>'\", or run with --gin.USE_CACHED_TASKS=False.")
  for task in tasks:
    if not tf.io.gfile.exists(seqio.get_cached_info_path(task.cache_dir, split)):
      raise TaskNotCachedError(
          f"The cache of {task.name!r} at {task.cache_dir} has no {split!r} split. "
          f"Rebuild it: {_cache_command([task.name], None, module, cache_dir)} --overwrite")
    _check_vocabularies(task, module, cache_dir)


def _check_vocabularies(task: seqio.Task, module: str | None, cache_dir: str | None) -> None:
  path = os.path.join(task.cache_dir, VOCABULARY_FILE)
  if not tf.io.gfile.exists(path):
    return  # Written by another tool (e.g. seqio_cache_tasks): nothing to compare with.
  with tf.io.gfile.GFile(path) as f:
    cached = json.load(f)
  current = vocabulary_fingerprints(task)
  differing = sorted(name for name in current if cached.get(name) != current[name])
  if differing:
    described = "; ".join(
        f"{name}: cache {_describe(cached.get(name))}, task {_describe(current[name])}"
        for name in differing)
    raise CacheMismatchError(
        f"The cache of {task.name!r} at {task.cache_dir} was tokenized with another "
        f"vocabulary ({described}), so its token ids mean other text for this model. "
        "Rebuild it into a new directory: "
        f"{_cache_command([task.name], None, module, None)} (and point CACHE_DIR there), "
        "or run with --gin.USE_CACHED_TASKS=False.")


def _describe(fingerprint: dict | None) -> str:
  if not fingerprint:
    return "has no such feature"
  return f"{fingerprint['vocabulary']} of {fingerprint['vocab_size']} ids"
