"""seqio tasks and mixtures for instruction-augmented pre-training (IPT).

Tasks over data the user points to (usually from gin, see
gin_configs/experiments/ipt/):

  register_converted_task     synthesized (or mined) shards rendered as natural
                              text (instruct_jax.data.ipt.rendering), one
                              example per chain. decoder_only: "targets" only,
                              next-token loss on every token — what the paper
                              trains. encoder_decoder: texts + questions as
                              "inputs", answers as "targets" (a span-free prefix split).
  register_raw_text_task      raw documents (JSON lines with a text field or
                              blank-line-separated text files), one per example.
  register_instruction_text_task  an existing seqio task/mixture with inputs and
                              targets (e.g. a FLAN mixture) written as
                              "{question} {response}", no chat template.

Mixtures:

  register_pretrain_from_scratch_mixture   a fraction of DOCUMENTS converted
      (default 1/5), the rest raw text, optionally the synthesizer-tuning data
      (the TFDS QA contexts with their pairs, rendered like converted text).
      An example of the converted task is a chain of L documents on average,
      one of the raw task a single document, so the rates are f / L and 1 - f:
      the expected share of documents is then f.
  register_continual_pretrain_mixture      converted domain text and general
      instruction text 1:1 by TOKENS. seqio mixes by examples, so each rate is
      the wanted token share divided by the task's mean tokens per example,
      measured with the model's vocabulary on the first `token_sample_size`
      examples of each task when the mixture is registered.

Nothing here is registered at import: the data is the user's.
"""
from __future__ import annotations

import functools
import itertools
import random
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from instruct_jax.data.ipt import prompts
from instruct_jax.data.ipt import qa_datasets
from instruct_jax.data.ipt import rendering
from instruct_jax.data.ipt import synthesized_shards
from instruct_jax.data.ipt import tuning_examples
from instruct_jax.errors import UsageError
from instruct_jax.synthesis import corpus
from tasks_registry import registration
from tasks_registry.ipt import synthesizer_tuning

DEFAULT_CONVERTED_FRACTION = 0.2
DEFAULT_TOKEN_SAMPLE_SIZE = 2000
RAW_DOCUMENTS_PER_READ = 100_000
TRAIN = "train"


def _features(vocabulary: seqio.Vocabulary, architecture: str) -> dict[str, seqio.Feature]:
  targets = {"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
  if architecture == prompts.DECODER_ONLY:
    return targets
  if architecture == prompts.ENCODER_DECODER:
    return {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True), **targets}
  raise UsageError(f"Unknown architecture {architecture!r}; use one of "
                   f"{', '.join(prompts.ARCHITECTURES)}.")


def _only_train(split: str) -> None:
  if split != TRAIN:
    raise UsageError(f"IPT pre-training tasks have only a {TRAIN!r} split, not {split!r}.")


@functools.lru_cache(maxsize=16)  # read once per process: rates and data agree
def _chains(directory: str) -> tuple[synthesized_shards.Chain, ...]:
  return tuple(synthesized_shards.read_chains(directory))


def rendered_examples(directory: str, architecture: str = prompts.DECODER_ONLY,
                      seed: int = 0) -> list[dict[str, str]]:
  """One example per chain of the shards under `directory`, in file order."""
  examples = []
  for chain in _chains(directory):
    if architecture == prompts.ENCODER_DECODER:
      inputs, targets = rendering.render_chain_encoder_decoder(chain.links, chain.chain_id, seed)
      examples.append({"inputs": inputs, "targets": targets})
    else:
      examples.append({"targets": rendering.render_chain(chain.links, chain.chain_id, seed)})
  return examples


def _from_examples(examples: Sequence[Mapping[str, str]], shuffle_files: bool,
                   seed: int | None) -> tf.data.Dataset:
  examples = list(examples)
  if shuffle_files:
    random.Random(seed).shuffle(examples)
  keys = list(examples[0]) if examples else ["targets"]
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.constant([e[k] for e in examples], tf.string) for k in keys})


def _converted_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                          directory: str, architecture: str, render_seed: int):
  _only_train(split)
  return _from_examples(rendered_examples(directory, architecture, render_seed),
                        shuffle_files, seed)


def raw_documents(paths: Sequence[str], text_field: str = "text") -> list[str]:
  """The documents of a raw corpus, read as `instruct-jax synthesize` reads its input.

  JSON lines (`text_field`), or text files with blank-line-separated documents;
  records that are not usable documents (bad JSON, empty, ...) are skipped.
  """
  paths = [paths] if isinstance(paths, str) else list(paths)
  spec = corpus.CorpusSpec(tuple(paths), text_field=text_field)
  try:
    shards = corpus.plan_shards(spec, RAW_DOCUMENTS_PER_READ)
  except UsageError as error:
    raise UsageError(f"Raw text paths {paths}: {error}") from error
  return [r.text for shard in shards for r in corpus.read_shard(shard, spec) if r.text]


