"""Input pipeline: seqio Tasks/Mixtures -> per-host tf.data batches -> global jax.Arrays.

Each host reads only its shard of the examples (seqio.ShardInfo) and batches
`global_batch // num_shards` rows; GlobalBatchIterator stitches those per-host
batches into global arrays laid out with the trainer's batch sharding. The
tf.data iterator state is saved per process so a restarted job continues with
exactly the first batch it has not seen yet.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import os
import sys
import types
from typing import Iterator, Mapping

from clu.data import dataset_iterator as clu_dataset_iterator
import jax
from jax.experimental import multihost_utils
import numpy as np
import seqio
import tensorflow as tf

from instruct_jax.data import cache
from instruct_jax.errors import ActionableError
from instruct_jax.errors import UsageError


class DataPipelineChangedError(ActionableError):
  """A saved data position that this run's input pipeline cannot take back."""


class UnknownTaskError(ActionableError, ValueError):
  """The requested seqio Task/Mixture name is not registered."""


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What to read; field names match t5x's `utils.DatasetConfig`.

  `batch_size` is the GLOBAL batch size (all hosts together). `pack` says which
  feature converter the caller builds (`model.feature_converter(pack=...)`);
  `module`, when set, is imported before the name is looked up so that its
  seqio registrations exist (e.g. "tasks_registry"). `use_cached` reads the
  offline caches of `instruct-jax cache` (data/cache.py), found in `cache_dir`
  (CACHE_DIR) and seqio's global cache directories.
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool
  seed: int | None
  use_cached: bool = False
  pack: bool = False
  module: str | None = None
  cache_dir: str | None = None


def import_registry_module(module: str) -> types.ModuleType:
  """Imports `module` (MIXTURE_OR_TASK_MODULE), whose import registers seqio tasks.

  Looked up on sys.path, then in the working directory: the `instruct-jax`
  console script, unlike `python -m`, does not put the working directory on
  sys.path, and a task module next to the user's shell is the common case.
  """
  if module.endswith(".py"):
    raise UsageError(
        f"MIXTURE_OR_TASK_MODULE={module!r} is a file name; give the module name, "
        f"{module[:-3].replace(os.sep, '.')!r}, and run from the directory that holds "
        f"{os.path.basename(module)!r} (or put that directory on PYTHONPATH).")

  def is_missing(error: ModuleNotFoundError) -> bool:
    # `module` itself (or a parent package) is absent, not something it imports.
    return error.name is not None and (module + ".").startswith(error.name + ".")

  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if not is_missing(e):
      raise
  cwd = os.getcwd()
  if cwd not in sys.path:
    sys.path.append(cwd)
    importlib.invalidate_caches()
    try:
      return importlib.import_module(module)
    except ModuleNotFoundError as e:
      if not is_missing(e):
        raise
  file_name = module.replace(".", os.sep) + ".py"
  raise UsageError(
      f"Cannot import the task module {module!r} (MIXTURE_OR_TASK_MODULE): it is not "
      f"installed and the working directory {cwd} holds no {file_name} (nor package "
      f"{module.split('.')[0]}/). Run the command from the directory that holds "
      f"{file_name}, put that directory on PYTHONPATH, or install the module.")


def get_task_or_mixture(name: str, module: str | None = None) -> seqio.Task | seqio.Mixture:
  """Registered seqio Task or Mixture called `name`, with a helpful error if absent."""
  if module:
    import_registry_module(module)
  tasks = set(seqio.TaskRegistry.names())
  mixtures = set(seqio.MixtureRegistry.names())
  if name in tasks and name in mixtures:
    raise ValueError(f"{name!r} is registered both as a seqio Task and as a Mixture; "
                     "rename one of them so the name is unambiguous.")
  if name in mixtures:
    return seqio.MixtureRegistry.get(name)
  if name in tasks:
    return seqio.TaskRegistry.get(name)
  close = difflib.get_close_matches(name, sorted(tasks | mixtures), n=5, cutoff=0.6)
  suggestion = (f"Closest registered names: {', '.join(close)}." if close
                else "No registered name is close to it.")
  raise UnknownTaskError(
      f"No seqio Task or Mixture named {name!r} is registered "
      f"({len(tasks)} tasks and {len(mixtures)} mixtures are). {suggestion} "
      "If the name is right, the module that registers it has not been imported: "
      "`import tasks_registry` (or your own registry module) first, or set "
      "DatasetConfig.module='tasks_registry'.")


