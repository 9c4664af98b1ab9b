"""Hugging Face LlamaForCausalLM / MistralForCausalLM <-> our networks.llama params.

The two networks compute the same function, so conversion is renaming plus
transposes (torch Linear weights are [out, in], our kernels [in, out]):

  model.embed_tokens.weight               decoder/token_embedder/embedding
  model.layers.N.input_layernorm          decoder/layers_N/pre_self_attention_layer_norm
  model.layers.N.self_attn.{q,k,v,o}_proj decoder/layers_N/self_attention/{query,key,value,out}
  model.layers.N.post_attention_layernorm decoder/layers_N/pre_mlp_layer_norm
  model.layers.N.mlp.{gate,up,down}_proj  decoder/layers_N/mlp/{wi_0,wi_1,wo}
  model.norm.weight                       decoder/decoder_norm/scale
  lm_head.weight                          decoder/logits_dense/kernel (absent when tied)

HF's q / k weights are already in the "rotate half" order networks.rotary uses.

Token ids. A checkpoint that ships only a Hugging Face tokenizer.json (Llama 3)
is read through data.hf_tokenizer_vocabulary, which moves every id up by its
`id_offset` (1 when the tokenizer's id 0 is real text, as Llama 3's "!") so that
seqio's padding / start id 0 is free. Import then puts `id_offset` rows in front
of the embedding (and columns in front of lm_head), copies of the BOS row, so
seqio's start token 0 reads as `<|begin_of_text|>`; vocab_size grows by as much.
Export drops them again. The tokenizer files travel with the checkpoint in both
directions, which is how each side knows the offset.

config.json is read in both spellings transformers has written: `rope_theta` +
`rope_scaling` (before v5) and `rope_parameters` (v5); export keeps the
spelling of the config it started from. Files go through checkpoints.hf
(safetensors, sharded or not; local or gs://).
"""

import dataclasses
import posixpath
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

from instruct_jax.checkpoints import hf
from instruct_jax.data import hf_tokenizer_vocabulary
from instruct_jax.errors import UsageError
from instruct_jax.models.networks import llama
from instruct_jax.models.networks import rotary

MODEL_TYPES = ("llama", "mistral")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
# HF's config class defaults for keys a config.json may leave out.
_DEFAULT_EPSILON = 1e-6
_DEFAULT_THETA = 10000.0
_MISTRAL_DEFAULT_WINDOW = 4096

_ATTENTION = (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "o_proj"))
_MLP = (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj"))
_EMBEDDING = "decoder/token_embedder/embedding"
SENTENCEPIECE_FILE = "tokenizer.model"
TOKENIZER_FILE = hf_tokenizer_vocabulary.TOKENIZER_FILE
# What a Hugging Face model directory holds besides weights and config.json.
TOKENIZER_FILES = (SENTENCEPIECE_FILE, TOKENIZER_FILE,
                   hf_tokenizer_vocabulary.TOKENIZER_CONFIG_FILE, "special_tokens_map.json")
_LM_HEAD = "lm_head.weight"

Params = dict[str, Any]


def is_llama_config(hf_config: Mapping[str, Any]) -> bool:
  return hf_config.get("model_type") in MODEL_TYPES


# ---------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------


def _rope_from_hf(hf_config: Mapping[str, Any]) -> rotary.RotaryEmbedding:
  rope = {**(hf_config.get("rope_scaling") or {}), **(hf_config.get("rope_parameters") or {})}
  theta = float(rope.get("rope_theta", hf_config.get("rope_theta", _DEFAULT_THETA)))
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  partial = rope.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0))
  if partial not in (None, 1, 1.0):
    raise UsageError(f"partial_rotary_factor={partial} is not supported; the rotary embedding "
                     "covers the whole head.")
  if rope_type == "default":
    return rotary.RotaryEmbedding(theta=theta)
  if rope_type == "llama3":
    return rotary.RotaryEmbedding(
        theta=theta, scaling_factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_positions=int(rope.get("original_max_position_embeddings")
                                   or hf_config["max_position_embeddings"]))
  raise UsageError(f"rope type {rope_type!r} is not supported; supported: 'default' and "
                   "'llama3' (Llama 3.1 scaling).")


