"""Reading synthesized shards as chains of (text, pairs).

Synthesized shards are what `instruct-jax synthesize` (and
connective_mining.write_mined_shards) write: JSON lines with `text`, `pairs`
(a list of {"question", "answer"}), `round`, `chain_id` and `doc_id`, in files
`*.jsonl` under one directory. A chain is the records sharing a chain id,
ordered by round. Reading groups the whole directory in memory; split a very
large corpus over several directories (one task each). Paths may be local or
gs:// (tf.io.gfile).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os

import tensorflow as tf

from instruct_jax.data.ipt import synthesizer_format as fmt
from instruct_jax.errors import UsageError

SHARD_PATTERN = "*.jsonl"


@dataclasses.dataclass
class Chain:
  """Linked texts, in round order, with their pairs."""
  chain_id: str
  links: list[tuple[str, list[fmt.QAPair]]]

  @property
  def num_documents(self) -> int:
    return len(self.links)


def shard_paths(directory: str) -> list[str]:
  paths = sorted(tf.io.gfile.glob(os.path.join(directory, SHARD_PATTERN)))
  if not paths:
    raise UsageError(f"No synthesized shards ({SHARD_PATTERN}) under {directory!r}; point the "
                     "IPT task at the output directory of `instruct-jax synthesize` or of "
                     "connective_mining.write_mined_shards.")
  return paths


def _record(line: str, where: str) -> tuple[str, int, str, list[fmt.QAPair]]:
  try:
    record = json.loads(line)
    pairs = [fmt.QAPair.from_json(p) for p in record.get("pairs") or []]
    return str(record["chain_id"]), int(record.get("round", 1)), record["text"], pairs
  except (ValueError, KeyError, TypeError) as error:
    raise UsageError(f"{where}: not a synthesized record ({error}); each line must be a JSON "
                     "object with text, pairs, round and chain_id. Regenerate or remove the "
                     "shard.") from error


def read_chains(directory: str) -> list[Chain]:
  """Every chain under `directory`, in order of first appearance (shards sorted by name)."""
  rounds: dict[str, list[tuple[int, str, list[fmt.QAPair]]]] = collections.defaultdict(list)
  for path in shard_paths(directory):
    with tf.io.gfile.GFile(path, "r") as f:
      for number, line in enumerate(f, start=1):
        if line.strip():
          chain_id, round_, text, pairs = _record(line, f"{path}:{number}")
          rounds[chain_id].append((round_, text, pairs))
  return [Chain(chain_id, [(text, pairs) for _, text, pairs in sorted(links, key=lambda l: l[0])])
          for chain_id, links in rounds.items()]