def _raw_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                    paths: tuple[str, ...], text_field: str):
  _only_train(split)
  documents = [{"targets": d} for d in raw_documents(paths, text_field)]
  return _from_examples(documents, shuffle_files, seed)


def _provider_dataset(provider, split: str, shuffle: bool, seed: int | None) -> tf.data.Dataset:
  kwargs = {"copy_pretokenized": True} if isinstance(provider, seqio.Mixture) else {}
  return provider.get_dataset(None, split=split, shuffle=shuffle, seed=seed, num_epochs=1,
                              **kwargs)


def _instruction_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                            source: str):
  provider = seqio.get_mixture_or_task(source)
  ds = _provider_dataset(provider, split, shuffle_files, seed)
  missing = {"inputs_pretokenized", "targets_pretokenized"} - set(ds.element_spec)
  if missing:
    raise UsageError(f"{source!r} has no {sorted(missing)}; instruction text needs a task with "
                     "text inputs and targets (seqio's tokenize preprocessor keeps them).")
  return ds.map(lambda ex: {"targets": tf.strings.join(
      [ex["inputs_pretokenized"], ex["targets_pretokenized"]], separator=" ")})


def _qa_text_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                        sources: tuple[str, ...], max_contexts: int | None,
                        data_dir: str | None, render_seed: int):
  _only_train(split)
  texts = []
  for name in sources:
    source = qa_datasets.SOURCES_BY_NAME[name]
    for i, example in enumerate(synthesizer_tuning.load_examples(
        source, TRAIN, max_contexts, data_dir)):
      texts.append({"targets": rendering.render_chain([(example.text, example.pairs)],
                                                      f"{name}:{i}", render_seed)})
  return _from_examples(texts, shuffle_files, seed)


def _required(value, argument: str, macro: str):
  """The experiment gins leave their data paths None; a run must set them."""
  if value is None or value == "" or value == []:
    raise UsageError(f"{argument} is not set: pass the path, e.g. --gin.{macro}=... "
                     "(see gin_configs/experiments/ipt/).")
  return value


def _register(name: str, dataset_fn, features: Mapping[str, seqio.Feature]) -> str:
  registration.replace_task(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=[TRAIN]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features)
  return name


def register_converted_task(name: str, synthesized_dir: str, vocabulary: seqio.Vocabulary,
                            architecture: str = prompts.DECODER_ONLY,
                            render_seed: int = 0) -> str:
  """Task `name` over the shards in `synthesized_dir`, rendered per chain; returns `name`."""
  features = _features(vocabulary, architecture)
  return _register(name, functools.partial(
      _converted_dataset_fn, directory=synthesized_dir, architecture=architecture,
      render_seed=render_seed), features)


def register_raw_text_task(name: str, paths: Sequence[str], vocabulary: seqio.Vocabulary,
                           text_field: str = "text") -> str:
  """Task `name`: one raw document per example ("targets"); returns `name`."""
  paths = (paths,) if isinstance(paths, str) else tuple(paths)
  return _register(name, functools.partial(_raw_dataset_fn, paths=paths, text_field=text_field),
                   _features(vocabulary, prompts.DECODER_ONLY))


def register_instruction_text_task(name: str, source: str,
                                   vocabulary: seqio.Vocabulary) -> str:
  """Task `name`: examples of task/mixture `source` as "{question} {response}" targets."""
  return _register(name, functools.partial(_instruction_dataset_fn, source=source),
                   _features(vocabulary, prompts.DECODER_ONLY))


def register_qa_text_task(name: str, vocabulary: seqio.Vocabulary,
                          sources: Sequence[str] | None = None,
                          max_contexts: int | None = tuning_examples.DEFAULT_MAX_CONTEXTS,
                          data_dir: str | None = None, render_seed: int = 0) -> str:
  """Task `name`: the synthesizer-tuning contexts and pairs as natural pre-training text."""
  names = tuple(sources) if sources else tuple(s.name for s in qa_datasets.SOURCES)
  unknown = [n for n in names if n not in qa_datasets.SOURCES_BY_NAME]
  if unknown:
    raise UsageError(f"Unknown QA sources {unknown}; choose from "
                     f"{', '.join(qa_datasets.SOURCES_BY_NAME)}.")
  return _register(name, functools.partial(
      _qa_text_dataset_fn, sources=names, max_contexts=max_contexts, data_dir=data_dir,
      render_seed=render_seed), _features(vocabulary, prompts.DECODER_ONLY))


