"""`instruct-jax bench --mode=input`: input-pipeline rates next to the train step's consumption."""
import gin
import numpy as np

from instruct_jax import cli
from instruct_jax.benchmarks import input_pipeline
from instruct_jax.benchmarks import train_step
from instruct_jax.cli import gin_setup
from instruct_jax.models import flops


def test_bench_input_mode_prints_the_uncached_rate(capsys):
  gin.clear_config()
  try:
    cli.run_command(["bench", "--mode=input", "--gin_file=models/t5_1_1/tiny.gin",
                     "--gin.BENCH_MIXTURES=('smoke_reverse_word',)",
                     "--gin.BENCH_PIPELINE_BATCHES=2", "--batch_size=4", "--input_length=64",
                     "--target_length=16"], join_job=False)
  finally:
    gin.clear_config()
  output = capsys.readouterr().out
  assert "A100, published: T5 v1.1 base" in output and "128 x (512+114) per 0.56 s" in output
  assert "H100, our goal:  this model at 45% MFU of 989 TFLOP/s" in output
  assert "Goal (issue 16): input >= 5x the published line (715,429/s)" in output
  (row,) = [line for line in output.splitlines() if line.startswith("smoke_reverse_word")]
  (cache_state, examples_per_second, tokens_per_second, fill, x_a100, goal, x_h100,
   per_cpu_second, cores) = row.split()[1:]
  assert cache_state == "uncached"  # No BENCH_CACHE_DIR: no cached row.
  assert float(examples_per_second.replace(",", "")) > 0
  assert 0 < float(fill) <= 1
  tokens_per_second = float(tokens_per_second.replace(",", ""))
  assert abs(float(x_a100) - tokens_per_second / 143_086) <= 0.006  # printed rounded
  assert goal == ("met" if tokens_per_second >= 5 * 143_086 else "no")
  assert float(x_h100) >= 0  # a tiny model's H100 step consumes millions/s
  per_cpu_second = float(per_cpu_second.replace(",", ""))
  h100_line = float(output.split("step = ")[2].split("/s")[0].replace(",", ""))
  assert abs(float(cores) - 5 * h100_line / per_cpu_second) <= 0.051 + 1e-3 * float(cores)


def test_cores_to_feed_is_the_multiple_over_the_per_core_rate():
  assert input_pipeline.cores_to_feed(651_000, 1_302_000) == 2.5
  assert input_pipeline.cores_to_feed(100, 100, multiple=1) == 1

def test_published_step_time_is_nanot5_on_one_a100():
  published = input_pipeline.PUBLISHED_T5_BASE
  assert published.tokens_per_second == 128 * (512 + 114) / 0.56
  assert round(published.tokens_per_second) == 143_086


def test_consumption_is_the_step_flops_at_the_assumed_rate():
  gin.clear_config()
  try:
    gin_setup.parse_gin(["models/t5_1_1/base.gin"], [], [])
    model = gin_setup.build_macro("MODEL", "a model gin")
  finally:
    gin.clear_config()
  assert input_pipeline.GOAL_MFU == 0.45
  consumption = input_pipeline.train_step_consumption(model, 128, 512, 128, 1e15, 0.5)
  assert consumption["tokens_per_step"] == 128 * (512 + 128)
  step_flops = 128 * flops.training_flops(train_step.forward_flops_per_example(model, 512, 128))
  np.testing.assert_allclose(consumption["seconds_per_step"], step_flops / 0.5e15)
  np.testing.assert_allclose(consumption["tokens_per_second"],
                             128 * 640 / consumption["seconds_per_step"])
