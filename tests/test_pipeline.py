"""Input pipeline: name lookup, per-host sharding, global arrays, checkpointing, eval coverage."""
import collections
import json
import os
import subprocess
import sys
import textwrap

from clu.data import dataset_iterator as clu_dataset_iterator
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest
import seqio
import tensorflow as tf

from instruct_jax.data import pipeline
from tasks_registry import smoke

LENGTHS = {"inputs": 32, "targets": 8}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def register_numbered_task(name, num_examples):
  """A task whose examples are all distinct, so set arithmetic on rows is exact."""
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    n = num_examples[split]
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [f"{name} question {i}" for i in range(n)],
        "targets": [f"answer {i}" for i in range(n)],
    })
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=tuple(num_examples),
                                      num_input_examples=num_examples),
      output_features=smoke.OUTPUT_FEATURES,
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim])


register_numbered_task("pipeline_test_a", {"train": 64, "validation": 9})
register_numbered_task("pipeline_test_b", {"train": 64, "validation": 24})
seqio.MixtureRegistry.remove("pipeline_test_ab")
seqio.MixtureRegistry.add("pipeline_test_ab", ["pipeline_test_a", "pipeline_test_b"],
                          default_rate=1.0)


def config(name="smoke_train", split="train", batch_size=8, shuffle=True, seed=0, pack=False,
           lengths=None):
  return pipeline.DatasetConfig(
      mixture_or_task_name=name, task_feature_lengths=lengths or LENGTHS, split=split,
      batch_size=batch_size, shuffle=shuffle, seed=seed, pack=pack, module="tasks_registry")


@pytest.fixture(scope="module")
def batch_sharding():
  mesh = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "model"))
  return NamedSharding(mesh, P("data"))


def rows(batches, feature="encoder_input_tokens"):
  """Distinct row tuples of the real (non-padding) examples in some batches."""
  out = []
  for batch in batches:
    weights = np.asarray(batch["decoder_loss_weights"])
    tokens = np.asarray(batch[feature])
    out.extend(tuple(row) for row, w in zip(tokens, weights) if w.any())
  return out


# -------------------------------------------------------------------- names


def test_unknown_name_lists_close_names_and_hint():
  with pytest.raises(ValueError) as error:
    pipeline.get_task_or_mixture("smoke_trian", module="tasks_registry")
  message = str(error.value)
  assert "'smoke_trian'" in message and "smoke_train" in message
  assert "import tasks_registry" in message and "DatasetConfig.module" in message


def test_unrelated_name_says_nothing_is_close():
  with pytest.raises(ValueError, match="No registered name is close"):
    pipeline.get_task_or_mixture("zzzzzzzzzzzzzzzzzzzzzz")


def test_lookup_returns_tasks_and_mixtures():
  assert isinstance(pipeline.get_task_or_mixture("smoke_train"), seqio.Mixture)
  assert isinstance(pipeline.get_task_or_mixture("smoke_successor_choice"), seqio.Task)


# ------------------------------------------------------------- get_dataset


def test_encdec_packed_shapes():
  cfg = config(pack=True)
  converter = seqio.EncDecFeatureConverter(pack=True)
  ds = pipeline.get_dataset(cfg, shard_id=0, num_shards=2, feature_converter=converter)
  batch = next(ds.as_numpy_iterator())
  expected = pipeline.model_input_shapes(cfg, converter)
  assert set(batch) == set(expected) >= {"encoder_segment_ids", "decoder_positions"}
  for name, (global_batch, length) in expected.items():
    assert global_batch == 8
    assert batch[name].shape == (4, length), name  # per-host rows = 8 // 2
  assert expected["encoder_input_tokens"] == (8, 32) and expected["decoder_target_tokens"] == (8, 8)