def provider_of(cfg: DatasetConfig) -> seqio.Task | seqio.Mixture:
  """The config's Task/Mixture; with use_cached, after checking its caches fit."""
  provider = get_task_or_mixture(cfg.mixture_or_task_name, cfg.module)
  if cfg.use_cached:
    cache.require_cached(provider, cfg.split, cfg.cache_dir, cfg.module)
  return provider


def per_host_batch_size(global_batch_size: int, num_shards: int) -> int:
  """Rows each data shard (host) contributes to one global batch."""
  if num_shards < 1 or global_batch_size < 1 or global_batch_size % num_shards:
    raise ValueError(
        f"Global batch size {global_batch_size} must be a positive multiple of the "
        f"number of data shards {num_shards} (each host reads an equal slice); "
        f"choose a batch size divisible by {num_shards}.")
  return global_batch_size // num_shards


def _check_packing(cfg: DatasetConfig, feature_converter: seqio.FeatureConverter) -> None:
  if bool(feature_converter.pack) != bool(cfg.pack):
    raise ValueError(
        f"DatasetConfig.pack={cfg.pack} but the feature converter "
        f"{type(feature_converter).__name__} has pack={feature_converter.pack}. Build "
        "the converter from the config, e.g. model.feature_converter(pack=cfg.pack).")


def get_dataset(cfg: DatasetConfig, shard_id: int, num_shards: int,
                feature_converter: seqio.FeatureConverter,
                repeat: bool = True) -> tf.data.Dataset:
  """This host's batches of model features, [global_batch // num_shards, length].

  `repeat=True` cycles the split forever (training); otherwise the split is read
  once (for a Mixture, seqio's sampling stops when its first task runs out).
  Partial batches are dropped either way so shapes stay static; use
  `eval_batches` to cover a finite split exactly once.
  """
  _check_packing(cfg, feature_converter)
  provider = provider_of(cfg)
  return _seqio_dataset(provider, cfg, shard_id, num_shards, feature_converter,
                        num_epochs=None if repeat else 1,
                        batch_size=per_host_batch_size(cfg.batch_size, num_shards))


def _seqio_dataset(provider: seqio.DatasetProviderBase, cfg: DatasetConfig, shard_id: int,
                   num_shards: int, feature_converter: seqio.FeatureConverter,
                   num_epochs: int | None, batch_size: int | None = None
                   ) -> tf.data.Dataset:
  """seqio.get_dataset of `provider` with the config's lengths, split, caching and seed."""
  return seqio.get_dataset(
      provider,
      task_feature_lengths=cfg.task_feature_lengths,
      feature_converter=feature_converter,
      dataset_split=cfg.split,
      use_cached=cfg.use_cached,
      shuffle=cfg.shuffle,
      num_epochs=num_epochs,
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
      seed=cfg.seed,
      batch_size=batch_size,
  )


def model_input_shapes(cfg: DatasetConfig,
                       feature_converter: seqio.FeatureConverter) -> dict[str, tuple[int, int]]:
  """{model feature: (global_batch, length)}, e.g. for model.init_params."""
  lengths = feature_converter.get_model_feature_lengths(cfg.task_feature_lengths)
  return {name: (cfg.batch_size, int(length)) for name, length in lengths.items()}


def _to_global(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding,
               global_batch_size: int) -> dict[str, jax.Array]:
  return {
      name: jax.make_array_from_process_local_data(
          sharding, value, (global_batch_size,) + value.shape[1:])
      for name, value in local_batch.items()
  }


