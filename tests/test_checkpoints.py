"""Tests for instruct_jax.checkpoints (run checkpointer, params loading, MODEL_DIR layout) on
8 fake CPU devices, with tiny arrays."""
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import params_io
from instruct_jax.train.state import TrainState

P = jax.sharding.PartitionSpec


class CountingIterator:
  """A stand-in data iterator whose whole state is how many batches it has produced."""

  def __init__(self):
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self):
    self.position += 1
    return {"position": self.position}

  def _file(self, directory):
    return os.path.join(directory, f"iterator-{jax.process_index():03d}.json")

  def save(self, directory):
    with open(self._file(directory), "w") as f:
      json.dump({"position": self.position}, f)

  def restore(self, directory):
    with open(self._file(directory)) as f:
      self.position = json.load(f)["position"]


def _optimizer():
  # Factor dims >= 8 so the tiny test arrays get real factored (v_row / v_col) state.
  return optax.adafactor(1e-2, min_dim_size_to_factor=8)


def _make_params(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {
      "token_embedder": {"embedding": jax.random.normal(k1, (16, 8))},
      "encoder": {"layers_0": {"mlp": {"wi": {"kernel": jax.random.normal(k2, (8, 16))}}}},
      "decoder": {"decoder_norm": {"scale": jax.random.normal(k3, (8,))}},
  }


def _make_state(step=0, seed=0):
  """A TrainState with non-trivial adafactor state (one update applied)."""
  params = _make_params(seed)
  tx = _optimizer()
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: 0.1 * p + 1.0, params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state)


def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def _fsdp_sharding(shape, mesh):
  """Split the first dimension 8 ways when it divides, otherwise replicate."""
  if shape and shape[0] % mesh.size == 0:
    return jax.sharding.NamedSharding(mesh, P("data"))
  return jax.sharding.NamedSharding(mesh, P())


def _abstract(tree, sharding_fn):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x.shape)), tree)


def _single_device(shape):
  del shape
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _assert_trees_bitwise_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(a), np.asarray(e)
    assert a.dtype == e.dtype and a.shape == e.shape
    np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), e.reshape(-1).view(np.uint8))


def _step_dirs(model_dir):
  return sorted(d for d in os.listdir(model_dir) if d.startswith("checkpoint_"))


def test_save_restore_round_trip_is_bitwise(make_checkpointer):
  ckpt = make_checkpointer(save_period=10)
  state = _make_state(step=10)
  assert ckpt.save(10, state)
  assert ckpt.latest_step() == 10
  restored = ckpt.restore(_abstract(state, _single_device))
  assert isinstance(restored, TrainState)
  _assert_trees_bitwise_equal(restored, state)
  assert isinstance(restored.params["token_embedder"]["embedding"], jax.Array)


def test_restore_onto_other_shardings(make_checkpointer, tmp_path):
  mesh = _mesh()
  state = _make_state(step=1)  # every array on one device
  one_device = make_checkpointer(tmp_path / "one_device")
  one_device.save(1, state)
  fsdp_target = _abstract(state, lambda s: _fsdp_sharding(s, mesh))
  sharded = one_device.restore(fsdp_target)
  _assert_trees_bitwise_equal(sharded, state)
  embedding = sharded.params["token_embedder"]["embedding"]
  assert embedding.sharding == jax.sharding.NamedSharding(mesh, P("data"))
  assert len(embedding.addressable_shards) == 8
  assert embedding.addressable_shards[0].data.shape == (2, 8)

  # And back: written from the 8-way layout, read onto a single device.
  eight_way = make_checkpointer(tmp_path / "eight_way")
  eight_way.save(1, sharded)
  back = eight_way.restore(_abstract(state, _single_device))
  _assert_trees_bitwise_equal(back, state)
  assert back.params["token_embedder"]["embedding"].sharding == _single_device(None)


def test_keep_prunes_old_steps_with_their_iterator_state(make_checkpointer, tmp_path):
  ckpt = make_checkpointer(keep=2)
  iterator = CountingIterator()
  state = _make_state()
  for step in range(1, 5):
    next(iterator)
    assert ckpt.save(step, state.replace(step=jnp.int32(step)), data_iterator=iterator)
  ckpt.wait_until_finished()
  run = tmp_path / "run"
  assert _step_dirs(run) == ["checkpoint_3", "checkpoint_4"]
  for step in (3, 4):
    saved = CountingIterator()
    saved.restore(str(run / f"checkpoint_{step}" / layout.DATA_ITERATOR_ITEM))
    assert saved.position == step
  assert not [p for p in os.listdir(run) if "train_ds" in p]  # nothing left beside steps


