"""Synthesizer-tuning examples: QA items grouped per context, tokenized, concatenated.

One example is one context with all its questions as pairs, in the
synthesizer's serialisation. Per dataset, at most `max_contexts` contexts are
kept, those with the most pairs (ties in dataset order). A training sequence
concatenates several examples of the same dataset back to back, few-shot style,
up to the sequence length, with a role per token (pair_loss): context for each
`<s> <CON> ... </CON>` and its blank line (no loss), pair for its pairs and `</s>`. Each
example is tokenized on its own, as seqio tokenizes examples, so its tokens do
not depend on its neighbours. `encode` turns a serialised string into ids; give
it the same marker handling as the synthesis prompts (the registry uses
instruct_jax.synthesis.prompt_tokens: `<s>` / `</s>` as the BOS / EOS ids), so
the tuned synthesizer sees at synthesis time exactly the tokens it was tuned on.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from instruct_jax.data.ipt import pair_loss
from instruct_jax.data.ipt import synthesizer_format as fmt

DEFAULT_MAX_CONTEXTS = 10_000
Encoder = Callable[[str], Sequence[int]]


@dataclasses.dataclass
class TuningExample:
  """A context and all its pairs."""
  text: str
  pairs: list[fmt.QAPair]


@dataclasses.dataclass
class TokenizedExample:
  tokens: list[int]
  context_length: int  # the first `context_length` tokens carry no loss


def group_by_context(items: Iterable[tuple[str, fmt.QAPair]],
                     max_contexts: int | None = DEFAULT_MAX_CONTEXTS) -> list[TuningExample]:
  """Examples of the contexts with the most pairs; a question repeated on a context counts once."""
  pairs: dict[str, list[fmt.QAPair]] = collections.OrderedDict()
  seen: dict[str, set[str]] = collections.defaultdict(set)
  for context, pair in items:
    key = pair.question.lower()
    if key not in seen[context]:
      seen[context].add(key)
      pairs.setdefault(context, []).append(pair)
  examples = [TuningExample(context, p) for context, p in pairs.items()]
  if max_contexts is not None and len(examples) > max_contexts:
    keep = sorted(range(len(examples)), key=lambda i: -len(examples[i].pairs))[:max_contexts]
    examples = [examples[i] for i in sorted(keep)]
  return examples


def tokenize_example(example: TuningExample, encode: Encoder,
                     max_length: int) -> TokenizedExample | None:
  """The example's tokens, dropping pairs from the end to fit; None when no pair fits."""
  context_tokens = encode(fmt.serialize_context(example.text))
  pairs = list(example.pairs)
  while pairs:
    tokens = encode(fmt.serialize_example(example.text, pairs))
    if len(tokens) <= max_length:
      # The context's tokens are a prefix of the example's up to the tokenizer's
      # merges across the blank line; clamp so a merge never weights context text.
      return TokenizedExample(list(tokens), min(len(context_tokens), len(tokens)))
    pairs.pop()
  return None


def pack_examples(examples: Iterable[TokenizedExample], sequence_length: int
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Greedy back-to-back concatenation into sequences of at most `sequence_length` tokens.

  Yields {"targets", "targets_roles"} int32 arrays of equal length (see
  pair_loss: ROLE_CONTEXT on context tokens, ROLE_PAIR on pair tokens).
  """
  tokens: list[int] = []
  roles: list[int] = []

  def flush():
    sequence = {"targets": np.asarray(tokens, np.int32),
                pair_loss.ROLES: np.asarray(roles, np.int32)}
    tokens.clear()
    roles.clear()
    return sequence

  for example in examples:
    if len(example.tokens) > sequence_length:
      raise ValueError(f"An example of {len(example.tokens)} tokens exceeds the sequence "
                       f"length {sequence_length}; tokenize it with that max_length.")
    if len(tokens) + len(example.tokens) > sequence_length:
      yield flush()
    tokens += example.tokens
    roles += [pair_loss.ROLE_CONTEXT] * example.context_length + [pair_loss.ROLE_PAIR] * (
        len(example.tokens) - example.context_length)
  if tokens:
    yield flush()


def tuning_sequences(examples: Sequence[TuningExample], encode: Encoder,
                     sequence_length: int) -> tuple[list[dict[str, np.ndarray]], int]:
  """(packed sequences, number of examples dropped because no pair fits)."""
  tokenized = [tokenize_example(e, encode, sequence_length) for e in examples]
  kept = [t for t in tokenized if t is not None]
  return list(pack_examples(kept, sequence_length)), len(tokenized) - len(kept)
