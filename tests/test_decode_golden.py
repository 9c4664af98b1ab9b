"""Decoding reproduces recorded outputs: tokens exactly, scores to float32 round-off.

tests/data/decode_golden.npz holds the greedy, beam and sampled outputs of three
tiny random networks (a T5 encoder-decoder, a T5-style prefix LM and a
grouped-query Llama) as decoded by commit 67dee79, before the decoding speed
work. EOS is a token each network emits often, so rows end at different
lengths; the decoder-only prompts differ in length, so rows have different
limits too. Regenerate it (only when a change of outputs is intended) with

  python tests/test_decode_golden.py --write

which decodes with whatever `instruct_jax` is importable (PYTHONPATH=<a
checkout of the reference commit> run from outside the repository for the
reference outputs).
"""

import functools
import os
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio

from instruct_jax.models import decoder_only
from instruct_jax.models import decoding
from instruct_jax.models import encoder_decoder
from instruct_jax.models.networks import decoder
from instruct_jax.models.networks import llama
from instruct_jax.models.networks import t5

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "data", "decode_golden.npz")
VOCAB = 300
TINY = dict(vocab_size=VOCAB, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, dtype="float32")
ROWS, INPUT_LENGTH, TARGET_LENGTH, DECODER_LENGTH = 4, 10, 12, 16
PROMPT_LENGTHS = (2, 7, 4, 5)
CASES = ("t5", "prefix_lm", "llama")
METHODS = {
    "greedy": dict(method="greedy"),
    "beam": dict(method="beam", num_beams=4, alpha=0.6),
    "sample": dict(method="sample", temperature=0.8, top_k=20),
}
SAMPLE_SEED = 3

# Tiny graphs: XLA's backend optimisations cost more compile time than they save here.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _shift_right(targets):
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def _encdec_batch():
  rng = np.random.RandomState(0)
  inputs = rng.randint(3, VOCAB, (ROWS, INPUT_LENGTH)).astype(np.int32)
  inputs[1, 6:] = 0
  inputs[3, 3:] = 0
  targets = rng.randint(3, VOCAB, (ROWS, TARGET_LENGTH)).astype(np.int32)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": _shift_right(targets),
          "decoder_target_tokens": targets}


def _decoder_batch():
  """Prompts of different lengths, laid out as seqio's PrefixLM converter does."""
  rng = np.random.RandomState(1)
  targets = rng.randint(3, VOCAB, (ROWS, DECODER_LENGTH)).astype(np.int32)
  causal = np.zeros_like(targets)
  for row, length in enumerate(PROMPT_LENGTHS):
    causal[row, :length + 1] = 1
  return {"decoder_input_tokens": _shift_right(targets), "decoder_target_tokens": targets,
          "decoder_causal_attention": causal}


def _case(name):
  """(model, params, batch) of one tiny random network."""
  vocabulary = seqio.ByteVocabulary()
  if name == "t5":
    module = t5.Transformer(t5.T5Config(num_encoder_layers=2, num_decoder_layers=2, **TINY))
    model = encoder_decoder.EncoderDecoderModel(module, vocabulary, vocabulary)
    batch = _encdec_batch()
  elif name == "prefix_lm":
    module = decoder.DecoderOnly(decoder.DecoderConfig(num_layers=2, **TINY))
    model = decoder_only.DecoderOnlyModel(module, vocabulary, inputs_bidirectional_attention=True)
    batch = _decoder_batch()
  else:
    module = llama.Llama(llama.LlamaConfig(num_kv_heads=2, num_layers=2, **TINY))
    model = decoder_only.DecoderOnlyModel(module, vocabulary)
    batch = _decoder_batch()
  shapes = {k: v.shape for k, v in batch.items()}
  params = _jit(functools.partial(model.init_params, input_shapes=shapes))(jax.random.PRNGKey(7))
  return model, nn.meta.unbox(params), batch


def _decode(model, params, batch, method, eos_id):
  cfg = decoding.DecodeConfig(eos_id=eos_id, **METHODS[method])
  fn = _jit(lambda p, b, r: model.predict_batch(p, b, cfg, r))
  tokens, scores = fn(params, batch, jax.random.PRNGKey(SAMPLE_SEED))
  return np.asarray(tokens), np.asarray(scores)


def _frequent_token(model, params, batch):
  """A token greedy decoding (EOS disabled) emits often, but never first or second.

  As EOS it ends some rows early and leaves others to run to their limit.
  """
  tokens, _ = _decode(model, params, batch, "greedy", eos_id=VOCAB + 1)
  counts = np.bincount(tokens[:, 2:].reshape(-1), minlength=VOCAB)
  counts[0] = 0
  counts[tokens[:, :2].reshape(-1)] = 0
  return int(counts.argmax())


def write_golden(path=GOLDEN_PATH):
  arrays = {}
  for case in CASES:
    model, params, batch = _case(case)
    eos_id = _frequent_token(model, params, batch)
    arrays[f"{case}/eos_id"] = np.int32(eos_id)
    for method in METHODS:
      tokens, scores = _decode(model, params, batch, method, eos_id)
      arrays[f"{case}/{method}/tokens"], arrays[f"{case}/{method}/scores"] = tokens, scores
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **arrays)


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN_PATH) as data:
    return dict(data)


@pytest.mark.parametrize("case", CASES)
def test_decoding_reproduces_recorded_outputs(golden, case):
  model, params, batch = _case(case)
  eos_id = int(golden[f"{case}/eos_id"])
  for method in METHODS:
    tokens, scores = _decode(model, params, batch, method, eos_id)
    np.testing.assert_array_equal(tokens, golden[f"{case}/{method}/tokens"], err_msg=method)
    np.testing.assert_allclose(scores, golden[f"{case}/{method}/scores"], rtol=1e-5,
                               atol=1e-5, err_msg=method)


def test_recorded_outputs_exercise_eos_and_limits(golden):
  """Guards the file itself: rows end at different lengths, some by EOS, some by a limit."""
  for case in CASES:
    lengths = (golden[f"{case}/greedy/tokens"] > 0).sum(axis=1)
    assert len(set(lengths.tolist())) > 1, case
    ended_by_eos = (golden[f"{case}/greedy/tokens"] == golden[f"{case}/eos_id"]).any(axis=1)
    assert ended_by_eos.any() and not ended_by_eos.all(), case


if __name__ == "__main__":
  if sys.argv[1:] != ["--write"]:
    sys.exit(f"usage: python {sys.argv[0]} --write  (rewrites {GOLDEN_PATH})")
  write_golden()
  print("wrote", GOLDEN_PATH)
