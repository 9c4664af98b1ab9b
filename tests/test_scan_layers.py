"""Layer scanning: scanned and unrolled stacks compute the same thing and share checkpoints."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio

from instruct_jax.checkpoints import conversion
from instruct_jax.checkpoints import layer_layout
from instruct_jax.checkpoints import params_io
from instruct_jax.models import decoder_only
from instruct_jax.models import decoding
from instruct_jax.models import encoder_decoder
from instruct_jax.models.networks import decoder
from instruct_jax.models.networks import llama
from instruct_jax.models.networks import t5
from instruct_jax.train import partitioning
from instruct_jax.train import state as state_lib
from instruct_jax.train import trainer as trainer_lib
import factories
import test_interop_t5x

TINY = dict(vocab_size=384, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, dtype="float32")
ROWS, INPUT_LENGTH, TARGET_LENGTH = 4, 8, 6
VOCAB = seqio.ByteVocabulary()


def _t5(scan, loss_normalizing_factor=None, **overrides):
  config = t5.T5Config(num_encoder_layers=3, num_decoder_layers=2, scan_layers=scan,
                       **{**TINY, **overrides})
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config), VOCAB, VOCAB,
                                             loss_normalizing_factor=loss_normalizing_factor)


def _decoder(scan, loss_normalizing_factor=None, **overrides):
  config = decoder.DecoderConfig(num_layers=3, scan_layers=scan, **{**TINY, **overrides})
  return decoder_only.DecoderOnlyModel(decoder.DecoderOnly(config), VOCAB,
                                       loss_normalizing_factor=loss_normalizing_factor,
                                       inputs_bidirectional_attention=True)


def _llama(scan, loss_normalizing_factor=None, **overrides):
  """Grouped-query attention, rotary positions and a sliding window, as a causal LM."""
  config = llama.LlamaConfig(num_layers=3, num_kv_heads=2, sliding_window=6, scan_layers=scan,
                             **{**TINY, **overrides})
  return decoder_only.DecoderOnlyModel(llama.Llama(config), VOCAB,
                                       loss_normalizing_factor=loss_normalizing_factor)


def _t5_batch(seed):
  rng = np.random.RandomState(seed)
  inputs = rng.randint(3, 259, (ROWS, INPUT_LENGTH)).astype(np.int32)
  inputs[1, 5:] = 0
  targets = rng.randint(3, 259, (ROWS, TARGET_LENGTH)).astype(np.int32)
  targets[0, 4:] = 0
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": _shift_right(targets),
          "decoder_target_tokens": targets, "decoder_loss_weights": (targets > 0).astype(np.int32)}


def _decoder_batch(seed, length=12):
  """Prefix-LM rows (prompt, EOS, continuation) as seqio's PrefixLM converter lays them out."""
  rng = np.random.RandomState(seed)
  targets = rng.randint(3, 259, (ROWS, length)).astype(np.int32)
  causal = np.zeros_like(targets)
  for row, prompt in enumerate((2, 5, 4, 3)):
    targets[row, prompt - 1] = 1
    causal[row, :prompt + 1] = 1
  return {"decoder_input_tokens": _shift_right(targets), "decoder_target_tokens": targets,
          "decoder_causal_attention": causal,
          "decoder_loss_weights": (1 - causal).astype(np.int32)}


def _shift_right(targets):
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


FAMILIES = {"t5": (_t5, _t5_batch), "decoder_only": (_decoder, _decoder_batch),
            "llama": (_llama, _decoder_batch)}


def _init(model, batch, seed=0):
  shapes = {k: v.shape for k, v in batch.items()}
  return jax.jit(lambda rng: nn.meta.unbox(model.init_params(rng, shapes)))(
      jax.random.PRNGKey(seed))


def _abstract(model, batch):
  """The param tree's shapes only, e.g. as the layout to map into."""
  shapes = {k: v.shape for k, v in batch.items()}
  return jax.eval_shape(lambda: model.init_params(jax.random.PRNGKey(0), shapes))


def _as_layout(tree, like):
  return jax.tree.map(jnp.asarray, layer_layout.materialize(layer_layout.match_layout(tree, like)))


def _assert_trees_close(got, want, rtol, atol, what):
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol,
                               err_msg=f"{what} {jax.tree_util.keystr(path)}")


