"""Llama / Mistral decoder: transformers parity (PyTorch, float32), conversion, attention paths.

Random tiny HF models (no downloads) cover grouped-query attention (kv heads <
heads, down to one), tied and untied embeddings, a non-default rope theta,
Llama 3.1's rope scaling and Mistral's sliding window over sequences longer than
the window. Each is saved with save_pretrained, converted, and compared on
logits, per-example scores and greedy decoding (prompts of different lengths
prefilled into the KV cache).
"""
import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import gin_configs  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import safetensors.numpy  # noqa: E402
import seqio  # noqa: E402

from instruct_jax import cli  # noqa: E402
from instruct_jax.checkpoints import conversion  # noqa: E402
from instruct_jax.checkpoints import hf  # noqa: E402
from instruct_jax.checkpoints import hf_llama  # noqa: E402
from instruct_jax.checkpoints import params_io  # noqa: E402
from instruct_jax.cli import gin_setup  # noqa: E402
from instruct_jax.errors import UsageError  # noqa: E402
from instruct_jax.models import decoder_only  # noqa: E402
from instruct_jax.models import decoding  # noqa: E402
from instruct_jax.models import flops  # noqa: E402
from instruct_jax.models.networks import attention  # noqa: E402
from instruct_jax.models.networks import llama  # noqa: E402
from instruct_jax.models.networks import rotary  # noqa: E402
from instruct_jax.models.networks import t5  # noqa: E402
import factories  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 128
BATCH, LENGTH = 3, 16
LOGITS_TOLERANCE, SCORE_TOLERANCE = 1e-4, 1e-3

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5,
               bos_token_id=0, eos_token_id=1,
               initializer_range=0.3)  # Weights large enough for varied greedy tokens.
VARIANTS = {
    # Grouped-query attention (4 heads, 2 kv heads), untied lm_head, rope theta 500.
    "llama_gqa": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    # One kv head, tied embeddings, Llama 3.1 rope scaling over a short "pre-training"
    # context so that all three frequency bands occur.
    "llama3_scaled_tied": ("llama", dict(
        num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})),
    # Mistral: sliding window 5, shorter than the sequences and the decoding runs.
    "mistral_window": ("mistral", dict(num_key_value_heads=2, sliding_window=5,
                                       tie_word_embeddings=False)),
}


