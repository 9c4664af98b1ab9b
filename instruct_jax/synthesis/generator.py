"""The synthesizer model: batched, jit-compiled decoding of synthesis prompts.

Goes through the evaluation clients' path (eval.session.EvalSession: params of
any checkpoint format params_io reads, laid out on a mesh; its ModelRunner's
jitted predict_batch with the KV cache), on this process's own devices only:
in a multi-process job each process synthesizes its own shards, so nothing is
exchanged between hosts while decoding.

Prompts are decoded in order of length, each batch padded to a power-of-two
bucket of its longest prompt (capped at the budget), so short documents do not
pay for the full context and only a handful of shapes compile.
  * decoder-only: decoder_input_tokens = the prompt (its first token the BOS, or
    seqio's start id), decoder_causal_attention marks it; the model continues it.
    Budget = context_length - max_new_tokens.
  * encoder-decoder: the prompt (plus EOS) is the encoder input; the decoder
    writes the pairs. Budget = context_length (the encoder length).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import tensorflow as tf

from instruct_jax.data.ipt import prompts as prompts_lib
from instruct_jax.errors import UsageError
from instruct_jax.eval import runner as runner_lib
from instruct_jax.eval import session as session_lib
from instruct_jax.models import decoder_only
from instruct_jax.models import decoding
from instruct_jax.synthesis import prompt_tokens
from instruct_jax.synthesis import rounds as rounds_lib
from instruct_jax.train import partitioning

_MIN_BUCKET = 16
# Called with the generations of each decoded batch (for the progress line).
BatchDone = Callable[[Sequence[rounds_lib.Generation]], None]


def architecture_of(model: Any) -> str:
  if isinstance(model, decoder_only.DecoderOnlyModel):
    return prompts_lib.DECODER_ONLY
  return prompts_lib.ENCODER_DECODER


def _bucket(length: int, cap: int) -> int:
  size = _MIN_BUCKET
  while size < length:
    size *= 2
  return min(size, cap)


class ModelGenerator:
  """Loads a checkpoint into `model` and turns synthesis prompts into generations."""

  def __init__(self, model: Any, checkpoint_path: str, *, context_length: int,
               max_new_tokens: int, batch_size: int,
               decode_cfg: Optional[decoding.DecodeConfig] = None, num_partitions: int = 1,
               parameter_partitioning_dims: int = 1, seed: int = 0):
    self.architecture = architecture_of(model)
    self.decoder_only = self.architecture == prompts_lib.DECODER_ONLY
    if max_new_tokens < 1:
      raise UsageError(f"max_new_tokens={max_new_tokens}; it must be >= 1.")
    self.budget_tokens = context_length - (max_new_tokens if self.decoder_only else 0)
    if self.budget_tokens < 16:
      raise UsageError(f"context_length={context_length} leaves a prompt budget of "
                       f"{self.budget_tokens} tokens after {max_new_tokens} new tokens; raise "
                       "CONTEXT_LENGTH or lower MAX_NEW_TOKENS.")
    self.model = model
    self.vocabulary = model.output_vocabulary
    self.max_new_tokens = max_new_tokens
    decode_cfg = decode_cfg or decoding.DecodeConfig()
    if decode_cfg.method == "beam":
      raise UsageError("synthesize decodes greedily or by sampling; set DECODE_METHOD to "
                       "'greedy' or 'sample'.")
    self.decode_cfg = dataclasses.replace(decode_cfg, max_decode_length=max_new_tokens
                                          ).for_vocabulary(self.vocabulary)
    partitioner = partitioning.Partitioner(num_partitions, parameter_partitioning_dims,
                                           devices=jax.local_devices())
    data_parallel = partitioner.data_parallel_size
    if batch_size < 1 or batch_size % data_parallel:
      suggestion = max(1, batch_size // data_parallel) * data_parallel
      raise UsageError(f"BATCH_SIZE={batch_size} must be a positive multiple of this "
                       f"process's data-parallel size {data_parallel} (local devices / "
                       f"NUM_PARTITIONS); use e.g. {suggestion}.")
    self.session = session_lib.EvalSession(model, partitioner, batch_size, self.decode_cfg,
                                           seed)
    self.step = self.session.load(checkpoint_path)
    self._seed = seed

  def count_tokens(self, text: str) -> int:
    """Tokens the prompt `text` takes (encoder inputs: with their EOS)."""
    ids = prompt_tokens.encode_prompt(self.vocabulary, text, decoder_only=self.decoder_only)
    return len(ids) + (0 if self.decoder_only else 1)

  def _features(self, ids: list[int], bucket: int) -> dict[str, np.ndarray]:
    if self.decoder_only:
      tokens = np.zeros(bucket + self.max_new_tokens, np.int32)
      tokens[:len(ids)] = ids
      causal = np.zeros_like(tokens)
      causal[:len(ids)] = 1
      return {"decoder_input_tokens": tokens, "decoder_causal_attention": causal}
    inputs = np.zeros(bucket, np.int32)
    inputs[:len(ids) + 1] = ids + [self.vocabulary.eos_id]
    return {"encoder_input_tokens": inputs,
            "decoder_target_tokens": np.zeros(self.max_new_tokens, np.int32)}

  def _dataset(self, encoded: list[list[int]], order: list[int]) -> tf.data.Dataset:
    """(index, features) in `order`; each batch padded to the bucket of its longest prompt."""
    batch_size = self.session.runner.batch_size
    extra = 0 if self.decoder_only else 1

    def generate():
      for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        bucket = _bucket(max(len(encoded[i]) + extra for i in rows), self.budget_tokens)
        for i in rows:
          yield i, self._features(encoded[i], bucket)

    names = (("decoder_input_tokens", "decoder_causal_attention") if self.decoder_only
             else ("encoder_input_tokens", "decoder_target_tokens"))
    signature = (tf.TensorSpec([], tf.int64),
                 {name: tf.TensorSpec([None], tf.int32) for name in names})
    return tf.data.Dataset.from_generator(generate, output_signature=signature)

  def generate(self, prompts: Sequence[prompts_lib.SynthesisPrompt], *, stream: int = 0,
               batch_done: Optional[BatchDone] = None) -> list[rounds_lib.Generation]:
    """One generation per prompt, in order. `stream` seeds sampling (e.g. shard, round)."""
    encoded = [prompt_tokens.encode_prompt(self.vocabulary, p.inputs,
                                           decoder_only=self.decoder_only) for p in prompts]
    too_long = [i for i, ids in enumerate(encoded)
                if len(ids) + (0 if self.decoder_only else 1) > self.budget_tokens]
    if too_long:  # build_prompt / truncate_to_budget keep prompts inside the budget.
      raise ValueError(f"{len(too_long)} prompt(s) exceed the budget of {self.budget_tokens} "
                       "tokens.")
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    runner = self.session.runner
    # Sampling differs per shard and round, yet does not depend on which process runs them.
    runner.rng = jax.random.fold_in(jax.random.PRNGKey(self._seed), stream)
    results: list[Optional[rounds_lib.Generation]] = [None] * len(prompts)
    for batch in runner.predict_batches(self.session.params, self._dataset(encoded, order)):
      done = []
      for index, tokens, _ in batch:
        ids = runner_lib.trim_at_eos(tokens, self.decode_cfg.eos_id)
        text = self.vocabulary.decode(ids)
        results[index] = rounds_lib.Generation(text, len(ids))
        done.append(results[index])
      if batch_done is not None:
        batch_done(done)
    return results
