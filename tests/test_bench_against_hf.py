"""`bench --against=hf`: ours and transformers' on the same model, weights and tokens, end to end.

Tiny T5 and Llama gins through the CLI: both rates, their ratio, the roofline
lines and the token agreement are printed (no timing assertions). Identical
weights must give identical greedy tokens, and a conversion mistake must show
in that agreement.
"""
import os
import re
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gin  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from instruct_jax import cli  # noqa: E402
from instruct_jax.benchmarks import hf_reference  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")

GINS = {"t5": "models/t5_1_1/tiny.gin", "llama": "models/llama/tiny.gin"}
# Batch 8: the test session has 8 CPU devices and the batch is split over them.
TINY = ["--gin.ACTIVATION_DTYPE='float32'", "--batch_size=8", "--input_length=12",
        "--target_length=6", "--steps=1",
        "--gin.against_hf.benchmark_train_against_hf.warmup_steps=1"]


def _bench(capsys, family: str, *flags: str) -> dict[str, str]:
  """Runs `bench --against=hf` and returns the report as {name: value}."""
  gin.clear_config()
  try:
    cli.main(["bench", "--against=hf", f"--gin_file={GINS[family]}", *TINY, *flags])
  finally:
    gin.clear_config()
  return dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()
              if len(line.split(None, 1)) == 2)


def _number(report: dict[str, str], name: str) -> float:
  return float(report[name].replace(",", ""))


@pytest.mark.parametrize("family", sorted(GINS))
def test_train_step_prints_both_rates_the_ratio_and_both_roofline_fractions(capsys, family):
  report = _bench(capsys, family)
  for name in ("ours_tokens_per_second", "hf_tokens_per_second", "ours_over_hf",
               "matmul_peak_tflops_per_second", "ours_fraction_of_measured_matmul_peak",
               "hf_fraction_of_measured_matmul_peak", "ours_matmuls_alone_seconds_per_step",
               "ours_fraction_of_measured_matmul_peak_with_matmuls_alone"):
    assert _number(report, name) > 0, name
  assert report["matmul_peak_source"].startswith("measured")
  assert report["optimizer_hf"] == {"t5": "transformers.Adafactor (factored)",
                                    "llama": "torch.optim.AdamW"}[family]


@pytest.mark.parametrize("family", sorted(GINS))
def test_decode_prints_both_rates_and_identical_weights_give_identical_greedy_tokens(
    capsys, family):
  # T5 with a deeper decoder than encoder: transformers' default KV cache would not fit it.
  deeper_decoder = ["--gin.t5.T5Config.num_decoder_layers=3"] if family == "t5" else []
  report = _bench(capsys, family, "--mode=decode", "--num_beams=2", *deeper_decoder)
  for name in ("greedy", "beam2"):
    for suffix in ("ours_tokens_per_second", "hf_tokens_per_second", "ours_over_hf",
                   "floor_tokens_per_second", "ours_fraction_of_floor", "hf_fraction_of_floor",
                   "matmuls_alone_tokens_per_second", "matmuls_alone_over_hf"):
      assert _number(report, f"{name}_{suffix}") > 0, f"{name}_{suffix}"
    assert 0 <= _number(report, f"{name}_token_agreement") <= 1
  assert _number(report, "greedy_token_agreement") == 1.0


def test_a_conversion_mistake_shows_in_the_greedy_agreement(capsys, monkeypatch):
  exact = hf_reference.hf_checkpoint

  def transposed_attention(model, params):
    """The decoder's attention weights left in our [in, out] layout: a classic slip."""
    hf_config, state_dict = exact(model, params)
    return hf_config, {k: np.ascontiguousarray(v.T) if re.fullmatch(
        r"decoder\.block\.\d+\.layer\.0\.SelfAttention\.[qkvo]\.weight", k) else v
                       for k, v in state_dict.items()}
  monkeypatch.setattr(hf_reference, "hf_checkpoint", transposed_attention)
  report = _bench(capsys, "t5", "--mode=decode", "--decode_methods=greedy")
  assert _number(report, "greedy_token_agreement") < 1.0


def _error(capsys, argv) -> str:
  gin.clear_config()
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.main(argv)
  finally:
    gin.clear_config()
  assert exit_info.value.code == 1
  return capsys.readouterr().err


def test_missing_transformers_names_the_install_command(capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
  err = _error(capsys, ["bench", "--against=hf", f"--gin_file={GINS['t5']}", *TINY])
  assert "transformers" in err and 'pip install ".[test]"' in err


def test_unsupported_family_and_mode_are_named(capsys):
  err = _error(capsys, ["bench", "--against=hf", "--gin_file=models/decoder_only/tiny.gin",
                        *TINY])
  assert "no transformers counterpart for DecoderOnly" in err and "Llama" in err
  err = _error(capsys, ["bench", "--against=hf", "--mode=compile",
                        f"--gin_file={GINS['t5']}"])
  assert "--mode=train or --mode=decode" in err
