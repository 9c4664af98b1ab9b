"""The 62 FLAN datasets: TFDS source, splits, and how raw fields become template fields.

One `DatasetSpec` per dataset. `to_fields` maps a raw TFDS example (tensors) to
named text fields that templates read, plus either
  - "label" (int index into the options) for classification, or
  - "answer" (the target text) and optionally "answers" (all references);
classification datasets also give "options" when the options differ per
example (multiple choice) instead of the fixed `options` tuple.

Splits: "train" is capped at `MAX_TRAIN_EXAMPLES` (30k) by TFDS slicing; the
"validation" split is the split used for evaluation: the official labelled dev
set where there is one, otherwise a labelled test set or a held-back slice of
train that the train split does not overlap. TFDS slices must stay inside a
split, so `train[:30000]` is used only for splits known to be larger.

Every dataset is read from TensorFlow Datasets (tensorflow-datasets 4.9.10
builders and versions). Notes on each spec say where the data needs a manual
download or where the FLAN dataset is derived from another TFDS dataset.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Callable, Mapping

import tensorflow as tf

MAX_TRAIN_EXAMPLES = 30_000
_CAPPED_TRAIN = f"train[:{MAX_TRAIN_EXAMPLES}]"

# Names every dataset's fields must avoid: the pipeline uses them itself.
RESERVED_FIELDS = frozenset({"inputs", "targets", "options", "answers", "label",
                             "template_index", "example_id", "option_index", "is_correct"})

Fields = dict[str, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Source:
  """One TFDS builder config read as one seqio task.

  `params` are passed to the dataset's `to_fields` as keyword arguments (e.g. the
  language of a translation pair).
  """
  tfds_name: str  # "builder/config:version"
  splits: Mapping[str, str]  # our split -> TFDS split (slice) string
  params: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if "validation" not in self.splits:
      raise ValueError(f"{self.tfds_name}: every FLAN source needs a 'validation' split "
                       f"for evaluation; got {sorted(self.splits)}.")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How one FLAN dataset is read and what its templates can use."""
  name: str
  sources: Mapping[str, Source]  # task-name suffix ("" for a single task) -> source
  fields: tuple[str, ...]  # text fields templates may read, besides {answer}
  to_fields: Callable[..., Fields]
  metric: str  # "accuracy" | "squad" | "rouge" | "bleu"
  options: tuple[str, ...] | None = None  # fixed options, in label-index order
  options_per_example: bool = False  # multiple choice: to_fields returns "options"
  note: str = ""

  def __post_init__(self):
    clash = RESERVED_FIELDS.intersection(self.fields) | ({"answer"} & set(self.fields))
    if clash:
      raise ValueError(f"Dataset {self.name!r} uses reserved field name(s) {sorted(clash)}; "
                       "rename them in its to_fields and templates.")
    if self.options and self.options_per_example:
      raise ValueError(f"Dataset {self.name!r} has fixed options and per-example options; "
                       "choose one.")

  @property
  def has_options(self) -> bool:
    """Classification dataset: answers with one of its options."""
    return bool(self.options) or self.options_per_example


# --------------------------------------------------------------------------
# Small TF helpers for field mappings.


def _numbered(items: tf.Tensor, limit: int | None = None) -> tf.Tensor:
  """'1. a\\n2. b' from a 1-D string tensor (first `limit` items)."""
  if limit is not None:
    items = items[:limit]
  numbers = tf.strings.as_string(tf.range(1, tf.size(items) + 1))
  return tf.strings.reduce_join(tf.strings.join([numbers, items], separator=". "),
                                separator="\n")


def _first_match(values: tf.Tensor, wanted: tf.Tensor) -> tf.Tensor:
  """Index of the first element of `values` equal to `wanted`, or -1."""
  hits = tf.where(tf.equal(values, wanted))[:, 0]
  return tf.cond(tf.size(hits) > 0, lambda: tf.cast(hits[0], tf.int32),
                 lambda: tf.constant(-1, tf.int32))


def _with_question_mark(text: tf.Tensor) -> tf.Tensor:
  text = tf.strings.strip(text)
  return tf.cond(tf.strings.regex_full_match(text, r".*\?"), lambda: text,
                 lambda: tf.strings.join([text, "?"]))


def _concat_answers(first: tf.Tensor, rest: tf.Tensor) -> tf.Tensor:
  return tf.concat([first[tf.newaxis], tf.reshape(rest, [-1])], axis=0)


