"""Two local processes x 2 CPU devices (jax.distributed + gloo) train like one process x 4.

This is the multi-process path the launch scripts use: the same CLI flags
(--coordinator_address --num_processes --process_id) and the same gin run file.
Data is read unshuffled and unpacked from one task, so both layouts see the same
examples in every global batch (each host reads every other example).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(model_dir, *extra):
  return [sys.executable, "-m", "instruct_jax", "train", "--gin_file=runs/smoke.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='smoke_reverse_word'",
          "--gin.SHUFFLE_TRAIN_EXAMPLES=False", "--gin.PACKING=False", "--gin.BATCH_SIZE=8",
          f"--gin.TRAIN_STEPS={STEPS}", "--gin.LOG_PERIOD=1", "--gin.EVAL_PERIOD=None",
          "--gin.PARAMETER_PARTITIONING_DIMS=2", *extra]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return env


def _losses(model_dir):
  records = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
  return [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  single = tmp_path / "single"
  result = subprocess.run(_command(single), cwd=REPO, env=_env(4), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  multi = tmp_path / "multi"
  address = f"127.0.0.1:{_free_port()}"
  processes = [
      subprocess.Popen(_command(multi, f"--coordinator_address={address}",
                                "--num_processes=2", f"--process_id={i}"),
                       cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]

  assert len(_losses(single)) == STEPS
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  assert os.path.isdir(multi / f"checkpoint_{STEPS}")
