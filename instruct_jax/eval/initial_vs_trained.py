"""Held-out accuracy before and after training: a `final_eval_fn` for trainer.train (gin).

Instruction tuning is judged by zero-shot transfer to tasks it never trained
on. This hook scores the held-out mixture twice through one EvalSession (so
the data, batching and seeds are the same): with the params training started
from (the same init seed, or INITIAL_CHECKPOINT_PATH) and with the final ones,
next to chance. For rank-classification tasks chance is what a random pick
among each example's options gets: the mean over examples of correct options /
options, read from the evaluator's own cached rows (so a num_examples cap
is honoured).

Enable it in a run gin (gin_configs/runs/smoke.gin does):

    trainer.train.final_eval_fn = @initial_vs_trained.InitialVsTrained()
    initial_vs_trained.InitialVsTrained.mixture_or_task_name = 'smoke_holdout_rank_eval'
"""
import collections
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional

import jax
import tensorflow as tf

from instruct_jax.checkpoints import layout
from instruct_jax.data import pipeline
from instruct_jax.eval import session as session_lib
from instruct_jax.train import trainer as trainer_lib

REPORT_STEM = "initial_vs_trained"


def chance_accuracy(rows: Iterable[Mapping[str, Any]]) -> Optional[float]:
  """Percent a random option pick gets on rank-classification rows (example_id, is_correct).

  None when the rows are not rank-classification rows (a generative task).
  """
  options = collections.defaultdict(lambda: [0, 0])  # example_id -> [correct, rows]
  for row in rows:
    if "example_id" not in row or "is_correct" not in row:
      return None
    options[int(row["example_id"])][0] += bool(row["is_correct"])
    options[int(row["example_id"])][1] += 1
  if not options:
    return None
  return 100.0 * sum(c / n for c, n in options.values()) / len(options)


def _headline_metric(metrics: Mapping[str, float]) -> Optional[str]:
  if "accuracy" in metrics:
    return "accuracy"
  return next((name for name in sorted(metrics) if name != "num_examples"), None)


def render_table(rows: Sequence[Mapping[str, Any]], step: int) -> str:
  """Markdown: one row per task, then the mean; columns chance, initial, trained."""
  def cell(value):
    return "-" if value is None else f"{value:.1f}"
  lines = [f"| Task | Chance | Initial (step 0) | Trained (step {step}) |",
           "|---|---:|---:|---:|"]
  for row in rows:
    lines.append(f"| {row['task']} | {cell(row['chance'])} | {cell(row['initial'])} | "
                 f"{cell(row['trained'])} |")
  return "\n".join(lines)


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


class InitialVsTrained:
  """Called once by the trainer after the last step; prints and writes the comparison.

  Writes <model_dir>/inference_eval/initial_vs_trained_step_<step>.{md,json}
  when `model_dir` is given. Returns a FinalEvalResult whose headline is the
  mean row (for the trainer's end-of-run summary).
  """

  def __init__(self, mixture_or_task_name: str, split: str = "validation",
               batch_size: int = 32, num_examples: Optional[int] = None,
               task_feature_lengths: Optional[Mapping[str, int]] = None,
               model_dir: Optional[str] = None, module: Optional[str] = None,
               seed: int = 0):
    self.mixture_or_task_name = mixture_or_task_name
    self.split = split
    self.batch_size = batch_size
    self.num_examples = num_examples
    self.task_feature_lengths = task_feature_lengths
    self.model_dir = model_dir
    self.module = module
    self.seed = seed

  def __call__(self, trainer: Any, params: Any, step: int,
               initial_params: Callable[[], Any]) -> trainer_lib.FinalEvalResult:
    if self.module:
      pipeline.import_registry_module(self.module)
    session = session_lib.EvalSession(trainer.model, trainer.partitioner, self.batch_size,
                                      seed=self.seed)
    args = dict(num_examples=self.num_examples, seed=self.seed)
    trained = session.evaluate(self.mixture_or_task_name, self.split,
                               self.task_feature_lengths, params=params, step=step, **args)
    initial = session.evaluate(self.mixture_or_task_name, self.split,
                               self.task_feature_lengths, params=initial_params(), step=0,
                               **args)
    evaluator = session.evaluator(self.mixture_or_task_name, self.split,
                                  self.task_feature_lengths, **args)
    rows = []
    for task in sorted(trained):
      metric = _headline_metric(trained[task])
      if metric is None:
        continue
      task_rows = evaluator.cached_task_datasets[task].as_numpy_iterator()
      rows.append({"task": task, "metric": metric, "chance": chance_accuracy(task_rows),
                   "initial": initial.get(task, {}).get(metric),
                   "trained": trained[task][metric]})
    mean = {"task": f"mean ({len(rows)} tasks)",
            **{k: _mean([r[k] for r in rows]) for k in ("chance", "initial", "trained")}}
    table = render_table([*rows, mean], step)
    title = (f"Held-out {self.mixture_or_task_name} ({self.split}): the initial model vs "
             f"the trained one")
    if jax.process_index() == 0:
      print(f"{title}\n{table}", flush=True)
      self._write(title, table, rows, mean, step)
    headline = (f"{self.mixture_or_task_name}: initial {_fmt(mean['initial'])} -> trained "
                f"{_fmt(mean['trained'])} (chance {_fmt(mean['chance'])})")
    return trainer_lib.FinalEvalResult(headline, self.mixture_or_task_name)

  def _write(self, title: str, table: str, rows: Sequence[Mapping[str, Any]],
             mean: Mapping[str, Any], step: int) -> None:
    if not self.model_dir:
      return
    out_dir = layout.eval_dir(self.model_dir)
    tf.io.gfile.makedirs(out_dir)
    stem = os.path.join(out_dir, f"{REPORT_STEM}_step_{step}")
    with tf.io.gfile.GFile(stem + ".md", "w") as f:
      f.write(f"# {title}\n\n{table}\n")
    with tf.io.gfile.GFile(stem + ".json", "w") as f:
      json.dump({"mixture_or_task_name": self.mixture_or_task_name, "split": self.split,
                 "step": step, "tasks": list(rows), "mean": dict(mean)}, f, indent=2)


def _fmt(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.1f}%"
