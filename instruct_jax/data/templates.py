"""Instruction templates, options blocks, few-shot assembly and rank-classification rows.

A `Template` is a pair of `str.format`-style patterns (inputs, targets) over an
example's named text fields, e.g. `Template("Premise: {premise}\\n...", "{answer}")`.
Everything here exists twice on purpose: a plain-Python form (readable, used by
tests and docs) and a TensorFlow form used inside seqio preprocessors, which must
run in the tf.data graph. Both produce the same text.

Formats follow FLAN:
- options block: "OPTIONS:" then one "- option" line per option, appended after
  the instruction (classification tasks answer with the option text);
- few-shot: k exemplars "inputs<target_separator>targets" joined by the exemplar
  separator, then the query; exemplars are dropped from the END until the whole
  prompt fits a budget measured in vocabulary tokens;
- rank classification: one row per option (same inputs, the option as targets)
  carrying `example_id`, `option_index` and `is_correct`, so a scorer can pick
  the most likely option per example (see instruct_jax.eval.metrics).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import string
from typing import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

OPTIONS_HEADER = "OPTIONS:"
# Between the instruction and its options block.
OPTIONS_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class Template:
  """One instruction template.

  `turned_around` marks templates that invert the task (e.g. "write a positive
  review" for a sentiment dataset): they train the model but are not the task
  being evaluated, and they never get an options block.
  """
  inputs: str
  targets: str = "{answer}"
  turned_around: bool = False

  def fields(self) -> frozenset[str]:
    """Names of the fields the two patterns read."""
    return frozenset(pattern_fields(self.inputs)) | frozenset(pattern_fields(self.targets))

  def render(self, values: Mapping[str, str], options: Sequence[str] | None = None
             ) -> tuple[str, str]:
    """(inputs, targets) text; the options block is appended unless turned around."""
    inputs = fill_pattern(self.inputs, values)
    if options is not None and not self.turned_around:
      inputs = inputs + OPTIONS_SEPARATOR + render_options(options)
    return inputs, fill_pattern(self.targets, values)


def pattern_fields(pattern: str) -> list[str]:
  """Field names in a `str.format` pattern, in order ("{{" escapes a brace)."""
  names = []
  for _, name, format_spec, conversion in string.Formatter().parse(pattern):
    if name is None:
      continue
    if not name.isidentifier() or format_spec or conversion:
      raise ValueError(f"Template field {{{name}}} in {pattern!r} must be a plain "
                       "identifier such as {premise}, without format specs or "
                       "conversions; write '{{' or '}}' for a literal brace.")
    names.append(name)
  return names


def _pattern_parts(pattern: str) -> list[tuple[str, str | None]]:
  pattern_fields(pattern)  # Validates.
  return [(literal, name) for literal, name, _, _ in string.Formatter().parse(pattern)]


def fill_pattern(pattern: str, values: Mapping[str, str]) -> str:
  """Python rendering; field values are inserted verbatim (never re-parsed)."""
  out = []
  for literal, name in _pattern_parts(pattern):
    out.append(literal)
    if name is not None:
      if name not in values:
        raise KeyError(f"Template {pattern!r} needs field {name!r}, but the example only "
                       f"has {sorted(values)}.")
      out.append(values[name])
  return "".join(out)


def render_options(options: Sequence[str]) -> str:
  """'OPTIONS:' then one '- option' line per option."""
  if not options:
    raise ValueError("render_options got no options; classification examples need at "
                     "least one.")
  return OPTIONS_HEADER + "\n" + "\n".join(f"- {option}" for option in options)


# --------------------------------------------------------------------------
# TensorFlow forms (inside tf.data maps).


def fill_pattern_tf(pattern: str, fields: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Scalar tf.string rendering of `pattern` with scalar tf.string fields."""
  parts = []
  for literal, name in _pattern_parts(pattern):
    if literal:
      parts.append(tf.constant(literal))
    if name is not None:
      if name not in fields:
        raise KeyError(f"Template {pattern!r} needs field {name!r}, but the example only "
                       f"has {sorted(fields)}.")
      parts.append(tf.convert_to_tensor(fields[name], tf.string))
  if not parts:
    return tf.constant("")
  return tf.strings.join(parts)


def render_options_tf(options: tf.Tensor) -> tf.Tensor:
  """Scalar tf.string options block of a 1-D tf.string tensor of options."""
  return tf.strings.join([OPTIONS_HEADER + "\n- ",
                          tf.strings.reduce_join(options, separator="\n- ")])


def render_templates_tf(templates: Sequence[Template], fields: Mapping[str, tf.Tensor],
                        options: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
  """All templates rendered for one example: (inputs [T], targets [T]) tf.string.

  With `options` (1-D tf.string), inputs of templates that are not turned around
  end with the options block.
  """
  if not templates:
    raise ValueError("render_templates_tf needs at least one template.")
  block = None if options is None else render_options_tf(options)
  inputs, targets = [], []
  for template in templates:
    rendered = fill_pattern_tf(template.inputs, fields)
    if block is not None and not template.turned_around:
      rendered = tf.strings.join([rendered, OPTIONS_SEPARATOR, block])
    inputs.append(rendered)
    targets.append(fill_pattern_tf(template.targets, fields))
  return tf.stack(inputs), tf.stack(targets)


def choose_template_tf(key: tf.Tensor, candidates: Sequence[int], seed: int) -> tf.Tensor:
  """Deterministic, seeded template index for an example, from a key string.

  A keyed hash of the example's own text (not its position) picks among
  `candidates`, so the choice survives sharding, shuffling and re-runs; another
  `seed` gives another assignment.
  """
  if not candidates:
    raise ValueError("choose_template_tf needs at least one candidate template index.")
  if len(candidates) == 1:
    return tf.constant(candidates[0], tf.int32)
  bucket = tf.strings.to_hash_bucket_strong(key, len(candidates), key=[int(seed), 0x5EED])
  return tf.gather(tf.constant(list(candidates), tf.int32), bucket)


# --------------------------------------------------------------------------
# Few-shot assembly.


@dataclasses.dataclass(frozen=True)
class FewShotFormat:
  """How exemplars and the query are joined (FLAN's separators by default)."""
  target_separator: str = "\n\n"    # between an exemplar's inputs and its target
  exemplar_separator: str = "\n\n\n"  # between exemplars, and before the query

  def exemplar(self, inputs: str, targets: str) -> str:
    return inputs + self.target_separator + targets

  def join(self, exemplars: Sequence[str], query: str) -> str:
    return self.exemplar_separator.join([*exemplars, query])


def assemble_few_shot(exemplars: Sequence[tuple[str, str]], query: str,
                      max_tokens: int | None, count_tokens: Callable[[str], int],
                      fmt: FewShotFormat = FewShotFormat()) -> tuple[str, int]:
  """(prompt, number of exemplars kept): drop exemplars from the end until it fits.

  `count_tokens` measures a string in vocabulary tokens; `max_tokens=None`
  keeps every exemplar. If the query alone is over budget the query is
  returned by itself (the pipeline truncates it later).
  """
  pieces = [fmt.exemplar(i, t) for i, t in exemplars]
  keep = len(pieces)
  while keep > 0 and max_tokens is not None and count_tokens(
      fmt.join(pieces[:keep], query)) > max_tokens:
    keep -= 1
  return fmt.join(pieces[:keep], query), keep


def _num_tokens_tf(vocabulary: seqio.Vocabulary, text: tf.Tensor) -> tf.Tensor:
  return tf.size(vocabulary.encode_tf(text), out_type=tf.int32)


def assemble_few_shot_tf(exemplar_inputs: tf.Tensor, exemplar_targets: tf.Tensor,
                         query: tf.Tensor, max_tokens: int | None,
                         vocabulary: seqio.Vocabulary,
                         fmt: FewShotFormat = FewShotFormat()) -> tuple[tf.Tensor, tf.Tensor]:
  """Graph version of `assemble_few_shot`; exemplars are 1-D tf.string tensors.

  Exact: the assembled prompt itself is tokenized. A first guess from the
  exemplars' individual lengths avoids re-tokenizing long prompts many times;
  the loop then removes exemplars until the real prompt fits.
  """
  pieces = tf.strings.join([exemplar_inputs, fmt.target_separator, exemplar_targets])
  num_pieces = tf.size(pieces, out_type=tf.int32)

  def assemble(keep):
    return tf.strings.reduce_join(tf.concat([pieces[:keep], query[tf.newaxis]], axis=0),
                                  separator=fmt.exemplar_separator)

  if max_tokens is None:
    return assemble(num_pieces), num_pieces
  piece_lengths = tf.map_fn(lambda p: _num_tokens_tf(vocabulary, p), pieces,
                            fn_output_signature=tf.int32)
  separator_length = _num_tokens_tf(vocabulary, tf.constant(fmt.exemplar_separator))
  needed = (tf.cumsum(piece_lengths + separator_length)
            + _num_tokens_tf(vocabulary, query))
  guess = tf.reduce_sum(tf.cast(needed <= max_tokens, tf.int32))

  def over_budget(keep):
    return tf.logical_and(keep > 0, _num_tokens_tf(vocabulary, assemble(keep)) > max_tokens)

  (keep,) = tf.while_loop(over_budget, lambda keep: (keep - 1,), (guess,))
  return assemble(keep), keep


# --------------------------------------------------------------------------
# Rank classification.


_RANK_ROW_FEATURES = frozenset({"inputs", "targets", "options", "answers", "example_id",
                                "option_index", "is_correct"})
_RANK_EXAMPLE_LIMIT: contextvars.ContextVar = contextvars.ContextVar(
    "rank_classification_example_limit", default=None)


@contextlib.contextmanager
def rank_classification_example_limit(num_examples: int | None):
  """While active, rank_classification_rows keeps only the first `num_examples` examples.

  seqio.Evaluator(num_examples=N) caps the rows its task datasets yield, i.e.
  after the per-option expansion, so N rows can stop inside an example and
  score it on only some of its options. Build the Evaluator inside this
  context (the datasets are made there) and do not also pass it num_examples
  for rank-classification tasks: the cap then counts examples and keeps all
  their rows. None or 0: no cap. Not applied to rows read from a seqio cache
  (use_cached), which were expanded when the cache was made.
  """
  if num_examples is not None and num_examples < 0:
    raise ValueError(f"num_examples={num_examples} must be positive (or None for all).")
  token = _RANK_EXAMPLE_LIMIT.set(num_examples or None)
  try:
    yield
  finally:
    _RANK_EXAMPLE_LIMIT.reset(token)


def rank_classification_rows(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """seqio preprocessor: each example -> one row per option, for score-based eval.

  Reads "inputs" (scalar), "options" (1-D) and "answers" (1-D correct answers;
  "targets" when absent). Every row has the same inputs, one option as
  "targets", and:
    example_id   int64  keyed hash of the inputs and options: groups the rows of
                        one example, whatever the sharding or order;
    option_index int32  position of the option;
    is_correct   bool   the option is one of the answers.
  Other scalar features (e.g. "template_index") are copied onto every row;
  other vector features are dropped. Identical duplicate examples share an id
  and are scored as one example. Inside rank_classification_example_limit(N)
  only the first N examples are expanded.
  """
  limit = _RANK_EXAMPLE_LIMIT.get()
  if limit:
    dataset = dataset.take(limit)  # Count examples, before they become option rows.
  def expand(ex):
    options = ex["options"]
    num_options = tf.size(options)
    # Other per-example scalars (e.g. template_index) are copied onto every row.
    extras = {k: tf.fill([num_options], v) for k, v in ex.items()
              if k not in _RANK_ROW_FEATURES and v.shape.rank == 0}
    answers = ex["answers"] if "answers" in ex else ex["targets"][tf.newaxis]
    key = tf.strings.join([ex["inputs"], tf.strings.reduce_join(options, separator="\x1f")],
                          separator="\x1e")
    example_id = tf.strings.to_hash_bucket_fast(key, 2**62)
    is_correct = tf.reduce_any(tf.equal(options[:, tf.newaxis], answers[tf.newaxis, :]), axis=1)
    return {
        **extras,
        "inputs": tf.fill([num_options], ex["inputs"]),
        "targets": options,
        "example_id": tf.fill([num_options], example_id),
        "option_index": tf.range(num_options, dtype=tf.int32),
        "is_correct": is_correct,
    }

  # No Python control flow on tensors inside: skip AutoGraph's conversion.
  expand = tf.autograph.experimental.do_not_convert(expand)
  return dataset.map(expand, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
