"""One evaluation session: the sequence every evaluation client shares.

    session = EvalSession(model, partitioner, batch_size, decode_cfg, seed)
    step = session.load(checkpoint_path)            # or evaluate(..., params=, step=)
    task_metrics = session.evaluate(mixture, split, task_feature_lengths, log_dir=...)
    written = session.write_results(output_dir, task_metrics, step)
    print_written(written)

`eval`, `symbol-eval`, `select`, `infer` (params + runner only) and the
training hook (InferEval) all go through it, so the parameter layout, the
batching, the seqio.Evaluator settings and the seeds cannot drift between
them. One seed drives the decoding rng and, unless a client's dataset config
carries its own, the seqio.Evaluator's data seed.

Multi-host: every process runs the same batches; only process 0 computes
metrics and writes files.
"""
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

from absl import logging
import jax
import numpy as np
import seqio
import tensorflow as tf

from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import params_io
from instruct_jax.data import pipeline
from instruct_jax.data import templates
from instruct_jax.errors import UsageError
from instruct_jax.eval import runner as runner_lib
from instruct_jax.eval.reports import evaluation as reports
from instruct_jax.models import decoding
from instruct_jax.train import partitioning
from instruct_jax.train import state as state_lib

TaskMetrics = dict[str, dict[str, float]]  # task -> metric -> value


@dataclasses.dataclass(frozen=True)
class Written:
  """What write_results wrote: the rendered markdown (to print) and the paths by kind."""
  markdown: str
  paths: dict[str, str]


def check_metrics(mixture_or_task_name: str, tasks: list[seqio.Task], split: str) -> None:
  """Says which tasks would be skipped for lack of metric functions, rather than report nothing.

  seqio.Evaluator silently leaves such tasks out. All of them without metrics:
  UsageError (the evaluation would be empty); some: one warning line on the
  console naming them (process 0).
  """
  evaluated = [task for task in tasks if split in task.splits]
  silent = [task.name for task in evaluated if not task.metric_fns and not task.metric_objs]
  if not silent:
    return
  fix = ("Give a task metric functions to score it, e.g. seqio.TaskRegistry.add(..., "
         "metric_fns=[instruct_jax.eval.metrics.accuracy]).")
  if len(silent) == len(evaluated):
    raise UsageError(
        f"Nothing to evaluate in {mixture_or_task_name!r}: its task(s) with a {split!r} "
        f"split have no metric functions ({', '.join(silent)}). {fix}")
  if jax.process_index() == 0:
    print(f"Warning: {len(silent)} task(s) of {mixture_or_task_name!r} have no metric "
          f"functions and are not evaluated: {', '.join(silent)}.", file=sys.stderr,
          flush=True)


def make_evaluator(model: Any, mixture_or_task_name: str, split: str,
                   task_feature_lengths: Optional[Mapping[str, int]], log_dir: Optional[str],
                   use_cached: bool, seed: Optional[int],
                   num_examples: Optional[int] = None) -> seqio.Evaluator:
  """seqio.Evaluator over every task of the mixture; loggers on process 0 only."""
  logger_cls = ()
  if log_dir and jax.process_index() == 0:
    logger_cls = (seqio.JSONLogger, seqio.TensorBoardLogger)
    tf.io.gfile.makedirs(log_dir)
  # seqio caps the rows a task yields; a rank-classification example is one row per
  # option, so its cap must count examples before the expansion (the datasets are built
  # when the Evaluator is constructed, inside the limit).
  tasks = seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))
  check_metrics(mixture_or_task_name, tasks, split)
  ranked = any(templates.rank_classification_rows in task.preprocessors for task in tasks)
  with templates.rank_classification_example_limit(num_examples if ranked else None):
    return seqio.Evaluator(
        mixture_or_task_name=mixture_or_task_name,
        feature_converter=model.feature_converter(pack=False),
        eval_split=split, use_cached=use_cached, seed=seed,
        sequence_length=dict(task_feature_lengths) if task_feature_lengths else None,
        num_examples=None if ranked else num_examples, shuffle=False, logger_cls=logger_cls,
        log_dir=log_dir if logger_cls else None,
        # Metrics run in this thread: the model may share the accelerator with them.
        async_compute_metrics=False)


def _as_float(value: Any) -> Optional[float]:
  value = getattr(value, "value", value)  # seqio.metrics.Scalar
  try:
    return float(np.asarray(value))
  except (TypeError, ValueError):
    return None


def _scalar_metrics(all_metrics: Mapping[str, Mapping[str, Any]]) -> TaskMetrics:
  result = {}
  for task, task_metrics in sorted(all_metrics.items()):
    result[task] = {name: v for name, v in ((n, _as_float(x)) for n, x in task_metrics.items())
                    if v is not None}
  return result


