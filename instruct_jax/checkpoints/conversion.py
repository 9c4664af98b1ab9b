"""Checkpoint conversion between Hugging Face, t5x and this project (`instruct-jax convert`).

T5 throughout; Llama / Mistral decoders (networks.llama) from and to Hugging Face,
the family told by config.json's model_type on import and by the model gin (or
the params' layout) on export (checkpoints.hf_llama).

`convert_to_ours` writes OUT/state (params-only, what INITIAL_CHECKPOINT_PATH reads) and
OUT/model.gin, the model gin for those params: it includes the shipped gin when
the architecture is a released T5 v1.1 / Flan-T5 size, and spells out the
T5Config otherwise (T5 v1.0, other sizes, other bucket counts). `convert_to_hf`
takes the architecture from a given T5Config (checked against the params), else
from the parameter shapes plus OUT/hf_config.json when the checkpoint was
converted from Hugging Face.
"""
import dataclasses
import json
import os
from typing import Any, Optional

from absl import logging
import ml_dtypes
import numpy as np
import tensorflow as tf

from instruct_jax.checkpoints import hf
from instruct_jax.checkpoints import hf_llama
from instruct_jax.checkpoints import params_io
from instruct_jax.checkpoints import t5x
from instruct_jax.errors import UsageError
from instruct_jax.models.networks import llama
from instruct_jax.models.networks import t5

MODEL_GIN_FILE = "model.gin"
HF_CONFIG_COPY = "hf_config.json"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}

# Released T5 v1.1 (= Flan-T5) sizes and the shipped gin for each; every one has the
# 32128-entry vocabulary, gated-GELU MLP, untied logits and 32 buckets up to 128.
_RELEASED_SIZES = {
    "small": dict(emb_dim=512, num_heads=6, num_encoder_layers=8, num_decoder_layers=8,
                  head_dim=64, mlp_dim=1024),
    "base": dict(emb_dim=768, num_heads=12, num_encoder_layers=12, num_decoder_layers=12,
                 head_dim=64, mlp_dim=2048),
    "large": dict(emb_dim=1024, num_heads=16, num_encoder_layers=24, num_decoder_layers=24,
                  head_dim=64, mlp_dim=2816),
    "xl": dict(emb_dim=2048, num_heads=32, num_encoder_layers=24, num_decoder_layers=24,
               head_dim=64, mlp_dim=5120),
    "xxl": dict(emb_dim=4096, num_heads=64, num_encoder_layers=24, num_decoder_layers=24,
                head_dim=64, mlp_dim=10240),
}
_RELEASED_COMMON = dict(vocab_size=32128, mlp_activations=("gelu", "linear"),
                        logits_via_embedding=False, relative_attention_num_buckets=32,
                        relative_attention_max_distance=128)
# T5Config fields that decide the parameter tree and the computation.
ARCHITECTURE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                       "num_decoder_layers", "head_dim", "mlp_dim", "mlp_activations",
                       "logits_via_embedding", "relative_attention_num_buckets",
                       "relative_attention_max_distance")


def released_size(config: t5.T5Config) -> Optional[str]:
  """'base' etc. when `config` is a released T5 v1.1 / Flan-T5 architecture, else None."""
  if not isinstance(config, t5.T5Config):
    return None
  for size, dims in _RELEASED_SIZES.items():
    wanted = {**_RELEASED_COMMON, **dims}
    if all(getattr(config, k) == v for k, v in wanted.items()):
      return size
  return None


