"""Saving and restoring training runs with orbax, plus params-only loading for fine-tuning.

Layout of a model directory written by `Checkpointer`:

    MODEL_DIR/
      checkpoint_<step>/
        state/      the TrainState (orbax StandardSave: step, params, opt_state)
        train_ds/   the data iterator's per-process files, when one was given

The data-iterator state lives inside the step directory as a second orbax item, so
orbax's own machinery does the hard parts: it is written into the same temporary
directory as the TrainState, becomes visible only when the whole step is committed,
and is deleted together with it when `keep` prunes old steps. A step directory
therefore never holds a TrainState from one step and a data position from another.

Params-only loading (`load_params`, for INITIAL_CHECKPOINT_PATH) reads every
checkpoint format this project understands, detected in
`detect_checkpoint_format`: our own, t5x's legacy msgpack + tensorstore and
orbax layouts (the released T5 / Flan-T5 checkpoints), and Hugging Face T5
safetensors. `load_adafactor_state` optionally carries t5x's Adafactor
statistics over into a fresh optimizer state.
"""
import collections
from collections.abc import Mapping
import dataclasses
import re
from typing import Any, Optional

from absl import logging
from etils import epath
from flax import traverse_util
import jax
import ml_dtypes
import numpy as np
import optax
import orbax.checkpoint as ocp

from instruct_jax.interop import hf
from instruct_jax.interop import t5x
from instruct_jax.train.state import TrainState

STEP_PREFIX = "checkpoint"
STATE_ITEM = "state"
DATA_ITERATOR_ITEM = "train_ds"
# What orbax writes at the root of a saved PyTree item; marks a directory as one.
_PYTREE_METADATA_FILE = "_METADATA"


# ---------------------------------------------------------------------------
# Data-iterator state as an orbax item.
# ---------------------------------------------------------------------------


class DataIteratorHandler(ocp.CheckpointHandler):
  """Stores a data iterator's position by delegating to its save/restore(directory).

  Synchronous on purpose: the iterator's position must be captured at the moment of
  `save`, before training pulls the next batch. It is cheap (a small file per
  process). Each process calls it, and the iterator writes only its own
  per-process file, so it is multi-host safe.
  """

  def save(self, directory: epath.Path, args: "DataIteratorSave"):
    directory.mkdir(parents=True, exist_ok=True)
    args.iterator.save(str(directory))

  def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
    args.iterator.restore(str(directory))
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  """orbax args: save this iterator's position (it needs save(directory))."""
  iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  """orbax args: move this iterator back to the saved position (restore(directory))."""
  iterator: Any


# ---------------------------------------------------------------------------
# Tree comparison, for errors that name every offending key.
# ---------------------------------------------------------------------------


def _flat_shapes(tree: Any) -> dict[str, Optional[tuple[int, ...]]]:
  """'a/b/0/c' -> shape for every leaf; matches orbax's on-disk naming of the tree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  result = {}
  for path, leaf in flat:
    shape = getattr(leaf, "shape", None)
    result[jax.tree_util.keystr(path, simple=True, separator="/")] = (
        None if shape is None else tuple(shape))
  return result


def _tree_mismatches(expected: Any, found: Any) -> list[str]:
  """Lists keys missing from `found`, unexpected in it, and leaves of another shape."""
  want, have = _flat_shapes(expected), _flat_shapes(found)
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


def _saved_tree(item_dir: epath.Path) -> Any:
  """The nested structure (with shapes) of a saved PyTree item, read from metadata only."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    return handler.metadata(item_dir).tree
  finally:
    handler.close()


def _with_target_shardings(abstract_tree: Any) -> Any:
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


# ---------------------------------------------------------------------------
# The run checkpointer.
# ---------------------------------------------------------------------------


