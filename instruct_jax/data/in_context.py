"""Class-balanced in-context classification prompts whose labels can be remapped.

The prompt of symbol tuning and of its evaluation suites: optionally an
instruction, then k exemplars of EVERY class (inputs and their label, in a
shuffled order), then the query; the target is the query's label:

    [instruction\\n\\n]Input: <exemplar>\\nAnswer: <label>\\n\\n ... Input: <query>\\nAnswer:

Labels are shown in one of three modes:
  "labels"   the dataset's natural labels ("negative", "positive");
  "symbols"  arbitrary symbols drawn per prompt from a symbol pool
             (instruct_jax.data.symbols): label i -> symbol i, the same mapping
             for every exemplar and the query of one prompt;
  "flipped"  natural labels rotated by one class (label i is shown as label
             i + 1 mod K; for two classes: swapped) in the exemplars AND the
             gold answer, to test whether a model follows the in-context
             mapping over its prior knowledge.

Exemplars come from a bounded in-memory pool: the first `pool_per_class`
examples of each class of the exemplar split (normally train), read once when
the pipeline is built. For each query, k of each class are picked with
stateless random ops seeded by (seed, example index), where the example index
is a fingerprint of the query's text, so prompts are reproducible, identical on
every host and independent of sharding and shuffling; pool examples whose text
equals the query are never used. Everything is plain tf.data over constant
tensors (no generators), so iterators checkpoint.

Token budget: when the prompt is too long, whole ROUNDS are dropped (one
exemplar of every class at a time), so prompts stay class-balanced; queries
for which not even one exemplar per class fits are dropped from the dataset.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from instruct_jax.data import symbols as symbols_lib

LABELS = "labels"
SYMBOLS = "symbols"
FLIPPED = "flipped"
LABEL_MODES = (LABELS, SYMBOLS, FLIPPED)

DEFAULT_NUM_PER_CLASS = 4
DEFAULT_POOL_PER_CLASS = 64
DEFAULT_MAX_SCAN = 50_000

# Random streams of one prompt besides the symbol draw (see symbols.stream_seed_tf).
_STREAM_EXEMPLARS = 11
_STREAM_ORDER = 12


@dataclasses.dataclass(frozen=True)
class InContextFormat:
  """Prefixes and separators of an in-context prompt.

  Single-field inputs are shown as `input_prefix` + text; multi-field inputs as
  one "Field name: value" line per field (the field names, not a prefix, say
  where each part starts). Field values longer than `max_field_chars`
  characters are cut, so one long document cannot crowd out the exemplars.
  """
  input_prefix: str = "Input: "
  target_prefix: str = "Answer: "
  target_separator: str = "\n"        # between an example's inputs and its target prefix
  exemplar_separator: str = "\n\n"    # between exemplars, and before the query
  instruction_separator: str = "\n\n"
  field_separator: str = "\n"
  max_field_chars: int | None = 1000

  def render_inputs(self, values: Mapping[str, str], fields: Sequence[str]) -> str:
    """Python form of render_inputs_tf (for docs and tests)."""
    def cut(text):
      text = text.strip()
      return text if self.max_field_chars is None else text[:self.max_field_chars]
    if len(fields) == 1:
      return self.input_prefix + cut(values[fields[0]])
    return self.field_separator.join(f"{field_label(f)}: {cut(values[f])}" for f in fields)

  def exemplar(self, inputs: str, label: str) -> str:
    return inputs + self.target_separator + self.target_prefix + label

  def query(self, inputs: str) -> str:
    return inputs + self.target_separator + self.target_prefix.rstrip()

  def prompt(self, exemplars: Sequence[str], query: str, instruction: str | None = None) -> str:
    body = self.exemplar_separator.join([*exemplars, query])
    return instruction + self.instruction_separator + body if instruction else body


def field_label(name: str) -> str:
  """'sentence1' -> 'Sentence 1', 'question_text' -> 'Question text'."""
  words = re.sub(r"(?<=[a-z])(?=\d)", " ", name).replace("_", " ")
  return words[:1].upper() + words[1:]


def render_inputs_tf(example: Mapping[str, tf.Tensor], fields: Sequence[str],
                     fmt: InContextFormat) -> tf.Tensor:
  """Scalar tf.string inputs text of one example (see InContextFormat)."""
  if not fields:
    raise ValueError("In-context prompts need at least one input field.")

  def cut(value):
    value = tf.strings.strip(value)
    if fmt.max_field_chars is None:
      return value
    return tf.strings.substr(value, 0, fmt.max_field_chars, unit="UTF8_CHAR")

  if len(fields) == 1:
    return tf.strings.join([fmt.input_prefix, cut(example[fields[0]])])
  lines = [tf.strings.join([field_label(f) + ": ", cut(example[f])]) for f in fields]
  return tf.strings.reduce_join(tf.stack(lines), separator=fmt.field_separator)


# --------------------------------------------------------------------------
# Exemplar pool.


@dataclasses.dataclass(frozen=True)
class ExemplarPool:
  """Rendered inputs of the first examples of each class: `texts[c]` for class c."""
  texts: tuple[tuple[str, ...], ...]

  @property
  def num_classes(self) -> int:
    return len(self.texts)

  def as_tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
    """(texts [K, N] tf.string padded with "", counts [K] int32)."""
    width = max(1, max(len(t) for t in self.texts))
    padded = [list(t) + [""] * (width - len(t)) for t in self.texts]
    return (tf.constant(padded, tf.string),
            tf.constant([len(t) for t in self.texts], tf.int32))


def collect_exemplar_pool(dataset: tf.data.Dataset, *, fields: Sequence[str],
                          label_names: Sequence[str], per_class: int,
                          fmt: InContextFormat, max_scan: int = DEFAULT_MAX_SCAN,
                          name: str = "dataset") -> ExemplarPool:
  """Reads up to `per_class` distinct examples of every class (eagerly, once).

  `dataset` yields the input fields and an int "label". Reading stops when
  every class is full or after `max_scan` examples; a class with no example
  at all is an error, since its prompts could not be balanced.
  """
  num_classes = len(label_names)

  def render(ex):
    return {"text": render_inputs_tf(ex, fields, fmt), "label": tf.cast(ex["label"], tf.int32)}

  pools = [dict() for _ in range(num_classes)]  # text -> None, insertion-ordered
  scanned = 0
  for ex in dataset.take(max_scan).map(render).as_numpy_iterator():
    scanned += 1
    label = int(ex["label"])
    if 0 <= label < num_classes and len(pools[label]) < per_class:
      pools[label][ex["text"].decode("utf-8")] = None
      if all(len(p) >= per_class for p in pools):
        break
  empty = [label_names[c] for c, p in enumerate(pools) if not p]
  if empty:
    raise ValueError(
        f"{name}: no exemplar of class(es) {empty} in the first {scanned} examples of its "
        "exemplar split, so class-balanced prompts cannot be built. Check the label "
        "mapping, or raise max_scan if the class is rare.")
  return ExemplarPool(tuple(tuple(p) for p in pools))


# --------------------------------------------------------------------------
# Prompts.


def _num_tokens(vocabulary: seqio.Vocabulary, text: tf.Tensor) -> tf.Tensor:
  return tf.size(vocabulary.encode_tf(text), out_type=tf.int32)


def in_context_prompts(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None = None,
    output_features: Mapping[str, seqio.Feature] | None = None,
    *,
    fields: Sequence[str],
    label_names: Sequence[str],
    exemplars_fn: Callable[[], tf.data.Dataset],
    label_mode: str = SYMBOLS,
    symbol_pools_fn: Callable[[], symbols_lib.SymbolPools] | None = None,
    instruction: str | None = None,
    num_per_class: int = DEFAULT_NUM_PER_CLASS,
    pool_per_class: int = DEFAULT_POOL_PER_CLASS,
    max_input_tokens: int | None = None,
    seed: int = 0,
    fmt: InContextFormat = InContextFormat(),
    max_scan: int = DEFAULT_MAX_SCAN,
    name: str = "dataset",
) -> tf.data.Dataset:
  """seqio preprocessor: classification examples -> in-context prompts.

  Input examples carry `fields` (text) and "label" (int index into
  `label_names`); `exemplars_fn()` gives such examples for the pool. The
  token budget is `max_input_tokens`, lowered to the task's input length minus
  EOS when seqio passes one (None and no length: no limit).

  Output features: inputs, targets, options ([K] the label strings of this
  prompt in class order, for rank classification), answers ([1] the target),
  label_index (the query's true class), exemplar_classes ([n] class of each
  exemplar in prompt order), num_per_class (exemplars of each class),
  symbol_family (index into symbols.FAMILIES; -1 without symbols) and
  example_index (the fingerprint that seeds the prompt).
  """
  if label_mode not in LABEL_MODES:
    raise ValueError(f"label_mode must be one of {LABEL_MODES}; got {label_mode!r}.")
  if label_mode == SYMBOLS and symbol_pools_fn is None:
    raise ValueError("label_mode='symbols' needs symbol_pools_fn (e.g. symbols.tuning_pools).")
  if len(label_names) < 2:
    raise ValueError(f"{name}: in-context classification needs at least two labels; got "
                     f"{list(label_names)}.")
  if num_per_class < 1 or pool_per_class < 1:
    raise ValueError(f"num_per_class and pool_per_class must be >= 1; got {num_per_class} "
                     f"and {pool_per_class}.")
  budget = max_input_tokens
  if sequence_length and sequence_length.get("inputs"):
    limit = int(sequence_length["inputs"]) - 1  # Room for EOS.
    budget = limit if budget is None else min(budget, limit)
  vocabulary = output_features["inputs"].vocabulary if budget is not None else None
  if budget is not None and vocabulary is None:
    raise ValueError("A token budget needs output_features (the inputs vocabulary).")

  num_classes = len(label_names)
  pool = collect_exemplar_pool(exemplars_fn(), fields=fields, label_names=label_names,
                               per_class=pool_per_class, fmt=fmt, max_scan=max_scan, name=name)
  pool_texts, pool_counts = pool.as_tensors()
  width = int(pool_texts.shape[1])
  k = min(num_per_class, width)
  natural = tf.constant(list(label_names), tf.string)
  pools = symbol_pools_fn() if label_mode == SYMBOLS else None
  head = (instruction + fmt.instruction_separator) if instruction else ""
  query_suffix = fmt.target_separator + fmt.target_prefix.rstrip()
  exemplar_infix = fmt.target_separator + fmt.target_prefix

  def build(ex):
    query_text = render_inputs_tf(ex, fields, fmt)
    example_index = symbols_lib.example_index_tf(query_text)
    prompt_seed = symbols_lib.prompt_seed_tf(seed, example_index)
    gold = tf.cast(ex["label"], tf.int32)

    if label_mode == SYMBOLS:
      options, family = symbols_lib.draw_symbols_tf(pools, num_classes, prompt_seed)
      shown = options
    else:
      options, family = natural, tf.constant(-1, tf.int32)
      # Flipped: class c is shown with the label of class c + 1 (mod K).
      shown = tf.roll(natural, shift=-1, axis=0) if label_mode == FLIPPED else natural

    # k candidates per class, in random order, never the query itself.
    scores = tf.random.stateless_uniform(
        [num_classes, width], seed=symbols_lib.stream_seed_tf(prompt_seed, _STREAM_EXEMPLARS))
    usable = ((tf.range(width)[tf.newaxis, :] < pool_counts[:, tf.newaxis])
              & tf.not_equal(pool_texts, query_text))
    order = tf.argsort(tf.where(usable, scores, 2.0), axis=1, stable=True)[:, :k]
    chosen = tf.gather(pool_texts, order, batch_dims=1)
    available = tf.reduce_min(tf.reduce_sum(
        tf.cast(tf.gather(usable, order, batch_dims=1), tf.int32), axis=1))

    # Shuffled display order of all candidates; round r = the r-th pick of each class.
    perm = tf.argsort(tf.random.stateless_uniform(
        [num_classes * k], seed=symbols_lib.stream_seed_tf(prompt_seed, _STREAM_ORDER)))
    texts = tf.gather(tf.reshape(chosen, [-1]), perm)
    classes = tf.gather(tf.repeat(tf.range(num_classes), k), perm)
    rounds = tf.gather(tf.tile(tf.range(k), [num_classes]), perm)
    pieces = tf.strings.join([texts, exemplar_infix, tf.gather(shown, classes)])
    query = tf.strings.join([query_text, query_suffix])

    def assemble(num_rounds):
      kept = tf.boolean_mask(pieces, rounds < num_rounds)
      body = tf.strings.reduce_join(tf.concat([kept, query[tf.newaxis]], axis=0),
                                    separator=fmt.exemplar_separator)
      return tf.strings.join([head, body])

    if budget is None:
      num_rounds = available
    else:
      piece_tokens = tf.map_fn(lambda p: _num_tokens(vocabulary, p), pieces,
                               fn_output_signature=tf.int32)
      separator_tokens = _num_tokens(vocabulary, tf.constant(fmt.exemplar_separator))
      per_round = tf.math.unsorted_segment_sum(piece_tokens + separator_tokens, rounds, k)
      fixed = _num_tokens(vocabulary, tf.strings.join([head, query]))
      fits = (fixed + tf.cumsum(per_round) <= budget) & (tf.range(1, k + 1) <= available)
      guess = tf.reduce_sum(tf.cast(fits, tf.int32))  # A prefix: cumsum only grows.

      def over_budget(num_rounds):
        return tf.logical_and(num_rounds > 0,
                              _num_tokens(vocabulary, assemble(num_rounds)) > budget)

      (num_rounds,) = tf.while_loop(over_budget, lambda n: (n - 1,), (guess,))

    return {
        "inputs": assemble(num_rounds),
        "targets": tf.gather(shown, gold),
        "options": options,
        "answers": tf.gather(shown, gold)[tf.newaxis],
        "label_index": gold,
        "exemplar_classes": tf.boolean_mask(classes, rounds < num_rounds),
        "num_per_class": num_rounds,
        "symbol_family": family,
        "example_index": example_index,
    }

  return dataset.map(build, num_parallel_calls=tf.data.AUTOTUNE).filter(
      lambda ex: ex["num_per_class"] > 0)

