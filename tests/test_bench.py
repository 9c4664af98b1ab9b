"""The train-step and compile-time benchmarks run and print sane numbers (no timing assertions)."""
import gin
import optax
import pytest

from instruct_jax.benchmarks import compile_time
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
  assert results["mfu"] is None  # CPU peak is unknown, so no MFU is claimed
  # Our own count of sharded state bytes agrees with XLA's view of the step's arguments
  # (which also holds the small batch and omits pass-through placeholders).
  assert results["state_bytes_per_device"] == pytest.approx(
      results["compiled_argument_bytes_per_device"], rel=0.05)
  assert "tokens_per_second" in report.format_report(results)


def test_bench_command_prints_a_report(capsys):
  gin.clear_config()
  try:
    cli.main(["bench", "--gin_file=models/t5_1_1/tiny.gin", "--gin.ACTIVATION_DTYPE='float32'",
              "--batch_size=8", "--input_length=16", "--target_length=8", "--steps=1"])
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert "tokens_per_second" in out and "model_tflops_per_second_per_device" in out


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
