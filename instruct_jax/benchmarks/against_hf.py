"""`bench --against=hf`: our train step and decoding next to transformers' on the same work.

Same network, same weights (benchmarks/hf_reference), same tokens. The two
sides run alternately in one process, ours then Hugging Face's for `rounds`
rounds after a warm-up of each, so load from other processes falls on both
alike; the report gives median times, both rates and `ours_over_hf` (our
tokens/s over theirs: above 1 means we are faster). The train step also
reports each side's fraction of the device's matmul peak (benchmarks/matmul_peak),
decoding each side's fraction of the device's decode floor (benchmarks/decode_roofline).

Train: one optimizer step on one packed batch; Hugging Face runs forward,
token-level cross entropy, backward and the matching torch optimizer step
(Adafactor from transformers, or torch's AdamW). Decode: greedy and beam
search with the KV cache, EOS disabled on both sides so every row decodes all
target_length tokens; `*_token_agreement` is the fraction of positions where
the two sides chose the same token, a cheap check that both ran the same model.
"""
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax.benchmarks import decode_roofline
from instruct_jax.benchmarks import decode_speed
from instruct_jax.benchmarks import hf_reference
from instruct_jax.benchmarks import matmul_peak
from instruct_jax.benchmarks import report
from instruct_jax.benchmarks import train_step
from instruct_jax.errors import UsageError
from instruct_jax.train import trainer as trainer_lib

# What BENCH_AGAINST may name (None: ours alone).
REFERENCES = ("hf",)


def reference(against: str | None = None) -> str | None:
  """The checked BENCH_AGAINST (runs/bench.gin binds it here for the CLI to read)."""
  if against is not None and against not in REFERENCES:
    raise UsageError(f"BENCH_AGAINST={against!r}; use one of {REFERENCES} or None.")
  return against


def _alternate(rounds: int, ours: Callable[[], Any], theirs: Callable[[], Any]
               ) -> tuple[float, float]:
  """Median seconds of ours() and theirs(), called alternately `rounds` times each."""
  seconds = ([], [])
  for _ in range(rounds):
    for fn, times in zip((ours, theirs), seconds):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
  return statistics.median(seconds[0]), statistics.median(seconds[1])


def _setup(model: Any, torch_threads: int | None) -> tuple[Any, Any]:
  """torch and its device, after checking the model family and sizing torch's CPU threads.

  torch_threads None: as many as the cores XLA uses. On a host shared with other
  busy processes, torch's OpenMP threads can lose far more to waiting on a
  descheduled peer than XLA's pool does; a smaller count shows whether that is so.
  """
  torch, _ = hf_reference.import_torch_and_transformers()
  hf_reference.check_supported(model)
  torch.set_num_threads(torch_threads or hf_reference.cpu_threads())
  return torch, hf_reference.torch_device(torch)


def _common_lines(model: Any, torch: Any, device: Any, rounds: int) -> dict[str, Any]:
  return {**report.device_lines(), "torch_device": str(device), "torch_threads": torch.get_num_threads(),
          "activation_dtype": str(jnp.dtype(model.module.config.dtype)),
          "rounds": rounds}


def _hf_optimizer(optimizer_name: str, parameters: Any, learning_rate: float
                  ) -> tuple[Any, str]:
  """The torch optimizer closest to ours, and its name for the report."""
  torch, transformers = hf_reference.import_torch_and_transformers()
  name = optimizer_name.strip().lower()
  if name == "adafactor":
    return transformers.Adafactor(parameters, lr=learning_rate, scale_parameter=False,
                                  relative_step=False, warmup_init=False), (
                                      "transformers.Adafactor (factored)")
  if name == "adamw":
    return torch.optim.AdamW(parameters, lr=learning_rate), "torch.optim.AdamW"
  raise UsageError(f"OPTIMIZER={optimizer_name!r} has no torch counterpart in bench "
                   "--against=hf; use 'adafactor' or 'adamw'.")


