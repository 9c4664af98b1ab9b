"""Decoding: cached == uncached, greedy == teacher-forced argmax, beam search, sampling, mesh."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from instruct_jax.models import decoder_only
from instruct_jax.models import decoding
from instruct_jax.models import encoder_decoder
from instruct_jax.models.networks import decoder
from instruct_jax.models.networks import layers
from instruct_jax.models.networks import t5
from instruct_jax.train import partitioning
from instruct_jax.benchmarks import decode_speed
from instruct_jax.benchmarks import report

VOCAB = 384
TINY = dict(vocab_size=VOCAB, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, dtype="float32")
ROWS, INPUT_LENGTH, TARGET_LENGTH = 4, 8, 6
DECODER_LENGTH = 12

# Tiny graphs: XLA's backend optimisations cost more compile time than they save here.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _shift_right(targets):
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def _init(model, batch, seed=0):
  shapes = {k: v.shape for k, v in batch.items()}
  init = _jit(functools.partial(model.init_params, input_shapes=shapes))
  return nn.meta.unbox(init(jax.random.PRNGKey(seed)))


def _predict(model, params, batch, cfg, rng=None):
  fn = _jit(lambda p, b, r: model.predict_batch(p, b, cfg, r))
  tokens, scores = fn(params, batch, jax.random.PRNGKey(0) if rng is None else rng)
  return np.asarray(tokens), np.asarray(scores)


def _t5():
  module = t5.Transformer(t5.T5Config(num_encoder_layers=2, num_decoder_layers=2, **TINY))
  return encoder_decoder.EncoderDecoderModel(module, seqio.ByteVocabulary(),
                                             seqio.ByteVocabulary())


def _encdec_batch(seed=0):
  rng = np.random.RandomState(seed)
  inputs = rng.randint(3, 259, (ROWS, INPUT_LENGTH)).astype(np.int32)
  inputs[1, 5:] = 0
  inputs[3, 3:] = 0
  targets = rng.randint(3, 259, (ROWS, TARGET_LENGTH)).astype(np.int32)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": _shift_right(targets),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones_like(targets)}


def _decoder_batch(seed=0):
  """Prompts of 2-6 tokens (EOS last) laid out as seqio's PrefixLM converter does."""
  rng = np.random.RandomState(seed)
  targets = np.zeros((ROWS, DECODER_LENGTH), np.int32)
  causal = np.zeros_like(targets)
  for row, length in enumerate((2, 6, 4, 3)):
    targets[row, :length - 1] = rng.randint(3, 259, length - 1)
    targets[row, length - 1] = 1
    targets[row, length:] = rng.randint(3, 259, DECODER_LENGTH - length)
    causal[row, :length + 1] = 1
  return {"decoder_input_tokens": _shift_right(targets), "decoder_target_tokens": targets,
          "decoder_causal_attention": causal,
          "decoder_loss_weights": (1 - causal).astype(np.int32)}


@pytest.fixture(scope="module")
def t5_setup():
  model = _t5()
  batch = _encdec_batch()
  return model, _init(model, batch), batch


@pytest.fixture(scope="module")
def t5_greedy(t5_setup):
  model, params, batch = t5_setup
  return _predict(model, params, batch, decoding.DecodeConfig())


def _decoder_model(prefix):
  module = decoder.DecoderOnly(decoder.DecoderConfig(num_layers=2, **TINY))
  return decoder_only.DecoderOnlyModel(module, seqio.ByteVocabulary(),
                                       inputs_bidirectional_attention=prefix)


@pytest.fixture(scope="module", params=[False, True], ids=["causal_lm", "prefix_lm"])
def decoder_setup(request):
  model = _decoder_model(request.param)
  batch = _decoder_batch()
  params = _init(model, batch, seed=1)
  return model, params, batch


# --- the two model families ----------------------------------------------------------


def test_encdec_cached_equals_uncached(t5_setup, t5_greedy):
  model, params, batch = t5_setup
  tokens, scores = _predict(model, params, batch, decoding.DecodeConfig(use_cache=False))
  np.testing.assert_array_equal(tokens, t5_greedy[0])
  np.testing.assert_allclose(scores, t5_greedy[1], rtol=1e-5, atol=1e-4)


