"""Tests for instruct_jax.models.flops with hand-computed numbers."""

import dataclasses
import types

import jax
import pytest

from instruct_jax.models import flops


@dataclasses.dataclass(frozen=True)
class TinyConfig:
  """The T5Config fields flops.py reads (kept local so the test is hermetic)."""
  vocab_size: int = 7
  emb_dim: int = 4
  num_heads: int = 2
  head_dim: int = 3
  mlp_dim: int = 5
  mlp_activations: tuple = ("gelu", "linear")
  num_encoder_layers: int = 1
  num_decoder_layers: int = 1


def test_encoder_decoder_hand_computed():
  # emb 4, heads*head_dim 6, mlp 5, 2 wi matrices, vocab 7; inputs 2, targets 3.
  encoder = (
      4 * 2 * 2 * 4 * 6  # q,k,v,o on 2 tokens: 384
      + 2 * 2 * (2 * 2 * 3 * 2)  # 2 heads x (QK^T + AV), 2x2 scores: 96
      + 3 * 2 * 2 * 4 * 5)  # wi_0, wi_1, wo on 2 tokens: 240
  decoder_self = 4 * 2 * 3 * 4 * 6 + 2 * 2 * (2 * 3 * 3 * 3)  # 576 + 216
  decoder_cross = (
      2 * 2 * 3 * 4 * 6  # q, o on 3 targets: 288
      + 2 * 2 * 2 * 4 * 6  # k, v on 2 inputs: 192
      + 2 * 2 * (2 * 3 * 3 * 2))  # 3x2 scores: 144
  decoder_mlp = 3 * 2 * 3 * 4 * 5  # 360
  lm_head = 2 * 3 * 4 * 7  # 168
  expected = encoder + decoder_self + decoder_cross + decoder_mlp + lm_head
  assert expected == 2664
  assert flops.encoder_decoder_forward_flops(TinyConfig(), 2, 3) == 2664


def test_decoder_only_hand_computed():
  # One layer of self-attention (792) + MLP (360) on 3 tokens, LM head 168.
  assert flops.decoder_only_forward_flops(TinyConfig(), 3) == 1320
  # A decoder-only config that names its depth num_layers works too.
  config = types.SimpleNamespace(
      **{k: v for k, v in dataclasses.asdict(TinyConfig()).items()
         if not k.startswith("num_") or k == "num_heads"}, num_layers=2)
  assert flops.decoder_only_forward_flops(config, 3) == 2 * (792 + 360) + 168


def test_missing_layer_count_is_explained():
  config = types.SimpleNamespace(emb_dim=4, num_heads=1, head_dim=4, mlp_dim=4,
                                 mlp_activations=("relu",), vocab_size=3)
  with pytest.raises(ValueError, match="num_layers"):
    flops.decoder_only_forward_flops(config, 3)


def test_doubling_mlp_dim_adds_expected_amount():
  base = TinyConfig(emb_dim=64, mlp_dim=128, num_heads=4, head_dim=16,
                    num_encoder_layers=3, num_decoder_layers=2, vocab_size=100)
  wider = dataclasses.replace(base, mlp_dim=256)
  inputs, targets = 32, 16
  added = (flops.encoder_decoder_forward_flops(wider, inputs, targets) -
           flops.encoder_decoder_forward_flops(base, inputs, targets))
  # 3 MLP matrices of emb x 128 extra, on every token of every layer.
  assert added == 3 * 2 * 64 * 128 * (3 * inputs + 2 * targets)


def test_single_activation_has_one_wi_matrix():
  gated = TinyConfig()
  plain = dataclasses.replace(gated, mlp_activations=("relu",))
  difference = (flops.decoder_only_forward_flops(gated, 3) -
                flops.decoder_only_forward_flops(plain, 3))
  assert difference == 2 * 3 * 4 * 5


def test_matches_two_flops_per_weight_per_token_without_attention_scores():
  # With length 1 the score terms are tiny and exact: forward = 2 * weights
  # per token + 2 * heads * 2 * head_dim per attention block.
  config = TinyConfig(emb_dim=8, mlp_dim=16, num_heads=2, head_dim=4,
                      num_decoder_layers=3, vocab_size=11)
  inner = config.num_heads * config.head_dim
  weights_per_layer = 4 * config.emb_dim * inner + 3 * config.emb_dim * 16
  expected = (2 * (3 * weights_per_layer + config.emb_dim * 11) +
              3 * 2 * 2 * config.head_dim * config.num_heads)
  assert flops.decoder_only_forward_flops(config, 1) == expected


def test_training_is_three_forwards():
  assert flops.training_flops(2664) == 3 * 2664


@pytest.mark.parametrize("kind, expected", [
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA GeForce RTX 3090", None),
])
def test_peak_flops_by_device_kind(kind, expected):
  assert flops.peak_flops_per_device(kind) == expected
  device = types.SimpleNamespace(platform="gpu", device_kind=kind)
  assert flops.peak_flops_per_device(device) == expected


def test_cpu_has_no_peak():
  assert flops.peak_flops_per_device(jax.devices("cpu")[0]) is None