class EvalSession:
  """A model laid out on a mesh, its params, one ModelRunner and cached seqio.Evaluators.

  The abstract params and shardings are built once (train.state.abstract_params,
  the trainer's layout); `load` reads a checkpoint onto them, or a client
  passes params it already holds (the training hook). An Evaluator (and its
  cached eval data) is built on the first `evaluate` of a given configuration
  and reused for every later checkpoint or step.
  """

  def __init__(self, model: Any, partitioner: partitioning.Partitioner, batch_size: int,
               decode_cfg: Optional[decoding.DecodeConfig] = None, seed: int = 0):
    self.model = model
    self.partitioner = partitioner
    self.seed = seed
    self.abstract_params, self.param_shardings, _ = state_lib.abstract_params(
        model, partitioner)
    self.runner = runner_lib.ModelRunner(model, partitioner, self.param_shardings, batch_size,
                                         decode_cfg, seed)
    self.params: Any = None
    self.step: Optional[int] = None
    self._evaluators: dict[tuple, tuple[Any, seqio.Evaluator]] = {}

  def load(self, checkpoint_path: str) -> int:
    """Loads the params of a checkpoint (any format params_io reads); returns its step.

    The step comes from the checkpoint_<step> directory actually read (a
    MODEL_DIR resolves to its newest checkpoint); 0 when the path names none.
    """
    self.params = None  # Free the previous checkpoint's params before reading the next.
    try:
      _, location = params_io.detect_checkpoint_format(checkpoint_path)
    except (FileNotFoundError, ValueError):
      location = checkpoint_path  # load_params raises the helpful error.
    self.params = params_io.load_params(checkpoint_path, self.abstract_params)
    self.step = layout.step_of_checkpoint(str(location)) or 0
    return self.step

  def evaluator(self, mixture_or_task_name: str, split: str,
                task_feature_lengths: Optional[Mapping[str, int]] = None, *,
                log_dir: Optional[str] = None, num_examples: Optional[int] = None,
                use_cached: bool = False, seed: Optional[int] = None) -> seqio.Evaluator:
    """The (cached) seqio.Evaluator of one configuration; seed None: the session's seed.

    The key holds the registered Task / Mixture object itself, so registering a
    name again (a new task under an old name) builds a new evaluator.
    """
    seed = self.seed if seed is None else seed
    registered = pipeline.get_task_or_mixture(mixture_or_task_name)  # Helpful error on typos.
    key = (id(registered), mixture_or_task_name, split,
           tuple(sorted(task_feature_lengths.items())) if task_feature_lengths else None,
           log_dir, num_examples, use_cached, seed)
    if key not in self._evaluators:
      # Kept with its registered object, so that object's id is not reused while cached.
      self._evaluators[key] = (registered, make_evaluator(
          self.model, mixture_or_task_name, split, task_feature_lengths, log_dir,
          use_cached=use_cached, seed=seed, num_examples=num_examples))
    return self._evaluators[key][1]

  def evaluate(self, mixture_or_task_name: str, split: str,
               task_feature_lengths: Optional[Mapping[str, int]] = None, *,
               log_dir: Optional[str] = None, num_examples: Optional[int] = None,
               use_cached: bool = False, seed: Optional[int] = None,
               params: Any = None, step: Optional[int] = None) -> TaskMetrics:
    """{task: {metric: value}} of every task of the mixture (empty on processes other than 0).

    Decodes / scores with `params` at `step` (default: what `load` read).
    `task_feature_lengths` None: each task's longest example. `log_dir`: where
    seqio writes its metrics, predictions and TensorBoard files (None: nowhere).
    """
    params = self.params if params is None else params
    step = self.step if step is None else step
    if params is None:
      raise ValueError("EvalSession.evaluate needs params: call load(checkpoint_path) first "
                       "or pass params=.")
    evaluator = self.evaluator(mixture_or_task_name, split, task_feature_lengths,
                               log_dir=log_dir, num_examples=num_examples,
                               use_cached=use_cached, seed=seed)
    if not evaluator.eval_tasks:
      logging.warning("No task of %s has metrics for split %r; nothing was evaluated.",
                      mixture_or_task_name, split)
      return {}
    start = time.time()
    future, _ = evaluator.evaluate(compute_metrics=jax.process_index() == 0, step=step,
                                   **self.runner.seqio_fns(params))
    all_metrics = future.result() or {}
    logging.info("Evaluated %d task(s) in %.1fs.", len(evaluator.eval_tasks),
                 time.time() - start)
    return _scalar_metrics(all_metrics)

  def write_results(self, output_dir: str, task_metrics: Mapping[str, Mapping[str, float]],
                    step: Optional[int] = None,
                    cluster_of: Optional[Callable[[str], str]] = None,
                    extra: Optional[Mapping[str, Any]] = None) -> Written:
    """metrics_step_<step>.json and report_step_<step>.{md,json,png}; process 0 only.

    The report is rendered once and returned with the paths, for the caller to
    print. Other processes write nothing and get an empty Written.
    """
    step = self.step if step is None else step
    if jax.process_index() != 0:
      return Written("", {})
    tf.io.gfile.makedirs(output_dir)
    metrics_path = os.path.join(output_dir, layout.metrics_file_name(step))
    with tf.io.gfile.GFile(metrics_path, "w") as f:
      json.dump({"step": step, **(extra or {}), "tasks": task_metrics}, f, indent=2,
                sort_keys=True)
    report = reports.render_report(task_metrics, step=step, cluster_of=cluster_of)
    return Written(report.markdown, {"metrics": metrics_path, **report.write(output_dir)})


def print_written(written: Written) -> None:
  """What every evaluation command shows: the rendered report, then the files written."""
  if not written.paths:
    return  # Processes other than 0 write (and show) nothing.
  print(written.markdown, flush=True)
  print("Wrote " + ", ".join(written.paths.values()), flush=True)
