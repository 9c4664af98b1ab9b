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
import os
import shutil
import traceback
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from instruct_jax import errors
from instruct_jax.checkpoints import layer_layout
from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import mismatch
from instruct_jax.checkpoints import orbax_trees
from instruct_jax.errors import ActionableError


class CheckpointSaveError(ActionableError):
  """A checkpoint could not be written (disk full, permissions, lost storage...)."""


class CheckpointRestoreError(ActionableError):
  """No checkpoint in MODEL_DIR could be read back."""


def _write_restore_error(moved_dir: str, error: BaseException) -> None:
  """Keeps the full error (orbax / tensorstore traceback) next to the checkpoint it concerns.

  The console gets one line; whoever inspects the set-aside directory finds why.
  """
  text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
  with tf.io.gfile.GFile(os.path.join(moved_dir, layout.RESTORE_ERROR_FILE), "w") as f:
    f.write(text)


def _one_line(error: BaseException) -> str:
  """The error in one console line; the full traceback goes to the log (info level)."""
  return errors.one_line(error, limit=300)


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process, so all processes restore the same step."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))

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
    self._step_in_flight = None
    self.restored_step: Optional[int] = None  # the step the last restore() read

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def latest_step(self) -> Optional[int]:
    """The newest step that is completely written (a save still in flight does not count).

    Names only: a listed step may still fail to restore; restore() then walks back.
    """
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
    if not (force or self._manager.should_save(step)):
      return False
    self.wait_until_finished()  # as orbax would; raises CheckpointSaveError for the last save
    items = {layout.STATE_ITEM: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[layout.DATA_ITERATOR_ITEM] = DataIteratorSave(data_iterator)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
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
    the position saved with that same step.

    With `step` None a checkpoint that cannot be read (truncated or missing files,
    an emptied directory; a crash or a full disk mid-copy) is not fatal: it is
    moved to MODEL_DIR/corrupt_checkpoints (never deleted), one warning names it,
    and the next older one is tried, so a run loses at most one save period of
    work instead of all of it. Which step was restored: int(state.step), or
    `self.restored_step`. A TrainState that does not match `abstract_state` is a
    configuration mistake, not corruption: a CheckpointMismatchError, at once.
    """
    self.wait_until_finished()
    available = sorted(self._manager.all_steps())
    if not available:
      raise FileNotFoundError(
          f"No finished checkpoint found in {self.model_dir}: expected directories "
          f"named {layout.STEP_PREFIX}_<step> written by Checkpointer.save. Train from "
          "scratch, or point MODEL_DIR at a run that has checkpoints.")
    if step is not None:
      if int(step) not in available:
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {self.model_dir}; available steps: "
            f"{available}.")
      state, error = self._try_restore(int(step), abstract_state, data_iterator)
      if error is not None:
        raise error
      return state

    tried = []  # (step_dir, reason, where it was moved)
    while available:
      step = available[-1]
      state, error = self._try_restore(step, abstract_state, data_iterator)
      if error is None:
        if tried:
          logging.info("Resumed from %s after setting aside %d unreadable newer "
                          "checkpoint(s).", self._step_dir(step), len(tried))
        return state
      tried.append(self._set_aside(step, error))
      available = [s for s in self._reload_steps() if s < step]
    listing = "\n".join(f"  {d}: {reason} (moved to {moved})" for d, reason, moved in tried)
    raise CheckpointRestoreError(
        f"No checkpoint in {self.model_dir} could be restored; tried, newest first:\n"
        f"{listing}\nThe directories were moved aside, not deleted. To go on, start a "
        "fresh MODEL_DIR (with INITIAL_CHECKPOINT_PATH pointing at a params checkpoint if "
        "you have one), or move a directory back if it failed for another reason (e.g. "
        "a different number of processes than the run that saved it).")

  def _step_dir(self, step: int) -> epath.Path:
    return self.model_dir / layout.checkpoint_dir_name(step)

  def _try_restore(self, step: int, abstract_state: Any,
                   data_iterator: Any) -> tuple[Any, Optional[BaseException]]:
    """(state, None) when `step` restores on every process, else (None, the error).

    A tree mismatch, or an ActionableError from reading the items (e.g. a data
    position from another input pipeline), is raised, not returned: the files are
    fine, the configuration is not, so nothing is set aside. The state is read before the data
    iterator, and the iterator's restore overwrites its whole position, so after a
    failed attempt the next successful one leaves state and iterator at one step.
    """
    step_dir = self._step_dir(step)
    state, error = None, None
    try:
      saved = orbax_trees.saved_tree(step_dir / layout.STATE_ITEM)
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if error is None:
      if orbax_trees.tree_mismatches(abstract_state, saved):
        raise self._mismatch_error(step_dir, abstract_state, saved)
      try:
        state = self._restore_items(step, step_dir, abstract_state, data_iterator)
      except ActionableError:
        raise  # a configuration mistake the error explains (e.g. a changed input pipeline)
      except Exception as e:  # pylint: disable=broad-except
        error = e
    if not _all_processes_agree(error is None) and error is None:
      error = RuntimeError("restoring it failed on another process (see that process's log)")
    if error is not None:
      return None, error
    self.restored_step = step
    logging.info("Restored checkpoint for step %d from %s.", step, step_dir)
    return state, None

  def _mismatch_error(self, step_dir: epath.Path, abstract_state: Any,
                      saved: Any) -> mismatch.CheckpointMismatchError:
    """The TrainState in `step_dir` does not fit: which arrays, and what to relaunch with."""
    params = saved.get("params")
    if orbax_trees.tree_mismatches(abstract_state.params, params):
      differences = mismatch.describe(abstract_state.params, params, "model's params")
      recorded = mismatch.recorded_sizes(str(self.model_dir))
      fix = layer_layout.resume_hint(params, abstract_state.params).strip() or (
          (f"The run that wrote it recorded its model in {recorded}: relaunch with that "
           "model gin and those sizes" if recorded else
           "Relaunch with the model gin that wrote it") +
          ", or train this model in a fresh MODEL_DIR (INITIAL_CHECKPOINT_PATH loads the "
          "params of a checkpoint whose model matches).")
    else:
      differences = mismatch.describe(abstract_state, saved, "TrainState")
      recorded = mismatch.recorded_optimizer(str(self.model_dir))
      fix = ("Its params fit, so the optimizer differs from the one that wrote it" +
             (f", recorded as {recorded}" if recorded else "") + ": relaunch with that "
             "optimizer (OPTIMIZER and the optimizers.* bindings), or keep only the params by "
             "starting a fresh MODEL_DIR with "
             f"--gin.INITIAL_CHECKPOINT_PATH=\"'{step_dir}'\".")
    return mismatch.CheckpointMismatchError(
        f"The TrainState in {step_dir} does not match the model/optimizer being restored. "
        f"{differences}. {fix}")

  def _restore_items(self, step: int, step_dir: epath.Path, abstract_state: Any,
                     data_iterator: Any) -> Any:
    """Reads the TrainState, then the data position, of one step."""
    target = orbax_trees.with_target_shardings(abstract_state)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{layout.STATE_ITEM: ocp.args.StandardRestore(target)}))
    if data_iterator is not None:
      if (step_dir / layout.DATA_ITERATOR_ITEM).exists():
        self._manager.restore(step, args=ocp.args.Composite(
            **{layout.DATA_ITERATOR_ITEM: DataIteratorRestore(data_iterator)}))
      else:
        logging.warning(
            "Checkpoint %s holds no data-iterator state (it was saved without one); "
            "the data iterator is not moved, so already-seen examples may be seen "
            "again.", step_dir)
    return restored[layout.STATE_ITEM]

  def _set_aside(self, step: int, error: BaseException) -> tuple[str, str, str]:
    """Moves a checkpoint that failed to restore out of the step list; logs why."""
    step_dir = str(self._step_dir(step))
    reason = _one_line(error)
    moved = "not moved"
    if jax.process_index() == 0:
      try:
        moved = layout.set_aside_checkpoint(step_dir)
        _write_restore_error(moved, error)
      except Exception as e:  # pylint: disable=broad-except
        moved = f"not moved: {_one_line(e)}"
    else:
      moved = os.path.join(str(self.model_dir), layout.CORRUPT_CHECKPOINTS_DIR)
    logging.warning("Checkpoint %s could not be restored (%s); moved it to %s (the full "
                    "error is in its %s) and trying the previous one.", step_dir, reason,
                    moved, layout.RESTORE_ERROR_FILE)
    logging.info("Why %s could not be restored:", step_dir, exc_info=error)
    return step_dir, reason, moved

  def _reload_steps(self) -> list[int]:
    """orbax's step list re-read from disk (after a directory was moved aside)."""
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("instruct_jax:set_aside_checkpoint")
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def check_for_errors(self) -> None:
    """Raises CheckpointSaveError if a background save has failed; cheap, call every step.

    orbax reports a failed async save only when the next save or wait starts;
    asking every step makes a full disk or a lost bucket stop the run right away
    instead of training on for a whole save period that can never be saved.
    """
    step = self._step_in_flight
    if step is None or self._manager.is_saving_in_progress():
      return  # nothing finished since the last check
    # The save is over, so neither call blocks. orbax's finalize thread consumes the
    # background error itself and re-raises it from wait_until_finished; calling
    # check_for_errors while that thread still runs would steal the error from it and
    # let it finalize (and prune older steps after) a failed save.
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
      self._step_in_flight = None
    except Exception as e:  # pylint: disable=broad-except
      self._step_in_flight = None
      raise self._save_error(step, e) from e

  def check_free_space(self, bytes_needed: int) -> Optional[int]:
    """Warns when MODEL_DIR's filesystem has less free space than `bytes_needed`.

    Returns the free bytes, or None where that cannot be asked (gs:// and other
    object stores, which have no fixed size). A checkpoint that does not fit fails
    in the background after training has moved on, so say so up front.
    """
    path = str(self.model_dir)
    if "://" in path:
      return None
    try:
      free = shutil.disk_usage(path).free
    except OSError:
      return None
    if free < bytes_needed:
      logging.warning(
          "Only %.2f GiB free on the filesystem of %s, but one checkpoint needs about "
          "%.2f GiB: saves will fail. Free some space, lower `keep`, or use another "
          "MODEL_DIR.", free / 2**30, path, bytes_needed / 2**30)
    return free

  def _save_error(self, step: Optional[int], cause: BaseException) -> CheckpointSaveError:
    logging.info("Why the checkpoint save failed:", exc_info=cause)
    try:
      # orbax already dropped the steps this save was to prune from its list; they are
      # still on disk, since pruning happens only after a successful commit.
      self._manager.reload()
    except Exception:  # pylint: disable=broad-except
      logging.info("Could not re-list the steps in %s.", self.model_dir, exc_info=True)
    last_good = max((s for s in self._manager.all_steps() if s != step), default=None)
    which = f"checkpoint for step {step}" if step is not None else "a checkpoint"
    return CheckpointSaveError(
        f"Saving {which} to {self.model_dir} failed: {_one_line(cause)}. "
        f"The last good checkpoint is "
        f"{'step ' + str(last_good) if last_good is not None else 'none (no step was saved)'}"
        "; what was trained after it is not saved. Fix the cause (free disk space, "
        "storage permissions or credentials) and run the same command again to resume "
        "from the last good checkpoint.")

  def wait_until_finished(self):
    """Blocks until a background save is committed; raises CheckpointSaveError if it failed."""
    step = self._step_in_flight
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    finally:
      self._step_in_flight = None

  def close(self):
    """Finishes pending writes and releases orbax's threads. Call before exit.

    Raises CheckpointSaveError if the last save failed (after releasing the threads).
    """
    try:
      self.wait_until_finished()
    finally:
      self._manager.close()
