"""Rule-based tasks mined from raw text (the AdaptLLM-style fallback: no model needed).

A sentence that opens with a connective states a relation to the sentence
before it, which is turned into a comprehension task with wording of our own:

  therefore / thus / consequently / as a result   -> what follows (entailment / cause)
  however / nevertheless / in contrast / yet       -> a contrasting statement
  in other words / that is to say / put simply      -> paraphrase
  for example / for instance                        -> an example of a claim
  "X is defined as Y" / "X refers to Y"             -> word-to-text and text-to-word
plus summarisation from a title line and text completion of the last sentence.

The output is (text, pairs) in the synthesizer's QAPair form, so mined corpora
go through the same rendering and seqio tasks as synthesized ones
(`write_mined_shards` writes the shard format of `instruct-jax synthesize`).
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Iterator

from instruct_jax.data.ipt import synthesizer_format as fmt

DEFAULT_MAX_PAIRS = 6
MIN_SENTENCE_WORDS = 4

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_RELATIONS = (
    ("entailment", re.compile(
        r"^(?:therefore|thus|consequently|hence|as a result),?\s+(.+)$", re.I)),
    ("contrast", re.compile(
        r"^(?:however|nevertheless|nonetheless|in contrast|on the other hand|yet),?\s+(.+)$",
        re.I)),
    ("paraphrase", re.compile(r"^(?:in other words|that is to say|put simply),?\s+(.+)$", re.I)),
    ("example", re.compile(r"^(?:for example|for instance),?\s+(.+)$", re.I)),
)
_DEFINITION = re.compile(
    r"^(?:an?\s+|the\s+)?(?P<term>[\w\- ]{2,60}?)\s+(?:is|are)\s+(?:defined as|referred to as"
    r"|known as)\s+(?P<meaning>.+?)[.!?]?$|^(?:an?\s+|the\s+)?(?P<term2>[\w\- ]{2,60}?)\s+"
    r"(?:refers to|means)\s+(?P<meaning2>.+?)[.!?]?$", re.I)


def split_sentences(text: str) -> list[str]:
  sentences = []
  for paragraph in re.split(r"\n\s*\n", text):
    sentences += [s.strip() for s in _SENTENCE_END.split(" ".join(paragraph.split())) if s.strip()]
  return sentences


def _capitalised(text: str) -> str:
  return text[:1].upper() + text[1:]


def _relation_pair(kind: str, previous: str, rest: str) -> fmt.QAPair:
  rest = _capitalised(rest)
  if kind == "entailment":
    return fmt.QAPair(
        fmt.multiple_choice_question(
            f'Given that "{previous}", can we conclude that "{rest}"?',
            ["yes", "no", "it is not possible to tell"]), "yes")
  if kind == "contrast":
    return fmt.QAPair(f'"{previous}" Write a sentence that sets a contrast to this.', rest)
  if kind == "paraphrase":
    return fmt.QAPair(f'Say this in other words: "{previous}"', rest)
  return fmt.QAPair(f'Give an example that illustrates: "{previous}"', rest)


def _definition_pairs(sentence: str) -> list[fmt.QAPair]:
  match = _DEFINITION.match(sentence)
  if not match:
    return []
  term = (match.group("term") or match.group("term2")).strip()
  meaning = (match.group("meaning") or match.group("meaning2")).strip()
  if len(meaning.split()) < 2:
    return []
  return [fmt.QAPair(f"What does the term \"{term}\" mean according to the text?", meaning),
          fmt.QAPair(f'Which term matches this description: "{meaning}"?', term)]


def _title(text: str) -> str | None:
  first, _, rest = text.strip().partition("\n")
  first = first.strip()
  if rest.strip() and 1 <= len(first.split()) <= 15 and not first.endswith((".", "?", "!")):
    return first
  return None


def mine_pairs(text: str, max_pairs: int = DEFAULT_MAX_PAIRS) -> list[fmt.QAPair]:
  """The tasks found in `text`, at most `max_pairs`, questions unique (case-insensitive)."""
  pairs: list[fmt.QAPair] = []
  title = _title(text)
  body = text.strip().partition("\n")[2] if title else text
  if title:
    pairs.append(fmt.QAPair("Suggest a title for this text.", title))
  sentences = split_sentences(body)
  for previous, sentence in zip(sentences, sentences[1:]):
    for kind, pattern in _RELATIONS:
      match = pattern.match(sentence)
      if match and len(match.group(1).split()) >= MIN_SENTENCE_WORDS - 1:
        pairs.append(_relation_pair(kind, previous, match.group(1)))
        break
  for sentence in sentences:
    pairs += _definition_pairs(sentence)
  if sentences and len(sentences[-1].split()) >= 2 * MIN_SENTENCE_WORDS:
    words = sentences[-1].split()
    half = len(words) // 2
    pairs.append(fmt.QAPair(
        f'How does this sentence from the text end? "{" ".join(words[:half])} ..."',
        " ".join(words[half:])))
  unique, seen = [], set()
  for pair in pairs:
    if pair.question.lower() not in seen:
      seen.add(pair.question.lower())
      unique.append(pair)
  return unique[:max_pairs]


def mined_records(documents: Iterable[str], max_pairs: int = DEFAULT_MAX_PAIRS
                  ) -> Iterator[dict]:
  """Shard records (one-text chains, round 1) for `documents`, in order."""
  for doc_id, text in enumerate(documents):
    yield {"text": text, "pairs": [p.to_json() for p in mine_pairs(text, max_pairs)],
           "round": 1, "chain_id": doc_id, "doc_id": doc_id}


def write_mined_shards(documents: Iterable[str], output_dir: str, *,
                       documents_per_shard: int = 10_000,
                       max_pairs: int = DEFAULT_MAX_PAIRS) -> list[str]:
  """Writes mined (text, pairs) as JSON-lines shards plus manifest.json; returns shard names.

  The layout of `instruct-jax synthesize` outputs, so the IPT seqio tasks read
  either. Each shard is written to a temporary name and renamed when complete.
  """
  if documents_per_shard < 1:
    raise ValueError(f"documents_per_shard must be positive, got {documents_per_shard}.")
  os.makedirs(output_dir, exist_ok=True)
  shards: list[str] = []
  batch: list[dict] = []

  def flush() -> None:
    name = f"mined-{len(shards):05d}.jsonl"
    path = os.path.join(output_dir, name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in batch)
    os.replace(path + ".tmp", path)
    shards.append(name)
    batch.clear()

  for record in mined_records(documents, max_pairs):
    batch.append(record)
    if len(batch) == documents_per_shard:
      flush()
  if batch:
    flush()
  with open(os.path.join(output_dir, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump({"shards": shards, "source": "connective_mining"}, f, indent=1)
  return shards
