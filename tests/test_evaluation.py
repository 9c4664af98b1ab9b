"""Model runner, eval session, rank classification, infer-eval hook, reports, `instruct-jax eval`."""

import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks_registry  # noqa: F401  (registers the smoke tasks)
from instruct_jax import cli
from instruct_jax.data import rank_classification
from instruct_jax.errors import UsageError
from instruct_jax.models import decoding
from instruct_jax.eval import infer_eval as infer_eval_lib
from instruct_jax.eval import metrics
from instruct_jax.eval import runner as runner_lib
from instruct_jax.eval import session as session_lib
from instruct_jax.eval.reports import evaluation as reports
from instruct_jax.models.networks import decoder
from instruct_jax.models import decoder_only
from instruct_jax.train import partitioning
from instruct_jax.train import state as state_lib
from tasks_registry import smoke

import factories

VOCAB = seqio.ByteVocabulary()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"inputs": 64, "targets": 8}


def _tiny_t5():
  return factories.tiny_t5(emb_dim=32, head_dim=8, mlp_dim=64)


def _params(model, partitioner, shapes=None):
  """Fresh params laid out like evaluate() lays out checkpoint params."""
  abstract, shardings, _ = state_lib.abstract_params(model, partitioner)
  shapes = shapes or {k: v.shape for k, v in factories.synthetic_batch(8).items()}
  with partitioner.activation_context():
    params = jax.jit(lambda rng: nn.meta.unbox(model.init_params(rng, shapes)),
                     out_shardings=shardings)(jax.random.PRNGKey(0))
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, abstract, params)))
  return params, shardings


def _one_device():
  # Compiles much faster than 8-way SPMD; the mesh path is covered below and in
  # test_decoding.py.
  return partitioning.Partitioner(devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def t5_session():
  """(model, params, EvalSession); the session's runner is the ModelRunner under test."""
  partitioner = _one_device()
  model = _tiny_t5()
  params, _ = _params(model, partitioner)
  return model, params, session_lib.EvalSession(model, partitioner, batch_size=8)


def _examples(model, num, lengths=LENGTHS):
  """num smoke_add_digits validation examples as enumerated model features."""
  task = seqio.get_mixture_or_task("smoke_add_digits")
  dataset = task.get_dataset(lengths, split="validation", shuffle=False).take(num)
  return model.feature_converter(pack=False)(dataset, lengths).enumerate()


def _stack(dataset):
  rows = [features for _, features in dataset.as_numpy_iterator()]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# --- ModelRunner --------------------------------------------------------------------


def test_runner_batches_pads_and_keeps_every_example(t5_session):
  model, params, session = t5_session
  runner = session.runner
  dataset = _examples(model, 11)  # one full batch of 8 and a padded one of 3
  batch = _stack(dataset)
  scores = runner.score(params, dataset)
  assert [index for index, _ in scores] == list(range(11))
  expected = jax.jit(model.score_batch)(params, batch)
  np.testing.assert_allclose([s for _, s in scores], expected, rtol=1e-5, atol=1e-4)

  seen = []
  predictions = runner.predict(params, dataset, progress=seen.append)
  assert seen == [8, 11]
  tokens = np.stack([t for _, t, _ in predictions])
  direct, direct_scores = jax.jit(lambda p, b: model.predict_batch(p, b))(params, batch)
  np.testing.assert_array_equal(tokens, direct)
  np.testing.assert_allclose([s for _, _, s in predictions], direct_scores, rtol=1e-5,
                             atol=1e-4)
  assert runner_lib.trim_at_eos(np.asarray([5, 6, 1, 0]), 1) == [5, 6, 1]
  assert runner_lib.trim_at_eos(np.asarray([5, 6, 0, 0]), 1) == [5, 6]


def test_runner_rejects_batch_not_divisible_by_data_parallel(t5_session):
  model, _, _ = t5_session
  with pytest.raises(ValueError, match="multiple of the data-parallel size 8"):
    runner_lib.ModelRunner(model, partitioning.Partitioner(), None, batch_size=6)


def test_decoder_only_model_through_the_evaluator():
  """Prefix-LM prompts from seqio's feature converter decode and score end to end."""
  partitioner = partitioning.Partitioner(num_partitions=2)
  config = decoder.DecoderConfig(vocab_size=384, emb_dim=32, num_heads=4, num_layers=2,
                                 head_dim=8, mlp_dim=64, dtype="float32")
  model = decoder_only.DecoderOnlyModel(decoder.DecoderOnly(config), VOCAB,
                                  inputs_bidirectional_attention=True)
  shapes = {k: (8, 16) for k in ("decoder_input_tokens", "decoder_target_tokens")}
  params, _ = _params(model, partitioner, shapes)
  session = session_lib.EvalSession(model, partitioner, batch_size=8,
                                    decode_cfg=decoding.DecodeConfig(max_decode_length=4))
  result = session.evaluate("smoke_add_digits", "validation", {"inputs": 40, "targets": 8},
                            num_examples=8, params=params, step=0)
  assert set(result) == {"smoke_add_digits"} and 0 <= result["smoke_add_digits"]["accuracy"]


# --- rank classification ------------------------------------------------------------

_QUESTIONS = [f"Question {i}: which word?" for i in range(6)]
_OPTIONS = [["alpha", "beta", "gamma"], ["red", "green"], ["one", "two", "three", "four"],
            ["yes", "no"], ["cat", "dog"], ["up", "down", "left"]]


def _register_option_task(name, answers):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({
        "inputs": _QUESTIONS, "targets": answers,
        "options": tf.ragged.constant(_OPTIONS)})

  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
      output_features=smoke.OUTPUT_FEATURES,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      metric_fns=[])
  return rank_classification.register_rank_classification_task(name)


