"""How fast a step's matmuls run on their own: a bound on the fraction of the matmul peak.

The matmul peak (benchmarks/matmul_peak) is one large square matmul. A model's
matmuls have other shapes (thin projections, per-head attention products,
transposed operands in the backward pass), and the device's kernels may run
them slower. To separate that from the non-matmul work, every dot_general in
the step's jaxpr (forward, backward and optimizer alike; a scanned layer's as
many times as the scan runs) is replayed in one jitted program, each on random
operands of its shapes. The step's model FLOPs over that time is the fraction
of the peak the step could reach if everything but its matmuls took no time.
It errs high: dots of equal operand shapes share one array, which may stay in
cache, where the step reads distinct weights and activations.
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

  def flops(self) -> int:
    (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = self.dimension_numbers
    lhs_free = [d for i, d in enumerate(self.lhs.shape)
                if i not in lhs_contracting and i not in lhs_batch]
    rhs_free = [d for i, d in enumerate(self.rhs.shape)
                if i not in rhs_contracting and i not in rhs_batch]
    rest = [self.lhs.shape[i] for i in (*lhs_contracting, *lhs_batch)]
    return 2 * int(np.prod(lhs_free + rhs_free + rest))


def dots_of(closed_jaxpr: Any) -> list[Dot]:
  """Every dot_general a program (jax.make_jaxpr's result) runs, a scan body's once per step."""
  dots: list[Dot] = []
  _collect(closed_jaxpr.jaxpr, 1, dots)
  return dots


def _collect(jaxpr: Any, times: int, dots: list[Dot]) -> None:
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      lhs, rhs = (jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars)
      dots.extend([Dot(lhs, rhs, eqn.params["dimension_numbers"],
                       eqn.params.get("preferred_element_type"))] * times)
      continue
    repeat = times * eqn.params["length"] if eqn.primitive.name == "scan" else times
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, "eqns"):
          _collect(inner, repeat, dots)


def seconds(dots: list[Dot], repeats: int = 3, device: jax.Device | None = None) -> float:
  """Fastest of `repeats` runs of one jitted program running every dot once.

  Operands are random, one array per distinct shape and dtype (passed once per
  dot, so XLA cannot merge equal dots); each result passes an optimization
  barrier before one element of it is kept, so no dot is simplified away.
  """
  device = device or jax.devices()[0]
  structs = sorted({s for dot in dots for s in (dot.lhs, dot.rhs)},
                   key=lambda s: (s.shape, str(s.dtype)))
  keys = jax.random.split(jax.random.PRNGKey(0), len(structs))
  arrays = {s: jax.device_put(jax.random.normal(k, s.shape, jnp.float32).astype(s.dtype), device)
            for s, k in zip(structs, keys)}
  operands = [(arrays[dot.lhs], arrays[dot.rhs]) for dot in dots]

  def run(operands):
    kept = []
    for dot, (lhs, rhs) in zip(dots, operands):
      out = jax.lax.dot_general(lhs, rhs, dot.dimension_numbers,
                                preferred_element_type=dot.preferred_element_type)
      kept.append(jax.lax.optimization_barrier(out).ravel()[0].astype(jnp.float32))
    return jnp.stack(kept)

  return matmul_peak.best_seconds(run, (operands,), repeats)
