"""The raw corpus of `instruct-jax synthesize`: its documents, cut into fixed work shards.

Three sources:
  * JSON lines: one document per non-blank line, its text in one field (`text_field`);
  * plain text: one document per block of lines separated by blank lines;
  * a TFDS dataset: one document per example of a split, its text in `text_field`.

`plan_shards` reads the corpus once, only to count documents, and cuts every
file (or the split) into shards of at most `documents_per_shard` documents,
remembering where each starts (byte offset and line), so a shard is read on its
own without re-reading what comes before it. The plan depends on the corpus
alone, never on the number of processes: the shards are the unit of work,
resumption and multi-host splitting.

A document's id is its position in the whole corpus (files in the order given),
its source `file:line` (`name/split[index]` for TFDS). A record that is not a
usable document (not UTF-8, bad JSON, missing field, empty) is read as a
`Record` with a `problem`, never an exception: the job counts it and goes on.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterator, Optional, Sequence

import tensorflow as tf

from instruct_jax.errors import UsageError

JSONL = "jsonl"
TEXT = "text"
TFDS = "tfds"
FORMATS = ("auto", JSONL, TEXT, TFDS)
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """What to read: files (or a TFDS name), their format and the text field."""
  inputs: tuple[str, ...]
  input_format: str = "auto"
  text_field: str = "text"
  tfds_split: str = "train"
  tfds_data_dir: Optional[str] = None

  def describe(self) -> dict:
    return dataclasses.asdict(self) | {"inputs": list(self.inputs)}


@dataclasses.dataclass(frozen=True)
class Shard:
  """A run of consecutive documents of one file (or TFDS split): one output shard."""
  index: int
  path: str
  format: str
  first_doc_id: int
  num_records: int
  byte_offset: int = 0
  first_line: int = 1

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Record:
  """One document, or (problem set, text None) a record that is not a usable document."""
  doc_id: int
  source: str
  text: Optional[str]
  problem: Optional[str] = None


def resolve_files(spec: CorpusSpec) -> list[tuple[str, str]]:
  """(path, format) of every input file, globs expanded in order; UsageError if none."""
  if spec.input_format not in FORMATS:
    raise UsageError(f"--input_format={spec.input_format!r}; expected one of {FORMATS}.")
  if not spec.inputs:
    raise UsageError("synthesize needs --input: JSON-lines or text files (globs allowed), "
                     "or a TFDS dataset name with --input_format=tfds.")
  if spec.input_format == TFDS:
    if len(spec.inputs) != 1:
      raise UsageError(f"--input_format=tfds reads one dataset; got --input={spec.inputs}.")
    return [(spec.inputs[0], TFDS)]
  files = []
  for pattern in spec.inputs:
    matches = sorted(tf.io.gfile.glob(pattern))
    matches = [m for m in matches if not tf.io.gfile.isdir(m)]
    if not matches:
      raise UsageError(f"--input={pattern} matches no file. Pass existing files or globs "
                       "(e.g. --input='/data/corpus/*.jsonl').")
    files += matches
  if spec.input_format != "auto":
    return [(f, spec.input_format) for f in files]
  return [(f, JSONL if f.lower().endswith(_JSONL_SUFFIXES) else TEXT) for f in files]


def _record_starts(path: str, fmt: str) -> Iterator[tuple[int, int]]:
  """(byte offset, line number) where each record of a text or JSON-lines file starts."""
  offset, in_block = 0, False
  with tf.io.gfile.GFile(path, "rb") as f:
    for line_number, raw in enumerate(f, start=1):
      blank = not raw.strip()
      if fmt == JSONL and not blank:
        yield offset, line_number
      elif fmt == TEXT and not blank and not in_block:
        yield offset, line_number
      in_block = not blank
      offset += len(raw)


def _tfds_split_size(spec: CorpusSpec) -> int:
  """Examples in the TFDS split (its recorded size, or counted when none is recorded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    dataset = tfds.load(spec.inputs[0], split=spec.tfds_split, data_dir=spec.tfds_data_dir,
                        shuffle_files=False)
  except Exception as e:  # pylint: disable=broad-except  # tfds raises many kinds.
    raise UsageError(f"Cannot read split {spec.tfds_split!r} of TFDS dataset "
                     f"{spec.inputs[0]!r} ({e}). Prepare it with `tfds build`, or check "
                     "--tfds_split and --tfds_data_dir.") from e
  size = int(dataset.cardinality())
  return size if size >= 0 else sum(1 for _ in dataset)


def plan_shards(spec: CorpusSpec, documents_per_shard: int) -> list[Shard]:
  """Every shard of the corpus, in corpus order (see module doc)."""
  if documents_per_shard < 1:
    raise UsageError(f"documents_per_shard={documents_per_shard}; it must be >= 1.")
  shards: list[Shard] = []
  doc_id = 0

  def add(path, fmt, count, offset=0, line=1):
    nonlocal doc_id
    shards.append(Shard(len(shards), path, fmt, doc_id, count, offset, line))
    doc_id += count

  for path, fmt in resolve_files(spec):
    if fmt == TFDS:
      total = _tfds_split_size(spec)
      for start in range(0, total, documents_per_shard):
        add(path, fmt, min(documents_per_shard, total - start))
      continue
    starts = list(_record_starts(path, fmt))
    for first in range(0, len(starts), documents_per_shard):
      count = min(documents_per_shard, len(starts) - first)
      add(path, fmt, count, *starts[first])
  if not shards:
    raise UsageError(f"The corpus {list(spec.inputs)} holds no documents.")
  return shards


def _decode(raw: bytes, where: str) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{where}not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                     f"{e.start + 1}); re-encode the file as UTF-8") from None


