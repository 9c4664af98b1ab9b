"""Checkpoint selection on held-out tasks: the `instruct-jax select` command.

    instruct-jax select --model_dir=/runs/cot_distill --mixture=cot_heldout_math_eval

evaluates EVERY finished checkpoint_<step> of the run on every task of the
mixture (decoding + the tasks' own postprocessors and metrics, through
instruct_jax.evaluation), averages each checkpoint's primary task scores
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

The model comes from gin: the --gin_file model gin(s) when given, else the run's
own MODEL_DIR/config.gin (written by `instruct-jax train`).
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import os
import re
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from instruct_jax import decoding
from instruct_jax import evaluation
from instruct_jax import reports
from instruct_jax.data import pipeline
from instruct_jax.errors import UsageError
from instruct_jax.train import checkpoints
from instruct_jax.train import partitioning

DEFAULT_MIXTURE = "cot_heldout_math_eval"
SELECTION_SUBDIR = "selection"
_STEP_DIR = re.compile(rf"^{checkpoints.STEP_PREFIX}_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Selection:
  """The outcome: the best step, its checkpoint and every step's scores."""
  best_step: int
  best_checkpoint: str
  mean_scores: dict[int, float]                  # step -> mean primary score over tasks
  task_metrics: dict[int, dict[str, dict[str, float]]]  # step -> task -> metric -> value
  paths: dict[str, str]


