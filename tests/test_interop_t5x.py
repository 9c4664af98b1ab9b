"""Reading t5x checkpoints: legacy msgpack + tensorstore (zarr), and t5x's orbax layout.

`write_legacy_t5x_checkpoint` below writes the released t5x format from its
description: a msgpack file `checkpoint` = {version, optimizer: {target,
state: {step, param_states}}} with small arrays inline (flax ext types,
bfloat16 included) and large ones as zarr arrays written with tensorstore into
sub-directories named after the parameter path ('/' -> '.'), referenced from
the msgpack by a tensorstore spec whose kvstore path is relative.
"""
import os
import re

import flax.linen as nn
from flax import serialization
import jax
import ml_dtypes
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from instruct_jax import cli
from instruct_jax.checkpoints import conversion as convert
from instruct_jax.checkpoints import t5x
from instruct_jax.checkpoints import adafactor_carry_over
from instruct_jax.checkpoints import params_io
from instruct_jax.train import optimizers
from instruct_jax.train import partitioning
from instruct_jax.train import trainer as trainer_lib
import factories

BATCH = 8


def write_legacy_t5x_checkpoint(directory, params, param_states=None, step=0, version=3,
                                inline_max_elements=256):
  """Writes checkpoint_<step>-style `directory` in t5x's legacy format.

  Arrays with more than `inline_max_elements` elements go to zarr; the rest stay
  inline in the msgpack. Version < 3 stores bfloat16 zarr arrays as uint16, as
  t5x did before mid 2021.
  """
  os.makedirs(directory, exist_ok=True)

  def to_msgpack(path, node):
    if isinstance(node, dict):
      return {key: to_msgpack(path + (key,), value) for key, value in node.items()}
    array = np.asarray(node)
    if array.size <= inline_max_elements:
      return array
    name = ".".join(path)  # e.g. target.encoder.layers_0.attention.query.kernel
    stored = array
    if version < 3 and array.dtype == ml_dtypes.bfloat16:
      stored = array.view(np.uint16)
    dtype = "bfloat16" if stored.dtype == ml_dtypes.bfloat16 else stored.dtype.str
    metadata = {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                "chunks": [max(1, d // 2) for d in array.shape], "dtype": dtype}
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                   "path": os.path.join(directory, name)},
                     "metadata": metadata}, create=True).result()
    store.write(stored).result()
    return {"driver": "zarr", "dtype": stored.dtype.name,
            "kvstore": {"driver": "file", "path": name},
            "metadata": {**metadata, "chunks": np.asarray(metadata["chunks"])}}

  optimizer = {"target": to_msgpack(("target",), params),
               "state": {"step": np.asarray(step, np.int32),
                         "param_states": to_msgpack(("state", "param_states"),
                                                    param_states or {})}}
  with open(os.path.join(directory, t5x.CHECKPOINT_FILE), "wb") as f:
    f.write(serialization.msgpack_serialize({"version": version, "optimizer": optimizer}))


def _model_and_params(seed=0, **overrides):
  """A tiny model and random float32 params for it (numpy; no compilation needed)."""
  model = factories.tiny_t5(**overrides)
  shapes = factories.input_shapes(BATCH)
  abstract = nn.meta.unbox(jax.eval_shape(lambda: model.init_params(jax.random.key(0), shapes)))
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (1.0 if path[-1].key == "scale" else 0.0)
      + 0.2 * rng.standard_normal(x.shape, np.float32), abstract)
  return model, params


def _with_bfloat16(params):
  """Rounds two params to bfloat16: one large (zarr) and one small (inline in msgpack)."""
  params = jax.tree.map(lambda x: x, params)
  params["token_embedder"]["embedding"] = params["token_embedder"]["embedding"].astype(
      ml_dtypes.bfloat16)
  params["decoder"]["decoder_norm"]["scale"] = (
      params["decoder"]["decoder_norm"]["scale"] + 0.001).astype(ml_dtypes.bfloat16)
  return params


def _logits(model, params, batch):
  apply = jax.jit(lambda p, b: model.module.apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"],
      b["decoder_target_tokens"], enable_dropout=False))
  return np.asarray(apply(params, batch))


