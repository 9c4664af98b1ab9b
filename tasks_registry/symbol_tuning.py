"""Symbol tuning ("Symbol tuning improves in-context learning in language models").

Tuning data: in-context classification prompts WITHOUT an instruction whose
natural labels are replaced by arbitrary symbols (instruct_jax.data.symbols,
tuning pools), k exemplars per class then the query; the target is the
query's symbol (prompt: instruct_jax.data.in_context). Evaluation: unseen
datasets under four prompt settings, flipped labels, and BIG-bench
algorithmic reasoning.

Registered names (prefix "" by default):

  symbol_tuning_<t>                    tuning task of dataset (source) t: train split
                                       capped at 25k examples, validation for decoding
  symbol_tuning_train                  every tuning task, rate min(#examples, 25k)
  symbol_tuning_mix_<p>                p% symbol_tuning_train + (100-p)% FLAN instruction
                                       data (flan_all_train), p in MIX_PERCENTS (16 is the
                                       paper's choice for small models); register_symbol_mix
                                       adds other shares or instruction mixtures
  symbol_eval_<d>_<setting>            unseen dataset d under one of SETTINGS:
                                       {instruction, no_instruction} x {labels, symbols},
                                       evaluation-pool symbols; rank classification over the
                                       prompt's own label set
  symbol_eval_<d>_flipped_labels       exemplars and gold use flipped natural labels (no
                                       instruction); rank classification
  symbol_eval_<setting> / symbol_eval_flipped_labels / symbol_eval_unseen (all four
  settings) / symbol_eval_classification (unseen + flipped)       evaluation mixtures
  symbol_eval_bigbench_<task>[_<subtask>]_gen, symbol_eval_algorithmic
                                       BIG-bench list_functions and simp_turing_concept, only
                                       after register_algorithmic_tasks(bigbench_dir)

The 22 tuning datasets. The paper tunes on 22 public classification datasets
from HuggingFace (sentiment, NLI, paraphrase, topic and other tasks, among them
SST-2, Rotten Tomatoes and TweetEval subsets); this project reads TensorFlow
Datasets only, and several of those (TweetEval, Rotten Tomatoes, SUBJ) are not
in TFDS 4.9.10. So the list below is OUR CHOICE of 22 TFDS datasets covering the
same kinds of tasks, with the paper's datasets where TFDS has them. The FLAN
registry's definitions (TFDS source, fields, natural labels) are reused for the
twenty FLAN classification datasets with a fixed label set:
  NLI          anli (rounds r1-r3, one task each), cb, mnli (matched), qnli, rte, snli, wnli
  sentiment    imdb_reviews, sentiment140, sst2, yelp_polarity_reviews, movie_rationales*
  paraphrase   mrpc, qqp, paws_wiki
  reading      bool_q, multirc
  misc         wic, trec (coarse), cola, ag_news_subset (topic), wsc* (super_glue/wsc.fixed)
  (* not in FLAN; defined here. movie_rationales stands in for the paper's Rotten
  Tomatoes movie-review polarity. STS-B is left out: its labels are the digits 0-5,
  which are integer symbols.)
Unseen evaluation datasets, in neither the tuning set nor FLAN: sci_tail (science
entailment), scicite (citation intent, 3 classes), wikipedia_toxicity_subtypes and
civil_comments (toxicity, thresholded at 0.5). Large evaluation splits are capped
at 2,000 examples.

Word symbols exclude every natural label (and each word of one) of all these
datasets, so no target is a natural label in disguise.

Prompts (PromptSettings): 4 exemplars per class drawn from the first 64 train
examples of each class, "Input: ... / Answer: ..." format, token budget = the
run's inputs length - 1, seed 0. Importing the module registers everything with
these defaults and the T5 SentencePiece vocabulary; for other settings call
register(prefix="my_", settings=PromptSettings(...)) from your own registry module.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Iterable, Sequence

import seqio
import tensorflow as tf

from instruct_jax.eval import metrics
from instruct_jax.eval import symbol_suites
from instruct_jax.data import in_context
from instruct_jax.data import symbols
from instruct_jax.data import templates
from tasks_registry import registration
from tasks_registry.flan import datasets as flan_datasets
from tasks_registry.flan import formats as flan_formats
from tasks_registry.flan import tasks as flan_tasks

MAX_TRAIN_EXAMPLES = 25_000
MAX_EVAL_EXAMPLES = 2_000
TUNING_PREFIX = "symbol_tuning_"
EVAL_PREFIX = "symbol_eval_"
TRAIN_MIXTURE = "symbol_tuning_train"
DEFAULT_INSTRUCTION_MIXTURE = "flan_all_train"
DEFAULT_SYMBOL_PERCENT = 16
MIX_PERCENTS = (5, 10, 16, 25, 33, 50, 75, 90)

INSTRUCTION_LABELS = "instruction_labels"
INSTRUCTION_SYMBOLS = "instruction_symbols"
NO_INSTRUCTION_LABELS = "no_instruction_labels"
NO_INSTRUCTION_SYMBOLS = "no_instruction_symbols"
FLIPPED_LABELS = "flipped_labels"
# setting -> (with instruction, label mode)
SETTINGS = {
    INSTRUCTION_LABELS: (True, in_context.LABELS),
    INSTRUCTION_SYMBOLS: (True, in_context.SYMBOLS),
    NO_INSTRUCTION_LABELS: (False, in_context.LABELS),
    NO_INSTRUCTION_SYMBOLS: (False, in_context.SYMBOLS),
}
FLIPPED_SETTING = (False, in_context.FLIPPED)

ALGORITHMIC_TASKS = ("list_functions", "simp_turing_concept")
BIGBENCH_NUM_SHOTS = 4
BIGBENCH_SPLIT = "all"
# Report tables (instruct_jax.eval.reports.symbols).
UNSEEN_TABLE = "In-context classification, unseen tasks (accuracy)"
FLIPPED_TABLE = "Flipped labels (accuracy on the flipped gold)"
ALGORITHMIC_TABLE = "Algorithmic reasoning, BIG-bench (exact match)"


@dataclasses.dataclass(frozen=True)
class SymbolDataset:
  """One TFDS source of a classification dataset, as a symbol-tuning / eval task.

  `spec.options` are the natural labels in label-index order; `instruction`
  (evaluation datasets) is the task description of the instruction settings.
  """
  name: str
  spec: flan_datasets.DatasetSpec
  variant: str = ""
  instruction: str | None = None

  def __post_init__(self):
    if not self.spec.options or self.spec.options_per_example:
      raise ValueError(f"{self.name}: symbol tasks need a fixed label set (spec.options); "
                       "multiple-choice datasets with per-example options cannot be remapped.")

  @property
  def source(self) -> flan_datasets.Source:
    return self.spec.sources[self.variant]

  @property
  def labels(self) -> tuple[str, ...]:
    return tuple(self.spec.options)


# --------------------------------------------------------------------------
# Datasets defined here (not in FLAN).


def _single(tfds_name: str, train: str, validation: str) -> dict[str, flan_datasets.Source]:
  return {"": flan_datasets.Source(tfds_name, {"train": train, "validation": validation})}


def _movie_rationales_fields(ex):
  return {"review": ex["review"], "label": ex["label"]}


def _wsc_fields(ex):
  return {"sentence": ex["text"], "noun": ex["span1_text"], "pronoun": ex["span2_text"],
          "label": ex["label"]}


def _scitail_fields(ex):
  return {"premise": ex["premise"], "hypothesis": ex["hypothesis"], "label": ex["label"]}


def _scicite_fields(ex):
  return {"citation": ex["string"], "label": ex["label"]}


def _toxicity_fields(ex):
  return {"comment": ex["text"], "label": tf.cast(ex["toxicity"] >= 0.5, tf.int32)}


_EXTRA_TUNING_SPECS = {
    "movie_rationales": flan_datasets.DatasetSpec(
        name="movie_rationales",
        sources=_single("movie_rationales:0.1.0", "train", "validation"),
        fields=("review",), to_fields=_movie_rationales_fields, metric="accuracy",
        options=("negative", "positive"),  # NEG, POS
        note="Movie-review polarity (Zaidan et al.); stands in for Rotten Tomatoes."),
    "wsc": flan_datasets.DatasetSpec(
        name="wsc",
        sources=_single("super_glue/wsc.fixed:1.0.2", "train", "validation"),
        fields=("sentence", "noun", "pronoun"), to_fields=_wsc_fields, metric="accuracy",
        options=("no", "yes"),  # Does the pronoun refer to the noun? False, True.
        note="SuperGLUE WSC: coreference of a pronoun and a noun phrase."),
}

_EVAL_SPECS = {
    "sci_tail": (flan_datasets.DatasetSpec(
        name="sci_tail",
        sources=_single("sci_tail:1.0.0", "train", "validation"),
        fields=("premise", "hypothesis"), to_fields=_scitail_fields, metric="accuracy",
        options=("entails", "neutral")),
                 "Does the premise support the hypothesis? Both come from science exams "
                 "and science texts."),
    "scicite": (flan_datasets.DatasetSpec(
        name="scicite",
        sources=_single("scicite:1.0.0", "train", "validation"),
        fields=("citation",), to_fields=_scicite_fields, metric="accuracy",
        options=("method", "background", "result")),
                "This sentence from a scientific paper cites other work. Say why the "
                "work is cited."),
    "wikipedia_toxicity": (flan_datasets.DatasetSpec(
        name="wikipedia_toxicity",
        sources=_single("wikipedia_toxicity_subtypes/EnglishSubtypes:0.3.1", "train",
                        f"test[:{MAX_EVAL_EXAMPLES}]"),
        fields=("comment",), to_fields=_toxicity_fields, metric="accuracy",
        options=("not toxic", "toxic")),
                           "Is this comment from a Wikipedia talk page rude, "
                           "disrespectful or hateful?"),
    "civil_comments": (flan_datasets.DatasetSpec(
        name="civil_comments",
        sources=_single("civil_comments/CivilComments:1.2.4", "train",
                        f"validation[:{MAX_EVAL_EXAMPLES}]"),
        fields=("comment",), to_fields=_toxicity_fields, metric="accuracy",
        options=("not toxic", "toxic")),
                       "Is this comment on a news article rude, disrespectful or hateful?"),
}

# FLAN classification datasets reused for tuning: FLAN name -> (variants, task stems).
_FLAN_TUNING = {
    "anli": ("r1", "r2", "r3"),
    "cb": ("",), "mnli": ("matched",), "qnli": ("",), "rte": ("",), "snli": ("",),
    "wnli": ("",),
    "imdb_reviews": ("",), "sentiment140": ("",), "sst2": ("",),
    "yelp_polarity_reviews": ("",),
    "mrpc": ("",), "qqp": ("",), "paws_wiki": ("",),
    "bool_q": ("",), "multirc": ("",),
    "wic": ("",), "trec": ("",), "cola": ("",), "ag_news_subset": ("",),
}


def _capped_train(split: str) -> str:
  """A train split string with at most MAX_TRAIN_EXAMPLES examples (slices stay valid)."""
  found = re.fullmatch(r"(\w+)\[:(\d+)\]", split)
  if found:
    return f"{found.group(1)}[:{min(int(found.group(2)), MAX_TRAIN_EXAMPLES)}]"
  return split


def _tuning_source(source: flan_datasets.Source) -> flan_datasets.Source:
  splits = dict(source.splits)
  splits["train"] = _capped_train(splits["train"])
  splits.pop("test", None)
  return dataclasses.replace(source, splits=splits)


def _tuning_datasets() -> tuple[SymbolDataset, ...]:
  result = []
  for name, variants in _FLAN_TUNING.items():
    spec = flan_datasets.DATASETS[name]
    for variant in variants:
      # mnli: the matched source; both share the training data.
      stem = name if name == "mnli" or not variant else f"{name}_{variant}"
      sources = {variant: _tuning_source(spec.sources[variant])}
      result.append(SymbolDataset(stem, dataclasses.replace(spec, sources=sources), variant))
  for name, spec in _EXTRA_TUNING_SPECS.items():
    result.append(SymbolDataset(name, spec))
  return tuple(result)


TUNING_DATASETS: tuple[SymbolDataset, ...] = _tuning_datasets()
EVAL_DATASETS: tuple[SymbolDataset, ...] = tuple(
    SymbolDataset(name, spec, instruction=instruction)
    for name, (spec, instruction) in _EVAL_SPECS.items())
# Datasets (not tasks): anli's three rounds are one dataset.
NUM_TUNING_DATASETS = len({d.spec.name for d in TUNING_DATASETS})


def natural_labels() -> frozenset[str]:
  """Every natural label of the tuning and evaluation datasets."""
  return frozenset(label for d in TUNING_DATASETS + EVAL_DATASETS for label in d.labels)


@functools.lru_cache(maxsize=None)
def symbol_pools(kind: str) -> symbols.SymbolPools:
  """The "tuning" or "evaluation" pools, without any natural label (checked once)."""
  if kind not in ("tuning", "evaluation"):
    raise ValueError(f"Symbol pool kind must be 'tuning' or 'evaluation'; got {kind!r}.")
  labels = natural_labels()
  pools = (symbols.tuning_pools if kind == "tuning" else symbols.evaluation_pools)(labels)
  symbols.check_labels_are_not_symbols(sorted(labels), [pools])
  return pools


# --------------------------------------------------------------------------
# Preprocessing.


def add_label_index(dataset: tf.data.Dataset, *, label_names: Sequence[str]) -> tf.data.Dataset:
  """Prepared FLAN-style fields (with "answer" text) -> also "label", its index."""
  names = tf.constant(list(label_names))

  def add(ex):
    index = tf.argmax(tf.cast(tf.equal(names, ex["answer"]), tf.int32), output_type=tf.int32)
    return {**ex, "label": index}

  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def prepare_examples(dataset: tf.data.Dataset, data: SymbolDataset) -> tf.data.Dataset:
  """Raw TFDS examples of `data` -> its text fields and "label" (invalid labels dropped)."""
  dataset = flan_formats.prepare_fields(dataset, spec=data.spec, params=data.source.params)
  return add_label_index(dataset, label_names=data.labels)


def _exemplars(source: seqio.TfdsDataSource, data: SymbolDataset) -> tf.data.Dataset:
  return prepare_examples(source.get_dataset(split="train", shuffle=False), data)


@dataclasses.dataclass(frozen=True)
class PromptSettings:
  """How prompts are built (in_context.in_context_prompts arguments)."""
  num_per_class: int = in_context.DEFAULT_NUM_PER_CLASS
  pool_per_class: int = in_context.DEFAULT_POOL_PER_CLASS
  max_input_tokens: int | None = None  # None: the task's input length
  seed: int = 0
  fmt: in_context.InContextFormat = in_context.InContextFormat()


def _register_task(name: str, data: SymbolDataset, vocabulary: seqio.Vocabulary, *,
                   label_mode: str, pools_kind: str, instruction: str | None,
                   rank: bool, settings: PromptSettings) -> str:
  source = seqio.TfdsDataSource(tfds_name=data.source.tfds_name,
                                splits=dict(data.source.splits))
  steps = [
      functools.partial(prepare_examples, data=data),
      functools.partial(
          in_context.in_context_prompts, fields=data.spec.fields, label_names=data.labels,
          exemplars_fn=functools.partial(_exemplars, source, data), label_mode=label_mode,
          symbol_pools_fn=functools.partial(symbol_pools, pools_kind),
          instruction=instruction, num_per_class=settings.num_per_class,
          pool_per_class=settings.pool_per_class, max_input_tokens=settings.max_input_tokens,
          seed=settings.seed, fmt=settings.fmt, name=name),
  ]
  if rank:
    steps.append(templates.rank_classification_rows)
  # No cache placeholder: prompts depend on the run's input length.
  steps += [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  features = {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
              "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
  if rank:
    kwargs = dict(postprocess_fn=metrics.rank_classification_postprocessor,
                  metric_fns=[metrics.rank_classification_accuracy])
  else:
    kwargs = dict(postprocess_fn=metrics.answers_postprocessor, metric_fns=[metrics.accuracy])
  registration.replace_task(name, source=source, preprocessors=steps,
                            output_features=features, **kwargs)
  return name


# --------------------------------------------------------------------------
# Names.


def tuning_task_name(data: SymbolDataset, prefix: str = "") -> str:
  return f"{prefix}{TUNING_PREFIX}{data.name}"


def eval_task_name(data: SymbolDataset, setting: str, prefix: str = "") -> str:
  return f"{prefix}{EVAL_PREFIX}{data.name}_{setting}"


def mix_name(percent: float, prefix: str = "") -> str:
  """symbol_tuning_mix_16 for 16%; 12.5% -> symbol_tuning_mix_12p5."""
  return f"{prefix}symbol_tuning_mix_{percent:g}".replace(".", "p")


DEFAULT_MIXTURE = mix_name(DEFAULT_SYMBOL_PERCENT)  # symbol_tuning_mix_16


# --------------------------------------------------------------------------
# Registration.


def register_tuning_tasks(vocabulary: seqio.Vocabulary | None = None, prefix: str = "",
                          settings: PromptSettings = PromptSettings(),
                          datasets: Iterable[SymbolDataset] = TUNING_DATASETS) -> list[str]:
  """symbol_tuning_<t> for each dataset, and the symbol_tuning_train mixture."""
  vocabulary = vocabulary or flan_tasks.vocabulary()
  names = [_register_task(tuning_task_name(d, prefix), d, vocabulary,
                          label_mode=in_context.SYMBOLS, pools_kind="tuning", instruction=None,
                          rank=False, settings=settings)
           for d in datasets]
  registration.replace_mixture(
      prefix + TRAIN_MIXTURE, names,
      default_rate=functools.partial(seqio.mixing_rate_num_examples,
                                     maximum=MAX_TRAIN_EXAMPLES))
  return names + [prefix + TRAIN_MIXTURE]


def register_symbol_mix(percent: float, prefix: str = "",
                        instruction_mixture: str = DEFAULT_INSTRUCTION_MIXTURE,
                        name: str | None = None) -> str:
  """Mixture with `percent`% symbol-tuning examples and the rest instruction data.

  Sub-mixture rates are normalised by seqio, so the expected share of symbol
  examples is exactly percent / 100 whatever the sizes of the two sides.
  """
  if not 0 < percent < 100:
    raise ValueError(f"The symbol-tuning share must be strictly between 0 and 100 percent; "
                     f"got {percent}. Use {prefix + TRAIN_MIXTURE!r} itself for 100%.")
  if instruction_mixture not in seqio.MixtureRegistry.names() and (
      instruction_mixture not in seqio.TaskRegistry.names()):
    raise ValueError(f"Instruction mixture {instruction_mixture!r} is not registered; import "
                     "its registry module first (FLAN: tasks_registry.flan) or name another.")
  name = name or mix_name(percent, prefix)
  registration.replace_mixture(
      name, [(prefix + TRAIN_MIXTURE, percent / 100.0),
             (instruction_mixture, 1.0 - percent / 100.0)], default_rate=None)
  return name


def register_eval_tasks(vocabulary: seqio.Vocabulary | None = None, prefix: str = "",
                        settings: PromptSettings = PromptSettings(),
                        datasets: Iterable[SymbolDataset] = EVAL_DATASETS) -> list[str]:
  """The unseen-task and flipped-label evaluation tasks and their mixtures."""
  vocabulary = vocabulary or flan_tasks.vocabulary()
  datasets = tuple(datasets)
  by_setting = {}
  for setting, (with_instruction, label_mode) in {**SETTINGS,
                                                  FLIPPED_LABELS: FLIPPED_SETTING}.items():
    by_setting[setting] = [
        _register_task(eval_task_name(d, setting, prefix), d, vocabulary,
                       label_mode=label_mode, pools_kind="evaluation",
                       instruction=d.instruction if with_instruction else None, rank=True,
                       settings=settings)
        for d in datasets]
  names = [n for tasks in by_setting.values() for n in tasks]
  for setting, tasks in by_setting.items():
    registration.replace_mixture(f"{prefix}{EVAL_PREFIX}{setting}", tasks, default_rate=1.0)
  unseen = [n for s in SETTINGS for n in by_setting[s]]
  mixtures = {f"{prefix}{EVAL_PREFIX}unseen": unseen,
              f"{prefix}{EVAL_PREFIX}classification": names}
  for mixture, tasks in mixtures.items():
    registration.replace_mixture(mixture, tasks, default_rate=1.0)
  return names + [f"{prefix}{EVAL_PREFIX}{s}" for s in by_setting] + list(mixtures)


def register(vocabulary: seqio.Vocabulary | None = None, prefix: str = "",
             instruction_mixture: str = DEFAULT_INSTRUCTION_MIXTURE,
             mix_percents: Sequence[float] = MIX_PERCENTS,
             settings: PromptSettings = PromptSettings()) -> list[str]:
  """Everything above except the BIG-bench tasks; returns the registered names."""
  names = register_tuning_tasks(vocabulary, prefix, settings)
  names += [register_symbol_mix(p, prefix, instruction_mixture) for p in mix_percents]
  return names + register_eval_tasks(vocabulary, prefix, settings)


# --------------------------------------------------------------------------
# BIG-bench algorithmic reasoning (needs the user's BIG-bench checkout).


def _task_directory(bigbench_dir: str, task: str) -> str:
  candidates = [os.path.join(bigbench_dir, *parts, task) for parts in
                ((), ("benchmark_tasks",), ("bigbench", "benchmark_tasks"))]
  for candidate in candidates:
    if tf.io.gfile.isdir(candidate):
      return candidate
  raise FileNotFoundError(
      f"BIG-bench task {task!r} not found under {bigbench_dir!r}; looked in "
      f"{', '.join(candidates)}. Pass the BIG-bench repository root (or its "
      "bigbench/benchmark_tasks directory), e.g. a clone of github.com/google/BIG-bench.")


def _task_files(directory: str) -> list[tuple[str, str]]:
  """(subtask path relative to the task, task.json path) of every file with examples."""
  import json  # pylint: disable=g-import-not-at-top
  found = []
  for root, _, files in sorted(tf.io.gfile.walk(directory)):
    if "task.json" not in files:
      continue
    path = os.path.join(root, "task.json")
    with tf.io.gfile.GFile(path) as f:
      if not json.load(f).get("examples"):
        continue  # A parent task.json that only lists subtasks.
    found.append((os.path.relpath(root, directory), path))
  return found


def register_algorithmic_tasks(bigbench_dir: str, vocabulary: seqio.Vocabulary | None = None,
                               prefix: str = "", tasks: Sequence[str] = ALGORITHMIC_TASKS,
                               num_shots: int = BIGBENCH_NUM_SHOTS, seed: int = 0
                               ) -> dict[str, list[str]]:
  """Registers BIG-bench `tasks` (every subtask's task.json) as seqio eval tasks.

  Exemplars: `num_shots` other examples of the same (sub)task, as BIG-bench's
  few-shot evaluation does; the functions / concepts can only be inferred in
  context. Also registers the mixture symbol_eval_algorithmic. Returns
  {task: [seqio task names]}.
  """
  from instruct_jax.data import bigbench  # pylint: disable=g-import-not-at-top
  vocabulary = vocabulary or flan_tasks.vocabulary()
  registered = {}
  for task in tasks:
    files = _task_files(_task_directory(bigbench_dir, task))
    if not files:
      raise FileNotFoundError(f"No task.json with examples under the BIG-bench task {task!r} "
                              f"in {bigbench_dir!r}.")
    names = []
    for subtask, path in files:
      stem = task if subtask == "." else f"{task}_{re.sub(r'[^A-Za-z0-9]+', '_', subtask)}"
      names += bigbench.register_bigbench_task(f"{prefix}{EVAL_PREFIX}bigbench_{stem}", path,
                                               vocabulary, num_shots=num_shots, seed=seed)
    registered[task] = names
  registration.replace_mixture(f"{prefix}{EVAL_PREFIX}algorithmic",
                               [n for names in registered.values() for n in names],
                               default_rate=1.0)
  return registered


# --------------------------------------------------------------------------
# The evaluation suites (instruct_jax.eval.symbol_suites), laid out for its report.


def evaluation_suites(bigbench_dir: str | None = None, prefix: str = "",
                      vocabulary: seqio.Vocabulary | None = None,
                      num_shots: int = BIGBENCH_NUM_SHOTS,
                      datasets: Iterable[SymbolDataset] = EVAL_DATASETS,
                      ) -> symbol_suites.SuiteLayout:
  """What `instruct-jax symbol-eval` runs and how its report lays the results out.

  The classification suites (registered at import) always; the BIG-bench
  algorithmic tasks when `bigbench_dir` is given (registered here).
  """
  cells = {}
  for data in datasets:
    for setting in SETTINGS:
      cells[eval_task_name(data, setting, prefix)] = symbol_suites.Cell(
          UNSEEN_TABLE, data.name, setting)
  for data in datasets:
    cells[eval_task_name(data, FLIPPED_LABELS, prefix)] = symbol_suites.Cell(
        FLIPPED_TABLE, data.name, FLIPPED_LABELS)
  runs = [symbol_suites.EvalRun(f"{prefix}{EVAL_PREFIX}classification", "validation")]
  if bigbench_dir:
    registered = register_algorithmic_tasks(bigbench_dir, vocabulary, prefix,
                                            num_shots=num_shots)
    for task, names in registered.items():
      for name in names:
        kind = "multiple choice" if name.endswith("_mc") else "generation"
        cells[name] = symbol_suites.Cell(ALGORITHMIC_TABLE, task, kind)
    runs.append(symbol_suites.EvalRun(f"{prefix}{EVAL_PREFIX}algorithmic", BIGBENCH_SPLIT))
  return symbol_suites.SuiteLayout(runs=tuple(runs), cells=cells)


register()
