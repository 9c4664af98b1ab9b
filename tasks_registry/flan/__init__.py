"""FLAN instruction tuning: 62 TFDS datasets in 12 clusters, 10 templates each.

Importing this package registers every FLAN seqio task and mixture with the T5
SentencePiece vocabulary (loaded lazily, on first tokenization). Names:
tasks.py and mixtures.py. The pieces, one concept per module:

  clusters.py    THE cluster table and the holdout exclusion rules
  datasets.py    per dataset: TFDS name/version/splits, field mapping, options, metric
  templates/     ten instruction templates per dataset, one module per cluster
  formats.py     seqio preprocessors: fields -> zero-shot / no-options / few-shot prompts
  tasks.py       seqio task registration (and the vocabulary)
  mixtures.py    seqio mixture registration
"""
from __future__ import annotations

import seqio

from tasks_registry.flan import clusters
from tasks_registry.flan import datasets
from tasks_registry.flan import formats
from tasks_registry.flan import mixtures
from tasks_registry.flan import tasks
from tasks_registry.flan.clusters import CLUSTERS
from tasks_registry.flan.datasets import DATASETS
from tasks_registry.flan.mixtures import register_flan_mixtures
from tasks_registry.flan.tasks import register_flan_tasks
from tasks_registry.flan.tasks import vocabulary
from tasks_registry.flan.templates import TEMPLATES


def register(vocabulary: seqio.Vocabulary | None = None,  # pylint: disable=redefined-outer-name
             prefix: str = tasks.DEFAULT_PREFIX,
             rate_cap: int | None = mixtures.DEFAULT_RATE_CAP) -> list[str]:
  """Registers all FLAN tasks and mixtures under `prefix`; returns their names."""
  names = register_flan_tasks(vocabulary, prefix=prefix)
  return names + register_flan_mixtures(prefix=prefix, rate_cap=rate_cap)


register()