def model_gin_text(config: t5.T5Config, source: str, checkpoint_dir: str) -> str:
  """A model gin that builds exactly `config` (dtype and dropout left to the macros)."""
  usage = (f"# Written by `instruct-jax convert` from {source}.\n"
           "# Fine-tune the params in this directory with:\n"
           f"#   instruct-jax train --gin_file=runs/finetune.gin "
           f"--gin_file={os.path.join(checkpoint_dir, MODEL_GIN_FILE)} \\\n"
           f"#     --gin.INITIAL_CHECKPOINT_PATH=\"'{checkpoint_dir}'\" ...\n")
  size = released_size(config)
  if size is not None:
    return (f"# T5 v1.1 / Flan-T5 {size.upper()} (same as models/flan_t5/{size}.gin).\n"
            + usage + f"include 'models/t5_1_1/{size}.gin'\n")
  variant = ("T5 v1.0 style (tied, scaled logits)" if config.logits_via_embedding
             else "T5 v1.1 style (untied logits)")
  lines = [f"# {variant}, mlp_activations={config.mlp_activations}.", usage.rstrip("\n")]
  if config.vocab_size != _RELEASED_COMMON["vocab_size"]:
    lines.append(
        f"# NOTE: vocab_size={config.vocab_size} is not the default T5 SentencePiece "
        "vocabulary's 32128;\n# bind seqio.SentencePieceVocabulary.sentencepiece_model_file "
        "(or VOCABULARY) to this model's vocabulary.")
  lines += ["include 'models/t5_1_1/base.gin'", "", "from __gin__ import dynamic_registration",
            "from instruct_jax.models.networks import t5", "", "t5.T5Config:"]
  for field in ARCHITECTURE_FIELDS:
    lines.append(f"  {field} = {getattr(config, field)!r}")
  return "\n".join(lines) + "\n"


def network_config_of(model: Any) -> Any:
  """The T5Config or LlamaConfig of a model object (what `--to hf` exports)."""
  config = getattr(getattr(model, "module", None), "config", None)
  if not isinstance(config, (t5.T5Config, llama.LlamaConfig)):
    raise UsageError("--to hf exports T5 encoder-decoder and Llama / Mistral models; the "
                     f"gin's MODEL is {type(model).__name__} with neither a T5Config nor a "
                     "LlamaConfig.")
  return config


def _check_matches(config: t5.T5Config, inferred: t5.T5Config, where: str) -> None:
  shape_fields = [f for f in ARCHITECTURE_FIELDS if f != "relative_attention_max_distance"]
  wrong = []
  for field in shape_fields:
    mine, theirs = getattr(config, field), getattr(inferred, field)
    if field == "mlp_activations":
      mine, theirs = len(mine), len(theirs)
    if mine != theirs:
      wrong.append(f"  {field}: gin has {getattr(config, field)!r}, checkpoint has "
                   f"{getattr(inferred, field)!r}")
  if wrong:
    raise UsageError(f"The model gin does not match the params in {where}:\n" + "\n".join(wrong)
                     + "\nPass the model gin the checkpoint was trained with.")


def _prepare_output(path: str, overwrite: bool) -> None:
  gfile = tf.io.gfile
  if gfile.exists(path) and gfile.listdir(path):
    if not overwrite:
      raise UsageError(f"--output {path} already exists and is not empty; choose a new "
                       "directory or pass --overwrite.")
    gfile.rmtree(path)
  elif gfile.exists(path):
    gfile.rmtree(path)  # orbax wants to create the checkpoint directory itself.


def _write_text(path: str, text: str) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text)


def convert_to_ours(input_path: str, output: str, source_format: str,
                    overwrite: bool = False) -> t5.T5Config:
  """HF or t5x checkpoint -> our params-only checkpoint + model.gin in `output`."""
  hf_config = None
  if source_format == "hf":
    if not hf.is_hf_checkpoint(input_path):
      raise UsageError(f"--input {input_path} is not a Hugging Face directory: expected "
                       f"{hf.CONFIG_FILE} and {hf.SAFETENSORS_FILE} (or "
                       f"{hf.SAFETENSORS_INDEX_FILE}).")
    config, params, hf_config = params_io.load_hf_checkpoint(input_path)
  else:
    t5x.check_checkpoint_path(input_path)
    try:
      fmt, params = params_io.read_params(input_path)
    except FileNotFoundError as e:
      raise UsageError(f"--from t5x: {e}") from None
    if fmt not in (params_io.T5X_LEGACY, params_io.T5X_ORBAX):
      raise UsageError(f"--from t5x but {input_path} is a {fmt} checkpoint.")
    params = _as_float32(params)
    config = hf.infer_t5_config(params)
  if "://" not in output:
    output = os.path.abspath(output)  # orbax writes to absolute paths only
  _prepare_output(output, overwrite)
  params_io.save_params(output, params)
  gin_path = os.path.join(output, MODEL_GIN_FILE)
  if isinstance(config, llama.LlamaConfig):
    hf_llama.copy_tokenizer_files(input_path, output)
    gin_text = hf_llama.model_gin_text(config, input_path, gin_path, output)
  else:
    gin_text = model_gin_text(config, input_path, output)
  _write_text(gin_path, gin_text)
  if hf_config is not None:
    _write_text(os.path.join(output, HF_CONFIG_COPY), json.dumps(hf_config, indent=2) + "\n")
  return config


