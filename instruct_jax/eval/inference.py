"""`instruct-jax infer`: predict or score the examples of a JSON-lines or TSV file.

    instruct-jax infer --gin_file=models/t5_1_1/base.gin --gin_file=runs/infer.gin \
        --gin.CHECKPOINT_PATH="'/tmp/run/checkpoint_1000'" \
        --input_file=in.jsonl --output_file=out.jsonl --mode=predict

Input: UTF-8 text, one JSON object per line with a string "inputs" (and
"targets" for --mode=score; other fields are copied to the output), or TSV
lines "inputs<TAB>targets". Blank lines are ignored. A malformed line (bad
JSON, missing fields, not UTF-8) stops the run with an error naming its line
number, or with --skip_bad_lines is reported (line number and reason) and left
out; a binary or compressed file is refused outright. Output: JSON lines in
input order, the input's fields plus "prediction" and "score" (predict: the
decoding score of decoding.decode) or "score" (score: sum of target
log-likelihoods); an output file ending in .tsv gets tab-separated columns
instead. Results are appended batch by batch as they are computed, so a crash
keeps the finished ones and --resume continues after them.
"""

import dataclasses
import json
import math
import os
import re
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
# Token caps when TASK_FEATURE_LENGTHS is None: the file's longest example sets the
# lengths, so without a cap one huge line would size (and exhaust) every batch.
DEFAULT_MAX_INPUT_LENGTH = 2048
DEFAULT_MAX_TARGET_LENGTH = 2048
# Bytes looked at to refuse a binary file before parsing it line by line.
_SNIFF_BYTES = 8192
# (regex of the first bytes, what the file is, the fix).
_BINARY_SIGNATURES = (
    (rb"\x1f\x8b", "gzip-compressed", "Decompress it (gunzip) first"),
    (rb"BZh[1-9]1AY&SY", "bzip2-compressed", "Decompress it (bunzip2) first"),
    (rb"\xfd7zXZ\x00", "xz-compressed", "Decompress it (unxz) first"),
    (rb"\x28\xb5\x2f\xfd", "zstd-compressed", "Decompress it (unzstd) first"),
    (rb"PK\x03\x04", "a zip archive", "Extract it first"),
    (rb"\xff\xfe", "UTF-16 text", "Convert it to UTF-8 (iconv -f UTF-16 -t UTF-8) first"),
    (rb"\xfe\xff", "UTF-16 text", "Convert it to UTF-8 (iconv -f UTF-16 -t UTF-8) first"),
)


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


def _check_text_file(path: str, head: bytes) -> None:
  """Refuses a binary file up front: its "lines" would all be noise, skipped or not."""
  for signature, kind, fix in _BINARY_SIGNATURES:
    if re.match(signature, head):
      raise UsageError(f"Input file {path} is {kind}, not UTF-8 JSON lines or TSV text. {fix} "
                       "and pass the result as --input_file.")
  if b"\x00" in head:
    raise UsageError(f"Input file {path} looks binary (it holds NUL bytes), not UTF-8 JSON "
                     "lines or TSV text. Pass a text file with one example per line as "
                     "--input_file.")


def _decode_line(raw: bytes, line_number: int) -> str:
  """One line as text; ValueError (a malformed line) when it is not UTF-8."""
  try:
    # utf-8-sig: a byte-order mark some editors write is not part of the first record.
    line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1}); "
                     "re-encode the file as UTF-8") from None
  if "\x00" in line:
    raise ValueError("holds a NUL byte (binary data?)")
  return line.rstrip("\r\n")


def read_records(path: str, mode: str = "predict", input_format: str = "auto",
                 skip_bad_lines: bool = False) -> tuple[list[InputRecord], list[str]]:
  """(valid records, problems "path:line: reason" of skipped lines).

  Raises BadInputLineError at the first malformed line unless skip_bad_lines,
  and UsageError for a binary file. Lines are read as bytes and decoded one by
  one, so a line that is not UTF-8 is reported like any other bad line.
  """
  if mode not in MODES:
    raise UsageError(f"--mode={mode!r}; expected one of {MODES}.")
  if not tf.io.gfile.exists(path):
    raise UsageError(f"Input file {path} does not exist.")
  parse = _parse_tsv if _input_format(path, input_format) == "tsv" else _parse_jsonl
  records, problems = [], []
  with tf.io.gfile.GFile(path, "rb") as f:
    _check_text_file(path, f.read(_SNIFF_BYTES))
    f.seek(0)
    for line_number, raw in enumerate(f, start=1):
      try:
        line = _decode_line(raw, line_number)
        if not line.strip():
          continue
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


def _tsv_field(text: str) -> str:
  """A TSV cell: tabs and newlines would split the row (and break --resume's line count)."""
  return text.replace("\t", " ").replace("\n", " ")


