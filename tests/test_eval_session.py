"""Every evaluation client honours the configured seed: the evaluator's and the decoding rng's.

The five clients (eval, symbol-eval, select, infer, the training hook) share one
EvalSession; this pins that none of them drops the seed on the way to
seqio.Evaluator or to the ModelRunner that decodes. seqio.Evaluator is replaced
by a recorder and decoding by a stub, so nothing compiles.
"""
import concurrent.futures
import json
import types

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio

import tasks_registry  # noqa: F401  (registers the smoke tasks)
from instruct_jax.checkpoints import params_io
from instruct_jax.data import pipeline
from instruct_jax.eval import evaluation
from instruct_jax.eval import infer_eval
from instruct_jax.eval import inference
from instruct_jax.eval import runner as runner_lib
from instruct_jax.eval import selection
from instruct_jax.eval import symbol_suites
from instruct_jax.train import partitioning

import factories

DECODE_SEED = 7   # the client's `seed` (RANDOM_SEED in the gin files)
DATA_SEED = 11    # a DatasetConfig's own seed (eval / select), for the evaluator
TASK = "smoke_add_digits"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A MODEL_DIR with one params-only checkpoint_5 of a tiny T5."""
  model = factories.tiny_t5(emb_dim=32, head_dim=8, mlp_dim=64)
  params = nn.meta.unbox(jax.jit(lambda rng: model.init_params(
      rng, factories.input_shapes(2)))(jax.random.PRNGKey(0)))
  model_dir = tmp_path_factory.mktemp("session_run")
  params_io.save_params(str(model_dir / "checkpoint_5"), params)
  return model, params, model_dir


@pytest.fixture
def seeds(monkeypatch):
  """{"evaluator": [seed of every seqio.Evaluator built], "decoding": [every runner's rng]}."""
  seen = {"evaluator": [], "decoding": []}

  class RecordingEvaluator:
    def __init__(self, *, mixture_or_task_name, seed, **kwargs):
      del kwargs
      seen["evaluator"].append(seed)
      self.eval_tasks = [mixture_or_task_name]

    def evaluate(self, *, compute_metrics, step, predict_fn, score_fn):
      del compute_metrics, step, predict_fn, score_fn
      future = concurrent.futures.Future()
      future.set_result({TASK: {"accuracy": 50.0}})
      return future, None

  class RecordingRunner(runner_lib.ModelRunner):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      seen["decoding"].append(self.rng)

    def predict(self, params, dataset, progress=None):
      return [(int(index), np.asarray([1]), 0.0) for index, _ in dataset.as_numpy_iterator()]

  monkeypatch.setattr(seqio, "Evaluator", RecordingEvaluator)
  monkeypatch.setattr(runner_lib, "ModelRunner", RecordingRunner)
  return seen


def _dataset_cfg():
  return pipeline.DatasetConfig(mixture_or_task_name=TASK, task_feature_lengths=None,
                                split="validation", batch_size=1, shuffle=False,
                                seed=DATA_SEED)


def _partitioner():
  return partitioning.Partitioner(devices=jax.devices()[:1])


def _eval(model, params, model_dir, tmp_path):
  evaluation.evaluate(model=model, dataset_cfg=_dataset_cfg(),
                      checkpoint_path=str(model_dir / "checkpoint_5"),
                      partitioner=_partitioner(), output_dir=str(tmp_path), seed=DECODE_SEED)
  return DATA_SEED


def _symbol_eval(model, params, model_dir, tmp_path):
  suites = symbol_suites.SuiteLayout(runs=(symbol_suites.EvalRun(TASK),),
                                     cells={TASK: symbol_suites.Cell("Arithmetic", "add", "x")})
  symbol_suites.evaluate_suites(model=model, checkpoint_path=str(model_dir / "checkpoint_5"),
                                partitioner=_partitioner(), suites=suites, batch_size=1,
                                output_dir=str(tmp_path), seed=DECODE_SEED)
  return DECODE_SEED


def _select(model, params, model_dir, tmp_path):
  chosen = selection.select_checkpoint(model=model, model_dir=str(model_dir),
                                       dataset_cfg=_dataset_cfg(), partitioner=_partitioner(),
                                       output_dir=str(tmp_path), seed=DECODE_SEED)
  assert chosen.best_step == 5
  return DATA_SEED


def _infer(model, params, model_dir, tmp_path):
  (tmp_path / "in.jsonl").write_text(json.dumps({"inputs": "1 + 2?"}) + "\n")
  inference.infer_file(model=model, checkpoint_path=str(model_dir),
                       input_file=str(tmp_path / "in.jsonl"),
                       output_file=str(tmp_path / "out.jsonl"), partitioner=_partitioner(),
                       batch_size=1, seed=DECODE_SEED)
  return None  # A file has no seqio task: no evaluator.


def _infer_eval_hook(model, params, model_dir, tmp_path):
  hook = infer_eval.InferEval(TASK, batch_size=1, model_dir=str(tmp_path), seed=DECODE_SEED)
  trainer = types.SimpleNamespace(model=model, partitioner=_partitioner())
  assert hook(trainer, params, 3) == {f"inference_eval/{TASK}/accuracy": 50.0}
  return DECODE_SEED


@pytest.mark.parametrize("client", [_eval, _symbol_eval, _select, _infer, _infer_eval_hook],
                         ids=["eval", "symbol-eval", "select", "infer", "infer_eval_hook"])
def test_every_client_honours_the_configured_seed(client, run_dir, seeds, tmp_path):
  model, params, model_dir = run_dir
  evaluator_seed = client(model, params, model_dir, tmp_path)
  assert seeds["evaluator"] == ([] if evaluator_seed is None else [evaluator_seed])
  assert len(seeds["decoding"]) == 1
  np.testing.assert_array_equal(seeds["decoding"][0], jax.random.PRNGKey(DECODE_SEED))
