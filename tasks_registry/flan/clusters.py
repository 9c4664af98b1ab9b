"""FLAN's task clusters: THE table of which dataset belongs where, and holdout rules.

Everything else (mixtures, gin experiments, tests) is derived from `CLUSTERS`
and `EXTRA_EXCLUSIONS`, so adding a dataset to a cluster, or a new cluster, is
one edit here (plus the dataset's spec and templates).
"""
from __future__ import annotations

import types
from typing import Mapping

# cluster -> dataset names (keys of datasets.DATASETS). 62 datasets in 12 clusters.
CLUSTERS: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "nli": ("anli", "cb", "mnli", "qnli", "rte", "snli", "wnli"),
    "commonsense": ("copa", "hellaswag", "piqa", "story_cloze"),
    "sentiment": ("imdb_reviews", "sentiment140", "sst2", "yelp_polarity_reviews"),
    "paraphrase": ("mrpc", "qqp", "paws_wiki", "stsb"),
    "closed_book_qa": ("arc", "natural_questions", "trivia_qa"),
    "struct_to_text": ("common_gen", "dart", "e2e_nlg", "web_nlg"),
    "translation": ("para_crawl", "wmt14_fr_en", "wmt16_cs_en", "wmt16_de_en", "wmt16_fi_en",
                    "wmt16_ro_en", "wmt16_ru_en", "wmt16_tr_en"),
    "reading_comprehension": ("bool_q", "drop", "multirc", "openbookqa", "squad"),
    "reading_comprehension_commonsense": ("cosmos_qa", "record"),
    "coreference": ("definite_pronoun_resolution", "winogrande", "wsc273"),
    "misc": ("quac", "coqa", "wic", "trec", "cola", "math_dataset", "fix_punct"),
    "summarization": ("aeslc", "multi_news", "samsum", "ag_news_subset", "newsroom",
                      "wiki_lingua", "cnn_dailymail", "opinion_abstracts_idebate",
                      "opinion_abstracts_movies", "gigaword", "xsum"),
})

# Holding out the key cluster also removes these clusters from training, because
# they test overlapping skills (FLAN's rule).
EXTRA_EXCLUSIONS: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "reading_comprehension": ("reading_comprehension_commonsense",),
    "commonsense": ("reading_comprehension_commonsense",),
    "reading_comprehension_commonsense": ("reading_comprehension", "commonsense"),
    "paraphrase": ("nli",),
    "nli": ("paraphrase",),
})


def _check_cluster(cluster: str) -> None:
  if cluster not in CLUSTERS:
    raise ValueError(f"Unknown FLAN cluster {cluster!r}; expected one of {sorted(CLUSTERS)}.")


def excluded_clusters(held_out: str) -> tuple[str, ...]:
  """Clusters left out of training when `held_out` is evaluated (itself included)."""
  _check_cluster(held_out)
  return (held_out, *EXTRA_EXCLUSIONS.get(held_out, ()))


def training_clusters(held_out: str) -> tuple[str, ...]:
  """Clusters trained on when `held_out` is evaluated zero-shot."""
  excluded = set(excluded_clusters(held_out))
  return tuple(c for c in CLUSTERS if c not in excluded)


def cluster_of(dataset: str) -> str:
  """The cluster a dataset belongs to."""
  for cluster, datasets in CLUSTERS.items():
    if dataset in datasets:
      return cluster
  raise ValueError(f"Dataset {dataset!r} is in no FLAN cluster; add it to "
                   "tasks_registry/flan/clusters.py:CLUSTERS.")