def benchmark_train_against_hf(model: Any, optimizer: Any, optimizer_name: str,
                               batch_size: int = 8, input_length: int = 512,
                               target_length: int = 128, rounds: int = 5,
                               num_partitions: int = 1, parameter_partitioning_dims: int = 1,
                               warmup_steps: int = 2, learning_rate: float = 1e-3,
                               torch_threads: int | None = None,
                               replay_matmuls: bool = True) -> dict[str, Any]:
  """Median step times of ours and transformers' on the same batch, alternating.

  replay_matmuls adds our step's matmuls-alone time (benchmarks/matmul_replay).
  """
  torch, device = _setup(model, torch_threads)
  peak = matmul_peak.device_peak()
  prepared = train_step.prepare_train_step(model, optimizer, batch_size, input_length,
                                           target_length, num_partitions,
                                           parameter_partitioning_dims)
  hf_model = hf_reference.build(model, prepared.state.params).train()
  hf_optimizer, hf_optimizer_name = _hf_optimizer(optimizer_name, hf_model.parameters(),
                                                  learning_rate)
  tokens = {k: torch.tensor(v, dtype=torch.long, device=device)
            for k, v in prepared.host_batch.items()}
  if hf_reference.is_encoder_decoder(model):
    inputs = {"input_ids": tokens["encoder_input_tokens"],
              "decoder_input_ids": tokens["decoder_input_tokens"]}
  else:
    inputs = {"input_ids": tokens["decoder_input_tokens"]}
  targets = tokens["decoder_target_tokens"].flatten()

  def ours():
    jax.block_until_ready(prepared.step())

  def theirs():
    hf_optimizer.zero_grad(set_to_none=True)
    with hf_reference.autocast(torch, model):
      logits = hf_model(**inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets)
    loss.backward()
    hf_optimizer.step()
    if device.type == "cuda":
      torch.cuda.synchronize()

  for _ in range(warmup_steps):  # our first step compiles
    ours()
    theirs()
  our_seconds, hf_seconds = _alternate(rounds, ours, theirs)

  num_tokens = trainer_lib.tokens_per_step(prepared.shapes)
  train_flops = train_step.train_flops_per_step(model, batch_size, input_length, target_length)
  num_devices = len(jax.devices())
  return {
      **_common_lines(model, torch, device, rounds),
      "optimizer_ours": optimizer_name,
      "optimizer_hf": hf_optimizer_name,
      **peak.report_lines(),
      "ours_seconds_per_step": our_seconds,
      "hf_seconds_per_step": hf_seconds,
      "ours_tokens_per_second": num_tokens / our_seconds,
      "hf_tokens_per_second": num_tokens / hf_seconds,
      "ours_over_hf": hf_seconds / our_seconds,
      "ours_model_tflops_per_second": train_flops / our_seconds / 1e12,
      "hf_model_tflops_per_second": train_flops / hf_seconds / 1e12,
      f"ours_{peak.fraction_name}": peak.fraction(train_flops / our_seconds, num_devices),
      f"hf_{peak.fraction_name}": peak.fraction(train_flops / hf_seconds, 1),
      **(prepared.matmul_lines(peak, train_flops, "ours_") if replay_matmuls else {}),
  }


