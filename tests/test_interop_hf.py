"""Hugging Face T5 <-> our T5: numerical parity with transformers (PyTorch, float32).

Random tiny HF models of both variants (v1.0: ReLU, tied and scaled logits, 8
buckets; v1.1/Flan: gated-GELU, untied lm_head, 32 buckets) are saved with
save_pretrained, converted, and compared on logits, per-example scores and
greedy decoding. Sequences are long enough to reach the logarithmic
relative-position buckets of both configurations.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import safetensors.numpy  # noqa: E402
import seqio  # noqa: E402

from instruct_jax import cli  # noqa: E402

from instruct_jax.cli import gin_setup  # noqa: E402
from instruct_jax.errors import UsageError  # noqa: E402
from instruct_jax.checkpoints import conversion as convert  # noqa: E402
from instruct_jax.checkpoints import hf  # noqa: E402
from instruct_jax.models import encoder_decoder  # noqa: E402
from instruct_jax.models.networks import t5  # noqa: E402
from instruct_jax.checkpoints import run_checkpointer
from instruct_jax.checkpoints import params_io

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 128
BATCH, INPUT_LENGTH, TARGET_LENGTH = 3, 24, 12
TOLERANCE = 1e-4

VARIANTS = {
    # T5 v1.0: ReLU MLP, logits tied to the embedding and scaled by d_model**-0.5.
    "v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20),
    # T5 v1.1 / Flan-T5: gated-GELU (tanh), separate unscaled lm_head.
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128),
}


def _hf_model(variant: str, seed: int = 0):
  torch.manual_seed(seed)
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
      num_decoder_layers=3, dropout_rate=0.0, decoder_start_token_id=0, **VARIANTS[variant])
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.T5ForConditionalGeneration(config)
  if not VARIANTS[variant]["tie_word_embeddings"]:
    # transformers>=5 ties lm_head at construction; a v1.1 checkpoint has its own.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 32**-0.5)
  return model.eval()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_checkpoint(request, tmp_path_factory):
  """(variant, HF model, directory it was saved to with save_pretrained)."""
  model = _hf_model(request.param)
  directory = tmp_path_factory.mktemp(f"hf_{request.param}")
  model.save_pretrained(directory)
  return request.param, model, str(directory)


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, VOCAB, size=(BATCH, INPUT_LENGTH)).astype(np.int32)
  targets = rng.integers(2, VOCAB, size=(BATCH, TARGET_LENGTH)).astype(np.int32)
  for row, (input_length, target_length) in enumerate([(24, 12), (17, 7), (9, 4)]):
    inputs[row, input_length:] = 0
    targets[row, target_length:] = 0
  decoder_inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def _our_model(config: t5.T5Config) -> encoder_decoder.EncoderDecoderModel:
  vocab = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config), vocab, vocab)


def _converted(directory: str):
  config, params, hf_config = hf.load_hf_checkpoint(directory, dtype="float32")
  return _our_model(config), jax.tree.map(np.asarray, params), hf_config


def _our_logits(model, params, batch) -> np.ndarray:
  apply = jax.jit(lambda p, b: model.module.apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"],
      b["decoder_target_tokens"], enable_dropout=False))
  return np.asarray(apply(params, batch))


def _hf_logits(model, batch) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.tensor(batch["encoder_input_tokens"], dtype=torch.long),
                attention_mask=torch.tensor(batch["encoder_input_tokens"] > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(batch["decoder_input_tokens"], dtype=torch.long))
  return out.logits.numpy()


def test_configs_map_to_the_right_variant(hf_checkpoint):
  variant, _, directory = hf_checkpoint
  config, params, _ = hf.load_hf_checkpoint(directory)
  if variant == "v1_0":
    assert config.logits_via_embedding and config.mlp_activations == ("relu",)
    assert "logits_dense" not in params["decoder"]
    assert "wi" in params["encoder"]["layers_0"]["mlp"]
  else:
    assert not config.logits_via_embedding and config.mlp_activations == ("gelu", "linear")
    assert params["decoder"]["logits_dense"]["kernel"].shape == (32, VOCAB)
    assert {"wi_0", "wi_1", "wo"} == set(params["decoder"]["layers_2"]["mlp"])
  assert config.num_encoder_layers == 2 and config.num_decoder_layers == 3
  assert config.relative_attention_num_buckets == VARIANTS[variant][
      "relative_attention_num_buckets"]
  assert params["encoder"]["relpos_bias"]["rel_embedding"].shape == (
      4, config.relative_attention_num_buckets)


def test_logits_match_transformers(hf_checkpoint):
  variant, hf_model, directory = hf_checkpoint
  model, params, _ = _converted(directory)
  batch = _batch()
  ours = _our_logits(model, params, batch)
  theirs = _hf_logits(hf_model, batch)
  valid = batch["decoder_target_tokens"] > 0
  diff = np.abs(ours - theirs)[valid]
  print(f"{variant}: max |logits diff| = {diff.max():.3g} (logit scale {np.abs(theirs).max():.3g})")
  assert diff.max() < TOLERANCE


def test_scores_match_transformers_loss(hf_checkpoint):
  variant, hf_model, directory = hf_checkpoint
  model, params, _ = _converted(directory)
  batch = _batch(seed=1)
  ours = np.asarray(jax.jit(model.score_batch)(params, batch))
  expected = []
  for row in range(BATCH):
    length = int((batch["decoder_target_tokens"][row] > 0).sum())
    inputs = batch["encoder_input_tokens"][row:row + 1]
    labels = batch["decoder_target_tokens"][row:row + 1, :length]
    with torch.no_grad():
      loss = hf_model(input_ids=torch.tensor(inputs, dtype=torch.long),
                      attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
                      labels=torch.tensor(labels, dtype=torch.long)).loss
    expected.append(-float(loss) * length)  # HF's loss is the mean over target tokens.
  print(f"{variant}: scores {ours}, max |diff| = {np.abs(ours - expected).max():.3g}")
  np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE)


def test_greedy_decoding_matches_generate(hf_checkpoint):
  decoding = pytest.importorskip("instruct_jax.models.decoding")
  variant, hf_model, directory = hf_checkpoint
  model, params, _ = _converted(directory)
  batch = _batch(seed=2)
  tokens, _ = model.predict_batch(params, batch, decoding.DecodeConfig(method="greedy"))
  tokens = np.asarray(tokens)
  with torch.no_grad():
    generated = hf_model.generate(
        input_ids=torch.tensor(batch["encoder_input_tokens"], dtype=torch.long),
        attention_mask=torch.tensor(batch["encoder_input_tokens"] > 0, dtype=torch.long),
        max_new_tokens=TARGET_LENGTH, do_sample=False, num_beams=1, decoder_start_token_id=0,
        eos_token_id=1, pad_token_id=0,
        # transformers' KV cache assumes as many decoder layers as encoder layers.
        use_cache=False).numpy()[:, 1:]  # Drop the start token.
  expected = np.zeros_like(tokens)
  expected[:, :generated.shape[1]] = generated
  print(f"{variant}: greedy tokens\n{tokens}")
  np.testing.assert_array_equal(tokens, expected)


def _run_cli(argv):
  gin.clear_config()
  try:
    cli.main(argv)
  finally:
    gin.clear_config()


def test_round_trip_hf_ours_hf_is_exact(hf_checkpoint, tmp_path):
  variant, hf_model, directory = hf_checkpoint
  ours_dir, back_dir = str(tmp_path / "ours"), str(tmp_path / "back")
  _run_cli(["convert", "--from", "hf", "--input", directory, "--output", ours_dir])
  assert os.path.exists(os.path.join(ours_dir, "model.gin"))
  _run_cli(["convert", "--to", "hf", "--input", ours_dir, "--output", back_dir])

  original = safetensors.numpy.load_file(os.path.join(directory, hf.SAFETENSORS_FILE))
  exported = safetensors.numpy.load_file(os.path.join(back_dir, hf.SAFETENSORS_FILE))
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
    np.testing.assert_array_equal(exported[key].view(np.uint8), value.view(np.uint8), key)
  with open(os.path.join(directory, hf.CONFIG_FILE)) as f:
    original_config = json.load(f)
  with open(os.path.join(back_dir, hf.CONFIG_FILE)) as f:
    exported_config = json.load(f)
  assert {k: exported_config.get(k) for k in original_config} == original_config

  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      back_dir, attn_implementation="eager").eval()
  batch = _batch(seed=3)
  np.testing.assert_array_equal(_hf_logits(reloaded, batch), _hf_logits(hf_model, batch))


def test_export_without_hf_config_and_with_gin(hf_checkpoint, tmp_path):
  """--to hf from shapes alone (a fresh transformers config), and checked against a gin."""
  variant, hf_model, directory = hf_checkpoint
  ours_dir = str(tmp_path / "ours")
  _run_cli(["convert", "--from", "hf", "--input", directory, "--output", ours_dir])
  os.remove(os.path.join(ours_dir, convert.HF_CONFIG_COPY))
  back_dir = str(tmp_path / "back")
  _run_cli(["convert", "--to", "hf", f"--gin_file={ours_dir}/model.gin", "--input", ours_dir,
            "--output", back_dir, "--dtype", "float32"])
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      back_dir, attn_implementation="eager").eval()
  assert reloaded.config.feed_forward_proj == VARIANTS[variant]["feed_forward_proj"]
  batch = _batch(seed=4)
  np.testing.assert_array_equal(_hf_logits(reloaded, batch), _hf_logits(hf_model, batch))

  # A gin for another architecture is refused, naming the fields that differ.
  other = "v1_1" if variant == "v1_0" else "v1_0"
  gin_file = tmp_path / "other.gin"
  gin_file.write_text(convert.model_gin_text(
      hf.t5_config_from_hf(_hf_model(other).config.to_dict()), "test", "x"))
  gin.clear_config()
  gin_setup.parse_gin([str(gin_file)], [])
  try:
    with pytest.raises(UsageError, match="logits_via_embedding"):
      convert.convert_to_hf(ours_dir, str(tmp_path / "bad"),
                            config=convert.network_config_of(gin_setup.build_macro("MODEL", "a model gin")))
  finally:
    gin.clear_config()


def test_written_model_gin_builds_the_model_and_loads(hf_checkpoint, tmp_path):
  variant, hf_model, directory = hf_checkpoint
  ours_dir = str(tmp_path / "ours")
  convert.convert_to_ours(directory, ours_dir, "hf")
  gin.clear_config()
  try:
    gin_setup.parse_gin([os.path.join(ours_dir, "model.gin")], ["ACTIVATION_DTYPE = 'float32'"])
    config = convert.network_config_of(gin_setup.build_macro("MODEL", "a model gin"))
  finally:
    gin.clear_config()
  expected, params, _ = hf.load_hf_checkpoint(directory, dtype="float32")
  assert config == expected
  model = _our_model(config)
  shapes = {"encoder_input_tokens": (8, INPUT_LENGTH), "decoder_input_tokens": (8, TARGET_LENGTH),
            "decoder_target_tokens": (8, TARGET_LENGTH)}
  abstract = nn.meta.unbox(jax.eval_shape(lambda: model.init_params(jax.random.key(0), shapes)))
  for path in (ours_dir, directory):  # Converted checkpoint, and the HF directory itself.
    assert params_io.detect_checkpoint_format(path)[0] == (
        params_io.ORBAX_TRAIN_STATE if path == ours_dir else params_io.HF_SAFETENSORS)
    loaded = params_io.load_params(path, abstract)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
      np.testing.assert_array_equal(np.asarray(a), b)


def test_model_gin_names_released_sizes():
  base = hf.t5_config_from_hf({
      "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12,
      "num_heads": 12, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False})
  assert convert.released_size(base) == "base"
  assert "include 'models/t5_1_1/base.gin'" in convert.model_gin_text(base, "hub", "/ckpt")
  v1_0 = hf.t5_config_from_hf({"vocab_size": 32128, "d_model": 512, "feed_forward_proj": "relu"})
  assert convert.released_size(v1_0) is None
  text = convert.model_gin_text(v1_0, "hub", "/ckpt")
  assert "logits_via_embedding = True" in text and "mlp_activations = ('relu',)" in text


def test_mismatched_model_lists_every_problem(hf_checkpoint):
  variant, _, directory = hf_checkpoint
  config, _, _ = hf.load_hf_checkpoint(directory, dtype="float32")
  other = t5.T5Config(**{**config.__dict__,
                         "logits_via_embedding": not config.logits_via_embedding,
                         "mlp_activations": ("relu",) if variant == "v1_1" else ("gelu", "linear"),
                         "num_decoder_layers": 2})
  model = _our_model(other)
  shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 8),
            "decoder_target_tokens": (2, 8)}
  abstract = nn.meta.unbox(jax.eval_shape(lambda: model.init_params(jax.random.key(0), shapes)))
  with pytest.raises(ValueError) as err:
    params_io.load_params(directory, abstract)
  message = str(err.value)
  assert "only in the checkpoint: decoder/layers_" in message
  if variant == "v1_0":
    assert "missing from the checkpoint: decoder/layers_0/mlp/wi_0/kernel" in message
  else:
    assert "only in the checkpoint: decoder/layers_0/mlp/wi_0/kernel" in message
  assert "convert --from hf" in message


def test_sharded_and_bfloat16_checkpoints(tmp_path):
  hf_model = _hf_model("v1_1", seed=5)
  hf_model.save_pretrained(tmp_path / "single")
  hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert os.path.exists(tmp_path / "sharded" / hf.SAFETENSORS_INDEX_FILE)
  _, single, _ = hf.load_hf_checkpoint(str(tmp_path / "single"))
  _, sharded, _ = hf.load_hf_checkpoint(str(tmp_path / "sharded"))
  jax.tree.map(np.testing.assert_array_equal, sharded, single)

  _hf_model("v1_1", seed=5).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  _, bf16, _ = hf.load_hf_checkpoint(str(tmp_path / "bf16"))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16))
  rounded = jax.tree.map(lambda x: x.astype("bfloat16").astype(np.float32), single)
  jax.tree.map(np.testing.assert_array_equal, bf16, rounded)

  # Export sharded: transformers reads the index we write.
  config, params, hf_config = hf.load_hf_checkpoint(str(tmp_path / "single"))
  names = hf.write_hf_checkpoint(str(tmp_path / "out"), hf.hf_config_from_t5(config, hf_config),
                                 hf.hf_state_dict_from_params(params, config),
                                 max_shard_bytes=30_000)
  assert len(names) > 1
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
  for key, value in hf_model.state_dict().items():
    torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)


def test_activation_names():
  assert hf.mlp_activations_from_hf("gated-gelu") == ("gelu", "linear")
  assert hf.mlp_activations_from_hf("gated-silu") == ("silu", "linear")
  assert hf.feed_forward_proj_from_activations(("gelu",)) == "gelu_new"
  with pytest.raises(UsageError, match="exact"):
    hf.mlp_activations_from_hf("gelu")  # HF's plain "gelu" is the erf form; ours is tanh.
  with pytest.raises(UsageError, match="gated-swiglu"):
    hf.mlp_activations_from_hf("gated-swiglu")


def test_convert_refuses_wrong_inputs(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  with pytest.raises(SystemExit):
    _run_cli(["convert", "--from", "hf", "--input", str(tmp_path / "empty"),
              "--output", str(tmp_path / "out")])
  assert "not a Hugging Face directory" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [
    {},  # T5 v1.1 layout, as trained here
    {"logits_via_embedding": True, "mlp_activations": ("relu",),
     "relative_attention_num_buckets": 16, "relative_attention_max_distance": 20},
], ids=["v1_1", "v1_0"])
def test_trained_checkpoint_exports_to_transformers(overrides, tmp_path):
  """Params born here (a training run's MODEL_DIR) -> HF: transformers gives our logits."""
  import optax  # pylint: disable=g-import-not-at-top
  import factories  # pylint: disable=g-import-not-at-top
  from instruct_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top
  model = factories.tiny_t5(**overrides)
  shapes = factories.input_shapes(2)
  abstract = nn.meta.unbox(jax.eval_shape(lambda: model.init_params(jax.random.key(0), shapes)))
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: 0.2 * rng.standard_normal(x.shape, np.float32), abstract)
  state = TrainState(step=jax.numpy.int32(3), params=params,
                     opt_state=optax.adafactor(1e-3).init(params))
  with run_checkpointer.Checkpointer(str(tmp_path / "run"), save_period=1, async_save=False) as ckpt:
    ckpt.save(3, state)
  convert.convert_to_hf(str(tmp_path / "run"), str(tmp_path / "hf"), config=model.module.config)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path / "hf"), attn_implementation="eager").eval()
  batch = factories.synthetic_batch(2, input_length=24, target_length=12)
  ours = _our_logits(model, params, batch)
  valid = batch["decoder_target_tokens"] > 0
  diff = np.abs(ours - _hf_logits(reloaded, batch))[valid].max()
  print(f"export parity: max |logits diff| = {diff:.3g}")
  assert diff < TOLERANCE
