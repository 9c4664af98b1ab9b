"""The training loop through its Python API: resume exactness, microbatches, NaN handling,
the MODEL_DIR lease, save failures, signal stops, metrics after a kill, collapse detection."""
import json
import os
import shutil
import signal

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import tasks_registry  # noqa: F401  (registers the smoke tasks)
from instruct_jax.data import pipeline
from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import lease as lease_lib
from instruct_jax.checkpoints import run_checkpointer
from instruct_jax.errors import RunStopped
from instruct_jax.train import metrics_writer
from instruct_jax.train import partitioning
from instruct_jax.train import trainer as trainer_lib
import factories

LENGTHS = {"inputs": 64, "targets": 16}


def _dataset_cfg(**overrides):
  fields = dict(mixture_or_task_name="smoke_train", task_feature_lengths=LENGTHS,
                split="train", batch_size=8, shuffle=True, seed=3, pack=True)
  fields.update(overrides)
  return pipeline.DatasetConfig(**fields)


def _train(model_dir, total_steps, optimizer=None, save_period=3, model=None,
           dataset_cfg=None, restore_data_iterator=True, **kwargs):
  return trainer_lib.train(
      model=model or factories.tiny_t5(dropout_rate=0.1),
      train_dataset_cfg=dataset_cfg or _dataset_cfg(),
      optimizer=optimizer or optax.adafactor(1e-2),
      model_dir=str(model_dir),
      total_steps=total_steps,
      partitioner=partitioning.Partitioner(parameter_partitioning_dims=2),
      checkpoint_cfg=trainer_lib.CheckpointConfig(
          save_period=save_period, async_save=True,
          restore_data_iterator=restore_data_iterator),
      log_period=1,
      **kwargs)


@pytest.mark.slow
def test_resume_is_bitwise_exact(tmp_path):
  straight = _train(tmp_path / "straight", total_steps=6)
  _train(tmp_path / "resumed", total_steps=3)
  resumed = _train(tmp_path / "resumed", total_steps=6)
  assert int(resumed.step) == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params),
               jax.device_get(resumed.params))
  steps = [json.loads(line)["step"] for line in
           open(tmp_path / "resumed" / "metrics.jsonl") if "loss" in line]
  assert steps == [1, 2, 3, 4, 5, 6]  # the second run continued at step 4


def test_a_changed_input_pipeline_is_a_clear_error_and_can_resume_without_the_position(
    tmp_path):
  _train(tmp_path, total_steps=3)
  changed = _dataset_cfg(shuffle=False)  # same shapes, another tf.data graph
  assert int(_train(tmp_path, total_steps=3, dataset_cfg=changed).step) == 3  # finished
  with pytest.raises(pipeline.DataPipelineChangedError,
                     match="--gin.RESTORE_DATA_ITERATOR=False"):
    _train(tmp_path, total_steps=6, dataset_cfg=changed)
  # Nothing was taken for corruption: the checkpoint stays, and run.json keeps its step.
  assert [step for step, _ in layout.checkpoint_dirs(str(tmp_path))] == [3]
  assert not os.path.exists(tmp_path / layout.CORRUPT_CHECKPOINTS_DIR)
  status = layout.read_run_status(str(tmp_path))
  assert (status.status, status.last_step) == (layout.FAILED, 3)
  assert "RESTORE_DATA_ITERATOR" in status.error

  resumed = _train(tmp_path, total_steps=4, dataset_cfg=changed, restore_data_iterator=False)
  assert int(resumed.step) == 4
  steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")
           if "loss" in line]
  assert steps == [1, 2, 3, 4]  # the model went on from step 3


def test_microbatches_match_full_batch_gradients():
  model = factories.tiny_t5()
  partitioner = partitioning.Partitioner(num_partitions=2)
  shapes = factories.input_shapes(batch=8)
  batch = {k: jax.device_put(v, partitioner.batch_sharding)
           for k, v in factories.synthetic_batch(8, seed=1).items()}
  results = []
  for k in (1, 2):
    trainer = trainer_lib.Trainer(model, optax.sgd(1.0), partitioner, shapes,
                                  num_microbatches=k)
    state = trainer.init_state(0)
    initial = jax.device_get(state.params)
    state, metrics = trainer.train_step(state, batch)
    update = jax.tree.map(lambda new, old: new - old, jax.device_get(state.params), initial)
    results.append((update, jax.device_get(metrics)))
  (update_1, metrics_1), (update_2, metrics_2) = results
  # Summing in another order: float32 rounding of the step's own size (updates reach ~4).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max()), update_1, update_2)
  for key in ("loss", "num_tokens", "correct_tokens", "grad_norm"):
    np.testing.assert_allclose(metrics_1[key], metrics_2[key], rtol=1e-5)


def test_microbatches_must_divide_the_batch():
  with pytest.raises(ValueError, match="num_microbatches"):
    trainer_lib.Trainer(factories.tiny_t5(), optax.sgd(1.0), partitioning.Partitioner(),
                        factories.input_shapes(batch=8), num_microbatches=3)