def llama_config_from_hf(hf_config: Mapping[str, Any],
                         dtype: str = "bfloat16") -> llama.LlamaConfig:
  """Our LlamaConfig for an HF Llama or Mistral config.json (dropout is a training choice)."""
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise UsageError(f"Expected a Hugging Face Llama or Mistral config (model_type one of "
                     f"{MODEL_TYPES}), found model_type {model_type!r}.")
  for key, supported in (("hidden_act", "silu"), ("attention_bias", False),
                         ("mlp_bias", False)):
    if hf_config.get(key, supported) != supported:
      raise UsageError(f"{key}={hf_config[key]!r} is not supported (only {supported!r}, as in "
                       "Llama and Mistral).")
  num_heads = int(hf_config["num_attention_heads"])
  emb_dim = int(hf_config["hidden_size"])
  window = (hf_config.get("sliding_window", _MISTRAL_DEFAULT_WINDOW) if model_type == "mistral"
            else None)
  return llama.LlamaConfig(
      vocab_size=int(hf_config["vocab_size"]),
      emb_dim=emb_dim,
      num_heads=num_heads,
      num_kv_heads=int(hf_config.get("num_key_value_heads") or num_heads),
      num_layers=int(hf_config["num_hidden_layers"]),
      head_dim=int(hf_config.get("head_dim") or emb_dim // num_heads),
      mlp_dim=int(hf_config["intermediate_size"]),
      rope=_rope_from_hf(hf_config),
      norm_epsilon=float(hf_config.get("rms_norm_eps", _DEFAULT_EPSILON)),
      tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
      sliding_window=None if window is None else int(window),
      dtype=dtype)


def _hf_rope(rope: rotary.RotaryEmbedding) -> dict[str, Any]:
  if rope.scaling_factor is None:
    return {"rope_type": "default", "rope_theta": rope.theta}
  return {"rope_type": "llama3", "rope_theta": rope.theta, "factor": rope.scaling_factor,
          "low_freq_factor": rope.low_freq_factor, "high_freq_factor": rope.high_freq_factor,
          "original_max_position_embeddings": rope.original_max_positions}


def hf_config_from_llama(config: llama.LlamaConfig, base: Optional[Mapping[str, Any]] = None
                         ) -> dict[str, Any]:
  """An HF config.json dict for `config`; `base` keeps every non-architecture field.

  The model type is Mistral when there is a sliding window (Llama has none),
  else the base's, else Llama.
  """
  if tuple(config.mlp_activations) != ("silu", "linear"):
    raise UsageError(f"mlp_activations={config.mlp_activations} has no Hugging Face Llama "
                     "equivalent; Llama and Mistral use ('silu', 'linear').")
  hf_config = dict(base or {})
  model_type = hf_config.get("model_type") if is_llama_config(hf_config) else "llama"
  if config.sliding_window is not None:
    model_type = "mistral"
  if hf_config.get("model_type") != model_type:
    hf_config["architectures"] = [_ARCHITECTURES[model_type]]
  hf_config.setdefault("architectures", [_ARCHITECTURES[model_type]])
  hf_config.update(
      model_type=model_type,
      vocab_size=config.vocab_size,
      hidden_size=config.emb_dim,
      intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim,
      rms_norm_eps=config.norm_epsilon,
      tie_word_embeddings=config.tie_word_embeddings,
      hidden_act="silu",
  )
  if model_type == "mistral":
    hf_config["sliding_window"] = config.sliding_window
  rope = _hf_rope(config.rope)
  if "rope_parameters" in hf_config:
    hf_config["rope_parameters"] = rope
  else:
    hf_config["rope_theta"] = rope.pop("rope_theta")
    hf_config["rope_scaling"] = rope if config.rope.scaling_factor is not None else None
  hf_config.setdefault("max_position_embeddings", max(config.rope.original_max_positions, 4096))
  return hf_config


# ---------------------------------------------------------------------------
# Parameter names and shapes.
# ---------------------------------------------------------------------------


def name_map(config: llama.LlamaConfig) -> dict[str, str]:
  """Our flat param name ('a/b/c') -> HF state-dict key, for every parameter."""
  names = {_EMBEDDING: "model.embed_tokens.weight",
           "decoder/decoder_norm/scale": "model.norm.weight"}
  for i in range(config.num_layers):
    ours, theirs = f"decoder/layers_{i}", f"model.layers.{i}"
    names[f"{ours}/pre_self_attention_layer_norm/scale"] = f"{theirs}.input_layernorm.weight"
    names[f"{ours}/pre_mlp_layer_norm/scale"] = f"{theirs}.post_attention_layernorm.weight"
    for our_proj, hf_proj in _ATTENTION:
      names[f"{ours}/self_attention/{our_proj}/kernel"] = f"{theirs}.self_attn.{hf_proj}.weight"
    for our_proj, hf_proj in _MLP:
      names[f"{ours}/mlp/{our_proj}/kernel"] = f"{theirs}.mlp.{hf_proj}.weight"
  if not config.tie_word_embeddings:
    names["decoder/logits_dense/kernel"] = _LM_HEAD
  return names


def param_shapes(config: llama.LlamaConfig) -> dict[str, tuple[int, ...]]:
  """Our flat param name -> its shape (HF's is the transpose for 2-D kernels)."""
  emb, q_dim = config.emb_dim, config.num_heads * config.head_dim
  kv_dim = config.num_kv_heads * config.head_dim
  by_leaf = {"query": (emb, q_dim), "key": (emb, kv_dim), "value": (emb, kv_dim),
             "out": (q_dim, emb), "wi_0": (emb, config.mlp_dim), "wi_1": (emb, config.mlp_dim),
             "wo": (config.mlp_dim, emb), "logits_dense": (emb, config.vocab_size)}
  shapes = {}
  for ours in name_map(config):
    if ours == _EMBEDDING:
      shapes[ours] = (config.vocab_size, emb)
    elif ours.endswith("/scale"):
      shapes[ours] = (emb,)
    else:
      shapes[ours] = by_leaf[ours.split("/")[-2]]
  return shapes


def _swap_layout(name: str, value: np.ndarray) -> np.ndarray:
  """Ours <-> HF: every 2-D weight but the embedding is transposed."""
  if value.ndim == 2 and name != _EMBEDDING:
    return np.ascontiguousarray(value.T)
  return value


def params_from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: llama.LlamaConfig,
                              dtype: Any = np.float32) -> Params:
  """Our nested param dict from an HF Llama / Mistral state dict (raises listing every problem)."""
  names = name_map(config)
  shapes = param_shapes(config)
  problems = []
  for ours, key in names.items():
    expected = shapes[ours] if ours == _EMBEDDING else shapes[ours][::-1]
    if key not in state_dict:
      problems.append(f"  missing: {key} (for {ours}, expected shape {expected})")
    elif tuple(state_dict[key].shape) != expected:
      problems.append(f"  wrong shape: {key}: found {tuple(state_dict[key].shape)}, expected "
                      f"{expected}")
  embedding = state_dict.get(names[_EMBEDDING])
  for key in sorted(set(state_dict) - set(names.values())):
    if key.endswith("rotary_emb.inv_freq"):
      continue  # A buffer older transformers saved; recomputed from the config.
    if key == _LM_HEAD and config.tie_word_embeddings:
      if not np.array_equal(state_dict[key], embedding):
        problems.append(f"  {_LM_HEAD} differs from the embedding but the config ties them "
                        "(tie_word_embeddings=True)")
      continue
    problems.append(f"  unexpected: {key} (shape {tuple(state_dict[key].shape)})")
  if problems:
    raise UsageError(
        f"The Hugging Face state dict does not match the Llama config ({config.num_layers} "
        f"layers, {config.num_heads} heads / {config.num_kv_heads} kv heads, "
        f"tie_word_embeddings={config.tie_word_embeddings}):\n" + "\n".join(problems))
  flat = {ours: _swap_layout(ours, np.asarray(state_dict[key]).astype(dtype))
          for ours, key in names.items()}
  return hf._unflatten(flat)  # pylint: disable=protected-access


