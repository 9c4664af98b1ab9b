"""seqio preprocessors that turn a FLAN dataset's TFDS examples into prompts.

Pipeline of every FLAN task:
  prepare_fields    raw TFDS example -> named text fields + answer/options/answers
  apply_templates   -> "inputs"/"targets" from one template (deterministic per
                       example), or apply_templates_few_shot (exemplars first)
  [rank_classification_rows]   evaluation of datasets with options
  tokenize, (cache), append_eos_after_trim

Three prompt formats: zero-shot with options (the default), zero-shot without
options, and few-shot (exemplars from the train split, pruned to a token budget).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from instruct_jax.data import templates as templates_lib
from tasks_registry.flan.datasets import DatasetSpec

# FLAN's few-shot settings: up to 16 exemplars, inputs pruned to 960 tokens
# (further limited by the task's input length when one is given).
DEFAULT_NUM_SHOTS = 16
DEFAULT_FEW_SHOT_MAX_INPUT_TOKENS = 960
_EXEMPLAR_SHUFFLE_BUFFER = 1000


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How a prompt is built; `name` is its task-name suffix ("" for the default)."""
  name: str
  with_options: bool
  few_shot: bool = False


ZERO_SHOT = PromptFormat("", with_options=True)
NO_OPTIONS = PromptFormat("no_options", with_options=False)
FEW_SHOT = PromptFormat("few_shot", with_options=True, few_shot=True)
FORMATS = (ZERO_SHOT, NO_OPTIONS, FEW_SHOT)


# Map functions here use explicit tf.cond / tf.while_loop and Python-level
# branching on static facts only; skipping AutoGraph's source conversion makes
# building a task's pipeline several times faster.
_no_autograph = tf.autograph.experimental.do_not_convert


# --------------------------------------------------------------------------
# Raw example -> fields.


def _finalize_fields(raw: Mapping[str, tf.Tensor], spec: DatasetSpec) -> dict[str, tf.Tensor]:
  """Uniform example: the spec's fields, answer, options (maybe empty), answers, _keep."""
  out = dict(raw)
  if spec.has_options:
    if spec.options:
      options = tf.constant(list(spec.options))
    else:
      options = tf.strings.strip(tf.reshape(out.pop("options"), [-1]))
    num_options = tf.size(options)
    if "label" in out:
      label = tf.cast(out.pop("label"), tf.int32)
      keep = (label >= 0) & (label < num_options)
      padded = tf.concat([options, [""]], axis=0)  # Safe gather when the label is invalid.
      answer = tf.gather(padded, tf.clip_by_value(label, 0, num_options))
    else:
      answer = tf.strings.strip(out.pop("answer"))
      keep = tf.reduce_any(tf.equal(options, answer))
  else:
    options = tf.zeros([0], tf.string)
    answer = tf.strings.strip(out.pop("answer"))
    keep = tf.strings.length(answer) > 0
  answers = out.pop("answers", None)
  answers = answer[tf.newaxis] if answers is None else tf.strings.strip(tf.reshape(answers, [-1]))
  if set(out) != set(spec.fields):
    raise ValueError(f"{spec.name}: to_fields returned fields {sorted(out)} but the spec "
                     f"declares {sorted(spec.fields)}; make DatasetSpec.fields match.")
  fields = {name: tf.strings.strip(tf.convert_to_tensor(out[name], tf.string))
            for name in spec.fields}
  return {**fields, "answer": answer, "options": options, "answers": answers, "_keep": keep}


