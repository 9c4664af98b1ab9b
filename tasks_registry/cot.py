"""seqio registrations for chain-of-thought specialization (GSM8K, teachers, math evals).

Training data, in the four formats of instruct_jax.data.cot (zero_shot,
zero_shot_cot, few_shot, few_shot_cot):

  cot_gsm8k_<format>          GSM8K train from TFDS (gsm8k:1.0.0) with its human
                              worked solutions; 'validation' = the last
                              min(256, 10%) train problems.
  cot_gsm8k_formats           mixture of the four, equal rates.
  <prefix>_<format>           a TEACHER file (JSON lines, see
                              cot.load_teacher_file), registered by
                              `register_teacher_tasks`, usually from gin:
                                MIXTURE_OR_TASK_NAME = @cot.register_teacher_tasks()
                                cot.register_teacher_tasks.teacher_file = %TEACHER_FILE
                              The tasks carry sparse teacher features for
                              distillation (see below); mixture <prefix>_formats.

Evaluation (split 'test'; metric: last number of the output vs the gold):

  cot_eval_gsm8k_{zero_shot_cot,few_shot_cot}       GSM8K test from TFDS
  cot_eval_{multiarith,asdiv,svamp}_{zero_shot_cot,few_shot_cot}
                              from user files in their public formats (see
                              instruct_jax.data.cot.load_multiarith / load_asdiv /
                              load_svamp), looked up when the dataset is built: the
                              paths given to `register_heldout_math_tasks`, else
                              $INSTRUCT_JAX_COT_DATA_DIR/{MultiArith.json,
                              ASDiv.xml (or asdiv.json), SVAMP.json}.
  cot_heldout_math_eval       few-shot CoT on MultiArith + ASDiv + SVAMP: the
                              model-selection mixture of `instruct-jax select`.
  cot_heldout_math_eval_zero_shot_cot   the same sets with the zero-shot CoT prompt.
  cot_math_eval               all eight evaluation tasks.
  cot_bbh, cot_bbh_<task>_gen  BIG-Bench Hard through the BIG-bench source
                              (instruct_jax.data.bigbench), 3-shot, exact match:
                              registered at import when $INSTRUCT_JAX_BBH_DIR names a
                              BBH checkout, else by `register_bbh_tasks(bbh_dir)`.
                              Measures the general ability lost to specialization.

Few-shot evaluation prompts use four fixed exemplars (cot.EVAL_EXEMPLARS);
training prompts sample four other problems of the same split per example
(fixed per example and seed). Exemplars are dropped from the end when a prompt
would exceed `max_input_tokens`, so the question is never truncated away.

Teacher features. Teacher tasks pre-tokenize their targets in Python and align
the teacher's tokens to them (instruct_jax.data.alignment) when the dataset is
first built; the result is cached per (file, vocabulary, k, band) in this
process. Each example gets "teacher_indices" [L, k] int32 and "teacher_probs"
[L, k] float32 next to "targets": the teacher's top-k distribution at student
positions that match a teacher token 1:1, a one-hot on the target elsewhere.
Formats not listed in `distill_formats` (by default the answer-only ones) get
one-hot rows everywhere, which makes the distillation KL equal to plain NLL for
them. Use them with instruct_jax.models.distillation.DistillationModel.
"""
from __future__ import annotations

import functools
import os
import time
import zlib
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from instruct_jax.data import alignment
from instruct_jax.data import cot
from tasks_registry import registration

# The T5 / Flan-T5 vocabulary (the model gins' VOCABULARY); only read when a
# dataset is built. Register tasks for another student with the functions below.
VOCABULARY = seqio.SentencePieceVocabulary(
    "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model")
