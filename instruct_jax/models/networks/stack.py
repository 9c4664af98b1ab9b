"""A stack of identical layers, run unrolled or as one `nn.scan` over stacked params.

Unrolled, the layers are submodules `layers_0 ... layers_{N-1}` of the caller
(the t5x / Hugging Face tree). Scanned, they are one submodule `layers` whose
params carry a leading axis of size N (logical axis LAYERS_AXIS, never split
over the mesh), so the step compiles one layer's body whatever the depth.
checkpoints.layer_layout maps params between the two layouts.

In both layouts the remat policy wraps each layer, so under a scan only one
layer's activations are rematerialised at a time.

A KV cache ("cache" and layers.CROSS_CACHE collections) is stacked on axis 1,
after the batch, so every cache leaf stays batch-major as models.decoding
expects (beam search widens and reorders rows along axis 0).

Forward and backward passes match the unrolled stack to float32 round-off, and
so does training with element-wise optimizers (SGD, Adam), factored second
moments, and optimizers.adafactor, whose per-array RMS steps (update clipping,
parameter scale) go through optimizers.per_layer. A bare optax *_block_rms step
would pool all layers of a stacked array and step slightly differently.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from instruct_jax.models.networks import layers

LAYERS_AXIS = "layers"
SCANNED_NAME = "layers"
# Where the layer index goes in each scanned variable collection.
_PARAMS_LAYER_AXIS = 0
_CACHE_LAYER_AXIS = 1


def per_layer_name(index: int) -> str:
  """The unrolled submodule name of layer `index` (t5x's)."""
  return f"layers_{index}"


def run_layers(layer_cls: type[nn.Module], config: Any, num_layers: int, inputs: Any,
               *args: Any, scan: bool, remat_policy: str,
               static_argnums: tuple[int, ...]) -> Any:
  """inputs -> layer_{N-1}(... layer_0(inputs, *args) ..., *args).

  Call from inside a compact method: the layers become submodules of the
  caller. Each layer is `layer_cls(config)` called as
  `layer(x, *args) -> x`; `args` are the same for every layer and may hold
  Python values (flags, lengths). static_argnums are those Python arguments'
  positions for nn.remat (self = 0, inputs = 1; see layers.maybe_remat).
  """
  if num_layers < 1:
    raise ValueError(f"A layer stack needs at least one layer, got num_layers={num_layers}.")
  layer_cls = layers.maybe_remat(layer_cls, remat_policy, static_argnums=static_argnums)
  if not scan:
    x = inputs
    for i in range(num_layers):
      x = layer_cls(config, name=per_layer_name(i))(x, *args)
    return x
  scanned = nn.scan(
      _carry_through,
      variable_axes={"params": _PARAMS_LAYER_AXIS, "cache": _CACHE_LAYER_AXIS,
                     layers.CROSS_CACHE: _CACHE_LAYER_AXIS},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * len(args),
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: LAYERS_AXIS})
  x, _ = scanned(layer_cls(config, name=SCANNED_NAME), inputs, *args)
  return x


def _carry_through(layer: Callable[..., Any], carry: Any, *args: Any) -> tuple[Any, None]:
  """One scan step: the layer's output is the next layer's input; nothing is collected."""
  return layer(carry, *args), None
