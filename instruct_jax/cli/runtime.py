"""Process setup before any command runs: multi-host joining, TensorFlow kept off GPUs."""
import glob
import os
from typing import Optional

from instruct_jax.errors import UsageError


def _on_cloud_tpu_vm() -> bool:
  """TPU VMs expose their chips as /dev/accel* or VFIO devices; jax finds the slice itself."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
              or os.environ.get("TPU_WORKER_HOSTNAMES"))


def initialize_multihost(coordinator_address: Optional[str], num_processes: Optional[int],
                         process_id: Optional[int]) -> None:
  """Joins a multi-process job: explicit flags, or auto-detected on Cloud TPU VMs."""
  import jax  # pylint: disable=g-import-not-at-top  # Slow to import; --help must stay fast.
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise UsageError("--coordinator_address needs --num_processes and --process_id too.")
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif num_processes is not None or process_id is not None:
    raise UsageError("--num_processes/--process_id need --coordinator_address=HOST:PORT too.")
  elif _on_cloud_tpu_vm():
    jax.distributed.initialize()


def keep_tensorflow_off_accelerators() -> None:
  """seqio's tf.data input runs on the host; TF must not grab GPU memory JAX needs."""
  if not glob.glob("/dev/nvidia[0-9]*"):
    return  # Asking TF about GPUs on a machine without any only logs CUDA errors.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
