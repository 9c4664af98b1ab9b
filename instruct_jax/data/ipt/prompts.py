"""Synthesis prompts: round 1 (the text alone) and round r > 1 (after the previous chain).

Multi-round synthesis splits the corpus into M parts; text i of round r is
prompted after the chain that text i of round r-1 ended (those texts and their
pairs, each a finished example), so the synthesizer sees a few-shot context and
the chain grows to M texts. The chain is used only when its texts got pairs and
the whole prompt fits the budget, measured with the real tokenizer; otherwise
the text is prompted alone and starts a new chain.

For a decoder-only synthesizer the prompt is the start of the sequence and the
model continues it with pairs (budget = context length - max new tokens). For an
encoder-decoder synthesizer the same string is the encoder input and the decoder
generates the pairs (budget = encoder length).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

from instruct_jax.data.ipt import synthesizer_format as fmt
from instruct_jax.errors import UsageError

DECODER_ONLY = "decoder_only"
ENCODER_DECODER = "encoder_decoder"
ARCHITECTURES = (DECODER_ONLY, ENCODER_DECODER)

TokenCounter = Callable[[str], int]


@dataclasses.dataclass
class ChainLink:
  """One text of a chain and the pairs synthesized for it."""
  text: str
  pairs: list[fmt.QAPair]


@dataclasses.dataclass
class SynthesisPrompt:
  """inputs: the prompt string; linked: the previous chain is in front of the text."""
  inputs: str
  linked: bool
  num_tokens: int
  architecture: str = DECODER_ONLY


def serialize_chain(chain: Sequence[ChainLink]) -> str:
  """The chain's texts as finished examples, back to back."""
  return "".join(fmt.serialize_example(link.text, link.pairs) for link in chain)


def _check_architecture(architecture: str) -> str:
  if architecture not in ARCHITECTURES:
    raise UsageError(f"Unknown synthesizer architecture {architecture!r}; use one of "
                     f"{', '.join(ARCHITECTURES)}.")
  return architecture


def build_prompt(text: str, previous: Sequence[ChainLink], *, budget_tokens: int,
                 count_tokens: TokenCounter,
                 architecture: str = DECODER_ONLY) -> SynthesisPrompt:
  """The prompt for `text`, after `previous` when that chain got pairs and everything fits.

  `previous` is the chain to put in front (empty in round 1): the chain the
  previous round's text was prompted with, plus that text and its pairs (see
  `next_chain`). The text alone may exceed the budget; `truncate_to_budget` it first.
  """
  _check_architecture(architecture)
  alone = fmt.serialize_context(text)
  if previous and all(link.pairs for link in previous):
    linked = serialize_chain(previous) + alone
    num_tokens = count_tokens(linked)
    if num_tokens <= budget_tokens:
      return SynthesisPrompt(linked, True, num_tokens, architecture)
  return SynthesisPrompt(alone, False, count_tokens(alone), architecture)


def next_chain(previous: Sequence[ChainLink], prompt: SynthesisPrompt,
               link: ChainLink) -> list[ChainLink]:
  """The chain the next round's text is prompted after: this link, after `previous` if linked."""
  return [*previous, link] if prompt.linked else [link]


def truncate_to_budget(text: str, budget_tokens: int,
                       count_tokens: TokenCounter) -> tuple[str, bool]:
  """(text, truncated): the longest whitespace-bounded prefix whose prompt fits the budget.

  Measures the serialised context (`<s> <CON> text </CON>` and the blank line),
  so `build_prompt` on the result alone always fits `budget_tokens`. A binary
  search over word ends: O(log words) tokenizer calls on long documents.
  """
  def fits(candidate: str) -> bool:
    return count_tokens(fmt.serialize_context(candidate)) <= budget_tokens

  if fits(text):
    return text, False
  if not fits(""):
    raise UsageError(f"A prompt budget of {budget_tokens} tokens cannot hold even the "
                     "empty context markers; raise the context length or lower the "
                     "number of new tokens.")
  word_ends = [m.end() for m in re.finditer(r"\S+", text)]
  low, high = 0, len(word_ends)  # the first `low` words fit; `high` words do not
  while high - low > 1:
    middle = (low + high) // 2
    if fits(text[:word_ends[middle - 1]]):
      low = middle
    else:
      high = middle
  return (text[:word_ends[low - 1]] if low else ""), True