def _hf_generate(model: Any, hf_model: Any, torch: Any, device: Any,
                 host_batch: dict[str, np.ndarray], input_length: int, target_length: int,
                 num_beams: int) -> Callable[[], np.ndarray]:
  """A call of transformers' generate on our prompts that returns the new tokens."""
  _, transformers = hf_reference.import_torch_and_transformers()
  config = model.module.config
  growing_cache = False
  if hf_reference.is_encoder_decoder(model):
    prompts = host_batch["encoder_input_tokens"]
    extra = {"decoder_start_token_id": 0}
    first_new = 1  # generate's output starts with the decoder start token
    # transformers sizes T5's default KV cache by the encoder's depth; a growing one fits.
    growing_cache = config.num_decoder_layers != config.num_encoder_layers
  else:  # the prompt and its BOS slot (decode_speed._decode_batch)
    prompts = host_batch["decoder_input_tokens"][:, :input_length + 1]
    extra = {}
    first_new = prompts.shape[1]
  input_ids = torch.tensor(prompts, dtype=torch.long, device=device)

  def generate() -> np.ndarray:
    if growing_cache:
      cache_utils = transformers.cache_utils
      extra["cache"] = cache_utils.EncoderDecoderCache(cache_utils.DynamicCache(),
                                                       cache_utils.DynamicCache())
    with torch.no_grad(), hf_reference.autocast(torch, model):
      output = hf_model.generate(
          input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
          max_new_tokens=target_length, do_sample=False, num_beams=num_beams,
          use_cache=True, pad_token_id=0, **extra)
    return output[:, first_new:].cpu().numpy()
  return generate


def _agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
  """Fraction of positions with the same token (a shorter side counts as disagreeing)."""
  padded = np.full(ours.shape, -1, ours.dtype)
  width = min(ours.shape[1], theirs.shape[1])
  padded[:, :width] = theirs[:, :width]
  return float(np.mean(ours == padded))


def benchmark_decode_against_hf(model: Any, batch_size: int = 8, input_length: int = 512,
                                target_length: int = 128, rounds: int = 3,
                                num_beams: int = 4,
                                methods: tuple[str, ...] = ("greedy", "beam"),
                                num_partitions: int = 1,
                                parameter_partitioning_dims: int = 1,
                                torch_threads: int | None = None,
                                replay_matmuls: bool = True) -> dict[str, Any]:
  """Median whole-batch decode times of ours and transformers' generate, alternating.

  replay_matmuls adds the rate of our decode's matmuls alone
  (PreparedDecode.matmuls_alone_tokens_per_second): the most any implementation
  using this device's matmul kernels could reach, and its ratio to transformers.
  """
  torch, device = _setup(model, torch_threads)
  prepared = decode_speed.prepare_decode(model, batch_size, input_length, target_length,
                                         num_partitions, parameter_partitioning_dims)
  hf_model = hf_reference.build(model, prepared.params).eval()
  roofline = decode_roofline.Roofline.of_device()
  results = {**_common_lines(model, torch, device, rounds), "batch_size": batch_size,
             "input_length": input_length, "target_length": target_length,
             **roofline.report_lines()}
  for method in methods:
    beams = num_beams if method == "beam" else 1
    floor = prepared.floor_tokens_per_second(roofline, beams)
    ours, _ = prepared.compile(decode_speed.decode_config(method, target_length, num_beams))
    theirs = _hf_generate(model, hf_model, torch, device, prepared.host_batch, input_length,
                          target_length, beams)
    agreement = _agreement(ours(), theirs())  # also the warm-up of each side
    our_seconds, hf_seconds = _alternate(rounds, ours, theirs)
    name = decode_speed.method_name(method, num_beams)
    new_tokens = batch_size * target_length
    results.update({
        f"{name}_ours_tokens_per_second": new_tokens / our_seconds,
        f"{name}_hf_tokens_per_second": new_tokens / hf_seconds,
        f"{name}_ours_over_hf": hf_seconds / our_seconds,
        f"{name}_token_agreement": agreement,
        f"{name}_floor_tokens_per_second": floor,
        f"{name}_ours_fraction_of_floor": new_tokens / our_seconds / floor,
        f"{name}_hf_fraction_of_floor": new_tokens / hf_seconds / floor,
    })
    if replay_matmuls:
      alone = prepared.matmuls_alone_tokens_per_second(
          decode_speed.decode_config(method, target_length, num_beams))
      results[f"{name}_matmuls_alone_tokens_per_second"] = alone
      results[f"{name}_matmuls_alone_over_hf"] = alone * hf_seconds / new_tokens
  return results
