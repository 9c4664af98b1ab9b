"""Per-layer <-> stacked parameter layouts, so scanned and unrolled runs share checkpoints.

An unrolled stack keeps one subtree per layer, `layers_0 ... layers_{N-1}` (t5x
and Hugging Face name layers this way); a scanned stack (networks.stack) keeps
one subtree `layers` whose leaves have a leading axis of size N. Every stack
(encoder, decoder) is converted on its own, at any depth of the tree.

Leaves may be arrays or lazily read sources (t5x.LazyArray): converting them
builds `StackedLayers` / `OneLayer` views that read only the slices asked for.
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from instruct_jax.models.networks import stack

_PER_LAYER_NAME = re.compile(r"^layers_(\d+)$")


class StackedLayers:
  """Per-layer arrays [...] seen as one array [layers, ...], read slice by slice."""

  def __init__(self, layers: Sequence[Any]):
    shapes = {tuple(layer.shape) for layer in layers}
    if len(shapes) != 1:
      raise ValueError(f"Cannot stack layers of different shapes {sorted(shapes)}; the "
                       "checkpoint's layers_<i> subtrees must be identical in shape.")
    self.layers = list(layers)
    self.shape = (len(layers),) + tuple(layers[0].shape)
    self.dtype = layers[0].dtype

  def __getitem__(self, index) -> np.ndarray:
    index = _full_index(index, len(self.shape))
    rows = range(*index[0].indices(self.shape[0])) if isinstance(index[0], slice) else [
        index[0]]
    stacked = np.stack([np.asarray(self.layers[i][index[1:]]) for i in rows])
    return stacked if isinstance(index[0], slice) else stacked[0]

  def __array__(self, dtype=None, copy=None):
    value = self[()]
    return value if dtype is None else value.astype(dtype)


class OneLayer:
  """Layer `index` of a stacked array [layers, ...], read slice by slice."""

  def __init__(self, stacked: Any, index: int):
    self.stacked = stacked
    self.index = index
    self.shape = tuple(stacked.shape[1:])
    self.dtype = stacked.dtype

  def __getitem__(self, index) -> np.ndarray:
    return np.asarray(self.stacked[(self.index,) + _full_index(index, len(self.shape))])

  def __array__(self, dtype=None, copy=None):
    value = self[()]
    return value if dtype is None else value.astype(dtype)


def _full_index(index, ndim: int) -> tuple:
  index = index if isinstance(index, tuple) else (index,)
  return tuple(index) + (slice(None),) * (ndim - len(index))


def _per_layer_names(node: Mapping[str, Any]) -> list[str]:
  """The layers_<i> keys of `node`, in layer order."""
  numbered = []
  for key in node:
    match = _PER_LAYER_NAME.match(str(key))
    if match:
      numbered.append((int(match.group(1)), key))
  return [key for _, key in sorted(numbered)]


def _is_stacked(node: Mapping[str, Any]) -> bool:
  return isinstance(node.get(stack.SCANNED_NAME), Mapping) and not _per_layer_names(node)


def _stack_node(node: Mapping[str, Any]) -> dict[str, Any]:
  names = _per_layer_names(node)
  expected = [stack.per_layer_name(i) for i in range(len(names))]
  if names != expected:
    raise ValueError(f"Cannot stack layers {names}: expected consecutive {expected}.")
  stacked = jax.tree.map(lambda *leaves: StackedLayers(leaves), *(node[n] for n in names))
  rest = {k: v for k, v in node.items() if k not in names}
  return {**rest, stack.SCANNED_NAME: stacked}


def _unstack_node(node: Mapping[str, Any]) -> dict[str, Any]:
  stacked = node[stack.SCANNED_NAME]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in node.items() if k != stack.SCANNED_NAME}
  for i in range(num_layers):
    rest[stack.per_layer_name(i)] = jax.tree.map(lambda leaf, i=i: OneLayer(leaf, i), stacked)
  return rest


def match_layout(tree: Any, like: Any) -> Any:
  """`tree` with each layer stack in the layout `like` has (leaves of `like` are not read).

  Stacks already in the layout of `like`, and subtrees `like` lacks, are kept.
  """
  if not (isinstance(tree, Mapping) and isinstance(like, Mapping)):
    return tree
  if _is_stacked(like) and _per_layer_names(tree):
    tree = _stack_node(tree)
  elif _per_layer_names(like) and _is_stacked(tree):
    tree = _unstack_node(tree)
  return {k: match_layout(v, like[k]) if k in like else v for k, v in tree.items()}


def to_per_layer(tree: Any) -> Any:
  """`tree` with every stack per layer (the t5x / Hugging Face layout)."""
  if not isinstance(tree, Mapping):
    return tree
  if _is_stacked(tree):
    tree = _unstack_node(tree)
  return {k: to_per_layer(v) for k, v in tree.items()}


def layouts_differ(tree: Any, like: Any) -> bool:
  """Whether some layer stack is stacked in one tree and per layer in the other."""
  if not (isinstance(tree, Mapping) and isinstance(like, Mapping)):
    return False
  if (_is_stacked(like) and _per_layer_names(tree)) or (
      _per_layer_names(like) and _is_stacked(tree)):
    return True
  return any(layouts_differ(tree[k], like[k]) for k in tree.keys() & like.keys())


def materialize(tree: Any) -> Any:
  """Every StackedLayers / OneLayer view read into a numpy array; other leaves unchanged."""
  return jax.tree.map(
      lambda leaf: np.asarray(leaf) if isinstance(leaf, (StackedLayers, OneLayer)) else leaf,
      tree)


def _has_stacked_layers(tree: Any) -> bool:
  if not isinstance(tree, Mapping):
    return False
  return _is_stacked(tree) or any(_has_stacked_layers(v) for v in tree.values())


def resume_hint(saved_params: Any, expected_params: Any) -> str:
  """Why a run's own checkpoint does not fit, when it was written with the other scan_layers.

  Empty when the layer layouts agree. Only params convert between layouts; the
  optimizer state of stacked params (e.g. Adafactor's factored statistics) has
  other shapes, so a run resumes with the setting it was started with.
  """
  if not layouts_differ(saved_params, expected_params):
    return ""
  written = _has_stacked_layers(saved_params)
  return (f"This checkpoint was written with scan_layers={written} and the model now has "
          f"scan_layers={not written}. Relaunch with scan_layers={written} to resume, or "
          "start a fresh MODEL_DIR with INITIAL_CHECKPOINT_PATH set to this checkpoint: "
          "params load across the two layouts, optimizer state does not.\n")
