"""seqio evaluation glue: batched, sharded predict / score functions, eval and infer-eval.

Data flow: eval tasks -> seqio.Evaluator (caches each task's examples as model
features) -> `ModelRunner.predict` / `ModelRunner.score` (fixed-size global
batches laid out over the mesh, jit-compiled `model.predict_batch` /
`model.score_batch`) -> the tasks' own postprocessors and metric functions ->
seqio loggers (JSON lines of metrics and predictions, TensorBoard) and a
per-task / per-cluster report (instruct_jax.reports).

Rank classification goes through seqio's score path: a task whose
preprocessors end in one row per option (instruct_jax.data.templates.
rank_classification_rows) and whose metric takes `scores`
(instruct_jax.metrics.rank_classification_accuracy) gets every option scored
and the most likely one picked. `register_rank_classification_task` turns any
task with an "options" feature into such a task.

Multi-host: every process iterates the same (small) eval data and feeds the
same global batches; outputs come back replicated, and only process 0 computes
metrics and writes files.
"""

import importlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

from absl import logging
import flax.linen as nn
import jax
import numpy as np
import seqio
import tensorflow as tf

from instruct_jax import decoding
from instruct_jax import metrics as metrics_lib
from instruct_jax import reports
from instruct_jax.data import pipeline
from instruct_jax.data import templates
from instruct_jax.train import checkpoints
from instruct_jax.train import partitioning

Progress = Callable[[int], None]
EVAL_SUBDIR = "inference_eval"


# ---------------------------------------------------------------------------
# Batched, sharded model functions.
# ---------------------------------------------------------------------------


