"""The one owner of MODEL_DIR's on-disk names, and of the run status file.

    MODEL_DIR/
      checkpoint_<step>/{state,train_ds}/   a finished step (orbax commits it atomically;
                                            unfinished saves carry a tmp suffix)
      config.gin, config-<n>.gin            the resolved gin config of each launch (record_config)
      lease.json                            the single-writer lease of the running trainer
      corrupt_checkpoints/                  checkpoints that failed to restore, moved aside:
        checkpoint_<step>[-<n>]             never deleted, never listed as checkpoints
      metrics.jsonl                         training scalars, one JSON object per line
      run.json                              the run's outcome (RunStatus), as data
      inference_eval/                       evaluation results:
        metrics_step_<step>.json            every task's metrics at one step
        report_step_<step>.{md,json,png}    the rendered report

Every module that builds or parses one of these names asks this module, so a
rename happens in one place. Paths go through tf.io.gfile (local disks and gs://).
"""
import dataclasses
import json
import os
import re
import uuid
from typing import Any, Optional

from gin import config_parser
import tensorflow as tf

from instruct_jax.errors import UsageError

STEP_PREFIX = "checkpoint"
STATE_ITEM = "state"
DATA_ITERATOR_ITEM = "train_ds"
# What orbax writes at the root of a saved PyTree item; marks a directory as one.
PYTREE_METADATA_FILE = "_METADATA"

CONFIG_FILE = "config.gin"
LEASE_FILE = "lease.json"
# Where a checkpoint that failed to restore is moved (never deleted): not a step name, so
# neither orbax nor checkpoint_dirs lists it.
CORRUPT_CHECKPOINTS_DIR = "corrupt_checkpoints"
# Written into a set-aside checkpoint directory: why it could not be restored.
RESTORE_ERROR_FILE = "restore_error.txt"
METRICS_FILE = "metrics.jsonl"
RUN_STATUS_FILE = "run.json"
EVAL_SUBDIR = "inference_eval"

_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
_STEP_IN_PATH = re.compile(rf"(?:^|/){STEP_PREFIX}_(\d+)(?:/|$)")
_METRICS_STEP_FILE = re.compile(r"^metrics_step_(\d+)\.json$")
_CONFIG_RECORD = re.compile(r"^config(?:-(\d+))?\.gin$")

# RunStatus.status values.
RUNNING = "running"
FINISHED = "finished"
STOPPED = "stopped"
FAILED = "failed"
STATUSES = (RUNNING, FINISHED, STOPPED, FAILED)