def _trainer(model, optimizer=None):
  return trainer_lib.Trainer(model, optimizer or optax.adafactor(1e-3),
                             partitioning.Partitioner(parameter_partitioning_dims=2),
                             factories.input_shapes(BATCH))


def test_legacy_checkpoint_loads_sharded_and_reproduces_logits(tmp_path):
  model, params = _model_and_params()
  written = _with_bfloat16(params)
  step_dir = tmp_path / "run" / "checkpoint_1000"
  write_legacy_t5x_checkpoint(str(step_dir), written, step=1000)
  assert os.path.isdir(step_dir / "target.encoder.layers_0.attention.query.kernel")
  assert os.path.isdir(step_dir / "target.token_embedder.embedding")  # bfloat16 zarr
  assert not os.path.exists(step_dir / "target.decoder.decoder_norm.scale")  # inline

  trainer = _trainer(model)  # What INITIAL_CHECKPOINT_PATH goes through in trainer.train.
  loaded = params_io.load_params(str(step_dir), trainer.abstract_params)
  expected = jax.tree.map(lambda x: np.asarray(x, np.float32), written)
  for got, want, struct in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected),
                               jax.tree.leaves(trainer.abstract_params)):
    assert got.dtype == np.float32 and got.sharding == struct.sharding
    np.testing.assert_array_equal(np.asarray(got), want)
  embedding = loaded["token_embedder"]["embedding"]
  assert not embedding.sharding.is_fully_replicated  # really sharded

  batch = factories.synthetic_batch(BATCH)
  np.testing.assert_array_equal(_logits(model, jax.device_get(loaded), batch),
                                _logits(model, expected, batch))
  # The rounding is visible: the float32 original gives other logits.
  assert not np.array_equal(_logits(model, params, batch), _logits(model, expected, batch))


def test_format_detection(tmp_path):
  _, params = _model_and_params()
  run = tmp_path / "run"
  write_legacy_t5x_checkpoint(str(run / "checkpoint_10"), params, step=10)
  write_legacy_t5x_checkpoint(str(run / "checkpoint_20"), params, step=20)
  (run / "checkpoint_30.tmp-1700000000").mkdir()  # an unfinished t5x save
  detect = params_io.detect_checkpoint_format
  assert detect(str(run)) == (params_io.T5X_LEGACY, run / "checkpoint_20")
  assert detect(str(run / "checkpoint_10")) == (params_io.T5X_LEGACY, run / "checkpoint_10")
  assert detect(str(run / "checkpoint_10" / "checkpoint")) == (
      params_io.T5X_LEGACY, run / "checkpoint_10")
  assert t5x.LegacyCheckpoint(str(run / "checkpoint_20")).step == 20


def test_pre_version_3_bfloat16_stored_as_uint16(tmp_path):
  model, params = _model_and_params(seed=1)
  written = _with_bfloat16(params)
  write_legacy_t5x_checkpoint(str(tmp_path / "checkpoint_5"), written, version=2)
  zarr_dir = tmp_path / "checkpoint_5" / "target.token_embedder.embedding"
  store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(zarr_dir)}},
                  open=True).result()
  assert store.dtype.numpy_dtype == np.uint16
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), params)
  loaded = params_io.load_params(str(tmp_path / "checkpoint_5"), abstract)
  np.testing.assert_array_equal(np.asarray(loaded["token_embedder"]["embedding"]),
                                written["token_embedder"]["embedding"].astype(np.float32))


def test_mismatch_lists_missing_unexpected_and_wrong_shapes(tmp_path):
  _, params = _model_and_params()
  write_legacy_t5x_checkpoint(str(tmp_path / "checkpoint_1"), params)
  other, _ = _model_and_params(num_decoder_layers=1, vocab_size=512,
                               mlp_activations=("relu",))
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: other.init_params(jax.random.key(0), factories.input_shapes(BATCH))))
  with pytest.raises(ValueError) as err:
    params_io.load_params(str(tmp_path / "checkpoint_1"), abstract)
  message = str(err.value)
  assert params_io.T5X_LEGACY in message
  assert "missing from the checkpoint: decoder/layers_0/mlp/wi/kernel" in message
  assert "only in the checkpoint: decoder/layers_0/mlp/wi_0/kernel" in message
  assert ("2 of another shape: decoder/logits_dense/kernel (checkpoint (64, 384), model "
          "(64, 512)), token_embedder/embedding (checkpoint (384, 64), model (512, 64))"
          in message)
  assert "model gin" in message


