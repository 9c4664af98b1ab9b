"""Test-wide setup: 8 fake CPU devices so that sharding is exercised without accelerators."""
import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end tests that take tens of seconds")