class Checkpointer:
  """Saves the TrainState (and data position) every `save_period` steps; restores sharded.

  Wraps `ocp.CheckpointManager`. Every process must create it and call `save`
  and `restore` (orbax synchronises the processes and writes shared files once).
  """

  def __init__(self, model_dir: str, save_period: Optional[int], keep: Optional[int] = None,
               async_save: bool = True):
    """Sets up the orbax manager; reads which steps already exist in `model_dir`.

    Args:
      model_dir: run directory (local path or gs://); checkpoints go to
        model_dir/checkpoint_<step>.
      save_period: save when step % save_period == 0. None or 0: only forced saves
        (and saves at a multi-host preemption sync point).
      keep: how many most recent checkpoints to keep; None keeps all.
      async_save: write in a background thread so training continues; call
        `wait_until_finished()` (or `close()`) before exiting.
    """
    if save_period is not None and save_period < 0:
      raise ValueError(
          f"save_period must be a positive number of steps, or None/0 for forced saves "
          f"only; got {save_period}.")
    if keep is not None and keep < 1:
      raise ValueError(
          f"keep must be at least 1 (or None to keep every checkpoint); got {keep}.")
    self.model_dir = epath.Path(model_dir)
    self.save_period = save_period or None
    self.keep = keep
    policies = [ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]
    if self.save_period:
      policies.insert(0, ocp.checkpoint_managers.FixedIntervalPolicy(self.save_period))
    options = ocp.CheckpointManagerOptions(
        step_prefix=STEP_PREFIX,
        create=True,
        enable_async_checkpointing=async_save,
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
        preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
    )
    # The two items of every step, declared up front (orbax's recommended way).
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = ocp.StandardCheckpointHandler()
    registry.add(STATE_ITEM, ocp.args.StandardSave, state_handler)
    registry.add(STATE_ITEM, ocp.args.StandardRestore, state_handler)
    iterator_handler = DataIteratorHandler()
    registry.add(DATA_ITERATOR_ITEM, DataIteratorSave, iterator_handler)
    registry.add(DATA_ITERATOR_ITEM, DataIteratorRestore, iterator_handler)
    self._manager = ocp.CheckpointManager(
        self.model_dir, options=options, handler_registry=registry)
    self._name_format = ocp.path.step.standard_name_format(step_prefix=STEP_PREFIX)
    self._step_in_flight = None

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def latest_step(self) -> Optional[int]:
    """The newest step that is completely written (a save still in flight does not count)."""
    steps = set(self._manager.all_steps())
    if self._step_in_flight is not None and self._manager.is_saving_in_progress():
      steps.discard(self._step_in_flight)
    return max(steps, default=None)

  def all_steps(self) -> list[int]:
    """Steps currently kept, oldest first (may include one still being written)."""
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` without force would write a checkpoint."""
    return self._manager.should_save(int(step))

  def save(self, step: int, state: TrainState, data_iterator: Any = None,
           force: bool = False) -> bool:
    """Saves `state` (and the iterator's position) as checkpoint_<step> when due.

    Returns whether a save was started. With async_save the arrays are copied off
    the device before this returns, so the caller may donate or overwrite `state`
    immediately; the files are written in the background. `force` saves off-cadence
    (end of training, SIGTERM) but never writes the same step twice.
    """
    step = int(step)
    if force and step in self._manager.all_steps():
      logging.info("Checkpoint for step %d already exists; not saving it again.", step)
      return False
    items = {STATE_ITEM: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA_ITERATOR_ITEM] = DataIteratorSave(data_iterator)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      self._step_in_flight = step
      logging.info("Saving checkpoint for step %d to %s.", step, self.model_dir)
    return saved

  def restore(self, abstract_state: TrainState, step: Optional[int] = None,
              data_iterator: Any = None) -> TrainState:
    """Restores the latest (or the given) step onto the shardings in `abstract_state`.

    `abstract_state` is a TrainState of jax.ShapeDtypeStruct (e.g. from
    jax.eval_shape) whose `.sharding` says where each array goes, so a checkpoint
    written on one layout restores onto any other. Also moves `data_iterator` to
    the position saved with that step.
    """
    self.wait_until_finished()
    available = sorted(self._manager.all_steps())
    if not available:
      raise FileNotFoundError(
          f"No finished checkpoint found in {self.model_dir}: expected directories "
          f"named {STEP_PREFIX}_<step> written by Checkpointer.save. Train from "
          "scratch, or point MODEL_DIR at a run that has checkpoints.")
    if step is None:
      step = available[-1]
    elif int(step) not in available:
      raise FileNotFoundError(
          f"No checkpoint for step {step} in {self.model_dir}; available steps: "
          f"{available}.")
    step = int(step)
    step_dir = self._name_format.find_step(self.model_dir, step).path

    problems = _tree_mismatches(abstract_state, _saved_tree(step_dir / STATE_ITEM))
    if problems:
      raise ValueError(
          f"The TrainState in {step_dir} does not match the model/optimizer being "
          "restored:\n" + "\n".join(problems) + "\nRestore with the same model and "
          "optimizer configuration that wrote it, or start a fresh MODEL_DIR and "
          "use INITIAL_CHECKPOINT_PATH to load only the params.")

    items = {STATE_ITEM: ocp.args.StandardRestore(_with_target_shardings(abstract_state))}
    if data_iterator is not None:
      if (step_dir / DATA_ITERATOR_ITEM).exists():
        items[DATA_ITERATOR_ITEM] = DataIteratorRestore(data_iterator)
      else:
        logging.warning(
            "Checkpoint %s holds no data-iterator state (it was saved without one); "
            "the data iterator starts from its beginning, so already-seen examples "
            "will be seen again.", step_dir)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("Restored checkpoint for step %d from %s.", step, step_dir)
    return restored[STATE_ITEM]

  def wait_until_finished(self):
    """Blocks until a background save is committed; raises if it failed."""
    self._manager.wait_until_finished()
    self._step_in_flight = None

  def close(self):
    """Finishes pending writes and releases orbax's threads. Call before exit."""
    self._manager.close()
    self._step_in_flight = None


# ---------------------------------------------------------------------------
# Params-only loading (INITIAL_CHECKPOINT_PATH) from every supported format.
# ---------------------------------------------------------------------------


ORBAX_TRAIN_STATE = "instruct_jax orbax TrainState"
T5X_LEGACY = "t5x msgpack + tensorstore"
T5X_ORBAX = "t5x orbax"
HF_SAFETENSORS = "Hugging Face T5 safetensors"
FORMATS = (ORBAX_TRAIN_STATE, T5X_LEGACY, T5X_ORBAX, HF_SAFETENSORS)

# The top-level key holding the params in each orbax-based format.
_PARAMS_KEY = {ORBAX_TRAIN_STATE: "params", T5X_ORBAX: "target"}
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
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
    * HF_SAFETENSORS: a Hugging Face T5 directory (config.json + safetensors);
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
      f"finished {STEP_PREFIX}_<step>/ directories; one such directory (instruct_jax or "
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
  state_dir = root / STATE_ITEM
  if (state_dir / _PYTREE_METADATA_FILE).exists() or (state_dir / t5x.CHECKPOINT_FILE).exists():
    if not ocp.path.step.is_path_finalized(root):
      raise FileNotFoundError(
          f"{root} is a checkpoint that was never finished (its save was interrupted); "
          "pass a finished checkpoint_<step> directory or the MODEL_DIR.")
    try:
      keys = set(_saved_tree(state_dir))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f"{state_dir} looks like an orbax checkpoint, but its tree metadata cannot be read "
          f"({type(e).__name__}: {e}). Checkpoints from old orbax versions without a "
          f"{_PYTREE_METADATA_FILE} file are not supported; re-save it with a current "
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
  steps = []
  for child in root.iterdir():
    match = _STEP_DIR.match(child.name)
    if match and child.is_dir():
      steps.append((int(match.group(1)), child))
  return [child for _, child in sorted(steps, key=lambda s: s[0], reverse=True)]


def load_params(path: str, abstract_params: Any) -> Any:
  """Loads only the params of a checkpoint, onto the shardings in `abstract_params`.

  For fine-tuning from INITIAL_CHECKPOINT_PATH: optimizer state and step are not
  read, so the new run may use another optimizer. `path` may be any format
  `detect_checkpoint_format` understands (ours, t5x legacy or orbax, Hugging
  Face T5). Arrays are cast to the dtypes of `abstract_params` (float32).
  Raises one ValueError listing every missing, unexpected and wrong-shaped
  parameter.
  """
  fmt, location = detect_checkpoint_format(path)
  if fmt in _PARAMS_KEY:
    params = _load_orbax_subtree(location, _PARAMS_KEY[fmt], abstract_params, fmt)
  elif fmt == T5X_LEGACY:
    source = t5x.LegacyCheckpoint(str(location)).target
    params = _place_on_devices(source, abstract_params, location, fmt)
  elif fmt == HF_SAFETENSORS:
    _, source, _ = hf.load_hf_checkpoint(str(location))
    params = _place_on_devices(source, abstract_params, location, fmt)
  else:  # pragma: no cover - detect_checkpoint_format returns only known formats.
    raise NotImplementedError(f"Loading params from a {fmt} checkpoint is not supported.")
  logging.info("Loaded params (%s) from %s.", fmt, location)
  return params


def read_params(path: str) -> tuple[str, dict[str, Any]]:
  """(format, params as host numpy arrays in their stored dtype) of any checkpoint.

  Unsharded and whole, for offline conversion (`instruct-jax convert`); training
  uses `load_params`, which reads straight onto the device shardings.
  """
  fmt, location = detect_checkpoint_format(path)
  if fmt in _PARAMS_KEY:
    key = _PARAMS_KEY[fmt]
    saved = _saved_tree(location)[key]
    item = {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with ocp.PyTreeCheckpointer() as reader:
      restored = reader.restore(location, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
    return fmt, restored[key]
  if fmt == T5X_LEGACY:
    target = t5x.LegacyCheckpoint(str(location)).target
    return fmt, jax.tree.map(np.asarray, target)
  _, params, _ = hf.load_hf_checkpoint(str(location))
  return fmt, params


def save_params(directory: str, params: Any) -> None:
  """Writes a params-only checkpoint directory that `load_params` reads (our format).

  Same layout as a Checkpointer step (directory/state holding {'params': ...}),
  committed atomically by orbax; used for converted checkpoints.
  """
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as writer:
    writer.save(epath.Path(directory),
                args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave({"params": params})}))


def _mismatch_error(location: Any, problems: list[str], fmt: str) -> ValueError:
  hint = ("Check that the model gin config (sizes, logits_via_embedding, mlp_activations, "
          "number of layers) matches the checkpoint's model.")
  if fmt == HF_SAFETENSORS:
    hint += (" `instruct-jax convert --from hf` writes the matching model gin next to the "
             "converted checkpoint.")
  return ValueError(f"The params in {location} ({fmt}) do not match the model being "
                    "initialised:\n" + "\n".join(problems) + "\n" + hint)


def _load_orbax_subtree(state_dir: epath.Path, key: str, abstract_params: Any,
                        fmt: str) -> Any:
  saved = _saved_tree(state_dir)
  if key not in saved:
    raise ValueError(
        f"{state_dir} holds no '{key}' subtree (top-level keys: {sorted(saved)}).")
  problems = _tree_mismatches(abstract_params, saved[key])
  if problems:
    raise _mismatch_error(state_dir, problems, fmt)
  target = {key: _with_target_shardings(abstract_params)}
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
  once, with reads in flight concurrently up to a bounded number of bytes.
  """
  problems = _tree_mismatches(abstract_params, source)
  if problems:
    raise _mismatch_error(location, problems, fmt)
  targets = jax.tree.leaves(_with_target_shardings(abstract_params))
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
                      else np.asarray(src)[index])
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


# ---------------------------------------------------------------------------
# Carrying Adafactor statistics over from a t5x checkpoint.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdafactorCarryOver:
  """What `load_adafactor_state` took from the checkpoint, and what it left fresh."""
  step: Optional[int]
  carried: tuple[str, ...]
  skipped: tuple[str, ...]

  def summary(self) -> str:
    lines = [f"Adafactor statistics carried over for {len(self.carried)} params"
             + (f" (second-moment decay continues from step {self.step})"
                if self.step is not None else "")
             + f"; {len(self.skipped)} kept fresh."]
    lines += [f"  fresh: {reason}" for reason in self.skipped]
    return "\n".join(lines)


_ADAFACTOR_FIELDS = ("v_row", "v_col", "v")


def load_adafactor_state(path: str, opt_state: Any, carry_count: bool = True
                         ) -> tuple[Any, AdafactorCarryOver]:
  """`opt_state` with its Adafactor v_row / v_col / v taken from a t5x checkpoint.

  For fine-tuning from a released t5x checkpoint while keeping its second-moment
  statistics, as t5x does when it restores a full optimizer. `opt_state` is the
  fresh state of this run's optimizer (optimizers.adafactor or
  optax.adafactor), e.g. `trainer.state_from_params(params).opt_state`; each
  statistic is copied when the checkpoint has it with the same shape (t5x and
  optax factor a 2-D parameter the same way), onto the same sharding, and left
  fresh otherwise (listed in the returned report). With `carry_count`, the
  FactoredState's count becomes the checkpoint's step, so the decay
  1 - (step + 1)^-0.8 continues where pretraining stopped instead of restarting
  at 0 (which would overwrite the statistics at the first update); the
  learning-rate schedule's own count is untouched.
  """
  from instruct_jax.train import optimizers  # pylint: disable=g-import-not-at-top
  fmt, location = detect_checkpoint_format(path)
  if fmt == T5X_LEGACY:
    checkpoint = t5x.LegacyCheckpoint(str(location))
    param_states, step = checkpoint.param_states, checkpoint.step
  elif fmt == T5X_ORBAX:
    param_states, step = _read_t5x_orbax_state(location)
  else:
    raise ValueError(
        f"{location} is a {fmt} checkpoint; Adafactor statistics can be carried over from "
        f"t5x checkpoints ({T5X_LEGACY} or {T5X_ORBAX}). To continue one of our own runs "
        "with its optimizer state, resume it from its MODEL_DIR instead.")

  factored = optimizers.factored_state(opt_state)
  flat_states = {"/".join(k): v for k, v in traverse_util.flatten_dict(
      param_states, is_leaf=lambda _, node: _is_param_state(node)).items()
                 if _is_param_state(v)}
  carried, skipped = [], []
  new_fields = {}
  for field in _ADAFACTOR_FIELDS:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(getattr(factored, field))
    new_leaves = []
    for key_path, leaf in leaves_with_path:
      name = jax.tree_util.keystr(key_path, simple=True, separator="/")
      source = flat_states.get(name, {}).get(field)
      in_use = tuple(leaf.shape) != (1,)
      if source is not None and tuple(source.shape) == tuple(leaf.shape):
        value = np.asarray(source).astype(leaf.dtype)
        sharding = getattr(leaf, "sharding", None)
        new_leaves.append(jax.device_put(value, sharding) if sharding is not None else value)
        if in_use:
          carried.append(f"{name}: {field}")
      else:
        new_leaves.append(leaf)
        if in_use:
          reason = ("not in the checkpoint" if source is None else
                    f"checkpoint shape {tuple(source.shape)} != {tuple(leaf.shape)}")
          skipped.append(f"{name}: {field} ({reason})")
    new_fields[field] = jax.tree.unflatten(treedef, new_leaves)
  if carry_count and step is not None:
    count = factored.count
    value = np.asarray(step, dtype=count.dtype)
    new_fields["count"] = (jax.device_put(value, count.sharding)
                           if getattr(count, "sharding", None) is not None else value)
  replacement = factored._replace(**new_fields)
  new_state = jax.tree.map(
      lambda node: replacement if isinstance(node, optax.FactoredState) else node,
      opt_state, is_leaf=lambda node: isinstance(node, optax.FactoredState))
  report = AdafactorCarryOver(step=step if carry_count else None, carried=tuple(carried),
                              skipped=tuple(skipped))
  logging.info("%s", report.summary())
  return new_state, report


def _is_param_state(node: Any) -> bool:
  return isinstance(node, Mapping) and any(f in node for f in _ADAFACTOR_FIELDS)


def _read_t5x_orbax_state(state_dir: epath.Path) -> tuple[dict[str, Any], Optional[int]]:
  """(param_states as numpy, step) of a t5x orbax checkpoint."""
  saved = _saved_tree(state_dir)
  state = saved.get("state") or {}
  item = {"state": {k: v for k, v in state.items() if k in ("step", "param_states")}}
  item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), item)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))["state"]
  step = restored.get("step")
  return restored.get("param_states") or {}, (None if step is None else int(np.asarray(step)))