def write_atomically(path: str, text: str, overwrite: bool = True) -> str:
  """Writes `text` to `path` through a temporary file renamed into place; returns `path`.

  A reader (or a process killed mid-write) sees the old file or the new one, never
  half of one. overwrite=False raises tf.errors.AlreadyExistsError when `path`
  exists. The temporary name starts with "." and is unique, so it never matches
  the names this module lists and concurrent writers do not share it.
  """
  partial = os.path.join(os.path.dirname(path),
                         f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
  with tf.io.gfile.GFile(partial, "w") as f:
    f.write(text)
  try:
    tf.io.gfile.rename(partial, path, overwrite=overwrite)
  except BaseException:
    tf.io.gfile.remove(partial)
    raise
  return path


# ---------------------------------------------------------------------------
# Checkpoint directories.
# ---------------------------------------------------------------------------


def checkpoint_dir_name(step: int) -> str:
  return f"{STEP_PREFIX}_{int(step)}"


def checkpoint_dir(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, checkpoint_dir_name(step))


def step_of_dir_name(name: str) -> Optional[int]:
  """12 for "checkpoint_12" (a trailing slash is fine); None for anything else."""
  match = _STEP_DIR.match(name.rstrip("/"))
  return int(match.group(1)) if match else None


def step_of_checkpoint(path: str) -> Optional[int]:
  """The step of the innermost checkpoint_<step> component of `path`, or None."""
  found = _STEP_IN_PATH.findall(str(path).replace(os.sep, "/"))
  return int(found[-1]) if found else None


def model_dir_of_checkpoint(path: str) -> str:
  """MODEL_DIR for a checkpoint_<step> directory; any other path is taken as MODEL_DIR."""
  path = str(path).rstrip("/")
  if step_of_dir_name(os.path.basename(path)) is not None:
    return os.path.dirname(path)
  return path


def checkpoint_dirs(model_dir: str) -> list[tuple[int, str]]:
  """(step, path) of every checkpoint_<step> directory in `model_dir`, oldest first.

  Names only: whether a directory holds a readable checkpoint is for
  checkpoints.params_io to say. Unfinished orbax saves (tmp suffix) never match.
  """
  if not tf.io.gfile.isdir(model_dir):
    return []
  found = []
  for name in tf.io.gfile.listdir(model_dir):
    step = step_of_dir_name(name)
    if step is not None:
      found.append((step, os.path.join(model_dir, name.rstrip("/"))))
  return sorted(found)


def set_aside_checkpoint(step_dir: str) -> str:
  """Moves an unreadable checkpoint_<step> to MODEL_DIR/corrupt_checkpoints; returns where.

  Moved, never deleted: the files may still be worth inspecting or repairing. A
  second bad copy of the same step gets a "-<n>" suffix, so nothing is overwritten.
  """
  step_dir = str(step_dir).rstrip("/")
  aside = os.path.join(os.path.dirname(step_dir), CORRUPT_CHECKPOINTS_DIR)
  tf.io.gfile.makedirs(aside)
  name = os.path.basename(step_dir)
  target, n = os.path.join(aside, name), 1
  while tf.io.gfile.exists(target):
    n += 1
    target = os.path.join(aside, f"{name}-{n}")
  tf.io.gfile.rename(step_dir, target, overwrite=False)
  return target


# ---------------------------------------------------------------------------
# Launch records.
# ---------------------------------------------------------------------------


def _config_records(model_dir: str) -> list[tuple[int, str]]:
  """(n, path) of config.gin (n=1) and every config-<n>.gin in `model_dir`, oldest first."""
  if not tf.io.gfile.isdir(model_dir):
    return []
  found = []
  for name in tf.io.gfile.listdir(model_dir):
    match = _CONFIG_RECORD.match(name)
    if match:
      found.append((int(match.group(1) or 1), os.path.join(model_dir, name)))
  return sorted(found)


def record_config(model_dir: str, text: str) -> str:
  """Records one launch's resolved gin config; returns the path written.

  The first launch writes config.gin, later ones config-2.gin, config-3.gin, ...,
  so a resumed run with changed flags never erases what the earlier steps were
  trained with. Written to a temporary name and renamed (never overwriting), so a
  reader never sees half a file.
  """
  tf.io.gfile.makedirs(model_dir)
  n = max((k for k, _ in _config_records(model_dir)), default=0) + 1
  name = CONFIG_FILE if n == 1 else f"config-{n}.gin"
  return write_atomically(os.path.join(model_dir, name), text, overwrite=False)


def latest_config(model_dir: str) -> Optional[str]:
  """Path of the newest launch record (config.gin or config-<n>.gin), or None."""
  records = _config_records(model_dir)
  return records[-1][1] if records else None


class _RecordReader(config_parser.ParserDelegate):
  """Parses a config record without importing what it names: references stay names."""

  def configurable_reference(self, scoped_name: str, evaluate: bool) -> Any:
    return ("@", scoped_name)

  def macro(self, name: str) -> Any:
    return ("%", name)


def recorded_mixture(model_dir: str) -> Optional[str]:
  """The train mixture / task named by MODEL_DIR's newest launch record, if it names one.

  Read from the `train/...DatasetConfig.mixture_or_task_name` binding (following
  macros such as %MIXTURE_OR_TASK_NAME), else the MIXTURE_OR_TASK_NAME macro.
  None when there is no record or it cannot be read: then nothing can be compared.
  """
  path = latest_config(model_dir)
  if path is None:
    return None
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  values = {}
  try:
    for statement in config_parser.ConfigParser(text, _RecordReader()):
      if isinstance(statement, config_parser.BindingStatement):
        selector = statement.selector.rsplit(".", 1)[-1]
        values[(statement.scope, selector, statement.arg_name)] = statement.value
  except (SyntaxError, ValueError):
    return None
  value = values.get(("train", "DatasetConfig", "mixture_or_task_name"),
                     ("%", "MIXTURE_OR_TASK_NAME"))
  for _ in range(len(values) + 1):  # Macros may name macros; a cycle ends the walk.
    if not (isinstance(value, tuple) and value[0] == "%"):
      break
    value = values.get(("", value[1], ""))
  return value if isinstance(value, str) else None


def check_same_mixture(model_dir: str, mixture_or_task_name: str) -> None:
  """Refuses to resume checkpoints of one mixture with another (UsageError).

  A resumed run restores its position in the data stream it was trained on; on
  another mixture that position is meaningless (or fails to restore), and
  continuing would silently mix two runs in one MODEL_DIR. Nothing is changed
  in MODEL_DIR. Without checkpoints or a launch record naming a mixture, there
  is nothing to protect or compare.
  """
  steps = checkpoint_dirs(model_dir)
  if not steps:
    return
  recorded = recorded_mixture(model_dir)
  if recorded is None or recorded == mixture_or_task_name:
    return
  newest = steps[-1][1]
  raise UsageError(
      f"MODEL_DIR {model_dir} holds checkpoints of a run trained on {recorded!r} (see "
      f"{latest_config(model_dir)}); this run asks for {mixture_or_task_name!r}. Resuming "
      "would continue that run on other data, so nothing was started or changed. Train on "
      f"{mixture_or_task_name!r} in a new MODEL_DIR (--gin.MODEL_DIR=\"'/new/dir'\"), adding "
      f"--gin.INITIAL_CHECKPOINT_PATH=\"'{newest}'\" to start from that run's parameters; "
      f"or, to resume that run, ask for {recorded!r} again.")


# ---------------------------------------------------------------------------
# Evaluation results.
# ---------------------------------------------------------------------------


def eval_dir(output_root: str) -> str:
  """Where evaluation results of a run (or of an explicit output root) go."""
  return os.path.join(output_root, EVAL_SUBDIR)


def metrics_file_name(step: int) -> str:
  return f"metrics_step_{int(step)}.json"


def step_of_metrics_file(name: str) -> Optional[int]:
  match = _METRICS_STEP_FILE.match(os.path.basename(name))
  return int(match.group(1)) if match else None


def latest_metrics_file(results_dir: str) -> Optional[tuple[int, str]]:
  """(step, path) of the newest metrics_step_<step>.json in `results_dir`, if any."""
  if not tf.io.gfile.isdir(results_dir):
    return None
  found = [(step, os.path.join(results_dir, name))
           for name in tf.io.gfile.listdir(results_dir)
           if (step := step_of_metrics_file(name)) is not None]
  return max(found) if found else None


def report_stem(name: str, step: Optional[int] = None) -> str:
  """"report" -> "report_step_<step>" (or "report" when the step is unknown)."""
  return name if step is None else f"{name}_step_{int(step)}"


# ---------------------------------------------------------------------------
# The run status file.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunStatus:
  """What a training run reports about itself in MODEL_DIR/run.json.

  status: "running" while the trainer works, then "finished" (reached
  total_steps), "stopped" (SIGTERM / Ctrl-C; resumable) or "failed" (an error;
  `error` says which). last_step is the newest step the run reached and saved.
  """
  total_steps: int
  last_step: int
  status: str
  time: float
  error: Optional[str] = None

  def __post_init__(self):
    if self.status not in STATUSES:
      raise ValueError(f"Run status {self.status!r} is not one of {STATUSES}.")

  @property
  def finished(self) -> bool:
    return self.status == FINISHED and self.last_step >= self.total_steps


def write_run_status(model_dir: str, status: RunStatus) -> str:
  """Writes MODEL_DIR/run.json atomically (a reader never sees half a file)."""
  tf.io.gfile.makedirs(model_dir)
  text = json.dumps(dataclasses.asdict(status), indent=2, sort_keys=True) + "\n"
  return write_atomically(os.path.join(model_dir, RUN_STATUS_FILE), text)


def read_run_status(model_dir: str) -> Optional[RunStatus]:
  """The run's RunStatus, or None when MODEL_DIR has no run.json (e.g. never trained)."""
  path = os.path.join(model_dir, RUN_STATUS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    record = json.load(f)
  known = {field.name for field in dataclasses.fields(RunStatus)}
  return RunStatus(**{k: v for k, v in record.items() if k in known})

