"""Training runs that never lose work: the MODEL_DIR lease, restores that walk back past
corrupt checkpoints, save failures that surface at once, and per-launch config records."""
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

import tasks_registry  # noqa: F401  (registers the smoke tasks)
from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import lease as lease_lib
from instruct_jax.checkpoints import run_checkpointer
from instruct_jax.errors import ActionableError
from test_checkpoints import CountingIterator
from test_checkpoints import _abstract
from test_checkpoints import _assert_trees_bitwise_equal
from test_checkpoints import _make_state
from test_checkpoints import _single_device
import test_trainer

# ---------------------------------------------------------------------------
# The lease.
# ---------------------------------------------------------------------------


def _lease_record(model_dir):
  with open(os.path.join(model_dir, layout.LEASE_FILE)) as f:
    return json.load(f)


def _age_lease(model_dir, seconds):
  """Pretends the holder's last heartbeat was `seconds` ago (a crashed trainer)."""
  path = os.path.join(model_dir, layout.LEASE_FILE)
  record = _lease_record(model_dir)
  record["heartbeat"] -= seconds
  with open(path, "w") as f:
    json.dump(record, f)


def test_second_lease_on_a_dir_names_the_holder(tmp_path):
  run = str(tmp_path / "run")
  with lease_lib.RunLease(run) as first:
    record = _lease_record(run)
    assert record["owner"] == first.owner and record["pid"] == os.getpid()
    assert {"host", "started", "heartbeat"} <= record.keys()
    second = lease_lib.RunLease(run)
    with pytest.raises(lease_lib.LeaseHeldError) as err:
      second.acquire()
    message = str(err.value)
    assert isinstance(err.value, ActionableError)
    assert f"pid {os.getpid()}" in message and record["host"] in message
    assert "last heartbeat" in message and "started" in message
    assert "--force" in message and layout.LEASE_FILE in message
    assert not second.held
    assert _lease_record(run)["owner"] == first.owner
  assert not os.path.exists(os.path.join(run, layout.LEASE_FILE))  # released on exit
  assert os.listdir(run) == []  # no temporary files left behind
  with lease_lib.RunLease(run):  # free again
    pass


def test_stale_lease_is_taken_over_with_a_warning(tmp_path, caplog):
  run = str(tmp_path / "run")
  crashed = lease_lib.RunLease(run, heartbeat_seconds=1, stale_seconds=60)
  crashed.acquire()
  _age_lease(run, 30)
  with pytest.raises(lease_lib.LeaseHeldError):  # 30s old: still alive
    lease_lib.RunLease(run, heartbeat_seconds=1, stale_seconds=60).acquire()
  _age_lease(run, 60)
  successor = lease_lib.RunLease(run, heartbeat_seconds=1, stale_seconds=60)
  with caplog.at_level(logging.WARNING):
    successor.acquire()
  assert _lease_record(run)["owner"] == successor.owner
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "stale" in warnings[0] and f"pid {os.getpid()}" in warnings[0]


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, caplog):
  """kill -9 leaves a fresh lease behind; a relaunch on the same host need not wait."""
  run = str(tmp_path / "run")
  lease_lib.RunLease(run).acquire()
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _set_lease_pid(run, live.pid)  # Fresh heartbeat, live process: still held.
    with pytest.raises(lease_lib.LeaseHeldError):
      lease_lib.RunLease(run).acquire()
  finally:
    live.kill()
    live.wait()
  _set_lease_pid(run, live.pid)  # The same record, its process now gone.
  successor = lease_lib.RunLease(run)
  with caplog.at_level(logging.WARNING):
    successor.acquire()
  assert _lease_record(run)["owner"] == successor.owner
  assert any("process is gone" in r.getMessage() for r in caplog.records)


def _set_lease_pid(model_dir, pid):
  path = os.path.join(model_dir, layout.LEASE_FILE)
  record = _lease_record(model_dir)
  record.update(pid=pid, heartbeat=time.time())
  with open(path, "w") as f:
    json.dump(record, f)


def test_take_over_takes_a_live_lease(tmp_path, caplog):
  run = str(tmp_path / "run")
  holder = lease_lib.RunLease(run)
  holder.acquire()
  forced = lease_lib.RunLease(run, take_over=True)
  with caplog.at_level(logging.WARNING):
    forced.acquire()
  assert _lease_record(run)["owner"] == forced.owner
  assert any("Taking over" in r.getMessage() for r in caplog.records)


