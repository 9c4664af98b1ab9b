"""The training state: everything that must survive a restart except the data position."""
from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """Step counter, parameters and optimizer state, as one pytree for jit and orbax.

  `step` counts optimizer updates already applied, so a state restored at step N
  continues with update N + 1. Params are plain (unboxed) arrays named as in t5x.
  """
  step: jax.Array
  params: Any
  opt_state: Any
