"""PyTree checks shared by the run checkpointer and params loading.

Reading a saved tree's metadata lets a restore compare structures before any array
is read, so a mismatch becomes one error naming every offending key.
"""
from typing import Any, Optional

from etils import epath
import jax
import orbax.checkpoint as ocp


def flat_shapes(tree: Any) -> dict[str, Optional[tuple[int, ...]]]:
  """'a/b/0/c' -> shape for every leaf; matches orbax's on-disk naming of the tree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  result = {}
  for path, leaf in flat:
    shape = getattr(leaf, "shape", None)
    result[jax.tree_util.keystr(path, simple=True, separator="/")] = (
        None if shape is None else tuple(shape))
  return result


def tree_mismatches(expected: Any, found: Any) -> list[str]:
  """Lists keys missing from `found`, unexpected in it, and leaves of another shape."""
  want, have = flat_shapes(expected), flat_shapes(found)
  problems = []
  for key in sorted(want.keys() - have.keys()):
    problems.append(f"  missing from checkpoint: {key} (expected shape {want[key]})")
  for key in sorted(have.keys() - want.keys()):
    problems.append(f"  unexpected in checkpoint: {key} (shape {have[key]})")
  for key in sorted(want.keys() & have.keys()):
    if want[key] is not None and have[key] is not None and want[key] != have[key]:
      problems.append(
          f"  wrong shape: {key}: checkpoint has {have[key]}, expected {want[key]}")
  return problems


def saved_tree(item_dir: epath.Path) -> Any:
  """The nested structure (with shapes) of a saved PyTree item, read from metadata only."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    return handler.metadata(item_dir).tree
  finally:
    handler.close()


def with_target_shardings(abstract_tree: Any) -> Any:
  """Every leaf as a ShapeDtypeStruct carrying a sharding, so orbax restores jax.Arrays.

  Leaves that carry no sharding are restored fully replicated over all devices, the
  one layout that is valid for any mesh and any number of processes.
  """
  replicated = None

  def to_struct(leaf):
    nonlocal replicated
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
      if replicated is None:
        mesh = jax.sharding.Mesh(jax.devices(), ("replica",))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      sharding = replicated
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  return jax.tree.map(to_struct, abstract_tree)
