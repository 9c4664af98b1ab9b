"""BIG-bench JSON tasks (a task.json file) as seqio tasks: generative and multiple choice.

A BIG-bench JSON task holds "examples", each with an "input" and either a
"target" (a string or a list of acceptable strings) or "target_scores"
({option: score}, the best-scoring options being correct), plus optional
formatting keys. A task split into subtasks has a parent task.json without
"examples": its subtasks are the <task>/<subtask>/task.json folders (or a
"subtasks" list of task objects inside the parent); each subtask is registered
as <name>_<subtask>. The prompt follows BIG-bench's own rendering
(bigbench/api/json_task.py):

    task_prefix + [shots joined by few_shot_example_separator] + query
    query = example_input_prefix + input [+ choice_prefix + choice ...] + example_output_prefix

with BIG-bench's defaults ("\\nQ: ", "\\nA: ", "\\n  choice: ", choices appended,
shots separated by "\\n") where the file says nothing. As in BIG-bench, the
appended choices are the option names sorted, then permuted by one
np.random.RandomState(42) drawn once per distinct example in file order (each
task and subtask starting afresh), so prompts for e.g. disambiguation_qa or
ruin_names list the choices as BIG-bench's do. `register_bigbench_task`
registers up to two seqio tasks from one file (or subtask):

  <name>_gen  generation, scored by exact string match against any target
              after BIG-bench's output post-processing: the output is cut
              after the first "stop_string" (kept, unless it starts the
              output), then the first match of "output_regex" is the answer;
              with neither in the file, the regex keeps the first sentence;
  <name>_mc   rank classification over the target_scores options (only when
              every example has them): the model scores each option and the
              most likely one is its answer (BIG-bench's multiple_choice_grade).

Deliberate differences from BIG-bench: few-shot examples are drawn per query by
our own seeded generator, and a shot shows its first target (BIG-bench draws
both from its shared generator, so exact shot sets differ); generated text is
not truncated to a maximum length before post-processing (the model's decode
length bounds it); exact match ignores surrounding whitespace.

This covers BIG-Bench Hard (task.json files with "input"/"target" only) and the
algorithmic-reasoning tasks used to evaluate symbol tuning. Files are read with
tf.io.gfile, so local paths and gs:// both work. Splits: "all" (every example,
what benchmarks report), and a deterministic "train" / "validation" partition.
Register from your own registry module (imported via MIXTURE_OR_TASK_MODULE):

    bigbench.register_bigbench_directory("/data/bbh", vocabulary, prefix="bbh_",
                                         mixture_name="bbh")
    # then: instruct-jax eval ... --gin.MIXTURE_OR_TASK_NAME="'bbh_gen'" \\
    #   --gin.EVAL_SPLIT="'all'" --gin.MIXTURE_OR_TASK_MODULE="'my_registry'"
"""

import dataclasses
import functools
import json
import logging
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
# BIG-bench's JsonTask default random_seed: it seeds the choice permutation.
CHOICE_SEED = 42
# BIG-bench's output_regex when a task sets neither it nor a stop_string: the
# first sentence (up to . ? ! ; or a newline).
FIRST_SENTENCE_REGEX = r"[^\.\?\!\;\n]+"


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


def _load_json(path: str) -> Any:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"BIG-bench task file {path} does not exist.")
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise _fail(path, f"not valid JSON ({e})") from None


def read_task_json(path: str) -> dict[str, Any]:
  """Loads and checks a BIG-bench task.json; errors name the file and example index."""
  return check_task_json(_load_json(path), path)


def check_task_json(task_json: Any, path: str) -> dict[str, Any]:
  """Checks a task object's examples; `path` names it in errors."""
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


def _subtask_dirs(path: str) -> list[str]:
  """The <task>/<subtask>/ folders beside a parent task.json that hold a task.json."""
  if path.rsplit("/", 1)[-1] != "task.json":
    return []  # A flat <name>.json (BIG-Bench Hard layout) has no subtask folders.
  parent = path.rsplit("/", 1)[0] if "/" in path else "."
  return sorted(p.rsplit("/", 1)[0] for p in tf.io.gfile.glob(f"{parent}/*/task.json"))


