"""Multi-round synthesis of one shard: chains of texts, each prompted after the last.

The shard's records are split into M equal parts (round r synthesizes part r).
Text i of round r is prompted after the chain that text i of round r-1 ended,
when that chain got pairs and the prompt fits the budget (data.ipt.prompts
decides); otherwise it is prompted alone and starts a new chain. Chains grow to
M texts. A record that is not a usable document (see corpus.Record) is left
out and breaks its chain, like a text without pairs.

The model is behind `generate` (prompts -> generations), so the chaining can
be checked with known generated strings; synthesizer.py passes the real model.
Every usable document yields exactly one output record.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Optional, Sequence

from instruct_jax.data.ipt import prompts as prompts_lib
from instruct_jax.data.ipt import synthesizer_format as fmt
from instruct_jax.synthesis import corpus


@dataclasses.dataclass(frozen=True)
class Generation:
  """What the synthesizer wrote after one prompt, and how many tokens that took."""
  text: str
  num_tokens: int


Generate = Callable[[Sequence[prompts_lib.SynthesisPrompt]], list[Generation]]


@dataclasses.dataclass
class ShardResult:
  """Output records (one per usable document, by round then position) and counts."""
  records: list[dict]
  counts: collections.Counter
  problems: list[str]


def split_parts(items: Sequence, rounds: int) -> list[Sequence]:
  """`items` in `rounds` consecutive parts whose sizes differ by at most one."""
  n = len(items)
  return [items[r * n // rounds:(r + 1) * n // rounds] for r in range(rounds)]


@dataclasses.dataclass
class _Chain:
  chain_id: int
  links: list[prompts_lib.ChainLink]


def synthesize_shard(records: Sequence[corpus.Record], *, rounds: int, budget_tokens: int,
                     count_tokens: prompts_lib.TokenCounter, architecture: str,
                     generate: Generate) -> ShardResult:
  """Runs the M rounds over one shard's records (see module doc)."""
  counts: collections.Counter = collections.Counter()
  problems: list[str] = []
  output: list[dict] = []
  chains: list[Optional[_Chain]] = []
  for round_index, part in enumerate(split_parts(records, rounds), start=1):
    documents, prompts = [], []
    for position, record in enumerate(part):
      chain = chains[position] if position < len(chains) else None
      text = record.text
      truncated = False
      if text is not None:
        text, truncated = prompts_lib.truncate_to_budget(text, budget_tokens, count_tokens)
        if not text:
          record = dataclasses.replace(record, text=None, problem=(
              f"longer than the prompt budget of {budget_tokens} tokens and no whole word fits"))
      if record.text is None:
        counts["skipped"] += 1
        problems.append(f"{record.source}: {record.problem}")
        documents.append(None)
        continue
      counts["truncated"] += truncated
      prompt = prompts_lib.build_prompt(text, chain.links if chain else [],
                                        budget_tokens=budget_tokens,
                                        count_tokens=count_tokens, architecture=architecture)
      documents.append((record, text, truncated, prompt, chain))
      prompts.append(prompt)
    generations = iter(generate(prompts) if prompts else [])
    new_chains: list[Optional[_Chain]] = []
    for document in documents:
      if document is None:
        new_chains.append(None)
        continue
      record, text, truncated, prompt, chain = document
      generation = next(generations)
      parsed = fmt.parse_pairs(generation.text)
      link = prompts_lib.ChainLink(text, parsed.pairs)
      chain_id = chain.chain_id if prompt.linked else record.doc_id
      new_chains.append(_Chain(chain_id, prompts_lib.next_chain(
          chain.links if chain else [], prompt, link)))
      output.append({
          "text": text, "pairs": [p.to_json() for p in parsed.pairs], "round": round_index,
          "chain_id": chain_id, "doc_id": record.doc_id, "source": record.source,
          "linked": prompt.linked, "truncated": truncated, "num_pairs": len(parsed.pairs),
          "malformed": parsed.malformed, "duplicates": parsed.duplicates,
          "incomplete_tail": parsed.incomplete_tail, "prompt_tokens": prompt.num_tokens,
          "generated_tokens": generation.num_tokens})
      counts["documents"] += 1
      counts["pairs"] += len(parsed.pairs)
      counts["documents_without_pairs"] += not parsed.pairs
      counts["malformed_pieces"] += parsed.malformed
      counts["outputs_with_malformed"] += parsed.malformed > 0
      counts["duplicate_questions"] += parsed.duplicates
      counts["incomplete_tails"] += parsed.incomplete_tail
      counts["linked"] += prompt.linked
      counts["generated_tokens"] += generation.num_tokens
    chains = new_chains
  return ShardResult(output, counts, problems)