def test_should_save_cadence_and_force(make_checkpointer):
  ckpt = make_checkpointer(save_period=5)
  assert [s for s in range(1, 13) if ckpt.should_save(s)] == [5, 10]
  state = _make_state()
  assert not ckpt.save(7, state)
  assert ckpt.save(10, state)
  assert not ckpt.should_save(10)  # already written
  assert ckpt.save(12, state, force=True)  # e.g. end of training or SIGTERM
  assert not ckpt.save(12, state, force=True)  # never the same step twice
  assert ckpt.all_steps() == [10, 12]


def test_forced_saves_only_when_no_period(make_checkpointer):
  ckpt = make_checkpointer(save_period=None)
  assert not any(ckpt.should_save(s) for s in range(1, 20))
  assert ckpt.save(3, _make_state(), force=True)


def test_async_save_then_wait(make_checkpointer):
  ckpt = make_checkpointer(async_save=True)
  state = _make_state(step=2, seed=1)
  expected = jax.device_get(state)
  iterator = CountingIterator()
  next(iterator), next(iterator)
  assert ckpt.save(2, state, data_iterator=iterator)
  # Training goes on while the files are written: the iterator moves and the state's
  # buffers may be reused; the checkpoint still holds step 2's values and position.
  del state
  next(iterator)
  ckpt.wait_until_finished()
  assert ckpt.latest_step() == 2
  fresh = CountingIterator()
  restored = ckpt.restore(_abstract(expected, _single_device), data_iterator=fresh)
  _assert_trees_bitwise_equal(restored, expected)
  assert fresh.position == 2


def test_latest_step_ignores_unfinished_checkpoints(make_checkpointer, tmp_path):
  run = tmp_path / "run"
  (run / "checkpoint_9.orbax-checkpoint-tmp-123").mkdir(parents=True)
  ckpt = make_checkpointer()
  assert ckpt.latest_step() is None


def test_data_iterator_and_specific_step(make_checkpointer):
  ckpt = make_checkpointer()
  iterator = CountingIterator()
  for _ in range(3):
    next(iterator)
  state3 = _make_state(step=3, seed=3)
  ckpt.save(3, state3, data_iterator=iterator)
  for _ in range(4):
    next(iterator)
  state6 = _make_state(step=6, seed=6)
  ckpt.save(6, state6, data_iterator=iterator)

  fresh = CountingIterator()
  restored = ckpt.restore(_abstract(state3, _single_device), data_iterator=fresh)
  _assert_trees_bitwise_equal(restored, state6)
  assert fresh.position == 7

  restored = ckpt.restore(_abstract(state3, _single_device), step=3, data_iterator=fresh)
  _assert_trees_bitwise_equal(restored, state3)
  assert fresh.position == 3
  assert next(fresh) == {"position": 4}


def test_restore_in_a_new_process_view(make_checkpointer, tmp_path):
  """A Checkpointer created later on the same directory (a restarted job) resumes."""
  state = _make_state(step=4)
  iterator = CountingIterator()
  iterator.position = 11
  make_checkpointer().save(4, state, data_iterator=iterator)
  resumed = make_checkpointer()
  assert resumed.latest_step() == 4
  fresh = CountingIterator()
  _assert_trees_bitwise_equal(
      resumed.restore(_abstract(state, _single_device), data_iterator=fresh), state)
  assert fresh.position == 11


