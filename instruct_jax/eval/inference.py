"""`instruct-jax infer`: predict or score the examples of a JSON-lines or TSV file.

    instruct-jax infer --gin_file=models/t5_1_1/base.gin --gin_file=runs/infer.gin \
        --gin.CHECKPOINT_PATH="'/tmp/run/checkpoint_1000'" \
        --input_file=in.jsonl --output_file=out.jsonl --mode=predict

Input: one JSON object per line with a string "inputs" (and "targets" for
--mode=score; other fields are copied to the output), or TSV lines
"inputs<TAB>targets". Blank lines are ignored. A malformed line stops the run
with an error naming its line number, or with --skip_bad_lines is reported
(line number and reason) and left out. Output: JSON lines in input order, the
input's fields plus "prediction" and "score" (predict: the decoding score of
decoding.decode) or "score" (score: sum of target log-likelihoods); an output
file ending in .tsv gets tab-separated columns instead.
"""

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional, TextIO

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from instruct_jax.errors import UsageError
from instruct_jax.eval import runner as runner_lib
from instruct_jax.eval import session as session_lib
from instruct_jax.models import decoding
from instruct_jax.train import partitioning

MODES = ("predict", "score")
FORMATS = ("auto", "jsonl", "tsv")
# Target length for predictions when neither the lengths nor the decode config give one.
DEFAULT_MAX_DECODE_LENGTH = 64


class BadInputLineError(UsageError):
  """A line of the input file is not a valid example."""


@dataclasses.dataclass(frozen=True)
class InputRecord:
  """One example read from the input file; `fields` holds "inputs" (and "targets")."""
  line_number: int
  fields: Mapping[str, Any]


def _input_format(path: str, input_format: str) -> str:
  if input_format not in FORMATS:
    raise UsageError(f"--input_format={input_format!r}; expected one of {FORMATS}.")
  if input_format != "auto":
    return input_format
  return "tsv" if path.lower().endswith(".tsv") else "jsonl"


def _parse_jsonl(line: str, mode: str) -> dict[str, Any]:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(record, dict):
    raise ValueError(f"expected a JSON object with \"inputs\", found a {type(record).__name__}")
  required = ("inputs", "targets") if mode == "score" else ("inputs",)
  for key in required:
    if key not in record:
      raise ValueError(f"missing \"{key}\" (keys: {sorted(record)})"
                       + ("; --mode=score needs \"targets\"" if key == "targets" else ""))
    if not isinstance(record[key], str):
      raise ValueError(f"\"{key}\" must be a string, found {type(record[key]).__name__}")
  return record


def _parse_tsv(line: str, mode: str) -> dict[str, Any]:
  columns = line.split("\t")
  expected = (2,) if mode == "score" else (1, 2)
  if len(columns) not in expected:
    wanted = "inputs<TAB>targets" if mode == "score" else "inputs[<TAB>targets]"
    raise ValueError(f"expected {wanted}, found {len(columns)} tab-separated columns")
  record = {"inputs": columns[0]}
  if len(columns) == 2:
    record["targets"] = columns[1]
  return record


def read_records(path: str, mode: str = "predict", input_format: str = "auto",
                 skip_bad_lines: bool = False) -> tuple[list[InputRecord], list[str]]:
  """(valid records, problems "path:line: reason" of skipped lines).

  Raises BadInputLineError at the first malformed line unless skip_bad_lines.
  """
  if mode not in MODES:
    raise UsageError(f"--mode={mode!r}; expected one of {MODES}.")
  if not tf.io.gfile.exists(path):
    raise UsageError(f"Input file {path} does not exist.")
  parse = _parse_tsv if _input_format(path, input_format) == "tsv" else _parse_jsonl
  records, problems = [], []
  with tf.io.gfile.GFile(path) as f:
    for line_number, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      try:
        records.append(InputRecord(line_number, parse(line, mode)))
      except ValueError as e:
        problem = f"{path}:{line_number}: {e}"
        if not skip_bad_lines:
          raise BadInputLineError(
              f"Malformed input at {problem}. Fix the line, or pass --skip_bad_lines to "
              "leave bad lines out (each is reported).") from None
        problems.append(problem)
        logging.warning("Skipping bad input line %s", problem)
  return records, problems


class ProgressBar:
  """A one-line progress bar on stderr (periodic log lines when stderr is not a terminal)."""

  def __init__(self, total: int, label: str = "infer", stream: Optional[TextIO] = None,
               width: int = 30):
    self.total = max(total, 1)
    self.label = label
    self.stream = stream or sys.stderr
    self.width = width
    self._start = time.time()
    self._interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
    self._last_decile = -1

  def __call__(self, done: int) -> None:
    fraction = min(done / self.total, 1.0)
    elapsed = time.time() - self._start
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - done) / rate if rate > 0 else float("nan")
    filled = int(round(fraction * self.width))
    text = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
            f"({100 * fraction:.0f}%) {rate:.1f} ex/s"
            + (f" ETA {eta:.0f}s" if done < self.total and math.isfinite(eta) else ""))
    if self._interactive:
      self.stream.write("\r" + text + ("\n" if done >= self.total else ""))
      self.stream.flush()
    elif int(fraction * 10) > self._last_decile:
      self._last_decile = int(fraction * 10)
      self.stream.write(text + "\n")
      self.stream.flush()


def _tokenize(vocabulary, text: str, length: Optional[int]) -> tuple[list[int], bool]:
  """Token ids with EOS appended, cut to `length` (EOS kept last); (ids, was_truncated)."""
  ids = list(vocabulary.encode(text))
  truncated = length is not None and len(ids) + 1 > length
  if truncated:
    ids = ids[:length - 1]
  return ids + [vocabulary.eos_id], truncated