def task_entries(path: str) -> list[tuple[str, dict[str, Any]]]:
  """[(subtask name or "", checked task object)] for a task.json, subtasks expanded.

  A parent task.json has no "examples"; its subtasks are the folders beside
  it or its own "subtasks" list (BIG-bench supports both). Subtasks inherit
  nothing from the parent: each has its own formatting keys, as in BIG-bench.
  """
  task_json = _load_json(path)
  if not isinstance(task_json, dict) or "examples" in task_json:
    return [("", check_task_json(task_json, path))]
  entries = []
  inline = task_json.get("subtasks")
  if isinstance(inline, list):
    for index, sub in enumerate(inline):
      if not isinstance(sub, dict):
        raise _fail(path, f"subtask {index} is not a JSON object")
      name = str(sub.get("name", index)).rsplit(":", 1)[-1]
      entries.append((_clean_name(name), check_task_json(sub, f"{path} subtask {name}")))
  for sub_dir in _subtask_dirs(path):
    sub_path = f"{sub_dir}/task.json"
    entries.extend((_clean_name(sub_dir.rsplit("/", 1)[-1]) + ("_" + s if s else ""), j)
                   for s, j in task_entries(sub_path))
  if not entries:
    raise _fail(path, "no \"examples\" and no subtasks (neither a \"subtasks\" list nor "
                      "<subtask>/task.json folders beside it)")
  return entries


def _clean_name(name: str) -> str:
  """A subtask name usable inside a seqio task name."""
  return re.sub(r"[^\w.]+", "_", name).strip("_") or "subtask"


def _best_options(example: Mapping[str, Any]) -> tuple[str, ...]:
  scores = example.get("target_scores") or {}
  best = max(scores.values(), default=None)
  return tuple(option for option, score in scores.items() if score == best)


def _answers(example: Mapping[str, Any]) -> tuple[str, ...]:
  target = example.get("target")
  if target is not None:
    return (target,) if isinstance(target, str) else tuple(target)
  return _best_options(example)


def _query(example: Mapping[str, Any], fmt: PromptFormat,
           choices: Optional[Sequence[str]] = None) -> str:
  text = example["input"]
  if "target_scores" in example and fmt.append_choices_to_input:
    choices = list(example["target_scores"]) if choices is None else choices
    text += fmt.choice_prefix + fmt.choice_prefix.join(choices)
  return fmt.example_input_prefix + text + fmt.example_output_prefix


def _queries(examples: Sequence[Mapping[str, Any]], fmt: PromptFormat,
             choice_seed: Optional[int]) -> list[str]:
  """Each example's query; choices permuted as BIG-bench's default_format_fn does.

  BIG-bench drops duplicate examples, then formats the rest in file order with
  one RandomState(seed): an example with target_scores (and choices appended)
  takes the next permutation of its sorted option names. Duplicates here share
  their first copy's prompt. choice_seed=None keeps the file's option order.
  """
  rng = None if choice_seed is None else np.random.RandomState(choice_seed)
  seen: dict[str, str] = {}
  queries = []
  for example in examples:
    key = json.dumps(example)
    if key not in seen:
      choices = None
      if rng is not None and "target_scores" in example and fmt.append_choices_to_input:
        names = sorted(example["target_scores"])
        choices = [names[i] for i in rng.permutation(len(names))]
      seen[key] = _query(example, fmt, choices)
    queries.append(seen[key])
  return queries


def render_examples(task_json: Mapping[str, Any], fmt: PromptFormat, num_shots: int = 0,
                    seed: int = 0, choice_seed: Optional[int] = CHOICE_SEED
                    ) -> list[BigBenchExample]:
  """Every example as prompt/answers; shots are other examples, chosen per example by seed.

  choice_seed seeds BIG-bench's permutation of appended choices (None: file order).
  """
  examples = task_json["examples"]
  if num_shots < 0 or (num_shots and num_shots >= len(examples)):
    raise ValueError(f"num_shots={num_shots} needs more examples than the task's "
                     f"{len(examples)} (shots are drawn from the other examples).")
  queries = _queries(examples, fmt, choice_seed)
  rendered = []
  for index, example in enumerate(examples):
    shots = []
    if num_shots:
      rng = np.random.default_rng([seed, index])
      others = [i for i in range(len(examples)) if i != index]
      for shot in rng.choice(others, size=num_shots, replace=False):
        shots.append(queries[shot] + _answers(examples[shot])[0])
    prompt = fmt.task_prefix + fmt.few_shot_example_separator.join(shots + [queries[index]])
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
  """seqio postprocess_fn: targets -> all answers; predictions -> BIG-bench's post-processing.

  As BIG-bench's postprocess_output: the output ends just after the first
  stop_string (which is kept; one at the very start cuts nothing), then the
  first match of output_regex (if given) is the answer ("" when none). A regex
  with a capture group yields the group, e.g. r"the answer is (.*?)\\." for
  chain-of-thought outputs. register_bigbench_task supplies BIG-bench's
  first-sentence regex when a task sets neither.
  """
  if is_target:
    return metrics.answers_postprocessor(output, example, is_target=True)
  text = output.decode("utf-8") if isinstance(output, bytes) else str(output)
  if stop_string:
    index = text.find(stop_string)
    if index > 0:
      text = text[:index + len(stop_string)]
  if output_regex:
    _check_regex(output_regex)
    text = next(iter(re.findall(output_regex, text)), "")
  return text