def test_scanned_params_stack_each_layer_on_a_leading_unsplit_axis():
  batch = _t5_batch(0)
  unrolled = _init(_t5(False), batch)
  boxed = _abstract(_t5(True), batch)
  scanned = nn.meta.unbox(boxed)
  assert "layers_0" not in scanned["encoder"] and "layers" in scanned["encoder"]
  assert scanned["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (3, 32, 64)
  assert scanned["decoder"]["layers"]["self_attention"]["query"]["kernel"].shape == (2, 32, 32)
  spec = nn.get_partition_spec(boxed)["encoder"]["layers"]["mlp"]["wi_0"]["kernel"]
  assert tuple(spec) == ("layers", "embed", "mlp")
  # FSDP + tensor parallel split embed and mlp; the layer axis is never split.
  partitioner = partitioning.Partitioner(num_partitions=2, parameter_partitioning_dims=2)
  sharding = partitioner.param_shardings(boxed)["encoder"]["layers"]["mlp"]["wi_0"]["kernel"]
  assert tuple(sharding.spec) == (None, "data", "model")

  stacked = _as_layout(unrolled, scanned)
  assert jax.tree.map(lambda x: x.shape, stacked) == jax.tree.map(lambda x: x.shape, scanned)
  np.testing.assert_array_equal(stacked["encoder"]["layers"]["mlp"]["wo"]["kernel"][2],
                                unrolled["encoder"]["layers_2"]["mlp"]["wo"]["kernel"])
  _assert_trees_close(_as_layout(stacked, unrolled), unrolled, 0, 0, "round trip")
  _assert_trees_close(layer_layout.materialize(layer_layout.to_per_layer(stacked)), unrolled,
                      0, 0, "to_per_layer")


@pytest.mark.parametrize("family,remat_policy",
                         [("t5", "full"), ("decoder_only", "minimal"), ("llama", "full")])
def test_scanned_and_unrolled_train_identically(family, remat_policy):
  """Same losses and gradients (1e-6, float32) for 3 optimizer steps, remat inside the scan.

  The loss is a per-token mean, so gradients have the scale an absolute
  tolerance is meaningful for (a summed loss scales them with the token count).
  """
  make, make_batch = FAMILIES[family]
  models = {scan: make(scan, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
                       remat_policy=remat_policy) for scan in (False, True)}
  batches = [make_batch(seed) for seed in range(3)]
  params = {False: _init(models[False], batches[0])}
  params[True] = _as_layout(params[False], nn.meta.unbox(_abstract(models[True], batches[0])))
  # Plain SGD: the update is linear in the gradient, so float32 round-off in the
  # gradients stays round-off in the params (Adam's first steps are ~ sign(g) and
  # would turn a 1e-9 difference in a near-zero gradient into a full step).
  optimizer = optax.sgd(0.5)
  opt_state = {scan: optimizer.init(p) for scan, p in params.items()}
  grad_fns = {scan: jax.jit(jax.value_and_grad(m.loss_fn, has_aux=True), static_argnums=2)
              for scan, m in models.items()}
  for step, batch in enumerate(batches):
    results = {}
    for scan in (False, True):
      (loss, _), grads = grad_fns[scan](params[scan], batch, None)
      results[scan] = (loss, grads)
      updates, opt_state[scan] = optimizer.update(grads, opt_state[scan], params[scan])
      params[scan] = optax.apply_updates(params[scan], updates)
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6,
                               err_msg=f"loss at step {step}")
    _assert_trees_close(_as_layout(results[True][1], results[False][1]), results[False][1],
                        1e-6, 1e-6, f"gradient at step {step}")
  _assert_trees_close(_as_layout(params[True], params[False]), params[False], 1e-5, 1e-6,
                      "params after 3 steps")


@pytest.mark.parametrize("family", FAMILIES)
def test_scanned_and_unrolled_decode_identically(family):
  """The KV cache is stacked after the batch axis, so greedy and beam search just work."""
  make, make_batch = FAMILIES[family]
  batch = make_batch(0)
  unrolled, scanned = make(False), make(True)
  params = _init(unrolled, batch, seed=1)
  scanned_params = _as_layout(params, nn.meta.unbox(_abstract(scanned, batch)))
  for cfg in (decoding.DecodeConfig(max_decode_length=5),
              decoding.DecodeConfig(method="beam", num_beams=3, max_decode_length=5)):
    want = jax.jit(unrolled.predict_batch, static_argnums=2)(params, batch, cfg)
    got = jax.jit(scanned.predict_batch, static_argnums=2)(scanned_params, batch, cfg)
    np.testing.assert_array_equal(got[0], want[0], err_msg=cfg.method)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, err_msg=cfg.method)