def test_decoder_only_shapes():
  cfg = config()
  converter = seqio.DecoderFeatureConverter(pack=False)
  batch = next(pipeline.get_dataset(cfg, 0, 1, converter).as_numpy_iterator())
  assert set(batch) == {"decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                        "decoder_causal_attention"}
  assert all(v.shape == (8, 40) for v in batch.values())
  assert pipeline.model_input_shapes(cfg, converter)["decoder_target_tokens"] == (8, 40)


def test_options_feature_of_a_single_task_is_dropped_by_the_converter():
  cfg = config(name="smoke_successor_choice")
  batch = next(pipeline.get_dataset(cfg, 0, 1, seqio.EncDecFeatureConverter(pack=False))
               .as_numpy_iterator())
  assert "options" not in batch and batch["encoder_input_tokens"].shape == (8, 32)


def test_batch_not_divisible_by_shards_is_an_error():
  with pytest.raises(ValueError, match="multiple of the number of data shards 3"):
    pipeline.get_dataset(config(), 0, 3, seqio.EncDecFeatureConverter(pack=False))


def test_pack_mismatch_is_an_error():
  with pytest.raises(ValueError, match="pack"):
    pipeline.get_dataset(config(pack=False), 0, 1, seqio.EncDecFeatureConverter(pack=True))


def test_shards_are_disjoint_and_cover_the_split():
  cfg = config(name="pipeline_test_a", split="train", shuffle=False, seed=None)
  converter = seqio.EncDecFeatureConverter(pack=False)
  def read(shard_id, num_shards):
    ds = pipeline.get_dataset(cfg, shard_id, num_shards, converter, repeat=False)
    return collections.Counter(rows(ds.as_numpy_iterator()))
  shard0, shard1, whole = read(0, 2), read(1, 2), read(0, 1)
  assert len(whole) == 64 and max(whole.values()) == 1
  assert not set(shard0) & set(shard1)
  assert shard0 + shard1 == whole


def test_same_seed_same_batches_other_seed_different():
  converter = seqio.EncDecFeatureConverter(pack=False)
  def first_batches(seed):
    ds = pipeline.get_dataset(config(seed=seed), 0, 1, converter)
    return [b["encoder_input_tokens"] for b in ds.take(2).as_numpy_iterator()]
  a, b, c = first_batches(1), first_batches(1), first_batches(2)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))


# ---------------------------------------------------- GlobalBatchIterator


def test_global_batch_iterator_shapes_and_sharding(batch_sharding):
  cfg = config(batch_size=16, pack=True)
  ds = pipeline.get_dataset(cfg, 0, 1, seqio.EncDecFeatureConverter(pack=True))
  iterator = pipeline.GlobalBatchIterator(ds, batch_sharding)
  batch = next(iterator)
  shapes = pipeline.model_input_shapes(cfg, seqio.EncDecFeatureConverter(pack=True))
  assert set(batch) == set(shapes)
  for name, array in batch.items():
    assert isinstance(array, jax.Array)
    assert array.shape == shapes[name]
    assert array.sharding.is_equivalent_to(batch_sharding, array.ndim)
    assert len(array.addressable_shards) == 8
    assert array.addressable_shards[0].data.shape == (2, shapes[name][1])
    assert iterator.global_shapes[name].shape == array.shape


def test_save_restore_resumes_at_first_unseen_batch(batch_sharding, tmp_path):
  cfg = config(batch_size=8, pack=True, seed=3)
  converter = seqio.EncDecFeatureConverter(pack=True)
  iterator = pipeline.GlobalBatchIterator(pipeline.get_dataset(cfg, 0, 1, converter),
                                          batch_sharding)
  for _ in range(3):
    next(iterator)
  iterator.save(str(tmp_path / "ckpt"))
  assert any("process_0-of-1" in f for f in os.listdir(tmp_path / "ckpt"))
  continued = [next(iterator) for _ in range(3)]

  _restore_and_expect(cfg, converter, batch_sharding, tmp_path / "ckpt", continued)


def _restore_and_expect(cfg, converter, batch_sharding, directory, continued):
  """A new GlobalBatchIterator restored from `directory` yields the `continued` batches."""
  resumed = pipeline.GlobalBatchIterator(pipeline.get_dataset(cfg, 0, 1, converter),
                                         batch_sharding)
  resumed.restore(str(directory))
  for expected in continued:
    got = next(resumed)
    for name in expected:
      np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]))
  return resumed