def prepare_fields(dataset: tf.data.Dataset, *, spec: DatasetSpec,
                   params: Mapping[str, str]) -> tf.data.Dataset:
  """seqio preprocessor: raw TFDS examples -> template fields (invalid labels dropped)."""
  def to_fields(ex):
    return _finalize_fields(spec.to_fields(ex, **params), spec)

  dataset = dataset.map(_no_autograph(to_fields), num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.filter(lambda ex: ex["_keep"])
  return dataset.map(lambda ex: {k: v for k, v in ex.items() if k != "_keep"},
                     num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------
# Fields -> prompts.


def _template_values(ex: Mapping[str, tf.Tensor], spec: DatasetSpec) -> dict[str, tf.Tensor]:
  return {**{name: ex[name] for name in spec.fields}, "answer": ex["answer"]}


def _choice_key(ex: Mapping[str, tf.Tensor], spec: DatasetSpec) -> tf.Tensor:
  parts = [ex[name] for name in sorted(spec.fields)] + [ex["answer"]]
  return tf.strings.reduce_join(tf.stack(parts), separator="\x1f")


def _render_all(ex, spec, templates, with_options):
  values = _template_values(ex, spec)
  options = ex["options"] if (with_options and spec.has_options) else None
  return templates_lib.render_templates_tf(templates, values, options)


def apply_templates(dataset: tf.data.Dataset, *, spec: DatasetSpec,
                    templates: Sequence[templates_lib.Template], candidates: Sequence[int],
                    with_options: bool, template_seed: int) -> tf.data.Dataset:
  """seqio preprocessor: zero-shot prompts from one of `candidates` per example.

  Output: inputs, targets, options, answers, template_index.
  """
  def render(ex):
    inputs, targets = _render_all(ex, spec, templates, with_options)
    index = templates_lib.choose_template_tf(_choice_key(ex, spec), candidates, template_seed)
    return {"inputs": inputs[index], "targets": targets[index], "options": ex["options"],
            "answers": ex["answers"], "template_index": index}

  return dataset.map(_no_autograph(render), num_parallel_calls=tf.data.AUTOTUNE)


def apply_templates_few_shot(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None = None,
    output_features: Mapping[str, seqio.Feature] | None = None,
    *,
    spec: DatasetSpec,
    templates: Sequence[templates_lib.Template],
    candidates: Sequence[int],
    with_options: bool,
    template_seed: int,
    exemplars_fn: Callable[[], tf.data.Dataset],
    num_shots: int = DEFAULT_NUM_SHOTS,
    max_input_tokens: int | None = DEFAULT_FEW_SHOT_MAX_INPUT_TOKENS,
    exemplar_seed: int = 0,
    few_shot_format: templates_lib.FewShotFormat = templates_lib.FewShotFormat(),
) -> tf.data.Dataset:
  """seqio preprocessor: few-shot prompts, exemplars rendered with the query's template.

  `exemplars_fn()` gives prepared (`prepare_fields`) exemplar examples, normally
  the train split; an exemplar equal to the query (same inputs and target) is
  never used. The budget is `max_input_tokens`, lowered to the task's input
  length minus EOS when the pipeline passes one; tokens are counted with the
  task's input vocabulary.
  Output adds "num_shots" (exemplars kept) to apply_templates's features.
  """
  if num_shots < 1:
    raise ValueError(f"Few-shot prompts need num_shots >= 1; got {num_shots}.")
  budget = max_input_tokens
  if sequence_length and sequence_length.get("inputs"):
    limit = int(sequence_length["inputs"]) - 1  # Room for EOS.
    budget = limit if budget is None else min(budget, limit)
  vocabulary = output_features["inputs"].vocabulary

  def render_exemplar(ex):
    inputs, targets = _render_all(ex, spec, templates, with_options)
    return {"inputs_all": inputs, "targets_all": targets}

  # Shuffle the cheap field dicts; render only the exemplars actually drawn.
  exemplars = exemplars_fn().shuffle(_EXEMPLAR_SHUFFLE_BUFFER, seed=exemplar_seed).repeat()
  exemplars = exemplars.map(_no_autograph(render_exemplar),
                            num_parallel_calls=tf.data.AUTOTUNE)
  # One spare exemplar replaces one that equals the query.
  exemplars = exemplars.batch(num_shots + 1, drop_remainder=True)

  def render(ex, shots):
    inputs, targets = _render_all(ex, spec, templates, with_options)
    index = templates_lib.choose_template_tf(_choice_key(ex, spec), candidates, template_seed)
    query = inputs[index]
    shot_inputs = shots["inputs_all"][:, index]
    shot_targets = shots["targets_all"][:, index]
    # Inputs alone can coincide (turned-around templates without fields in the inputs).
    distinct = tf.logical_or(tf.not_equal(shot_inputs, query),
                             tf.not_equal(shot_targets, targets[index]))
    shot_inputs = tf.boolean_mask(shot_inputs, distinct)[:num_shots]
    shot_targets = tf.boolean_mask(shot_targets, distinct)[:num_shots]
    prompt, kept = templates_lib.assemble_few_shot_tf(
        shot_inputs, shot_targets, query, budget, vocabulary, few_shot_format)
    return {"inputs": prompt, "targets": targets[index], "options": ex["options"],
            "answers": ex["answers"], "template_index": index, "num_shots": kept}

  return tf.data.Dataset.zip((dataset, exemplars)).map(
      _no_autograph(render), num_parallel_calls=tf.data.AUTOTUNE)
