"""Test-wide setup: 8 fake CPU devices so that sharding is exercised without accelerators."""
import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # pylint: disable=wrong-import-position


@pytest.fixture
def make_checkpointer(tmp_path):
  """Builds run Checkpointers under tmp_path and closes them all at the end of the test."""
  # Imported here, after the environment above is set: it pulls in jax.
  from instruct_jax.checkpoints import run_checkpointer  # pylint: disable=g-import-not-at-top
  created = []

  def make(model_dir=None, **kwargs):
    kwargs.setdefault("save_period", 1)
    kwargs.setdefault("async_save", False)
    ckpt = run_checkpointer.Checkpointer(str(model_dir or tmp_path / "run"), **kwargs)
    created.append(ckpt)
    return ckpt

  yield make
  for ckpt in created:
    ckpt.close()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end tests that take tens of seconds")