def test_encdec_cached_equals_uncached_beam(t5_setup):
  model, params, batch = t5_setup
  cfg = decoding.DecodeConfig(method="beam", num_beams=3, alpha=0.6)
  cached = _predict(model, params, batch, cfg)
  uncached = _predict(model, params, batch, decoding.DecodeConfig(
      method="beam", num_beams=3, alpha=0.6, use_cache=False))
  np.testing.assert_array_equal(cached[0], uncached[0])
  np.testing.assert_allclose(cached[1], uncached[1], rtol=1e-5, atol=1e-4)


def test_encdec_greedy_is_teacher_forced_argmax(t5_setup, t5_greedy):
  model, params, batch = t5_setup
  tokens, scores = t5_greedy
  assert tokens.shape == (ROWS, TARGET_LENGTH) and tokens.dtype == np.int32
  forced = dict(batch, decoder_target_tokens=tokens, decoder_input_tokens=_shift_right(tokens),
                decoder_loss_weights=(tokens > 0).astype(np.int32))
  logits = np.asarray(_jit(lambda p, b: model._logits(p, b, None))(params, forced))
  real = tokens > 0
  np.testing.assert_array_equal(np.argmax(logits, -1)[real], tokens[real])
  # The greedy score is the model's log-likelihood of its own output.
  teacher_scores = _jit(model.score_batch)(params, forced)
  np.testing.assert_allclose(scores, teacher_scores, rtol=1e-5, atol=1e-4)


def test_beam_search_with_one_beam_is_greedy(t5_setup, t5_greedy):
  model, params, batch = t5_setup
  tokens, scores = _predict(model, params, batch,
                            decoding.DecodeConfig(method="beam", num_beams=1, alpha=0.0))
  np.testing.assert_array_equal(tokens, t5_greedy[0])
  np.testing.assert_allclose(scores, t5_greedy[1], rtol=1e-5, atol=1e-4)


def test_max_decode_length_overrides_targets_length(t5_setup, t5_greedy):
  model, params, batch = t5_setup
  tokens, _ = _predict(model, params, batch, decoding.DecodeConfig(max_decode_length=3))
  assert tokens.shape == (ROWS, 3)
  np.testing.assert_array_equal(tokens, t5_greedy[0][:, :3])