def _hf_model(variant: str, seed: int = 0):
  family, fields = VARIANTS[variant]
  torch.manual_seed(seed)
  config_cls, model_cls = {
      "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
      "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[family]
  config = config_cls(**_COMMON, **fields)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = model_cls(config)
  with torch.no_grad():  # Norm scales away from 1 so that a misplaced norm shows.
    for name, param in model.named_parameters():
      if "norm" in name:
        param.copy_(1 + 0.5 * torch.randn_like(param))
  return model.eval()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_checkpoint(request, tmp_path_factory):
  """(variant, HF model, directory it was saved to with save_pretrained)."""
  model = _hf_model(request.param)
  directory = tmp_path_factory.mktemp(f"hf_{request.param}")
  model.save_pretrained(directory)
  return request.param, model, str(directory)


def _our_model(config: llama.LlamaConfig) -> decoder_only.DecoderOnlyModel:
  return decoder_only.DecoderOnlyModel(llama.Llama(config), seqio.PassThroughVocabulary(VOCAB, eos_id=1))


def _converted(directory: str):
  config, params, _ = hf_llama.load_hf_checkpoint(directory, dtype="float32")
  return _our_model(config), jax.tree.map(np.asarray, params)


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
  """Causal-LM batch with right padding; prompts (decoder_causal_attention) of 1, 4 and 9."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(2, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)
  for row, length in enumerate((LENGTH, 11, 6)):
    targets[row, length:] = 0
  inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
  causal = np.zeros_like(targets)
  for row, prompt in enumerate((1, 4, 9)):
    causal[row, :prompt] = 1
  return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.int32),
          "decoder_causal_attention": causal}


def _hf_logits(model, tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(valid, dtype=torch.long)).logits.numpy()


def test_config_reads_each_variant(hf_checkpoint):
  variant, hf_model, directory = hf_checkpoint
  config, params, _ = hf_llama.load_hf_checkpoint(directory)
  assert config.num_heads == 4 and config.head_dim == 8 and config.norm_epsilon == 1e-5
  assert config.num_kv_heads == hf_model.config.num_key_value_heads
  assert params["decoder"]["layers_1"]["self_attention"]["key"]["kernel"].shape == (
      32, 8 * config.num_kv_heads)
  assert config.tie_word_embeddings == ("logits_dense" not in params["decoder"])
  expected = {"llama_gqa": rotary.RotaryEmbedding(theta=500.0),
              "llama3_scaled_tied": rotary.RotaryEmbedding(10000.0, 8.0, 1.0, 4.0, 16),
              "mistral_window": rotary.RotaryEmbedding()}[variant]
  assert config.rope == expected
  assert config.sliding_window == (5 if variant == "mistral_window" else None)


def test_logits_and_scores_match_transformers(hf_checkpoint):
  variant, hf_model, directory = hf_checkpoint
  model, params = _converted(directory)
  batch = _batch()
  valid = batch["decoder_target_tokens"] > 0
  ours = np.asarray(jax.jit(lambda p, b: model.module.apply(
      {"params": p}, b["decoder_input_tokens"], b["decoder_target_tokens"],
      enable_dropout=False))(params, batch))
  theirs = _hf_logits(hf_model, batch["decoder_input_tokens"], valid)
  diff = np.abs(ours - theirs)[valid].max()
  print(f"{variant}: max |logits diff| = {diff:.3g} (logit scale {np.abs(theirs).max():.3g})")
  assert diff < LOGITS_TOLERANCE

  scores = np.asarray(jax.jit(model.score_batch)(params, batch))
  log_probs = torch.log_softmax(torch.tensor(theirs, dtype=torch.float64), dim=-1).numpy()
  picked = np.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1)[..., 0]
  expected = (picked * valid).sum(axis=-1)
  print(f"{variant}: scores {scores}, max |diff| = {np.abs(scores - expected).max():.3g}")
  np.testing.assert_allclose(scores, expected, rtol=0, atol=SCORE_TOLERANCE)


def test_greedy_decoding_matches_generate(hf_checkpoint):
  variant, hf_model, directory = hf_checkpoint
  model, params = _converted(directory)
  batch = _batch(seed=1)
  tokens, _ = model.predict_batch(params, batch, decoding.DecodeConfig(method="greedy"))
  tokens = np.asarray(tokens)
  expected = np.zeros_like(tokens)
  for row, prompt_length in enumerate(batch["decoder_causal_attention"].sum(axis=1)):
    prompt = batch["decoder_input_tokens"][row:row + 1, :prompt_length]
    budget = LENGTH - prompt_length + 1  # What fits the cache (DecoderOnlyModel docs).
    with torch.no_grad():
      # An explicit mask: generate() would otherwise hide the start token 0 as padding.
      generated = hf_model.generate(
          input_ids=torch.tensor(prompt, dtype=torch.long),
          attention_mask=torch.ones(prompt.shape, dtype=torch.long),
          max_new_tokens=int(budget),
          do_sample=False, num_beams=1, eos_token_id=1, pad_token_id=0).numpy()[0]
    generated = generated[prompt_length:]
    expected[row, :len(generated)] = generated
  print(f"{variant}: greedy tokens\n{tokens}")
  assert (tokens > 0).sum(axis=1).max() >= 8  # Decodes past Mistral's window of 5.
  np.testing.assert_array_equal(tokens, expected)


def _run_cli(argv):
  gin.clear_config()
  try:
    cli.main(argv)
  finally:
    gin.clear_config()


def test_round_trip_hf_ours_hf_is_exact_and_sharded(hf_checkpoint, tmp_path):
  variant, _, directory = hf_checkpoint
  ours_dir, back_dir = str(tmp_path / "ours"), str(tmp_path / "back")
  _run_cli(["convert", "--from", "hf", "--input", directory, "--output", ours_dir])
  # Shards of at most ~40 KB: the tiny model's 160 KB of float32 becomes several files.
  _run_cli(["convert", "--to", "hf", "--input", ours_dir, "--output", back_dir,
            "--max_shard_gb", "0.00004"])
  with open(os.path.join(back_dir, hf.SAFETENSORS_INDEX_FILE)) as f:
    shards = set(json.load(f)["weight_map"].values())
  assert len(shards) > 1
  original = safetensors.numpy.load_file(os.path.join(directory, hf.SAFETENSORS_FILE))
  exported = hf.read_hf_state_dict(back_dir)
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
    np.testing.assert_array_equal(exported[key].view(np.uint8), value.view(np.uint8), key)
  # The exported directory is a checkpoint transformers loads, with the same config.
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(back_dir)
  assert type(reloaded).__name__ == {"mistral_window": "MistralForCausalLM"}.get(
      variant, "LlamaForCausalLM")
  assert hf_llama.llama_config_from_hf(hf.read_hf_config(back_dir)) == (
      hf_llama.llama_config_from_hf(hf.read_hf_config(directory)))
  # In memory, without files: the state dict maps back bit for bit.
  config, params, _ = hf_llama.load_hf_checkpoint(directory)
  again = hf_llama.hf_state_dict_from_params(params, config)
  assert all(np.array_equal(again[k], original[k]) for k in original)


def test_imported_model_gin_builds_loads_and_exports(tmp_path):
  """model.gin written on import builds the same network, INITIAL_CHECKPOINT_PATH loads the
  params (from the HF directory too), and `--to hf --gin_file` exports them unchanged."""
  directory = str(tmp_path / "hf")
  _hf_model("llama3_scaled_tied").save_pretrained(directory)
  ours_dir = str(tmp_path / "ours")
  _run_cli(["convert", "--from", "hf", "--input", directory, "--output", ours_dir])
  gin.clear_config()
  try:
    gin_setup.parse_gin([os.path.join(ours_dir, conversion.MODEL_GIN_FILE)],
                        ["VOCABULARY_PATH = '/unused'", "ACTIVATION_DTYPE = 'float32'"])
    model = gin_setup.build_macro("MODEL", "a model gin")
  finally:
    gin.clear_config()
  expected, _, _ = hf_llama.load_hf_checkpoint(directory, dtype="float32")
  assert model.module.config == expected
  abstract = jax.eval_shape(lambda: _init(model))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), abstract)
  # An HF directory and the converted checkpoint load alike (params_io dispatches on model_type).
  original = hf.read_hf_state_dict(directory)
  for path in (directory, ours_dir):
    loaded = params_io.load_params(path, abstract)
    np.testing.assert_array_equal(
        np.asarray(loaded["decoder"]["token_embedder"]["embedding"]),
        original["model.embed_tokens.weight"])
  back_dir = str(tmp_path / "back")
  _run_cli(["convert", "--to", "hf", "--input", ours_dir, "--output", back_dir, "--gin_file",
            os.path.join(ours_dir, conversion.MODEL_GIN_FILE), "--gin.VOCABULARY_PATH='/unused'"])
  exported = hf.read_hf_state_dict(back_dir)
  assert sorted(exported) == sorted(original)
  assert all(np.array_equal(exported[k], original[k]) for k in original)


def test_bad_configs_name_the_problem():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    llama.LlamaConfig(vocab_size=8, emb_dim=8, num_heads=4, num_kv_heads=3, num_layers=1,
                      head_dim=2, mlp_dim=8)
  with pytest.raises(UsageError, match="rope type 'yarn'"):
    hf_llama.llama_config_from_hf(dict(_COMMON, model_type="llama",
                                       rope_scaling={"rope_type": "yarn", "factor": 2.0}))
  family, fields = VARIANTS["llama_gqa"]
  config = hf_llama.llama_config_from_hf(dict(_COMMON, model_type=family, **fields))
  state_dict = hf_llama.hf_state_dict_from_params(_init(_our_model(config)), config)
  del state_dict["model.layers.1.mlp.up_proj.weight"]
  state_dict["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 32), np.float32)
  with pytest.raises(UsageError) as error:
    hf_llama.params_from_hf_state_dict(state_dict, config)
  assert "missing: model.layers.1.mlp.up_proj.weight" in str(error.value)
  assert ("wrong shape: model.layers.0.self_attn.k_proj.weight: found (32, 32), expected "
          "(16, 32)") in str(error.value)


def _init(model, seed: int = 0):
  """Unboxed float32 params of a decoder-only model."""
  shapes = {"decoder_input_tokens": (1, 4), "decoder_target_tokens": (1, 4)}
  return jax.jit(lambda rng: nn.unbox(model.init_params(rng, shapes)))(jax.random.PRNGKey(seed))


def test_packed_rows_give_the_logits_of_each_sequence_alone():
  """Rope positions restart per segment (decoder_positions) and the window follows them."""
  model = factories.tiny_llama(vocab_size=VOCAB, sliding_window=3)
  params = _init(model)
  rng = np.random.default_rng(0)
  first, second = rng.integers(2, VOCAB, 7), rng.integers(2, VOCAB, 5)
  packed = np.concatenate([first, second, [0, 0]])[None].astype(np.int32)
  segments = np.array([[1] * 7 + [2] * 5 + [0, 0]], np.int32)
  positions = np.array([list(range(7)) + list(range(5)) + [0, 0]], np.int32)
  apply = jax.jit(lambda tokens, segments=None, positions=None: model.module.apply(
      {"params": params}, tokens, tokens, decoder_segment_ids=segments,
      decoder_positions=positions, enable_dropout=False))
  together = np.asarray(apply(packed, segments, positions))
  np.testing.assert_allclose(together[0, :7], apply(first[None].astype(np.int32))[0], atol=1e-5)
  np.testing.assert_allclose(together[0, 7:12], apply(second[None].astype(np.int32))[0],
                             atol=1e-5)


def _packed_batch(length: int = 12):
  """Two rows: one packs two segments (positions restart), one is padded."""
  rng = np.random.default_rng(3)
  tokens = rng.integers(2, VOCAB, size=(2, length)).astype(np.int32)
  tokens[1, 9:] = 0
  segments = np.array([[1] * 5 + [2] * (length - 5), [1] * 9 + [0] * (length - 9)], np.int32)
  positions = np.array([list(range(5)) + list(range(length - 5)),
                        list(range(9)) + [0] * (length - 9)], np.int32)
  return tokens, segments, positions


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_fused_attention_matches_einsum(family):
  """jax.nn.dot_product_attention vs the einsum reference: T5's relative bias, Llama's GQA."""
  tokens, segments, positions = _packed_batch()
  if family == "t5":
    config = factories.tiny_t5_config(vocab_size=VOCAB)
    make = lambda c: t5.Transformer(c)  # noqa: E731
    args = (tokens, tokens, tokens)
    kwargs = dict(encoder_segment_ids=segments, decoder_segment_ids=segments)
  else:
    config = factories.tiny_llama(vocab_size=VOCAB, sliding_window=4).module.config
    make = lambda c: llama.Llama(c)  # noqa: E731
    args = (tokens, tokens)
    kwargs = dict(decoder_segment_ids=segments, decoder_positions=positions)
  reference = make(config)
  params = reference.init(jax.random.PRNGKey(0), *args, enable_dropout=False)
  fused = make(dataclasses.replace(config, attention_implementation="fused"))
  expected = reference.apply(params, *args, enable_dropout=False, **kwargs)
  got = fused.apply(params, *args, enable_dropout=False, **kwargs)
  valid = tokens > 0
  diff = float(np.abs(np.asarray(got) - np.asarray(expected))[valid].max())
  print(f"{family}: max |fused - einsum| logits = {diff:.3g}")
  assert diff < 1e-5


def test_fused_and_einsum_attention_math_agree_with_gqa_bias_and_mask():
  rng = np.random.default_rng(0)
  query = rng.normal(size=(2, 5, 6, 8)).astype(np.float32)
  key, value = (rng.normal(size=(2, 7, 2, 8)).astype(np.float32) for _ in range(2))
  bias = rng.normal(size=(1, 6, 5, 7)).astype(np.float32)
  mask = rng.random((2, 1, 5, 7)) > 0.3
  results = [attention.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                             scale=0.35, implementation=name)
             for name in attention.IMPLEMENTATIONS]
  np.testing.assert_allclose(results[0], results[1], atol=1e-5)
  with pytest.raises(ValueError, match="attention_implementation 'flash'"):
    attention.check_implementation("flash")


def test_beam_search_and_sampling_decode():
  model = factories.tiny_llama(vocab_size=VOCAB)
  params = _init(model)
  batch = _batch(seed=2)
  for cfg in (decoding.DecodeConfig(method="beam", num_beams=3),
              decoding.DecodeConfig(method="sample", temperature=0.7)):
    cached, _ = model.predict_batch(params, batch, cfg, rng=jax.random.PRNGKey(0))
    uncached, _ = model.predict_batch(params, batch, dataclasses.replace(cfg, use_cache=False),
                                      rng=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(cached, uncached)


LLAMA_GINS = {
    "tiny": (384, 2, None), "ipt_500m": (32000, 24, 498_457_728),
    "ipt_1_3b": (32000, 24, 1_288_800_256), "mistral_7b": (32000, 32, 7_241_732_096),
    "llama3_8b": (128257, 32, 8_030_269_440), "llama3_1_8b": (128257, 32, 8_030_269_440),
}


@pytest.mark.parametrize("name", sorted(LLAMA_GINS))
def test_llama_gins_build_the_stated_shapes(name):
  vocab_size, num_layers, num_params = LLAMA_GINS[name]
  gin.clear_config()
  try:
    if name != "tiny":  # The real sizes need their tokenizer file; the error says so.
      with pytest.raises(UsageError, match="VOCABULARY_PATH is read .* but never set"):
        gin_setup.parse_gin([f"models/llama/{name}.gin"], [])
      gin.clear_config()
    gin_setup.parse_gin([f"models/llama/{name}.gin"],
                        [] if name == "tiny" else ["VOCABULARY_PATH = '/unused'"])
    model = gin_setup.build_macro("MODEL", "a model gin")
  finally:
    gin.clear_config()
  config = model.module.config
  assert (config.vocab_size, config.num_layers) == (vocab_size, num_layers)
  if num_params is None:  # tiny: builds and initialises on the byte vocabulary.
    assert isinstance(model.vocabulary, seqio.ByteVocabulary)
    assert _init(model)["decoder"]["layers_1"]["self_attention"]["key"]["kernel"].shape == (32, 16)
  else:
    assert sum(int(np.prod(s)) for s in hf_llama.param_shapes(config).values()) == num_params
  if name == "mistral_7b":
    assert config.sliding_window == 4096 and config.rope.theta == 10000.0
  if name.startswith("llama3"):
    assert config.rope.theta == 500000.0 and config.num_kv_heads == 8
    assert type(model.vocabulary).__name__ == "HuggingFaceTokenizerVocabulary"
    assert (config.rope.scaling_factor == 8.0) == (name == "llama3_1_8b")
  assert os.path.exists(os.path.join(gin_configs.ROOT, "models/llama", f"{name}.gin"))


def test_flops_count_grouped_query_attention():
  """Two FLOPs per matmul weight per token, plus the attention scores (flops.py)."""
  config = factories.tiny_llama().module.config
  length = 32
  kernels = sum(int(np.prod(shape)) for name, shape in hf_llama.param_shapes(config).items()
                if name.endswith("/kernel"))
  scores = config.num_layers * 2 * config.num_heads * 2 * length * config.head_dim * length
  assert flops.decoder_only_forward_flops(config, length) == 2 * length * kernels + scores


def _llama3_style_checkpoint(directory):
  """A tiny HF Llama with a byte-level BPE tokenizer.json whose id 0 is text ("!")."""
  tokenizers = pytest.importorskip("tokenizers")
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20,
                          tokenizers.trainers.BpeTrainer(
                              vocab_size=280, show_progress=False,
                              initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  bpe.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
  size = bpe.get_vocab_size()
  torch.manual_seed(0)
  config = transformers.LlamaConfig(**dict(_COMMON, vocab_size=size, bos_token_id=size - 2,
                                           eos_token_id=size - 1), num_key_value_heads=2)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.LlamaForCausalLM(config).eval()
  model.save_pretrained(directory)
  bpe.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, f)
  return model, size


def test_tokenizer_json_moves_token_ids_on_import_and_back_on_export(tmp_path):
  """Llama 3 style: model id = tokenizer id + 1, row 0 the BOS row; export restores HF's ids."""
  directory, ours_dir, back_dir = (str(tmp_path / d) for d in ("hf", "ours", "back"))
  hf_model, size = _llama3_style_checkpoint(directory)
  _run_cli(["convert", "--from", "hf", "--input", directory, "--output", ours_dir])
  gin.clear_config()
  try:
    gin_setup.parse_gin([os.path.join(ours_dir, conversion.MODEL_GIN_FILE)],
                        ["ACTIVATION_DTYPE = 'float32'"])
    model = gin_setup.build_macro("MODEL", "a model gin")
  finally:
    gin.clear_config()
  assert model.vocabulary.id_offset == 1 and model.module.config.vocab_size == size + 1
  params = params_io.load_params(ours_dir, jax.eval_shape(lambda: _init(model)))
  ids = np.asarray(model.vocabulary.encode("the lazy brown dog"), np.int32)
  ours = np.asarray(model.module.apply({"params": params}, np.concatenate([[0], ids])[None],
                                       np.ones((1, len(ids) + 1), np.int32),
                                       enable_dropout=False))
  hf_ids = np.concatenate([[size - 2], ids - 1])[None]  # <|begin_of_text|>, tokenizer ids
  theirs = _hf_logits(hf_model, hf_ids, np.ones_like(hf_ids))
  np.testing.assert_allclose(ours[..., 1:], theirs, atol=LOGITS_TOLERANCE)

  _run_cli(["convert", "--to", "hf", "--input", ours_dir, "--output", back_dir])
  original, exported = hf.read_hf_state_dict(directory), hf.read_hf_state_dict(back_dir)
  assert sorted(exported) == sorted(original)
  assert all(np.array_equal(exported[k], original[k]) for k in original)
  assert hf.read_hf_config(back_dir)["vocab_size"] == size
  assert os.path.exists(os.path.join(back_dir, "tokenizer.json"))
