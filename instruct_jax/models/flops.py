"""Matmul FLOP counts for T5-style and Llama-style models, and peak device FLOP/s for MFU.

Counts are exact for the dense matmuls the model executes, at 2 * m * n * k
FLOPs per [m, k] x [k, n] product:

* attention projections q, k, v, o ([len, emb] x [emb, heads * head_dim]; k and v
  have num_kv_heads heads under grouped-query attention);
* attention scores Q K^T and the weighted sum A V, over the full (padded)
  lengths: causal and padding masks do not skip work in a dense kernel;
* the gated MLP: one [emb, mlp] matrix per activation in `mlp_activations`
  plus the [mlp, emb] output;
* the LM head, [emb, vocab] per target token (counted whether or not the
  logits reuse the embedding matrix).

Deliberately ignored (a few percent at most): layer norms, softmax, the
activation functions and gating products, residual adds, relative position
bias, rotary embedding, dropout and the embedding lookup (a gather, not a matmul). Training is
counted as 3 x forward (the backward pass costs two forward-sized matmuls per
forward matmul), without rematerialisation, so MFU from these numbers is the
usual "model FLOPs" utilisation.
"""

from typing import Any, Sequence

# Dense bf16 peak FLOP/s per device, keyed by substrings of jax's
# `device.device_kind` (lower-cased). More specific keys come first because the
# first match wins ("tpu v5 lite" before "tpu v5", "h100 pcie" before "h100").
PEAK_BF16_FLOPS = (
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports itself as "TPU v5"
    ("tpu v4", 275e12),
    ("a100", 312e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
)


def _matmul(m: int, k: int, n: int) -> int:
  """FLOPs of an [m, k] x [k, n] product (one multiply and one add each)."""
  return 2 * m * k * n


def _attention_flops(
    config: Any, query_length: int, key_length: int) -> int:
  """One attention block: projections plus scores and weighted values."""
  inner = config.num_heads * config.head_dim
  kv_inner = getattr(config, "num_kv_heads", config.num_heads) * config.head_dim
  emb = config.emb_dim
  projections = (
      2 * _matmul(query_length, emb, inner) +  # q and o
      2 * _matmul(key_length, emb, kv_inner))  # k and v
  # Per head: [q, head_dim] x [head_dim, k] and [q, k] x [k, head_dim].
  scores_and_values = 2 * config.num_heads * _matmul(
      query_length, config.head_dim, key_length)
  return projections + scores_and_values


def _mlp_flops(config: Any, length: int) -> int:
  """Gated MLP: len(mlp_activations) input matrices plus the output one."""
  num_wi = len(config.mlp_activations)
  return (num_wi + 1) * _matmul(length, config.emb_dim, config.mlp_dim)


def lm_head_flops(config: Any, length: int) -> int:
  """The projection of `length` positions to vocabulary logits."""
  return _matmul(length, config.emb_dim, config.vocab_size)


def encoder_decoder_forward_flops(
    config: Any, input_length: int, target_length: int) -> int:
  """Forward matmul FLOPs of one example through a T5 encoder-decoder.

  Args:
    config: a T5Config-like object (emb_dim, num_heads, head_dim, mlp_dim,
      mlp_activations, num_encoder_layers, num_decoder_layers, vocab_size).
    input_length: encoder sequence length (padded, as fed to the model).
    target_length: decoder sequence length.

  Returns:
    FLOPs as an int (Python ints do not overflow for any model size).
  """
  encoder_layer = (
      _attention_flops(config, input_length, input_length) +
      _mlp_flops(config, input_length))
  decoder_layer = (
      _attention_flops(config, target_length, target_length) +
      _attention_flops(config, target_length, input_length) +
      _mlp_flops(config, target_length))
  return (config.num_encoder_layers * encoder_layer +
          config.num_decoder_layers * decoder_layer +
          lm_head_flops(config, target_length))


def _num_decoder_only_layers(config: Any) -> int:
  for name in ("num_decoder_layers", "num_layers"):
    value = getattr(config, name, None)
    if value is not None:
      return value
  raise ValueError(
      f"{type(config).__name__} has neither num_decoder_layers nor num_layers; "
      "decoder_only_forward_flops needs the number of transformer layers.")


def decoder_only_forward_flops(config: Any, length: int) -> int:
  """Forward matmul FLOPs of one example through a decoder-only model.

  Causal (and prefix-LM) attention is counted over the full length x length
  score matrix, as a dense kernel computes it. `config` needs the same fields
  as for the encoder-decoder, with the layer count in num_decoder_layers or
  num_layers.
  """
  layer = (_attention_flops(config, length, length) +
           _mlp_flops(config, length))
  return (_num_decoder_only_layers(config) * layer +
          lm_head_flops(config, length))


def training_flops(forward: int) -> int:
  """Forward + backward FLOPs: the backward pass costs twice the forward."""
  return 3 * forward


def peak_flops_per_device(device: Any) -> float | None:
  """Dense bf16 peak FLOP/s of a jax device (or a device_kind string).

  Returns None for CPUs and devices not in PEAK_BF16_FLOPS, in which case
  callers should not report MFU rather than guess.
  """
  return published_for_device(PEAK_BF16_FLOPS, device)


def published_for_device(table: Sequence[tuple[str, float]], device: Any) -> float | None:
  """The figure of the first (name, value) in `table` whose name is in the device's kind.

  `device`: a jax device or a device_kind string. None for CPUs (whose figures
  depend on the host, so callers measure them) and for kinds the table lacks.
  """
  if isinstance(device, str):
    kind = device
  else:
    if getattr(device, "platform", None) == "cpu":
      return None
    kind = getattr(device, "device_kind", "")
  kind = kind.lower()
  for key, value in table:
    if key in kind:
      return value
  return None
