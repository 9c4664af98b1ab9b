"""The train-step and compile-time benchmarks run and print sane numbers (no timing assertions)."""
import types

import gin
import optax
import pytest

from instruct_jax.benchmarks import compile_time
from instruct_jax.benchmarks import matmul_peak
from instruct_jax.benchmarks import report
from instruct_jax.benchmarks import train_step
from instruct_jax import cli
from instruct_jax.models import flops
import factories


def test_benchmark_reports_throughput_flops_and_memory():
  model = factories.tiny_t5()
  results = train_step.benchmark_train_step(model, optax.adafactor(1e-3), batch_size=8,
                                       input_length=16, target_length=8, steps=2,
                                       parameter_partitioning_dims=2)
  assert results["devices"] == 8
  assert results["tokens_per_second"] > 0 and results["seconds_per_step"] > 0
  expected_flops = 3 * flops.encoder_decoder_forward_flops(model.module.config, 16, 8) * 8
  achieved = results["model_tflops_per_second_per_device"] * 1e12 * 8 * results["seconds_per_step"]
  assert achieved == pytest.approx(expected_flops, rel=1e-6)
  # No published CPU peak: the roofline is a matmul measured at start, and no MFU is claimed.
  assert "mfu" not in results and results["matmul_peak_source"].startswith("measured")
  assert results["matmul_peak_tflops_per_second"] > 0
  assert results["fraction_of_measured_matmul_peak"] == pytest.approx(
      expected_flops / results["seconds_per_step"]
      / (results["matmul_peak_tflops_per_second"] * 1e12), rel=1e-6)
  # The step's matmuls replayed alone, and the fraction of the peak that time allows.
  assert results["fraction_of_measured_matmul_peak_with_matmuls_alone"] == pytest.approx(
      expected_flops / results["matmuls_alone_seconds_per_step"]
      / (results["matmul_peak_tflops_per_second"] * 1e12), rel=1e-6)
  # Our own count of sharded state bytes agrees with XLA's view of the step's arguments
  # (which also holds the small batch and omits pass-through placeholders).
  assert results["state_bytes_per_device"] == pytest.approx(
      results["compiled_argument_bytes_per_device"], rel=0.05)
  assert "tokens_per_second" in report.format_report(results)


def test_published_peaks_give_mfu_per_device():
  h100 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
  peak = matmul_peak.device_peak(h100)
  assert peak.published and peak.fraction_name == "mfu"
  assert peak.fraction(8 * 989e12 / 2, num_devices=8) == pytest.approx(0.5)
  assert peak.report_lines()["matmul_peak_source"] == "published"


def test_bench_command_prints_a_report(capsys):
  gin.clear_config()
  try:
    cli.main(["bench", "--gin_file=models/t5_1_1/tiny.gin", "--gin.ACTIVATION_DTYPE='float32'",
              "--batch_size=8", "--input_length=16", "--target_length=8", "--steps=1"])
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert "tokens_per_second" in out and "model_tflops_per_second_per_device" in out
  assert "fraction_of_measured_matmul_peak" in out and "matmul_peak_tflops_per_second" in out
  assert "fraction_of_measured_matmul_peak_with_matmuls_alone" in out


def test_bench_compile_mode_prints_a_depth_table(capsys):
  gin.clear_config()
  try:
    cli.main(["bench", "--mode=compile", "--gin_file=models/t5_1_1/tiny.gin",
              "--gin.BENCH_COMPILE_SIZES={'one': {'num_encoder_layers': 1, "
              "'num_decoder_layers': 2}}", "--batch_size=8", "--input_length=8",
              "--target_length=4"])
  finally:
    gin.clear_config()
  lines = capsys.readouterr().out.splitlines()
  header = lines.index(next(line for line in lines if line.split()[:1] == ["size"]))
  assert lines[header].split() == ["size", "layers", "params_M", "unrolled_s", "scanned_s",
                                   "scanned_vs_first"]
  row = lines[header + 1].split()
  assert row[:2] == ["one", "1+2"] and row[-1] == "1.00"
  assert float(row[3]) > 0 and float(row[4]) > 0


def test_compile_sizes_must_name_config_fields():
  with pytest.raises(ValueError, match="num_layers"):
    compile_time.resized(factories.tiny_t5(), num_layers=3)
