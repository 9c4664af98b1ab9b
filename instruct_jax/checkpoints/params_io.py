"""Params-only reading and writing across every checkpoint format this project knows.

For INITIAL_CHECKPOINT_PATH, evaluation and conversion: `detect_checkpoint_format`
is the one place that recognises a layout (our own orbax TrainState, t5x's legacy
msgpack + tensorstore and orbax layouts of the released T5 / Flan-T5 checkpoints,
Hugging Face T5, Llama and Mistral safetensors); the format readers live in
checkpoints.t5x, checkpoints.hf and checkpoints.hf_llama.
"""
import collections
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from instruct_jax.checkpoints import hf
from instruct_jax.checkpoints import hf_llama
from instruct_jax.checkpoints import layer_layout
from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import mismatch
from instruct_jax.checkpoints import orbax_trees
from instruct_jax.checkpoints import t5x

ORBAX_TRAIN_STATE = "instruct_jax orbax TrainState"
T5X_LEGACY = "t5x msgpack + tensorstore"
T5X_ORBAX = "t5x orbax"
HF_SAFETENSORS = "Hugging Face safetensors"
FORMATS = (ORBAX_TRAIN_STATE, T5X_LEGACY, T5X_ORBAX, HF_SAFETENSORS)

# The top-level key holding the params in each orbax-based format.
_PARAMS_KEY = {ORBAX_TRAIN_STATE: "params", T5X_ORBAX: "target"}
# Host memory allowed for slices read but not yet placed on devices, when loading
# arrays that are not orbax-managed (t5x legacy, Hugging Face).
_READ_WINDOW_BYTES = 2 * 2**30


def detect_checkpoint_format(path: str) -> tuple[str, epath.Path]:
  """Works out what `path` points to; the one place that knows checkpoint layouts.

  Returns (format name, location to read). Understood:
    * ORBAX_TRAIN_STATE: a checkpoint_<step> directory written by `Checkpointer`
      (or by `save_params`, e.g. `instruct-jax convert`) -> its `state` item;
    * T5X_ORBAX: a t5x checkpoint_<step> directory in orbax layout -> its `state`;
    * T5X_LEGACY: a t5x checkpoint_<step> directory holding the msgpack file
      `checkpoint` (or that file itself) -> the directory;
    * HF_SAFETENSORS: a Hugging Face T5, Llama or Mistral directory (config.json +
      safetensors);
    * a MODEL_DIR holding checkpoint_<step> directories of any of the above ->
      the newest finished step.
  """
  root = epath.Path(path)
  if not root.exists():
    raise FileNotFoundError(f"Checkpoint path {root} does not exist.")
  found = _detect_step_dir(root)
  if found is not None:
    return found
  for step_dir in _step_dirs_newest_first(root):
    try:
      found = _detect_step_dir(step_dir)
    except FileNotFoundError:  # An unfinished orbax save; an older step may do.
      continue
    if found is not None:
      return found
  raise FileNotFoundError(
      f"Found no checkpoint I can read at {root}. Expected one of: a MODEL_DIR with "
      f"finished {layout.STEP_PREFIX}_<step>/ directories; one such directory (instruct_jax or "
      "t5x, orbax or legacy msgpack + tensorstore); or a Hugging Face T5 directory with "
      "config.json and model.safetensors. Unfinished saves (*.orbax-checkpoint-tmp-*) "
      "are ignored.")


def _detect_step_dir(root: epath.Path) -> Optional[tuple[str, epath.Path]]:
  """The format of a single checkpoint directory, or None if it is not one."""
  if root.name == t5x.CHECKPOINT_FILE and root.is_file():
    return T5X_LEGACY, root.parent
  if not root.is_dir():
    return None
  if hf.is_hf_checkpoint(str(root)):
    return HF_SAFETENSORS, root
  if t5x.is_legacy_checkpoint(str(root)):
    return T5X_LEGACY, root
  state_dir = root / layout.STATE_ITEM
  if (state_dir / layout.PYTREE_METADATA_FILE).exists() or (state_dir / t5x.CHECKPOINT_FILE).exists():
    if not ocp.path.step.is_path_finalized(root):
      raise FileNotFoundError(
          f"{root} is a checkpoint that was never finished (its save was interrupted); "
          "pass a finished checkpoint_<step> directory or the MODEL_DIR.")
    try:
      keys = set(orbax_trees.saved_tree(state_dir))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f"{state_dir} looks like an orbax checkpoint, but its tree metadata cannot be read "
          f"({type(e).__name__}: {e}). Checkpoints from old orbax versions without a "
          f"{layout.PYTREE_METADATA_FILE} file are not supported; re-save it with a current "
          "orbax, or pass a legacy t5x (msgpack + tensorstore) checkpoint.") from e
    if "params" in keys:
      return ORBAX_TRAIN_STATE, state_dir
    if "target" in keys:
      return T5X_ORBAX, state_dir
    raise ValueError(
        f"{state_dir} is an orbax checkpoint but neither an instruct_jax TrainState (key "
        f"'params') nor a t5x train state (key 'target'); its top-level keys are "
        f"{sorted(keys)}.")
  return None