def hf_state_dict_from_params(params: Mapping[str, Any], config: llama.LlamaConfig,
                              dtype: Any = np.float32, id_offset: int = 0
                              ) -> dict[str, np.ndarray]:
  """HF state dict (a tied lm_head omitted, as save_pretrained does) from our params.

  id_offset drops that many leading token rows (see the module docstring);
  `config` describes the params, so its vocab_size includes them.
  """
  flat = hf._flatten(params)  # pylint: disable=protected-access
  check_params_match(flat, config, "the params being exported")
  flat = _move_token_ids(flat, -id_offset)
  unshifted = dataclasses.replace(config, vocab_size=config.vocab_size - id_offset)
  return {key: _swap_layout(ours, np.asarray(flat[ours])).astype(dtype)
          for ours, key in name_map(unshifted).items()}


def _move_token_ids(flat: dict[str, Any], offset: int, start_id: int = 0) -> dict[str, Any]:
  """Model id = HF id + offset: offset > 0 prepends copies of row `start_id` (BOS) to the
  embedding and of its column to logits_dense; offset < 0 drops that many leading ones."""
  if offset == 0:
    return flat
  moved = dict(flat)
  for name, axis in ((_EMBEDDING, 0), ("decoder/logits_dense/kernel", 1)):
    if name not in flat:
      continue
    value = np.asarray(flat[name])
    if offset > 0:
      start = np.take(value, [start_id] * offset, axis=axis)
      moved[name] = np.concatenate([start, value], axis=axis)
    else:
      moved[name] = np.take(value, np.arange(-offset, value.shape[axis]), axis=axis)
  return moved