def test_cross_attention_keys_values_are_projected_once(t5_setup):
  """The BOS step stores each layer's encoder keys/values; later steps need no encoder outputs."""
  model, params, batch = t5_setup
  module, length = model.module, TARGET_LENGTH
  inputs = batch["encoder_input_tokens"]
  encoded = module.apply({"params": params}, inputs, enable_dropout=False, method=module.encode)
  placeholder = np.zeros((ROWS, length), np.int32)
  _, created = module.apply({"params": params}, encoded, inputs, placeholder, placeholder,
                            enable_dropout=False, decode=True, max_decode_length=length,
                            mutable=["cache"], method=module.decode)
  token = batch["decoder_input_tokens"][:, :1]

  def step(collections, encoded, mutable):
    return module.apply({"params": params, **collections}, encoded, inputs, token, token,
                        enable_dropout=False, decode=True, max_decode_length=length,
                        mutable=mutable, method=module.decode)

  reference, _ = step(created, encoded, ["cache"])  # no cross cache: projected in the step
  logits, stored = step(created, encoded, ["cache", layers.CROSS_CACHE])
  cross = stored[layers.CROSS_CACHE]["decoder"]
  assert set(cross) == {"layers_0", "layers_1"}
  assert cross["layers_0"]["encoder_decoder_attention"]["cached_key"].shape == (
      ROWS, 4, INPUT_LENGTH, 8)  # heads-major
  reused, _ = step({**created, layers.CROSS_CACHE: stored[layers.CROSS_CACHE]}, None, ["cache"])
  np.testing.assert_allclose(logits, reference, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(reused, reference, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="inputs_kv=None"):
    step(created, None, ["cache"])


def _prompt_lengths(batch):
  return batch["decoder_causal_attention"].sum(axis=1)  # inputs + BOS


def test_decoder_only_cached_equals_uncached(decoder_setup):
  model, params, batch = decoder_setup
  cached = _predict(model, params, batch, decoding.DecodeConfig())
  uncached = _predict(model, params, batch, decoding.DecodeConfig(use_cache=False))
  np.testing.assert_array_equal(cached[0], uncached[0])
  np.testing.assert_allclose(cached[1], uncached[1], rtol=1e-5, atol=1e-4)


def test_prefix_lm_beam_search_cached_equals_uncached():
  model = _decoder_model(prefix=True)
  batch = _decoder_batch(seed=3)
  params = _init(model, batch, seed=2)
  cfg = dict(method="beam", num_beams=2, max_decode_length=5)
  cached = _predict(model, params, batch, decoding.DecodeConfig(**cfg))
  uncached = _predict(model, params, batch, decoding.DecodeConfig(use_cache=False, **cfg))
  np.testing.assert_array_equal(cached[0], uncached[0])
  np.testing.assert_allclose(cached[1], uncached[1], rtol=1e-5, atol=1e-4)


def test_decoder_only_continues_prompt_greedily(decoder_setup):
  """Each generated token is the argmax of teacher-forced logits on prompt + output."""
  model, params, batch = decoder_setup
  tokens, _ = _predict(model, params, batch, decoding.DecodeConfig())
  assert tokens.shape == (ROWS, DECODER_LENGTH)
  prompt_lengths = _prompt_lengths(batch)
  full = np.zeros((ROWS, DECODER_LENGTH), np.int32)
  for row, length in enumerate(prompt_lengths):
    inputs = batch["decoder_target_tokens"][row, :length - 1]
    # The cache holds DECODER_LENGTH positions, so a row has room for L - len(inputs).
    room = DECODER_LENGTH - len(inputs)
    assert np.all(tokens[row, room:] == 0)
    full[row] = np.concatenate([inputs, tokens[row, :room]])
  forced = dict(batch, decoder_target_tokens=full, decoder_input_tokens=_shift_right(full))
  logits = np.asarray(_jit(lambda p, b: model._logits(p, b, None))(params, forced))
  predicted = np.argmax(logits, -1)
  for row, length in enumerate(prompt_lengths):
    generated = full[row, length - 1:]
    real = generated > 0
    np.testing.assert_array_equal(predicted[row, length - 1:][real], generated[real])


def test_decoder_only_respects_max_decode_length(decoder_setup):
  model, params, batch = decoder_setup
  tokens, _ = _predict(model, params, batch, decoding.DecodeConfig(max_decode_length=2))
  assert tokens.shape == (ROWS, 2)


# --- the search algorithms on constructed step functions -----------------------------

# A Markov "model" over 6 tokens (0 BOS/pad, 1 EOS, 2 a, 3 b, 4 c, 5 d): next-token
# probabilities depend on the last token only.
_TABLE = np.asarray([
    # pad    EOS    a      b      c      d
    [0.001, 0.001, 0.500, 0.450, 0.024, 0.024],  # after BOS
    [0.001, 0.995, 0.001, 0.001, 0.001, 0.001],  # after EOS
    [0.010, 0.300, 0.010, 0.010, 0.340, 0.330],  # after a: nothing is likely
    [0.010, 0.950, 0.010, 0.010, 0.010, 0.010],  # after b: EOS
    [0.010, 0.900, 0.010, 0.010, 0.040, 0.030],  # after c
    [0.010, 0.900, 0.010, 0.010, 0.040, 0.030],  # after d
])


def _markov(rows):
  log_table = jnp.log(jnp.asarray(_TABLE / _TABLE.sum(1, keepdims=True), jnp.float32))

  def step_fn(tokens, state, context):
    del context
    return log_table[tokens], {"steps": state["steps"] + 1}

  first = jnp.tile(log_table[0], (rows, 1))
  return first, {"steps": jnp.zeros((rows,), jnp.int32)}, step_fn


def _sequence_log_prob(tokens):
  probs = _TABLE / _TABLE.sum(1, keepdims=True)
  total, last = 0.0, 0
  for token in tokens:
    if token == 0:
      break
    total += np.log(probs[last, token])
    last = token
  return total


@pytest.mark.parametrize("cfg", [decoding.DecodeConfig(eos_id=1),
                                 decoding.DecodeConfig(method="sample", top_k=1, eos_id=1),
                                 decoding.DecodeConfig(method="beam", num_beams=3, eos_id=1)],
                         ids=["greedy", "sample", "beam"])
def test_every_step_sees_its_rows_context(cfg):
  """The context reaches each step unchanged, one copy per beam of its row."""
  rows, vocab = 3, 6

  def step_fn(tokens, state, context):
    # Each row only ever wants its own token, given by the context.
    assert context["wanted"].shape == tokens.shape
    logits = jnp.where(jnp.arange(vocab) == context["wanted"][:, None], 0.0, -5.0)
    return logits, state

  wanted = jnp.asarray([2, 4, 5], jnp.int32)
  first = jnp.where(jnp.arange(vocab) == wanted[:, None], 0.0, -5.0)
  tokens, _ = decoding.decode(first, {"unused": jnp.zeros((rows,))}, step_fn, max_length=3,
                              cfg=cfg, rng=jax.random.PRNGKey(0), context={"wanted": wanted})
  np.testing.assert_array_equal(tokens, np.repeat(np.asarray(wanted)[:, None], 3, axis=1))


def test_beam_search_beats_greedy_on_constructed_case():
  first, state, step_fn = _markov(2)
  greedy_cfg = decoding.DecodeConfig(eos_id=1)
  greedy_tokens, greedy_scores = jax.jit(functools.partial(
      decoding.decode, step_fn=step_fn, max_length=5, cfg=greedy_cfg))(first, state)
  beam_cfg = decoding.DecodeConfig(method="beam", num_beams=2, alpha=0.0, eos_id=1)
  beam_tokens, beam_scores = jax.jit(functools.partial(
      decoding.decode, step_fn=step_fn, max_length=5, cfg=beam_cfg))(first, state)
  np.testing.assert_array_equal(greedy_tokens[0], [2, 4, 1, 0, 0])  # a c EOS
  np.testing.assert_array_equal(beam_tokens[0], [3, 1, 0, 0, 0])    # b EOS
  assert _sequence_log_prob(beam_tokens[0]) > _sequence_log_prob(greedy_tokens[0])
  np.testing.assert_allclose(beam_scores, _sequence_log_prob(beam_tokens[0]), rtol=1e-5)
  np.testing.assert_allclose(greedy_scores, _sequence_log_prob(greedy_tokens[0]), rtol=1e-5)


def test_length_penalty_divides_beam_score():
  first, state, step_fn = _markov(1)
  cfg = decoding.DecodeConfig(method="beam", num_beams=2, alpha=0.6, eos_id=1)
  tokens, scores = decoding.decode(first, state, step_fn, max_length=5, cfg=cfg)
  length = int(np.sum(np.asarray(tokens[0]) > 0))
  expected = _sequence_log_prob(tokens[0]) / ((5.0 + length) / 6.0) ** 0.6
  np.testing.assert_allclose(scores[0], expected, rtol=1e-5)


def test_rows_stop_at_eos_and_at_their_limit():
  first, state, step_fn = _markov(3)
  tokens, _ = decoding.decode(first, state, step_fn, max_length=5,
                              cfg=decoding.DecodeConfig(eos_id=1),
                              limits=jnp.asarray([5, 2, 1]))
  np.testing.assert_array_equal(tokens, [[2, 4, 1, 0, 0], [2, 4, 0, 0, 0], [2, 0, 0, 0, 0]])


@pytest.mark.parametrize("block", [4, 7, 64])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_by_blocks_is_lax_top_k_ties_included(block, k):
  rng = np.random.RandomState(block * 10 + k)
  # Rounded normals: block maxima differ while equal values recur across blocks, so a
  # tie's order depends on the chosen blocks keeping index order. 7 does not divide 300.
  x = np.round(rng.randn(2, 3, 300) * 2).astype(np.float32) - 10
  x[rng.rand(*x.shape) < 0.1] = -np.inf
  x[1, 1] = -np.inf  # every block maximum tied
  signed_zeros, nan = x.copy(), x.copy()
  # A float max need not order -0.0 < +0.0 (lax.top_k does), nor a NaN of either sign.
  signed_zeros[0, 2, [0, 2 * block, 2 * block + 1, 3 * block]] = [-0.0, -0.0, 0.0, 0.0]
  nan[1, 0, [5, 6]] = [-np.nan, 0.0]
  nan[0, 1, 9] = np.nan
  top_k = jax.jit(decoding.blocked_top_k, static_argnums=(1, 2))
  for inputs in (x, signed_zeros, nan):
    expected_values, expected_index = jax.lax.top_k(inputs, k)
    values, index = top_k(inputs, k, block)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_array_equal(np.asarray(values).view(np.int32),
                                  np.asarray(expected_values).view(np.int32))


@pytest.mark.parametrize("block", [4, 7, 64])
def test_argmax_by_blocks_is_jnp_argmax(block):
  rng = np.random.RandomState(block)
  # Rounded normals: equal maxima recur across blocks, so the first one must win.
  # 7 does not divide 300 (a padded last block).
  x = np.round(rng.randn(4, 3, 300) * 2).astype(np.float32) - 10
  x[rng.rand(*x.shape) < 0.1] = -np.inf
  x[1, 1] = -np.inf  # every element tied
  x[2, 0, 299] = 30.0  # the maximum in the padded last block
  signed_zeros, nan, infinities = x.copy(), x.copy(), x.copy()
  signed_zeros[0, 2, [2 * block + 1, 2 * block, 3 * block]] = [-0.0, 0.0, 0.0]
  signed_zeros[0, 2, 5] = -0.0
  # argmax returns the first NaN, and a float max over a block need not see it.
  nan[1, 0, [5, 6]] = [-np.nan, 0.0]
  nan[0, 1, 2 * block + 3] = np.nan
  infinities[3, 2, [block + 1, 3 * block]] = [np.inf, np.inf]  # a row sum of inf - inf
  argmax = jax.jit(decoding.blocked_argmax, static_argnums=1)
  for inputs in (x, signed_zeros, nan, infinities):
    np.testing.assert_array_equal(argmax(inputs, block), jnp.argmax(inputs, axis=-1))


def test_argmax_by_blocks_finds_a_nan_over_t5s_vocabulary():
  """XLA:CPU's vectorised max over a 128-wide block drops a NaN (seen in jax 0.10)."""
  logits = np.random.RandomState(0).randn(8, 32128).astype(np.float32)
  logits[3, [7, 9]] = np.nan
  index = jax.jit(decoding.blocked_argmax)(logits)
  np.testing.assert_array_equal(index, jnp.argmax(logits, axis=-1))
  assert index[3] == 7


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  top2 = decoding.filter_logits(logits, top_k=2)
  assert np.isfinite(np.asarray(top2)).tolist() == [[True, True, False, False]]
  nucleus = decoding.filter_logits(logits, top_p=0.7)  # 0.5 + 0.3 reaches 0.7
  assert np.isfinite(np.asarray(nucleus)).tolist() == [[True, True, False, False]]
  tiny = decoding.filter_logits(logits, top_p=0.01)  # the best token always survives
  assert np.isfinite(np.asarray(tiny)).tolist() == [[True, False, False, False]]


def test_sampling_is_seeded_and_filtered():
  first, state, step_fn = _markov(64)
  sample = jax.jit(lambda rng, cfg: decoding.decode(first, state, step_fn, max_length=4,
                                                    cfg=cfg, rng=rng), static_argnums=1)
  cfg = decoding.DecodeConfig(method="sample", temperature=1.5, eos_id=1)
  a, _ = sample(jax.random.PRNGKey(1), cfg)
  b, _ = sample(jax.random.PRNGKey(1), cfg)
  c, _ = sample(jax.random.PRNGKey(2), cfg)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len({tuple(row) for row in np.asarray(a).tolist()}) > 1
  # top_k=1 leaves nothing to chance: it is greedy.
  greedy, _ = decoding.decode(first, state, step_fn, max_length=4, cfg=decoding.DecodeConfig(eos_id=1))
  top1, _ = sample(jax.random.PRNGKey(3),
                   decoding.DecodeConfig(method="sample", top_k=1, eos_id=1))
  np.testing.assert_array_equal(top1, greedy)


def test_eos_comes_from_the_vocabulary_unless_set():
  """Llama / Mistral SentencePiece vocabularies end rows with 2, T5's with 1."""

  class Vocabulary:
    eos_id = 2

  assert decoding.DecodeConfig().for_vocabulary(Vocabulary()).eos_id == 2
  assert decoding.DecodeConfig(eos_id=7).for_vocabulary(Vocabulary()).eos_id == 7
  with pytest.raises(ValueError, match="no EOS id"):
    decoding.DecodeConfig().for_vocabulary(type("NoEos", (), {"eos_id": None})())
  first, state, step_fn = _markov(3)
  with pytest.raises(ValueError, match="for_vocabulary"):
    decoding.decode(first, state, step_fn, max_length=5, cfg=decoding.DecodeConfig())
  tokens, _ = decoding.decode(first, state, step_fn, max_length=5,
                              cfg=decoding.DecodeConfig().for_vocabulary(Vocabulary()))
  # The chain's greedy path is a c EOS(1) (see above); with EOS 2 the first token ends it.
  np.testing.assert_array_equal(tokens[0], [2, 0, 0, 0, 0])


def test_sampling_needs_an_rng():
  first, state, step_fn = _markov(1)
  with pytest.raises(ValueError, match="rng"):
    decoding.decode(first, state, step_fn, max_length=2,
                    cfg=decoding.DecodeConfig(method="sample", eos_id=1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="topk"), "method"),
    (dict(temperature=0.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(num_beams=0), "num_beams"),
    (dict(max_decode_length=0), "max_decode_length"),
    (dict(alpha=-1.0), "alpha"),
])
def test_decode_config_is_validated(kwargs, message):
  with pytest.raises(ValueError, match=message):
    decoding.DecodeConfig(**kwargs)