def test_checkpoints_load_across_layouts_and_export_per_layer(tmp_path):
  """A scanned run's params load into an unrolled model and back, export to HF per layer,
  and per-layer t5x / HF checkpoints load into a scanned model."""
  batch = _t5_batch(0)
  unrolled, scanned = _t5(False), _t5(True)
  params = _init(unrolled, batch, seed=2)
  partitioner = partitioning.Partitioner(num_partitions=2, parameter_partitioning_dims=2)
  abstract = {scan: state_lib.abstract_params(m, partitioner)[0]
              for scan, m in ((False, unrolled), (True, scanned))}

  params_io.save_params(str(tmp_path / "unrolled"), params)
  loaded_scanned = params_io.load_params(str(tmp_path / "unrolled"), abstract[True])
  assert loaded_scanned["decoder"]["layers"]["mlp"]["wo"]["kernel"].sharding == (
      abstract[True]["decoder"]["layers"]["mlp"]["wo"]["kernel"].sharding)
  _assert_trees_close(_as_layout(loaded_scanned, params), params, 0, 0, "unrolled -> scanned")

  params_io.save_params(str(tmp_path / "scanned"), jax.device_get(loaded_scanned))
  loaded_unrolled = params_io.load_params(str(tmp_path / "scanned"), abstract[False])
  _assert_trees_close(loaded_unrolled, params, 0, 0, "scanned -> unrolled")
  fmt, read = params_io.read_params(str(tmp_path / "scanned"))
  assert fmt == params_io.ORBAX_TRAIN_STATE and "layers_2" in read["encoder"]
  _assert_trees_close(read, params, 0, 0, "read_params of a scanned checkpoint")

  conversion.convert_to_hf(str(tmp_path / "scanned"), str(tmp_path / "hf"))
  from_hf = params_io.load_params(str(tmp_path / "hf"), abstract[True])
  _assert_trees_close(_as_layout(from_hf, params), params, 0, 0, "scanned -> HF -> scanned")

  # Released t5x checkpoints are per layer and read lazily, slice by slice.
  test_interop_t5x.write_legacy_t5x_checkpoint(str(tmp_path / "t5x"), params)
  from_t5x = params_io.load_params(str(tmp_path / "t5x"), abstract[True])
  _assert_trees_close(_as_layout(from_t5x, params), params, 0, 0, "t5x -> scanned")


def test_resuming_a_run_with_the_other_layout_names_scan_layers(make_checkpointer):
  shapes = factories.input_shapes(batch=8)
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainers = {scan: trainer_lib.Trainer(factories.tiny_t5(scan_layers=scan),
                                        optax.adafactor(1e-2), partitioner, shapes)
              for scan in (False, True)}
  checkpointer = make_checkpointer()
  checkpointer.save(0, trainers[True].init_state(0), force=True)
  checkpointer.wait_until_finished()
  with pytest.raises(ValueError, match="scan_layers=True"):
    checkpointer.restore(trainers[False].abstract_state)


def _losses(trainer, state, batches):
  history = []
  for batch in batches:
    batch = {k: jax.device_put(v, trainer.partitioner.batch_sharding) for k, v in batch.items()}
    state, metrics = trainer.train_step(state, batch)
    history.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  return history


def test_scanned_t5_trains_like_unrolled_with_fsdp_and_tensor_parallel():
  """8 fake devices, data=4 x model=2 with FSDP: same losses as one unrolled device."""
  batches = [factories.synthetic_batch(8, seed=i) for i in range(2)]
  shapes = factories.input_shapes(batch=8)
  unrolled = trainer_lib.Trainer(factories.tiny_t5(), optax.adam(1e-2),
                                 partitioning.Partitioner(devices=jax.devices()[:1]), shapes)
  scanned = trainer_lib.Trainer(
      factories.tiny_t5(scan_layers=True), optax.adam(1e-2),
      partitioning.Partitioner(num_partitions=2, parameter_partitioning_dims=2), shapes)
  state = unrolled.init_state(0)
  params = _as_layout(jax.device_get(state.params), scanned.abstract_params)
  scanned_state = scanned.state_from_params(
      jax.device_put(params, scanned.state_shardings.params))
  np.testing.assert_allclose(_losses(scanned, scanned_state, batches),
                             _losses(unrolled, state, batches), rtol=1e-5)
