"""`instruct-jax infer`: reading JSON lines / TSV, bad lines, predict and score a file."""

import io
import json

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from instruct_jax import cli
from instruct_jax.eval import inference
from instruct_jax.checkpoints import run_checkpointer
from instruct_jax.train.state import TrainState

import factories

VOCAB = seqio.ByteVocabulary()


def _write(tmp_path, name, lines):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n")
  return str(path)


GOOD = ['{"inputs": "What is 1 + 2?", "id": 7}', "", '{"inputs": "Say hi.", "targets": "hi"}']


def test_reads_json_lines_and_tsv(tmp_path):
  records, problems = inference.read_records(_write(tmp_path, "in.jsonl", GOOD))
  assert problems == []
  assert [(r.line_number, r.fields["inputs"]) for r in records] == [
      (1, "What is 1 + 2?"), (3, "Say hi.")]
  assert records[0].fields["id"] == 7

  tsv = _write(tmp_path, "in.tsv", ["first\tone", "second\ttwo"])
  records, _ = inference.read_records(tsv, mode="score")
  assert [r.fields for r in records] == [{"inputs": "first", "targets": "one"},
                                         {"inputs": "second", "targets": "two"}]


@pytest.mark.parametrize("line, mode, reason", [
    ('{"inputs": "ok"', "predict", "not valid JSON"),
    ('["a list"]', "predict", "expected a JSON object"),
    ('{"text": "no inputs"}', "predict", "missing \"inputs\""),
    ('{"inputs": 3}', "predict", "\"inputs\" must be a string"),
    ('{"inputs": "no targets"}', "score", "--mode=score needs \"targets\""),
])
def test_malformed_line_is_named(tmp_path, line, mode, reason):
  path = _write(tmp_path, "in.jsonl", [GOOD[2], "", GOOD[2], line])
  with pytest.raises(inference.BadInputLineError) as error:
    inference.read_records(path, mode=mode)
  message = str(error.value)
  assert f"{path}:4:" in message and reason in message and "--skip_bad_lines" in message


def test_tsv_column_count_is_checked(tmp_path):
  path = _write(tmp_path, "in.tsv", ["a\tb", "a\tb\tc"])
  with pytest.raises(inference.BadInputLineError, match=r"in.tsv:2: expected inputs"):
    inference.read_records(path)
  with pytest.raises(inference.BadInputLineError, match=r"one.tsv:1: expected inputs<TAB>"):
    inference.read_records(_write(tmp_path, "one.tsv", ["only inputs"]), mode="score")


def test_skip_bad_lines_reports_each_one(tmp_path):
  path = _write(tmp_path, "in.jsonl", ["{oops", GOOD[0], '{"inputs": 1}'])
  records, problems = inference.read_records(path, skip_bad_lines=True)
  assert [r.line_number for r in records] == [2]
  assert [p.split(": ")[0] for p in problems] == [f"{path}:1", f"{path}:3"]


def test_progress_bar_without_a_terminal():
  stream = io.StringIO()
  bar = inference.ProgressBar(20, label="predict", stream=stream)
  for done in (8, 16, 20):
    bar(done)
  lines = stream.getvalue().splitlines()
  assert lines[-1].startswith("predict [") and "20/20 (100%)" in lines[-1]
  assert len(lines) == 3


# --- the command, on a checkpoint of models/t5_1_1/tiny.gin ------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """A step-0 checkpoint whose params fit models/t5_1_1/tiny.gin."""
  model = factories.tiny_t5(emb_dim=32, head_dim=8, mlp_dim=64)
  shapes = factories.input_shapes(2)
  params = nn.meta.unbox(jax.jit(lambda rng: model.init_params(rng, shapes))(
      jax.random.PRNGKey(0)))
  model_dir = str(tmp_path_factory.mktemp("infer_run"))
  with run_checkpointer.Checkpointer(model_dir, save_period=None, async_save=False) as ckpt:
    ckpt.save(0, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=()),
              force=True)
  return model, params, model_dir


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _infer(model_dir, input_file, output_file, *flags):
  cli.main(["infer", "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/infer.gin",
            "--gin.ACTIVATION_DTYPE='float32'", f"--gin.CHECKPOINT_PATH='{model_dir}'",
            f"--input_file={input_file}", f"--output_file={output_file}", *flags])


def test_infer_command_names_the_bad_line(tmp_path, clean_gin, tiny_checkpoint, capsys):
  path = _write(tmp_path, "in.jsonl", [GOOD[0], GOOD[2], "not json at all"])
  with pytest.raises(SystemExit):
    _infer(tiny_checkpoint[2], path, str(tmp_path / "out.jsonl"))
  error = capsys.readouterr().err
  assert f"{path}:3: not valid JSON" in error and "Traceback" not in error
  assert not (tmp_path / "out.jsonl").exists()


def test_infer_predicts_and_scores_a_file(tmp_path, clean_gin, tiny_checkpoint, capsys):
  model, params, model_dir = tiny_checkpoint
  lines = [json.dumps({"inputs": f"Question {i}?", "targets": f"answer {i}", "row": i})
           for i in range(5)]
  path = _write(tmp_path, "in.jsonl", lines[:2] + ["{broken"] + lines[2:])
  out = tmp_path / "out.jsonl"
  _infer(model_dir, path, str(out), "--skip_bad_lines", "--gin.MAX_DECODE_LENGTH=5")
  assert "skipped 1 bad line" in capsys.readouterr().out
  predicted = [json.loads(line) for line in out.read_text().splitlines()]
  assert [p["row"] for p in predicted] == list(range(5))
  assert all(isinstance(p["prediction"], str) and np.isfinite(p["score"]) for p in predicted)

  scored_path = tmp_path / "scores.tsv"
  gin.clear_config()
  _infer(model_dir, path, str(scored_path), "--skip_bad_lines", "--mode=score")
  scores = [float(line.split("\t")[-1]) for line in scored_path.read_text().splitlines()]
  # The same numbers as score_batch on hand-built features.
  inputs = np.zeros((5, 16), np.int32)
  targets = np.zeros((5, 12), np.int32)
  for i in range(5):
    ids = VOCAB.encode(f"Question {i}?") + [1]
    inputs[i, :len(ids)] = ids
    ids = VOCAB.encode(f"answer {i}") + [1]
    targets[i, :len(ids)] = ids
  batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
           "decoder_loss_weights": (targets > 0).astype(np.int32)}
  expected = jax.jit(model.score_batch)(params, batch)
  np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-3)
