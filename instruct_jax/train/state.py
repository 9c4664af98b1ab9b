"""The training state (everything that must survive a restart except the data position),
and the abstract parameter layout that training and evaluation share."""
from collections.abc import Mapping
from typing import Any, Optional

import flax
import flax.linen as nn
import jax

from instruct_jax.train import partitioning


@flax.struct.dataclass
class TrainState:
  """Step counter, parameters and optimizer state, as one pytree for jit and orbax.

  `step` counts optimizer updates already applied, so a state restored at step N
  continues with update N + 1. Params are plain (unboxed) arrays named as in t5x.
  """
  step: jax.Array
  params: Any
  opt_state: Any


def abstract_params(model: Any, partitioner: partitioning.Partitioner,
                    input_shapes: Optional[Mapping[str, tuple]] = None
                    ) -> tuple[Any, Any, Any]:
  """(abstract params carrying .sharding, param shardings, boxed abstract params).

  The one place that lays a model's parameters out on a mesh without
  allocating them: the trainer builds its state from it and evaluation loads
  checkpoints onto it, so both place every parameter the same way. Parameter
  shapes do not depend on sequence lengths, so small placeholder shapes are used
  when none are given. The boxed tree keeps the logical axis names (for
  optimizer-state shardings).
  """
  if input_shapes is None:
    rows = partitioner.data_parallel_size
    lengths = model.feature_converter(pack=False).get_model_feature_lengths(
        {"inputs": 8, "targets": 8})
    input_shapes = {name: (rows, length) for name, length in lengths.items()}
  with partitioner.activation_context():
    boxed = jax.eval_shape(lambda rng: model.init_params(rng, input_shapes),
                           jax.random.PRNGKey(0))
  shardings = partitioner.param_shardings(boxed)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  return abstract, shardings, boxed