def test_speedups_leave_the_batches_as_seqio_makes_them():
  cfg = config(batch_size=8, pack=True, seed=3)
  def dataset():
    return pipeline.get_dataset(cfg, 0, 1, seqio.EncDecFeatureConverter(pack=True))
  plain = dataset().take(6).as_numpy_iterator()
  fast = pipeline.with_speedups(dataset()).take(6).as_numpy_iterator()
  for expected, got in zip(plain, fast, strict=True):
    assert set(got) == set(expected)
    for name in expected:
      np.testing.assert_array_equal(got[name], expected[name])


def test_a_position_saved_before_the_speedups_resumes_in_the_plain_pipeline(
    batch_sharding, tmp_path):
  """What earlier versions saved: the plain pipeline's iterator state, no build record."""
  cfg = config(batch_size=8, pack=True, seed=3)
  converter = seqio.EncDecFeatureConverter(pack=True)
  old = clu_dataset_iterator.TfDatasetIterator(pipeline.get_dataset(cfg, 0, 1, converter),
                                               checkpoint=True)
  for _ in range(3):
    next(old)
  os.makedirs(tmp_path / "ckpt")
  old.save(str(tmp_path / "ckpt" / "data_iterator-process_0-of-1"))
  continued = [next(old) for _ in range(3)]

  resumed = _restore_and_expect(cfg, converter, batch_sharding, tmp_path / "ckpt", continued)
  resumed.save(str(tmp_path / "again"))  # it goes on in the plain pipeline, and says so
  with open(tmp_path / "again" / "data_iterator-process_0-of-1.pipeline") as f:
    assert f.read() == "plain"


def test_a_position_from_an_unknown_pipeline_build_is_refused(batch_sharding, tmp_path):
  cfg = config(batch_size=8, pack=True, seed=3)
  converter = seqio.EncDecFeatureConverter(pack=True)
  iterator = pipeline.GlobalBatchIterator(pipeline.get_dataset(cfg, 0, 1, converter),
                                          batch_sharding)
  iterator.save(str(tmp_path))
  with open(tmp_path / "data_iterator-process_0-of-1.pipeline") as f:
    assert f.read() == "speedups-1"
  with open(tmp_path / "data_iterator-process_0-of-1.pipeline", "w") as f:
    f.write("speedups-7")
  with pytest.raises(pipeline.DataPipelineChangedError, match="saved by a newer version"):
    iterator.restore(str(tmp_path))


def test_restore_without_state_explains(batch_sharding, tmp_path):
  ds = pipeline.get_dataset(config(), 0, 1, seqio.EncDecFeatureConverter(pack=False))
  iterator = pipeline.GlobalBatchIterator(ds, batch_sharding)
  with pytest.raises(FileNotFoundError, match="same number of processes"):
    iterator.restore(str(tmp_path))


def test_unbatched_dataset_is_rejected(batch_sharding):
  ds = tf.data.Dataset.from_tensor_slices({"x": np.zeros((4, 3), np.int32)})
  with pytest.raises(ValueError, match="drop_remainder"):
    pipeline.GlobalBatchIterator(ds.batch(2), batch_sharding)  # dynamic leading dim


# ------------------------------------------------------------ eval_batches


def _expected_rows(cfg, converter):
  ds = pipeline._finite_examples(cfg, 0, 1, converter)  # pylint: disable=protected-access
  return collections.Counter(rows([{k: v[None] for k, v in ex.items()}
                                   for ex in ds.as_numpy_iterator()]))