def _option_log_likelihoods(model, params):
  """log p(option | question) for every option, straight from score_batch."""
  rows = [(q, o) for q, options in zip(_QUESTIONS, _OPTIONS) for o in options]
  inputs = np.zeros((len(rows), 32), np.int32)
  targets = np.zeros((len(rows), 8), np.int32)
  for i, (question, option) in enumerate(rows):
    ids = VOCAB.encode(question) + [1]
    inputs[i, :len(ids)] = ids
    ids = VOCAB.encode(option) + [1]
    targets[i, :len(ids)] = ids
  batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
           "decoder_loss_weights": (targets > 0).astype(np.int32)}
  scores = np.asarray(jax.jit(model.score_batch)(params, batch))
  out, start = [], 0
  for options in _OPTIONS:
    out.append(scores[start:start + len(options)])
    start += len(options)
  return out


def test_rank_classification_picks_the_most_likely_option(t5_session):
  model, params, session = t5_session
  likelihoods = _option_log_likelihoods(model, params)
  best = [opts[int(np.argmax(s))] for opts, s in zip(_OPTIONS, likelihoods)]
  worst = [opts[int(np.argmin(s))] for opts, s in zip(_OPTIONS, likelihoods)]
  mixed = best[:3] + worst[3:]
  for answers, expected in ((best, 100.0), (worst, 0.0), (mixed, 50.0)):
    name = _register_option_task("eval_test_options", answers)
    result = session.evaluate(name, "validation", None, params=params, step=0)[name]
    assert result["accuracy"] == pytest.approx(expected)
    assert result["num_examples"] == 6


def test_rank_classification_needs_a_task_with_tokenize():
  seqio.TaskRegistry.remove("eval_test_no_tokenize")
  seqio.TaskRegistry.add("eval_test_no_tokenize",
                         source=seqio.FunctionDataSource(lambda split, shuffle_files: None,
                                                         splits=("validation",)),
                         output_features=smoke.OUTPUT_FEATURES, preprocessors=[])
  with pytest.raises(ValueError, match="tokenize"):
    rank_classification.register_rank_classification_task("eval_test_no_tokenize")


# --- tasks without metric functions --------------------------------------------------


def _register_words_task(name, metric_fns):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": ["cat", "dog"], "targets": ["a", "b"]})

  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
      output_features=smoke.OUTPUT_FEATURES,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      metric_fns=metric_fns)
  return name


