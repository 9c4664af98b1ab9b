"""FLAN mixtures: everything, and leave-one-cluster-out train/eval pairs.

With prefix "flan_":
  flan_all_train                         every task with a train split
  flan_holdout_<c>_train                 tasks of the clusters trained on when c is held
                                         out (clusters.training_clusters: c and its extra
                                         exclusions are left out)
  flan_holdout_<c>_eval                  c's evaluation tasks (flan_<t>_eval: rank
                                         classification where the dataset has options)
  flan_holdout_<c>_eval_no_options       the same without options blocks
  flan_holdout_<c>_eval_few_shot         the same, few-shot
  flan_holdout_<c>_eval_by_template      c's per-template evaluation tasks, to measure
                                         the variance across templates

Training mixtures sample each task at rate min(number of train examples, cap)
(seqio.mixing_rate_num_examples with maximum=cap; FLAN's cap is 3000).
"""
from __future__ import annotations

import functools
from typing import Sequence

import seqio

from tasks_registry import registration
from tasks_registry.flan import clusters
from tasks_registry.flan import formats
from tasks_registry.flan import tasks as tasks_lib

DEFAULT_RATE_CAP = 3000


def train_tasks(cluster_names: Sequence[str], prefix: str = tasks_lib.DEFAULT_PREFIX,
                prompt_format: formats.PromptFormat = formats.ZERO_SHOT) -> list[str]:
  """Training task names of the given clusters (tasks without a train split skipped)."""
  return [tasks_lib.task_name(t.base_name, prefix=prefix, prompt_format=prompt_format)
          for t in _tasks_of(cluster_names) if t.has_train_split]


def eval_tasks(cluster_names: Sequence[str], prefix: str = tasks_lib.DEFAULT_PREFIX,
               prompt_format: formats.PromptFormat = formats.ZERO_SHOT) -> list[str]:
  """Evaluation task names of the given clusters (rank-classified where options exist)."""
  return [tasks_lib.task_name(t.base_name, prefix=prefix, prompt_format=prompt_format,
                              evaluation=True)
          for t in _tasks_of(cluster_names)]


def template_eval_tasks(cluster_names: Sequence[str],
                        prefix: str = tasks_lib.DEFAULT_PREFIX) -> list[str]:
  """Per-template evaluation task names of the given clusters."""
  return [tasks_lib.task_name(t.base_name, prefix=prefix, template=i, evaluation=True)
          for t in _tasks_of(cluster_names) for i in t.eval_templates]


def _tasks_of(cluster_names: Sequence[str]) -> list[tasks_lib.FlanTask]:
  for cluster in cluster_names:
    if cluster not in clusters.CLUSTERS:
      raise ValueError(f"Unknown FLAN cluster {cluster!r}; expected one of "
                       f"{sorted(clusters.CLUSTERS)}.")
  wanted = [d for c in cluster_names for d in clusters.CLUSTERS[c]]
  return tasks_lib.flan_tasks(wanted)


def mixture_name(kind: str, cluster: str | None = None,
                 prefix: str = tasks_lib.DEFAULT_PREFIX, suffix: str = "") -> str:
  """e.g. mixture_name("train", "nli") -> "flan_holdout_nli_train"."""
  if cluster is None:
    return f"{prefix}all_{kind}{suffix}"
  return f"{prefix}holdout_{cluster}_{kind}{suffix}"


def register_flan_mixtures(prefix: str = tasks_lib.DEFAULT_PREFIX,
                           rate_cap: int | None = DEFAULT_RATE_CAP,
                           suffix: str = "") -> list[str]:
  """Registers the mixtures above over tasks registered with the same prefix.

  `rate_cap` bounds each training task's rate (None: plain example counts);
  `suffix` is appended to every mixture name, to register a second set with
  another cap, e.g. register_flan_mixtures(rate_cap=10_000, suffix="_cap10k").
  """
  rate = functools.partial(seqio.mixing_rate_num_examples, maximum=rate_cap)
  names = []

  def add(name, task_names, default_rate):
    registration.replace_mixture(name, task_names, default_rate=default_rate)
    names.append(name)

  add(mixture_name("train", prefix=prefix, suffix=suffix),
      train_tasks(list(clusters.CLUSTERS), prefix), rate)
  for cluster in clusters.CLUSTERS:
    add(mixture_name("train", cluster, prefix, suffix),
        train_tasks(clusters.training_clusters(cluster), prefix), rate)
    for prompt_format in formats.FORMATS:
      kind = "_".join(filter(None, ["eval", prompt_format.name]))
      add(mixture_name(kind, cluster, prefix, suffix),
          eval_tasks([cluster], prefix, prompt_format), 1.0)
    add(mixture_name("eval_by_template", cluster, prefix, suffix),
        template_eval_tasks([cluster], prefix), 1.0)
  return names