def _host_value(x: jax.Array) -> np.ndarray:
  """A replicated global array as numpy on every process."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(x.addressable_shards[0].data)


def trim_at_eos(tokens: np.ndarray, eos_id: int) -> list[int]:
  """Tokens up to and including the first EOS (all non-padding tokens if none)."""
  tokens = [int(t) for t in tokens]
  if eos_id in tokens:
    return tokens[:tokens.index(eos_id) + 1]
  while tokens and tokens[-1] == 0:
    tokens.pop()
  return tokens


class ModelRunner:
  """Runs a model's predict / score over tf.data datasets in fixed-size sharded batches.

  Datasets hold (index, features) elements, as seqio.Evaluator's enumerated
  model datasets do; results come back as (index, output) pairs. The last
  batch is padded with all-zero rows (dropped from the results), so one
  compiled program serves every batch of a given feature length. batch_size is
  global and must be a multiple of the data-parallel size.
  """

  def __init__(self, model: Any, partitioner: partitioning.Partitioner, param_shardings: Any,
               batch_size: int, decode_cfg: Optional[decoding.DecodeConfig] = None,
               seed: int = 0):
    data_parallel = partitioner.data_parallel_size
    if batch_size < 1 or batch_size % data_parallel:
      suggestion = max(data_parallel, batch_size // data_parallel * data_parallel)
      raise ValueError(f"Eval batch size {batch_size} must be a positive multiple of the "
                       f"data-parallel size {data_parallel} (rows are split over it); "
                       f"use e.g. {suggestion}.")
    self.model = model
    self.partitioner = partitioner
    self.batch_size = batch_size
    self.decode_cfg = decode_cfg or decoding.DecodeConfig()
    self._rng = jax.random.PRNGKey(seed)
    batch_sharding = partitioner.batch_sharding
    replicated = partitioner.replicated
    self._predict = jax.jit(
        lambda params, batch, rng: model.predict_batch(params, batch, self.decode_cfg, rng),
        in_shardings=(param_shardings, batch_sharding, replicated),
        out_shardings=(replicated, replicated))
    self._score = jax.jit(model.score_batch, in_shardings=(param_shardings, batch_sharding),
                          out_shardings=replicated)

  def _global_batches(self, dataset: tf.data.Dataset):
    """(indices, number of real rows, global batch dict) for each padded batch."""
    for indices, features in dataset.batch(self.batch_size).as_numpy_iterator():
      real = len(indices)
      batch = {}
      for name, value in features.items():
        value = np.asarray(value)
        if value.ndim != 2 or not np.issubdtype(value.dtype, np.integer):
          continue  # Only [rows, length] token features reach the model.
        padded = np.zeros((self.batch_size,) + value.shape[1:], np.int32)
        padded[:real] = value
        batch[name] = jax.make_array_from_callback(
            padded.shape, self.partitioner.batch_sharding,
            lambda index, padded=padded: padded[index])
      yield indices, real, batch

  def predict(self, params: Any, dataset: tf.data.Dataset,
              progress: Optional[Progress] = None) -> list[tuple[int, np.ndarray, float]]:
    """(index, output token ids [max_decode_length], decode score) for every example.

    Token rows keep their full width (0 after EOS), as seqio expects; see
    trim_at_eos.
    """
    results = []
    with self.partitioner.activation_context():
      for number, (indices, real, batch) in enumerate(self._global_batches(dataset)):
        tokens, scores = self._predict(params, batch, jax.random.fold_in(self._rng, number))
        tokens, scores = _host_value(tokens), _host_value(scores)
        results.extend((int(indices[row]), tokens[row], float(scores[row]))
                       for row in range(real))
        if progress is not None:
          progress(len(results))
    return results

  def score(self, params: Any, dataset: tf.data.Dataset,
            progress: Optional[Progress] = None) -> list[tuple[int, float]]:
    """(index, sum of target log-likelihoods) for every example."""
    results = []
    with self.partitioner.activation_context():
      for indices, real, batch in self._global_batches(dataset):
        scores = _host_value(self._score(params, batch))
        results.extend((int(indices[row]), float(scores[row])) for row in range(real))
        if progress is not None:
          progress(len(results))
    return results

  def seqio_fns(self, params: Any) -> dict[str, Callable[..., Any]]:
    """predict_fn / score_fn keyword arguments for seqio.Evaluator.evaluate."""

    def predict_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      return [(index, tokens) for index, tokens, _ in self.predict(params, dataset)]

    def score_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      return self.score(params, dataset)

    return {"predict_fn": predict_fn, "score_fn": score_fn}


def abstract_params_and_shardings(model: Any, partitioner: partitioning.Partitioner,
                                  input_shapes: Optional[Mapping[str, tuple]] = None):
  """(abstract params with .sharding, param shardings) laid out as in training.

  Parameter shapes do not depend on sequence lengths, so small placeholder
  shapes are used when none are given.
  """
  if input_shapes is None:
    rows = partitioner.data_parallel_size
    lengths = model.feature_converter(pack=False).get_model_feature_lengths(
        {"inputs": 8, "targets": 8})
    input_shapes = {name: (rows, length) for name, length in lengths.items()}
  with partitioner.activation_context():
    boxed = jax.eval_shape(lambda rng: model.init_params(rng, input_shapes),
                           jax.random.PRNGKey(0))
  shardings = partitioner.param_shardings(boxed)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  return abstract, shardings


# ---------------------------------------------------------------------------
# seqio.Evaluator runs.
# ---------------------------------------------------------------------------


def _as_float(value: Any) -> Optional[float]:
  value = getattr(value, "value", value)  # seqio.metrics.Scalar
  try:
    return float(np.asarray(value))
  except (TypeError, ValueError):
    return None


def _scalar_metrics(all_metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
  result = {}
  for task, task_metrics in sorted(all_metrics.items()):
    result[task] = {name: v for name, v in ((n, _as_float(x)) for n, x in task_metrics.items())
                    if v is not None}
  return result


def make_evaluator(model: Any, mixture_or_task_name: str, split: str,
                   task_feature_lengths: Optional[Mapping[str, int]], log_dir: Optional[str],
                   use_cached: bool = False, seed: Optional[int] = 42,
                   num_examples: Optional[int] = None) -> seqio.Evaluator:
  """seqio.Evaluator over every task of the mixture; loggers on process 0 only."""
  pipeline.get_task_or_mixture(mixture_or_task_name)  # Helpful error on typos.
  logger_cls = ()
  if log_dir and jax.process_index() == 0:
    logger_cls = (seqio.JSONLogger, seqio.TensorBoardLogger)
    tf.io.gfile.makedirs(log_dir)
  return seqio.Evaluator(
      mixture_or_task_name=mixture_or_task_name,
      feature_converter=model.feature_converter(pack=False),
      eval_split=split, use_cached=use_cached, seed=seed,
      sequence_length=dict(task_feature_lengths) if task_feature_lengths else None,
      num_examples=num_examples, shuffle=False, logger_cls=logger_cls,
      log_dir=log_dir if logger_cls else None,
      # Metrics run in this thread: the model may share the accelerator with them.
      async_compute_metrics=False)


def run_evaluator(evaluator: seqio.Evaluator, runner: ModelRunner, params: Any,
                  step: int) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} (empty on processes other than 0)."""
  if not evaluator.eval_tasks:
    logging.warning("No task of the evaluation mixture has metrics for this split; "
                    "nothing was evaluated.")
    return {}
  start = time.time()
  future, _ = evaluator.evaluate(compute_metrics=jax.process_index() == 0, step=step,
                                 **runner.seqio_fns(params))
  all_metrics = future.result() or {}
  logging.info("Evaluated %d task(s) in %.1fs.", len(evaluator.eval_tasks), time.time() - start)
  return _scalar_metrics(all_metrics)


