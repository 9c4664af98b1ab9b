"""The decode floor (benchmarks/decode_roofline) and `bench --mode=decode` reporting it."""
import types

import gin
import pytest

from instruct_jax import cli
from instruct_jax.benchmarks import decode_roofline
from instruct_jax.models import flops

# One layer of every kind, small enough to count its weights by hand.
CONFIG = types.SimpleNamespace(
    emb_dim=4, num_heads=2, head_dim=2, num_kv_heads=1, mlp_dim=8,
    mlp_activations=("gelu", "linear"), num_encoder_layers=1, num_decoder_layers=1,
    vocab_size=10)


def test_step_weights_count_the_decoder_and_lm_head_not_the_cached_cross_projections():
  # self q, o: 2 x 4x4; self k, v with one kv head: 2 x 4x2; gated MLP: 3 x 4x8; head: 4x10.
  decoder_only = 2 * 16 + 2 * 8 + 3 * 32 + 40
  assert decoder_only == 184
  assert decode_roofline.step_weights(CONFIG, encoder_decoder=False) == decoder_only
  # Cross-attention adds its query and output (2 x 4x4); its keys/values are projected once.
  assert decode_roofline.step_weights(CONFIG, encoder_decoder=True) == decoder_only + 32


def test_a_bandwidth_bound_floor_reads_the_weights_and_the_filled_cache_every_step():
  shape = decode_roofline.DecodeShape(batch_size=2, num_beams=3, input_length=5,
                                      target_length=4, encoder_decoder=True,
                                      weight_bytes=4, activation_bytes=2)
  bandwidth, peak = 100.0, 1e30  # FLOPs free: every step is bound by its reads
  rows, weights = 6, 216
  cache = [rows * 1 * 2 * 2 * (step + 1 + 5) * 2 for step in range(4)]  # self + cross keys
  expected = sum(weights * 4 + c for c in cache) / bandwidth
  assert decode_roofline.floor_seconds(CONFIG, shape, peak, bandwidth) == pytest.approx(expected)
  assert decode_roofline.floor_tokens_per_second(CONFIG, shape, peak, bandwidth) == (
      pytest.approx(2 * 4 / expected))


def test_a_compute_bound_floor_is_the_prefill_and_step_flops_at_the_peak():
  shape = decode_roofline.DecodeShape(batch_size=2, num_beams=1, input_length=5,
                                      target_length=3, encoder_decoder=False,
                                      weight_bytes=4, activation_bytes=4)
  bandwidth, peak = 1e30, 1000.0
  prompt = 6  # the prompt and its BOS slot
  prefill = (flops.decoder_only_forward_flops(CONFIG, prompt)
             - flops.lm_head_flops(CONFIG, prompt) + flops.lm_head_flops(CONFIG, 1))
  # Two steps after the prefill's token; attention over the prompt, its token and the new ones.
  steps = sum(2 * (2 * 184 + 4 * 4 * (prompt + 1 + step)) for step in range(2))
  assert decode_roofline.floor_seconds(CONFIG, shape, peak, bandwidth) == pytest.approx(
      (2 * prefill + steps) / peak)


class _FakeDevice:
  platform = "gpu"

  def __init__(self, kind):
    self.device_kind = kind


@pytest.mark.parametrize("kind, bandwidth", [("NVIDIA H100 80GB HBM3", 3350e9),
                                             ("NVIDIA H100 PCIe", 2000e9),
                                             ("NVIDIA A100-SXM4-40GB", 1555e9),
                                             ("NVIDIA A100-SXM4-80GB", 2039e9),
                                             ("TPU v5 lite", 819e9)])
def test_published_bandwidth_by_device_kind(kind, bandwidth):
  found = decode_roofline.memory_bandwidth(_FakeDevice(kind))
  assert found.published and found.bytes_per_second == bandwidth


def test_bench_decode_reports_the_floor_and_each_cached_decodes_fraction_of_it(capsys):
  gin.clear_config()
  try:
    cli.run_command(["bench", "--mode=decode", "--gin_file=models/t5_1_1/tiny.gin",
                     "--batch_size=8", "--input_length=8", "--target_length=4",
                     "--num_beams=2", "--gin.BENCH_STEPS=1"], join_job=False)
  finally:
    gin.clear_config()
  report = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()
                if line.strip() and len(line.split(None, 1)) == 2)
  number = lambda key: float(report[key].replace(",", ""))  # noqa: E731
  assert report["memory_bandwidth_source"].startswith("measured")
  assert number("memory_bandwidth_gb_per_second") > 0
  for name in ("greedy", "beam2"):
    floor = number(f"{name}_floor_tokens_per_second")
    assert floor > 0
    fraction = number(f"{name}_cached_fraction_of_floor")
    assert fraction == pytest.approx(number(f"{name}_cached_tokens_per_second") / floor,
                                     rel=2e-3)  # printed to 4 significant digits
    assert f"{name}_uncached_fraction_of_floor" not in report  # the floor assumes the cache
    assert number(f"{name}_cached_matmuls_alone_tokens_per_second") > 0


def test_bench_decodes_the_bfloat16_llama_gin_on_cpu(capsys):
  """A bfloat16 grouped-query decode step once hit a product XLA:CPU has no kernel for."""
  gin.clear_config()
  try:
    cli.run_command(["bench", "--mode=decode", "--gin_file=models/llama/tiny.gin",
                     "--batch_size=8", "--input_length=8", "--target_length=4",
                     "--num_beams=2", "--gin.BENCH_STEPS=1",
                     "--gin.decode_speed.benchmark_decode.use_cache=(True,)"], join_job=False)
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert "greedy_cached_tokens_per_second" in out and "beam2_cached_tokens_per_second" in out
