"""Reading checkpoints written by t5x (the format Google released T5 / Flan-T5 in).

Legacy t5x checkpoint, one directory per step:

    checkpoint_<step>/
      checkpoint                      msgpack: {version, optimizer: {target: params,
                                        state: {step, param_states: {<param path>:
                                        {v_row, v_col, v, m}}}}}
      target.encoder.layers_0.attention.query.kernel/   zarr array (tensorstore)
      state.param_states.encoder....kernel.v_row/        zarr array
      ...

Small arrays sit inline in the msgpack as flax ext types (bfloat16 included).
Large ones are replaced there by a tensorstore spec dict whose kvstore path is
relative to the checkpoint directory (t5x names it after the parameter path with
'/' -> '.'); on GCS t5x writes a placeholder bucket that the reader replaces.
Checkpoints of format version < 3 stored bfloat16 arrays as uint16.

Arrays are opened lazily: `LazyArray` reads only the slice asked for, so each
host of a multi-host job reads just its own shards of a big checkpoint.

t5x's later orbax checkpoints (checkpoint_<step>/state/, the same
{target, state} tree) are plain orbax PyTrees; checkpoints.params_io and
checkpoints.adafactor_carry_over read them with orbax directly.
"""

import copy
import os
import re
from collections.abc import Mapping
from typing import Any, Optional

from flax import serialization
import ml_dtypes
import numpy as np
import tensorflow as tf
import tensorstore as ts

from instruct_jax.errors import UsageError

CHECKPOINT_FILE = "checkpoint"
# Format version 3 (t5x, since mid 2021) writes bfloat16 natively to tensorstore.
NATIVE_BFLOAT16_VERSION = 3
_GCS_PATH = re.compile(r"^gs://([^/]+)/?(.*)$", re.DOTALL)
# Quoted by the errors about paths that are not a readable t5x checkpoint.
EXPECTED_LAYOUT = (
    "Expected a t5x checkpoint_<step> directory: the msgpack file `checkpoint` plus one "
    "tensorstore (zarr) directory per large array, named after its parameter path (e.g. "
    "target.encoder.layers_0.attention.query.kernel/, holding .zarray and the chunks); t5x's "
    "orbax checkpoints hold a state/ directory instead. Pass that checkpoint_<step> "
    "directory, or the run directory above it.")


def is_legacy_checkpoint(directory: str) -> bool:
  """A t5x checkpoint_<step> directory: it holds the msgpack file `checkpoint`."""
  return not tf.io.gfile.isdir(os.path.join(directory, CHECKPOINT_FILE)) and tf.io.gfile.exists(
      os.path.join(directory, CHECKPOINT_FILE))


def _enclosing_checkpoint(path: str) -> Optional[str]:
  """The legacy checkpoint directory that `path` lies in (one or two levels up), if any."""
  parent = os.path.dirname(path)
  for _ in range(2):
    if parent and is_legacy_checkpoint(parent):
      return parent
    parent = os.path.dirname(parent)
  return None


def check_checkpoint_path(path: str) -> None:
  """UsageError naming the mistake when `path` cannot be a t5x checkpoint; else nothing.

  Catches, before any reading, what a hand-typed path gets wrong: a file or an
  array directory inside a checkpoint instead of the checkpoint, and a copy
  without the msgpack file. Other paths (orbax layouts, a run directory) are
  left to checkpoints.params_io to recognise.
  """
  gfile = tf.io.gfile
  path = path.rstrip("/")
  if not gfile.exists(path):
    raise UsageError(f"{path} does not exist. {EXPECTED_LAYOUT}")
  if is_legacy_checkpoint(path) or (os.path.basename(path) == CHECKPOINT_FILE
                                    and not gfile.isdir(path)):
    return  # The checkpoint, or its msgpack file (whose directory is read).
  inside = _enclosing_checkpoint(path)
  if inside is not None:
    what = "an array directory" if gfile.isdir(path) else "a file"
    raise UsageError(f"{path} is {what} inside the t5x checkpoint {inside}, not the checkpoint "
                     f"itself; pass {inside}.")
  if not gfile.isdir(path):
    raise UsageError(f"{path} is a file, not a t5x checkpoint directory. {EXPECTED_LAYOUT}")
  if any(name.startswith("target.") for name in gfile.listdir(path)):
    raise UsageError(
        f"{path} holds t5x arrays (target.* directories) but not the msgpack file "
        f"`{CHECKPOINT_FILE}` that lists them: the copy is incomplete; copy the whole "
        f"checkpoint_<step> directory. {EXPECTED_LAYOUT}")


def is_tensorstore_spec(node: Any) -> bool:
  """Whether a msgpack node is a tensorstore spec standing in for an array."""
  return isinstance(node, Mapping) and "driver" in node and (
      "kvstore" in node or "path" in node)