GSM8K_TFDS_NAME = "gsm8k:1.0.0"
DATA_DIR_ENV = "INSTRUCT_JAX_COT_DATA_DIR"
DEFAULT_MAX_INPUT_TOKENS = 1024
MAX_VALIDATION_PROBLEMS = 256
HELDOUT_SETS = ("multiarith", "asdiv", "svamp")
EVAL_FORMATS = (cot.ZERO_SHOT_COT, cot.FEW_SHOT_COT)
TEACHER_INDICES = "teacher_indices"
TEACHER_PROBS = "teacher_probs"


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def teacher_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """Text features plus the sparse teacher distribution, one row per target token."""
  sparse = seqio.PassThroughVocabulary(size=0)
  return {
      **output_features(vocabulary),
      TEACHER_INDICES: seqio.Feature(vocabulary=sparse, add_eos=False, dtype=tf.int32, rank=2),
      TEACHER_PROBS: seqio.Feature(vocabulary=sparse, add_eos=False, dtype=tf.float32, rank=2),
  }


# --------------------------------------------------------------------------
# Metrics and postprocessing.


def postprocess_math(output: Any, example: Mapping[str, Any] | None = None,
                     is_target: bool = False) -> Any:
  """seqio postprocess_fn: the gold number for targets, the text for predictions."""
  if is_target and example is not None and "answer" in example:
    return float(np.asarray(example["answer"]))
  return output.decode("utf-8") if isinstance(output, bytes) else output


# --------------------------------------------------------------------------
# Turning problems into examples.


def _token_counter(vocabulary: seqio.Vocabulary):
  return lambda text: len(vocabulary.encode(text))


def format_examples(problems: Sequence[cot.MathProblem], fmt: str,
                    vocabulary: seqio.Vocabulary, max_input_tokens: int | None,
                    exemplar_pool: Sequence[cot.MathProblem] | None = None,
                    exemplar_seed: int = 0) -> list[tuple[str, str]]:
  """(inputs, targets) texts of `problems` in format `fmt`.

  Few-shot formats take exemplars from `exemplar_pool` (other problems than the
  query, sampled per example) or, when it is None, the fixed cot.EVAL_EXEMPLARS.
  """
  count = _token_counter(vocabulary)
  rows = []
  for index, problem in enumerate(problems):
    exemplars: Sequence[cot.MathProblem] = ()
    if cot.is_few_shot(fmt):
      if exemplar_pool is None:
        exemplars = cot.EVAL_EXEMPLARS
      else:
        exemplars = _sample_pool(exemplar_pool, index, problem.question, exemplar_seed)
    inputs = cot.build_prompt(problem.question, fmt, exemplars, max_input_tokens, count)
    rows.append((inputs, cot.target_text(problem, fmt)))
  return rows


def _sample_pool(pool: Sequence[cot.MathProblem], index: int, question: str,
                 seed: int) -> list[cot.MathProblem]:
  """NUM_EXEMPLARS pool problems other than the query (and its other samples)."""
  picks = cot.sample_exemplars(len(pool), cot.NUM_EXEMPLARS + 8, index, seed)
  chosen = [pool[i] for i in picks if pool[i].question != question]
  return chosen[:cot.NUM_EXEMPLARS]


def _strings(texts: Sequence[str]) -> tf.Tensor:
  return tf.constant(list(texts), dtype=tf.string, shape=[len(texts)])


def _text_dataset(rows: Sequence[tuple[str, str]], answers: Sequence[float]) -> tf.data.Dataset:
  if not rows:
    logging.warning("A CoT task split has no examples (small source file?).")
  return tf.data.Dataset.from_tensor_slices({
      "inputs": _strings([r[0] for r in rows]),
      "targets": _strings([r[1] for r in rows]),
      "answer": np.asarray(answers, np.float32),
  })


TEXT_PREPROCESSORS = (
    seqio.preprocessors.tokenize,
    seqio.CacheDatasetPlaceholder(),
    seqio.preprocessors.append_eos_after_trim,
)


# --------------------------------------------------------------------------
# GSM8K from TFDS.