def _output_line(record: InputRecord, output: Mapping[str, Any], as_tsv: bool) -> str:
  """One result as it is written: a JSON object, or TSV inputs[, targets][, prediction], score."""
  if not as_tsv:
    return json.dumps({**record.fields, **output}, ensure_ascii=False) + "\n"
  columns = [_tsv_field(record.fields["inputs"])]
  if "targets" in record.fields:
    columns.append(_tsv_field(record.fields["targets"]))
  if "prediction" in output:
    columns.append(_tsv_field(output["prediction"]))
  columns.append(f"{output['score']:.6g}")
  return "\t".join(columns) + "\n"


def _output_inputs(line: str, as_tsv: bool) -> Optional[str]:
  """The "inputs" a written result line was computed for (None: not a result line)."""
  if as_tsv:
    return line.split("\t", 1)[0]
  try:
    value = json.loads(line)
  except json.JSONDecodeError:
    return None
  return value.get("inputs") if isinstance(value, dict) else None


def _output_parent(path: str) -> str:
  # abspath would turn gs://bucket/x into a local path.
  return os.path.dirname(path) if "://" in path else os.path.dirname(os.path.abspath(path))


def check_output_writable(path: str) -> None:
  """Fails fast, before any checkpoint is read or example computed, on an unwritable path.

  Non-destructive: an existing file is opened for appending only, a probe file
  is removed again. Remote paths (gs://...) only get their directory created.
  """
  fix = "Pass a writable file path as --output_file."
  if tf.io.gfile.isdir(path):
    raise UsageError(f"--output_file={path} is a directory. {fix}")
  try:
    tf.io.gfile.makedirs(_output_parent(path))
  except (tf.errors.OpError, OSError) as e:
    message = getattr(e, "message", None) or e
    raise UsageError(f"Cannot create the directory of --output_file={path} ({message}). "
                     f"{fix}") from None
  if "://" in path:
    return
  existed = os.path.exists(path)
  try:
    with open(path, "ab"):
      pass
  except OSError as e:
    raise UsageError(f"Cannot write --output_file={path} ({e.strerror}). {fix}") from None
  if not existed:
    os.remove(path)


def resume_output(path: str, records: Sequence[InputRecord], as_tsv: bool) -> int:
  """How many results `path` already holds for `records` (its complete lines).

  A truncated last line (a crash mid-write) is cut off, to be recomputed.
  Every kept line must be the result of the input at its position, so a
  --resume against another input's output stops instead of mixing the two.
  """
  if not tf.io.gfile.exists(path):
    return 0
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  complete = data.rfind(b"\n") + 1
  lines = data[:complete].decode("utf-8", errors="replace").split("\n")[:-1]
  fix = "Drop --resume to overwrite it, or pass another --output_file."
  if len(lines) > len(records):
    raise UsageError(f"--resume: {path} holds {len(lines)} result lines but the input has only "
                     f"{len(records)} examples; it is not this input's output. {fix}")
  for number, (line, record) in enumerate(zip(lines, records), start=1):
    expected = record.fields["inputs"]
    if _output_inputs(line, as_tsv) != (_tsv_field(expected) if as_tsv else expected):
      raise UsageError(f"--resume: line {number} of {path} is not the result of input line "
                       f"{record.line_number}; the output belongs to another input (or to "
                       f"other --skip_bad_lines / --mode settings). {fix}")
  if complete < len(data):
    logging.warning("--resume: dropping the truncated last line of %s; it is recomputed.", path)
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(data[:complete])
  return len(lines)