def _t5x_param_states(params, opt_state, rng):
  """t5x-style param_states {v_row, v_col, v, m} with the shapes optax uses, random values."""
  factored = optimizers.factored_state(opt_state)

  def state(v_row, v_col, v):
    return {"v_row": rng.random(v_row.shape, np.float32) + 0.5,
            "v_col": rng.random(v_col.shape, np.float32) + 0.5,
            "v": rng.random(v.shape, np.float32) + 0.5, "m": np.zeros((1,), np.float32)}

  return jax.tree.map(state, factored.v_row, factored.v_col, factored.v)


def test_adafactor_statistics_carry_over(tmp_path):
  model, params = _model_and_params()
  tx = optimizers.adafactor(1e-3, min_dim_size_to_factor=32)
  trainer = _trainer(model, tx)
  state = trainer.state_from_params(
      jax.device_put(params, jax.tree.map(lambda s: s.sharding, trainer.abstract_params)))
  param_states = _t5x_param_states(params, state.opt_state, np.random.default_rng(0))
  # t5x factored this one differently (or the model changed): shapes disagree -> kept fresh.
  query = param_states["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  query["v_row"] = np.ones((7,), np.float32)
  del param_states["decoder"]["decoder_norm"]  # absent -> kept fresh
  write_legacy_t5x_checkpoint(str(tmp_path / "checkpoint_1000"), params,
                              param_states=param_states, step=1000)

  new_opt_state, report = adafactor_carry_over.load_adafactor_state(
      str(tmp_path / "checkpoint_1000"), state.opt_state)
  factored = optimizers.factored_state(new_opt_state)
  assert int(factored.count) == 1000 and report.step == 1000
  embedding_v_row = factored.v_row["token_embedder"]["embedding"]
  np.testing.assert_array_equal(np.asarray(embedding_v_row),
                                param_states["token_embedder"]["embedding"]["v_row"])
  fresh = optimizers.factored_state(state.opt_state)
  assert embedding_v_row.sharding == fresh.v_row["token_embedder"]["embedding"].sharding
  np.testing.assert_array_equal(
      np.asarray(factored.v["decoder"]["decoder_norm"]["scale"]), 0.0)
  assert "token_embedder/embedding: v_row" in report.carried
  assert any(s.startswith("encoder/layers_0/attention/query/kernel: v_row (checkpoint shape (7,)")
             for s in report.skipped)
  assert any(s.startswith("decoder/decoder_norm/scale: v (not in the checkpoint")
             for s in report.skipped)
  assert "kept fresh" in report.summary()

  # The carried state trains: the step uses the old statistics at decay 1 - 1001^-0.8.
  grads = jax.tree.map(np.ones_like, params)
  updates_fresh, _ = tx.update(grads, jax.device_get(state.opt_state), params)
  updates_carried, _ = tx.update(grads, jax.device_get(new_opt_state), params)
  kernel = ("token_embedder", "embedding")
  assert not np.allclose(updates_fresh[kernel[0]][kernel[1]],
                         updates_carried[kernel[0]][kernel[1]])


def test_adafactor_statistics_carry_over_into_a_scanned_model(tmp_path):
  """t5x's per-layer statistics land in the stacked state, layer by layer."""
  model, params = _model_and_params()
  tx = optimizers.adafactor(1e-3, min_dim_size_to_factor=32)
  param_states = _t5x_param_states(params, tx.init(params), np.random.default_rng(0))
  write_legacy_t5x_checkpoint(str(tmp_path / "checkpoint_1000"), params,
                              param_states=param_states, step=1000)
  scanned = factories.tiny_t5(scan_layers=True)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: scanned.init_params(jax.random.key(0), factories.input_shapes(BATCH))))
  opt_state = tx.init(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract))

  new_state, report = adafactor_carry_over.load_adafactor_state(
      str(tmp_path / "checkpoint_1000"), opt_state)
  stacked = optimizers.factored_state(new_state).v_row["encoder"]["layers"]
  for i in range(2):
    np.testing.assert_array_equal(
        np.asarray(stacked["mlp"]["wi_0"]["kernel"])[i],
        param_states["encoder"][f"layers_{i}"]["mlp"]["wi_0"]["kernel"]["v_row"])
  assert "encoder/layers/mlp/wi_0/kernel: v_row" in report.carried
  assert not [s for s in report.skipped if "/layers/" in s]


