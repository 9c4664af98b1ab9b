"""The run checkpointer: saving and restoring a training run's state with orbax.

Layout of a model directory written by `Checkpointer` (names in checkpoints.layout):

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
import orbax.checkpoint as ocp

from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import orbax_trees

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
        step_prefix=layout.STEP_PREFIX,
        create=True,
        enable_async_checkpointing=async_save,
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
        preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
    )
    # The two items of every step, declared up front (orbax's recommended way).
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = ocp.StandardCheckpointHandler()
    registry.add(layout.STATE_ITEM, ocp.args.StandardSave, state_handler)
    registry.add(layout.STATE_ITEM, ocp.args.StandardRestore, state_handler)
    iterator_handler = DataIteratorHandler()
    registry.add(layout.DATA_ITERATOR_ITEM, DataIteratorSave, iterator_handler)
    registry.add(layout.DATA_ITERATOR_ITEM, DataIteratorRestore, iterator_handler)
    self._manager = ocp.CheckpointManager(
        self.model_dir, options=options, handler_registry=registry)
    self._name_format = ocp.path.step.standard_name_format(step_prefix=layout.STEP_PREFIX)
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

  def save(self, step: int, state: Any, data_iterator: Any = None,
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
    items = {layout.STATE_ITEM: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[layout.DATA_ITERATOR_ITEM] = DataIteratorSave(data_iterator)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      self._step_in_flight = step
      logging.info("Saving checkpoint for step %d to %s.", step, self.model_dir)
    return saved

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              data_iterator: Any = None) -> Any:
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
          f"named {layout.STEP_PREFIX}_<step> written by Checkpointer.save. Train from "
          "scratch, or point MODEL_DIR at a run that has checkpoints.")
    if step is None:
      step = available[-1]
    elif int(step) not in available:
      raise FileNotFoundError(
          f"No checkpoint for step {step} in {self.model_dir}; available steps: "
          f"{available}.")
    step = int(step)
    step_dir = self._name_format.find_step(self.model_dir, step).path

    problems = orbax_trees.tree_mismatches(abstract_state, orbax_trees.saved_tree(step_dir / layout.STATE_ITEM))
    if problems:
      raise ValueError(
          f"The TrainState in {step_dir} does not match the model/optimizer being "
          "restored:\n" + "\n".join(problems) + "\nRestore with the same model and "
          "optimizer configuration that wrote it, or start a fresh MODEL_DIR and "
          "use INITIAL_CHECKPOINT_PATH to load only the params.")

    items = {layout.STATE_ITEM: ocp.args.StandardRestore(orbax_trees.with_target_shardings(abstract_state))}
    if data_iterator is not None:
      if (step_dir / layout.DATA_ITERATOR_ITEM).exists():
        items[layout.DATA_ITERATOR_ITEM] = DataIteratorRestore(data_iterator)
      else:
        logging.warning(
            "Checkpoint %s holds no data-iterator state (it was saved without one); "
            "the data iterator starts from its beginning, so already-seen examples "
            "will be seen again.", step_dir)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("Restored checkpoint for step %d from %s.", step, step_dir)
    return restored[layout.STATE_ITEM]

  def wait_until_finished(self):
    """Blocks until a background save is committed; raises if it failed."""
    self._manager.wait_until_finished()
    self._step_in_flight = None

  def close(self):
    """Finishes pending writes and releases orbax's threads. Call before exit."""
    self._manager.close()
    self._step_in_flight = None