def _text_of(value, field: str) -> str:
  """The document's text from a parsed record; ValueError naming what is wrong."""
  if not isinstance(value, dict):
    raise ValueError(f"expected a JSON object with \"{field}\", found a {type(value).__name__}")
  if field not in value:
    raise ValueError(f"missing field \"{field}\" (keys: {sorted(value)}); set --text_field")
  text = value[field]
  if isinstance(text, bytes):
    text = _decode(text, "")
  if not isinstance(text, str):
    raise ValueError(f"\"{field}\" must be a string, found {type(text).__name__}")
  return text


def _checked(doc_id: int, source: str, read) -> Record:
  try:
    text = read().strip()
  except ValueError as e:
    return Record(doc_id, source, None, str(e))
  if not text:
    return Record(doc_id, source, None, "empty document")
  return Record(doc_id, source, text)


def _file_records(shard: Shard, field: str) -> Iterator[Record]:
  with tf.io.gfile.GFile(shard.path, "rb") as f:
    f.seek(shard.byte_offset)
    line_number = shard.first_line - 1
    produced, block, block_line = 0, [], 0
    for raw in f:
      line_number += 1
      blank = not raw.strip()
      if shard.format == JSONL:
        if blank:
          continue
        yield _checked(shard.first_doc_id + produced, f"{shard.path}:{line_number}",
                       lambda raw=raw: _text_of(_json_loads(_decode(raw, "")), field))
        produced += 1
      elif not blank:
        if not block:
          block_line = line_number
        block.append((line_number, raw))
        continue
      elif block:
        yield _text_block(shard, produced, block_line, block)
        produced, block = produced + 1, []
      if produced == shard.num_records:
        return
    if block and produced < shard.num_records:
      yield _text_block(shard, produced, block_line, block)


def _json_loads(line: str):
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None


def _text_block(shard: Shard, position: int, first_line: int, lines) -> Record:
  def read():
    return "".join(_decode(raw, f"line {number}: ") for number, raw in lines)
  return _checked(shard.first_doc_id + position, f"{shard.path}:{first_line}", read)


def _tfds_records(shard: Shard, spec: CorpusSpec) -> Iterator[Record]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  start = shard.first_doc_id
  end = start + shard.num_records
  dataset = tfds.load(shard.path, split=f"{spec.tfds_split}[{start}:{end}]",
                      data_dir=spec.tfds_data_dir, shuffle_files=False)
  for position, example in enumerate(tfds.as_numpy(dataset)):
    index = start + position
    yield _checked(index, f"{shard.path}/{spec.tfds_split}[{index}]",
                   lambda example=example: _text_of(dict(example), spec.text_field))


def read_shard(shard: Shard, spec: CorpusSpec) -> list[Record]:
  """The shard's records in order: exactly `shard.num_records` of them."""
  if shard.format == TFDS:
    records = list(_tfds_records(shard, spec))
  else:
    records = list(_file_records(shard, spec.text_field))
  if len(records) != shard.num_records:
    raise UsageError(f"{shard.path} changed while the job ran: shard {shard.index} expected "
                     f"{shard.num_records} documents from line {shard.first_line}, found "
                     f"{len(records)}. Keep the corpus unchanged during (and between resumed "
                     "runs of) a job.")
  return records


def describe_files(shards: Sequence[Shard]) -> list[dict]:
  """Per input file: its documents and shards (for the manifest)."""
  files: dict[str, dict] = {}
  for shard in shards:
    entry = files.setdefault(shard.path, {"path": shard.path, "documents": 0, "shards": 0})
    entry["documents"] += shard.num_records
    entry["shards"] += 1
  return list(files.values())
