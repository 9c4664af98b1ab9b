"""Checkpoint selection on held-out tasks: the `instruct-jax select` command.

    instruct-jax select --model_dir=/runs/cot_distill --mixture=cot_heldout_math_eval

evaluates EVERY finished checkpoint_<step> of the run on every task of the
mixture (decoding + the tasks' own postprocessors and metrics, through
one instruct_jax.eval.session.EvalSession), averages each checkpoint's primary task scores
(reports.primary_metric, e.g. "accuracy") and picks the best checkpoint. The
CoT recipe selects on held-out math sets (MultiArith, ASDiv, SVAMP) rather than
on the tuning data's validation split, because in-distribution loss keeps
improving while out-of-distribution reasoning peaks and then degrades.

Outputs, in --output_dir (default MODEL_DIR/selection/):
  selection.json   per step: every task's metrics and the mean; the chosen step
  selection.md     the same as a table, the chosen row marked
  selection.png    score over steps, one line per task and the mean in bold
  plus seqio's per-task metrics and prediction logs of every step.
The chosen checkpoint's path is printed last.

The command is configured through gin (runs/select.gin, its flags are
shortcuts for that file's macros); the model comes from the --gin_file model
gin(s) when given, else the run's own MODEL_DIR/config.gin.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import params_io
from instruct_jax.data import pipeline
from instruct_jax.errors import UsageError
from instruct_jax.eval import session as session_lib
from instruct_jax.eval.reports import evaluation as reports
from instruct_jax.eval.reports import selection as selection_report
from instruct_jax.models import decoding
from instruct_jax.train import partitioning

DEFAULT_MIXTURE = "cot_heldout_math_eval"
SELECTION_SUBDIR = "selection"


@dataclasses.dataclass(frozen=True)
class Selection:
  """The outcome: the best step, its checkpoint, every step's scores and the report."""
  best_step: int
  best_checkpoint: str
  mean_scores: dict[int, float]                  # step -> mean primary score over tasks
  task_metrics: dict[int, dict[str, dict[str, float]]]  # step -> task -> metric -> value
  paths: dict[str, str]
  markdown: str = ""                             # the rendered selection table


def checkpoint_steps(model_dir: str) -> list[tuple[int, str]]:
  """(step, path) of every readable checkpoint_<step> in `model_dir`, oldest first."""
  if not tf.io.gfile.isdir(model_dir):
    raise UsageError(f"--model_dir {model_dir!r} is not a directory; give the MODEL_DIR of a "
                     "training run (it holds checkpoint_<step> directories).")
  found = []
  for step, path in layout.checkpoint_dirs(model_dir):
    try:
      params_io.detect_checkpoint_format(path)
    except (FileNotFoundError, ValueError):
      logging.warning("Skipping %s: not a readable checkpoint.", path)
      continue
    found.append((step, path))
  if not found:
    raise UsageError(f"No finished checkpoint_<step> directory in {model_dir!r}; train first "
                     "or point --model_dir at the run directory.")
  return found


def mean_primary_score(task_metrics: Mapping[str, Mapping[str, float]]) -> Optional[float]:
  """Mean over tasks of each task's primary metric (None when no task has one)."""
  scores = [score for score in (reports.primary_metric(m) for m in task_metrics.values())
            if score is not None]
  return float(np.mean([value for _, value in scores])) if scores else None


def choose_step(mean_scores: Mapping[int, Optional[float]]) -> int:
  """The step with the highest mean score; ties go to the earliest (least tuned) step."""
  scored = {step: score for step, score in mean_scores.items() if score is not None}
  if not scored:
    raise UsageError("No checkpoint produced a score; does the mixture have metric "
                     "functions and examples in this split?")
  best = max(scored.values())
  return min(step for step, score in scored.items() if score == best)


def select_checkpoint(*, model: Any, model_dir: str, dataset_cfg: pipeline.DatasetConfig,
                      partitioner: partitioning.Partitioner,
                      decode_cfg: Optional[decoding.DecodeConfig] = None,
                      output_dir: Optional[str] = None, num_examples: Optional[int] = None,
                      steps: Optional[Sequence[int]] = None, seed: int = 0) -> Selection:
  """Evaluates each checkpoint of `model_dir` on `dataset_cfg`'s mixture and picks the best.

  Args:
    model: the trained model (EncoderDecoderModel or a subclass).
    model_dir: the training run's directory.
    dataset_cfg: mixture_or_task_name, split, batch_size (global),
      task_feature_lengths (None: the longest example of each feature), use_cached,
      seed (the evaluator's data seed), module.
    partitioner: mesh and parameter layout for evaluation.
    decode_cfg: decoding settings (default greedy up to the targets length).
    output_dir: where reports go (default MODEL_DIR/selection).
    num_examples: evaluate only the first N examples of each task.
    steps: restrict to these checkpoint steps.
    seed: decoding seed (sampling only).
  """
  if dataset_cfg.module:
    pipeline.import_registry_module(dataset_cfg.module)
  available = checkpoint_steps(model_dir)
  if steps:
    unknown = sorted(set(steps) - {s for s, _ in available})
    if unknown:
      raise UsageError(f"--steps {unknown} have no checkpoint in {model_dir}; available: "
                       f"{[s for s, _ in available]}.")
    available = [(s, p) for s, p in available if s in set(steps)]
  output_dir = output_dir or os.path.join(model_dir, SELECTION_SUBDIR)
  session = session_lib.EvalSession(model, partitioner, dataset_cfg.batch_size, decode_cfg,
                                    seed)
  task_metrics: dict[int, dict[str, dict[str, float]]] = {}
  for step, path in available:
    session.load(path)  # Reads onto the layout built once; frees the previous step's params.
    task_metrics[step] = session.evaluate(
        dataset_cfg.mixture_or_task_name, dataset_cfg.split, dataset_cfg.task_feature_lengths,
        log_dir=output_dir, num_examples=num_examples, use_cached=dataset_cfg.use_cached,
        seed=dataset_cfg.seed)
    logging.info("Step %d: mean score %s", step, mean_primary_score(task_metrics[step]))
  session.params = None
  mean_scores = {step: mean_primary_score(m) for step, m in task_metrics.items()}
  if jax.process_index() != 0:  # Metrics are computed on process 0 only.
    return Selection(-1, "", mean_scores, task_metrics, {})
  best = choose_step(mean_scores)
  best_path = dict(available)[best]
  report = selection_report.render_report(dataset_cfg.mixture_or_task_name, task_metrics,
                                          mean_scores, best, best_path)
  return Selection(best, best_path, mean_scores, task_metrics, report.write(output_dir),
                   report.markdown)
