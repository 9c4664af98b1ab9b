"""Hugging Face T5 / Flan-T5 checkpoints (config.json + safetensors) <-> our T5 params.

Both sides describe the same network, so conversion is renaming plus transposes:

  * torch Linear weights are [out, in]; our kernels are [in, out] (transpose);
  * HF's relative_attention_bias lives in block 0 of each stack as
    [buckets, heads]; ours is one `relpos_bias/rel_embedding` per stack as
    [heads, buckets] (transpose);
  * embeddings and RMS-norm scales map unchanged; HF's q is not pre-scaled by
    1/sqrt(d_kv) either (T5 folds that into the initialisation).

Variants:
  * T5 v1.0: ReLU MLP (`wi`), output logits tied to the embedding and scaled by
    d_model**-0.5 -> our `logits_via_embedding=True`.
  * T5 v1.1 / Flan-T5: gated-GELU MLP (`wi_0`, `wi_1`; HF's "gated-gelu" is the
    tanh approximation, which is flax's `nn.gelu` default), separate unscaled
    `lm_head` -> our `decoder/logits_dense`.
Whether HF scales the logits is `scale_decoder_outputs` in transformers>=5 and
`tie_word_embeddings` (default True) before; both are honoured on import.

Files are read and written through tf.io.gfile (the abstraction seqio uses), so
gs:// works wherever TensorFlow can reach it. This module never imports torch
or transformers.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from absl import logging
import numpy as np
import safetensors
import safetensors.numpy
import tensorflow as tf

from instruct_jax.errors import UsageError
from instruct_jax.models.networks import t5

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
# transformers' default shard size for save_pretrained ("5GB").
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# T5LayerNorm's epsilon; our RMSNorm hard-codes the same value.
_LAYER_NORM_EPSILON = 1e-6

# feed_forward_proj <-> our mlp_activations. The first spelling is what export
# writes; the others are accepted on import.
_FEED_FORWARD_PROJ = {
    "relu": ("relu",),
    "gated-gelu": ("gelu", "linear"),
    "gated-silu": ("silu", "linear"),
    "gated-relu": ("relu", "linear"),
    "gelu_new": ("gelu",),
    "silu": ("silu",),
}
_IMPORT_ALIASES = {
    "gated-gelu_new": "gated-gelu",
    "gated-gelu_pytorch_tanh": "gated-gelu",
    "gelu_pytorch_tanh": "gelu_new",
    "gated-swish": "gated-silu",
    "swish": "silu",
}
# Keys HF checkpoints may carry that hold no information of their own.
_EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

_ATTENTION = (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))

Params = dict[str, Any]


# ---------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------


def scales_decoder_outputs(hf_config: Mapping[str, Any]) -> bool:
  """Whether HF multiplies the decoder output by d_model**-0.5 before lm_head (T5 v1.0)."""
  if "scale_decoder_outputs" in hf_config:
    return bool(hf_config["scale_decoder_outputs"])
  return hf_config.get("tie_word_embeddings", True) is not False


def mlp_activations_from_hf(feed_forward_proj: str) -> tuple[str, ...]:
  name = _IMPORT_ALIASES.get(feed_forward_proj, feed_forward_proj)
  if name in _FEED_FORWARD_PROJ:
    return _FEED_FORWARD_PROJ[name]
  if name in ("gelu", "gated-gelu_exact"):
    raise UsageError(
        f"feed_forward_proj={feed_forward_proj!r} uses the exact (erf) GELU, which this "
        "project's MLP does not implement (flax nn.gelu is the tanh approximation, as in "
        "T5 v1.1/Flan-T5's 'gated-gelu'). Supported: " + ", ".join(sorted(_FEED_FORWARD_PROJ)))
  raise UsageError(f"Unsupported feed_forward_proj={feed_forward_proj!r}; supported: "
                   + ", ".join(sorted(_FEED_FORWARD_PROJ)) + ".")


def feed_forward_proj_from_activations(mlp_activations) -> str:
  activations = tuple(mlp_activations)
  for name, acts in _FEED_FORWARD_PROJ.items():
    if acts == activations:
      return name
  raise UsageError(
      f"mlp_activations={activations} has no Hugging Face T5 equivalent; HF supports one "
      "activation or a gated pair (act, 'linear') of relu / gelu (tanh) / silu.")


def t5_config_from_hf(hf_config: Mapping[str, Any], *, logits_via_embedding: Optional[bool] = None,
                      dtype: str = "bfloat16", dropout_rate: float = 0.0) -> t5.T5Config:
  """Our T5Config for an HF T5 config.json.

  `logits_via_embedding` defaults to whether HF scales the decoder output
  (v1.0); pass False when the checkpoint has its own lm_head anyway, in which
  case the scale is folded into `logits_dense`. Dropout is a training choice,
  not part of the architecture, so it is not copied from the HF config.
  """
  if hf_config.get("model_type", "t5") != "t5":
    raise UsageError(f"Expected a Hugging Face T5 config (model_type 't5'), found model_type "
                     f"{hf_config.get('model_type')!r}.")
  epsilon = float(hf_config.get("layer_norm_epsilon", _LAYER_NORM_EPSILON))
  if abs(epsilon - _LAYER_NORM_EPSILON) > 1e-12:
    raise UsageError(f"layer_norm_epsilon={epsilon} is not supported; our RMSNorm uses "
                     f"{_LAYER_NORM_EPSILON} like every released T5.")
  num_layers = int(hf_config.get("num_layers", 6))
  if logits_via_embedding is None:
    logits_via_embedding = scales_decoder_outputs(hf_config)
  return t5.T5Config(
      vocab_size=int(hf_config.get("vocab_size", 32128)),
      emb_dim=int(hf_config.get("d_model", 512)),
      num_heads=int(hf_config.get("num_heads", 8)),
      num_encoder_layers=num_layers,
      num_decoder_layers=int(hf_config.get("num_decoder_layers") or num_layers),
      head_dim=int(hf_config.get("d_kv", 64)),
      mlp_dim=int(hf_config.get("d_ff", 2048)),
      mlp_activations=mlp_activations_from_hf(hf_config.get("feed_forward_proj", "relu")),
      dropout_rate=dropout_rate,
      dtype=dtype,
      logits_via_embedding=bool(logits_via_embedding),
      relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
  )


def hf_config_from_t5(config: t5.T5Config, base: Optional[Mapping[str, Any]] = None
                      ) -> dict[str, Any]:
  """An HF config.json dict for `config`.

  `base` (e.g. the config.json a checkpoint was imported from) keeps every
  field that is not architecture (token ids, task params, ...), so a round trip
  reproduces the original file; the tie/scale fields are rewritten only when
  their meaning differs from `config`.
  """
  hf = dict(base or {})
  feed_forward_proj = feed_forward_proj_from_activations(config.mlp_activations)
  hf.setdefault("architectures", ["T5ForConditionalGeneration"])
  hf.update(
      model_type="t5",
      vocab_size=config.vocab_size,
      d_model=config.emb_dim,
      d_kv=config.head_dim,
      d_ff=config.mlp_dim,
      num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers,
      num_heads=config.num_heads,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      layer_norm_epsilon=_LAYER_NORM_EPSILON,
      feed_forward_proj=feed_forward_proj,
      # What transformers derives from feed_forward_proj; written so an older or
      # newer reader that takes them from the file agrees.
      dense_act_fn="gelu_new" if feed_forward_proj == "gated-gelu"
      else feed_forward_proj.split("-")[-1],
      is_gated_act=feed_forward_proj.startswith("gated-"),
      is_encoder_decoder=True,
  )
  for key, value in (("dropout_rate", config.dropout_rate), ("initializer_factor", 1.0),
                     ("pad_token_id", 0), ("eos_token_id", 1), ("decoder_start_token_id", 0),
                     ("use_cache", True)):
    hf.setdefault(key, value)
  if not base or scales_decoder_outputs(base) != config.logits_via_embedding:
    hf["tie_word_embeddings"] = config.logits_via_embedding
    if "scale_decoder_outputs" in hf:
      hf["scale_decoder_outputs"] = config.logits_via_embedding
  return hf


def infer_t5_config(params: Mapping[str, Any], *, gated_activation: str = "gelu",
                    single_activation: str = "relu", relative_attention_max_distance: int = 128,
                    dtype: str = "bfloat16") -> t5.T5Config:
  """T5Config read off the parameter shapes (for checkpoints that come without a gin).

  Everything is determined by the shapes except the activation function(s) and
  the relative attention max distance, which default to the released T5s'
  (gated-GELU for v1.1/Flan, ReLU for v1.0, 128).
  """
  flat = _flatten(params)
  try:
    vocab_size, emb_dim = flat["token_embedder/embedding"].shape
    num_heads, num_buckets = flat["encoder/relpos_bias/rel_embedding"].shape
    joined_kv = flat["encoder/layers_0/attention/query/kernel"].shape[1]
  except KeyError as e:
    raise UsageError(f"These params are not a T5 encoder-decoder in t5x layout: {e} is "
                     f"missing (found e.g. {sorted(flat)[:5]}).") from None
  layer = re.compile(r"^(encoder|decoder)/layers_(\d+)/")
  counts = {"encoder": 0, "decoder": 0}
  for key in flat:
    match = layer.match(key)
    if match:
      counts[match.group(1)] = max(counts[match.group(1)], int(match.group(2)) + 1)
  gated = "encoder/layers_0/mlp/wi_0/kernel" in flat
  mlp_dim = flat["encoder/layers_0/mlp/" + ("wi_0" if gated else "wi") + "/kernel"].shape[1]
  return t5.T5Config(
      vocab_size=vocab_size, emb_dim=emb_dim, num_heads=num_heads,
      num_encoder_layers=counts["encoder"], num_decoder_layers=counts["decoder"],
      head_dim=joined_kv // num_heads, mlp_dim=mlp_dim,
      mlp_activations=(gated_activation, "linear") if gated else (single_activation,),
      dtype=dtype, logits_via_embedding="decoder/logits_dense/kernel" not in flat,
      relative_attention_num_buckets=num_buckets,
      relative_attention_max_distance=relative_attention_max_distance)


# ---------------------------------------------------------------------------
# Parameter names.
# ---------------------------------------------------------------------------


def _mlp_names(config: t5.T5Config) -> list[str]:
  if len(config.mlp_activations) == 1:
    return ["wi", "wo"]
  if len(config.mlp_activations) == 2:
    return ["wi_0", "wi_1", "wo"]
  raise UsageError(f"mlp_activations={config.mlp_activations}: Hugging Face T5 has at most two "
                   "input projections (wi_0, wi_1).")


def name_map(config: t5.T5Config) -> dict[str, str]:
  """Our flat param name ('a/b/c') -> HF state-dict key, for every parameter."""
  names = {"token_embedder/embedding": "shared.weight"}
  mlp = _mlp_names(config)
  for stack, count in (("encoder", config.num_encoder_layers),
                       ("decoder", config.num_decoder_layers)):
    names[f"{stack}/relpos_bias/rel_embedding"] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    for i in range(count):
      ours, hf = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      if stack == "encoder":
        blocks = [("pre_attention_layer_norm", "attention", "SelfAttention")]
      else:
        blocks = [("pre_self_attention_layer_norm", "self_attention", "SelfAttention"),
                  ("pre_cross_attention_layer_norm", "encoder_decoder_attention",
                   "EncDecAttention")]
      for j, (norm, attention, hf_attention) in enumerate(blocks):
        names[f"{ours}/{norm}/scale"] = f"{hf}.{j}.layer_norm.weight"
        for our_proj, hf_proj in _ATTENTION:
          names[f"{ours}/{attention}/{our_proj}/kernel"] = (
              f"{hf}.{j}.{hf_attention}.{hf_proj}.weight")
      j = len(blocks)
      names[f"{ours}/pre_mlp_layer_norm/scale"] = f"{hf}.{j}.layer_norm.weight"
      for proj in mlp:
        names[f"{ours}/mlp/{proj}/kernel"] = f"{hf}.{j}.DenseReluDense.{proj}.weight"
    names[f"{stack}/{stack}_norm/scale"] = f"{stack}.final_layer_norm.weight"
  if not config.logits_via_embedding:
    names["decoder/logits_dense/kernel"] = "lm_head.weight"
  return names


def _to_hf_layout(name: str, value: np.ndarray) -> np.ndarray:
  """Ours -> HF: every 2-D weight but the embedding is transposed."""
  if value.ndim == 2 and name != "token_embedder/embedding":
    return np.ascontiguousarray(value.T)
  return value


def params_from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: t5.T5Config,
                              hf_config: Optional[Mapping[str, Any]] = None,
                              dtype: Any = np.float32) -> Params:
  """Our nested param dict from an HF T5 state dict (raises listing every problem).

  `hf_config` tells whether HF scales the decoder output; when it does but
  `config` has untied logits, the scale is folded into `logits_dense`.
  """
  names = name_map(config)
  scale_logits = scales_decoder_outputs(hf_config or {}) and not config.logits_via_embedding
  sources = dict(names)
  if "decoder/logits_dense/kernel" in names and "lm_head.weight" not in state_dict:
    sources["decoder/logits_dense/kernel"] = "shared.weight"  # tied in HF, untied for us
  expected = _expected_hf_shapes(config)
  problems = []
  for ours, key in sources.items():
    if key not in state_dict:
      problems.append(f"  missing: {key} (for {ours}, expected shape {expected[names[ours]]})")
    elif tuple(state_dict[key].shape) != expected[names[ours]]:
      problems.append(f"  wrong shape: {key}: found {tuple(state_dict[key].shape)}, expected "
                      f"{expected[names[ours]]}")
  used = set(sources.values())
  for key in sorted(set(state_dict) - used):
    if key in _IGNORED_KEYS:
      continue
    if key in _EMBEDDING_COPIES and "shared.weight" in state_dict:
      if not np.array_equal(state_dict[key], state_dict["shared.weight"]):
        problems.append(f"  {key} differs from shared.weight; untied input embeddings are not "
                        "supported by T5")
      continue
    if key == "lm_head.weight" and config.logits_via_embedding:
      if not np.array_equal(state_dict[key], state_dict.get("shared.weight")):
        problems.append("  lm_head.weight differs from shared.weight but the model config has "
                        "tied logits (logits_via_embedding=True)")
      continue
    problems.append(f"  unexpected: {key} (shape {tuple(state_dict[key].shape)})")
  if problems:
    raise UsageError(
        "The Hugging Face state dict does not match the T5 config "
        f"({config.num_encoder_layers}+{config.num_decoder_layers} layers, "
        f"mlp_activations={config.mlp_activations}, "
        f"logits_via_embedding={config.logits_via_embedding}):\n" + "\n".join(problems))

  flat = {}
  for ours, key in sources.items():
    value = np.asarray(state_dict[key]).astype(dtype)
    if ours == "decoder/logits_dense/kernel" and scale_logits:
      value = value * np.asarray(config.emb_dim ** -0.5, dtype)
    flat[ours] = np.ascontiguousarray(value.T) if value.ndim == 2 and ours != (
        "token_embedder/embedding") else value
  return _unflatten(flat)


def hf_state_dict_from_params(params: Mapping[str, Any], config: t5.T5Config,
                              dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """HF T5 state dict (tied keys omitted, as save_pretrained does) from our params."""
  flat = _flatten(params)
  names = name_map(config)
  missing = sorted(set(names) - set(flat))
  unexpected = sorted(set(flat) - set(names))
  if missing or unexpected:
    raise UsageError(
        "The params do not match the T5 config being exported:\n"
        + "".join(f"  missing: {k}\n" for k in missing)
        + "".join(f"  unexpected: {k}\n" for k in unexpected)
        + "Pass the model gin the checkpoint was trained with.")
  return {names[k]: _to_hf_layout(k, np.asarray(flat[k])).astype(dtype) for k in names}


def _expected_hf_shapes(config: t5.T5Config) -> dict[str, tuple[int, ...]]:
  joined = config.num_heads * config.head_dim
  shapes = {}
  for ours, key in name_map(config).items():
    leaf = ours.split("/")[-2]
    if ours == "token_embedder/embedding":
      shape = (config.vocab_size, config.emb_dim)
    elif ours.endswith("rel_embedding"):
      shape = (config.relative_attention_num_buckets, config.num_heads)
    elif ours.endswith("/scale"):
      shape = (config.emb_dim,)
    elif leaf in ("query", "key", "value"):
      shape = (joined, config.emb_dim)
    elif leaf == "out":
      shape = (config.emb_dim, joined)
    elif leaf == "wo":
      shape = (config.emb_dim, config.mlp_dim)
    elif leaf.startswith("wi"):
      shape = (config.mlp_dim, config.emb_dim)
    else:  # logits_dense
      shape = (config.vocab_size, config.emb_dim)
    shapes[key] = shape
  return shapes


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def _unflatten(flat: Mapping[str, Any]) -> Params:
  tree: Params = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def is_hf_checkpoint(directory: str) -> bool:
  """A directory with config.json and model.safetensors (or its sharded index)."""
  gfile = tf.io.gfile
  return gfile.exists(os.path.join(directory, CONFIG_FILE)) and (
      gfile.exists(os.path.join(directory, SAFETENSORS_FILE))
      or gfile.exists(os.path.join(directory, SAFETENSORS_INDEX_FILE)))


def read_hf_config(directory: str) -> dict[str, Any]:
  with tf.io.gfile.GFile(os.path.join(directory, CONFIG_FILE), "r") as f:
    return json.load(f)


def _safetensors_files(directory: str) -> list[str]:
  gfile = tf.io.gfile
  index = os.path.join(directory, SAFETENSORS_INDEX_FILE)
  if gfile.exists(index):
    with gfile.GFile(index, "r") as f:
      weight_map = json.load(f)["weight_map"]
    return sorted(set(weight_map.values()))
  if gfile.exists(os.path.join(directory, SAFETENSORS_FILE)):
    return [SAFETENSORS_FILE]
  other = [name for name in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
           if gfile.exists(os.path.join(directory, name))]
  raise UsageError(
      f"No {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} in {directory}"
      + (f" (found {', '.join(other)})" if other else "") + ". Re-save the model with "
      "transformers: model.save_pretrained(dir, safe_serialization=True).")


@contextlib.contextmanager
def _local_file(path: str) -> Iterator[str]:
  """A local path for `path`: itself, or a temporary copy of a remote (gs://) file.

  safetensors memory-maps local files, which keeps peak memory at one copy.
  """
  if "://" not in path:
    yield path
    return
  tmpdir = tempfile.mkdtemp(prefix="instruct_jax_hf_")
  try:
    local = os.path.join(tmpdir, os.path.basename(path))
    tf.io.gfile.copy(path, local, overwrite=True)
    yield local
  finally:
    shutil.rmtree(tmpdir, ignore_errors=True)


def read_hf_state_dict(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of a (possibly sharded) safetensors checkpoint, as numpy arrays."""
  tensors = {}
  for name in _safetensors_files(directory):
    with _local_file(os.path.join(directory, name)) as local:
      with safetensors.safe_open(local, framework="np") as f:
        for key in f.keys():
          tensors[key] = f.get_tensor(key)
  return tensors


def load_hf_checkpoint(directory: str, dtype: str = "bfloat16"
                       ) -> tuple[t5.T5Config, Params, dict[str, Any]]:
  """(T5Config, float32 params, HF config dict) of an HF T5 checkpoint directory.

  `dtype` is the activation dtype put in the returned T5Config; params are
  always float32, like every parameter in this project.
  """
  hf_config = read_hf_config(directory)
  state_dict = read_hf_state_dict(directory)
  has_lm_head = "lm_head.weight" in state_dict and not np.array_equal(
      state_dict["lm_head.weight"], state_dict.get("shared.weight"))
  tied = scales_decoder_outputs(hf_config) and not has_lm_head
  if scales_decoder_outputs(hf_config) and has_lm_head:
    logging.warning("%s scales the decoder output but has its own lm_head; folding the "
                    "d_model**-0.5 scale into decoder/logits_dense.", directory)
  config = t5_config_from_hf(hf_config, logits_via_embedding=tied, dtype=dtype)
  params = params_from_hf_state_dict(state_dict, config, hf_config)
  return config, params, hf_config


def write_hf_checkpoint(directory: str, hf_config: Mapping[str, Any],
                        state_dict: Mapping[str, np.ndarray],
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes config.json and model.safetensors (sharded with an index past max_shard_bytes).

  Returns the safetensors file names written. The layout is save_pretrained's,
  so transformers' from_pretrained and this module's reader both load it.
  """
  gfile = tf.io.gfile
  gfile.makedirs(directory)
  with gfile.GFile(os.path.join(directory, CONFIG_FILE), "w") as f:
    f.write(json.dumps(dict(hf_config), indent=2, sort_keys=True) + "\n")

  shards: list[dict[str, np.ndarray]] = [{}]
  shard_bytes = 0
  for key in sorted(state_dict):
    value = np.ascontiguousarray(state_dict[key])
    if shards[-1] and shard_bytes + value.nbytes > max_shard_bytes:
      shards.append({})
      shard_bytes = 0
    shards[-1][key] = value
    shard_bytes += value.nbytes
  if len(shards) == 1:
    names = [SAFETENSORS_FILE]
  else:
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  for name, shard in zip(names, shards):
    with gfile.GFile(os.path.join(directory, name), "wb") as f:
      f.write(safetensors.numpy.save(shard, metadata={"format": "pt"}))
  if len(shards) > 1:
    index = {
        "metadata": {"total_size": int(sum(v.nbytes for v in state_dict.values()))},
        "weight_map": {key: name for name, shard in zip(names, shards) for key in shard},
    }
    with gfile.GFile(os.path.join(directory, SAFETENSORS_INDEX_FILE), "w") as f:
      f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
  return names
