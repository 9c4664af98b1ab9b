"""Registration of the FLAN seqio tasks.

A FLAN *task* is one TFDS source of a dataset ("anli" has three: anli_r1,
anli_r2, anli_r3). With prefix "flan_", each task `<t>` registers:

  flan_<t>                       train + eval splits; all 10 templates (one per
                                 example, deterministic); zero-shot with options
  flan_<t>_no_options            same, no options block
  flan_<t>_few_shot              same, exemplars from the train split first
  flan_<t>_template_<i>          template i only (i = 0..9), zero-shot with options
  flan_<t>_eval                  evaluation form: templates that are not turned
  flan_<t>_eval_no_options       around; rank classification (one row per option,
  flan_<t>_eval_few_shot         scored by the model) for datasets with options,
  flan_<t>_template_<i>_eval     generation with the dataset's metrics otherwise

Generative tasks keep an "options" feature (empty for generation datasets),
"answers" (all references) and "template_index"; feature converters drop them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Sequence

import seqio

from instruct_jax.eval import metrics
from instruct_jax.data import templates as templates_lib
from tasks_registry import registration
from tasks_registry.flan import clusters
from tasks_registry.flan import formats
from tasks_registry.flan.datasets import DATASETS
from tasks_registry.flan.datasets import DatasetSpec
from tasks_registry.flan.datasets import Source
from tasks_registry.flan.templates import TEMPLATES

DEFAULT_PREFIX = "flan_"
NUM_TEMPLATES = 10
# T5 / T5 v1.1 SentencePiece model (32000 pieces + 100 extra ids).
SENTENCEPIECE_MODEL = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"

GENERATIVE_METRICS = {
    "accuracy": (metrics.accuracy,),
    "squad": (metrics.squad,),
    "rouge": (metrics.rouge,),
    "bleu": (metrics.bleu,),
}


@functools.lru_cache(maxsize=None)
def vocabulary() -> seqio.SentencePieceVocabulary:
  """The T5 vocabulary; seqio loads the model file only when it first tokenizes."""
  return seqio.SentencePieceVocabulary(SENTENCEPIECE_MODEL)


_default_vocabulary = vocabulary  # register_flan_tasks's argument shadows the name.


@dataclasses.dataclass(frozen=True)
class FlanTask:
  """One TFDS source of one FLAN dataset: the unit behind a family of seqio tasks."""
  dataset: str
  variant: str
  spec: DatasetSpec
  source: Source

  @property
  def base_name(self) -> str:
    return f"{self.dataset}_{self.variant}" if self.variant else self.dataset

  @property
  def templates(self) -> tuple[templates_lib.Template, ...]:
    return TEMPLATES[self.dataset]

  @property
  def eval_templates(self) -> tuple[int, ...]:
    """Indices of the templates that pose the task itself (not turned around)."""
    return tuple(i for i, t in enumerate(self.templates) if not t.turned_around)

  @property
  def has_train_split(self) -> bool:
    return "train" in self.source.splits


def flan_tasks(datasets: Iterable[str] | None = None) -> list[FlanTask]:
  """FLAN tasks in cluster-table order (all datasets by default)."""
  wanted = None if datasets is None else set(datasets)
  if wanted is not None and wanted - set(DATASETS):
    raise ValueError(f"Unknown FLAN dataset(s) {sorted(wanted - set(DATASETS))}; expected "
                     f"names from tasks_registry/flan/datasets.py:DATASETS.")
  result = []
  for cluster_datasets in clusters.CLUSTERS.values():
    for name in cluster_datasets:
      if wanted is not None and name not in wanted:
        continue
      spec = DATASETS[name]
      result.extend(FlanTask(name, variant, spec, source)
                    for variant, source in spec.sources.items())
  return result


def task_name(base_name: str, *, prefix: str = DEFAULT_PREFIX,
              prompt_format: formats.PromptFormat = formats.ZERO_SHOT,
              template: int | None = None, evaluation: bool = False) -> str:
  """Registered name of a FLAN task variant, e.g. flan_rte_template_3_eval."""
  parts = [prefix + base_name]
  if template is not None:
    parts.append(f"template_{template}")
  if evaluation:
    parts.append("eval")
  if prompt_format.name:
    parts.append(prompt_format.name)
  return "_".join(parts)


def _output_features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  return {"inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
          "targets": seqio.Feature(vocabulary=vocab, add_eos=True)}


def _exemplar_split(task: FlanTask) -> str:
  return "train" if task.has_train_split else "validation"


def _exemplars(source: seqio.TfdsDataSource, split: str, task: FlanTask):
  dataset = source.get_dataset(split=split, shuffle=False)
  return formats.prepare_fields(dataset, spec=task.spec, params=task.source.params)


@dataclasses.dataclass(frozen=True)
class _Settings:
  template_seed: int
  num_shots: int
  few_shot_max_input_tokens: int | None
  exemplar_seed: int


def _register_one(name: str, task: FlanTask, source: seqio.TfdsDataSource,
                  output_features, prompt_format: formats.PromptFormat,
                  candidates: Sequence[int], rank: bool, settings: _Settings) -> None:
  common = dict(spec=task.spec, templates=task.templates, candidates=tuple(candidates),
                with_options=prompt_format.with_options,
                template_seed=settings.template_seed)
  steps = [functools.partial(formats.prepare_fields, spec=task.spec, params=task.source.params)]
  if prompt_format.few_shot:
    steps.append(functools.partial(
        formats.apply_templates_few_shot, **common,
        exemplars_fn=functools.partial(_exemplars, source, _exemplar_split(task), task),
        num_shots=settings.num_shots,
        max_input_tokens=settings.few_shot_max_input_tokens,
        exemplar_seed=settings.exemplar_seed))
  else:
    steps.append(functools.partial(formats.apply_templates, **common))
  if rank:
    steps.append(templates_lib.rank_classification_rows)
  steps.append(seqio.preprocessors.tokenize)
  if not prompt_format.few_shot:
    # Few-shot prompts depend on the run's input length, so they cannot be cached.
    steps.append(seqio.CacheDatasetPlaceholder())
  steps.append(seqio.preprocessors.append_eos_after_trim)
  if rank:
    postprocess_fn = metrics.rank_classification_postprocessor
    metric_fns = [metrics.rank_classification_accuracy]
  else:
    postprocess_fn = metrics.answers_postprocessor
    metric_fns = list(GENERATIVE_METRICS[task.spec.metric])
  registration.replace_task(name, source=source, preprocessors=steps,
                            output_features=output_features, postprocess_fn=postprocess_fn,
                            metric_fns=metric_fns)


def register_flan_tasks(vocabulary: seqio.Vocabulary | None = None, prefix: str = DEFAULT_PREFIX,
                        datasets: Iterable[str] | None = None, template_seed: int = 0,
                        num_shots: int = formats.DEFAULT_NUM_SHOTS,
                        few_shot_max_input_tokens: int | None = (
                            formats.DEFAULT_FEW_SHOT_MAX_INPUT_TOKENS),
                        exemplar_seed: int = 0) -> list[str]:
  """Registers every FLAN task variant (see module doc); returns the names.

  `vocabulary` defaults to the T5 SentencePiece vocabulary; tests register a
  copy with seqio.ByteVocabulary() under their own `prefix`.
  """
  if vocabulary is None:
    vocabulary = _default_vocabulary()
  output_features = _output_features(vocabulary)
  settings = _Settings(template_seed, num_shots, few_shot_max_input_tokens, exemplar_seed)
  names = []
  for task in flan_tasks(datasets):
    if len(task.templates) != NUM_TEMPLATES:
      raise ValueError(f"FLAN dataset {task.dataset!r} has {len(task.templates)} templates; "
                       f"every dataset needs exactly {NUM_TEMPLATES}.")
    source = seqio.TfdsDataSource(tfds_name=task.source.tfds_name,
                                  splits=dict(task.source.splits))
    every_template = tuple(range(len(task.templates)))
    rank = task.spec.has_options

    def add(name, prompt_format, candidates, rank_rows, task=task, source=source):
      _register_one(name, task, source, output_features, prompt_format, candidates,
                    rank_rows, settings)
      names.append(name)

    for prompt_format in formats.FORMATS:
      add(task_name(task.base_name, prefix=prefix, prompt_format=prompt_format),
          prompt_format, every_template, False)
      add(task_name(task.base_name, prefix=prefix, prompt_format=prompt_format,
                    evaluation=True),
          prompt_format, task.eval_templates, rank)
    for index in every_template:
      add(task_name(task.base_name, prefix=prefix, template=index), formats.ZERO_SHOT,
          (index,), False)
      if index in task.eval_templates:
        add(task_name(task.base_name, prefix=prefix, template=index, evaluation=True),
            formats.ZERO_SHOT, (index,), rank)
  return names
