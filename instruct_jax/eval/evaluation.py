"""The `instruct-jax eval` library function: every task of a mixture on one checkpoint.

Data flow: eval tasks -> seqio.Evaluator (caches each task's examples as model
features) -> ModelRunner.predict / score (instruct_jax.eval.runner) -> the
tasks' own postprocessors and metric functions -> seqio loggers (JSON lines of
metrics and predictions, TensorBoard) and a per-task / per-cluster report
(instruct_jax.eval.reports.evaluation), all through one EvalSession
(instruct_jax.eval.session).

Rank classification goes through seqio's score path: a task whose
preprocessors end in one row per option and whose metric takes `scores` gets
every option scored and the most likely one picked
(instruct_jax.data.rank_classification turns any option task into one).
"""
from collections.abc import Callable
from typing import Any, Optional

from instruct_jax.checkpoints import layout
from instruct_jax.data import pipeline
from instruct_jax.eval import session as session_lib
from instruct_jax.models import decoding
from instruct_jax.train import partitioning


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
  """Evaluates `checkpoint_path` on every task of a mixture; prints and writes the report.

  Loads the params of `checkpoint_path` (any format params_io.load_params
  reads) laid out on the partitioner's mesh, runs seqio.Evaluator with the
  tasks' own metrics and postprocessors, and writes under
  `output_dir`/inference_eval (default: the checkpoint's MODEL_DIR):
    <task>-metrics.jsonl, <task>-<step>.jsonl   seqio's metrics and predictions
    <task>/events.*                              TensorBoard
    metrics_step_<step>.json                     every task's metrics
    report_step_<step>.{md,json,png}             per-task / per-cluster report
  `dataset_cfg`: mixture_or_task_name, split, batch_size (global),
  task_feature_lengths (None: the longest example of each feature),
  use_cached, seed (the evaluator's data seed), module. `seed`: the decoding
  rng. Returns {task: {metric: value}}.
  """
  pipeline.provider_of(dataset_cfg)  # Imports the module; with use_cached, checks caches.
  output_dir = layout.eval_dir(output_dir or layout.model_dir_of_checkpoint(checkpoint_path))
  session = session_lib.EvalSession(model, partitioner, dataset_cfg.batch_size, decode_cfg,
                                    seed)
  step = session.load(checkpoint_path)
  task_metrics = session.evaluate(
      dataset_cfg.mixture_or_task_name, dataset_cfg.split, dataset_cfg.task_feature_lengths,
      log_dir=output_dir, num_examples=num_examples, use_cached=dataset_cfg.use_cached,
      seed=dataset_cfg.seed)
  written = session.write_results(
      output_dir, task_metrics, step, cluster_of,
      extra={"checkpoint": checkpoint_path,
             "mixture_or_task_name": dataset_cfg.mixture_or_task_name,
             "split": dataset_cfg.split})
  session_lib.print_written(written)
  return task_metrics