def checkpoint_steps(model_dir: str) -> list[tuple[int, str]]:
  """(step, path) of every finished checkpoint_<step> in `model_dir`, oldest first."""
  if not tf.io.gfile.isdir(model_dir):
    raise UsageError(f"--model_dir {model_dir!r} is not a directory; give the MODEL_DIR of a "
                     "training run (it holds checkpoint_<step> directories).")
  found = []
  for name in tf.io.gfile.listdir(model_dir):
    match = _STEP_DIR.match(name.rstrip("/"))
    if not match:
      continue  # Unfinished orbax saves carry a tmp suffix and do not match.
    path = os.path.join(model_dir, name.rstrip("/"))
    try:
      checkpoints.detect_checkpoint_format(path)
    except (FileNotFoundError, ValueError):
      logging.warning("Skipping %s: not a readable checkpoint.", path)
      continue
    found.append((int(match.group(1)), path))
  if not found:
    raise UsageError(f"No finished checkpoint_<step> directory in {model_dir!r}; train first "
                     "or point --model_dir at the run directory.")
  return sorted(found)


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
      task_feature_lengths (None: the longest example of each feature), module.
    partitioner: mesh and parameter layout for evaluation.
    decode_cfg: decoding settings (default greedy up to the targets length).
    output_dir: where reports go (default MODEL_DIR/selection).
    num_examples: evaluate only the first N examples of each task.
    steps: restrict to these checkpoint steps.
    seed: decoding seed (sampling only).
  """
  if dataset_cfg.module:
    importlib.import_module(dataset_cfg.module)
  available = checkpoint_steps(model_dir)
  if steps:
    unknown = sorted(set(steps) - {s for s, _ in available})
    if unknown:
      raise UsageError(f"--steps {unknown} have no checkpoint in {model_dir}; available: "
                       f"{[s for s, _ in available]}.")
    available = [(s, p) for s, p in available if s in set(steps)]
  output_dir = output_dir or os.path.join(model_dir, SELECTION_SUBDIR)
  abstract_params, shardings = evaluation.abstract_params_and_shardings(model, partitioner)
  evaluator = evaluation.make_evaluator(
      model, dataset_cfg.mixture_or_task_name, dataset_cfg.split,
      dataset_cfg.task_feature_lengths, output_dir, use_cached=dataset_cfg.use_cached,
      seed=dataset_cfg.seed, num_examples=num_examples)
  runner = evaluation.ModelRunner(model, partitioner, shardings, dataset_cfg.batch_size,
                                  decode_cfg, seed)
  task_metrics: dict[int, dict[str, dict[str, float]]] = {}
  for step, path in available:
    params = checkpoints.load_params(path, abstract_params)
    task_metrics[step] = evaluation.run_evaluator(evaluator, runner, params, step)
    logging.info("Step %d: mean score %s", step, mean_primary_score(task_metrics[step]))
    del params
  mean_scores = {step: mean_primary_score(m) for step, m in task_metrics.items()}
  paths: dict[str, str] = {}
  if jax.process_index() != 0:  # Metrics are computed on process 0 only.
    return Selection(-1, "", mean_scores, task_metrics, paths)
  best = choose_step(mean_scores)
  best_path = dict(available)[best]
  paths = write_selection(output_dir, dataset_cfg.mixture_or_task_name, task_metrics,
                          mean_scores, best, best_path)
  return Selection(best, best_path, mean_scores, task_metrics, paths)


# ---------------------------------------------------------------------------
# Reports.


def _primary(metrics: Mapping[str, float]) -> Optional[float]:
  found = reports.primary_metric(metrics)
  return None if found is None else found[1]


def render_markdown(mixture: str, task_metrics: Mapping[int, Mapping[str, Mapping[str, float]]],
                    mean_scores: Mapping[int, Optional[float]], best_step: int,
                    best_checkpoint: str) -> str:
  tasks = sorted({t for m in task_metrics.values() for t in m})
  lines = [f"# Checkpoint selection on {mixture}", "",
           f"Chosen: step {best_step} ({best_checkpoint}), mean score "
           f"{_fmt(mean_scores.get(best_step))}.", "",
           "| Step | Mean | " + " | ".join(tasks) + " |",
           "|---:|---:|" + "---:|" * len(tasks)]
  for step in sorted(task_metrics):
    marker = " **(chosen)**" if step == best_step else ""
    cells = [_fmt(_primary(task_metrics[step].get(t, {}))) for t in tasks]
    lines.append(f"| {step}{marker} | {_fmt(mean_scores.get(step))} | " + " | ".join(cells)
                 + " |")
  return "\n".join(lines) + "\n"


def _fmt(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.2f}"


def plot_selection(mixture: str, task_metrics: Mapping[int, Mapping[str, Mapping[str, float]]],
                   mean_scores: Mapping[int, Optional[float]], best_step: int) -> bytes:
  """PNG bytes: every task's primary score and the mean over training steps."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  steps = sorted(task_metrics)
  tasks = sorted({t for m in task_metrics.values() for t in m})
  figure = Figure(figsize=(7.0, 4.5), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot(1, 1, 1)
  for task in tasks:
    values = [_primary(task_metrics[s].get(task, {})) for s in steps]
    axes.plot(steps, [np.nan if v is None else v for v in values], marker="o", alpha=0.6,
              linewidth=1, label=task)
  means = [mean_scores.get(s) for s in steps]
  axes.plot(steps, [np.nan if v is None else v for v in means], color="black", linewidth=2.5,
            marker="s", label="mean")
  if mean_scores.get(best_step) is not None:
    axes.scatter([best_step], [mean_scores[best_step]], s=220, marker="*", color="#C44E52",
                 zorder=5, label=f"chosen (step {best_step})")
  axes.set_xlabel("training step")
  axes.set_ylabel("score (primary metric)")
  axes.set_title(f"Checkpoint selection on {mixture}")
  axes.legend(fontsize=7, loc="best")
  axes.grid(alpha=0.3)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  return buffer.getvalue()


def write_selection(output_dir: str, mixture: str,
                    task_metrics: Mapping[int, Mapping[str, Mapping[str, float]]],
                    mean_scores: Mapping[int, Optional[float]], best_step: int,
                    best_checkpoint: str) -> dict[str, str]:
  """Writes selection.{json,md,png} into output_dir; returns their paths by kind."""
  record = {
      "mixture_or_task_name": mixture,
      "best_step": best_step,
      "best_checkpoint": best_checkpoint,
      "steps": [{"step": step, "mean_score": mean_scores.get(step),
                 "tasks": task_metrics[step]} for step in sorted(task_metrics)],
  }
  return reports.write_files(
      output_dir, "selection",
      render_markdown(mixture, task_metrics, mean_scores, best_step, best_checkpoint), record,
      plot_selection(mixture, task_metrics, mean_scores, best_step))


# ---------------------------------------------------------------------------
# `instruct-jax select` (command module protocol of instruct_jax.cli).


def add_arguments(parser) -> None:
  parser.add_argument("--model_dir", required=True,
                      help="Training run directory holding checkpoint_<step> directories.")
  parser.add_argument("--mixture", default=DEFAULT_MIXTURE,
                      help="seqio task or mixture to select on (default: %(default)s).")
  parser.add_argument("--split", default="test", help="Split of its tasks (default: test).")
  parser.add_argument("--batch_size", type=int, default=32,
                      help="Global eval batch size, a multiple of the data-parallel size.")
  parser.add_argument("--inputs_length", type=int, default=1024,
                      help="Input length in tokens (few-shot prompts are built to fit 1024).")
  parser.add_argument("--targets_length", type=int, default=256,
                      help="Decoding length in tokens: room for the chain of thought.")
  parser.add_argument("--num_examples", type=int, default=None,
                      help="Evaluate only the first N examples of each task.")
  parser.add_argument("--steps", default=None,
                      help="Comma-separated checkpoint steps to consider (default: all).")
  parser.add_argument("--output_dir", default=None,
                      help="Where reports go (default: MODEL_DIR/selection).")
  parser.add_argument("--module", default="tasks_registry",
                      help="Module to import for task registrations (default: %(default)s).")
  parser.add_argument("--num_partitions", type=int, default=1,
                      help="Model-parallel partitions of the eval mesh.")


def configured_model(model: Any) -> Any:
  """Gin hands the run's %MODEL to `run` through this function's binding."""
  return model


def _model_from_gin(args) -> Any:
  import gin  # pylint: disable=g-import-not-at-top  # The CLI edge binds gin, not the library.
  if not args.gin_file:
    config = os.path.join(args.model_dir, "config.gin")
    if not tf.io.gfile.exists(config):
      raise UsageError(f"No --gin_file given and {config} does not exist; pass the model gin "
                       "the run was trained with, e.g. --gin_file=models/flan_t5/base.gin.")
    with gin.unlock_config():
      with tf.io.gfile.GFile(config) as f:
        gin.parse_config(f.read())
  with gin.unlock_config():
    gin.parse_config("from __gin__ import dynamic_registration\n"
                     "from instruct_jax import selection\n"
                     "selection.configured_model.model = %MODEL\n")
  try:
    return gin.get_configurable(configured_model)()
  except (ValueError, KeyError) as e:
    raise UsageError(f"The gin configuration defines no MODEL macro ({e}); include a model gin "
                     "such as --gin_file=models/t5_1_1/base.gin.") from e


def run(args) -> None:
  model = _model_from_gin(args)
  steps = [int(s) for s in args.steps.split(",") if s.strip()] if args.steps else None
  dataset_cfg = pipeline.DatasetConfig(
      mixture_or_task_name=args.mixture,
      task_feature_lengths={"inputs": args.inputs_length, "targets": args.targets_length},
      split=args.split, batch_size=args.batch_size, shuffle=False, seed=42,
      module=args.module)
  try:
    selection = select_checkpoint(
        model=model, model_dir=args.model_dir, dataset_cfg=dataset_cfg,
        partitioner=partitioning.Partitioner(num_partitions=args.num_partitions),
        output_dir=args.output_dir, num_examples=args.num_examples, steps=steps)
  except FileNotFoundError as e:  # e.g. a held-out set's file (its message says where to put it)
    raise UsageError(str(e)) from e
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(selection.paths["markdown"]) as f:
      print(f.read(), flush=True)
    print("Wrote " + ", ".join(selection.paths.values()), flush=True)
    print(f"Chosen checkpoint: {selection.best_checkpoint}", flush=True)
