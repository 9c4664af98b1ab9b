"""What a mixture is made of: its tasks, their mixing rates, example counts, sample prompts.

Counts come from a task's cache (seqio's stats of `instruct-jax cache`) when it is
cached, else from its data source when the source knows them; samples are read from the
cache when there is one (cheap), else preprocessed on the fly.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import seqio

from instruct_jax.data import cache as cache_lib

_SAMPLE_CHARACTERS = 400  # Longer texts are cut in the report.


@dataclasses.dataclass(frozen=True)
class TaskSummary:
  """One task of a mixture: its rate, count and where the count comes from, samples."""
  name: str
  rate: float | None           # None: the rate function failed (e.g. no split metadata)
  examples: int | None         # None: unknown without reading the whole split
  counted_from: str            # "cache", "source" or "unknown"
  cached: bool
  samples: list[dict[str, str]]
  problem: str = ""            # Why no samples could be read (e.g. TFDS data not built)


def _rate(provider: seqio.Task | seqio.Mixture, task: seqio.Task) -> float | None:
  if not isinstance(provider, seqio.Mixture):
    return 1.0
  try:
    return float(provider.get_rate(task))
  except Exception:  # pylint: disable=broad-except
    return None


def _text(example: dict, name: str, feature: seqio.Feature) -> str:
  raw = example.get(f"{name}_pretokenized")
  if raw is not None:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
  else:
    text = feature.vocabulary.decode([int(i) for i in example[name]])
  return text if len(text) <= _SAMPLE_CHARACTERS else text[:_SAMPLE_CHARACTERS] + " ..."


def summarize(provider: seqio.Task | seqio.Mixture, split: str, num_samples: int = 2,
              cache_dir: str | None = None) -> list[TaskSummary]:
  """A TaskSummary per task of `provider` that has `split` (caches looked up in cache_dir)."""
  cache_lib.add_cache_dirs(cache_dir)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  summaries = []
  for task in tasks:
    if split not in task.splits:
      continue
    cached = bool(task.supports_caching and task.cache_dir)
    examples, samples, problem = None, [], ""
    try:
      if cached:
        examples = int(task.get_cached_stats(split)["examples"])
      else:
        examples = task.source.num_input_examples(split)
      dataset = task.get_dataset(None, split=split, use_cached=cached, shuffle=False)
      samples = [{name: _text(ex, name, feature)
                  for name, feature in task.output_features.items() if name in ex}
                 for ex in dataset.take(num_samples).as_numpy_iterator()]
    except Exception as e:  # pylint: disable=broad-except
      problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    counted_from = "unknown" if examples is None else ("cache" if cached else "source")
    summaries.append(TaskSummary(task.name, _rate(provider, task), examples, counted_from,
                                 cached, samples, problem))
  return summaries


def format_report(name: str, split: str, summaries: Sequence[TaskSummary]) -> str:
  """A table of the tasks (rate, share of the mixture, count) followed by the samples."""
  known_rates = [s.rate for s in summaries if s.rate is not None]
  total_rate = sum(known_rates) or 1.0
  width = max([len(s.name) for s in summaries] + [len("task")])
  lines = [f"{name} ({split}): {len(summaries)} task(s)", "",
           f"{'task':<{width}}  {'rate':>10}  {'share':>6}  {'examples':>10}  counted from",
           f"{'-' * width}  {'-' * 10}  {'-' * 6}  {'-' * 10}  {'-' * 12}"]
  for s in summaries:
    rate = "?" if s.rate is None else f"{s.rate:.4g}"
    share = "?" if s.rate is None else f"{100 * s.rate / total_rate:.1f}%"
    examples = "?" if s.examples is None else str(s.examples)
    lines.append(f"{s.name:<{width}}  {rate:>10}  {share:>6}  {examples:>10}  {s.counted_from}")
  for s in summaries:
    lines += ["", f"== {s.name}" + (" (from its cache)" if s.cached else "")]
    if s.problem:
      lines.append(f"  cannot read its examples ({s.problem}); if its TFDS data is not "
                   f"built, run: instruct-jax prepare --mixture={name}")
    for index, sample in enumerate(s.samples):
      for feature, text in sample.items():
        lines.append(f"  [{index}] {feature}: " + text.replace("\n", "\n      "))
  return "\n".join(lines)