def _from_process_0(value: int) -> int:
  """Process 0's value on every process: only it reads the output, all must skip alike."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _prepare_output(output_file: str, records: Sequence[InputRecord], as_tsv: bool,
                    resume: bool, output_error: Optional[UsageError]) -> int:
  """Results to skip (--resume); raises on every process when process 0 cannot write."""
  skip = 0
  if jax.process_index() == 0 and output_error is None:
    try:
      if resume:
        skip = resume_output(output_file, records, as_tsv)
      elif tf.io.gfile.exists(output_file) and tf.io.gfile.stat(output_file).length:
        logging.warning("Overwriting %s; pass --resume to continue it instead.", output_file)
    except UsageError as e:
      output_error = e
  skip = _from_process_0(-1 if output_error else skip)
  if output_error:
    raise output_error
  if skip < 0:
    raise UsageError(f"Process 0 cannot use --output_file={output_file}; its log says why. "
                     "Pass a writable --output_file.")
  return skip


class _OutputWriter:
  """Appends results in input order as soon as all earlier ones are known, flushing each batch.

  Streaming (rather than writing at the end) keeps what was computed when a
  run crashes; --resume continues after it.
  """

  def __init__(self, path: str, records: Sequence[InputRecord], append: bool):
    self._file = tf.io.gfile.GFile(path, "a" if append else "w")
    self._records = records
    self._as_tsv = path.lower().endswith(".tsv")
    self._pending: dict[int, dict] = {}
    self.written = 0

  def add(self, index: int, output: dict) -> None:
    self._pending[index] = output
    while self.written in self._pending:
      output = self._pending.pop(self.written)
      self._file.write(_output_line(self._records[self.written], output, self._as_tsv))
      self.written += 1

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


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
               max_input_length: int = DEFAULT_MAX_INPUT_LENGTH,
               max_target_length: int = DEFAULT_MAX_TARGET_LENGTH,
               resume: bool = False,
               seed: int = 0) -> dict[str, Any]:
  """Predicts or scores every example of `input_file`; writes `output_file` (see module doc).

  task_feature_lengths: {"inputs", "targets"} token lengths (longer texts are
  cut, with a warning); None measures the file, capped at max_input_length
  tokens for inputs and (--mode=score) max_target_length for targets, so one
  huge line cannot size every batch (predict: targets length =
  decode_cfg.max_decode_length, else DEFAULT_MAX_DECODE_LENGTH). resume: keep
  the complete result lines already in `output_file` and compute only the
  examples after them. The output path is checked before any work. Returns a
  summary: examples (in the output), resumed (kept from before), skipped
  lines, seconds.
  """
  start = time.time()
  decode_cfg = decode_cfg or decoding.DecodeConfig()
  for name, value in (("max_input_length", max_input_length),
                      ("max_target_length", max_target_length)):
    if not isinstance(value, int) or value < 2:
      raise UsageError(f"inference.infer_file.{name}={value!r}; it must be an int >= 2 "
                       "(room for a token and EOS).")
  output_error = None
  if jax.process_index() == 0:
    try:
      check_output_writable(output_file)
    except UsageError as e:
      if jax.process_count() == 1:
        raise
      output_error = e  # Raised on every process in _prepare_output.
  records, problems = read_records(input_file, mode, input_format, skip_bad_lines)
  if not records:
    raise UsageError(f"{input_file} holds no usable examples"
                     + (f" ({len(problems)} bad lines skipped)." if problems else "."))
  as_tsv = output_file.lower().endswith(".tsv")
  resumed = _prepare_output(output_file, records, as_tsv, resume, output_error)
  if resume:
    logging.info("--resume: %d result(s) already in %s; skipping that many input examples.",
                 resumed, output_file)
  remaining = records[resumed:]
  summary = {"examples": len(records), "resumed": resumed, "skipped_lines": len(problems),
             "output_file": output_file}
  if not remaining:
    summary["seconds"] = time.time() - start
    logging.info("infer: nothing left to compute: %s", summary)
    return summary

  fixed = dict(task_feature_lengths or {})
  limits = {"inputs": fixed.get("inputs", max_input_length),
            "targets": fixed.get("targets", max_target_length)}
  tokens = {"inputs": [], "targets": []}
  truncated = []
  for record in remaining:
    ids, cut = _tokenize(model.input_vocabulary, record.fields["inputs"], limits["inputs"])
    tokens["inputs"].append(ids)
    if mode == "score":
      target_ids, target_cut = _tokenize(model.output_vocabulary, record.fields["targets"],
                                         limits["targets"])
      cut = cut or target_cut
    else:
      target_ids = []  # Nothing to teacher-force: the model writes the targets.
    tokens["targets"].append(target_ids)
    if cut:
      truncated.append(record.line_number)
  if truncated:
    shown = limits if mode == "score" else {"inputs": limits["inputs"]}
    logging.warning("%d example(s) were cut to %s tokens (lines %s%s); raise "
                    "TASK_FEATURE_LENGTHS (or, when it is None, "
                    "inference.infer_file.max_input_length / max_target_length) to keep more.",
                    len(truncated), shown, ", ".join(map(str, truncated[:10])),
                    ", ..." if len(truncated) > 10 else "")
  lengths = _feature_lengths(mode, task_feature_lengths, decode_cfg, tokens)

  data_parallel = partitioner.data_parallel_size
  # No point padding a small file up to a large batch.
  batch_size = min(batch_size, -(-len(remaining) // data_parallel) * data_parallel)
  # The session's params and runner only: a file has no seqio task to evaluate.
  session = session_lib.EvalSession(model, partitioner, batch_size, decode_cfg, seed)
  session.load(checkpoint_path)
  dataset = _model_dataset(model, tokens, lengths)
  runner = session.runner
  is_writer = jax.process_index() == 0
  progress = ProgressBar(len(remaining), label=mode) if is_writer else None
  # Opened only now: a bad checkpoint path must not truncate an earlier output.
  writer = _OutputWriter(output_file, remaining, append=resume) if is_writer else None
  if mode == "predict":
    batches = ([(index, {"prediction": model.output_vocabulary.decode(
                    runner_lib.trim_at_eos(tokens_out, runner.decode_cfg.eos_id)), "score": score})
                for index, tokens_out, score in batch_results]
               for batch_results in runner.predict_batches(session.params, dataset))
  else:
    batches = ([(index, {"score": score}) for index, score in batch_results]
               for batch_results in runner.score_batches(session.params, dataset))
  done = 0
  try:
    for outputs in batches:  # Written as each batch finishes: a crash keeps what was done.
      done += len(outputs)
      if progress is not None:
        progress(done)
      if writer is not None:
        for index, output in outputs:
          writer.add(index, output)
        writer.flush()
  finally:
    if writer is not None:
      writer.close()
  summary["seconds"] = time.time() - start
  logging.info("infer: %s", summary)
  return summary
