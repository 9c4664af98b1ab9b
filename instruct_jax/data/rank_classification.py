"""Score-based (rank-classification) copies of seqio tasks whose examples carry "options".

Rank classification is data preparation: the copy expands every example into
one row per option before tokenization (templates.rank_classification_rows),
so seqio's score path gives every option a log-likelihood and the metric
(instruct_jax.eval.metrics.rank_classification_accuracy) picks the most likely
one per example.
"""
from typing import Optional

import seqio

from instruct_jax.data import templates
from instruct_jax.eval import metrics


def register_rank_classification_task(task_name: str, new_name: Optional[str] = None) -> str:
  """Registers a score-based copy of a seqio task whose examples carry "options".

  The copy reports rank_classification_accuracy: the share of examples whose
  most likely option is a correct answer ("answers" when present, else
  "targets"). Returns the new name (default: task_name + "_rank").
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
      postprocess_fn=metrics.rank_classification_postprocessor,
      metric_fns=[metrics.rank_classification_accuracy])
  return new_name
