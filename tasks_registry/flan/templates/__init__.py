"""Ten instruction templates per FLAN dataset, one module per cluster (our own wording).

Up to three templates per dataset are `turned_around=True`: they invert the task
(e.g. write a review with a given sentiment) and are used for training only.
"""
from __future__ import annotations

import types
from typing import Mapping

from instruct_jax.data.templates import Template
from tasks_registry.flan.templates import closed_book_qa
from tasks_registry.flan.templates import commonsense
from tasks_registry.flan.templates import coreference
from tasks_registry.flan.templates import misc
from tasks_registry.flan.templates import nli
from tasks_registry.flan.templates import paraphrase
from tasks_registry.flan.templates import reading_comprehension
from tasks_registry.flan.templates import reading_comprehension_commonsense
from tasks_registry.flan.templates import sentiment
from tasks_registry.flan.templates import struct_to_text
from tasks_registry.flan.templates import summarization
from tasks_registry.flan.templates import translation

_MODULES = (nli, commonsense, sentiment, paraphrase, closed_book_qa, struct_to_text, translation,
            reading_comprehension, reading_comprehension_commonsense, coreference, misc,
            summarization)


def _merge() -> dict[str, tuple[Template, ...]]:
  merged: dict[str, tuple[Template, ...]] = {}
  for module in _MODULES:
    for name, templates in module.TEMPLATES.items():
      if name in merged:
        raise ValueError(f"Templates for dataset {name!r} are defined twice "
                         f"(again in {module.__name__}).")
      merged[name] = tuple(templates)
  return merged


# dataset name -> its ten templates.
TEMPLATES: Mapping[str, tuple[Template, ...]] = types.MappingProxyType(_merge())