def test_non_finite_loss_stops_without_saving_nan(tmp_path):
  exploding = optax.sgd(1e35)
  with pytest.raises(trainer_lib.NonFiniteLossError, match=r"at step \d+"):
    _train(tmp_path, total_steps=20, optimizer=exploding, save_period=1)
  checkpointer = run_checkpointer.Checkpointer(str(tmp_path), save_period=1)
  for step in checkpointer.all_steps():
    trainer = trainer_lib.Trainer(factories.tiny_t5(dropout_rate=0.1), exploding,
                                  partitioning.Partitioner(parameter_partitioning_dims=2),
                                  pipeline.model_input_shapes(
                                      _dataset_cfg(),
                                      factories.tiny_t5().feature_converter(pack=True)))
    state = checkpointer.restore(trainer.abstract_state, step=step)
    for leaf in jax.tree.leaves(jax.device_get(state.params)):
      assert np.all(np.isfinite(leaf)), f"checkpoint_{step} holds non-finite params"
  saved = checkpointer.all_steps()
  checkpointer.close()
  status = layout.read_run_status(str(tmp_path))
  assert status.status == layout.FAILED and not status.finished
  assert status.total_steps == 20 and status.last_step == max(saved, default=0)
  assert status.error.startswith("NonFiniteLossError: Non-finite") and "\n" not in status.error


def test_run_status_running_then_stopped_then_finished(tmp_path):
  seen = []

  def sigterm_at_step_2(trainer, params, step):
    del trainer, params
    seen.append(layout.read_run_status(str(tmp_path)))
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # as a preemption would
    return {}

  with pytest.raises(RunStopped, match=r"^Stopped by SIGTERM at step 2; checkpoint saved in "
                     r".*Run the same command again to resume\.$"):
    _train(tmp_path, total_steps=4, eval_period=1, infer_eval_fn=sigterm_at_step_2)
  assert [(s.status, s.last_step, s.total_steps) for s in seen] == [
      (layout.RUNNING, 0, 4), (layout.RUNNING, 0, 4)]
  stopped = layout.read_run_status(str(tmp_path))
  assert (stopped.status, stopped.last_step, stopped.error) == (layout.STOPPED, 2, None)
  assert [n for n, _ in layout.checkpoint_dirs(str(tmp_path))] == [2]

  seen.clear()
  _train(tmp_path, total_steps=4, eval_period=1, infer_eval_fn=sigterm_at_step_2)
  assert [(s.status, s.last_step) for s in seen] == [(layout.RUNNING, 2)] * 2
  finished = layout.read_run_status(str(tmp_path))
  assert (finished.status, finished.last_step, finished.total_steps) == (layout.FINISHED, 4, 4)
  assert finished.finished and finished.error is None


def test_unknown_task_fails_before_training(tmp_path):
  with pytest.raises(pipeline.UnknownTaskError, match="smoke_train"):
    trainer_lib.train(
        model=factories.tiny_t5(), train_dataset_cfg=_dataset_cfg(mixture_or_task_name="smoke_trian"),
        optimizer=optax.sgd(1.0), model_dir=str(tmp_path), total_steps=1,
        partitioner=partitioning.Partitioner())
  assert not os.path.exists(tmp_path / "checkpoint_1")


def test_initial_checkpoint_params_then_resume_precedence(tmp_path):
  pretrained = _train(tmp_path / "pretrained", total_steps=2)
  # A fresh MODEL_DIR starts from the pretrained params at step 0 (no updates yet).
  finetuned = _train(tmp_path / "finetune", total_steps=0,
                     initial_checkpoint_path=str(tmp_path / "pretrained"))
  assert int(finetuned.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(pretrained.params),
               jax.device_get(finetuned.params))
  # Once MODEL_DIR has its own checkpoint, that wins over INITIAL_CHECKPOINT_PATH.
  _train(tmp_path / "finetune", total_steps=3, initial_checkpoint_path=str(tmp_path / "pretrained"))
  resumed = _train(tmp_path / "finetune", total_steps=4,
                   initial_checkpoint_path=str(tmp_path / "pretrained"))
  assert int(resumed.step) == 4


def _logged_steps(model_dir):
  return [json.loads(line)["step"] for line in open(os.path.join(model_dir, "metrics.jsonl"))
          if "loss" in line]


def test_second_trainer_on_a_model_dir_is_refused_unless_it_takes_over(tmp_path):
  holder = lease_lib.RunLease(str(tmp_path))  # the live trainer already writing tmp_path
  holder.acquire()
  run_json = layout.write_run_status(str(tmp_path), layout.RunStatus(
      total_steps=100, last_step=0, status=layout.RUNNING, time=1.0))
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text('{"step": 1, "loss": 3.0}\n')
  before = (open(run_json).read(), metrics.read_text())

  with pytest.raises(lease_lib.LeaseHeldError, match="in use by another training run"):
    _train(tmp_path, total_steps=2)
  assert (open(run_json).read(), metrics.read_text()) == before
  assert layout.checkpoint_dirs(str(tmp_path)) == []

  state = _train(tmp_path, total_steps=2, take_over_lease=True)
  assert int(state.step) == 2
  assert layout.read_run_status(str(tmp_path)).finished
  assert not os.path.exists(tmp_path / layout.LEASE_FILE)  # released on the way out
  holder.release()


