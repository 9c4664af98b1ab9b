"""FLAN holdout experiment gin files: one per cluster, the paper's settings, real mixtures."""
import os

import gin
import pytest
import seqio

import gin_configs
from instruct_jax.cli import gin_setup
from tasks_registry import flan

EXPERIMENTS = os.path.join(gin_configs.ROOT, "experiments", "flan")


def test_one_holdout_gin_per_cluster():
  files = {f for f in os.listdir(EXPERIMENTS) if f.endswith(".gin")}
  assert files == {"base.gin"} | {f"holdout_{c}.gin" for c in flan.CLUSTERS}


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("cluster", sorted(flan.CLUSTERS))
def test_holdout_gin_parses_with_a_model_and_names_registered_mixtures(cluster, clean_gin):
  del clean_gin
  gin_setup.parse_gin(["models/t5_1_1/tiny.gin", f"experiments/flan/holdout_{cluster}.gin"],
                ["MODEL_DIR = '/tmp/flan_gin_test'"])
  train = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
  evaluation = f"flan_holdout_{cluster}_eval"  # named in the gin file's eval comment
  assert train == f"flan_holdout_{cluster}_train"
  with open(os.path.join(gin_configs.ROOT, f"experiments/flan/holdout_{cluster}.gin")) as f:
    assert f"'{evaluation}'" in f.read()
  assert isinstance(seqio.get_mixture_or_task(train), seqio.Mixture)
  assert isinstance(seqio.get_mixture_or_task(evaluation), seqio.Mixture)
  assert gin.query_parameter("%MIXTURE_OR_TASK_MODULE") == "tasks_registry"
  # The paper's hyperparameters, starting from public T5 v1.1.
  assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 1024, "targets": 256}
  assert gin.query_parameter("%TRAIN_STEPS") == 30000
  assert gin.query_parameter("%PACKING") is True
  assert gin.query_parameter("%BATCH_SIZE") * 1024 == 8192
  assert gin.query_parameter("optimizers.learning_rate_schedule.name") == "constant"
  assert gin.query_parameter("%LEARNING_RATE") == 3e-5
  assert "t5_1_1" in gin.query_parameter("%INITIAL_CHECKPOINT_PATH")
  assert gin.query_parameter("%OPTIMIZER") == "adafactor"
