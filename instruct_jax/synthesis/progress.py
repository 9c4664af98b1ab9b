"""The synthesis job's progress line and its final summary (stdout, like train's lines).

    synthesize: 1,200/20,000 docs (6%) | 3.10 docs/s | 1,240 gen tokens/s | 4.20 pairs/doc
      | ETA 1:41:05   (one line)

A line at most every `period_seconds` (and one per finished shard when the
period is 0), so a long job's log stays readable; rates count this launch only,
documents as their batches are decoded.
"""
from __future__ import annotations

import datetime
import sys
import time
from typing import Mapping, Optional, Sequence, TextIO

from instruct_jax.data.ipt import synthesizer_format as fmt


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(round(seconds))))


class Progress:
  """Counts documents, generated tokens and pairs; prints the progress line."""

  def __init__(self, total_documents: int, *, period_seconds: float = 30.0,
               label: str = "synthesize", stream: Optional[TextIO] = None):
    self.total = total_documents
    self.period = period_seconds
    self.label = label
    self.stream = stream or sys.stdout
    self.start = time.time()
    self._last = self.start
    self.documents = self.tokens = self.pairs = 0

  def batch_decoded(self, generations: Sequence) -> None:
    """One decoded batch: a document and its pairs per generation."""
    self.documents += len(generations)
    self.tokens += sum(g.num_tokens for g in generations)
    self.pairs += sum(len(fmt.parse_pairs(g.text).pairs) for g in generations)
    self.maybe_print()

  def shard_done(self, counts: Mapping[str, int]) -> None:
    """A finished shard: its skipped records count as done too."""
    self.documents += counts.get("skipped", 0)
    self.maybe_print(force=self.period == 0)

  @property
  def seconds(self) -> float:
    return max(time.time() - self.start, 1e-9)

  def line(self) -> str:
    rate = self.documents / self.seconds
    parts = [f"{self.documents:,}/{self.total:,} docs "
             f"({100 * self.documents / max(self.total, 1):.0f}%)",
             f"{rate:.2f} docs/s", f"{self.tokens / self.seconds:,.0f} gen tokens/s",
             f"{self.pairs / max(self.documents, 1):.2f} pairs/doc"]
    if 0 < self.documents < self.total:
      parts.append(f"ETA {_duration((self.total - self.documents) / rate)}")
    return f"{self.label}: " + " | ".join(parts)

  def maybe_print(self, force: bool = False) -> None:
    now = time.time()
    if force or (self.period > 0 and now - self._last >= self.period):
      self._last = now
      print(self.line(), file=self.stream, flush=True)


def summary(result: Mapping) -> str:
  """The job's closing lines: what was done, the rates, the counts that need a look."""
  counts = result["counts"]
  documents = counts.get("documents", 0)
  scope = "the job" if result["complete"] else "this process's shards"
  lines = [f"synthesize: {result['shards_done']} shard(s) synthesized now, "
           f"{result['shards_resumed']} already done; {result['shards_total']} in the job"
           + ("" if result["complete"] else " (other processes' shards still running)")]
  if result["seconds"] and result["documents_now"]:
    lines.append(f"  rate       {result['documents_now'] / result['seconds']:.2f} docs/s, "
                 f"{result['tokens_now'] / result['seconds']:,.0f} generated tokens/s "
                 f"over {_duration(result['seconds'])}")
  lines += [
      f"  documents  {documents:,} synthesized ({scope}), "
      f"{counts.get('pairs', 0):,} pairs ({counts.get('pairs', 0) / max(documents, 1):.2f}"
      f" per document), {counts.get('linked', 0):,} prompted after their chain",
      f"  no pairs   {counts.get('documents_without_pairs', 0):,} document(s)",
      f"  malformed  {counts.get('outputs_with_malformed', 0):,} output(s) with malformed "
      f"pieces ({counts.get('malformed_pieces', 0):,} pieces), "
      f"{counts.get('incomplete_tails', 0):,} cut off at the token limit",
      f"  input      {counts.get('skipped', 0):,} record(s) skipped, "
      f"{counts.get('truncated', 0):,} truncated to the prompt budget"]
  for problem in result.get("problems", [])[:5]:
    lines.append(f"    skipped {problem}")
  lines.append(f"  output     {result['output_dir']}")
  return "\n".join(lines)
