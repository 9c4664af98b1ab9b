"""Instruction-augmented pre-training text: (text, pairs) rendered as natural text.

The synthesizer's markers are dropped. Each text of a chain is written as the
raw text first (in ~95% of texts; else after its pairs), an optional lead-in,
then its pairs in one template family; every text of a chain uses the same
family (chosen by chain id), so an M-text chain reads as one consistent
few-shot sequence, and the chain's texts are joined into one training text.

Template families (wording ours) differ in question / answer prefixes, how an
options block is written, how reasoning and the final answer are laid out,
numbering, and dialog turns. Choices are pure functions of (seed, chain id):
a rerun renders the same bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import string
from typing import Callable, Sequence

from instruct_jax.data.ipt import synthesizer_format as fmt

TEXT_FIRST_PROBABILITY = 0.95
LEAD_IN_PROBABILITY = 0.5
LINK_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class TemplateFamily:
  """One consistent way of writing the pairs of a chain.

  question / answer: format strings with {n} (1-based pair number) and {q} / {a}.
  options: renders (options) as a block or sentence appended to the question.
  reasoning: renders (reasoning, final answer) for chain-of-thought pairs.
  """
  name: str
  question: str
  answer: str
  options: Callable[[Sequence[str]], str]
  reasoning: Callable[[str, str], str]
  pair_separator: str
  lead_ins: tuple[str, ...]
  trailing_lead_ins: tuple[str, ...]


def _bullets(options: Sequence[str]) -> str:
  return "\n".join(f"- {o}" for o in options)


def _lettered(options: Sequence[str]) -> str:
  return "\n".join(f"({letter}) {o}" for letter, o in zip(string.ascii_uppercase, options))


def _inline(options: Sequence[str]) -> str:
  if len(options) == 1:
    return f"The only choice: {options[0]}."
  return "Pick one: " + "; ".join(options[:-1]) + f"; or {options[-1]}."


def _choice_line(options: Sequence[str]) -> str:
  return "Choices: " + " | ".join(options)


def _dotted(options: Sequence[str]) -> str:
  return "\n".join(f"{letter}. {o}" for letter, o in zip(string.ascii_uppercase, options))


FAMILIES = (
    TemplateFamily(
        name="plain_qa", question="Question: {q}", answer="Answer: {a}",
        options=lambda o: "Options:\n" + _bullets(o),
        reasoning=lambda r, a: f"{r}\nSo the answer is: {a}",
        pair_separator="\n\n",
        lead_ins=("Answer the following questions about the text above.",
                  "Some questions on this passage:"),
        trailing_lead_ins=("The questions above are about this text:",)),
    TemplateFamily(
        name="short_prefixes", question="Q: {q}", answer="A: {a}",
        options=_inline,
        reasoning=lambda r, a: f"{r} Final answer: {a}",
        pair_separator="\n",
        lead_ins=("Now test yourself on what you read.", "Quick check:"),
        trailing_lead_ins=("Read this first:",)),
    TemplateFamily(
        name="numbered", question="{n}. {q}", answer="Answer {n}: {a}",
        options=_lettered,
        reasoning=lambda r, a: f"Explanation: {r}\nResult: {a}",
        pair_separator="\n\n",
        lead_ins=("Exercises based on the passage:", "Work through these questions."),
        trailing_lead_ins=("Passage for the exercises:",)),
    TemplateFamily(
        name="dialog", question="User: {q}", answer="Assistant: {a}",
        options=_choice_line,
        reasoning=lambda r, a: f"Let me reason about it. {r} That gives {a}.",
        pair_separator="\n",
        lead_ins=("A conversation about the text above.", "Here is a chat about it."),
        trailing_lead_ins=("The chat above discussed this text:",)),
    TemplateFamily(
        name="exam", question="Problem {n}: {q}", answer="Solution: {a}",
        options=_dotted,
        reasoning=lambda r, a: f"Reasoning: {r}\nTherefore: {a}",
        pair_separator="\n\n",
        lead_ins=("Use the text to solve these problems.", "Problems:"),
        trailing_lead_ins=("Reference text:",)),
)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)


def chain_rng(chain_id: object, seed: int = 0, salt: str = "") -> random.Random:
  """A generator that depends only on (seed, chain id, salt): stable across processes."""
  digest = hashlib.sha256(f"{seed}\x00{chain_id}\x00{salt}".encode()).digest()
  return random.Random(int.from_bytes(digest[:8], "little"))


def family_for_chain(chain_id: object, seed: int = 0) -> TemplateFamily:
  return chain_rng(chain_id, seed, "family").choice(FAMILIES)


def render_question(pair: fmt.QAPair, family: TemplateFamily, number: int) -> str:
  stem, options = fmt.split_options(pair.question)
  if options:
    stem = f"{stem}\n{family.options(options)}"
  if pair.question.rstrip().endswith(fmt.COT_TRIGGER) and not stem.endswith(fmt.COT_TRIGGER):
    stem = f"{stem}\n{fmt.COT_TRIGGER}"
  return family.question.format(n=number, q=stem)


def render_answer(pair: fmt.QAPair, family: TemplateFamily, number: int) -> str:
  reasoning, final = fmt.split_reasoning(pair.answer)
  answer = family.reasoning(reasoning, final) if reasoning else pair.answer
  return family.answer.format(n=number, a=answer)


def render_pairs(pairs: Sequence[fmt.QAPair], family: TemplateFamily) -> str:
  return family.pair_separator.join(
      f"{render_question(p, family, n)}\n{render_answer(p, family, n)}"
      for n, p in enumerate(pairs, start=1))


def render_link(text: str, pairs: Sequence[fmt.QAPair], family: TemplateFamily,
                rng: random.Random) -> str:
  """One text with its pairs; the text alone when it has none."""
  text = text.strip()
  if not pairs:
    return text
  rendered = render_pairs(pairs, family)
  with_lead_in = rng.random() < LEAD_IN_PROBABILITY
  if rng.random() < TEXT_FIRST_PROBABILITY:
    parts = [text, rng.choice(family.lead_ins), rendered] if with_lead_in else [text, rendered]
  else:
    parts = [rendered, rng.choice(family.trailing_lead_ins), text] if with_lead_in else [
        rendered, text]
  return "\n\n".join(parts)


def render_chain(links: Sequence[tuple[str, Sequence[fmt.QAPair]]], chain_id: object,
                 seed: int = 0) -> str:
  """The chain's texts, each with its pairs in the chain's family, as one training text."""
  family = family_for_chain(chain_id, seed)
  rng = chain_rng(chain_id, seed, "layout")
  return LINK_SEPARATOR.join(render_link(text, pairs, family, rng) for text, pairs in links)


def render_chain_encoder_decoder(links: Sequence[tuple[str, Sequence[fmt.QAPair]]],
                                 chain_id: object, seed: int = 0) -> tuple[str, str]:
  """(inputs, targets): the texts with their questions, and the answers in order.

  A span-free prefix-LM split for encoder-decoder models; questions are numbered
  across the chain so each answer can be matched to its question.
  """
  family = family_for_chain(chain_id, seed)
  inputs, targets, number = [], [], 0
  for text, pairs in links:
    questions = []
    for pair in pairs:
      number += 1
      questions.append(render_question(pair, family, number))
      targets.append(render_answer(pair, family, number))
    inputs.append("\n\n".join([text.strip(), *questions]) if questions else text.strip())
  return LINK_SEPARATOR.join(inputs), "\n".join(targets)