def with_speedups(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` made faster by tf.data, with the same elements in the same order.

  seqio chains many small per-example maps (post-cache preprocessors, trimming,
  feature checks, mixing, the feature converter); tf.data runs each as its own
  stage unless `map_fusion` merges consecutive ones, and copies batches on one
  thread unless `parallel_batch`; the prefetch makes batches while the trainer
  works on earlier ones (prefetched batches are part of the saved iterator state,
  so resuming stays exact). Fused maps are the same functions composed, and
  `deterministic` stays True: resuming and reproducing a run rely on the order.
  Together about 1.25x more batches per CPU-second on the cached, packed FLAN
  pipeline (benchmarks/input_pipeline.py).
  """
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_fusion = True
  options.experimental_optimization.parallel_batch = True
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


# How GlobalBatchIterator builds its tf.data pipeline, recorded next to each saved
# position: a position restores only into the pipeline that saved it, and positions
# saved before the speed-ups existed carry no record.
_PLAIN, _SPEEDUPS = "plain", "speedups-1"
_BUILDS = {_PLAIN: lambda dataset: dataset, _SPEEDUPS: with_speedups}


class GlobalBatchIterator:
  """Per-host tf.data batches -> global jax.Arrays laid out with `batch_sharding`.

  Checkpointable: `save`/`restore` write/read this process's tf.data iterator
  state (shuffle buffers and positions included) in a file named after the
  process, so every host of a multi-host job keeps its own position. The
  batches come through `with_speedups`; a position saved by a version without
  them is restored into the plain pipeline, which the run then keeps.

  `global_batch_size` defaults to local rows x process count, right when every
  process reads distinct data; pass it explicitly when processes are replicas
  (e.g. model parallelism spanning hosts, where num_shards < process count).
  """

  def __init__(self, dataset: tf.data.Dataset, batch_sharding: jax.sharding.Sharding,
               global_batch_size: int | None = None):
    self._dataset = dataset
    self._use_build(_SPEEDUPS)
    self._sharding = batch_sharding
    spec = self._iterator.element_spec
    local_rows = {shape.shape[0] if shape.shape else None for shape in spec.values()}
    if len(local_rows) != 1 or None in local_rows:
      raise ValueError(
          "GlobalBatchIterator needs batched features with one static leading batch "
          f"size; found shapes { {k: v.shape for k, v in spec.items()} }. Batch the "
          "dataset with drop_remainder=True (get_dataset does).")
    (self.local_batch_size,) = local_rows
    self.global_batch_size = global_batch_size or self.local_batch_size * jax.process_count()
    self._spec = spec

  def _use_build(self, build: str) -> None:
    # TfDatasetIterator wraps a tf.train.Checkpoint of the iterator; it has no
    # Python-side read-ahead, so the saved state is exactly "what was yielded".
    self._build = build
    self._iterator = clu_dataset_iterator.TfDatasetIterator(
        _BUILDS[build](self._dataset), checkpoint=True)

  @property
  def global_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape, dtype and sharding of each yielded array (for jit lowering)."""
    return {
        name: jax.ShapeDtypeStruct((self.global_batch_size,) + tuple(s.shape[1:]),
                                   s.dtype, sharding=self._sharding)
        for name, s in self._spec.items()
    }

  def __iter__(self) -> GlobalBatchIterator:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    return _to_global(next(self._iterator), self._sharding, self.global_batch_size)

  @staticmethod
  def _prefix(directory: str) -> str:
    name = f"data_iterator-process_{jax.process_index()}-of-{jax.process_count()}"
    return os.path.join(os.fspath(directory), name)

  def save(self, directory: str) -> None:
    """Writes this process's iterator state into `directory` (created if missing)."""
    tf.io.gfile.makedirs(os.fspath(directory))
    prefix = self._prefix(directory)
    self._iterator.save(prefix)
    with tf.io.gfile.GFile(prefix + ".pipeline", "w") as f:
      f.write(self._build)

  def restore(self, directory: str) -> None:
    """Reads the state written by `save`; the next batch is the first unseen one."""
    prefix = self._prefix(directory)
    if not tf.io.gfile.exists(prefix + ".index"):
      found = (sorted(tf.io.gfile.listdir(os.fspath(directory)))
               if tf.io.gfile.isdir(os.fspath(directory)) else "no such directory")
      raise FileNotFoundError(
          f"No data iterator state for process {jax.process_index()} of "
          f"{jax.process_count()} at {prefix}(.index); found: {found}. The state is "
          "saved per process, so restore with the same number of processes that saved "
          "it, or start the data from scratch.")
    build = _PLAIN  # saved before the record existed
    if tf.io.gfile.exists(prefix + ".pipeline"):
      with tf.io.gfile.GFile(prefix + ".pipeline") as f:
        build = f.read().strip()
    if build not in _BUILDS:
      raise DataPipelineChangedError(
          f"The data position saved in {directory} comes from a pipeline build "
          f"{build!r} that this instruct_jax does not know (known: {sorted(_BUILDS)}); it "
          "was saved by a newer version. Resume with that version, or with "
          "--gin.RESTORE_DATA_ITERATOR=False to start the data over.")
    if build != self._build:
      self._use_build(build)
    try:
      self._iterator.restore(prefix)
    except tf.errors.NotFoundError as e:
      if "Failed to restore dataset iterator" not in str(e):
        raise
      raise DataPipelineChangedError(
          f"The data position saved in {directory} was written by a different input "
          "pipeline than this run builds (the mixture's tasks or preprocessors, the "
          "sequence lengths, batch size, packing or shuffling, or the instruct_jax version "
          "changed since), so it cannot be restored; the checkpoint itself is intact. "
          "Relaunch with the configuration that saved it, or resume the model and optimizer "
          "with the data starting again from the beginning of its stream: "
          "--gin.RESTORE_DATA_ITERATOR=False (examples seen before the checkpoint may be "
          "seen again).") from e


def _finite_examples(cfg: DatasetConfig, shard_id: int, num_shards: int,
                     feature_converter: seqio.FeatureConverter) -> tf.data.Dataset:
  """Unbatched model features of this shard, every example of the split once.

  A Mixture is read task by task and concatenated: seqio mixes with
  sample_from_datasets(stop_on_empty_dataset=True), which would stop at the
  first exhausted task and miss the rest.
  """
  _check_packing(cfg, feature_converter)
  provider = provider_of(cfg)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  tasks = [task for task in tasks if cfg.split in task.splits]
  if not tasks:
    raise ValueError(f"No task of {cfg.mixture_or_task_name!r} has a {cfg.split!r} "
                     "split; choose a split its tasks define.")
  datasets = [_seqio_dataset(task, cfg, shard_id, num_shards, feature_converter, num_epochs=1)
              for task in tasks]
  return functools.reduce(lambda a, b: a.concatenate(b), datasets)


def _any_process(flag: bool) -> bool:
  """True if `flag` is true on any process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.asarray(flag, dtype=np.int32))
  return bool(np.any(flags))


def eval_batches(cfg: DatasetConfig, shard_id: int, num_shards: int,
                 feature_converter: seqio.FeatureConverter,
                 batch_sharding: jax.sharding.Sharding,
                 global_batch_size: int | None = None) -> Iterator[dict[str, jax.Array]]:
  """Global batches covering the finite split once, each example exactly once.

  The last partial batch is padded with all-zero rows (zero loss weights, so they
  count for nothing). Hosts can hold different numbers of examples; every host
  yields as many batches as the busiest one, padding with all-zero batches,
  because each global batch is built collectively. `global_batch_size` as in
  GlobalBatchIterator (defaults to cfg.batch_size).
  """
  local_rows = per_host_batch_size(cfg.batch_size, num_shards)
  dataset = _finite_examples(cfg, shard_id, num_shards, feature_converter)
  empty_rows = {
      name: np.zeros((local_rows,) + tuple(spec.shape), spec.dtype.as_numpy_dtype)
      for name, spec in dataset.element_spec.items()
  }
  local_batches = dataset.batch(local_rows, drop_remainder=False).as_numpy_iterator()
  global_rows = global_batch_size or cfg.batch_size
  while True:
    local = next(local_batches, None)
    if not _any_process(local is not None):
      return
    padded = dict(empty_rows)
    if local is not None:
      for name, rows in local.items():
        padded[name] = np.concatenate([rows, empty_rows[name][len(rows):]], axis=0)
    yield _to_global(padded, batch_sharding, global_rows)