def test_failed_background_save_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
  def full_disk(self):
    del self
    raise OSError(28, "No space left on device")
  # The async commit of every save fails in orbax's finalize thread, as a full disk would.
  monkeypatch.setattr(ocp.CheckpointManager, "_wait_for_checkpointers", full_disk)

  with pytest.raises(run_checkpointer.CheckpointSaveError, match="step 3.*No space left"):
    _train(tmp_path, total_steps=8, save_period=3)
  # Noticed at the step after the save (4; 5 at worst if the thread is slow), not at the
  # next save (6), which would have trained a whole save period for nothing.
  assert max(_logged_steps(tmp_path)) <= 4
  status = layout.read_run_status(str(tmp_path))
  assert status.status == layout.FAILED and status.error.startswith("CheckpointSaveError")


def test_metrics_have_one_row_per_step_after_a_kill_and_resume(tmp_path):
  _train(tmp_path, total_steps=4, save_period=2)
  # A kill -9 after step 6 was logged but before checkpoint_4 was committed.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
  shutil.rmtree(tmp_path / "checkpoint_4")
  _train(tmp_path, total_steps=6, save_period=2)
  assert _logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
  for line in open(tmp_path / "metrics.jsonl"):
    json.loads(line)  # no line cut short either


def test_drop_rows_after_keeps_the_file_when_nothing_is_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "eval/x/loss": 1.0}\n')
  assert metrics_writer.drop_rows_after(str(path), 2) == 0
  assert metrics_writer.drop_rows_after(str(path), 1) == 1
  assert path.read_text() == '{"step": 1, "loss": 2.0}\n'
  assert metrics_writer.drop_rows_after(str(tmp_path / "missing.jsonl"), 0) == 0


def test_zero_gradient_collapse_stops_without_saving_the_collapsed_state(tmp_path):
  # Adam's first update of size ~1e6 saturates the tiny model: every later gradient is 0.0
  # while the loss no longer moves (no NaN, so the finite check does not fire).
  with pytest.raises(trainer_lib.DivergenceError, match=r"exactly 0\.0 for 3 logged steps"):
    _train(tmp_path, total_steps=20, optimizer=optax.adam(1e6), save_period=1,
           zero_grad_patience=3)
  steps = _logged_steps(tmp_path)
  grad_norms = [json.loads(line)["grad_norm"] for line in open(tmp_path / "metrics.jsonl")]
  first_zero = steps[grad_norms.index(0.0)]
  assert steps[-1] == first_zero + 2 and all(g == 0.0 for g in grad_norms[-3:])
  assert all(step < first_zero for step, _ in layout.checkpoint_dirs(str(tmp_path)))
  status = layout.read_run_status(str(tmp_path))
  assert status.status == layout.FAILED and status.error.startswith("DivergenceError")


def test_config_is_recorded_only_after_a_successful_start(tmp_path):
  _train(tmp_path, total_steps=2, run_config="# launch 1\n")
  assert (tmp_path / "config.gin").read_text() == "# launch 1\n"

  with pytest.raises(ValueError, match="does not match"):  # another model: fails validation
    _train(tmp_path, total_steps=4, model=factories.tiny_t5(num_decoder_layers=1),
           run_config="# launch 2\n")
  assert (tmp_path / "config.gin").read_text() == "# launch 1\n"
  assert not os.path.exists(tmp_path / "config-2.gin")

  # Relaunching a finished run does nothing (and records no launch that trained nothing).
  state = _train(tmp_path, total_steps=2, run_config="# launch 3\n")
  assert int(state.step) == 2
  assert layout.read_run_status(str(tmp_path)).finished
  assert not os.path.exists(tmp_path / "config-2.gin")
  assert _logged_steps(tmp_path) == [1, 2]


def test_lease_refusal_reaches_every_process(tmp_path, monkeypatch):
  holder = lease_lib.RunLease(str(tmp_path))
  holder.acquire()
  sent = []

  def broadcast(buffer):  # process 0's buffer is what every process receives
    if not sent:
      sent.append(np.array(buffer))
    return sent[0]

  monkeypatch.setattr(trainer_lib.multihost_utils, "broadcast_one_to_all", broadcast)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  errors = []
  for process in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda process=process: process)
    with pytest.raises(lease_lib.LeaseHeldError) as refused:
      trainer_lib._take_lease(str(tmp_path), take_over=False)  # pylint: disable=protected-access
    errors.append(str(refused.value))
  assert errors[0] == errors[1] and "in use by another training run" in errors[0]
  holder.release()