def test_heartbeat_renews_and_detects_a_takeover(tmp_path):
  run = str(tmp_path / "run")
  lease = lease_lib.RunLease(run, heartbeat_seconds=0.05, stale_seconds=10)
  lease.acquire()
  first_beat = _lease_record(run)["heartbeat"]
  lease.heartbeat()  # too soon: no write
  assert _lease_record(run)["heartbeat"] == first_beat
  time.sleep(0.1)
  lease.heartbeat()
  renewed = _lease_record(run)
  assert renewed["heartbeat"] > first_beat and renewed["owner"] == lease.owner
  assert renewed["started"] == first_beat

  intruder = lease_lib.RunLease(run, take_over=True)
  intruder.acquire()
  time.sleep(0.1)
  with pytest.raises(lease_lib.LeaseHeldError, match="took over"):
    lease.heartbeat()
  assert _lease_record(run)["owner"] == intruder.owner


def test_release_leaves_another_owners_lease_alone(tmp_path):
  run = str(tmp_path / "run")
  old = lease_lib.RunLease(run)
  old.acquire()
  new = lease_lib.RunLease(run, take_over=True)
  new.acquire()
  old.release()
  assert _lease_record(run)["owner"] == new.owner
  new.release()
  assert not os.path.exists(os.path.join(run, layout.LEASE_FILE))
  new.release()  # idempotent


def test_lease_on_an_object_store_path(tmp_path):
  """Non-local paths take the tf.io.gfile branch (rename without overwrite, read back)."""
  run = f"ram://leases/{tmp_path.name}/run"
  first = lease_lib.RunLease(run, heartbeat_seconds=0.01, stale_seconds=10)
  first.acquire()
  with pytest.raises(lease_lib.LeaseHeldError, match=f"pid {os.getpid()}"):
    lease_lib.RunLease(run).acquire()
  time.sleep(0.02)
  first.heartbeat()
  forced = lease_lib.RunLease(run, take_over=True)
  forced.acquire()
  time.sleep(0.02)
  with pytest.raises(lease_lib.LeaseHeldError, match="took over"):
    first.heartbeat()
  forced.release()
  assert tf.io.gfile.listdir(run) == []


def test_heartbeat_takes_back_a_deleted_lease(tmp_path):
  run = str(tmp_path / "run")
  lease = lease_lib.RunLease(run, heartbeat_seconds=0.01, stale_seconds=10)
  lease.acquire()
  os.remove(os.path.join(run, layout.LEASE_FILE))
  time.sleep(0.02)
  lease.heartbeat()
  assert _lease_record(run)["owner"] == lease.owner


def test_unreadable_lease_counts_as_held_until_stale(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / layout.LEASE_FILE).write_text("{half a reco")
  with pytest.raises(lease_lib.LeaseHeldError, match="host \\?"):
    lease_lib.RunLease(str(run)).acquire()
  old = time.time() - 1000
  os.utime(run / layout.LEASE_FILE, (old, old))
  taker = lease_lib.RunLease(str(run))
  taker.acquire()
  assert _lease_record(str(run))["owner"] == taker.owner


# ---------------------------------------------------------------------------
# Restores that walk back past corrupt checkpoints.
# ---------------------------------------------------------------------------


def _save_steps(make_checkpointer, steps=(2, 4)):
  """checkpoint_<s> for each s, holding _make_state(step=s, seed=s) and position s."""
  ckpt = make_checkpointer()
  iterator = CountingIterator()
  for step in steps:
    iterator.position = step
    ckpt.save(step, _make_state(step=step, seed=step), data_iterator=iterator)
  ckpt.close()


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _truncate_array_file(step_dir):
  data = [p for p in glob.glob(os.path.join(step_dir, layout.STATE_ITEM, "**", "d", "*"),
                               recursive=True) if os.path.isfile(p)]
  assert data
  for path in data:
    _truncate(path)


def _delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, layout.STATE_ITEM, layout.PYTREE_METADATA_FILE))


def _truncate_iterator_file(step_dir):
  files = glob.glob(os.path.join(step_dir, layout.DATA_ITERATOR_ITEM, "iterator-*.json"))
  assert files
  for path in files:
    _truncate(path)


def _empty_dir(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def _our_warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and r.pathname.endswith("run_checkpointer.py")]


@pytest.mark.parametrize("corrupt", [_truncate_array_file, _delete_metadata,
                                     _truncate_iterator_file, _empty_dir])