def load_gsm8k(split: str, tfds_name: str = GSM8K_TFDS_NAME,
               data_dir: str | None = None) -> list[cot.MathProblem]:
  """GSM8K problems of a TFDS split (worked solution as rationale)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = tfds.load(tfds_name, split=split, data_dir=data_dir, shuffle_files=False)
  problems = []
  for example in tfds.as_numpy(dataset):
    rationale, answer = cot.parse_gsm8k_answer(example["answer"].decode("utf-8"))
    problems.append(cot.MathProblem(example["question"].decode("utf-8"), answer, rationale))
  return problems


def _validation_size(total: int) -> int:
  return min(MAX_VALIDATION_PROBLEMS, total // 10)


def _gsm8k_train_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                            fmt: str, vocabulary: seqio.Vocabulary, tfds_name: str,
                            data_dir: str | None, max_input_tokens: int | None,
                            exemplar_seed: int) -> tf.data.Dataset:
  del shuffle_files, seed  # Built in memory; the Task's shuffle buffer shuffles.
  problems = load_gsm8k("train", tfds_name, data_dir)
  cut = len(problems) - _validation_size(len(problems))
  problems = problems[:cut] if split == "train" else problems[cut:]
  rows = format_examples(problems, fmt, vocabulary, max_input_tokens, problems, exemplar_seed)
  return _text_dataset(rows, [p.answer for p in problems])


def _eval_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                     loader, fmt: str, vocabulary: seqio.Vocabulary,
                     max_input_tokens: int | None) -> tf.data.Dataset:
  del split, shuffle_files, seed
  problems = loader()
  rows = format_examples(problems, fmt, vocabulary, max_input_tokens)
  return _text_dataset(rows, [p.answer for p in problems])


def register_gsm8k_tasks(vocabulary: seqio.Vocabulary = VOCABULARY, prefix: str = "cot_gsm8k",
                         rates: Mapping[str, float] | None = None,
                         tfds_name: str = GSM8K_TFDS_NAME, data_dir: str | None = None,
                         max_input_tokens: int | None = DEFAULT_MAX_INPUT_TOKENS,
                         exemplar_seed: int = 0) -> str:
  """Registers <prefix>_<format> for the four formats and <prefix>_formats; returns it.

  `rates` maps format -> mixing rate (formats left out or at 0 are not mixed).
  """
  for fmt in cot.FORMATS:
    registration.replace_task(
        f"{prefix}_{fmt}",
        source=seqio.FunctionDataSource(
            dataset_fn=functools.partial(
                _gsm8k_train_dataset_fn, fmt=fmt, vocabulary=vocabulary, tfds_name=tfds_name,
                data_dir=data_dir, max_input_tokens=max_input_tokens,
                exemplar_seed=exemplar_seed),
            splits=("train", "validation")),
        output_features=output_features(vocabulary),
        preprocessors=list(TEXT_PREPROCESSORS),
        postprocess_fn=postprocess_math,
        metric_fns=[cot.math_accuracy],
    )
  return register_format_mixture(f"{prefix}_formats", prefix, rates)


def register_format_mixture(name: str, task_prefix: str,
                            rates: Mapping[str, float] | None = None) -> str:
  """Mixture `name` over <task_prefix>_<format> with per-format rates; returns `name`.

  Rates default to 1 for every format. Example (gin):
    cot.register_format_mixture.rates = {'zero_shot_cot': 2.0, 'few_shot_cot': 2.0,
                                         'zero_shot': 1.0, 'few_shot': 1.0}
  """
  rates = {fmt: 1.0 for fmt in cot.FORMATS} if rates is None else dict(rates)
  for fmt in rates:
    cot.check_format(fmt)
  tasks = [(f"{task_prefix}_{fmt}", float(rate)) for fmt, rate in rates.items() if rate > 0]
  registration.replace_mixture(name, tasks)
  return name


# --------------------------------------------------------------------------
# Held-out math sets from user files.


def heldout_file(name: str, path: str | None = None) -> str:
  """The file of held-out set `name`: `path` if given, else found in $INSTRUCT_JAX_COT_DATA_DIR."""
  if path:
    return path
  data_dir = os.environ.get(DATA_DIR_ENV)
  candidates = cot.HELDOUT_FILE_NAMES[name]
  if data_dir:
    for file_name in candidates:
      if tf.io.gfile.exists(os.path.join(data_dir, file_name)):
        return os.path.join(data_dir, file_name)
  where = f"${DATA_DIR_ENV}={data_dir!r}" if data_dir else f"${DATA_DIR_ENV} (unset)"
  raise FileNotFoundError(
      f"No {name} file: looked for {' or '.join(candidates)} in {where}. Download the "
      f"public {name} release and either set {DATA_DIR_ENV} to its directory or call "
      f"tasks_registry.cot.register_heldout_math_tasks(files={{'{name}': PATH}}).")


def _load_heldout(name: str, path: str | None) -> list[cot.MathProblem]:
  return cot.HELDOUT_LOADERS[name](heldout_file(name, path))


def register_math_eval_tasks(vocabulary: seqio.Vocabulary = VOCABULARY,
                             files: Mapping[str, str] | None = None, prefix: str = "cot_eval",
                             mixture_prefix: str = "cot", tfds_name: str = GSM8K_TFDS_NAME,
                             data_dir: str | None = None,
                             max_input_tokens: int | None = DEFAULT_MAX_INPUT_TOKENS) -> str:
  """Registers the GSM8K-test and held-out eval tasks and mixtures; returns the selection one.

  `files` maps 'multiarith' / 'asdiv' / 'svamp' to paths (others fall back to
  $INSTRUCT_JAX_COT_DATA_DIR when the dataset is built). Mixtures:
  <mixture_prefix>_heldout_math_eval (few-shot CoT on the held-out sets, for
  checkpoint selection), <mixture_prefix>_heldout_math_eval_zero_shot_cot and
  <mixture_prefix>_math_eval (everything).
  """
  files = dict(files or {})
  unknown = set(files) - set(HELDOUT_SETS)
  if unknown:
    raise ValueError(f"Unknown held-out math set(s) {sorted(unknown)}; expected some of "
                     f"{', '.join(HELDOUT_SETS)}.")
  loaders = {"gsm8k": functools.partial(load_gsm8k, "test", tfds_name, data_dir)}
  for name in HELDOUT_SETS:
    loaders[name] = functools.partial(_load_heldout, name, files.get(name))
  for name, loader in loaders.items():
    for fmt in EVAL_FORMATS:
      registration.replace_task(
          f"{prefix}_{name}_{fmt}",
          source=seqio.FunctionDataSource(
              dataset_fn=functools.partial(_eval_dataset_fn, loader=loader, fmt=fmt,
                                           vocabulary=vocabulary,
                                           max_input_tokens=max_input_tokens),
              splits=("test",)),
          output_features=output_features(vocabulary),
          preprocessors=list(TEXT_PREPROCESSORS),
          postprocess_fn=postprocess_math,
          metric_fns=[cot.math_accuracy],
      )
  selection = f"{mixture_prefix}_heldout_math_eval"
  registration.replace_mixture(
      selection, [f"{prefix}_{n}_{cot.FEW_SHOT_COT}" for n in HELDOUT_SETS], default_rate=1.0)
  registration.replace_mixture(
      f"{mixture_prefix}_heldout_math_eval_zero_shot_cot",
      [f"{prefix}_{n}_{cot.ZERO_SHOT_COT}" for n in HELDOUT_SETS], default_rate=1.0)
  registration.replace_mixture(
      f"{mixture_prefix}_math_eval",
      [f"{prefix}_{n}_{fmt}" for n in loaders for fmt in EVAL_FORMATS], default_rate=1.0)
  return selection


def register_heldout_math_tasks(files: Mapping[str, str] | None = None,
                                vocabulary: seqio.Vocabulary = VOCABULARY) -> str:
  """Re-registers the default eval tasks with explicit held-out files.

  Returns 'cot_heldout_math_eval'. From gin:
    EVAL_MIXTURE = @cot.register_heldout_math_tasks()
    cot.register_heldout_math_tasks.files = {'svamp': '/data/SVAMP.json', ...}
  """
  return register_math_eval_tasks(vocabulary=vocabulary, files=files)


# --------------------------------------------------------------------------
# Teacher files.


def _vocabulary_key(vocabulary: seqio.Vocabulary) -> Any:
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return ("sentencepiece", str(vocabulary))
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return ("bytes", vocabulary.extra_ids)
  return ("object", id(vocabulary))


def _file_key(path: str) -> tuple[str, int, int]:
  """(path, size, mtime): a changed teacher file is read and aligned again."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"Teacher file {path!r} does not exist; set TEACHER_FILE (gin) "
                            "or register_teacher_tasks(teacher_file=...) to a JSON-lines file.")
  stat = tf.io.gfile.stat(path)
  return (path, stat.length, stat.mtime_nsec)