def check_params_match(flat: Mapping[str, Any], config: llama.LlamaConfig, where: str) -> None:
  """Raises a UsageError listing every param missing, unexpected or of another shape."""
  shapes = param_shapes(config)
  problems = [f"  missing: {k} (shape {shapes[k]})" for k in sorted(set(shapes) - set(flat))]
  problems += [f"  unexpected: {k}" for k in sorted(set(flat) - set(shapes))]
  problems += [f"  wrong shape: {k}: found {tuple(np.shape(flat[k]))}, config gives {shapes[k]}"
               for k in sorted(set(shapes) & set(flat)) if tuple(np.shape(flat[k])) != shapes[k]]
  if problems:
    raise UsageError(f"The Llama config does not match {where}:\n" + "\n".join(problems)
                     + "\nPass the model gin the checkpoint was trained with.")


def is_llama_params(params: Mapping[str, Any]) -> bool:
  """Whether a param tree has this family's layout (a decoder with grouped-query-ready
  attention and a gated MLP, no relative position bias)."""
  flat = hf._flatten(params)  # pylint: disable=protected-access
  return (any(k.startswith("decoder/layers_0/self_attention/") for k in flat)
          and "decoder/relpos_bias/rel_embedding" not in flat and "encoder" not in params)


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def is_llama_checkpoint(directory: str) -> bool:
  return hf.is_hf_checkpoint(directory) and is_llama_config(hf.read_hf_config(directory))


def tokenizer_id_offset(directory: str) -> int:
  """How far our vocabulary moves this directory's token ids (module docstring).

  Non-zero only for a tokenizer.json without a SentencePiece tokenizer.model
  (which seqio reads with the tokenizer's own ids).
  """
  if (tf.io.gfile.exists(posixpath.join(directory, SENTENCEPIECE_FILE))
      or not tf.io.gfile.exists(posixpath.join(directory, TOKENIZER_FILE))):
    return 0
  return hf_tokenizer_vocabulary.HuggingFaceTokenizerVocabulary(directory).id_offset


def copy_tokenizer_files(source: str, destination: str) -> list[str]:
  """Copies the tokenizer files `source` has into `destination`; returns their names."""
  copied = []
  for name in TOKENIZER_FILES:
    if tf.io.gfile.exists(posixpath.join(source, name)):
      tf.io.gfile.copy(posixpath.join(source, name), posixpath.join(destination, name),
                       overwrite=True)
      copied.append(name)
  return copied


