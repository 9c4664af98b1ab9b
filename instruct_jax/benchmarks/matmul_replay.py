"""How fast a step's matmuls run on their own: a bound on the fraction of the matmul peak.

The matmul peak (benchmarks/matmul_peak) is one large square matmul. A model's
matmuls have other shapes (thin projections, per-head attention products,
transposed operands in the backward pass), and the device's kernels may run
them slower. To separate that from the non-matmul work, every dot_general in
the step's jaxpr (forward, backward and optimizer alike; a scanned layer's as
many times as the scan runs) is replayed in one jitted program, each on random
operands of its shapes. The step's model FLOPs over that time is the fraction
of the peak the step could reach if everything but its matmuls took no time.
By default it errs high: dots of equal operand shapes share one array, which
may stay in cache, where the step reads distinct weights and activations.
Decoding replays with one array per program value instead (distinct_values).
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax.benchmarks import matmul_peak


@dataclasses.dataclass(frozen=True)
class Dot:
  """One dot_general of a program: operand shapes and dtypes, and how to contract them."""
  lhs: jax.ShapeDtypeStruct
  rhs: jax.ShapeDtypeStruct
  dimension_numbers: Any
  preferred_element_type: Any
  operands: tuple[int, int] = (0, 0)  # Which program values they are (equal: the same value).

  def flops(self) -> int:
    (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = self.dimension_numbers
    lhs_free = [d for i, d in enumerate(self.lhs.shape)
                if i not in lhs_contracting and i not in lhs_batch]
    rhs_free = [d for i, d in enumerate(self.rhs.shape)
                if i not in rhs_contracting and i not in rhs_batch]
    rest = [self.lhs.shape[i] for i in (*lhs_contracting, *lhs_batch)]
    return 2 * int(np.prod(lhs_free + rhs_free + rest))


def dots_of(closed_jaxpr: Any, while_trips: int = 1) -> list[Dot]:
  """Every dot_general a program (jax.make_jaxpr's result) runs, in the order it runs them.

  A scan body's dots come once per step; so do a while loop's, for
  `while_trips` steps: its trip count is not in the program (a decode that
  always runs to its length knows it).
  """
  return _dots(closed_jaxpr.jaxpr, while_trips)


def _dots(jaxpr: Any, while_trips: int) -> list[Dot]:
  dots = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      lhs, rhs = (jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars)
      dots.append(Dot(lhs, rhs, eqn.params["dimension_numbers"],
                      eqn.params.get("preferred_element_type"),
                      tuple(id(v) for v in eqn.invars)))
      continue
    inner = []
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          inner += _dots(sub, while_trips)
    steps = {"scan": eqn.params.get("length"), "while": while_trips}.get(eqn.primitive.name, 1)
    dots += inner * steps
  return dots


def seconds(dots: list[Dot], repeats: int = 3, device: jax.Device | None = None,
            distinct_values: bool = False) -> float:
  """Fastest of `repeats` runs of one jitted program running every dot once.

  Operands are random: one array per shape and dtype, or with distinct_values
  one per program value (as many bytes as the program reads: decoding, where
  reading each layer's weights is the cost). Each array is passed once per dot,
  so XLA cannot merge equal dots, and each result passes an optimization
  barrier before one element of it is kept, so no dot is simplified away.
  """
  device = device or jax.devices()[0]

  def key(dot, side):
    struct = (dot.lhs, dot.rhs)[side]
    return (dot.operands[side] if distinct_values else 0, struct.shape, str(struct.dtype))

  structs = {key(dot, side): (dot.lhs, dot.rhs)[side] for dot in dots for side in (0, 1)}
  rngs = jax.random.split(jax.random.PRNGKey(0), len(structs))
  arrays = {k: jax.device_put(jax.random.normal(rng, s.shape, jnp.float32).astype(s.dtype),
                              device)
            for (k, s), rng in zip(sorted(structs.items()), rngs)}
  operands = [(arrays[key(dot, 0)], arrays[key(dot, 1)]) for dot in dots]

  def run(operands):
    kept = [jnp.zeros((), jnp.float32)]
    for dot, (lhs, rhs) in zip(dots, operands):
      _, lhs, rhs = jax.lax.optimization_barrier((kept[-1], lhs, rhs))  # one after another
      if device.platform == "cpu":  # XLA:CPU multiplies in float32, as the program's dot does
        lhs, rhs = lhs.astype(jnp.float32), rhs.astype(jnp.float32)
      out = jax.lax.dot_general(lhs, rhs, dot.dimension_numbers,
                                preferred_element_type=dot.preferred_element_type)
      kept.append(jax.lax.optimization_barrier(out).ravel()[0].astype(jnp.float32))
    return jnp.stack(kept)

  return matmul_peak.best_seconds(run, (operands,), repeats)
