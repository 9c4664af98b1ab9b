"""The output directory of a synthesis job: shards, their counts, and the manifest.

    OUTPUT_DIR/
      manifest.json                     the job's arguments (and their fingerprint), its
                                        shard plan; once every shard is done, per-shard
                                        and total counts and "complete": true
      shard-00003-of-00010.jsonl        one JSON object per synthesized document
      shard-00003-of-00010.counts.json  that shard's counts and skipped records (file:line)

Every file is written whole through a temporary file and a rename
(checkpoints.layout.write_atomically), the counts after the shard, so a shard
whose counts file exists is finished and complete: a rerun (or another process)
skips it. A rerun whose arguments or shard plan differ from the manifest's is
refused, so two jobs never mix in one directory. Several processes may write
the same manifest: its content depends on the job only.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf

from instruct_jax.checkpoints import layout
from instruct_jax.errors import UsageError
from instruct_jax.synthesis import corpus

MANIFEST_FILE = "manifest.json"
FORMAT = "instruct_jax synthesized pairs, v1"
# Skipped records listed per shard in its counts file (all are counted).
MAX_LISTED_PROBLEMS = 1000


def fingerprint(arguments: Mapping[str, Any], shards: Sequence[corpus.Shard]) -> str:
  text = json.dumps({"arguments": arguments, "shards": [s.to_json() for s in shards]},
                    sort_keys=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


class OutputDir:
  """One job's output directory (see module doc)."""

  def __init__(self, path: str, arguments: Mapping[str, Any], shards: Sequence[corpus.Shard]):
    self.path = path
    self.arguments = dict(arguments)
    self.shards = list(shards)
    self.fingerprint = fingerprint(self.arguments, self.shards)

  @property
  def manifest_path(self) -> str:
    return os.path.join(self.path, MANIFEST_FILE)

  def shard_path(self, shard: corpus.Shard) -> str:
    return os.path.join(self.path, f"shard-{shard.index:05d}-of-{len(self.shards):05d}.jsonl")

  def counts_path(self, shard: corpus.Shard) -> str:
    return self.shard_path(shard)[:-len(".jsonl")] + ".counts.json"

  def _manifest(self, shard_counts: Optional[list[dict]] = None) -> dict:
    manifest = {"format": FORMAT, "fingerprint": self.fingerprint,
                "arguments": self.arguments, "files": corpus.describe_files(self.shards),
                "complete": shard_counts is not None}
    if shard_counts is None:
      manifest["shards"] = [{"file": os.path.basename(self.shard_path(s)), **s.to_json()}
                            for s in self.shards]
    else:
      manifest["totals"] = total_counts(shard_counts)
      manifest["shards"] = [{"file": os.path.basename(self.shard_path(s)), **s.to_json(),
                             "counts": c["counts"]} for s, c in zip(self.shards, shard_counts)]
    return manifest

  def prepare(self) -> None:
    """Checks an existing manifest against this job, or writes the first one."""
    tf.io.gfile.makedirs(self.path)
    if tf.io.gfile.exists(self.manifest_path):
      with tf.io.gfile.GFile(self.manifest_path) as f:
        try:
          existing = json.load(f)
        except json.JSONDecodeError:
          existing = {}
      if existing.get("fingerprint") != self.fingerprint:
        raise UsageError(self._mismatch(existing))
      return
    layout.write_atomically(self.manifest_path, json.dumps(self._manifest(), indent=1))

  def _mismatch(self, existing: Mapping[str, Any]) -> str:
    before = existing.get("arguments", {})
    changed = [f"{key}: {before.get(key)!r} then, {self.arguments.get(key)!r} now"
               for key in sorted(set(before) | set(self.arguments))
               if before.get(key) != self.arguments.get(key)]
    what = ("; ".join(changed) if changed else
            "same arguments, but the corpus changed (other documents per file)")
    return (f"{self.path} holds the output of another synthesis job ({what}). Rerun with "
            "the same arguments and corpus to resume it, or pass another --output_dir.")

  def is_finished(self, shard: corpus.Shard) -> bool:
    return tf.io.gfile.exists(self.counts_path(shard))

  def write_shard(self, shard: corpus.Shard, records: Sequence[dict], counts: Mapping[str, int],
                  problems: Sequence[str]) -> None:
    """The shard's records, then its counts (which mark it finished)."""
    layout.write_atomically(self.shard_path(shard), "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    layout.write_atomically(self.counts_path(shard), json.dumps(
        {"shard": shard.to_json(), "counts": dict(sorted(counts.items())),
         "problems": list(problems[:MAX_LISTED_PROBLEMS])}, indent=1, ensure_ascii=False))

  def read_counts(self, shard: corpus.Shard) -> dict:
    with tf.io.gfile.GFile(self.counts_path(shard)) as f:
      return json.load(f)

  def finalize(self) -> Optional[dict]:
    """Writes the complete manifest once every shard is finished; its totals (else None)."""
    if not all(self.is_finished(s) for s in self.shards):
      return None
    shard_counts = [self.read_counts(s) for s in self.shards]
    manifest = self._manifest(shard_counts)
    layout.write_atomically(self.manifest_path, json.dumps(manifest, indent=1))
    return manifest["totals"]


def total_counts(shard_counts: Sequence[Mapping[str, Any]]) -> dict[str, int]:
  totals: dict[str, int] = {}
  for entry in shard_counts:
    for key, value in entry["counts"].items():
      totals[key] = totals.get(key, 0) + value
  return dict(sorted(totals.items()))
