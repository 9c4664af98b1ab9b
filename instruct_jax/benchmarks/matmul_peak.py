"""The roofline a benchmark compares against: the device's matmul peak FLOP/s.

Accelerators with a published dense bf16 peak (models/flops.PEAK_BF16_FLOPS) use
it, and the fraction of it reached is the usual MFU. Elsewhere (CPUs, unlisted
devices) the peak is measured: the best of a few runs of one jitted square
matmul, float32 on CPU and bfloat16 on accelerators. On CPU every jax device
shares the host's cores, so the measured figure is the host's, not a device's.
"""
import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from instruct_jax.models import flops

# Square matmul sizes: large enough to reach the BLAS / MXU steady state, small
# enough to time in well under a second.
CPU_MATMUL_SIZE = 2048
ACCELERATOR_MATMUL_SIZE = 8192


@dataclasses.dataclass(frozen=True)
class MatmulPeak:
  """flops_per_second of one device (of the host on CPU); `published` False when measured."""
  flops_per_second: float
  published: bool
  device_kind: str
  host_wide: bool  # CPU: the devices share the host's cores, so one peak covers them all.

  @property
  def fraction_name(self) -> str:
    """What the fraction of this peak is called in reports."""
    return "mfu" if self.published else "fraction_of_measured_matmul_peak"

  def report_lines(self) -> dict[str, Any]:
    """The peak and where it comes from, as benchmark report entries."""
    source = "published" if self.published else (
        "measured on the host, float32" if self.host_wide else "measured, bfloat16")
    return {"matmul_peak_tflops_per_second": self.flops_per_second / 1e12,
            "matmul_peak_source": source}

  def fraction(self, flops_per_second: float, num_devices: int) -> float:
    """The share of the peak that `flops_per_second` (all devices together) reaches."""
    per_peak = flops_per_second if self.host_wide else flops_per_second / num_devices
    return per_peak / self.flops_per_second


def measure(device: jax.Device, size: int | None = None, repeats: int = 5) -> float:
  """Best FLOP/s of a jitted [size, size] x [size, size] matmul over `repeats` runs."""
  cpu = device.platform == "cpu"
  size = size or (CPU_MATMUL_SIZE if cpu else ACCELERATOR_MATMUL_SIZE)
  dtype = jnp.float32 if cpu else jnp.bfloat16
  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.device_put(jax.random.normal(k, (size, size), dtype), device) for k in keys)
  return 2 * size**3 / best_seconds(jnp.matmul, (a, b), repeats)


def best_seconds(fn: Callable[..., jax.Array], args: tuple[Any, ...], repeats: int) -> float:
  """Fastest of `repeats` runs of jitted `fn(*args)`, after one that compiles and warms up."""
  jitted = jax.jit(fn)
  jitted(*args).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jitted(*args).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return best


def device_peak(device: jax.Device | None = None) -> MatmulPeak:
  """The published peak of `device` (default: the first) when known, else a measured one."""
  device = device or jax.devices()[0]
  published = flops.peak_flops_per_device(device)
  host_wide = device.platform == "cpu"
  if published:
    return MatmulPeak(published, True, device.device_kind, host_wide)
  return MatmulPeak(measure(device), False, device.device_kind, host_wide)