def _check_regex(output_regex: str) -> None:
  if re.compile(output_regex).groups > 1:
    raise ValueError(f"output_regex {output_regex!r} has several capture groups; the answer "
                     "must be one string: keep one group and make the others non-capturing "
                     "(\"(?:...)\").")


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
                           output_regex: Optional[str] = None,
                           choice_seed: Optional[int] = CHOICE_SEED) -> list[str]:
  """Registers <name>_gen and, if every example has target_scores, <name>_mc.

  A parent task.json registers each subtask instead, as <name>_<subtask>_gen
  etc. Prompt-format and output arguments override the file's keys (None
  keeps them; output_regex="" turns off the default first-sentence regex).
  choice_seed: see render_examples. Returns the registered names.
  Re-registering a name replaces it.
  """
  return _register_entries(
      name, task_entries(path), vocabulary, num_shots=num_shots, seed=seed,
      validation_fraction=validation_fraction, task_prefix=task_prefix,
      example_input_prefix=example_input_prefix, example_output_prefix=example_output_prefix,
      choice_prefix=choice_prefix, append_choices_to_input=append_choices_to_input,
      few_shot_example_separator=few_shot_example_separator, stop_string=stop_string,
      output_regex=output_regex, choice_seed=choice_seed)


def _register_entries(name: str, entries: Sequence[tuple[str, Mapping[str, Any]]],
                      vocabulary: seqio.Vocabulary, **kwargs) -> list[str]:
  names = []
  for subtask, task_json in entries:
    names.extend(_register_one(f"{name}_{subtask}" if subtask else name, task_json,
                               vocabulary, **kwargs))
  return names


def _register_one(name: str, task_json: Mapping[str, Any], vocabulary: seqio.Vocabulary, *,
                  num_shots: int = 0, seed: int = 0, validation_fraction: float = 0.2,
                  task_prefix: Optional[str] = None, example_input_prefix: Optional[str] = None,
                  example_output_prefix: Optional[str] = None,
                  choice_prefix: Optional[str] = None,
                  append_choices_to_input: Optional[bool] = None,
                  few_shot_example_separator: Optional[str] = None,
                  stop_string: Optional[str] = None, output_regex: Optional[str] = None,
                  choice_seed: Optional[int] = CHOICE_SEED) -> list[str]:
  fmt = PromptFormat.from_task_json(
      task_json, task_prefix=task_prefix, example_input_prefix=example_input_prefix,
      example_output_prefix=example_output_prefix, choice_prefix=choice_prefix,
      append_choices_to_input=append_choices_to_input,
      few_shot_example_separator=few_shot_example_separator)
  examples = render_examples(task_json, fmt, num_shots, seed, choice_seed)
  stop_string = stop_string if stop_string is not None else task_json.get("stop_string")
  output_regex = output_regex if output_regex is not None else task_json.get("output_regex")
  if stop_string is None and output_regex is None:
    output_regex = FIRST_SENTENCE_REGEX  # What BIG-bench's JsonTask does.
  if output_regex:
    _check_regex(output_regex)
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
                    prediction_postprocessor, stop_string=stop_string,
                    output_regex=output_regex),
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

  Understands BIG-bench's benchmark_tasks/<name>/task.json (a parent task's
  subtasks are expanded in register_bigbench_task), one BIG-bench task folder
  (holding task.json itself) and BIG-Bench Hard's flat <name>.json files.
  """
  directory = directory.rstrip("/")
  if tf.io.gfile.exists(f"{directory}/task.json"):
    return {directory.rsplit("/", 1)[-1]: f"{directory}/task.json"}
  found = {}
  for path in sorted(tf.io.gfile.glob(f"{directory}/*/task.json")):
    found[path.split("/")[-2]] = path
  for path in sorted(tf.io.gfile.glob(f"{directory}/*.json")):
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
  to register_bigbench_task. A task file without examples or subtasks is
  skipped with a warning, so one odd folder does not stop the rest. Returns
  every registered name.
  """
  names = []
  for task, path in task_files(directory).items():
    try:
      entries = task_entries(path)
    except ValueError as e:
      if "no \"examples\" and no subtasks" not in str(e):
        raise
      logging.warning("Skipping BIG-bench task %s: %s", task, e)
      continue
    names.extend(_register_entries(prefix + task, entries, vocabulary, **kwargs))
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