def write_results(output_dir: str, step: int, task_metrics: Mapping[str, Mapping[str, float]],
                  cluster_of: Optional[Callable[[str], str]] = None,
                  extra: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
  """metrics_step_<step>.json plus the report files; process 0 only. Returns the paths."""
  if jax.process_index() != 0:
    return {}
  tf.io.gfile.makedirs(output_dir)
  metrics_path = os.path.join(output_dir, f"metrics_step_{step}.json")
  with tf.io.gfile.GFile(metrics_path, "w") as f:
    json.dump({"step": step, **(extra or {}), "tasks": task_metrics}, f, indent=2,
              sort_keys=True)
  paths = reports.write_report(output_dir, task_metrics, step=step, cluster_of=cluster_of)
  return {"metrics": metrics_path, **paths}


def step_of_checkpoint(checkpoint_path: str) -> int:
  """Training step of a checkpoint, from its checkpoint_<step> directory name (0 if none)."""
  try:
    _, location = checkpoints.detect_checkpoint_format(checkpoint_path)
  except (FileNotFoundError, ValueError):
    location = checkpoint_path
  found = re.findall(r"checkpoint_(\d+)", str(location))
  return int(found[-1]) if found else 0


def model_dir_of_checkpoint(checkpoint_path: str) -> str:
  path = checkpoint_path.rstrip("/")
  if re.fullmatch(r"checkpoint_\d+", os.path.basename(path)):
    return os.path.dirname(path)
  return path


def evaluate(*,
             model: Any,
             dataset_cfg: pipeline.DatasetConfig,
             checkpoint_path: str,
             partitioner: partitioning.Partitioner,
             output_dir: Optional[str] = None,
             decode_cfg: Optional[decoding.DecodeConfig] = None,
             num_examples: Optional[int] = None,
             cluster_of: Optional[Callable[[str], str]] = None,
             seed: int = 0) -> dict[str, dict[str, float]]:
  """The `instruct-jax eval` entry point: every task of a mixture, on one checkpoint.

  Loads the params of `checkpoint_path` (any format checkpoints.load_params
  reads) laid out on the partitioner's mesh, runs seqio.Evaluator with the
  tasks' own metrics and postprocessors, and writes under
  `output_dir`/inference_eval (default: the checkpoint's MODEL_DIR):
    <task>-metrics.jsonl, <task>-<step>.jsonl   seqio's metrics and predictions
    <task>/events.*                              TensorBoard
    metrics_step_<step>.json                     every task's metrics
    report_step_<step>.{md,json,png}             per-task / per-cluster report
  `dataset_cfg`: mixture_or_task_name, split, batch_size (global),
  task_feature_lengths (None: the longest example of each feature),
  use_cached, seed, module. Returns {task: {metric: value}}.
  """
  if dataset_cfg.module:
    importlib.import_module(dataset_cfg.module)
  output_dir = os.path.join(output_dir or model_dir_of_checkpoint(checkpoint_path),
                            EVAL_SUBDIR)
  abstract_params, shardings = abstract_params_and_shardings(model, partitioner)
  params = checkpoints.load_params(checkpoint_path, abstract_params)
  step = step_of_checkpoint(checkpoint_path)
  evaluator = make_evaluator(model, dataset_cfg.mixture_or_task_name, dataset_cfg.split,
                             dataset_cfg.task_feature_lengths, output_dir,
                             use_cached=dataset_cfg.use_cached, seed=dataset_cfg.seed,
                             num_examples=num_examples)
  runner = ModelRunner(model, partitioner, shardings, dataset_cfg.batch_size, decode_cfg, seed)
  task_metrics = run_evaluator(evaluator, runner, params, step)
  paths = write_results(output_dir, step, task_metrics, cluster_of,
                        extra={"checkpoint": checkpoint_path,
                               "mixture_or_task_name": dataset_cfg.mixture_or_task_name,
                               "split": dataset_cfg.split})
  if paths:
    with tf.io.gfile.GFile(paths["markdown"]) as f:
      print(f.read(), flush=True)
    print("Wrote " + ", ".join(paths.values()), flush=True)
  return task_metrics


class InferEval:
  """Decoding / scoring evaluation during training: trainer.train's `infer_eval_fn`.

  Called as infer_eval(trainer, params, step) every EVAL_PERIOD steps; returns
  {"inference_eval/<task>/<metric>": value} scalars for the trainer to log and
  writes the same files as `evaluate` under model_dir/inference_eval. The
  seqio.Evaluator (and its cached eval data) is built on the first call.
  """

  def __init__(self, mixture_or_task_name: str,
               task_feature_lengths: Optional[Mapping[str, int]] = None,
               batch_size: int = 32, split: str = "validation",
               decode_cfg: Optional[decoding.DecodeConfig] = None,
               model_dir: Optional[str] = None, num_examples: Optional[int] = None,
               use_cached: bool = False, module: Optional[str] = None, seed: int = 0,
               cluster_of: Optional[Callable[[str], str]] = None):
    self.mixture_or_task_name = mixture_or_task_name
    self.task_feature_lengths = task_feature_lengths
    self.batch_size = batch_size
    self.split = split
    self.decode_cfg = decode_cfg
    self.output_dir = os.path.join(model_dir, EVAL_SUBDIR) if model_dir else None
    self.num_examples = num_examples
    self.use_cached = use_cached
    self.module = module
    self.seed = seed
    self.cluster_of = cluster_of
    self._evaluator = None
    self._runner = None

  def _build(self, trainer: Any) -> None:
    if self.module:
      importlib.import_module(self.module)
    self._evaluator = make_evaluator(trainer.model, self.mixture_or_task_name, self.split,
                                     self.task_feature_lengths, self.output_dir,
                                     use_cached=self.use_cached,
                                     num_examples=self.num_examples)
    self._runner = ModelRunner(trainer.model, trainer.partitioner,
                               trainer.state_shardings.params, self.batch_size,
                               self.decode_cfg, self.seed)

  def __call__(self, trainer: Any, params: Any, step: int) -> dict[str, float]:
    if self._evaluator is None:
      self._build(trainer)
    task_metrics = run_evaluator(self._evaluator, self._runner, params, step)
    if self.output_dir:
      write_results(self.output_dir, step, task_metrics, self.cluster_of)
    return {f"{EVAL_SUBDIR}/{task}/{name}": value
            for task, values in task_metrics.items() for name, value in values.items()}


# ---------------------------------------------------------------------------
# Rank-classification variants of option tasks.
# ---------------------------------------------------------------------------


def register_rank_classification_task(task_name: str, new_name: Optional[str] = None) -> str:
  """Registers a score-based copy of a seqio task whose examples carry "options".

  The copy expands every example into one row per option before tokenization
  (templates.rank_classification_rows), scores each row with the model and
  reports rank_classification_accuracy: the share of examples whose most
  likely option is a correct answer ("answers" when present, else "targets").
  Returns the new name (default: task_name + "_rank").
  """
  task = seqio.get_mixture_or_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{task_name!r} is a Mixture; register a rank-classification copy of "
                     "each of its tasks instead.")
  preprocessors = list(task.preprocessors)
  tokenize_at = next((i for i, p in enumerate(preprocessors)
                      if getattr(p, "func", p) in (seqio.preprocessors.tokenize,
                                                   seqio.preprocessors.tokenize_and_append_eos)),
                     None)
  if tokenize_at is None:
    raise ValueError(f"Task {task_name!r} has no seqio.preprocessors.tokenize step; the "
                     "option rows must be made from text before tokenization.")
  preprocessors.insert(tokenize_at, templates.rank_classification_rows)
  new_name = new_name or f"{task_name}_rank"
  seqio.TaskRegistry.remove(new_name)
  seqio.TaskRegistry.add(
      new_name, source=task.source, output_features=task.output_features,
      preprocessors=preprocessors,
      postprocess_fn=metrics_lib.rank_classification_postprocessor,
      metric_fns=[metrics_lib.rank_classification_accuracy])
  return new_name