@functools.lru_cache(maxsize=8)
def _teacher_records(file_key: tuple[str, int, int]) -> tuple[cot.TeacherRecord, ...]:
  return tuple(cot.load_teacher_file(file_key[0]))


# (file key, vocabulary key, k, band, span penalty) -> per record:
# (CoT target ids, TeacherTargets or None when the record has no teacher tokens).
_ALIGNED: dict[Any, list[tuple[list[int], alignment.TeacherTargets | None]]] = {}


def _aligned_cot_targets(path: str, vocabulary: seqio.Vocabulary, k: int, band: int | None,
                         span_penalty: bool
                         ) -> list[tuple[list[int], alignment.TeacherTargets | None]]:
  """CoT target ids and aligned teacher targets of every record, computed once per process."""
  key = (_file_key(path), _vocabulary_key(vocabulary), k, band, span_penalty)
  if key not in _ALIGNED:
    records = _teacher_records(key[0])
    student = alignment.student_vocabulary(vocabulary)
    start, tokens, results = time.perf_counter(), 0, []
    for record in records:
      ids = list(vocabulary.encode(cot.cot_target(record.problem.rationale,
                                                  record.problem.answer)))
      tokens += len(ids)
      aligned = None
      if record.teacher_tokens:
        aligned = alignment.teacher_targets(record.teacher_tokens, record.teacher_top_k, ids,
                                            student, k=k, band=band,
                                            span_penalty=span_penalty)
      results.append((ids, aligned))
    seconds = time.perf_counter() - start
    matched = [a.matched.mean() for _, a in results if a is not None]
    logging.info("Aligned %d teacher chains of %s (%d student tokens) in %.1fs; %.0f%% of "
                 "student tokens took the teacher's distribution.", len(records), path, tokens,
                 seconds, 100 * float(np.mean(matched)) if matched else 0.0)
    _ALIGNED.clear()  # Keep one file's features in memory at a time.
    _ALIGNED[key] = results
  return _ALIGNED[key]