def load_hf_checkpoint(directory: str, dtype: str = "bfloat16"
                       ) -> tuple[llama.LlamaConfig, Params, dict[str, Any]]:
  """(LlamaConfig with activation `dtype`, float32 params, HF config dict) of a directory.

  Token rows are moved by tokenizer_id_offset(directory) (module docstring).
  """
  hf_config = hf.read_hf_config(directory)
  config = llama_config_from_hf(hf_config, dtype=dtype)
  params = params_from_hf_state_dict(hf.read_hf_state_dict(directory), config)
  flat = hf._flatten(params)  # pylint: disable=protected-access
  id_offset = tokenizer_id_offset(directory)
  if id_offset:
    bos = hf_config.get("bos_token_id")
    if not isinstance(bos, int):
      raise UsageError(f"{directory}/config.json names no bos_token_id; it is needed to fill "
                       "the start-token row that the tokenizer's id offset adds.")
    flat = _move_token_ids(flat, id_offset, start_id=bos)
    config = dataclasses.replace(config, vocab_size=config.vocab_size + id_offset)
  return config, hf._unflatten(flat), hf_config  # pylint: disable=protected-access


def _vocabulary_gin(source: str) -> list[str]:
  """Gin lines binding VOCABULARY to the tokenizer shipped next to the HF checkpoint."""
  sentencepiece = posixpath.join(source, SENTENCEPIECE_FILE)
  if tf.io.gfile.exists(sentencepiece):
    return ["# The checkpoint's SentencePiece tokenizer (Llama 2, Mistral).",
            f"VOCABULARY_PATH = {sentencepiece!r}",
            "VOCABULARY = @seqio.SentencePieceVocabulary()",
            "seqio.SentencePieceVocabulary.sentencepiece_model_file = %VOCABULARY_PATH"]
  if tf.io.gfile.exists(posixpath.join(source, TOKENIZER_FILE)):
    return ["# The checkpoint's Hugging Face tokenizer.json (Llama 3).",
            f"VOCABULARY_PATH = {source!r}",
            "VOCABULARY = @hf_tokenizer_vocabulary.HuggingFaceTokenizerVocabulary()",
            "hf_tokenizer_vocabulary.HuggingFaceTokenizerVocabulary.tokenizer_path = "
            "%VOCABULARY_PATH"]
  return [f"# {source} has no {SENTENCEPIECE_FILE} or {TOKENIZER_FILE}: set VOCABULARY_PATH to "
          "the model's SentencePiece tokenizer.model,",
          "# or bind VOCABULARY to @hf_tokenizer_vocabulary.HuggingFaceTokenizerVocabulary() "
          "for a tokenizer.json.",
          "VOCABULARY = @seqio.SentencePieceVocabulary()",
          "seqio.SentencePieceVocabulary.sentencepiece_model_file = %VOCABULARY_PATH"]


def model_gin_text(config: llama.LlamaConfig, source: str, gin_path: str,
                   checkpoint_dir: str) -> str:
  """A model gin that builds exactly `config` (dtype and dropout left to the macros), with
  VOCABULARY over the tokenizer files copied into `checkpoint_dir`."""
  lines = [
      f"# A Llama-family decoder written by `instruct-jax convert` from {source}.",
      "# Fine-tune the params in this directory with:",
      f"#   instruct-jax train --gin_file=runs/finetune.gin --gin_file={gin_path} \\",
      f"#     --gin.INITIAL_CHECKPOINT_PATH=\"'{checkpoint_dir}'\" ...",
      "include 'models/llama/base.gin'",
      "",
      "from __gin__ import dynamic_registration",
      "import seqio",
      "from instruct_jax.data import hf_tokenizer_vocabulary",
      "from instruct_jax.models.networks import llama",
      "from instruct_jax.models.networks import rotary",
      "",
      *_vocabulary_gin(checkpoint_dir),
      "",
      "llama.LlamaConfig:",
  ]
  for field in ("vocab_size", "emb_dim", "num_heads", "num_kv_heads", "num_layers", "head_dim",
                "mlp_dim", "norm_epsilon", "tie_word_embeddings", "sliding_window"):
    lines.append(f"  {field} = {getattr(config, field)!r}")
  lines += ["", "rotary.RotaryEmbedding:"]
  for field in ("theta", "scaling_factor", "low_freq_factor", "high_freq_factor",
                "original_max_positions"):
    lines.append(f"  {field} = {getattr(config.rope, field)!r}")
  return "\n".join(lines) + "\n"
