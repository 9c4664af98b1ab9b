"""Smoke instruction tasks: tiny, procedurally generated, no network and no files.

They exist so that the whole FLAN-style loop (instruction-tune on some task
clusters, evaluate zero-shot on a held-out cluster) runs on a laptop CPU in
minutes with a byte-level T5. Every prompt fits the smoke feature lengths
(inputs 64 bytes, targets 16 bytes, EOS included) so nothing is truncated.

Clusters live in ONE table, `CLUSTERS` (cluster -> task builders); every
mixture below is derived from it, so adding a builder to a cluster is the only
edit needed to add a task.

Held-out cluster: "skill_choice". The training clusters teach skills by
generation: reverse, upper-case or repeat a word, count one up from a number
(and, as FLAN's training mixture has option-style tasks, one multiple-choice
sum). The held-out tasks ask for the result of those same skills as a
two-option question in a phrasing no training prompt uses ("Which is 'cat'
backwards?", "'cat' twice?", ...); the wrong option is a same-length near miss
of the right one (two letters swapped for reversal, one letter or digit
changed otherwise). Rank classification scores both options, so chance is 50%
and the untrained model sits near it; the gain of the trained model over the
initial one is transfer of learned skills to an unseen instruction and task
format, which is what FLAN's held-out clusters measure at scale. In the
400-step smoke run the string skills transfer (about +20 to +40 points) and
counting up barely does: telling 881 from 886 after "880" needs the increment
itself, and copying digits cannot help since both options are in the prompt.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Callable, Mapping, Sequence, TypeVar

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
HELD_OUT_CLUSTER = "skill_choice"
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
_T = TypeVar("_T")

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


def _pick(rng: np.random.Generator, items: Sequence[_T]) -> _T:
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
# Cluster "skill_choice" (held out): the skills above asked as multiple choice in
# a phrasing no training task uses. The distractor is a near miss of the right
# answer with the same length, so an untrained model has no reason to prefer
# either option and only a learned skill separates them.


def _with_one_character_changed(text: str, rng: np.random.Generator) -> str:
  """`text` with one letter or digit replaced by another of its kind; spaces stay.

  A leading digit never becomes 0, so a number stays a well-formed number.
  """
  position = _pick(rng, [i for i, c in enumerate(text) if c.isalnum()])
  old = text[position]
  if old.isdigit():
    pool = "123456789" if position == 0 and len(text) > 1 else "0123456789"
  else:
    pool = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if old.isupper() else "abcdefghijklmnopqrstuvwxyz"
  new = _pick(rng, [c for c in pool if c != old])
  return text[:position] + new + text[position + 1:]


def _with_two_letters_swapped(text: str, rng: np.random.Generator) -> str:
  """`text` with two neighbouring, different letters swapped (a one-character change
  when every neighbour pair is equal, as in 'aaa')."""
  positions = [i for i in range(len(text) - 1) if text[i] != text[i + 1]]
  if not positions:
    return _with_one_character_changed(text, rng)
  i = _pick(rng, positions)
  return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def _choice(rng: np.random.Generator, question: str, answer: str, distractor: str) -> Example:
  options = (answer, distractor) if rng.random() < 0.5 else (distractor, answer)
  return Example(f"{question}\n{templates.render_options(options)}", answer, options)


def reverse_choice(rng: np.random.Generator) -> Example:
  """Order matters: the distractor has the right letters, two of them swapped."""
  word = _short_word(rng)
  template = _pick(rng, ("Which is '{}' backwards?", "'{}' backwards: which one?"))
  return _choice(rng, template.format(word), word[::-1],
                 _with_two_letters_swapped(word[::-1], rng))


def uppercase_choice(rng: np.random.Generator) -> Example:
  word = _short_word(rng)
  template = _pick(rng, ("Which is '{}' in capitals?", "'{}' in upper case is?"))
  return _choice(rng, template.format(word), word.upper(),
                 _with_one_character_changed(word.upper(), rng))


def repeat_choice(rng: np.random.Generator) -> Example:
  word = _short_word(rng)
  answer = f"{word} {word}"
  return _choice(rng, f"'{word}' twice?", answer, _with_one_character_changed(answer, rng))


def successor_choice(rng: np.random.Generator) -> Example:
  n = int(rng.integers(0, 999))
  template = _pick(rng, ("Which option comes after {}?", "The number after {} is?"))
  return _choice(rng, template.format(n), str(n + 1),
                 _with_one_character_changed(str(n + 1), rng))


# --------------------------------------------------------------------------
# The one table of cluster membership. Task name = TASK_PREFIX + builder name.

CLUSTERS: Mapping[str, tuple[ExampleBuilder, ...]] = {
    "string_edit": (reverse_word, uppercase_word, repeat_word),
    "arithmetic": (add_digits, successor, sum_choice),
    "skill_choice": (reverse_choice, uppercase_choice, repeat_choice, successor_choice),
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