# --- under a device mesh -------------------------------------------------------------


@pytest.mark.parametrize("cfg", [decoding.DecodeConfig(),
                                 decoding.DecodeConfig(method="beam", num_beams=2)],
                         ids=["greedy", "beam"])
def test_decoding_on_8_devices_matches_one_device(t5_setup, cfg):
  """data x model = 4 x 2 with FSDP params, as in training, gives the same outputs."""
  assert len(jax.devices()) == 8
  model, params, batch = t5_setup
  single = _predict(model, params, batch, cfg)
  partitioner = partitioning.Partitioner(num_partitions=2, parameter_partitioning_dims=2)
  with partitioner.activation_context():
    boxed = jax.eval_shape(lambda rng: model.init_params(rng, {k: v.shape for k, v in
                                                                batch.items()}),
                           jax.random.PRNGKey(0))
  shardings = partitioner.param_shardings(boxed)
  sharded_params = jax.device_put(params, shardings)
  assert any(len(s.spec) and any(s.spec) for s in jax.tree.leaves(shardings))
  fn = _jit(lambda p, b: model.predict_batch(p, b, cfg),
            in_shardings=(shardings, partitioner.batch_sharding),
            out_shardings=partitioner.replicated)
  with partitioner.activation_context():
    tokens, scores = fn(sharded_params, jax.device_put(batch, partitioner.batch_sharding))
  np.testing.assert_array_equal(np.asarray(tokens), single[0])
  np.testing.assert_allclose(np.asarray(scores), single[1], rtol=1e-4, atol=1e-4)


# --- the decode benchmark ------------------------------------------------------------


def test_decode_benchmark_reports_tokens_per_second():
  results = decode_speed.benchmark_decode(_t5(), batch_size=8, input_length=8, target_length=4,
                                   steps=1, methods=("beam",), num_beams=2, use_cache=(True,))
  assert results["beam2_cached_tokens_per_second"] > 0
  assert results["beam2_cached_tokens_per_second"] == pytest.approx(
      8 * 4 / results["beam2_cached_seconds_per_batch"])
  assert "beam2_cached_tokens_per_second" in report.format_report(results)


def test_decode_benchmark_rejects_unknown_methods(capsys):
  import gin  # pylint: disable=g-import-not-at-top
  from instruct_jax import cli  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    with pytest.raises(SystemExit):
      cli.main(["bench", "--mode=decode", "--decode_methods=topk",
                "--gin_file=models/t5_1_1/tiny.gin"])
  finally:
    gin.clear_config()
  assert "greedy,beam" in capsys.readouterr().err