def test_t5x_orbax_checkpoint(tmp_path):
  model, params = _model_and_params(seed=3)
  tx = optimizers.adafactor(1e-3, min_dim_size_to_factor=32)
  opt_state = tx.init(params)
  param_states = _t5x_param_states(params, opt_state, np.random.default_rng(1))
  step_dir = tmp_path / "run" / "checkpoint_7"
  tree = {"target": params, "state": {"step": np.asarray(7, np.int32),
                                      "param_states": param_states}}
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as writer:
    writer.save(step_dir, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
  assert params_io.detect_checkpoint_format(str(tmp_path / "run")) == (
      params_io.T5X_ORBAX, step_dir / "state")

  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  loaded = params_io.load_params(str(step_dir), abstract)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, params)

  new_state, report = adafactor_carry_over.load_adafactor_state(str(step_dir), opt_state)
  assert report.step == 7 and not report.skipped
  np.testing.assert_array_equal(
      np.asarray(optimizers.factored_state(new_state).v_col["token_embedder"]["embedding"]),
      param_states["token_embedder"]["embedding"]["v_col"])


def test_adafactor_carry_over_needs_a_t5x_checkpoint(tmp_path):
  _, params = _model_and_params()
  params_io.save_params(str(tmp_path / "ours"), params)
  with pytest.raises(ValueError, match="resume it from its MODEL_DIR"):
    adafactor_carry_over.load_adafactor_state(str(tmp_path / "ours"), optax.adafactor(1e-3).init(params))


def test_convert_from_t5x_writes_our_checkpoint_and_gin(tmp_path):
  _, params = _model_and_params(seed=4)
  write_legacy_t5x_checkpoint(str(tmp_path / "checkpoint_3"), params, step=3)
  config = convert.convert_to_ours(str(tmp_path / "checkpoint_3"), str(tmp_path / "ours"), "t5x")
  assert config == factories.tiny_t5_config(dtype="bfloat16")
  gin_text = (tmp_path / "ours" / convert.MODEL_GIN_FILE).read_text()
  assert "mlp_activations = ('gelu', 'linear')" in gin_text
  fmt, read = params_io.read_params(str(tmp_path / "ours"))
  assert fmt == params_io.ORBAX_TRAIN_STATE
  jax.tree.map(np.testing.assert_array_equal, read, params)


def test_convert_accepts_the_msgpack_file_and_a_relative_output(tmp_path, monkeypatch):
  _, params = _model_and_params(seed=4)
  write_legacy_t5x_checkpoint(str(tmp_path / "checkpoint_3"), params, step=3)
  monkeypatch.chdir(tmp_path)
  convert.convert_to_ours("checkpoint_3/checkpoint", "ours", "t5x")
  _, read = params_io.read_params(str(tmp_path / "ours"))
  jax.tree.map(np.testing.assert_array_equal, read, params)


def _break_checkpoint(checkpoint, how):
  """A path to convert that is wrong in the way `how` says."""
  array = checkpoint / "target.decoder.layers_0.mlp.wo.kernel"
  if how == "array directory":
    return array
  if how == "file in an array":
    return array / ".zarray"
  if how == "zarr metadata missing":
    (array / ".zarray").unlink()
  elif how == "msgpack missing":
    (checkpoint / t5x.CHECKPOINT_FILE).unlink()
  elif how == "msgpack unreadable":
    (checkpoint / t5x.CHECKPOINT_FILE).write_bytes(b"not msgpack at all")
  elif how == "unrelated file":
    (checkpoint.parent / "notes.txt").write_text("hello")
    return checkpoint.parent / "notes.txt"
  return checkpoint