def _splits(train: str, validation: str, test: str | None = None) -> dict[str, str]:
  splits = {"train": train, "validation": validation}
  if test:
    splits["test"] = test
  return splits


def _single(tfds_name: str, splits: Mapping[str, str], **params) -> dict[str, Source]:
  return {"": Source(tfds_name, splits, params)}


# --------------------------------------------------------------------------
# Natural language inference.


def _premise_hypothesis(premise_key: str, hypothesis_key: str):
  def to_fields(ex):
    return {"premise": ex[premise_key], "hypothesis": ex[hypothesis_key], "label": ex["label"]}
  return to_fields


def _qnli_fields(ex):
  return {"question": ex["question"], "sentence": ex["sentence"], "label": ex["label"]}


def _sentence_pair_fields(first: str = "sentence1", second: str = "sentence2"):
  def to_fields(ex):
    return {"sentence1": ex[first], "sentence2": ex[second], "label": ex["label"]}
  return to_fields


_NLI_THREE_WAY = ("yes", "it is not possible to tell", "no")  # entail, neutral, contradict

_NLI = [
    DatasetSpec(
        name="anli",
        sources={r: Source(f"anli/{r}:0.1.0", _splits(
            "train" if r == "r1" else _CAPPED_TRAIN, "validation", "test"))
                 for r in ("r1", "r2", "r3")},
        fields=("premise", "hypothesis"),
        to_fields=_premise_hypothesis("context", "hypothesis"),
        options=("Yes", "It's impossible to say", "No"),  # labels e, n, c
        metric="accuracy",
        note="Adversarial NLI rounds 1-3: one dataset, one task per round.",
    ),
    DatasetSpec(
        name="cb",
        sources=_single("super_glue/cb:1.0.2", _splits("train", "validation")),
        fields=("premise", "hypothesis"),
        to_fields=_premise_hypothesis("premise", "hypothesis"),
        options=("Yes", "No", "It's impossible to say"),  # entailment, contradiction, neutral
        metric="accuracy",
    ),
    DatasetSpec(
        name="mnli",
        sources={
            "matched": Source("glue/mnli:2.0.0", _splits(_CAPPED_TRAIN, "validation_matched")),
            "mismatched": Source("glue/mnli:2.0.0",
                                 _splits(_CAPPED_TRAIN, "validation_mismatched")),
        },
        fields=("premise", "hypothesis"),
        to_fields=_premise_hypothesis("premise", "hypothesis"),
        options=_NLI_THREE_WAY,
        metric="accuracy",
        note="One dataset; the matched and mismatched tasks share the training data and "
             "differ in their validation sets (as in FLAN).",
    ),
    DatasetSpec(
        name="qnli",
        sources=_single("glue/qnli:2.0.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("question", "sentence"),
        to_fields=_qnli_fields,
        options=("yes", "no"),  # entailment, not_entailment
        metric="accuracy",
    ),
    DatasetSpec(
        name="rte",
        sources=_single("glue/rte:2.0.0", _splits("train", "validation")),
        fields=("premise", "hypothesis"),
        to_fields=_premise_hypothesis("sentence1", "sentence2"),
        options=("yes", "no"),  # entailment, not_entailment
        metric="accuracy",
    ),
    DatasetSpec(
        name="snli",
        sources=_single("snli:1.1.0", _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("premise", "hypothesis"),
        to_fields=_premise_hypothesis("premise", "hypothesis"),
        options=_NLI_THREE_WAY,  # label -1 (no gold label) is filtered out
        metric="accuracy",
    ),
    DatasetSpec(
        name="wnli",
        sources=_single("glue/wnli:2.0.0", _splits("train", "validation")),
        fields=("sentence1", "sentence2"),
        to_fields=_sentence_pair_fields(),
        options=("no", "yes"),  # not_entailment, entailment
        metric="accuracy",
    ),
]

# --------------------------------------------------------------------------
# Commonsense.


def _copa_fields(ex):
  return {"premise": ex["premise"], "relation": ex["question"],  # "cause" or "effect"
          "options": tf.stack([ex["choice1"], ex["choice2"]]), "label": ex["label"]}


def _hellaswag_fields(ex):
  # WikiHow contexts carry bracketed section markers ("[header]", "[step]").
  context = tf.strings.regex_replace(ex["context"], r"\[header\]\s*", "")
  context = tf.strings.regex_replace(context, r"\s*\[[a-z]+\]\s*", "\n")
  endings = tf.strings.strip(tf.strings.regex_replace(ex["endings"], r"\[[a-z]+\]\s*", ""))
  return {"context": context, "activity": ex["activity_label"], "options": endings,
          "label": ex["label"]}


def _piqa_fields(ex):
  return {"goal": ex["goal"], "options": tf.stack([ex["sol1"], ex["sol2"]]),
          "label": ex["label"]}


def _story_cloze_fields(ex):
  # RightEnding is 1-based in the source data.
  return {"story": ex["context"], "options": ex["endings"], "label": ex["label"] - 1}


_COMMONSENSE = [
    DatasetSpec(
        name="copa",
        sources=_single("super_glue/copa:1.0.2", _splits("train", "validation")),
        fields=("premise", "relation"),
        to_fields=_copa_fields,
        options_per_example=True,
        metric="accuracy",
    ),
    DatasetSpec(
        name="hellaswag",
        sources=_single("hellaswag:1.1.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("context", "activity"),
        to_fields=_hellaswag_fields,
        options_per_example=True,
        metric="accuracy",
    ),
    DatasetSpec(
        name="piqa",
        sources=_single("piqa:1.0.0", _splits("train", "validation")),
        fields=("goal",),
        to_fields=_piqa_fields,
        options_per_example=True,
        metric="accuracy",
    ),
    DatasetSpec(
        name="story_cloze",
        # The 2016 release has labelled validation and test sets and no train split.
        sources=_single("story_cloze/2016:1.0.0", _splits("validation", "test")),
        fields=("story",),
        to_fields=_story_cloze_fields,
        options_per_example=True,
        metric="accuracy",
        note="Manual download (TFDS story_cloze): request the files from the "
             "ROCStories site. Its labelled 2016 validation set is our train split and "
             "its test set our validation split.",
    ),
]

# --------------------------------------------------------------------------
# Sentiment.

_SENTIMENT_OPTIONS = ("negative", "positive")


def _imdb_fields(ex):
  return {"text": tf.strings.regex_replace(ex["text"], r"<br\s*/?>", "\n"), "label": ex["label"]}


def _sentiment140_fields(ex):
  # Polarity 0 = negative, 4 = positive; 2 (neutral, test only) is dropped.
  polarity = ex["polarity"]
  label = tf.where(tf.equal(polarity, 0), 0, tf.where(tf.equal(polarity, 4), 1, -1))
  return {"text": ex["text"], "label": label}


def _sst2_fields(ex):
  return {"text": ex["sentence"], "label": ex["label"]}


def _yelp_fields(ex):
  text = tf.strings.regex_replace(ex["text"], r"\\n", " ")
  text = tf.strings.regex_replace(text, r'\\"', '"')
  return {"text": text, "label": ex["label"]}


_SENTIMENT = [
    DatasetSpec(
        name="imdb_reviews",
        sources=_single("imdb_reviews/plain_text:1.0.0", _splits("train", "test")),
        fields=("text",),
        to_fields=_imdb_fields,
        options=_SENTIMENT_OPTIONS,
        metric="accuracy",
        note="No validation split in TFDS: the labelled test set is used for evaluation.",
    ),
    DatasetSpec(
        name="sentiment140",
        sources=_single("sentiment140:1.0.0", _splits(_CAPPED_TRAIN, "test")),
        fields=("text",),
        to_fields=_sentiment140_fields,
        options=_SENTIMENT_OPTIONS,
        metric="accuracy",
    ),
    DatasetSpec(
        name="sst2",
        sources=_single("glue/sst2:2.0.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("text",),
        to_fields=_sst2_fields,
        options=_SENTIMENT_OPTIONS,
        metric="accuracy",
    ),
    DatasetSpec(
        name="yelp_polarity_reviews",
        sources=_single("yelp_polarity_reviews:0.2.0", _splits(_CAPPED_TRAIN, "test")),
        fields=("text",),
        to_fields=_yelp_fields,
        options=_SENTIMENT_OPTIONS,
        metric="accuracy",
    ),
]

# --------------------------------------------------------------------------
# Paraphrase.


def _qqp_fields(ex):
  return {"question1": ex["question1"], "question2": ex["question2"], "label": ex["label"]}


def _stsb_fields(ex):
  # Similarity 0-5 as a six-way choice of the rounded score.
  return {"sentence1": ex["sentence1"], "sentence2": ex["sentence2"],
          "label": tf.cast(tf.round(ex["label"]), tf.int32)}


_PARAPHRASE = [
    DatasetSpec(
        name="mrpc",
        sources=_single("glue/mrpc:2.0.0", _splits("train", "validation")),
        fields=("sentence1", "sentence2"),
        to_fields=_sentence_pair_fields(),
        options=("no", "yes"),  # not_equivalent, equivalent
        metric="accuracy",
    ),
    DatasetSpec(
        name="qqp",
        sources=_single("glue/qqp:2.0.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("question1", "question2"),
        to_fields=_qqp_fields,
        options=("no", "yes"),  # not_duplicate, duplicate
        metric="accuracy",
    ),
    DatasetSpec(
        name="paws_wiki",
        sources=_single("paws_wiki/labeled_final_raw:1.1.0",
                        _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("sentence1", "sentence2"),
        to_fields=_sentence_pair_fields(),
        options=("no", "yes"),
        metric="accuracy",
    ),
    DatasetSpec(
        name="stsb",
        sources=_single("glue/stsb:2.0.0", _splits("train", "validation")),
        fields=("sentence1", "sentence2"),
        to_fields=_stsb_fields,
        options=("0", "1", "2", "3", "4", "5"),
        metric="accuracy",
        note="Regression target rounded to an integer 0-5 and treated as six options.",
    ),
]

# --------------------------------------------------------------------------
# Closed-book QA.


def _arc_fields(ex):
  choices = ex["choices"]
  return {"question": ex["question"], "options": choices["text"],
          "label": _first_match(choices["label"], ex["answerKey"])}


def _natural_questions_fields(ex):
  answers = tf.reshape(ex["answer"], [-1])
  return {"question": _with_question_mark(ex["question"]), "answer": answers[0],
          "answers": answers}


def _trivia_qa_fields(ex):
  answer = ex["answer"]
  return {"question": ex["question"], "answer": answer["value"],
          "answers": _concat_answers(answer["value"], answer["aliases"])}


_CLOSED_BOOK_QA = [
    DatasetSpec(
        name="arc",
        sources={
            level.lower(): Source(f"ai2_arc/ARC-{level}:1.0.0",
                                  _splits("train", "validation", "test"))
            for level in ("Challenge", "Easy")
        },
        fields=("question",),
        to_fields=_arc_fields,
        options_per_example=True,
        metric="accuracy",
        note="ARC easy and challenge: one dataset, two tasks.",
    ),
    DatasetSpec(
        name="natural_questions",
        sources=_single("natural_questions_open:1.0.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("question",),
        to_fields=_natural_questions_fields,
        metric="squad",
    ),
    DatasetSpec(
        name="trivia_qa",
        sources=_single("trivia_qa/rc.nocontext:1.1.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("question",),
        to_fields=_trivia_qa_fields,
        metric="squad",
    ),
]

# --------------------------------------------------------------------------
# Struct to text (GEM versions; references include the target).


def _gem_answers(ex):
  return {"answer": ex["target"], "answers": _concat_answers(ex["target"], ex["references"])}


def _common_gen_fields(ex):
  return {"concepts": tf.strings.reduce_join(ex["concepts"], separator=", "),
          **_gem_answers(ex)}


def _dart_fields(ex):
  triples = tf.strings.reduce_join(ex["tripleset"], separator="; ")
  triples = tf.strings.regex_replace(triples, r"\[(TABLECONTEXT|TITLE)\]\s*\|?\s*", "")
  return {"triples": triples, **_gem_answers(ex)}


def _e2e_fields(ex):
  # "name[The Eagle], food[Thai]" -> "name: The Eagle, food: Thai"
  attributes = tf.strings.regex_replace(ex["meaning_representation"], r"\[", ": ")
  return {"attributes": tf.strings.regex_replace(attributes, r"\]", ""), **_gem_answers(ex)}


def _web_nlg_fields(ex):
  triples = tf.strings.reduce_join(ex["input"], separator="; ")
  triples = tf.strings.regex_replace(triples, "_", " ")
  return {"triples": triples, **_gem_answers(ex)}


_STRUCT_TO_TEXT = [
    DatasetSpec(
        name="common_gen",
        sources=_single("gem/common_gen:1.1.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("concepts",),
        to_fields=_common_gen_fields,
        metric="rouge",
    ),
    DatasetSpec(
        name="dart",
        sources=_single("gem/dart:1.1.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("triples",),
        to_fields=_dart_fields,
        metric="rouge",
    ),
    DatasetSpec(
        name="e2e_nlg",
        sources=_single("gem/e2e_nlg:1.1.0", _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("attributes",),
        to_fields=_e2e_fields,
        metric="rouge",
    ),
    DatasetSpec(
        name="web_nlg",
        sources=_single("gem/web_nlg_en:1.1.0", _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("triples",),
        to_fields=_web_nlg_fields,
        metric="rouge",
    ),
]

# --------------------------------------------------------------------------
# Translation: English -> other language is the task; the reverse direction is
# the turned-around form.

LANGUAGE_NAMES = types.MappingProxyType({
    "cs": "Czech", "de": "German", "es": "Spanish", "fi": "Finnish", "fr": "French",
    "ro": "Romanian", "ru": "Russian", "tr": "Turkish",
})


def _translation_fields(ex, lang: str):
  return {"source_language": tf.constant("English"), "source": ex["en"],
          "target_language": tf.constant(LANGUAGE_NAMES[lang]), "answer": ex[lang]}


# ParaCrawl has only a train split; validation is held back from its end.
_PARACRAWL_SPLITS = _splits(_CAPPED_TRAIN, "train[-1000:]")


def _wmt(year: int, lang: str) -> DatasetSpec:
  return DatasetSpec(
      name=f"wmt{year}_{lang}_en",
      sources=_single(f"wmt{year}_translate/{lang}-en:1.0.0",
                      _splits(_CAPPED_TRAIN, "validation", "test"), lang=lang),
      fields=("source_language", "source", "target_language"),
      to_fields=_translation_fields,
      metric="bleu",
      note="Some WMT subsets need a manual download (see the TFDS wmt docs).",
  )


_TRANSLATION = [
    DatasetSpec(
        name="para_crawl",
        sources={f"en_{lang}": Source(f"para_crawl/en{lang}:1.2.0", _PARACRAWL_SPLITS,
                                      {"lang": lang})
                 for lang in ("de", "es", "fr")},
        fields=("source_language", "source", "target_language"),
        to_fields=_translation_fields,
        metric="bleu",
        note="One dataset with three language pairs (en-de, en-es, en-fr), like ANLI's "
             "rounds; validation is the last 1000 training pairs.",
    ),
    _wmt(14, "fr"),
    *[_wmt(16, lang) for lang in ("cs", "de", "fi", "ro", "ru", "tr")],
]

# --------------------------------------------------------------------------
# Reading comprehension.


def _boolq_fields(ex):
  return {"passage": ex["passage"], "question": _with_question_mark(ex["question"]),
          "label": ex["label"]}


def _drop_fields(ex):
  return {"passage": ex["passage"], "question": ex["question"], "answer": ex["answer"],
          "answers": _concat_answers(ex["answer"], ex["validated_answers"])}


def _multirc_fields(ex):
  return {"paragraph": ex["paragraph"], "question": ex["question"],
          "response": ex["answer"], "label": ex["label"]}


def _openbookqa_fields(ex):
  question = ex["question"]
  return {"question": question["stem"], "fact": ex["fact1"],
          "options": tf.stack([question[f"choice_{c}"] for c in "ABCD"]),
          "label": ex["answerKey"]}


UNANSWERABLE = "unanswerable"


def _squad_fields(ex):
  answers = tf.reshape(ex["answers"]["text"], [-1])
  if "is_impossible" in ex:  # SQuAD 2.0
    answers = tf.cond(tf.logical_or(ex["is_impossible"], tf.size(answers) == 0),
                      lambda: tf.constant([UNANSWERABLE]), lambda: answers)
  return {"title": tf.strings.regex_replace(ex["title"], "_", " "), "context": ex["context"],
          "question": ex["question"], "answer": answers[0], "answers": answers}


_READING_COMPREHENSION = [
    DatasetSpec(
        name="bool_q",
        sources=_single("super_glue/boolq:1.0.2", _splits("train", "validation")),
        fields=("passage", "question"),
        to_fields=_boolq_fields,
        options=("no", "yes"),
        metric="accuracy",
    ),
    DatasetSpec(
        name="drop",
        sources=_single("drop:2.0.0", _splits(_CAPPED_TRAIN, "dev")),
        fields=("passage", "question"),
        to_fields=_drop_fields,
        metric="squad",
    ),
    DatasetSpec(
        name="multirc",
        sources=_single("super_glue/multirc:1.0.2", _splits("train", "validation")),
        fields=("paragraph", "question", "response"),
        to_fields=_multirc_fields,
        options=("no", "yes"),  # is the response a correct answer?
        metric="accuracy",
    ),
    DatasetSpec(
        name="openbookqa",
        sources=_single("openbookqa:0.1.0", _splits("train", "validation", "test")),
        fields=("question", "fact"),
        to_fields=_openbookqa_fields,
        options_per_example=True,
        metric="accuracy",
    ),
    DatasetSpec(
        name="squad",
        sources={
            "v1": Source("squad/v1.1:3.0.0", _splits(_CAPPED_TRAIN, "validation")),
            "v2": Source("squad/v2.0:3.0.0", _splits(_CAPPED_TRAIN, "validation")),
        },
        fields=("title", "context", "question"),
        to_fields=_squad_fields,
        metric="squad",
        note=f"SQuAD v1.1 and v2.0: one dataset, two tasks; unanswerable v2 questions "
             f"have the answer {UNANSWERABLE!r}.",
    ),
]

# --------------------------------------------------------------------------
# Reading comprehension with commonsense.


def _cosmos_qa_fields(ex):
  return {"context": ex["context"], "question": ex["question"],
          "options": tf.stack([ex[f"answer{i}"] for i in range(4)]), "label": ex["label"]}


def _record_fields(ex):
  # Highlights follow the passage as "@highlight" lines; keep them as lines.
  passage = tf.strings.regex_replace(ex["passage"], r"\s*@highlight\s*", "\n- ")
  answers = tf.reshape(ex["answers"], [-1])
  # The answers are entities of the passage; adding any missing keeps the
  # correct option present whatever the source data looks like.
  options, _ = tf.unique(tf.concat([tf.reshape(ex["entities"], [-1]), answers], axis=0))
  query = tf.strings.regex_replace(ex["query"], "@placeholder", "___")
  # Backslashes are the only special characters of an RE2 rewrite string.
  answer_literal = tf.strings.regex_replace(answers[0], r"\\", r"\\\\")
  filled_query = tf.strings.regex_replace(ex["query"], "@placeholder", answer_literal)
  return {"passage": passage, "query": query, "filled_query": filled_query,
          "options": options, "answer": answers[0], "answers": answers}


_READING_COMPREHENSION_COMMONSENSE = [
    DatasetSpec(
        name="cosmos_qa",
        sources=_single("cosmos_qa:1.0.0", _splits("train", "validation")),
        fields=("context", "question"),
        to_fields=_cosmos_qa_fields,
        options_per_example=True,
        metric="accuracy",
    ),
    DatasetSpec(
        name="record",
        sources=_single("super_glue/record:1.0.2", _splits(_CAPPED_TRAIN, "validation")),
        fields=("passage", "query", "filled_query"),
        to_fields=_record_fields,
        options_per_example=True,
        metric="accuracy",
        note="Options are the passage's entities; any entity in `answers` is correct.",
    ),
]

# --------------------------------------------------------------------------
# Coreference.


def _dpr_fields(ex):
  return {"sentence": ex["sentence"], "pronoun": ex["pronoun"],
          "options": ex["candidates"], "label": ex["label"]}


def _winogrande_fields(ex):
  return {"sentence": ex["sentence"], "options": tf.stack([ex["option1"], ex["option2"]]),
          "label": ex["label"]}


def _wsc273_fields(ex):
  return {"sentence": ex["text"], "pronoun": ex["pronoun_text"],
          "options": tf.stack([ex["option1"], ex["option2"]]), "label": ex["label"]}


_COREFERENCE = [
    DatasetSpec(
        name="definite_pronoun_resolution",
        sources=_single("definite_pronoun_resolution:1.1.0", _splits("train", "test")),
        fields=("sentence", "pronoun"),
        to_fields=_dpr_fields,
        options_per_example=True,
        metric="accuracy",
    ),
    DatasetSpec(
        name="winogrande",
        sources=_single("winogrande:1.2.0", {"train": "train_xl[:30000]",
                                             "validation": "validation"}),
        fields=("sentence",),
        to_fields=_winogrande_fields,
        options_per_example=True,
        metric="accuracy",
        note="Trains on the first 30k examples of the train_xl split.",
    ),
    DatasetSpec(
        name="wsc273",
        sources=_single("wsc273:1.0.0", {"validation": "test"}),
        fields=("sentence", "pronoun"),
        to_fields=_wsc273_fields,
        options_per_example=True,
        metric="accuracy",
        note="Only a 273-example test split exists: evaluation only, never in training "
             "mixtures; few-shot exemplars come from the same split (never the query).",
    ),
]

# --------------------------------------------------------------------------
# Miscellaneous.


def _quac_fields(ex):
  def clean(text):
    return tf.strings.regex_replace(text, "CANNOTANSWER", UNANSWERABLE)
  answer = clean(ex["orig_answer"]["text"])
  return {"title": ex["title"], "background": ex["background"], "context": ex["context"],
          "question": ex["question"], "answer": answer,
          "answers": _concat_answers(answer, clean(ex["answers"]["text"]))}


def _coqa_fields(ex):
  return {"story": ex["story"], "questions": _numbered(ex["questions"]),
          "answer": _numbered(ex["answers"]["input_text"])}


def _wic_fields(ex):
  return {"word": ex["word"], "sentence1": ex["sentence1"], "sentence2": ex["sentence2"],
          "label": ex["label"]}


def _trec_fields(ex):
  return {"question": ex["text"], "label": ex["label-coarse"]}


def _cola_fields(ex):
  return {"sentence": ex["sentence"], "label": ex["label"]}


def _math_fields(ex):
  return {"question": ex["question"], "answer": ex["answer"]}


def _fix_punct_fields(ex):
  text = tf.strings.strip(ex["en"])
  no_punct = tf.strings.regex_replace(text, r"[^\w\s]", "")
  return {"no_punct": tf.strings.strip(tf.strings.regex_replace(no_punct, r"\s+", " ")),
          "answer": text}


_MISC = [
    DatasetSpec(
        name="quac",
        sources=_single("quac:1.0.0", _splits(_CAPPED_TRAIN, "validation")),
        fields=("title", "background", "context", "question"),
        to_fields=_quac_fields,
        metric="squad",
    ),
    DatasetSpec(
        name="coqa",
        sources=_single("coqa:1.0.0", _splits("train", "test")),
        fields=("story", "questions"),
        to_fields=_coqa_fields,
        metric="squad",
        note="All questions of a story are answered at once, as a numbered list.",
    ),
    DatasetSpec(
        name="wic",
        sources=_single("super_glue/wic:1.0.2", _splits("train", "validation")),
        fields=("word", "sentence1", "sentence2"),
        to_fields=_wic_fields,
        options=("different meanings", "the same meaning"),
        metric="accuracy",
    ),
    DatasetSpec(
        name="trec",
        sources=_single("trec:1.0.0", _splits("train", "test")),
        fields=("question",),
        to_fields=_trec_fields,
        # Coarse labels DESC, ENTY, ABBR, HUM, NUM, LOC.
        options=("description", "entity", "abbreviation", "human", "numeric", "location"),
        metric="accuracy",
    ),
    DatasetSpec(
        name="cola",
        sources=_single("glue/cola:2.0.0", _splits("train", "validation")),
        fields=("sentence",),
        to_fields=_cola_fields,
        options=("unacceptable", "acceptable"),
        metric="accuracy",
    ),
    DatasetSpec(
        name="math_dataset",
        sources=_single("math_dataset/algebra__linear_1d:1.0.0",
                        _splits(_CAPPED_TRAIN, "test")),
        fields=("question",),
        to_fields=_math_fields,
        metric="accuracy",
    ),
    DatasetSpec(
        name="fix_punct",
        sources=_single("para_crawl/enda:1.2.0", _splits(_CAPPED_TRAIN, "train[-1000:]")),
        fields=("no_punct",),
        to_fields=_fix_punct_fields,
        metric="accuracy",
        note="Not a TFDS dataset of its own: built, as in FLAN, from the English side of "
             "ParaCrawl en-da with punctuation removed; the target restores it.",
    ),
]

# --------------------------------------------------------------------------
# Summarization.


def _document_summary(document_key: str, summary_key: str, document_field: str = "document"):
  def to_fields(ex):
    return {document_field: ex[document_key], "answer": ex[summary_key]}
  return to_fields


def _aeslc_fields(ex):
  return {"email": ex["email_body"],
          "answer": tf.strings.regex_replace(ex["subject_line"], r"\s+", " ")}


def _multi_news_fields(ex):
  articles = tf.strings.regex_replace(ex["document"], r"\s*\|\|\|\|\|\s*", "\n\n")
  summary = tf.strings.regex_replace(ex["summary"], r"^\s*–\s*", "")
  return {"articles": articles, "answer": summary}


def _samsum_fields(ex):
  return {"dialogue": tf.strings.regex_replace(ex["dialogue"], "\r\n", "\n"),
          "answer": ex["summary"]}


def _newsroom_fields(ex):
  return {"title": ex["title"], "document": ex["text"], "answer": ex["summary"]}


def _opinion_idebate_fields(ex):
  return {"topic": ex["_debate_name"],
          "arguments": _numbered(ex["_argument_sentences"]["value"], limit=10),
          "answer": ex["_claim"]}


def _opinion_movies_fields(ex):
  return {"movie": tf.strings.regex_replace(ex["_movie_name"], "_", " "),
          "reviews": _numbered(ex["_critics"]["value"], limit=10),
          "answer": ex["_critic_consensus"]}


def _ag_news_fields(ex):
  return {"title": ex["title"], "text": ex["description"], "label": ex["label"]}


# Opinion abstracts have a train split only; evaluation is held back from its end.
_OPINION_SPLITS = _splits("train[:-500]", "train[-500:]")

_SUMMARIZATION = [
    DatasetSpec(
        name="aeslc",
        sources=_single("aeslc:1.0.0", _splits("train", "validation", "test")),
        fields=("email",),
        to_fields=_aeslc_fields,
        metric="rouge",
    ),
    DatasetSpec(
        name="multi_news",
        sources=_single("multi_news:2.1.0", _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("articles",),
        to_fields=_multi_news_fields,
        metric="rouge",
    ),
    DatasetSpec(
        name="samsum",
        sources=_single("samsum:1.0.0", _splits("train", "validation", "test")),
        fields=("dialogue",),
        to_fields=_samsum_fields,
        metric="rouge",
        note="Manual download (TFDS samsum): place corpus.7z in the manual directory.",
    ),
    DatasetSpec(
        name="ag_news_subset",
        sources=_single("ag_news_subset:1.0.0", _splits(_CAPPED_TRAIN, "test")),
        fields=("title", "text"),
        to_fields=_ag_news_fields,
        options=("World", "Sports", "Business", "Science/Tech"),
        metric="accuracy",
        note="Topic classification; FLAN files it under summarization.",
    ),
    DatasetSpec(
        name="newsroom",
        sources=_single("newsroom:1.0.0", _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("title", "document"),
        to_fields=_newsroom_fields,
        metric="rouge",
        note="Manual download (TFDS newsroom): the dataset is distributed on request.",
    ),
    DatasetSpec(
        name="wiki_lingua",
        sources=_single("gem/wiki_lingua_english_en:1.1.0",
                        _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("document",),
        to_fields=_document_summary("source", "target"),
        metric="rouge",
        note="English WikiLingua, GEM version.",
    ),
    DatasetSpec(
        name="cnn_dailymail",
        sources=_single("cnn_dailymail:3.4.0", _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("document",),
        to_fields=_document_summary("article", "highlights"),
        metric="rouge",
    ),
    DatasetSpec(
        name="opinion_abstracts_idebate",
        sources=_single("opinion_abstracts/idebate:1.0.0", _OPINION_SPLITS),
        fields=("topic", "arguments"),
        to_fields=_opinion_idebate_fields,
        metric="rouge",
    ),
    DatasetSpec(
        name="opinion_abstracts_movies",
        sources=_single("opinion_abstracts/rotten_tomatoes:1.0.0", _OPINION_SPLITS),
        fields=("movie", "reviews"),
        to_fields=_opinion_movies_fields,
        metric="rouge",
    ),
    DatasetSpec(
        name="gigaword",
        # The 190k-example validation set is large; the standard test set is used.
        sources=_single("gigaword:1.2.0", _splits(_CAPPED_TRAIN, "test")),
        fields=("document",),
        to_fields=_document_summary("document", "summary"),
        metric="rouge",
    ),
    DatasetSpec(
        name="xsum",
        sources=_single("xsum:1.1.0", _splits(_CAPPED_TRAIN, "validation", "test")),
        fields=("document",),
        to_fields=_document_summary("document", "summary"),
        metric="rouge",
        note="Manual download (TFDS xsum): extract the XSum data into the manual directory.",
    ),
]

DATASETS: Mapping[str, DatasetSpec] = types.MappingProxyType({
    spec.name: spec
    for spec in (_NLI + _COMMONSENSE + _SENTIMENT + _PARAPHRASE + _CLOSED_BOOK_QA
                 + _STRUCT_TO_TEXT + _TRANSLATION + _READING_COMPREHENSION
                 + _READING_COMPREHENSION_COMMONSENSE + _COREFERENCE + _MISC
                 + _SUMMARIZATION)
})
