"""`instruct-jax symbol-eval`: the symbol-tuning evaluation suites on one checkpoint.

    instruct-jax symbol-eval --gin_file=models/flan_t5/base.gin \
      --gin_file=experiments/symbol_tuning/eval.gin \
      --gin.CHECKPOINT_PATH="'gs://bucket/symbol_tuned/checkpoint_2000'" \
      --gin.BIGBENCH_DIR="'/data/BIG-bench'"

Runs every EvalRun of a SuiteLayout (tasks_registry.symbol_tuning.
evaluation_suites: unseen in-context classification under four prompt
settings, flipped labels, and — given a BIG-bench checkout — list_functions
and simp_turing_concept) with one set of loaded parameters, then writes under
OUTPUT_DIR (default: the checkpoint's MODEL_DIR)/inference_eval:
  metrics_step_<step>.json, report_step_<step>.*     every task (instruct_jax.evaluation)
  symbol_report_step_<step>.{md,json,png}             the settings side by side
                                                      (instruct_jax.symbol_report)
plus seqio's per-task metrics / predictions files. Rank classification and
decoding go through instruct_jax.evaluation (seqio.Evaluator score / predict).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import tensorflow as tf

from instruct_jax import decoding
from instruct_jax import evaluation
from instruct_jax import symbol_report
from instruct_jax.train import checkpoints
from instruct_jax.train import partitioning


def evaluate_suites(*,
                    model: Any,
                    checkpoint_path: str,
                    partitioner: partitioning.Partitioner,
                    suites: symbol_report.SuiteLayout,
                    batch_size: int = 32,
                    task_feature_lengths: Optional[dict[str, int]] = None,
                    output_dir: Optional[str] = None,
                    decode_cfg: Optional[decoding.DecodeConfig] = None,
                    num_examples: Optional[int] = None,
                    use_cached: bool = False,
                    seed: int = 0,
                    title: str = symbol_report.DEFAULT_TITLE) -> dict[str, Any]:
  """Evaluates `checkpoint_path` on every run of `suites`; returns the report data.

  `task_feature_lengths` None: each task's longest example (one compilation
  per task); fixed lengths compile once and bound the in-context prompts'
  token budget (inputs length - 1). `num_examples` caps each task.
  """
  step = evaluation.step_of_checkpoint(checkpoint_path)
  output_dir = os.path.join(output_dir or evaluation.model_dir_of_checkpoint(checkpoint_path),
                            evaluation.EVAL_SUBDIR)
  abstract_params, shardings = evaluation.abstract_params_and_shardings(model, partitioner)
  params = checkpoints.load_params(checkpoint_path, abstract_params)
  runner = evaluation.ModelRunner(model, partitioner, shardings, batch_size, decode_cfg, seed)
  task_metrics = {}
  for run_cfg in suites.runs:
    evaluator = evaluation.make_evaluator(
        model, run_cfg.mixture_or_task_name, run_cfg.split, task_feature_lengths, output_dir,
        use_cached=use_cached, num_examples=num_examples)
    task_metrics.update(evaluation.run_evaluator(evaluator, runner, params, step))
  report = symbol_report.build_report(task_metrics, suites, step, checkpoint_path)
  if jax.process_index() == 0:
    paths = evaluation.write_results(
        output_dir, step, task_metrics, suites.cluster_of,
        extra={"checkpoint": checkpoint_path,
               "runs": [f"{r.mixture_or_task_name}:{r.split}" for r in suites.runs]})
    paths.update({f"symbol_{k}": v for k, v in
                  symbol_report.write_report(output_dir, report, title).items()})
    with tf.io.gfile.GFile(paths["symbol_markdown"]) as f:
      print(f.read(), flush=True)
    print("Wrote " + ", ".join(paths.values()), flush=True)
    report["paths"] = paths
  return report


# ---------------------------------------------------------------------------
# `instruct-jax symbol-eval` (command module protocol of instruct_jax.cli).
# ---------------------------------------------------------------------------


def add_arguments(parser) -> None:
  del parser  # Everything is configured through gin (experiments/symbol_tuning/eval.gin).


def run(args) -> None:
  """Runs the gin-configured `symbol_eval.evaluate_suites` (it prints the report)."""
  from instruct_jax.errors import UsageError  # pylint: disable=g-import-not-at-top
  if not args.gin_file:
    raise UsageError("symbol-eval needs gin files: a model gin and "
                     "experiments/symbol_tuning/eval.gin, e.g. "
                     "--gin_file=models/flan_t5/base.gin "
                     "--gin_file=experiments/symbol_tuning/eval.gin "
                     "--gin.CHECKPOINT_PATH=\"'/path/checkpoint_2000'\".")
  from instruct_jax import cli  # pylint: disable=g-import-not-at-top
  evaluate_fn = cli.configured(evaluate_suites, "No gin file binds `symbol_eval.evaluate_suites`; add "
                     "--gin_file=experiments/symbol_tuning/eval.gin.")
  try:
    evaluate_fn()
  except FileNotFoundError as e:
    raise UsageError(f"{e} Set --gin.CHECKPOINT_PATH to a MODEL_DIR or a checkpoint_<step> "
                     "directory, and --gin.BIGBENCH_DIR to a BIG-bench checkout (or None).") from e