@pytest.mark.parametrize("how, expected", [
    ("array directory", r"is an array directory inside the t5x checkpoint \S*checkpoint_3, not "
                        r"the checkpoint itself; pass \S*checkpoint_3\."),
    ("file in an array", r"is a file inside the t5x checkpoint \S*checkpoint_3"),
    ("zarr metadata missing", r"lists an array whose tensorstore files are missing \(.*"
                              r"mlp\.wo\.kernel/\.zarray. does not exist\)"),
    ("msgpack missing", "holds t5x arrays .* but not the msgpack file `checkpoint`"),
    ("msgpack unreadable", "checkpoint_3/checkpoint is not a readable t5x msgpack file"),
    ("unrelated file", "notes.txt is a file, not a t5x checkpoint directory"),
])
def test_convert_names_what_is_wrong_with_a_t5x_path(tmp_path, capsys, how, expected):
  _, params = _model_and_params(seed=4)
  write_legacy_t5x_checkpoint(str(tmp_path / "checkpoint_3"), params, step=3)
  bad = _break_checkpoint(tmp_path / "checkpoint_3", how)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["convert", "--from", "t5x", "--input", str(bad), "--output",
              str(tmp_path / "ours")])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert re.search(expected, err), err
  assert "Traceback" not in err
  if how not in ("array directory", "file in an array"):
    assert "Expected a t5x checkpoint_<step> directory: the msgpack file" in err
  assert not (tmp_path / "ours").exists()


def test_spec_paths_resolve_against_the_checkpoint_dir():
  spec = {"driver": "zarr", "dtype": "float32", "metadata": {"shape": [2]},
          "kvstore": {"driver": "file", "path": "target.encoder.encoder_norm.scale"}}
  resolved = t5x.absolute_spec(spec, "/ckpts/checkpoint_5")
  assert resolved == {"driver": "zarr", "kvstore": {
      "driver": "file", "path": "/ckpts/checkpoint_5/target.encoder.encoder_norm.scale"}}
  # t5x on GCS: a placeholder bucket and (older tensorstore) the path at top level.
  gcs_spec = {"driver": "zarr", "path": "target.token_embedder.embedding",
              "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"}}
  resolved = t5x.absolute_spec(gcs_spec, "gs://t5-data/pretrained_models/t5x/x/checkpoint_9")
  assert resolved["kvstore"] == {
      "driver": "gcs", "bucket": "t5-data",
      "path": "pretrained_models/t5x/x/checkpoint_9/target.token_embedder.embedding"}
  assert gcs_spec["kvstore"]["bucket"] == "t5x-dummy-bucket"  # input left untouched


def test_trainer_carries_adafactor_state_from_initial_checkpoint(tmp_path):
  model, params = _model_and_params()
  tx = optimizers.adafactor(1e-3, min_dim_size_to_factor=32)
  fresh = _trainer(model, tx).state_from_params(params)
  param_states = _t5x_param_states(params, fresh.opt_state, np.random.default_rng(1))
  write_legacy_t5x_checkpoint(str(tmp_path / "checkpoint_500"), params,
                              param_states=param_states, step=500)
  import tasks_registry  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from instruct_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = pipeline.DatasetConfig("smoke_train", {"inputs": 16, "targets": 8}, "train",
                               batch_size=BATCH, shuffle=False, seed=0)
  state = trainer_lib.train(model=model, train_dataset_cfg=cfg, optimizer=tx,
                            model_dir=str(tmp_path / "run"), total_steps=0,
                            partitioner=partitioning.Partitioner(parameter_partitioning_dims=2),
                            initial_checkpoint_path=str(tmp_path / "checkpoint_500"),
                            carry_adafactor_state=True)
  factored = optimizers.factored_state(state.opt_state)
  assert int(factored.count) == 500
  np.testing.assert_array_equal(np.asarray(factored.v_row["token_embedder"]["embedding"]),
                                param_states["token_embedder"]["embedding"]["v_row"])