def test_load_params_reads_only_params(make_checkpointer, tmp_path):
  mesh = _mesh()
  ckpt = make_checkpointer()
  ckpt.save(5, _make_state(step=5, seed=5))
  newest = _make_state(step=8, seed=8)
  ckpt.save(8, newest)
  ckpt.wait_until_finished()
  abstract_params = _abstract(newest.params, lambda s: _fsdp_sharding(s, mesh))

  from_model_dir = params_io.load_params(str(tmp_path / "run"), abstract_params)
  _assert_trees_bitwise_equal(from_model_dir, newest.params)
  kernel = from_model_dir["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
  assert kernel.sharding == jax.sharding.NamedSharding(mesh, P("data"))

  from_step_dir = params_io.load_params(str(tmp_path / "run" / "checkpoint_5"),
                                          abstract_params)
  _assert_trees_bitwise_equal(from_step_dir, _make_state(step=5, seed=5).params)


def test_empty_dir_errors(make_checkpointer, tmp_path):
  ckpt = make_checkpointer()
  assert ckpt.latest_step() is None
  with pytest.raises(FileNotFoundError, match="No finished checkpoint found"):
    ckpt.restore(_abstract(_make_state(), _single_device))
  with pytest.raises(FileNotFoundError, match="Found no checkpoint"):
    params_io.load_params(str(tmp_path / "run"), _make_params())
  with pytest.raises(FileNotFoundError, match="does not exist"):
    params_io.load_params(str(tmp_path / "nowhere"), _make_params())


def test_restore_unknown_step_lists_available(make_checkpointer):
  ckpt = make_checkpointer()
  state = _make_state()
  ckpt.save(2, state)
  with pytest.raises(FileNotFoundError, match=r"step 7 .*available steps: \[2\]"):
    ckpt.restore(_abstract(state, _single_device), step=7)


def test_mismatched_trees_name_every_problem(make_checkpointer, tmp_path):
  ckpt = make_checkpointer()
  state = _make_state()
  ckpt.save(1, state)

  params = dict(_make_params())
  del params["decoder"]  # missing from the model -> unexpected in checkpoint
  params["extra"] = {"kernel": jnp.zeros((2, 2))}  # not in the checkpoint
  params["token_embedder"] = {"embedding": jnp.zeros((32, 8))}  # other vocab size
  with pytest.raises(ValueError) as err:
    params_io.load_params(str(tmp_path / "run"), params)
  message = str(err.value)
  assert "1 missing from the checkpoint: extra/kernel (model (2, 2))" in message
  assert "only in the checkpoint: decoder/decoder_norm/scale (checkpoint (8,))" in message
  assert ("1 of another shape: token_embedder/embedding (checkpoint (16, 8), model (32, 8))"
          in message)

  other_optimizer = state.replace(opt_state=optax.sgd(0.1, momentum=0.9).init(state.params))
  with pytest.raises(ValueError) as err:
    ckpt.restore(_abstract(other_optimizer, _single_device))
  message = str(err.value)
  assert "missing from the checkpoint: opt_state/0/trace/decoder/" in message
  assert "only in the checkpoint: opt_state/0/count" in message
  assert "the optimizer differs" in message and "INITIAL_CHECKPOINT_PATH" in message


_TWO_PROCESS_WORKER = r'''
import json, os, sys
process_id, port, model_dir, repo = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sys.path.insert(0, repo)
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
import numpy as np
from instruct_jax.checkpoints import params_io
from instruct_jax.checkpoints import run_checkpointer
from instruct_jax.train.state import TrainState

mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))  # 2 processes x 2 devices
P = jax.sharding.PartitionSpec
def sharding(shape):
  return jax.sharding.NamedSharding(mesh, P("data") if shape and shape[0] % 4 == 0 else P())
def global_array(x):
  return jax.make_array_from_callback(x.shape, sharding(x.shape), lambda idx: x[idx])

class Iterator:
  def __init__(self, position):
    self.position = position
  def _file(self, directory):
    return os.path.join(directory, f"it-{jax.process_index()}.json")
  def save(self, directory):
    with open(self._file(directory), "w") as f:
      json.dump(self.position, f)
  def restore(self, directory):
    with open(self._file(directory)) as f:
      self.position = json.load(f)

params = {"emb": np.arange(64, dtype=np.float32).reshape(16, 4), "b": np.ones(3, np.float32)}
ckpt = run_checkpointer.Checkpointer(model_dir, save_period=5, keep=1, async_save=True)
for step in (5, 10):
  state = TrainState(step=global_array(np.int32(step)),
                     params=jax.tree.map(lambda p: global_array(p * step), params), opt_state=())
  assert ckpt.save(step, state, data_iterator=Iterator(100 * step + process_id))
ckpt.wait_until_finished()
abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding(x.shape)), state)
iterator = Iterator(0)
restored = ckpt.restore(abstract, data_iterator=iterator)
assert iterator.position == 1000 + process_id, iterator.position
for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
  for got_shard, want_shard in zip(got.addressable_shards, want.addressable_shards):
    np.testing.assert_array_equal(np.asarray(got_shard.data), np.asarray(want_shard.data))
loaded = params_io.load_params(model_dir, abstract.params)
np.testing.assert_array_equal(
    np.asarray(loaded["emb"].addressable_shards[0].data),
    np.asarray(state.params["emb"].addressable_shards[0].data))
ckpt.close()
print("WORKER_OK", process_id)
jax.distributed.shutdown()
'''


def test_two_processes_save_and_restore(tmp_path):
  """Multi-host: both processes call save/restore; each keeps its own iterator file."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  worker = tmp_path / "worker.py"
  worker.write_text(_TWO_PROCESS_WORKER)
  model_dir = tmp_path / "run"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  procs = [
      subprocess.Popen([sys.executable, str(worker), str(i), port, str(model_dir), repo],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0 and f"WORKER_OK {i}" in out, out[-3000:]
  assert _step_dirs(model_dir) == ["checkpoint_10"]
  assert {"it-0.json", "it-1.json"} <= set(
      os.listdir(model_dir / "checkpoint_10" / layout.DATA_ITERATOR_ITEM))


def test_model_dir_picks_the_newest_finished_step_numerically(make_checkpointer, tmp_path):
  ckpt = make_checkpointer()
  ckpt.save(9, _make_state(step=9, seed=9))
  ckpt.save(10, _make_state(step=10, seed=10))
  ckpt.wait_until_finished()
  run = tmp_path / "run"
  (run / "checkpoint_11.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save
  (run / "checkpoint_12").write_text("not a directory")
  fmt, location = params_io.detect_checkpoint_format(str(run))
  assert fmt == params_io.ORBAX_TRAIN_STATE
  assert str(location) == str(run / "checkpoint_10" / layout.STATE_ITEM)


# ---------------------------------------------------------------------------
# layout: MODEL_DIR names and run.json.
# ---------------------------------------------------------------------------


def test_layout_names_round_trip():
  for step in (0, 7, 123456):
    name = layout.checkpoint_dir_name(step)
    assert layout.step_of_dir_name(name) == step
    assert layout.step_of_dir_name(name + "/") == step
    path = layout.checkpoint_dir("/runs/a", step)
    assert path == os.path.join("/runs/a", name)
    assert layout.step_of_checkpoint(os.path.join(path, layout.STATE_ITEM)) == step
    assert layout.model_dir_of_checkpoint(path) == "/runs/a"
    assert layout.model_dir_of_checkpoint(path + "/") == "/runs/a"
    assert layout.step_of_metrics_file(layout.metrics_file_name(step)) == step
    assert layout.report_stem("report", step) == f"report_step_{step}"
  assert layout.model_dir_of_checkpoint("/runs/a") == "/runs/a"
  assert layout.step_of_checkpoint("/runs/a") is None
  assert layout.report_stem("report") == "report"
  for name in ("checkpoint_3.orbax-checkpoint-tmp-1", "checkpoint_", "checkpoint_1x",
               "ckpt_1", "my_checkpoint_1"):
    assert layout.step_of_dir_name(name) is None, name
  assert layout.step_of_metrics_file("metrics_step_5.json.tmp") is None


def test_layout_lists_finished_checkpoints_and_the_latest_metrics(tmp_path):
  for name in ("checkpoint_10", "checkpoint_2", "checkpoint_3.orbax-checkpoint-tmp-1", "other"):
    (tmp_path / name).mkdir()
  assert layout.checkpoint_dirs(str(tmp_path)) == [
      (2, str(tmp_path / "checkpoint_2")), (10, str(tmp_path / "checkpoint_10"))]
  assert layout.checkpoint_dirs(str(tmp_path / "missing")) == []

  results = layout.eval_dir(str(tmp_path))
  assert results == os.path.join(str(tmp_path), layout.EVAL_SUBDIR)
  assert layout.latest_metrics_file(results) is None
  os.makedirs(results)
  for step in (5, 40, 9):
    open(os.path.join(results, layout.metrics_file_name(step)), "w").close()
  open(os.path.join(results, "summary.json"), "w").close()
  assert layout.latest_metrics_file(results) == (
      40, os.path.join(results, layout.metrics_file_name(40)))


def test_run_status_round_trip_and_atomic_write(tmp_path):
  model_dir = str(tmp_path / "run")
  assert layout.read_run_status(model_dir) is None  # never trained: no file, no error

  stopped = layout.RunStatus(total_steps=10, last_step=4, status=layout.STOPPED, time=1.5)
  path = layout.write_run_status(model_dir, stopped)
  assert path == os.path.join(model_dir, layout.RUN_STATUS_FILE)
  assert os.listdir(model_dir) == [layout.RUN_STATUS_FILE]  # no partial file left behind
  assert layout.read_run_status(model_dir) == stopped
  assert not stopped.finished

  # A write that breaks halfway (here: a value JSON cannot encode) leaves the old file whole.
  with pytest.raises(TypeError):
    layout.write_run_status(model_dir, layout.RunStatus(
        total_steps=10, last_step=10, status=layout.FINISHED, time=object()))
  assert layout.read_run_status(model_dir) == stopped

  failed = layout.RunStatus(total_steps=10, last_step=4, status=layout.FAILED, time=2.0,
                            error="NonFiniteLossError: loss=nan at step 5")
  layout.write_run_status(model_dir, failed)
  assert layout.read_run_status(model_dir) == failed
  finished = layout.RunStatus(total_steps=10, last_step=10, status=layout.FINISHED, time=3.0)
  layout.write_run_status(model_dir, finished)
  assert layout.read_run_status(model_dir).finished

  # Fields a newer writer adds are ignored; an unknown status is refused.
  with open(path) as f:
    record = json.load(f)
  with open(path, "w") as f:
    json.dump({**record, "host": "worker-0"}, f)
  assert layout.read_run_status(model_dir) == finished
  with pytest.raises(ValueError, match="not one of"):
    layout.RunStatus(total_steps=1, last_step=1, status="done", time=0.0)