def test_evaluating_only_tasks_without_metrics_is_an_error(t5_session):
  model, params, session = t5_session
  name = _register_words_task("eval_test_no_metrics", metric_fns=[])
  with pytest.raises(UsageError, match="Nothing to evaluate.*no metric functions "
                                       r"\(eval_test_no_metrics\).*metric_fns="):
    session.evaluate(name, "validation", None, params=params, step=0)


def test_tasks_without_metrics_are_named_on_the_console(t5_session, capsys):
  model, params, session = t5_session
  silent = _register_words_task("eval_test_silent", metric_fns=[])
  scored = _register_words_task("eval_test_scored", metric_fns=[metrics.accuracy])
  seqio.MixtureRegistry.remove("eval_test_partly_scored")
  seqio.MixtureRegistry.add("eval_test_partly_scored", [silent, scored], default_rate=1.0)
  result = session.evaluate("eval_test_partly_scored", "validation", None, params=params,
                            step=0)
  assert set(result) == {scored}
  assert ("Warning: 1 task(s) of 'eval_test_partly_scored' have no metric functions and are "
          "not evaluated: eval_test_silent.") in capsys.readouterr().err


# --- infer-eval during training -----------------------------------------------------


def test_infer_eval_hook_returns_scalars_and_writes_reports(tmp_path, t5_session):
  model, params, session = t5_session
  # What trainer.train hands the hook (a Trainer; only these attributes are used).
  trainer = types.SimpleNamespace(model=model, partitioner=session.partitioner)
  state = types.SimpleNamespace(params=params)
  infer_eval = infer_eval_lib.InferEval(
      "smoke_eval_arithmetic", task_feature_lengths={"inputs": 48, "targets": 8},
      batch_size=8, model_dir=str(tmp_path), num_examples=8,
      cluster_of=reports.cluster_lookup(smoke.CLUSTERS, prefix="smoke_"))
  scalars = infer_eval(trainer, state.params, 7)
  assert set(scalars) == {f"inference_eval/smoke_{t}/accuracy"
                          for t in ("add_digits", "successor", "sum_choice")}
  out = tmp_path / "inference_eval"
  assert (out / "smoke_add_digits-000007.jsonl").exists()
  report = json.loads((out / "report_step_7.json").read_text())
  assert [c["cluster"] for c in report["clusters"]] == ["arithmetic"]
  assert infer_eval(trainer, state.params, 8).keys() == scalars.keys()  # evaluator reused
  assert (out / "metrics_step_8.json").exists()


# --- reports ------------------------------------------------------------------------


def test_cluster_lookup_uses_longest_stem_and_prefix():
  lookup = reports.cluster_lookup({"nli": ["anli", "rte"], "qa": ["anli_r1"]}, prefix="flan_")
  assert lookup("flan_anli_r2_eval") == "nli"
  assert lookup("flan_anli_r1_eval") == "qa"
  assert lookup("flan_rte") == "nli"
  assert lookup("flan_rtex") == reports.UNKNOWN_CLUSTER
  smoke_lookup = reports.cluster_lookup("tasks_registry.smoke.CLUSTERS", prefix="smoke_")
  assert smoke_lookup("smoke_successor_choice_rank") == "skill_choice"
  assert reports.cluster_lookup(None)("anything") == reports.ALL_TASKS
  with pytest.raises(ValueError, match="dotted path"):
    reports.cluster_lookup("tasks_registry.smoke.NO_SUCH_TABLE")


def test_report_tables_and_chart(tmp_path):
  task_metrics = {
      "smoke_successor_choice_rank": {"accuracy": 70.0, "num_examples": 100.0},
      "smoke_uppercase_choice": {"accuracy": 50.0},
      "smoke_add_digits": {"exact_match": 90.0, "f1": 95.0},
      "smoke_reverse_word": {"rouge1": 40.0, "rougeLsum": 30.0},
  }
  lookup = reports.cluster_lookup(smoke.CLUSTERS, prefix="smoke_")
  paths = reports.render_report(task_metrics, step=12, cluster_of=lookup).write(str(tmp_path))
  report = json.loads(open(paths["json"]).read())
  clusters = {c["cluster"]: c for c in report["clusters"]}
  assert clusters["skill_choice"]["mean_score"] == pytest.approx(60.0)
  assert clusters["arithmetic"]["mean_score"] == pytest.approx(90.0)
  assert clusters["string_edit"]["mean_score"] == pytest.approx(30.0)  # rougeLsum first
  by_task = {t["task"]: t for t in report["tasks"]}
  assert by_task["smoke_successor_choice_rank"]["metric"] == "accuracy"
  markdown = open(paths["markdown"]).read()
  assert "| skill_choice | 2 | 60.00 |" in markdown
  assert "| smoke_add_digits | arithmetic | exact_match | 90.00 |" in markdown
  png = open(paths["png"], "rb").read()
  assert png.startswith(b"\x89PNG")