def convert_to_hf(input_path: str, output: str, config: Optional[Any] = None,
                  dtype: str = "float32", max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES,
                  overwrite: bool = False) -> dict[str, Any]:
  """Any readable T5 or Llama checkpoint -> HF config.json + safetensors in `output`.

  Returns the HF config. `config` (T5Config or LlamaConfig, from the model gin)
  is checked against the params; without it a T5's architecture is read off the
  shapes, with activations and max distance from the hf_config.json saved at
  import time when there is one, and a Llama's comes from that hf_config.json.
  """
  fmt, params = params_io.read_params(input_path)
  base = None
  copy = os.path.join(input_path, HF_CONFIG_COPY)
  if fmt == params_io.HF_SAFETENSORS:
    base = hf.read_hf_config(input_path)
  elif tf.io.gfile.exists(copy):
    with tf.io.gfile.GFile(copy, "r") as f:
      base = json.load(f)
  if isinstance(config, llama.LlamaConfig) or (config is None and hf_llama.is_llama_params(params)):
    hf_config, state_dict = _llama_state_dict(params, config, base, input_path, dtype)
    _write_hf(output, hf_config, state_dict, dtype, max_shard_bytes, overwrite)
    hf_llama.copy_tokenizer_files(input_path, output)
    return hf_config
  defaults = {}
  if base is not None:
    defaults = dict(relative_attention_max_distance=int(
        base.get("relative_attention_max_distance", 128)))
    activations = hf.mlp_activations_from_hf(base.get("feed_forward_proj", "relu"))
    defaults["gated_activation" if len(activations) == 2 else "single_activation"] = (
        activations[0])
  inferred = hf.infer_t5_config(params, **defaults)
  if config is None:
    config = inferred
    logging.info("No model gin given; exporting the architecture read off the checkpoint: %s",
                 config)
  else:
    _check_matches(config, inferred, input_path)
  if dtype not in DTYPES:
    raise UsageError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
  state_dict = hf.hf_state_dict_from_params(params, config, dtype=np.dtype(DTYPES[dtype]))
  return _write_hf(output, hf.hf_config_from_t5(config, base), state_dict, dtype,
                   max_shard_bytes, overwrite)


def _write_hf(output: str, hf_config: dict[str, Any], state_dict: dict[str, np.ndarray],
              dtype: str, max_shard_bytes: int, overwrite: bool) -> dict[str, Any]:
  for key in ("torch_dtype", "dtype"):
    if key in hf_config:
      hf_config[key] = dtype
  _prepare_output(output, overwrite)
  hf.write_hf_checkpoint(output, hf_config, state_dict, max_shard_bytes=max_shard_bytes)
  return hf_config


def _llama_state_dict(params: Any, config: Optional[llama.LlamaConfig], base: Optional[dict],
                      input_path: str, dtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(HF config, state dict) of Llama / Mistral params; the config from the gin, else base.

  Token rows move back by the id offset of the tokenizer files next to the input.
  """
  id_offset = hf_llama.tokenizer_id_offset(input_path)
  if config is None:
    if base is None or not hf_llama.is_llama_config(base):
      raise UsageError(
          f"{input_path} holds Llama-style params but no {HF_CONFIG_COPY} from an import "
          "says their rope, norm epsilon and window; pass the model gin with --gin_file.")
    config = hf_llama.llama_config_from_hf(base)
    config = dataclasses.replace(config, vocab_size=config.vocab_size + id_offset)
  if dtype not in DTYPES:
    raise UsageError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
  state_dict = hf_llama.hf_state_dict_from_params(params, config, dtype=np.dtype(DTYPES[dtype]),
                                                  id_offset=id_offset)
  exported = dataclasses.replace(config, vocab_size=config.vocab_size - id_offset)
  return hf_llama.hf_config_from_llama(exported, base), state_dict


def _as_float32(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _as_float32(v) for k, v in tree.items()}
  return np.asarray(tree).astype(np.float32)
