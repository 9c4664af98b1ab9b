"""Smoke instruction tasks: tiny, procedurally generated, no network and no files.

They exist so that the whole FLAN-style loop (instruction-tune on some task
clusters, evaluate zero-shot on a held-out cluster) runs on a laptop CPU in
minutes with a byte-level T5. Every prompt fits the smoke feature lengths
(inputs 64 bytes, targets 16 bytes, EOS included) so nothing is truncated.

Clusters live in ONE table, `CLUSTERS` (cluster -> task builders); every
mixture below is derived from it, so adding a builder to a cluster is the only
edit needed to add a task.

Held-out cluster: "classification". Its tasks answer with one option from an
"OPTIONS:" block. The training clusters teach the option format through one
multiple-choice arithmetic task ("smoke_sum_choice"), as FLAN's training
mixture contains many option-style tasks; with rank classification the chance
level on the held-out tasks is 50%, so any gain above it is zero-shot transfer.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from instruct_jax.data import rank_classification
from instruct_jax.data import templates
from instruct_jax.eval import metrics
from tasks_registry import registration

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}
# Lengths for which every smoke example fits untruncated (bytes incl. EOS).
TASK_FEATURE_LENGTHS = {"inputs": 64, "targets": 16}
NUM_EXAMPLES = {"train": 2000, "validation": 200}
HELD_OUT_CLUSTER = "classification"
HELD_OUT_RANK_EVAL = "smoke_holdout_rank_eval"
TASK_PREFIX = "smoke_"

# Different base seeds per split keep train and validation streams distinct.
_SPLIT_SEEDS = {"train": 17, "validation": 29}


@dataclasses.dataclass(frozen=True)
class Example:
  """One rendered instruction example; `options` is empty for generative tasks."""
  inputs: str
  targets: str
  options: tuple[str, ...] = ()


ExampleBuilder = Callable[[np.random.Generator], Example]

# --------------------------------------------------------------------------
# Word material (our own lists).

_WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "lemon", "chair", "green",
    "house", "light", "music", "ocean", "paper", "plant", "smile", "table",
    "water", "bread", "horse", "night", "sugar", "train", "dream", "field",
    "cat", "dog", "sun", "moon", "tree", "book", "fish", "bird", "road",
    "wind", "rain", "snow", "salt", "milk", "door", "lamp", "coin", "ship",
    "garden", "window", "rocket", "pencil", "basket", "candle", "forest",
    "planet", "silver", "bottle", "castle", "dragon", "ladder", "mirror",
)
_POSITIVE_WORDS = (
    "great", "lovely", "happy", "superb", "good", "nice", "amazing", "fun",
    "perfect", "brilliant", "pleasant", "wonderful",
)
_NEGATIVE_WORDS = (
    "awful", "sad", "bad", "boring", "terrible", "ugly", "nasty", "dull",
    "horrible", "gloomy", "painful", "dreadful",
)
_SENTENCE_FRAMES = ("it was {}", "so {}", "a {} day", "{} film", "{} food")


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
  return items[int(rng.integers(len(items)))]


def _short_word(rng: np.random.Generator) -> str:
  """A real word half of the time, otherwise random letters (3-7 chars)."""
  if rng.random() < 0.5:
    return _pick(rng, _WORDS)
  letters = rng.integers(ord("a"), ord("z") + 1, size=int(rng.integers(3, 8)))
  return "".join(chr(c) for c in letters)


# --------------------------------------------------------------------------
# Cluster "string_edit".


def reverse_word(rng: np.random.Generator) -> Example:
  word = _short_word(rng)
  template = _pick(rng, ("Reverse the letters of this word: {}",
                         "Write the word '{}' backwards."))
  return Example(template.format(word), word[::-1])


def uppercase_word(rng: np.random.Generator) -> Example:
  word = _short_word(rng)
  template = _pick(rng, ("Write this word in capital letters: {}",
                         "Convert '{}' to upper case."))
  return Example(template.format(word), word.upper())


def repeat_word(rng: np.random.Generator) -> Example:
  word = _short_word(rng)
  template = _pick(rng, ("Say this word two times: {}",
                         "Repeat '{}' twice, separated by a space."))
  return Example(template.format(word), f"{word} {word}")


# --------------------------------------------------------------------------
# Cluster "arithmetic".


def add_digits(rng: np.random.Generator) -> Example:
  a, b = (int(x) for x in rng.integers(0, 10, size=2))
  template = _pick(rng, ("What is {} + {}?", "Add {} and {}. Answer with a number."))
  return Example(template.format(a, b), str(a + b))


def successor(rng: np.random.Generator) -> Example:
  n = int(rng.integers(0, 999))
  template = _pick(rng, ("Which number comes right after {}?",
                         "Count one step up from {}."))
  return Example(template.format(n), str(n + 1))


def sum_choice(rng: np.random.Generator) -> Example:
  a, b = (int(x) for x in rng.integers(0, 10, size=2))
  wrong = a + b + int(rng.choice((-2, -1, 1, 2)))
  wrong = wrong if wrong >= 0 else a + b + 3
  options = (str(a + b), str(wrong))
  if rng.random() < 0.5:
    options = options[::-1]
  prompt = f"Pick the value of {a} + {b}.\n{templates.render_options(options)}"
  return Example(prompt, str(a + b), options)


# --------------------------------------------------------------------------
# Cluster "classification".


def parity(rng: np.random.Generator) -> Example:
  n = int(rng.integers(0, 100))
  options = ("even", "odd")
  template = _pick(rng, ("Is {} an even or an odd number?", "Number: {}. Even or odd?"))
  return Example(f"{template.format(n)}\n{templates.render_options(options)}",
                 options[n % 2], options)


def sentiment_word(rng: np.random.Generator) -> Example:
  positive = rng.random() < 0.5
  word = _pick(rng, _POSITIVE_WORDS if positive else _NEGATIVE_WORDS)
  sentence = _pick(rng, _SENTENCE_FRAMES).format(word)
  options = ("positive", "negative")
  template = _pick(rng, ("Sentiment of: {}", "'{}' feels?"))
  return Example(f"{template.format(sentence)}\n{templates.render_options(options)}",
                 options[0] if positive else options[1], options)


def larger_number(rng: np.random.Generator) -> Example:
  a, b = (int(x) for x in rng.choice(100, size=2, replace=False))
  options = (str(a), str(b))
  template = _pick(rng, ("Which is larger, {} or {}?", "Bigger of {} and {}?"))
  return Example(f"{template.format(a, b)}\n{templates.render_options(options)}",
                 str(max(a, b)), options)


# --------------------------------------------------------------------------
# The one table of cluster membership. Task name = TASK_PREFIX + builder name.

CLUSTERS: Mapping[str, tuple[ExampleBuilder, ...]] = {
    "string_edit": (reverse_word, uppercase_word, repeat_word),
    "arithmetic": (add_digits, successor, sum_choice),
    "classification": (parity, sentiment_word, larger_number),
}


def task_name(builder: ExampleBuilder) -> str:
  return TASK_PREFIX + builder.__name__


def task_names(clusters: Sequence[str] | None = None) -> list[str]:
  """Registered task names of the given clusters (all clusters by default)."""
  unknown = set(clusters or ()) - set(CLUSTERS)
  if unknown:
    raise ValueError(f"Unknown smoke cluster(s) {sorted(unknown)}; expected some of "
                     f"{sorted(CLUSTERS)}.")
  chosen = CLUSTERS if clusters is None else {c: CLUSTERS[c] for c in clusters}
  return [task_name(b) for builders in chosen.values() for b in builders]


def _builder_by_task_name() -> dict[str, ExampleBuilder]:
  return {task_name(b): b for builders in CLUSTERS.values() for b in builders}


@functools.lru_cache(maxsize=None)
def generate_examples(name: str, split: str) -> tuple[Example, ...]:
  """Deterministic examples of one task and split (same call -> same list)."""
  if split not in NUM_EXAMPLES:
    raise ValueError(f"Unknown split {split!r} for smoke task {name!r}; expected one "
                     f"of {sorted(NUM_EXAMPLES)}.")
  builder = _builder_by_task_name()[name]
  # crc32 rather than hash(): hash() of str is salted per Python process.
  rng = np.random.default_rng([zlib.crc32(name.encode()), _SPLIT_SEEDS[split]])
  return tuple(builder(rng) for _ in range(NUM_EXAMPLES[split]))


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                name: str) -> tf.data.Dataset:
  """seqio dataset_fn: built from tensors so tf.data iterators can checkpoint."""
  del shuffle_files, seed  # One in-memory "file"; the Task shuffle buffer shuffles.
  examples = generate_examples(name, split)
  columns = {
      "inputs": [e.inputs for e in examples],
      "targets": [e.targets for e in examples],
  }
  if examples[0].options:
    # Per-example option lists, kept for rank classification (seqio passes
    # extra features through single-task datasets; mixtures drop them).
    columns["options"] = [list(e.options) for e in examples]
  return tf.data.Dataset.from_tensor_slices(columns)


def _register() -> None:
  for name in task_names():
    registration.replace_task(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn=functools.partial(_dataset_fn, name=name),
            splits=tuple(NUM_EXAMPLES),
            num_input_examples=dict(NUM_EXAMPLES)),
        output_features=OUTPUT_FEATURES,
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        # Percentage of predictions equal to their target, surrounding whitespace ignored.
        metric_fns=[metrics.accuracy],
    )
  training = [c for c in CLUSTERS if c != HELD_OUT_CLUSTER]
  registration.replace_mixture("smoke_train", task_names(training))
  registration.replace_mixture("smoke_holdout_eval", task_names([HELD_OUT_CLUSTER]))
  # The held-out cluster scored by rank classification (<task>_rank copies): each option
  # is scored and the most likely one picked, so chance is 50% and untrained models
  # are not scored 0 for not yet writing a valid option.
  registration.replace_mixture(
      HELD_OUT_RANK_EVAL,
      [rank_classification.register_rank_classification_task(name)
       for name in task_names([HELD_OUT_CLUSTER])])
  registration.replace_mixture("smoke_all_train", task_names())
  # Leave-one-cluster-out variants for every cluster, FLAN style.
  for held_out in CLUSTERS:
    registration.replace_mixture(f"smoke_train_without_{held_out}",
                                 task_names([c for c in CLUSTERS if c != held_out]))
    registration.replace_mixture(f"smoke_eval_{held_out}", task_names([held_out]))


_register()