# --- `instruct-jax eval` end to end -------------------------------------------------


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_eval_command_needs_its_gin_file(clean_gin, capsys):
  with pytest.raises(SystemExit):
    cli.main(["eval", "--gin_file=models/t5_1_1/tiny.gin"])
  assert "evaluation.evaluate" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_training_then_eval_command_beats_chance(tmp_path, clean_gin):
  """~200 smoke steps on the arithmetic cluster (with infer-eval), then `instruct-jax eval`."""
  model_dir = str(tmp_path / "run")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  subprocess.run(
      [sys.executable, "-m", "instruct_jax", "train", "--gin_file=runs/smoke_infer_eval.gin",
       f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=200", "--gin.EVAL_PERIOD=200",
       "--gin.SAVE_PERIOD=200", "--gin.MIXTURE_OR_TASK_NAME='smoke_eval_arithmetic'",
       "--gin.TRAIN_EVAL_MIXTURE_OR_TASK_NAME='smoke_add_digits'",
       "--gin.INFER_EVAL_MIXTURE_OR_TASK_NAME='smoke_eval_arithmetic'",
       "--gin.INFER_EVAL_NUM_EXAMPLES=32"],
      cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
  logged = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
  assert any("inference_eval/smoke_add_digits/accuracy" in record for record in logged)
  assert os.path.exists(os.path.join(model_dir, "inference_eval", "report_step_200.png"))

  rank_task = rank_classification.register_rank_classification_task("smoke_sum_choice")
  seqio.MixtureRegistry.remove("eval_test_arithmetic")
  seqio.MixtureRegistry.add("eval_test_arithmetic", ["smoke_add_digits", rank_task],
                            default_rate=1.0)
  out_dir = str(tmp_path / "eval")
  cli.main(["eval", "--gin_file=runs/smoke.gin", "--gin_file=runs/eval.gin",
            f"--gin.CHECKPOINT_PATH='{model_dir}/checkpoint_200'",
            "--gin.MIXTURE_OR_TASK_NAME='eval_test_arithmetic'",
            f"--gin.EVAL_OUTPUT_DIR='{out_dir}'",
            "--gin.CLUSTER_TABLE='tasks_registry.smoke.CLUSTERS'",
            "--gin.CLUSTER_PREFIX='smoke_'"])
  results = os.path.join(out_dir, "inference_eval")
  metrics = json.load(open(os.path.join(results, "metrics_step_200.json")))
  assert metrics["checkpoint"].endswith("checkpoint_200")
  # 19 possible sums: chance is ~5-10%; the model gets most of them.
  assert metrics["tasks"]["smoke_add_digits"]["accuracy"] > 30
  assert 0 <= metrics["tasks"]["smoke_sum_choice_rank"]["accuracy"] <= 100
  report = json.load(open(os.path.join(results, "report_step_200.json")))
  assert [c["cluster"] for c in report["clusters"]] == ["arithmetic"]
  assert "| smoke_add_digits | arithmetic | accuracy |" in open(
      os.path.join(results, "report_step_200.md")).read()
  assert open(os.path.join(results, "report_step_200.png"), "rb").read(4) == b"\x89PNG"
  predictions = [json.loads(line) for line in
                 open(os.path.join(results, "smoke_add_digits-000200.jsonl"))]
  assert len(predictions) == 200 and {"prediction", "target"} <= set(predictions[0])
  assert os.path.isdir(os.path.join(results, "smoke_add_digits"))  # TensorBoard events