def absolute_spec(spec: Mapping[str, Any], checkpoint_dir: str) -> dict[str, Any]:
  """The spec with its relative array path resolved against `checkpoint_dir`.

  Accepts both tensorstore spec layouts t5x has written ('path' inside
  'kvstore', or top-level 'path' with tensorstore < 0.1.14) and both kvstore
  drivers (file/gfile, gcs). The stored zarr metadata is dropped: tensorstore
  reads it from the array itself, so nothing can disagree with the files.
  """
  spec = copy.deepcopy(dict(spec))
  kvstore = spec.get("kvstore")
  if isinstance(kvstore, Mapping) and "path" in kvstore:
    relative = kvstore["path"]
  elif "path" in spec:
    relative = spec.pop("path")
  else:
    raise ValueError(f"Tensorstore spec without an array path: {spec}")
  if isinstance(kvstore, str):  # Already a URL such as "file:///..." or "gs://...".
    raise ValueError(f"Unsupported kvstore {kvstore!r} in a t5x checkpoint spec.")
  path = relative if relative.startswith(("/", "gs://")) else (
      checkpoint_dir.rstrip("/") + "/" + relative)
  match = _GCS_PATH.match(path)
  if match:
    spec["kvstore"] = {"driver": "gcs", "bucket": match.group(1), "path": match.group(2)}
  elif "://" in path:
    raise UsageError(f"Cannot read t5x array {path}: only local paths and gs:// are supported.")
  else:
    spec["kvstore"] = {"driver": "file", "path": path}
  spec.pop("metadata", None)
  spec.pop("dtype", None)
  return spec


class LazyArray:
  """A t5x array in a tensorstore (zarr) store, read on demand, slice by slice."""

  def __init__(self, spec: Mapping[str, Any], checkpoint_dir: str, version: int):
    self.spec = absolute_spec(spec, checkpoint_dir)
    try:
      self._store = ts.open(self.spec, open=True, read=True).result()
    except ValueError as e:
      if "NOT_FOUND" not in str(e):
        raise
      reason = str(e).split(" [tensorstore_spec", 1)[0]
      raise UsageError(
          f"The t5x checkpoint {checkpoint_dir} lists an array whose tensorstore files are "
          f"missing ({reason}): the copy is incomplete; copy the whole checkpoint_<step> "
          f"directory. {EXPECTED_LAYOUT}") from None
    self.shape = tuple(int(d) for d in self._store.shape)
    dtype = np.dtype(self._store.dtype.numpy_dtype)
    # Before version 3, t5x cast bfloat16 to uint16 to store it.
    self._as_bfloat16 = version < NATIVE_BFLOAT16_VERSION and dtype == np.uint16
    self.dtype = np.dtype(ml_dtypes.bfloat16) if self._as_bfloat16 else dtype

  def __getitem__(self, index) -> np.ndarray:
    value = np.asarray(self._store[index].read().result())
    return value.view(ml_dtypes.bfloat16) if self._as_bfloat16 else value

  def read_async(self, index=()):
    """A tensorstore future for a slice (reads run concurrently; `.result()` waits)."""
    return self._store[index].read()

  def __array__(self, dtype=None, copy=None):
    value = self[()]
    return value if dtype is None else value.astype(dtype)

  def __repr__(self):
    return f"LazyArray(shape={self.shape}, dtype={self.dtype}, spec={self.spec['kvstore']})"


class LegacyCheckpoint:
  """The contents of a legacy t5x checkpoint directory, arrays opened lazily.

  Attributes:
    directory: the checkpoint_<step> directory.
    version: t5x checkpoint format version.
    target: the params tree (numpy arrays and LazyArrays).
    param_states: optimizer statistics per param path ({} when absent).
    step: the optimizer step of the checkpoint, or None.
  """

  def __init__(self, directory: str):
    directory = directory.rstrip("/")
    if os.path.basename(directory) == CHECKPOINT_FILE and not tf.io.gfile.isdir(directory):
      directory = os.path.dirname(directory)  # The msgpack file itself was given.
    self.directory = directory
    with tf.io.gfile.GFile(os.path.join(directory, CHECKPOINT_FILE), "rb") as f:
      data = f.read()
    try:
      contents = serialization.msgpack_restore(data)
    except ValueError as e:  # msgpack's errors: truncated file, not msgpack at all
      raise UsageError(f"{directory}/{CHECKPOINT_FILE} is not a readable t5x msgpack file "
                       f"({e}); copy it again from the original checkpoint. "
                       f"{EXPECTED_LAYOUT}") from None
    if not isinstance(contents, Mapping) or "optimizer" not in contents:
      raise UsageError(
          f"{directory}/{CHECKPOINT_FILE} is not a t5x checkpoint: expected a msgpack dict "
          f"with 'version' and 'optimizer', found keys "
          f"{sorted(contents) if isinstance(contents, Mapping) else type(contents).__name__}.")
    self.version = int(contents.get("version", 0))
    optimizer = contents["optimizer"]
    if "target" not in optimizer:
      raise UsageError(f"{directory}/{CHECKPOINT_FILE} has no optimizer/target (the params); "
                       f"found {sorted(optimizer)}.")
    self.target = self._open(optimizer["target"])
    state = optimizer.get("state") or {}
    self.param_states = self._open(state.get("param_states") or {})
    step = state.get("step")
    self.step: Optional[int] = None if step is None else int(np.asarray(step).reshape(-1)[0])

  def _open(self, tree: Any) -> Any:
    if is_tensorstore_spec(tree):
      return LazyArray(tree, self.directory, self.version)
    if isinstance(tree, Mapping):
      return {key: self._open(value) for key, value in tree.items()}
    if isinstance(tree, np.ndarray) or np.isscalar(tree):
      return np.asarray(tree)
    return tree
