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


# --- robustness: encodings, huge lines, unwritable outputs, streaming and --resume ----


def test_non_utf8_line_is_a_bad_line(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_bytes(b'{"inputs": "fine"}\n{"inputs": "caf\xe9"}\n{"inputs": "also fine"}\n')
  with pytest.raises(inference.BadInputLineError) as error:
    inference.read_records(str(path))
  message = str(error.value)
  assert f"{path}:2: not valid UTF-8" in message and "--skip_bad_lines" in message
  records, problems = inference.read_records(str(path), skip_bad_lines=True)
  assert [r.line_number for r in records] == [1, 3]
  assert [p.split(": ")[0] for p in problems] == [f"{path}:2"]


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
  path = tmp_path / "in.tsv"
  path.write_bytes("\ufeffcafé\tx\r\nsecond\ty\r\n".encode("utf-8"))
  records, _ = inference.read_records(str(path), mode="score")
  assert [r.fields for r in records] == [{"inputs": "café", "targets": "x"},
                                         {"inputs": "second", "targets": "y"}]


@pytest.mark.parametrize("content, kind", [
    (b'{"inputs": "a"}\n\x00\x01\x02\x03binary\n', "looks binary"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "gzip-compressed"),
    ('{"inputs": "a"}\n'.encode("utf-16"), "UTF-16"),
])
def test_binary_file_is_refused_even_when_skipping(tmp_path, content, kind):
  path = tmp_path / "in.jsonl"
  path.write_bytes(content)
  for skip in (False, True):
    with pytest.raises(inference.UsageError, match=kind) as error:
      inference.read_records(str(path), skip_bad_lines=skip)
    assert str(path) in str(error.value) and "--input_file" in str(error.value)


def test_infer_command_reports_non_utf8_without_traceback(tmp_path, clean_gin, tiny_checkpoint,
                                                         capsys):
  path = tmp_path / "in.jsonl"
  path.write_bytes(b'{"inputs": "ok"}\n\xff\xfe\xfd\n')
  with pytest.raises(SystemExit):
    _infer(tiny_checkpoint[2], str(path), str(tmp_path / "out.jsonl"))
  error = capsys.readouterr().err
  assert f"{path}:2: not valid UTF-8" in error and "Traceback" not in error


def _record_lengths(monkeypatch):
  """The feature lengths infer_file builds its model dataset with."""
  seen = []
  model_dataset = inference._model_dataset

  def recording(model, tokens, lengths):
    seen.append(dict(lengths))
    return model_dataset(model, tokens, lengths)

  monkeypatch.setattr(inference, "_model_dataset", recording)
  return seen


def test_huge_line_is_capped_when_lengths_are_measured(tmp_path, clean_gin, tiny_checkpoint,
                                                       monkeypatch, capsys):
  assert inference.DEFAULT_MAX_INPUT_LENGTH == inference.DEFAULT_MAX_TARGET_LENGTH == 2048
  huge = "x" * 1_000_000
  path = _write(tmp_path, "in.jsonl", [json.dumps({"inputs": huge, "targets": huge}),
                                       json.dumps({"inputs": "short", "targets": "s"})])
  lengths = _record_lengths(monkeypatch)
  out = tmp_path / "out.jsonl"
  _infer(tiny_checkpoint[2], path, str(out), "--mode=score",
         "--gin.inference.infer_file.max_input_length=64",
         "--gin.inference.infer_file.max_target_length=32")
  assert lengths == [{"inputs": 64, "targets": 32}]
  scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
  assert len(scores) == 2 and all(np.isfinite(scores))
  # Our own warnings stay on the quiet console.
  error = capsys.readouterr().err
  assert "warning: 1 example(s) were cut to" in error and "lines 1)" in error


@pytest.mark.parametrize("make_output", [
    lambda tmp: tmp / "a_file" / "out.jsonl",  # Its "directory" is a file.
    lambda tmp: tmp,                           # A directory.
], ids=["parent_is_a_file", "directory"])
def test_unwritable_output_fails_before_any_work(tmp_path, clean_gin, tiny_checkpoint,
                                                 monkeypatch, capsys, make_output):
  (tmp_path / "a_file").write_text("not a directory")
  output = make_output(tmp_path)
  path = _write(tmp_path, "in.jsonl", [GOOD[0]])

  def no_work(*args, **kwargs):
    raise AssertionError("the checkpoint was loaded for an output that cannot be written")

  monkeypatch.setattr(inference.session_lib, "EvalSession", no_work)
  with pytest.raises(SystemExit):
    _infer(tiny_checkpoint[2], path, str(output))
  error = capsys.readouterr().err
  assert f"--output_file={output}" in error and "writable" in error
  assert "Traceback" not in error


def _crash_on_batch(monkeypatch, crash_at):
  """Makes the runner fail like a preempted job when decoding its `crash_at`-th batch."""
  predict_batches = inference.runner_lib.ModelRunner.predict_batches

  def crashing(self, *args, **kwargs):
    for number, results in enumerate(predict_batches(self, *args, **kwargs), start=1):
      if number == crash_at:
        raise RuntimeError("simulated crash")
      yield results

  monkeypatch.setattr(inference.runner_lib.ModelRunner, "predict_batches", crashing)


def test_results_stream_and_resume_continues(tmp_path, clean_gin, tiny_checkpoint, monkeypatch,
                                            capsys):
  model_dir = tiny_checkpoint[2]
  # Batches of 8 (the tests' data-parallel size): 8, 8 and 4 examples.
  lines = [json.dumps({"inputs": f"Question {i}?", "row": i}) for i in range(20)]
  path = _write(tmp_path, "in.jsonl", lines)
  flags = ("--gin.BATCH_SIZE=8", "--gin.MAX_DECODE_LENGTH=4")
  reference = tmp_path / "reference.jsonl"
  _infer(model_dir, path, str(reference), *flags)
  expected = reference.read_text().splitlines()
  assert [json.loads(line)["row"] for line in expected] == list(range(20))

  out = tmp_path / "out.jsonl"
  with monkeypatch.context() as patch:
    _crash_on_batch(patch, crash_at=3)
    gin.clear_config()
    with pytest.raises(RuntimeError, match="simulated crash"):
      _infer(model_dir, path, str(out), *flags)
  # The two batches computed before the crash are on disk, in input order.
  assert out.read_text().splitlines() == expected[:16]

  # A crash in the middle of a line: that line is dropped and recomputed.
  out.write_text("\n".join(expected[:10]) + "\n" + expected[10][:10])
  capsys.readouterr()
  gin.clear_config()
  _infer(model_dir, path, str(out), *flags, "--resume")
  assert out.read_text().splitlines() == expected
  assert "Resumed after 10 result(s)" in capsys.readouterr().out

  # Everything done: nothing is recomputed.
  gin.clear_config()
  _infer(model_dir, path, str(out), *flags, "--resume")
  assert out.read_text().splitlines() == expected
  assert "Resumed after 20 result(s)" in capsys.readouterr().out


def test_resume_refuses_another_inputs_output(tmp_path, clean_gin, tiny_checkpoint, capsys):
  path = _write(tmp_path, "in.tsv", ["first\tone", "second\ttwo"])
  out = _write(tmp_path, "out.tsv", ["other\tone\t-1.5"])
  with pytest.raises(SystemExit):
    _infer(tiny_checkpoint[2], path, out, "--mode=score", "--resume")
  error = capsys.readouterr().err
  assert "line 1 of" in error and "Drop --resume" in error and "Traceback" not in error
  assert (tmp_path / "out.tsv").read_text() == "other\tone\t-1.5\n"


def test_tsv_output_keeps_one_line_per_result(tmp_path):
  record = inference.InputRecord(1, {"inputs": "a\tb\nc", "targets": "t"})
  line = inference._output_line(record, {"prediction": "p\nq", "score": -1.0}, as_tsv=True)
  assert line == "a b c\tt\tp q\t-1\n"