def test_eval_batches_cover_every_example_once(batch_sharding):
  # A mixture of 9 + 24 examples: seqio's own mixing would stop after ~9 + 9.
  cfg = config(name="pipeline_test_ab", split="validation", batch_size=8, shuffle=False)
  converter = seqio.EncDecFeatureConverter(pack=False)
  batches = list(pipeline.eval_batches(cfg, 0, 1, converter, batch_sharding))
  assert len(batches) == 5  # ceil(33 / 8)
  for batch in batches:
    assert batch["decoder_loss_weights"].shape == (8, 8)
    assert batch["encoder_input_tokens"].sharding.is_equivalent_to(batch_sharding, 2)
  last = {k: np.asarray(v) for k, v in batches[-1].items()}
  assert last["decoder_loss_weights"][0].any()  # 33 = 4 * 8 + 1
  assert (last["decoder_loss_weights"][1:] == 0).all()
  assert (last["encoder_input_tokens"][1:] == 0).all()
  seen = collections.Counter(rows(batches))
  assert len(seen) == 33 and max(seen.values()) == 1
  assert seen == _expected_rows(cfg, converter)


def test_eval_batches_per_shard_cover_split_once(batch_sharding):
  cfg = config(name="pipeline_test_ab", split="validation", batch_size=16, shuffle=False)
  converter = seqio.EncDecFeatureConverter(pack=False)
  seen = collections.Counter()
  for shard_id in range(2):
    # One process standing in for each of two hosts: its own 8 rows are the global batch.
    batches = pipeline.eval_batches(cfg, shard_id, 2, converter, batch_sharding,
                                    global_batch_size=8)
    seen += collections.Counter(rows(batches))
  assert len(seen) == 33 and max(seen.values()) == 1


# -------------------------------------------------------------- multi-host

_TWO_HOST_SCRIPT = textwrap.dedent("""
    import json, os, sys
    process_id, port, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    import numpy as np, seqio
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, os.path.join(os.environ["REPO_ROOT"], "tests"))
    import test_pipeline as t
    from instruct_jax.data import pipeline

    mesh = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "model"))
    sharding = NamedSharding(mesh, P("data"))
    converter = seqio.EncDecFeatureConverter(pack=False)
    train = t.config(batch_size=8, seed=1)
    it = pipeline.GlobalBatchIterator(
        pipeline.get_dataset(train, process_id, 2, converter), sharding)
    next(it)
    it.save(os.path.join(out_dir, "ckpt"))
    expected = np.asarray(next(it)["encoder_input_tokens"].addressable_data(0))
    resumed = pipeline.GlobalBatchIterator(
        pipeline.get_dataset(train, process_id, 2, converter), sharding)
    resumed.restore(os.path.join(out_dir, "ckpt"))
    batch = next(resumed)
    # 9 validation examples of task a: host 0 holds 5 (2 local batches of 4), host 1
    # holds 4 (1 batch) and must still take part in a second, all-padding batch.
    evaluation = t.config(name="pipeline_test_a", split="validation", batch_size=8,
                          shuffle=False)
    eval_batches = list(pipeline.eval_batches(evaluation, process_id, 2, converter, sharding))
    local_rows = [np.asarray(s.data) for b in eval_batches
                  for s in b["decoder_loss_weights"].addressable_shards]
    json.dump({
        "global_shape": list(batch["encoder_input_tokens"].shape),
        "resumed_ok": bool(np.array_equal(
            expected, np.asarray(batch["encoder_input_tokens"].addressable_data(0)))),
        "num_eval_batches": len(eval_batches),
        "real_eval_rows": int(sum(r.any(axis=1).sum() for r in local_rows)),
    }, open(os.path.join(out_dir, f"result_{process_id}.json"), "w"))
""")


@pytest.mark.slow
def test_two_processes_share_batches_and_keep_per_process_state(tmp_path):
  script = tmp_path / "two_host.py"
  script.write_text(_TWO_HOST_SCRIPT)
  env = dict(os.environ, REPO_ROOT=REPO_ROOT, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]),
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  results = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in range(2)]
  assert sorted(os.listdir(tmp_path / "ckpt")) == sorted(
      f"data_iterator-process_{i}-of-2.{ext}" for i in range(2)
      for ext in ("index", "data-00000-of-00001", "pipeline"))
  for result in results:
    assert result["global_shape"] == [8, 32]
    assert result["resumed_ok"]
    assert result["num_eval_batches"] == 2
  assert sorted(r["real_eval_rows"] for r in results) == [4, 5]
