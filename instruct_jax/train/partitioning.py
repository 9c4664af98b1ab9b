"""Device mesh and logical-axis rules: how params, optimizer state and batches are laid out.

The model annotates every parameter and key activation with logical axis names
(batch, length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets, and
layers for scanned stacks). The rules below map those names onto the two mesh
axes ("data", "model") with the t5x meaning of its two knobs:

* NUM_PARTITIONS=k: the model axis has k devices; heads / mlp / vocab /
  joined_kv are split k ways (tensor parallelism).
* PARAMETER_PARTITIONING_DIMS=2: parameters (and so optimizer state) are also
  split over the data axis along `embed` (FSDP / ZeRO-3 style); activations
  keep `batch` on the data axis.
"""
import contextlib
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

LogicalRules = Sequence[tuple[str, Optional[str]]]


def standard_logical_axis_rules(parameter_partitioning_dims: int = 1) -> LogicalRules:
  """The default logical -> mesh axis rules (t5x semantics).

  The model-axis size is the mesh's business (NUM_PARTITIONS), not the rules'.
  """
  if parameter_partitioning_dims not in (1, 2):
    raise ValueError(
        f"PARAMETER_PARTITIONING_DIMS must be 1 (data parallel) or 2 (FSDP), "
        f"got {parameter_partitioning_dims}.")
  rules = [
      ("batch", "data"),
      ("vocab", "model"),
      ("mlp", "model"),
      ("heads", "model"),
      ("joined_kv", "model"),
      ("kv", None),
      ("length", None),
      ("relpos_buckets", None),
      ("layers", None),  # The stacked-layer axis of scanned models (networks.stack).
  ]
  # A mesh axis is used at most once per array, so activations whose batch dim
  # already took "data" leave their embed dim unsplit; parameters split it.
  rules.append(("embed", "data" if parameter_partitioning_dims == 2 else None))
  return rules


class Partitioner:
  """Owns the mesh and turns logical axis annotations into shardings."""

  def __init__(self,
               num_partitions: int = 1,
               parameter_partitioning_dims: int = 1,
               logical_axis_rules: Optional[LogicalRules] = None,
               devices: Optional[Sequence[jax.Device]] = None):
    devices = list(devices) if devices is not None else jax.devices()
    if num_partitions < 1 or len(devices) % num_partitions:
      raise ValueError(
          f"NUM_PARTITIONS={num_partitions} must divide the number of devices "
          f"({len(devices)}); choose one of "
          f"{[k for k in range(1, len(devices) + 1) if len(devices) % k == 0]}.")
    self.num_partitions = num_partitions
    self.parameter_partitioning_dims = parameter_partitioning_dims
    self.rules = list(logical_axis_rules
                      or standard_logical_axis_rules(parameter_partitioning_dims))
    # Devices in jax.devices() order are grouped per process, so each host's
    # devices form contiguous rows of the data axis.
    grid = np.asarray(devices, dtype=object).reshape(len(devices) // num_partitions,
                                                     num_partitions)
    self.mesh = Mesh(grid, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape["data"]

  @property
  def batch_sharding(self) -> NamedSharding:
    """Layout of input batches: leading (batch) dimension split over `data`."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @contextlib.contextmanager
  def activation_context(self):
    """Mesh and rules in scope while tracing, so nn.with_logical_constraint works."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def sharding_for(self, logical_axes: Optional[Sequence[Optional[str]]],
                   shape: Sequence[int]) -> NamedSharding:
    """Sharding for one array with the given logical axes.

    A dimension that the assigned mesh axis does not divide evenly stays
    unsplit (jax cannot lay out uneven shards), e.g. a 259-entry vocabulary.
    """
    if logical_axes is None:
      return self.replicated
    mesh_axes = nn.logical_to_mesh_axes(tuple(logical_axes), self.rules)
    spec = []
    for dim, axis in zip(shape, mesh_axes):
      spec.append(axis if axis is None or dim % self.mesh.shape[axis] == 0 else None)
    return NamedSharding(self.mesh, PartitionSpec(*spec))

  def param_shardings(self, boxed_abstract_params: Any) -> Any:
    """Shardings for a LogicallyPartitioned-boxed abstract param tree."""
    logical = nn.get_partition_spec(boxed_abstract_params)
    shapes = nn.meta.unbox(boxed_abstract_params)
    return jax.tree.map(lambda spec, x: self.sharding_for(tuple(spec), x.shape),
                        logical, shapes,
                        is_leaf=lambda s: isinstance(s, PartitionSpec))

  def optimizer_state_shardings(self, abstract_opt_state: Any,
                                boxed_abstract_params: Any) -> Any:
    """Shardings for optimizer state derived from the params each leaf belongs to.

    Optax states nest param-shaped subtrees (Adam's mu/nu, Adafactor's
    v/v_row/v_col) whose paths end with the param's path. A leaf with the
    param's shape takes the param's layout; a factored statistic (the param's
    shape with one dimension removed) keeps the remaining dims' axes; anything
    else (counters, placeholders) is replicated.
    """
    logical = nn.get_partition_spec(boxed_abstract_params)
    shapes = nn.meta.unbox(boxed_abstract_params)
    by_path = {}
    for (path, spec), shape in zip(
        jax.tree_util.tree_flatten_with_path(
            logical, is_leaf=lambda s: isinstance(s, PartitionSpec))[0],
        jax.tree.leaves(shapes)):
      by_path[_dict_keys(path)] = (tuple(spec), tuple(shape.shape))

    def leaf_sharding(path, leaf):
      keys = _dict_keys(path)
      for start in range(len(keys)):
        if keys[start:] in by_path:
          axes, param_shape = by_path[keys[start:]]
          return self.sharding_for(_axes_for_shape(axes, param_shape, tuple(leaf.shape)),
                                   leaf.shape)
      return self.replicated

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_opt_state)

  def describe(self) -> Mapping[str, Any]:
    return {"mesh": dict(self.mesh.shape),
            "parameter_partitioning_dims": self.parameter_partitioning_dims}


def _dict_keys(path) -> tuple:
  return tuple(p.key for p in path if isinstance(p, jax.tree_util.DictKey))


def _axes_for_shape(axes: tuple, param_shape: tuple, leaf_shape: tuple) -> Optional[tuple]:
  """Logical axes for an optimizer leaf related to a param of `param_shape`."""
  if leaf_shape == param_shape:
    return axes
  if len(leaf_shape) == len(param_shape) - 1:
    for drop in reversed(range(len(param_shape))):
      if param_shape[:drop] + param_shape[drop + 1:] == leaf_shape:
        return axes[:drop] + axes[drop + 1:]
  return None