# ---------------------------------------------------------------------------
# `instruct-jax eval` (command module protocol of instruct_jax.cli).
# ---------------------------------------------------------------------------


def add_arguments(parser) -> None:
  del parser  # Everything is configured through gin (runs/eval.gin).


def run(args) -> None:
  """Runs the gin-configured `evaluation.evaluate` (it prints the report tables)."""
  from instruct_jax.errors import UsageError  # pylint: disable=g-import-not-at-top
  if not args.gin_file:
    raise UsageError("eval needs gin files: a model gin and runs/eval.gin, e.g. "
                     "--gin_file=models/t5_1_1/base.gin --gin_file=runs/eval.gin "
                     "--gin.CHECKPOINT_PATH=\"'/path/checkpoint_1000'\" "
                     "--gin.MIXTURE_OR_TASK_NAME=\"'my_task'\".")
  from instruct_jax import cli  # pylint: disable=g-import-not-at-top
  evaluate_fn = cli.configured(evaluate, "No gin file binds `evaluation.evaluate`; add "
                               "--gin_file=runs/eval.gin.")
  try:
    evaluate_fn()
  except FileNotFoundError as e:
    raise UsageError(f"{e} Set --gin.CHECKPOINT_PATH to a MODEL_DIR or a checkpoint_<step> "
                     "directory.") from e