def documents_per_chain(synthesized_dir: str) -> float:
  chains = _chains(synthesized_dir)
  if not chains:
    raise UsageError(f"No chains under {synthesized_dir!r}; the shards are empty.")
  return float(np.mean([c.num_documents for c in chains]))


def register_pretrain_from_scratch_mixture(
    name: str, synthesized_dir: str | None, raw_text_paths: Sequence[str] | None,
    vocabulary: seqio.Vocabulary, converted_fraction: float = DEFAULT_CONVERTED_FRACTION,
    text_field: str = "text", synthesizer_tuning_rate: float = 0.0,
    synthesizer_tuning_sources: Sequence[str] | None = None,
    tfds_data_dir: str | None = None, render_seed: int = 0) -> str:
  """Mixture `name`: converted chains + raw documents (+ synthesizer-tuning data); returns it.

  `converted_fraction` is the share of DOCUMENTS that are converted text. With
  `synthesizer_tuning_rate` > 0, the synthesizer-tuning QA data (rendered as
  text, `register_qa_text_task`) is mixed in at that many times the total rate
  of the other two.
  """
  _required(synthesized_dir, "synthesized_dir", "SYNTHESIZED_DIR")
  _required(raw_text_paths, "raw_text_paths", "RAW_TEXT_PATHS")
  if not 0.0 < converted_fraction < 1.0:
    raise UsageError(f"converted_fraction must be in (0, 1), got {converted_fraction}; use "
                     "the converted task alone for 1 and the raw task alone for 0.")
  converted = register_converted_task(f"{name}_converted", synthesized_dir, vocabulary,
                                      render_seed=render_seed)
  raw = register_raw_text_task(f"{name}_raw_text", raw_text_paths, vocabulary, text_field)
  rates = [(converted, converted_fraction / documents_per_chain(synthesized_dir)),
           (raw, 1.0 - converted_fraction)]
  if synthesizer_tuning_rate > 0:
    qa_text = register_qa_text_task(f"{name}_qa_text", vocabulary, synthesizer_tuning_sources,
                                    data_dir=tfds_data_dir, render_seed=render_seed)
    rates.append((qa_text, synthesizer_tuning_rate * sum(r for _, r in rates)))
  registration.replace_mixture(name, rates)
  return name


def mean_tokens_per_example(task_name: str, sample_size: int = DEFAULT_TOKEN_SAMPLE_SIZE,
                            feature: str = "targets") -> float:
  """Mean length in tokens of `feature` over the first `sample_size` (unshuffled) examples."""
  ds = _provider_dataset(seqio.get_mixture_or_task(task_name), TRAIN, False, None)
  lengths = [int(np.sum(ex[feature] != 0)) for ex in
             itertools.islice(ds.as_numpy_iterator(), sample_size)]
  if not lengths:
    raise UsageError(f"Task {task_name!r} has no training examples to measure.")
  return float(np.mean(lengths))


def register_continual_pretrain_mixture(
    name: str, synthesized_dir: str | None, instruction_source: str | None,
    vocabulary: seqio.Vocabulary, instruction_token_share: float = 0.5,
    token_sample_size: int = DEFAULT_TOKEN_SAMPLE_SIZE, render_seed: int = 0) -> str:
  """Mixture `name`: converted domain text + general instruction text, mixed by tokens.

  `instruction_source` is a seqio task/mixture with text inputs/targets (e.g. a
  FLAN mixture); `instruction_token_share` is its share of tokens (0.5 = 1:1).
  """
  _required(synthesized_dir, "synthesized_dir", "SYNTHESIZED_DIR")
  _required(instruction_source, "instruction_source", "INSTRUCTION_MIXTURE")
  if not 0.0 < instruction_token_share < 1.0:
    raise UsageError(f"instruction_token_share must be in (0, 1), got "
                     f"{instruction_token_share}.")
  converted = register_converted_task(f"{name}_converted", synthesized_dir, vocabulary,
                                      render_seed=render_seed)
  instruction = register_instruction_text_task(f"{name}_instructions", instruction_source,
                                                vocabulary)
  shares = {converted: 1.0 - instruction_token_share, instruction: instruction_token_share}
  rates = [(task, share / mean_tokens_per_example(task, token_sample_size))
           for task, share in shares.items()]
  registration.replace_mixture(name, rates)
  return name