def test_restore_falls_back_past_a_corrupt_checkpoint(make_checkpointer, tmp_path, caplog,
                                                      corrupt):
  # INFO records reach caplog whatever verbosity an earlier test in this worker left.
  caplog.set_level(logging.INFO, logger="absl")
  run = tmp_path / "run"
  _save_steps(make_checkpointer)
  corrupt(str(run / "checkpoint_4"))

  ckpt = make_checkpointer()
  assert ckpt.latest_step() == 4  # names only; does not crash
  iterator = CountingIterator()
  with caplog.at_level(logging.INFO):
    state = ckpt.restore(_abstract(_make_state(), _single_device), data_iterator=iterator)
  assert int(state.step) == 2 and ckpt.restored_step == 2
  _assert_trees_bitwise_equal(state, _make_state(step=2, seed=2))
  assert iterator.position == 2  # the data position of the same step as the state

  assert sorted(os.listdir(run / layout.CORRUPT_CHECKPOINTS_DIR)) == ["checkpoint_4"]
  assert [s for s, _ in layout.checkpoint_dirs(str(run))] == [2]
  assert ckpt.all_steps() == [2] and ckpt.latest_step() == 2
  warnings = _our_warnings(caplog)
  assert len(warnings) == 1, warnings
  assert str(run / "checkpoint_4") in warnings[0]
  assert "Error" in warnings[0] and "\n" not in warnings[0]
  assert any(r.levelno == logging.INFO and r.exc_info for r in caplog.records
             if r.pathname.endswith("run_checkpointer.py"))  # the traceback, for the log file
  # The full error stays next to the set-aside checkpoint; the console got one line.
  error_file = run / layout.CORRUPT_CHECKPOINTS_DIR / "checkpoint_4" / layout.RESTORE_ERROR_FILE
  assert "Traceback" in error_file.read_text() and layout.RESTORE_ERROR_FILE in warnings[0]
  # A new Checkpointer (the next launch) sees only the good step.
  assert make_checkpointer().all_steps() == [2]


def test_restore_sets_aside_every_bad_step_and_keeps_each_copy(make_checkpointer, tmp_path):
  run = tmp_path / "run"
  _save_steps(make_checkpointer, steps=(2, 4, 6))
  (run / layout.CORRUPT_CHECKPOINTS_DIR / "checkpoint_6").mkdir(parents=True)  # set aside before
  _empty_dir(str(run / "checkpoint_6"))
  _delete_metadata(str(run / "checkpoint_4"))
  state = make_checkpointer().restore(_abstract(_make_state(), _single_device))
  assert int(state.step) == 2
  assert sorted(os.listdir(run / layout.CORRUPT_CHECKPOINTS_DIR)) == [
      "checkpoint_4", "checkpoint_6", "checkpoint_6-2"]


def test_restore_with_nothing_restorable_lists_what_was_tried(make_checkpointer, tmp_path):
  run = tmp_path / "run"
  _save_steps(make_checkpointer)
  _truncate_array_file(str(run / "checkpoint_4"))
  _empty_dir(str(run / "checkpoint_2"))
  ckpt = make_checkpointer()
  with pytest.raises(run_checkpointer.CheckpointRestoreError) as err:
    ckpt.restore(_abstract(_make_state(), _single_device), data_iterator=CountingIterator())
  message = str(err.value)
  assert isinstance(err.value, ActionableError)
  assert message.index(str(run / "checkpoint_4")) < message.index(str(run / "checkpoint_2"))
  assert "FileNotFoundError" in message and "ValueError" in message
  assert "fresh MODEL_DIR" in message and "INITIAL_CHECKPOINT_PATH" in message
  assert layout.checkpoint_dirs(str(run)) == []
  assert make_checkpointer().latest_step() is None  # the next launch starts fresh


def test_mismatched_tree_is_still_a_hard_error(make_checkpointer, tmp_path):
  _save_steps(make_checkpointer)
  other = _make_state().replace(opt_state=optax.sgd(0.1, momentum=0.9).init(_make_state().params))
  with pytest.raises(ValueError, match="does not match the model/optimizer"):
    make_checkpointer().restore(_abstract(other, _single_device))
  assert not (tmp_path / "run" / layout.CORRUPT_CHECKPOINTS_DIR).exists()
  assert [s for s, _ in layout.checkpoint_dirs(str(tmp_path / "run"))] == [2, 4]


def test_explicit_step_does_not_walk_back(make_checkpointer, tmp_path):
  _save_steps(make_checkpointer)
  _delete_metadata(str(tmp_path / "run" / "checkpoint_4"))
  with pytest.raises(FileNotFoundError, match="_METADATA"):
    make_checkpointer().restore(_abstract(_make_state(), _single_device), step=4)
  assert [s for s, _ in layout.checkpoint_dirs(str(tmp_path / "run"))] == [2, 4]


# ---------------------------------------------------------------------------
# Save failures surface at once; free space.
# ---------------------------------------------------------------------------


class _FailingFuture:
  """A commit future whose background write fails, as on a full disk."""

  def result(self, timeout=None):
    del timeout
    time.sleep(0.2)  # fail while training goes on, not inside save()
    raise OSError(28, "No space left on device")

  def cancel(self):
    return False