def _split_of(question: str, validation_fraction: float) -> str:
  """Validation by a hash of the question, so all samples of a problem share a split."""
  bucket = zlib.crc32(" ".join(question.split()).encode("utf-8")) % 10_000
  return "validation" if bucket < validation_fraction * 10_000 else "train"


def _sparse_dataset(inputs: Sequence[str], targets: Sequence[Sequence[int]],
                    teacher: Sequence[alignment.TeacherTargets], answers: Sequence[float],
                    k: int) -> tf.data.Dataset:
  if not inputs:
    logging.warning("A teacher task split has no examples; the teacher file is small for "
                    "its validation fraction.")
  lengths = np.asarray([len(t) for t in targets], np.int64)
  flat_ids = np.concatenate([np.zeros([0], np.int32)] +
                            [np.asarray(t, np.int32) for t in targets])
  flat_indices = np.concatenate([np.zeros([0, k], np.int32)] + [t.indices for t in teacher])
  flat_probs = np.concatenate([np.zeros([0, k], np.float32)] + [t.probs for t in teacher])
  dataset = tf.data.Dataset.from_tensor_slices({
      "inputs": _strings(inputs),
      "targets": tf.RaggedTensor.from_row_lengths(flat_ids, lengths),
      TEACHER_INDICES: tf.RaggedTensor.from_row_lengths(flat_indices, lengths),
      TEACHER_PROBS: tf.RaggedTensor.from_row_lengths(flat_probs, lengths),
      "answer": np.asarray(answers, np.float32),
  })
  return dataset.map(lambda ex: {
      name: value.to_tensor() if isinstance(value, tf.RaggedTensor) else value
      for name, value in ex.items()})