def _step_dirs_newest_first(root: epath.Path) -> list[epath.Path]:
  """checkpoint_<step> subdirectories of a MODEL_DIR, newest first (names per layout)."""
  steps = []
  for child in root.iterdir():
    step = layout.step_of_dir_name(child.name)
    if step is not None and child.is_dir():
      steps.append((step, child))
  return [child for _, child in sorted(steps, key=lambda s: s[0], reverse=True)]


def load_params(path: str, abstract_params: Any) -> Any:
  """Loads only the params of a checkpoint, onto the shardings in `abstract_params`.

  For fine-tuning from INITIAL_CHECKPOINT_PATH: optimizer state and step are not
  read, so the new run may use another optimizer. `path` may be any format
  `detect_checkpoint_format` understands (ours, t5x legacy or orbax, Hugging
  Face T5). Arrays are cast to the dtypes of `abstract_params` (float32), and
  layer stacks are restacked or split to the layout `abstract_params` has
  (checkpoints.layer_layout), so scanned and unrolled runs read each other's
  checkpoints. A model that does not fit raises one CheckpointMismatchError (a
  ValueError) naming the first differing params and the model gin that fits.
  """
  fmt, location = detect_checkpoint_format(path)
  if fmt in _PARAMS_KEY:
    params = _load_orbax_subtree(location, _PARAMS_KEY[fmt], abstract_params, fmt)
  elif fmt == T5X_LEGACY:
    source = t5x.LegacyCheckpoint(str(location)).target
    params = _place_on_devices(source, abstract_params, location, fmt)
  elif fmt == HF_SAFETENSORS:
    _, source, _ = load_hf_checkpoint(str(location))
    params = _place_on_devices(source, abstract_params, location, fmt)
  else:  # pragma: no cover - detect_checkpoint_format returns only known formats.
    raise NotImplementedError(f"Loading params from a {fmt} checkpoint is not supported.")
  logging.info("Loaded params (%s) from %s.", fmt, location)
  return params


def read_params(path: str) -> tuple[str, dict[str, Any]]:
  """(format, params as host numpy arrays in their stored dtype) of any checkpoint.

  Unsharded and whole, for offline conversion (`instruct-jax convert`); training
  uses `load_params`, which reads straight onto the device shardings. Layer
  stacks come back per layer (layers_<i>, the t5x / Hugging Face layout) even
  when a scanned run wrote them stacked.
  """
  fmt, location = detect_checkpoint_format(path)
  if fmt in _PARAMS_KEY:
    params = _read_orbax_subtree(location, _PARAMS_KEY[fmt])
    return fmt, layer_layout.materialize(layer_layout.to_per_layer(params))
  if fmt == T5X_LEGACY:
    target = t5x.LegacyCheckpoint(str(location)).target
    return fmt, jax.tree.map(np.asarray, target)
  _, params, _ = load_hf_checkpoint(str(location))
  return fmt, params


