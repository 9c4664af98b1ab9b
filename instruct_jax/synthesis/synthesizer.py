"""`instruct-jax synthesize`: instruction-response pairs for every document of a raw corpus.

    instruct-jax synthesize --gin_file=models/llama/mistral_7b.gin \
        --gin.VOCABULARY_PATH="'/models/synth/tokenizer.model'" \
        --gin.CHECKPOINT_PATH="'/models/synth'" \
        --input='/data/corpus/*.jsonl' --output_dir=/data/synthesized

The corpus (synthesis.corpus) is cut into shards; each shard runs the M rounds
of synthesis.rounds with the model of synthesis.generator and is written whole
(synthesis.output_dir). A killed job rerun with the same arguments skips the
finished shards; in a multi-process job process p takes shards p, p + P, ...,
so the union of the outputs is what one process writes (shards never span
processes, and neither do batches). The last process to finish writes the
complete manifest.
"""
from __future__ import annotations

import collections
import time
from typing import Any, Optional, Sequence

import jax

from instruct_jax.errors import UsageError
from instruct_jax.models import decoding
from instruct_jax.synthesis import corpus
from instruct_jax.synthesis import generator as generator_lib
from instruct_jax.synthesis import output_dir as output_dir_lib
from instruct_jax.synthesis import progress as progress_lib
from instruct_jax.synthesis import rounds as rounds_lib


def job_arguments(spec: corpus.CorpusSpec, *, model: Any, checkpoint_path: str, rounds: int,
                  context_length: int, max_new_tokens: int, documents_per_shard: int,
                  decode_cfg: decoding.DecodeConfig, seed: int) -> dict:
  """What decides the output, recorded in the manifest (not batch size or processes)."""
  return {**spec.describe(), "checkpoint_path": checkpoint_path,
          "model": type(model).__name__,
          "vocab_size": int(model.output_vocabulary.vocab_size),
          "rounds": rounds, "context_length": context_length,
          "max_new_tokens": max_new_tokens, "documents_per_shard": documents_per_shard,
          "decode_method": decode_cfg.method, "temperature": decode_cfg.temperature,
          "top_k": decode_cfg.top_k, "top_p": decode_cfg.top_p, "seed": seed}


def synthesize(*, model: Any, checkpoint_path: str, inputs: Sequence[str], output_dir: str,
               input_format: str = "auto", text_field: str = "text",
               tfds_split: str = "train", tfds_data_dir: Optional[str] = None,
               rounds: int = 2, context_length: int = 4096, max_new_tokens: int = 400,
               batch_size: int = 32, documents_per_shard: int = 1000,
               decode_cfg: Optional[decoding.DecodeConfig] = None, num_partitions: int = 1,
               parameter_partitioning_dims: int = 1, seed: int = 0,
               progress_seconds: float = 30.0) -> dict:
  """Synthesizes this process's unfinished shards (see module doc); returns a summary.

  context_length: the synthesizer's sequence length (decoder-only: prompt +
  new tokens; encoder-decoder: the encoder length). The summary holds the
  counts of the whole job when it is complete, else of this process's shards.
  """
  if rounds < 1:
    raise UsageError(f"rounds={rounds}; it must be >= 1 (2 for pre-training from scratch, "
                     "3 for domain-adaptive continual pre-training).")
  decode_cfg = decode_cfg or decoding.DecodeConfig()
  spec = corpus.CorpusSpec(tuple(inputs), input_format, text_field, tfds_split, tfds_data_dir)
  shards = corpus.plan_shards(spec, documents_per_shard)
  out = output_dir_lib.OutputDir(output_dir, job_arguments(
      spec, model=model, checkpoint_path=checkpoint_path, rounds=rounds,
      context_length=context_length, max_new_tokens=max_new_tokens,
      documents_per_shard=documents_per_shard, decode_cfg=decode_cfg, seed=seed), shards)
  out.prepare()
  mine = [s for s in shards if s.index % jax.process_count() == jax.process_index()]
  todo = [s for s in mine if not out.is_finished(s)]
  label = ("synthesize" if jax.process_count() == 1 else
           f"synthesize [process {jax.process_index()}/{jax.process_count()}]")
  progress = progress_lib.Progress(sum(s.num_records for s in todo),
                                   period_seconds=progress_seconds, label=label)
  if todo:
    generator = generator_lib.ModelGenerator(
        model, checkpoint_path, context_length=context_length, max_new_tokens=max_new_tokens,
        batch_size=batch_size, decode_cfg=decode_cfg, num_partitions=num_partitions,
        parameter_partitioning_dims=parameter_partitioning_dims, seed=seed)
    progress.start = time.time()  # Rates count synthesis, not the checkpoint read.
    for shard in todo:
      result = _synthesize_shard(shard, spec, rounds, generator, progress)
      out.write_shard(shard, result.records, result.counts, result.problems)
      progress.shard_done(result.counts)
  totals = out.finalize()
  counts: collections.Counter = collections.Counter()
  problems: list[str] = []
  for shard in mine:
    entry = out.read_counts(shard)
    counts.update(entry["counts"])
    problems += entry["problems"]
  return {"output_dir": output_dir, "complete": totals is not None,
          "counts": totals if totals is not None else dict(counts), "problems": problems,
          "shards_total": len(shards), "shards_done": len(todo),
          "shards_resumed": len(mine) - len(todo), "documents_now": progress.documents,
          "tokens_now": progress.tokens, "seconds": progress.seconds if todo else 0.0}


def _synthesize_shard(shard: corpus.Shard, spec: corpus.CorpusSpec, rounds: int,
                      generator: generator_lib.ModelGenerator,
                      progress: progress_lib.Progress) -> rounds_lib.ShardResult:
  round_number = iter(range(rounds))

  def generate(prompts):
    # One sampling stream per (shard, round): the same on any number of processes.
    stream = shard.index * rounds + next(round_number)
    return generator.generate(prompts, stream=stream, batch_done=progress.batch_decoded)

  return rounds_lib.synthesize_shard(
      corpus.read_shard(shard, spec), rounds=rounds, budget_tokens=generator.budget_tokens,
      count_tokens=generator.count_tokens, architecture=generator.architecture,
      generate=generate)