def _teacher_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                        teacher_file: str, fmt: str, vocabulary: seqio.Vocabulary, k: int,
                        band: int | None, span_penalty: bool, distill: bool,
                        max_input_tokens: int | None, validation_fraction: float,
                        exemplar_seed: int) -> tf.data.Dataset:
  del shuffle_files, seed
  records = _teacher_records(_file_key(teacher_file))
  chosen = [i for i, r in enumerate(records)
            if _split_of(r.problem.question, validation_fraction) == split]
  problems = [records[i].problem for i in chosen]
  rows = format_examples(problems, fmt, vocabulary, max_input_tokens, problems, exemplar_seed)
  if cot.is_cot(fmt):
    aligned = _aligned_cot_targets(teacher_file, vocabulary, k, band, span_penalty)
    targets = [aligned[i][0] for i in chosen]
    teacher = [aligned[i][1] if distill and aligned[i][1] is not None
               else alignment.one_hot_targets(aligned[i][0], k) for i in chosen]
  else:
    targets = [list(vocabulary.encode(text)) for _, text in rows]
    teacher = [alignment.one_hot_targets(ids, k) for ids in targets]
  return _sparse_dataset([r[0] for r in rows], targets, teacher,
                         [p.answer for p in problems], k)


def tokenize_inputs(dataset: tf.data.Dataset,
                    output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """seqio.preprocessors.tokenize for 'inputs' only (teacher targets come as ids)."""
  return seqio.preprocessors.tokenize(dataset, {"inputs": output_features["inputs"]})


def append_eos_after_trim_with_teacher(
    dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
    sequence_length: Mapping[str, int] | None = None) -> tf.data.Dataset:
  """seqio's append_eos_after_trim, keeping the teacher rows in step with 'targets'.

  The EOS target position gets a one-hot teacher row on EOS.
  """
  dataset = seqio.preprocessors.append_eos_after_trim(dataset, output_features, sequence_length)
  eos_id = output_features["targets"].vocabulary.eos_id

  def fix_teacher(ex):
    ex = dict(ex)
    length = tf.shape(ex["targets"])[0] - 1  # Target tokens before the EOS.
    indices, probs = ex[TEACHER_INDICES][:length], ex[TEACHER_PROBS][:length]
    k = tf.shape(indices)[1]
    eos_row = tf.one_hot([0], k, dtype=tf.int32) * eos_id
    ex[TEACHER_INDICES] = tf.concat([indices, eos_row], axis=0)
    ex[TEACHER_PROBS] = tf.concat([probs, tf.one_hot([0], k, dtype=tf.float32)], axis=0)
    return ex

  return dataset.map(fix_teacher, num_parallel_calls=tf.data.AUTOTUNE)


def register_teacher_tasks(teacher_file: str, vocabulary: seqio.Vocabulary = VOCABULARY,
                           prefix: str = "cot_teacher",
                           rates: Mapping[str, float] | None = None,
                           distill_formats: Sequence[str] = cot.COT_FORMATS,
                           top_k: int = alignment.DEFAULT_TOP_K,
                           alignment_band: int | None = alignment.DEFAULT_BAND,
                           alignment_span_penalty: bool = False,
                           max_input_tokens: int | None = DEFAULT_MAX_INPUT_TOKENS,
                           validation_fraction: float = 0.05,
                           exemplar_seed: int = 0) -> str:
  """Registers <prefix>_<format> tasks over a teacher file and their mixture; returns its name.

  Args:
    teacher_file: JSON lines (cot.load_teacher_file), local or gs://.
    vocabulary: the STUDENT vocabulary (the model's).
    prefix: task-name prefix; the mixture is <prefix>_formats.
    rates: format -> mixing rate (default 1 each; 0 or missing leaves it out).
    distill_formats: formats whose targets carry the teacher's distribution;
      the others get one-hot rows (plain NLL under the distillation loss).
    top_k: slots per position in the sparse teacher features.
    alignment_band: DTW band in characters (None = exact full DP).
    alignment_span_penalty: the optional alignment refinement (alignment.span_penalties);
      off follows the recipe exactly.
    max_input_tokens: few-shot prompts drop exemplars to fit this many tokens.
    validation_fraction: share of questions (by hash) in the 'validation' split.
    exemplar_seed: seed of the few-shot exemplar sampling.
  """
  for fmt in distill_formats:
    cot.check_format(fmt)
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
  features = teacher_output_features(vocabulary)
  for fmt in cot.FORMATS:
    registration.replace_task(
        f"{prefix}_{fmt}",
        source=seqio.FunctionDataSource(
            dataset_fn=functools.partial(
                _teacher_dataset_fn, teacher_file=teacher_file, fmt=fmt, vocabulary=vocabulary,
                k=top_k, band=alignment_band, span_penalty=alignment_span_penalty,
                distill=fmt in distill_formats,
                max_input_tokens=max_input_tokens, validation_fraction=validation_fraction,
                exemplar_seed=exemplar_seed),
            splits=("train", "validation")),
        output_features=features,
        preprocessors=[
            tokenize_inputs,
            seqio.CacheDatasetPlaceholder(),
            append_eos_after_trim_with_teacher,
        ],
        postprocess_fn=postprocess_math,
        metric_fns=[cot.math_accuracy],
    )
  return register_format_mixture(f"{prefix}_formats", prefix, rates)


# --------------------------------------------------------------------------
# BIG-Bench Hard (general ability lost to specialization), through the BIG-bench source.

BBH_DIR_ENV = "INSTRUCT_JAX_BBH_DIR"


def bbh_task_files(bbh_dir: str) -> dict[str, str]:
  """{task: path} of a BIG-Bench Hard checkout: bbh/<task>.json or <task>/task.json files."""
  files = {}
  for name in sorted(tf.io.gfile.listdir(bbh_dir)):
    path = os.path.join(bbh_dir, name.rstrip("/"))
    if name.endswith(".json"):
      files[name[:-len(".json")]] = path
    elif tf.io.gfile.exists(os.path.join(path, "task.json")):
      files[name.rstrip("/")] = os.path.join(path, "task.json")
  if not files:
    raise FileNotFoundError(
        f"No BIG-Bench Hard task files in {bbh_dir!r}: expected <task>.json files (the "
        "BIG-Bench-Hard repository's bbh/ directory) or <task>/task.json directories.")
  return files


def register_bbh_tasks(bbh_dir: str, vocabulary: seqio.Vocabulary = VOCABULARY,
                       prefix: str = "cot_bbh", num_shots: int = 3,
                       tasks: Sequence[str] | None = None) -> str:
  """Registers every BBH task of `bbh_dir` (split 'all') and the mixture `prefix`; returns it.

  Each task is instruct_jax.data.bigbench's generative task <prefix>_<task>_gen
  (BIG-bench prompt format, `num_shots` exemplars drawn from the task itself,
  exact-match accuracy). Gin: EVAL_MIXTURE = @cot.register_bbh_tasks().
  """
  from instruct_jax.data import bigbench  # pylint: disable=g-import-not-at-top
  files = bbh_task_files(bbh_dir)
  if tasks is not None:
    unknown = sorted(set(tasks) - set(files))
    if unknown:
      raise ValueError(f"BBH task(s) {unknown} not in {bbh_dir!r}; found {sorted(files)}.")
    files = {t: files[t] for t in tasks}
  names = []
  for task, path in files.items():
    registered = bigbench.register_bigbench_task(f"{prefix}_{task}", path, vocabulary,
                                                 num_shots=num_shots)
    names.append(registered[0])  # the generative task
  registration.replace_mixture(prefix, names, default_rate=1.0)
  return prefix


# --------------------------------------------------------------------------
# Default registrations.

register_gsm8k_tasks()
register_math_eval_tasks()
if os.environ.get(BBH_DIR_ENV):
  register_bbh_tasks(os.environ[BBH_DIR_ENV])