@pytest.fixture
def failing_state_saves(monkeypatch):
  """Makes every later StandardCheckpointHandler save fail in the background."""
  original = ocp.StandardCheckpointHandler.async_save

  async def async_save(self, *args, **kwargs):
    futures = await original(self, *args, **kwargs)
    return list(futures or []) + [_FailingFuture()]

  def arm():
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", async_save)

  return arm


def test_failed_async_save_is_raised_by_check_for_errors(make_checkpointer, tmp_path,
                                                         failing_state_saves):
  ckpt = make_checkpointer(async_save=True, keep=1)
  ckpt.save(1, _make_state(step=1))
  ckpt.wait_until_finished()
  ckpt.check_for_errors()  # nothing wrong yet
  failing_state_saves()
  assert ckpt.save(2, _make_state(step=2))
  deadline = time.time() + 60
  with pytest.raises(run_checkpointer.CheckpointSaveError) as err:
    while time.time() < deadline:  # what the trainer does every step
      ckpt.check_for_errors()
      time.sleep(0.05)
  message = str(err.value)
  assert isinstance(err.value, ActionableError)
  assert "step 2" in message and str(tmp_path / "run") in message
  assert "last good checkpoint is step 1" in message and "No space left" in message
  ckpt.check_for_errors()  # reported once
  assert ckpt.latest_step() == 1
  assert [s for s, _ in layout.checkpoint_dirs(str(tmp_path / "run"))] == [1]  # keep=1 kept it


def test_failed_async_save_is_raised_by_wait_until_finished(make_checkpointer, tmp_path,
                                                            failing_state_saves):
  failing_state_saves()
  ckpt = make_checkpointer(async_save=True)
  ckpt.save(3, _make_state(step=3))
  with pytest.raises(run_checkpointer.CheckpointSaveError,
                     match=r"step 3 .*none \(no step was saved\)"):
    ckpt.wait_until_finished()


def test_check_free_space_warns_when_short(make_checkpointer, caplog):
  ckpt = make_checkpointer()
  with caplog.at_level(logging.WARNING):
    free = ckpt.check_free_space(1)
    assert free is not None and free > 1 and not _our_warnings(caplog)
    ckpt.check_free_space(free * 1000)
  warnings = _our_warnings(caplog)
  assert len(warnings) == 1 and "free" in warnings[0]
  assert run_checkpointer.Checkpointer.check_free_space(
      type("Remote", (), {"model_dir": "gs://bucket/run"})(), 10**18) is None


# ---------------------------------------------------------------------------
# Config records.
# ---------------------------------------------------------------------------


def test_record_config_keeps_every_launch(tmp_path):
  run = str(tmp_path / "run")
  assert layout.latest_config(run) is None
  first = layout.record_config(run, "a = 1\n")
  assert first == os.path.join(run, layout.CONFIG_FILE)
  assert layout.latest_config(run) == first
  second = layout.record_config(run, "a = 2\n")
  third = layout.record_config(run, "a = 3\n")
  assert os.path.basename(second) == "config-2.gin"
  assert os.path.basename(third) == "config-3.gin"
  with open(first) as f:
    assert f.read() == "a = 1\n"
  assert layout.latest_config(run) == third
  os.rename(third, os.path.join(run, "config-10.gin"))  # numeric, not lexical order
  assert layout.latest_config(run) == os.path.join(run, "config-10.gin")
  assert os.path.basename(layout.record_config(run, "a = 4\n")) == "config-11.gin"
  assert sorted(os.listdir(run)) == [
      "config-10.gin", "config-11.gin", "config-2.gin", "config.gin"]


# ---------------------------------------------------------------------------
# End to end: the real trainer resumes past a corrupt checkpoint.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_trainer_resumes_past_a_corrupt_checkpoint(tmp_path):
  run, reference = tmp_path / "run", tmp_path / "reference"
  test_trainer._train(run, total_steps=4, save_period=2)
  assert [s for s, _ in layout.checkpoint_dirs(str(run))] == [2, 4]
  shutil.copytree(run, reference)
  shutil.rmtree(reference / "checkpoint_4")  # an uncorrupted run resumed from checkpoint_2
  _truncate_array_file(str(run / "checkpoint_4"))

  resumed = test_trainer._train(run, total_steps=6, save_period=2)
  expected = test_trainer._train(reference, total_steps=6, save_period=2)
  assert int(resumed.step) == int(expected.step) == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
               jax.device_get(expected.params))
  assert os.listdir(run / layout.CORRUPT_CHECKPOINTS_DIR) == ["checkpoint_4"]
  assert [s for s, _ in layout.checkpoint_dirs(str(run))] == [2, 4, 6]