def _read_orbax_subtree(state_dir: epath.Path, key: str) -> Any:
  """The `key` subtree of an orbax checkpoint as whole host numpy arrays."""
  saved = orbax_trees.saved_tree(state_dir)[key]
  item = {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return restored[key]


def load_hf_checkpoint(directory: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """(network config, float32 params, config.json) of a Hugging Face directory.

  The family follows config.json's model_type: T5 (checkpoints.hf) or Llama /
  Mistral (checkpoints.hf_llama).
  """
  if hf_llama.is_llama_config(hf.read_hf_config(directory)):
    return hf_llama.load_hf_checkpoint(directory)
  return hf.load_hf_checkpoint(directory)


def save_params(directory: str, params: Any) -> None:
  """Writes a params-only checkpoint directory that `load_params` reads (our format).

  Same layout as a Checkpointer step (directory/state holding {'params': ...}),
  committed atomically by orbax; used for converted checkpoints.
  """
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as writer:
    writer.save(epath.Path(directory),
                args=ocp.args.Composite(**{layout.STATE_ITEM: ocp.args.StandardSave({"params": params})}))


def _mismatch_error(location: Any, abstract_params: Any, found: Any,
                    fmt: str) -> mismatch.CheckpointMismatchError:
  """Which params differ, and the model gin that would fit (one paragraph)."""
  location = epath.Path(location)
  # Our checkpoints live in MODEL_DIR/checkpoint_<step>/state; the run's record is in MODEL_DIR.
  recorded = next(filter(None, (mismatch.recorded_sizes(str(d)) for d in (
      location.parent, location.parent.parent))), None) if fmt == ORBAX_TRAIN_STATE else None
  if recorded:
    hint = (f"The run that wrote it recorded its model in {recorded}: use that model gin "
            "and those sizes.")
  else:
    hint = ("Use the model gin of the checkpoint's model (sizes, number of layers, "
            "logits_via_embedding, mlp_activations).")
  if fmt == HF_SAFETENSORS:
    hint += (" `instruct-jax convert --from hf` writes the matching model gin next to the "
             "converted checkpoint.")
  return mismatch.CheckpointMismatchError(
      f"The params in {location} ({fmt}) do not match the model being initialised. "
      f"{mismatch.describe(abstract_params, found, 'model')}. {hint}")


def _load_orbax_subtree(state_dir: epath.Path, key: str, abstract_params: Any,
                        fmt: str) -> Any:
  saved = orbax_trees.saved_tree(state_dir)
  if key not in saved:
    raise ValueError(
        f"{state_dir} holds no '{key}' subtree (top-level keys: {sorted(saved)}).")
  if layer_layout.layouts_differ(saved[key], abstract_params):
    # Written with the other scan_layers setting: read on the host, then restack or split.
    return _place_on_devices(_read_orbax_subtree(state_dir, key), abstract_params, state_dir,
                             fmt)
  if orbax_trees.tree_mismatches(abstract_params, saved[key]):
    raise _mismatch_error(state_dir, abstract_params, saved[key], fmt)
  target = {key: orbax_trees.with_target_shardings(abstract_params)}
  # partial_restore: read the params subtree only; optimizer state and step stay on disk.
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
  return restored[key]


def _place_on_devices(source: Any, abstract_params: Any, location: Any, fmt: str) -> Any:
  """Host arrays (numpy or t5x.LazyArray) -> jax.Arrays laid out like `abstract_params`.

  Each process reads only the slices its own devices hold, each distinct slice
  once, with reads in flight concurrently up to a bounded number of bytes. Layer
  stacks are converted to the layout of `abstract_params` first.
  """
  source = layer_layout.match_layout(source, abstract_params)
  if orbax_trees.tree_mismatches(abstract_params, source):
    raise _mismatch_error(location, abstract_params, source, fmt)
  targets = jax.tree.leaves(orbax_trees.with_target_shardings(abstract_params))
  by_name = {_key_name(path): leaf
             for path, leaf in jax.tree_util.tree_flatten_with_path(source)[0]}
  sources = [by_name[_key_name(path)]
             for path, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]]

  def start_reads(src, target):
    index_map = target.sharding.addressable_devices_indices_map(target.shape)
    reads = {}
    for index in index_map.values():
      key = _index_key(index, target.shape)
      if key not in reads:
        reads[key] = (src.read_async(index) if isinstance(src, t5x.LazyArray)
                      else np.asarray(src[index]))
    return reads

  def finish(reads, target):
    values = {}
    for key, value in reads.items():
      value = value.result() if hasattr(value, "result") else value
      value = np.asarray(value)
      if value.dtype == np.uint16 and target.dtype != np.uint16:
        value = value.view(ml_dtypes.bfloat16)  # t5x format < 3 (see t5x.LazyArray).
      values[key] = value.astype(target.dtype, copy=False)
    return jax.make_array_from_callback(
        target.shape, target.sharding, lambda index: values[_index_key(index, target.shape)])

  results = [None] * len(targets)
  pending, pending_bytes = collections.deque(), 0
  for i, (src, target) in enumerate(zip(sources, targets)):
    pending.append((i, start_reads(src, target)))
    pending_bytes += int(np.prod(target.shape)) * np.dtype(target.dtype).itemsize
    while pending and pending_bytes > _READ_WINDOW_BYTES:
      j, reads = pending.popleft()
      results[j] = finish(reads, targets[j])
      pending_bytes -= int(np.prod(targets[j].shape)) * np.dtype(targets[j].dtype).itemsize
  while pending:
    j, reads = pending.popleft()
    results[j] = finish(reads, targets[j])
  return jax.tree.unflatten(jax.tree.structure(abstract_params), results)


def _key_name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _index_key(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
  """A hashable, normalised form of a device's slice of an array."""
  return tuple(s.indices(n)[:2] for s, n in zip(index, shape))
