"""Synthesis prompts as token ids: the `<s>` / `</s>` markers become the BOS / EOS ids.

The synthesizer format writes example boundaries as the literal strings `<s>`
and `</s>`; a Hugging Face tokenizer (the released Mistral synthesizer's) reads
them as its BOS / EOS tokens, while seqio's SentencePiece and byte vocabularies
would spell them out as text. So the prompt is split on the two markers and each
becomes its special id: EOS is the vocabulary's EOS; BOS is the vocabulary's BOS
when it has one. Without one (byte and T5 vocabularies), a decoder-only prompt
starts with seqio's start id 0, the token a decoder starts every sequence with,
and a `<s>` inside it is dropped, as in a training sequence (0 is padding there,
and in an encoder input). The token counts that budget prompts are the lengths of these
id lists, so budgets are measured with the model's real vocabulary.
"""
import re
from typing import Optional

import seqio

from instruct_jax.data.ipt import synthesizer_format as fmt

START_ID = 0  # seqio's decoder start token (and padding)
_MARKERS = re.compile(f"({re.escape(fmt.BOS)}|{re.escape(fmt.EOS)})")


def bos_id(vocabulary: seqio.Vocabulary) -> Optional[int]:
  """The vocabulary's BOS id, or None (byte and T5 vocabularies have none)."""
  value = getattr(vocabulary, "bos_id", None)
  return value if isinstance(value, int) and value >= 0 else None


def encode_prompt(vocabulary: seqio.Vocabulary, text: str, *, decoder_only: bool) -> list[int]:
  """Token ids of a prompt string, markers as special ids (see module doc)."""
  bos = bos_id(vocabulary)
  ids: list[int] = []
  for piece in _MARKERS.split(text):
    if piece == fmt.BOS:
      if bos is not None:
        ids.append(bos)
      elif decoder_only and not ids:
        ids.append(START_ID)
    elif piece == fmt.EOS:
      ids.append(vocabulary.eos_id)
    elif piece:
      ids.extend(int(i) for i in vocabulary.encode(piece))
  return ids