def _feature_lengths(mode: str, task_feature_lengths: Optional[Mapping[str, int]],
                     decode_cfg: decoding.DecodeConfig, tokens: Mapping[str, list]) -> dict:
  """Task feature lengths: the given ones, else the longest example (see infer_file)."""
  lengths = dict(task_feature_lengths or {})
  lengths.setdefault("inputs", max(len(t) for t in tokens["inputs"]))
  if mode == "score":
    lengths.setdefault("targets", max(len(t) for t in tokens["targets"]))
  else:
    lengths.setdefault("targets", decode_cfg.max_decode_length or DEFAULT_MAX_DECODE_LENGTH)
  return lengths


def _model_dataset(model: Any, tokens: Mapping[str, list], lengths: Mapping[str, int]):
  """Enumerated tf.data of model features, built by the model's own feature converter."""
  def generate():
    for index in range(len(tokens["inputs"])):
      yield {name: np.asarray(values[index], np.int32) for name, values in tokens.items()}

  signature = {name: tf.TensorSpec([None], tf.int32) for name in tokens}
  dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
  converted = model.feature_converter(pack=False)(dataset, dict(lengths))
  return converted.enumerate()


def _write_output(path: str, records: Sequence[InputRecord], outputs: Sequence[dict]) -> None:
  tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(path)))
  as_tsv = path.lower().endswith(".tsv")
  with tf.io.gfile.GFile(path, "w") as f:
    for record, output in zip(records, outputs):
      if as_tsv:
        columns = [record.fields["inputs"]]
        if "targets" in record.fields:
          columns.append(record.fields["targets"])
        if "prediction" in output:
          columns.append(output["prediction"].replace("\t", " ").replace("\n", " "))
        columns.append(f"{output['score']:.6g}")
        f.write("\t".join(columns) + "\n")
      else:
        f.write(json.dumps({**record.fields, **output}, ensure_ascii=False) + "\n")


def infer_file(*,
               model: Any,
               checkpoint_path: str,
               input_file: str,
               output_file: str,
               partitioner: partitioning.Partitioner,
               mode: str = "predict",
               batch_size: int = 32,
               task_feature_lengths: Optional[Mapping[str, int]] = None,
               decode_cfg: Optional[decoding.DecodeConfig] = None,
               skip_bad_lines: bool = False,
               input_format: str = "auto",
               seed: int = 0) -> dict[str, Any]:
  """Predicts or scores every example of `input_file`; writes `output_file` (see module doc).

  task_feature_lengths: {"inputs", "targets"} token lengths (longer texts are
  cut, with a warning); None measures the file (predict: targets length =
  decode_cfg.max_decode_length, else DEFAULT_MAX_DECODE_LENGTH). Returns a
  summary: examples, skipped lines, seconds.
  """
  start = time.time()
  decode_cfg = decode_cfg or decoding.DecodeConfig()
  records, problems = read_records(input_file, mode, input_format, skip_bad_lines)
  if not records:
    raise UsageError(f"{input_file} holds no usable examples"
                     + (f" ({len(problems)} bad lines skipped)." if problems else "."))
  fixed = dict(task_feature_lengths or {})
  tokens = {"inputs": [], "targets": []}
  truncated = []
  for record in records:
    ids, cut = _tokenize(model.input_vocabulary, record.fields["inputs"], fixed.get("inputs"))
    tokens["inputs"].append(ids)
    if mode == "score":
      target_ids, target_cut = _tokenize(model.output_vocabulary, record.fields["targets"],
                                         fixed.get("targets"))
      cut = cut or target_cut
    else:
      target_ids = []  # Nothing to teacher-force: the model writes the targets.
    tokens["targets"].append(target_ids)
    if cut:
      truncated.append(record.line_number)
  if truncated:
    logging.warning("%d example(s) were cut to TASK_FEATURE_LENGTHS=%s (lines %s%s).",
                    len(truncated), fixed, ", ".join(map(str, truncated[:10])),
                    ", ..." if len(truncated) > 10 else "")
  lengths = _feature_lengths(mode, task_feature_lengths, decode_cfg, tokens)

  data_parallel = partitioner.data_parallel_size
  # No point padding a small file up to a large batch.
  batch_size = min(batch_size, -(-len(records) // data_parallel) * data_parallel)
  # The session's params and runner only: a file has no seqio task to evaluate.
  session = session_lib.EvalSession(model, partitioner, batch_size, decode_cfg, seed)
  session.load(checkpoint_path)
  dataset = _model_dataset(model, tokens, lengths)
  progress = ProgressBar(len(records), label=mode) if jax.process_index() == 0 else None

  if mode == "predict":
    results = sorted(session.runner.predict(session.params, dataset, progress),
                     key=lambda r: r[0])
    outputs = [{"prediction": model.output_vocabulary.decode(
                    runner_lib.trim_at_eos(tokens_out, decode_cfg.eos_id)),
                "score": score} for _, tokens_out, score in results]
  else:
    results = sorted(session.runner.score(session.params, dataset, progress),
                     key=lambda r: r[0])
    outputs = [{"score": score} for _, score in results]
  if jax.process_index() == 0:
    _write_output(output_file, records, outputs)
  summary = {"examples": len(records), "skipped_lines": len(problems),
             "seconds": time.time() - start, "output_file": output_file}
  logging.info("infer: %s", summary)
  return summary
