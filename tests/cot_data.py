"""Generated chain-of-thought data for the CoT tests: problems, teacher files, held-out sets.

Everything is built from a seeded generator, so no file or network is needed.
The "teacher" tokenizes words and punctuation separately (with leading spaces,
GPT style) and invents a top-k list per token whose first entry is the token.
"""
from __future__ import annotations

import json
import os
import random
import re

import sentencepiece as spm

_NAMES = ("Mia", "Noah", "Ava", "Liam", "Zoe", "Omar")
_ITEMS = ("apples", "books", "coins", "shells", "cards", "pens")


def problem(rng: random.Random) -> dict:
  """A small word problem with a teacher-style chain of thought."""
  a, b = rng.randint(2, 40), rng.randint(2, 40)
  name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
  question = f"{name} has {a} {item} and finds {b} more. How many {item} does {name} have?"
  chain = f"{name} starts with {a} {item}. {a} + {b} = {a + b}. The answer is {a + b}."
  return {"question": question, "answer": a + b, "chain_of_thought": chain}


def teacher_tokens(text: str) -> list[str]:
  """Words with their leading space, digits and punctuation as separate tokens."""
  return re.findall(r" ?[A-Za-z]+| ?\d+| ?[^\sA-Za-z\d]", text)


def teacher_entry(token: str, rng: random.Random, k: int = 3) -> dict:
  alternatives = [[token, -0.2]]
  for extra in (" the", " and", ".", " 7", " so")[:k - 1]:
    alternatives.append([extra, -2.5 - rng.random()])
  return {"token": token, "top_k": alternatives}


def write_teacher_file(path: str, num: int = 24, seed: int = 0, with_tokens: bool = True) -> str:
  rng = random.Random(seed)
  with open(path, "w") as f:
    for _ in range(num):
      record = problem(rng)
      if with_tokens:
        record["teacher_tokens"] = [teacher_entry(t, rng)
                                    for t in teacher_tokens(record["chain_of_thought"])]
      f.write(json.dumps(record) + "\n")
  return path


def write_heldout_files(directory: str, num: int = 6, seed: int = 1) -> dict[str, str]:
  """MultiArith / SVAMP JSON and ASDiv XML in their public layouts."""
  rng = random.Random(seed)
  problems = [problem(rng) for _ in range(3 * num)]
  multiarith = [{"iIndex": i, "sQuestion": p["question"], "lSolutions": [float(p["answer"])],
                 "lEquations": ["X=(1+1)"]} for i, p in enumerate(problems[:num])]
  svamp = []
  for i, p in enumerate(problems[num:2 * num]):
    body, question = p["question"].split(". ", 1)
    svamp.append({"ID": f"chal-{i}", "Body": body, "Question": question,
                  "Equation": "( 1 + 1 )", "Answer": p["answer"], "Type": "Addition"})
  asdiv = ["<?xml version='1.0' encoding='UTF-8'?>", "<Machine-Reading-Corpus-File>",
           "<ProblemSet>"]
  for i, p in enumerate(problems[2 * num:]):
    body, question = p["question"].split(". ", 1)
    asdiv.append(f'<Problem ID="nluds-{i:04d}" Grade="1" Source="test">'
                 f"<Body>{body}.</Body><Question>{question}</Question>"
                 f"<Solution-Type>Addition</Solution-Type>"
                 f"<Answer>{p['answer']} (items)</Answer><Formula>1+1={p['answer']}</Formula>"
                 f"</Problem>")
  # One ratio answer, which the loader must skip.
  asdiv.append('<Problem ID="nluds-9999" Grade="2" Source="test"><Body>A class has 3 boys '
               'and 4 girls.</Body><Question>What is the ratio?</Question>'
               '<Answer>3:4</Answer></Problem>')
  asdiv += ["</ProblemSet>", "</Machine-Reading-Corpus-File>"]
  paths = {"multiarith": os.path.join(directory, "MultiArith.json"),
           "svamp": os.path.join(directory, "SVAMP.json"),
           "asdiv": os.path.join(directory, "ASDiv.xml")}
  with open(paths["multiarith"], "w") as f:
    json.dump(multiarith, f)
  with open(paths["svamp"], "w") as f:
    json.dump(svamp, f)
  with open(paths["asdiv"], "w") as f:
    f.write("\n".join(asdiv))
  return paths


def train_sentencepiece(directory: str, vocab_size: int = 200, seed: int = 0) -> str:
  """A small unigram SentencePiece model on generated problems (T5 ids: pad 0, eos 1, unk 2)."""
  rng = random.Random(seed)
  texts = []
  for _ in range(400):
    p = problem(rng)
    texts += [p["question"], p["chain_of_thought"], "Q: A: Let's think step by step."]
  prefix = os.path.join(directory, "student")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size,
      model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      hard_vocab_limit=False,
      minloglevel=2)
  return prefix + ".model"
