"""Logical-axis rules, shardings, and numerical equivalence across mesh layouts."""
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from instruct_jax.train import partitioning
from instruct_jax.train import trainer as trainer_lib
import factories


def test_standard_rules_data_parallel_and_fsdp():
  dp = dict(partitioning.standard_logical_axis_rules(1))
  fsdp = dict(partitioning.standard_logical_axis_rules(2))
  assert dp["batch"] == "data" and dp["embed"] is None
  assert fsdp["embed"] == "data" and fsdp["heads"] == "model" and fsdp["vocab"] == "model"
  with pytest.raises(ValueError, match="PARAMETER_PARTITIONING_DIMS"):
    partitioning.standard_logical_axis_rules(3)


def test_num_partitions_must_divide_devices():
  with pytest.raises(ValueError, match="NUM_PARTITIONS=3"):
    partitioning.Partitioner(num_partitions=3)


def test_mesh_shapes():
  assert dict(partitioning.Partitioner().mesh.shape) == {"data": 8, "model": 1}
  assert dict(partitioning.Partitioner(num_partitions=2).mesh.shape) == {"data": 4, "model": 2}
  one = partitioning.Partitioner(devices=jax.devices()[:1])
  assert dict(one.mesh.shape) == {"data": 1, "model": 1}


def test_param_and_optimizer_state_shardings_follow_logical_axes():
  model = factories.tiny_t5()
  part = partitioning.Partitioner(num_partitions=2, parameter_partitioning_dims=2)
  trainer = trainer_lib.Trainer(model, optax.adafactor(1e-3, min_dim_size_to_factor=32),
                                part, factories.input_shapes(batch=8))
  params = trainer.state_shardings.params
  # embedding [vocab, embed]: vocab over model, embed over data (FSDP).
  assert params["token_embedder"]["embedding"].spec == P("model", "data")
  # query kernel [embed, joined_kv].
  assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].spec == P("data", "model")
  # relative position table [heads, buckets]: heads over model.
  assert params["encoder"]["relpos_bias"]["rel_embedding"].spec == P("model", None)
  # Adafactor's factored statistics keep the surviving dimension's layout.
  factored = trainer.state_shardings.opt_state[0]
  wo = factored.v_row["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  assert wo.spec in (P("model"), P("data"))
  assert factored.count.spec == P()


def test_indivisible_dimension_stays_unsplit():
  part = partitioning.Partitioner(num_partitions=2, parameter_partitioning_dims=2)
  assert part.sharding_for(("vocab", "embed"), (259, 10)).spec == P(None, None)
  assert part.sharding_for(("vocab", "embed"), (259, 12)).spec == P(None, "data")
  assert part.sharding_for(("vocab", "embed"), (384, 12)).spec == P("model", "data")


LAYOUTS = {
    "data8": dict(num_partitions=1, parameter_partitioning_dims=1),
    "data4_model2": dict(num_partitions=2, parameter_partitioning_dims=1),
    "fsdp8": dict(num_partitions=1, parameter_partitioning_dims=2),
    "fsdp4_model2": dict(num_partitions=2, parameter_partitioning_dims=2),
}


def _run_three_steps(partitioner, model, batches):
  trainer = trainer_lib.Trainer(model, optax.adafactor(1e-2), partitioner,
                                factories.input_shapes(batch=8))
  state = trainer.init_state(0)
  history = []
  for batch in batches:
    batch = {k: jax.device_put(v, partitioner.batch_sharding) for k, v in batch.items()}
    state, metrics = trainer.train_step(state, batch)
    history.append((float(metrics["loss"]), float(metrics["grad_norm"]),
                    jax.device_get(state.params)))
  return history


@pytest.mark.slow
@pytest.mark.parametrize("make_model", [factories.tiny_t5, factories.tiny_llama],
                         ids=["t5", "llama"])
def test_same_losses_gradients_and_params_on_every_layout(make_model):
  model = make_model(dropout_rate=0.1)
  batches = [factories.synthetic_batch(8, seed=i) for i in range(3)]
  reference = _run_three_steps(partitioning.Partitioner(devices=jax.devices()[:1]), model,
                               batches)
  for name, kwargs in LAYOUTS.items():
    got = _run_three_steps(partitioning.Partitioner(**kwargs), model, batches)
    for step, ((loss, gnorm, params), (ref_loss, ref_gnorm, ref_params)) in enumerate(
        zip(got, reference)):
      np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=f"{name} step {step}")
      np.testing.assert_allclose(gnorm, ref_gnorm, rtol=1e-5, err_msg=f"{name} step {step}")
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                   params, ref_params)


def _state_bytes_per_device(parameter_partitioning_dims):
  part = partitioning.Partitioner(parameter_partitioning_dims=parameter_partitioning_dims)
  model = factories.tiny_t5()
  trainer = trainer_lib.Trainer(model, optax.adafactor(1e-3), part,
                                factories.input_shapes(batch=8))
  state = trainer.init_state(0)
  batch = {k: jax.device_put(v, part.batch_sharding)
           for k, v in factories.synthetic_batch(8).items()}
  compiled = trainer.compile_train_step(state, batch)
  batch_bytes = sum(x.nbytes for x in batch.values()) // 8
  return compiled.memory_analysis().argument_size_in_bytes - batch_bytes


def test_fsdp_cuts_per_device_state_memory_at_least_6x():
  data_parallel = _state_bytes_per_device(1)
  fsdp = _state_bytes_per_device(2)
  print(f"per-device params+optimizer bytes: data-parallel {data_parallel}, FSDP {fsdp}, "
        f"ratio {data_parallel / fsdp:.2f}")
  assert data_parallel / fsdp >= 6
