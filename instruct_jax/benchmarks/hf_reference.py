"""Our model rebuilt in transformers (PyTorch) with the same weights: the `--against=hf` side.

T5 goes through checkpoints.hf and Llama / Mistral through checkpoints.hf_llama,
the conversions the interop tests check against our logits and greedy tokens.
The weights are written as a Hugging Face checkpoint to a temporary directory
and read back with from_pretrained, so the reference is exactly what a
transformers user who loads our export gets.
"""
import contextlib
import os
import tempfile
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax.checkpoints import hf
from instruct_jax.checkpoints import hf_llama
from instruct_jax.checkpoints import layer_layout
from instruct_jax.errors import UsageError
from instruct_jax.models.networks import llama
from instruct_jax.models.networks import t5

SUPPORTED = "T5 (models/t5_1_1, models/flan_t5) and Llama / Mistral (models/llama)"


def import_torch_and_transformers() -> tuple[Any, Any]:
  """(torch, transformers), or a UsageError saying how to install them."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UsageError(
        f"bench --against=hf needs PyTorch and transformers ({e}). Install them with "
        "pip install \".[test]\" (torch==2.13.0, transformers 5).") from e
  return torch, transformers


def is_encoder_decoder(model: Any) -> bool:
  return isinstance(model.module, t5.Transformer)


def check_supported(model: Any) -> None:
  if not isinstance(model.module, (t5.Transformer, llama.Llama)):
    raise UsageError(
        f"bench --against=hf has no transformers counterpart for "
        f"{type(model.module).__name__}; it supports {SUPPORTED}.")


def hf_checkpoint(model: Any, params: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The HF config.json dict and float32 state dict of our `params`."""
  check_supported(model)
  params = jax.tree.map(np.asarray, layer_layout.to_per_layer(jax.device_get(params)))
  config = model.module.config
  if is_encoder_decoder(model):
    return hf.hf_config_from_t5(config), hf.hf_state_dict_from_params(params, config)
  return hf_llama.hf_config_from_llama(config), hf_llama.hf_state_dict_from_params(params, config)


def torch_device(torch: Any) -> Any:
  """The GPU when jax runs on one and torch sees it, else the CPU."""
  if jax.devices()[0].platform == "gpu" and torch.cuda.is_available():
    return torch.device("cuda")
  return torch.device("cpu")


def build(model: Any, params: Any) -> Any:
  """The transformers model (float32 weights, on torch_device, EOS never stops generate)."""
  torch, transformers = import_torch_and_transformers()
  hf_config, state_dict = hf_checkpoint(model, params)
  auto = (transformers.AutoModelForSeq2SeqLM if is_encoder_decoder(model)
          else transformers.AutoModelForCausalLM)
  with tempfile.TemporaryDirectory() as directory, _quiet(transformers):
    hf.write_hf_checkpoint(directory, hf_config, state_dict)
    hf_model = auto.from_pretrained(directory, dtype=torch.float32)
  hf_model.generation_config.eos_token_id = None
  return hf_model.to(torch_device(torch))


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
  """Without from_pretrained's progress bar and its notes on tying (our export is exact)."""
  verbosity = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  try:
    yield
  finally:
    transformers.logging.enable_progress_bar()
    transformers.logging.set_verbosity(verbosity)


def autocast(torch: Any, model: Any) -> contextlib.AbstractContextManager:
  """Runs HF's activations in our model's activation dtype (its weights stay float32)."""
  dtype = jnp.dtype(getattr(model.module.config, "dtype", "float32"))
  if dtype == jnp.float32:
    return contextlib.nullcontext()
  device = torch_device(torch)
  return torch.autocast(device.type, dtype=getattr(torch, dtype.name))


def cpu_threads() -> int:
  """The cores XLA's CPU client uses (those this process may run on)."""
  return len(os.sched_getaffinity(0))
