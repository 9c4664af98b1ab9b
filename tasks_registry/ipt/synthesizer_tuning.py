"""seqio tasks that tune an instruction synthesizer on context-based QA datasets from TFDS.

  ipt_synthesizer_<source>   one per instruct_jax.data.ipt.qa_datasets.SOURCES (squad, coqa,
                             quac, drop, boolq, multirc, race_high, race_middle, trivia_qa,
                             cosmos_qa, qasc, hotpot_qa); splits train / validation.
  ipt_synthesizer_tuning     the mixture over them.

Registered by `register_synthesizer_tuning_tasks` (from gin, see
gin_configs/experiments/ipt/tune_synthesizer.gin), since the examples are
tokenized and concatenated with the model's vocabulary up to its sequence
length when a dataset is first built:

  decoder_only     "targets": several examples of one dataset back to back (`<s>` /
                   `</s>` as BOS / EOS ids, as `instruct-jax synthesize` prompts), and
                   "targets_roles": context / pair per token. Train with
                   instruct_jax.data.ipt.pair_loss.PairLossDecoderOnlyModel, whose
                   feature converter gives loss weight 1 to pair tokens only.
  encoder_decoder  "inputs": one serialised context, "targets": its pairs and `</s>`
                   (the EOS id), tokenized the same way.

Each dataset contributes at most `max_contexts` contexts (those with the most
pairs). Mixing rates are equal per dataset unless `rates` says otherwise.
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

from absl import logging
import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from instruct_jax.data.ipt import pair_loss
from instruct_jax.data.ipt import prompts
from instruct_jax.data.ipt import qa_datasets
from instruct_jax.data.ipt import synthesizer_format as fmt
from instruct_jax.data.ipt import tuning_examples
from instruct_jax.errors import UsageError
from instruct_jax.synthesis import prompt_tokens
from tasks_registry import registration

PREFIX = "ipt_synthesizer"
MIXTURE = "ipt_synthesizer_tuning"
DEFAULT_TASK_FEATURE_LENGTHS = {"targets": 4096}


def load_examples(source: qa_datasets.QASource, split: str, max_contexts: int | None,
                  data_dir: str | None = None) -> list[tuning_examples.TuningExample]:
  """The source's examples for our split name ('train' / 'validation')."""
  ds = tfds.load(source.tfds_name, split=source.splits[split], data_dir=data_dir,
                 shuffle_files=False)
  items = (item for row in tfds.as_numpy(ds) for item in source.items(row))
  return tuning_examples.group_by_context(items, max_contexts)


def marker_ids(vocabulary: seqio.Vocabulary, text: str) -> list[int]:
  """Ids of serialised synthesizer text as the synthesis prompts get them.

  `<s>` / `</s>` become the vocabulary's BOS / EOS ids (no BOS id: nothing, as
  for an encoder input: id 0 is padding inside a training sequence).
  """
  return prompt_tokens.encode_prompt(vocabulary, text, decoder_only=False)


def _token_dataset(rows: Sequence[Mapping[str, np.ndarray]],
                   keys: Sequence[str]) -> tf.data.Dataset:
  """Variable-length int32 rows as a dataset of slices of one flat tensor per key.

  Not from_generator: its Python state cannot be checkpointed with the
  trainer's tf.data iterator.
  """
  bounds, flat = {}, {}
  for key in keys:
    lengths = np.asarray([len(r[key]) for r in rows], np.int64)
    ends = np.cumsum(lengths)
    bounds[key] = (ends - lengths, ends)
    flat[key] = tf.constant(np.concatenate([r[key] for r in rows]) if rows
                            else np.zeros([0], np.int32), tf.int32)
  return tf.data.Dataset.from_tensor_slices(bounds).map(
      lambda b: {k: flat[k][b[k][0]:b[k][1]] for k in keys})


