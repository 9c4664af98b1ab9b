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
"""
import dataclasses
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

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
# Params-only loading (INITIAL_CHECKPOINT_PATH).
# ---------------------------------------------------------------------------


ORBAX_TRAIN_STATE = "instruct_jax orbax TrainState"


def detect_checkpoint_format(path: str) -> tuple[str, epath.Path]:
  """Works out what `path` points to; the one place that knows checkpoint layouts.

  Returns (format name, directory to read). Understood today:
    * a checkpoint_<step> directory written by `Checkpointer` -> its `state` item;
    * a MODEL_DIR holding such directories -> the newest finished step's `state`.
  New formats (t5x msgpack, t5x zarr) add a branch here and a reader in load_params.
  """
  root = epath.Path(path)
  if not root.exists():
    raise FileNotFoundError(f"Checkpoint path {root} does not exist.")
  if (root / STATE_ITEM / _PYTREE_METADATA_FILE).exists():
    if not ocp.path.step.is_path_finalized(root):
      raise FileNotFoundError(
          f"{root} is a checkpoint that was never finished (its save was interrupted); "
          "pass a finished checkpoint_<step> directory or the MODEL_DIR.")
    return ORBAX_TRAIN_STATE, root / STATE_ITEM
  name_format = ocp.path.step.standard_name_format(step_prefix=STEP_PREFIX)
  latest = ocp.path.step.latest_step_metadata(root, name_format)
  if latest is not None and (latest.path / STATE_ITEM / _PYTREE_METADATA_FILE).exists():
    return ORBAX_TRAIN_STATE, latest.path / STATE_ITEM
  raise FileNotFoundError(
      f"Found no checkpoint I can read at {root}. Expected either a MODEL_DIR with "
      f"finished {STEP_PREFIX}_<step>/ directories, or one such directory, written by "
      "instruct_jax's Checkpointer. Unfinished saves (*.orbax-checkpoint-tmp-*) are "
      "ignored.")


def load_params(path: str, abstract_params: Any) -> Any:
  """Loads only the params of a checkpoint, onto the shardings in `abstract_params`.

  For fine-tuning from INITIAL_CHECKPOINT_PATH: the optimizer state and step in the
  checkpoint are not read, so the new run may use another optimizer. `path` is a
  MODEL_DIR (newest step is used) or a checkpoint_<step> directory. Raises one
  ValueError listing every missing, unexpected and wrong-shaped parameter.
  """
  fmt, location = detect_checkpoint_format(path)
  if fmt == ORBAX_TRAIN_STATE:
    return _load_params_from_train_state(location, abstract_params)
  raise NotImplementedError(f"Loading params from a {fmt} checkpoint is not supported.")


def _load_params_from_train_state(state_dir: epath.Path, abstract_params: Any) -> Any:
  saved = _saved_tree(state_dir)
  if "params" not in saved:
    raise ValueError(
        f"{state_dir} holds no 'params' subtree (top-level keys: {sorted(saved)}); "
        "it was not written by instruct_jax's Checkpointer.")
  problems = _tree_mismatches(abstract_params, saved["params"])
  if problems:
    raise ValueError(
        f"The params in {state_dir} do not match the model being initialised:\n"
        + "\n".join(problems) + "\nCheck that the model gin config (sizes, "
        "logits_via_embedding, number of layers) matches the checkpoint's model.")
  target = {"params": _with_target_shardings(abstract_params)}
  # partial_restore: read the params subtree only; opt_state and step stay on disk.
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
  logging.info("Loaded params from %s.", state_dir)
  return restored["params"]
