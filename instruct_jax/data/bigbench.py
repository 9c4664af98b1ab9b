"""BIG-bench JSON tasks (a task.json file) as seqio tasks: generative and multiple choice.

A BIG-bench JSON task holds "examples", each with an "input" and either a
"target" (a string or a list of acceptable strings) or "target_scores"
({option: score}, the best-scoring options being correct), plus optional
formatting keys. The prompt follows BIG-bench's own rendering:

    task_prefix + [shots joined by few_shot_example_separator] + query
    query = example_input_prefix + input [+ choice_prefix + option ...] + example_output_prefix

with BIG-bench's defaults ("\\nQ: ", "\\nA: ", "\\n  choice: ", options appended,
shots separated by "\\n") where the file says nothing. `register_bigbench_task`
registers up to two seqio tasks from one file:

  <name>_gen  generation, scored by exact string match against any target
              (after the file's "stop_string" / "output_regex", if any);
  <name>_mc   rank classification over the target_scores options (only when
              every example has them): the model scores each option and the
              most likely one is its answer (BIG-bench's multiple_choice_grade).

This covers BIG-Bench Hard (task.json files with "input"/"target" only) and the
algorithmic-reasoning tasks used to evaluate symbol tuning. Files are read with
tf.io.gfile, so local paths and gs:// both work. Splits: "all" (every example,
what benchmarks report), and a deterministic "train" / "validation" partition.
Register from your own registry module (imported via MIXTURE_OR_TASK_MODULE):

    bigbench.register_bigbench_directory("/data/bbh", vocabulary, prefix="bbh_",
                                         mixture_name="bbh")
    # then: instruct-jax eval ... --gin.MIXTURE_OR_TASK_NAME="'bbh_gen'" \
    #   --gin.EVAL_SPLIT="'all'" --gin.MIXTURE_OR_TASK_MODULE="'my_registry'"
"""

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import seqio
import tensorflow as tf

from instruct_jax.eval import metrics
from instruct_jax.data import templates

SPLITS = ("all", "train", "validation")
GENERATIVE_SUFFIX = "_gen"
MULTIPLE_CHOICE_SUFFIX = "_mc"


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """BIG-bench's prompt pieces (defaults are BIG-bench's own)."""
  task_prefix: str = ""
  example_input_prefix: str = "\nQ: "
  example_output_prefix: str = "\nA: "
  choice_prefix: str = "\n  choice: "
  append_choices_to_input: bool = True
  few_shot_example_separator: str = "\n"

  @classmethod
  def from_task_json(cls, task_json: Mapping[str, Any], **overrides) -> "PromptFormat":
    """The file's formatting keys, then explicit non-None overrides, then defaults."""
    values = {f.name: task_json[f.name] for f in dataclasses.fields(cls) if f.name in task_json}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class BigBenchExample:
  """One rendered example: prompt, first answer, all answers; options and the correct ones (MC)."""
  inputs: str
  targets: str
  answers: tuple[str, ...]
  options: tuple[str, ...] = ()
  correct_options: tuple[str, ...] = ()


def _fail(path: str, message: str) -> ValueError:
  return ValueError(f"BIG-bench task file {path}: {message}. Expected a JSON object with "
                    "\"examples\": [{\"input\": ..., \"target\": ... or \"target_scores\": "
                    "{option: score}}, ...].")