class _TuningData:
  """The dataset_fn of one source: builds each split once per process, then replays it."""

  def __init__(self, source_name: str, vocabulary: seqio.Vocabulary, sequence_length: int,
               max_contexts: int | None, data_dir: str | None, architecture: str):
    self.source = qa_datasets.SOURCES_BY_NAME[source_name]
    self.vocabulary = vocabulary
    self.sequence_length = sequence_length
    self.max_contexts = max_contexts
    self.data_dir = data_dir
    self.architecture = architecture
    self._built: dict[str, list] = {}

  def _build(self, split: str) -> list:
    examples = load_examples(self.source, split, self.max_contexts, self.data_dir)
    encode = functools.partial(marker_ids, self.vocabulary)
    if self.architecture == prompts.ENCODER_DECODER:
      return [{"inputs": np.asarray(encode(fmt.serialize_context(e.text)), np.int32),
               "targets": np.asarray(encode(fmt.serialize_pairs(e.pairs) + fmt.EOS), np.int32)}
              for e in examples]
    sequences, dropped = tuning_examples.tuning_sequences(
        examples, encode, self.sequence_length)
    logging.info("%s %s: %d contexts -> %d sequences of <= %d tokens (%d contexts too long)",
                 self.source.name, split, len(examples), len(sequences),
                 self.sequence_length, dropped)
    return sequences

  def __call__(self, split: str, shuffle_files: bool, seed: int | None = None
               ) -> tf.data.Dataset:
    if split not in self._built:
      self._built[split] = self._build(split)
    built = self._built[split]
    if self.architecture == prompts.ENCODER_DECODER:
      return _token_dataset(built, ("inputs", "targets"))
    return _token_dataset(built, ("targets", pair_loss.ROLES))


def _features(vocabulary: seqio.Vocabulary, architecture: str) -> dict[str, seqio.Feature]:
  if architecture == prompts.ENCODER_DECODER:
    return {k: seqio.Feature(vocabulary, add_eos=False) for k in ("inputs", "targets")}
  if architecture != prompts.DECODER_ONLY:
    raise UsageError(f"Unknown architecture {architecture!r}; use one of "
                     f"{', '.join(prompts.ARCHITECTURES)}.")
  # `</s>` is text of the format, so no EOS id is appended.
  return {"targets": seqio.Feature(vocabulary, add_eos=False),
          pair_loss.ROLES: seqio.Feature(seqio.PassThroughVocabulary(3),
                                                add_eos=False)}


def register_synthesizer_tuning_tasks(
    vocabulary: seqio.Vocabulary,
    task_feature_lengths: Mapping[str, int] = DEFAULT_TASK_FEATURE_LENGTHS,
    max_contexts: int | None = tuning_examples.DEFAULT_MAX_CONTEXTS,
    sources: Sequence[str] | None = None, rates: Mapping[str, float] | None = None,
    architecture: str = prompts.DECODER_ONLY, data_dir: str | None = None,
    prefix: str = PREFIX, mixture: str = MIXTURE) -> str:
  """Registers <prefix>_<source> tasks and their mixture; returns the mixture's name.

  Args:
    vocabulary: the synthesizer's vocabulary.
    task_feature_lengths: the training lengths (TASK_FEATURE_LENGTHS); decoder-only
      sequences are filled up to its 'targets' length.
    max_contexts: contexts per dataset and split (None = all).
    sources: source names (default all of qa_datasets.SOURCES).
    rates: source -> mixing rate (default 1 each).
    architecture: 'decoder_only' or 'encoder_decoder'.
    data_dir: TFDS data directory (default TFDS's).
  """
  names = list(sources) if sources else [s.name for s in qa_datasets.SOURCES]
  unknown = [n for n in names if n not in qa_datasets.SOURCES_BY_NAME]
  if unknown:
    raise UsageError(f"Unknown synthesizer-tuning sources {unknown}; choose from "
                     f"{', '.join(qa_datasets.SOURCES_BY_NAME)}.")
  sequence_length = int(task_feature_lengths["targets"])
  if sequence_length < 16:
    raise UsageError(f"TASK_FEATURE_LENGTHS['targets'] = {sequence_length} is too short for "
                     "synthesizer-tuning sequences; use the model's context (e.g. 4096).")
  features = _features(vocabulary, architecture)
  tasks = []
  for name in names:
    task = f"{prefix}_{name}"
    registration.replace_task(
        task,
        source=seqio.FunctionDataSource(
            _TuningData(name, vocabulary, sequence_length, max_contexts, data_dir,
                        architecture),
            splits=["train", "validation"]),
        preprocessors=[],
        output_features=features)
    tasks.append((task, float((rates or {}).get(name, 1.0))))
  registration.replace_mixture(mixture, [(t, r) for t, r in tasks if r > 0])
  return mixture