def read_task_json(path: str) -> dict[str, Any]:
  """Loads and checks a BIG-bench task.json; errors name the file and example index."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"BIG-bench task file {path} does not exist.")
  with tf.io.gfile.GFile(path) as f:
    try:
      task_json = json.load(f)
    except json.JSONDecodeError as e:
      raise _fail(path, f"not valid JSON ({e})") from None
  examples = task_json.get("examples") if isinstance(task_json, dict) else None
  if not isinstance(examples, list) or not examples:
    raise _fail(path, "no non-empty \"examples\" list")
  for index, example in enumerate(examples):
    if not isinstance(example, dict) or not isinstance(example.get("input"), str):
      raise _fail(path, f"example {index} has no string \"input\"")
    target = example.get("target")
    scores = example.get("target_scores")
    if target is None and scores is None:
      raise _fail(path, f"example {index} has neither \"target\" nor \"target_scores\"")
    if target is not None and not (isinstance(target, str) or (
        isinstance(target, list) and target and all(isinstance(t, str) for t in target))):
      raise _fail(path, f"example {index} \"target\" must be a string or a non-empty list "
                        "of strings")
    if scores is not None and not (isinstance(scores, dict) and scores and all(
        isinstance(k, str) and isinstance(v, (int, float)) for k, v in scores.items())):
      raise _fail(path, f"example {index} \"target_scores\" must map option strings to "
                        "numbers")
  return task_json


def _best_options(example: Mapping[str, Any]) -> tuple[str, ...]:
  scores = example.get("target_scores") or {}
  best = max(scores.values(), default=None)
  return tuple(option for option, score in scores.items() if score == best)


def _answers(example: Mapping[str, Any]) -> tuple[str, ...]:
  target = example.get("target")
  if target is not None:
    return (target,) if isinstance(target, str) else tuple(target)
  return _best_options(example)


def _query(example: Mapping[str, Any], fmt: PromptFormat) -> str:
  text = example["input"]
  if "target_scores" in example and fmt.append_choices_to_input:
    text += fmt.choice_prefix + fmt.choice_prefix.join(example["target_scores"])
  return fmt.example_input_prefix + text + fmt.example_output_prefix


def render_examples(task_json: Mapping[str, Any], fmt: PromptFormat, num_shots: int = 0,
                    seed: int = 0) -> list[BigBenchExample]:
  """Every example as prompt/answers; shots are other examples, chosen per example by seed."""
  examples = task_json["examples"]
  if num_shots < 0 or (num_shots and num_shots >= len(examples)):
    raise ValueError(f"num_shots={num_shots} needs more examples than the task's "
                     f"{len(examples)} (shots are drawn from the other examples).")
  rendered = []
  for index, example in enumerate(examples):
    shots = []
    if num_shots:
      rng = np.random.default_rng([seed, index])
      others = [i for i in range(len(examples)) if i != index]
      for shot in rng.choice(others, size=num_shots, replace=False):
        shots.append(_query(examples[shot], fmt) + _answers(examples[shot])[0])
    prompt = fmt.task_prefix + fmt.few_shot_example_separator.join(
        shots + [_query(example, fmt)])
    answers = _answers(example)
    options = tuple(example.get("target_scores", {}))
    rendered.append(BigBenchExample(prompt, answers[0], answers, options,
                                    _best_options(example)))
  return rendered


def split_examples(examples: Sequence[BigBenchExample], validation_fraction: float = 0.2,
                   seed: int = 0) -> dict[str, list[BigBenchExample]]:
  """{"all", "train", "validation"}: a seeded partition, at least one validation example."""
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f"validation_fraction={validation_fraction} must be in (0, 1).")
  order = np.random.default_rng(seed).permutation(len(examples))
  num_validation = max(1, math.floor(validation_fraction * len(examples)))
  validation = set(order[:num_validation].tolist())
  return {
      "all": list(examples),
      "train": [e for i, e in enumerate(examples) if i not in validation],
      "validation": [e for i, e in enumerate(examples) if i in validation],
  }


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *,
                by_split: Mapping[str, Sequence[BigBenchExample]],
                with_options: bool) -> tf.data.Dataset:
  del shuffle_files, seed  # One in-memory "file"; order is the file's order.
  examples = by_split[split]
  # Rank classification marks the options with the best target_scores correct.
  answers = [e.correct_options if with_options else e.answers for e in examples]
  columns = {
      "inputs": [e.inputs for e in examples],
      "targets": [e.targets for e in examples],
      "answers": tf.ragged.constant([list(a) for a in answers], dtype=tf.string),
  }
  if with_options:
    columns["options"] = tf.ragged.constant([list(e.options) for e in examples],
                                            dtype=tf.string)
  return tf.data.Dataset.from_tensor_slices(columns)


def prediction_postprocessor(output: Any, example: Optional[Mapping[str, Any]] = None,
                             is_target: bool = False, *, stop_string: Optional[str] = None,
                             output_regex: Optional[str] = None) -> Any:
  """seqio postprocess_fn: targets -> all answers; predictions -> cut at stop_string / regex.

  As in BIG-bench: text after the first stop_string is dropped, then the first
  match of output_regex (if given) is the answer ("" when none). A regex with
  a capture group yields the group, e.g. r"the answer is (.*?)\\." for
  chain-of-thought outputs.
  """
  if is_target:
    return metrics.answers_postprocessor(output, example, is_target=True)
  text = output.decode("utf-8") if isinstance(output, bytes) else str(output)
  if stop_string:
    text = text.split(stop_string, 1)[0]
  if output_regex:
    match = re.search(output_regex, text)
    text = (match.group(1) if match.re.groups else match.group(0)) if match else ""
  return text


def register_bigbench_task(name: str, path: str, vocabulary: seqio.Vocabulary, *,
                           num_shots: int = 0, seed: int = 0,
                           validation_fraction: float = 0.2,
                           task_prefix: Optional[str] = None,
                           example_input_prefix: Optional[str] = None,
                           example_output_prefix: Optional[str] = None,
                           choice_prefix: Optional[str] = None,
                           append_choices_to_input: Optional[bool] = None,
                           few_shot_example_separator: Optional[str] = None,
                           stop_string: Optional[str] = None,
                           output_regex: Optional[str] = None) -> list[str]:
  """Registers <name>_gen and, if every example has target_scores, <name>_mc.

  Prompt-format and output arguments override the file's keys (None keeps
  them). Returns the registered names. Re-registering a name replaces it.
  """
  task_json = read_task_json(path)
  fmt = PromptFormat.from_task_json(
      task_json, task_prefix=task_prefix, example_input_prefix=example_input_prefix,
      example_output_prefix=example_output_prefix, choice_prefix=choice_prefix,
      append_choices_to_input=append_choices_to_input,
      few_shot_example_separator=few_shot_example_separator)
  examples = render_examples(task_json, fmt, num_shots, seed)
  by_split = split_examples(examples, validation_fraction, seed)
  output_features = {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }
  multiple_choice = all("target_scores" in e for e in task_json["examples"])

  def source(with_options):
    return seqio.FunctionDataSource(
        dataset_fn=functools.partial(_dataset_fn, by_split=by_split, with_options=with_options),
        splits=SPLITS, num_input_examples={s: len(v) for s, v in by_split.items()})

  tokenize_steps = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                    seqio.preprocessors.append_eos_after_trim]
  names = [name + GENERATIVE_SUFFIX]
  _replace_task(names[0], source=source(False), output_features=output_features,
                preprocessors=tokenize_steps,
                postprocess_fn=functools.partial(
                    prediction_postprocessor,
                    stop_string=stop_string if stop_string is not None
                    else task_json.get("stop_string"),
                    output_regex=output_regex if output_regex is not None
                    else task_json.get("output_regex")),
                metric_fns=[metrics.accuracy])
  if multiple_choice:
    names.append(name + MULTIPLE_CHOICE_SUFFIX)
    _replace_task(names[1], source=source(True), output_features=output_features,
                  preprocessors=[templates.rank_classification_rows, *tokenize_steps],
                  postprocess_fn=metrics.rank_classification_postprocessor,
                  metric_fns=[metrics.rank_classification_accuracy])
  return names


def task_files(directory: str) -> dict[str, str]:
  """{task name: path} of the BIG-bench JSON tasks in a directory.

  Understands both layouts: BIG-bench's benchmark_tasks/<name>/task.json and
  BIG-Bench Hard's flat <name>.json files.
  """
  found = {}
  for path in sorted(tf.io.gfile.glob(f"{directory.rstrip('/')}/*/task.json")):
    found[path.rstrip("/").split("/")[-2]] = path
  for path in sorted(tf.io.gfile.glob(f"{directory.rstrip('/')}/*.json")):
    found.setdefault(path.rsplit("/", 1)[-1][:-len(".json")], path)
  if not found:
    raise FileNotFoundError(f"No BIG-bench task files in {directory}: expected <name>/task.json "
                            "(BIG-bench) or <name>.json (BIG-Bench Hard) entries.")
  return found


def register_bigbench_directory(directory: str, vocabulary: seqio.Vocabulary, prefix: str,
                                mixture_name: Optional[str] = None, **kwargs) -> list[str]:
  """register_bigbench_task for every task file of `directory`, named prefix + file name.

  With `mixture_name`, also registers mixtures <mixture_name>_gen and (when
  some tasks have them) <mixture_name>_mc over the tasks of each kind, e.g.
  for evaluating all of BIG-Bench Hard in one `instruct-jax eval`. kwargs go
  to register_bigbench_task. Returns every registered name.
  """
  names = []
  for task, path in task_files(directory).items():
    names.extend(register_bigbench_task(prefix + task, path, vocabulary, **kwargs))
  if mixture_name:
    for suffix in (GENERATIVE_SUFFIX, MULTIPLE_CHOICE_SUFFIX):
      members = [n for n in names if n.endswith(suffix)]
      if members:
        seqio.MixtureRegistry.remove(mixture_name + suffix)
        seqio.MixtureRegistry.add(mixture_name + suffix, members, default_rate=1.0)
        names.append(mixture_name + suffix)
  return names


def _replace_task(name: str, **task_kwargs) -> None:
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **task_kwargs)
