"""The leave-one-cluster-out sweep (`instruct-jax sweep flan-holdout`), for any registry.

    instruct-jax sweep flan-holdout --model_dir_root=gs://bucket/flan_holdout \
        --gin_file=models/t5_1_1/base.gin [--clusters=nli,sentiment] [--dry-run]

The registry describes itself as a HoldoutRecipe (FLAN's is
tasks_registry.flan.holdout_sweep.RECIPE; this module never imports a
registry). For every held-out cluster c (default: all of the recipe's) it runs

  1. `instruct-jax train` with the recipe's experiment gin (FLAN:
     experiments/flan/holdout_<c>.gin), then your gin
     files and bindings, MODEL_DIR = <root>/holdout_<c>: instruction tuning on
     <prefix>holdout_<c>_train (every other cluster minus the recipe's exclusions);
  2. `instruct-jax eval` with runs/eval.gin, then your gin files and bindings,
     on the newest (= final) checkpoint of that MODEL_DIR: zero-shot on
     <prefix>holdout_<c>_eval (rank classification where a dataset has
     options), results in <root>/holdout_<c>/zero_shot/inference_eval/;

and finally writes the aggregate, one bar per held-out cluster, with
instruct_jax.eval.reports.evaluation: <root>/sweep_report.{md,json,png}.

Your gin files come AFTER the sweep's own gin file in both commands, so they
override it (a model gin binds nothing the experiment gins bind, so order
does not matter for it). `--gin.KEY=VALUE` bindings go to both commands;
bindings of configurables that only one side imports go through
--train_binding / --eval_binding.

Each run is a separate `python -m instruct_jax` process by default: gin state
and accelerator memory start clean, and a crash stays contained. When this
process is itself part of a multi-process job (--coordinator_address, or a
Cloud TPU VM, where jax.distributed is already initialised), runs happen in
this process instead (gin config cleared between them): a second process
could neither join the job nor open the TPU. MODEL_DIR roots must then be on
storage all hosts share (gs://).

A failed cluster is reported with its error and the sweep goes on; the exit
status is non-zero if any failed. SIGTERM / SIGINT (preemption, Ctrl-C) is
different: the current run checkpoints and the sweep stops. A run stopped that
way (exit status errors.EXIT_STOPPED = 75, or errors.RunStopped in process)
stops the sweep too, even when the signal only reached that run. Rerunning the
same command resumes: clusters whose zero-shot results exist are skipped
(--force reruns them: training resumes from the newest checkpoint, a no-op for
a finished run, then evaluates again).
"""
from __future__ import annotations

import collections
import dataclasses
import difflib
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

import tensorflow as tf

from instruct_jax import errors
from instruct_jax import stop_signals
from instruct_jax.checkpoints import layout
from instruct_jax.errors import ActionableError
from instruct_jax.errors import UsageError
from instruct_jax.eval.reports import evaluation as reports
from instruct_jax.eval.reports import toolkit

PROGRAM = "instruct-jax"
EVAL_GIN = "runs/eval.gin"
ZERO_SHOT_SUBDIR = "zero_shot"
REPORT_STEM = "sweep_report"
# Macros the sweep sets per cluster; a user binding of one would point every cluster at
# the same directory or mixture.
_OWNED_MACROS = {
    "MODEL_DIR": "--model_dir_root",
    "CHECKPOINT_PATH": "--model_dir_root",
    "EVAL_OUTPUT_DIR": "--model_dir_root",
    "MIXTURE_OR_TASK_NAME": "--task_prefix (and --task_module to register the tasks)",
    "MIXTURE_OR_TASK_MODULE": "--task_module",
}
# The last line of a Python traceback: "ValueError: ...", "jax.errors.Foo: ...".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
# Characters that keep their meaning inside double quotes in POSIX shells.
_UNSAFE_IN_DOUBLE_QUOTES = set('"$`\\!')

Launcher = Callable[[Sequence[str]], None]


class StepFailedError(Exception):
  """One train or eval run of the sweep failed; the message says why."""


class StepInterruptedError(Exception):
  """A train or eval run was stopped by SIGTERM / SIGINT after checkpointing (exit status 75).

  Not a failure: the machine is probably being preempted, so the sweep stops
  (SweepInterruptedError) rather than start the next run; rerunning resumes.
  """


class SweepFailedError(ActionableError):
  """At least one cluster failed; the others finished (the CLI exits with status 1)."""


class SweepInterruptedError(ActionableError):
  """SIGTERM / SIGINT (preemption, Ctrl-C): the current run checkpointed; the sweep stops."""


# ---------------------------------------------------------------------------
# The plan: one train and one eval command per held-out cluster.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HoldoutRecipe:
  """What a leave-one-cluster-out sweep needs from a task registry.

  The registry (e.g. tasks_registry.flan.holdout_sweep.RECIPE) describes itself;
  the sweep never imports it, so any registry with clusters and per-cluster
  train / eval mixtures can be swept.
  """
  name: str                                    # for reports, e.g. "FLAN"
  clusters: tuple[str, ...]                    # every cluster, in table order
  mixture_name: Callable[[str, str, str], str]  # (kind "train"|"eval", cluster, prefix)
  default_prefix: str                          # registry prefix of the default copy
  cluster_table: str                           # dotted path, for eval's CLUSTER_TABLE
  experiment_gin: str                          # train gin per cluster, "{cluster}" filled in
  clusters_source: str = ""                    # where the table lives, for error messages


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """What the user asked for; everything a plan is derived from."""
  model_dir_root: str
  recipe: HoldoutRecipe
  clusters: Optional[tuple[str, ...]] = None   # None = every cluster of the recipe
  gin_files: tuple[str, ...] = ()
  bindings: tuple[str, ...] = ()          # "KEY = VALUE", to train and eval
  train_bindings: tuple[str, ...] = ()    # to train only
  eval_bindings: tuple[str, ...] = ()     # to eval only
  gin_search_paths: tuple[str, ...] = ()
  task_prefix: Optional[str] = None      # None = the recipe's default prefix
  task_module: Optional[str] = None

  @property
  def prefix(self) -> str:
    return self.recipe.default_prefix if self.task_prefix is None else self.task_prefix


@dataclasses.dataclass(frozen=True)
class ClusterRun:
  """The two commands of one held-out cluster and where they write."""
  cluster: str
  train_mixture: str
  eval_mixture: str
  model_dir: str
  eval_output_dir: str
  train_argv: tuple[str, ...]   # arguments after `instruct-jax`
  eval_argv: tuple[str, ...]

  @property
  def results_dir(self) -> str:
    """Where `instruct-jax eval` writes metrics_step_<step>.json and its report."""
    return layout.eval_dir(self.eval_output_dir)


def gin_string(value: str) -> str:
  """A gin string literal (gin reads Python string syntax)."""
  return repr(str(value))


def binding_flag(binding: str) -> str:
  """"KEY = VALUE" -> "--gin.KEY=VALUE" (the form the CLI splits back)."""
  key, value = _split_binding(binding)
  return f"--gin.{key}={value}"


def _split_binding(binding: str) -> tuple[str, str]:
  if "=" not in binding:
    raise UsageError(f"Gin binding {binding!r} has no '='; write KEY=VALUE, e.g. "
                     "TRAIN_STEPS=1000 or MODEL_DIR=\"'/tmp/run'\".")
  key, value = binding.split("=", 1)
  key, value = key.strip(), value.strip()
  if not key:
    raise UsageError(f"Gin binding {binding!r} has no name before '='.")
  return key, value


def shell_quote(arg: str) -> str:
  """One argument for a POSIX shell, readable: --gin.MODEL_DIR="'/tmp/run'".

  `--flag=value` arguments whose value needs quoting are written with the
  value in double quotes (the house style for gin strings); anything that
  double quotes would not protect falls back to shlex.quote.
  """
  if shlex.quote(arg) == arg:
    return arg
  flag, equals, value = arg.partition("=")
  if (equals and flag.startswith("--") and shlex.quote(flag) == flag
      and not _UNSAFE_IN_DOUBLE_QUOTES & set(value)):
    return f'{flag}="{value}"'
  return shlex.quote(arg)


def command_line(argv: Sequence[str]) -> str:
  """`instruct-jax ...` as one shell-quoted line."""
  return " ".join(shell_quote(a) for a in (PROGRAM, *argv))


def normalized_root(root: str) -> str:
  root = root.rstrip("/") or root
  if "://" in root:
    return root
  return os.path.abspath(os.path.expanduser(root))


def _check_bindings(bindings: Sequence[str]) -> None:
  for binding in bindings:
    key, _ = _split_binding(binding)
    macro = key.split("/")[-1]
    if macro in _OWNED_MACROS:
      raise UsageError(
          f"The sweep sets {macro} itself, once per held-out cluster; found the binding "
          f"{binding!r}. Drop it and use {_OWNED_MACROS[macro]} instead.")


def check_clusters(names: Sequence[str], recipe: HoldoutRecipe) -> tuple[str, ...]:
  """The requested clusters in the given order, duplicates removed; unknown -> UsageError."""
  known = list(recipe.clusters)
  result = []
  for name in names:
    if name not in known:
      close = difflib.get_close_matches(name, known, n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      source = f" from {recipe.clusters_source}" if recipe.clusters_source else ""
      raise UsageError(f"Unknown {recipe.name} cluster {name!r} in --clusters.{hint} Expected "
                       f"names{source}: {', '.join(known)}.")
    if name not in result:
      result.append(name)
  if not result:
    raise UsageError(f"--clusters names no cluster; give e.g. --clusters={known[0]},{known[1]} "
                     "or leave it out to sweep all of them.")
  return tuple(result)


def plan(config: SweepConfig) -> list[ClusterRun]:
  """The commands for every cluster of `config` (nothing is run or checked on disk)."""
  recipe = config.recipe
  clusters = check_clusters(recipe.clusters if config.clusters is None else config.clusters,
                            recipe)
  for bindings in (config.bindings, config.train_bindings, config.eval_bindings):
    _check_bindings(bindings)
  root = normalized_root(config.model_dir_root)
  prefix = config.prefix
  common = [f"--gin_search_paths={p}" for p in config.gin_search_paths]
  user_files = [f"--gin_file={f}" for f in config.gin_files]
  module = ([f"--gin.MIXTURE_OR_TASK_MODULE={gin_string(config.task_module)}"]
            if config.task_module else [])
  shared = [binding_flag(b) for b in config.bindings]
  runs = []
  for cluster in clusters:
    train_mixture = recipe.mixture_name("train", cluster, prefix)
    eval_mixture = recipe.mixture_name("eval", cluster, prefix)
    model_dir = os.path.join(root, f"holdout_{cluster}")
    eval_output_dir = os.path.join(model_dir, ZERO_SHOT_SUBDIR)
    train_argv = [
        "train", f"--gin_file={recipe.experiment_gin.format(cluster=cluster)}", *user_files, *common,
        f"--gin.MODEL_DIR={gin_string(model_dir)}"]
    if prefix != recipe.default_prefix:
      train_argv.append(f"--gin.MIXTURE_OR_TASK_NAME={gin_string(train_mixture)}")
    train_argv += [*module, *shared, *(binding_flag(b) for b in config.train_bindings)]
    eval_argv = [
        "eval", f"--gin_file={EVAL_GIN}", *user_files, *common,
        f"--gin.CHECKPOINT_PATH={gin_string(model_dir)}",
        f"--gin.EVAL_OUTPUT_DIR={gin_string(eval_output_dir)}",
        f"--gin.MIXTURE_OR_TASK_NAME={gin_string(eval_mixture)}",
        f"--gin.CLUSTER_TABLE={gin_string(recipe.cluster_table)}",
        f"--gin.CLUSTER_PREFIX={gin_string(prefix)}",
        *module, *shared, *(binding_flag(b) for b in config.eval_bindings)]
    runs.append(ClusterRun(cluster, train_mixture, eval_mixture, model_dir, eval_output_dir,
                           tuple(train_argv), tuple(eval_argv)))
  return runs


def check_mixtures_registered(runs: Sequence[ClusterRun], registered: Iterable[str]) -> None:
  """Fails before any run when a cluster's train or eval mixture is not in `registered`."""
  registered = set(registered)
  missing = [m for r in runs for m in (r.train_mixture, r.eval_mixture) if m not in registered]
  if missing:
    raise UsageError(
        f"Mixture(s) {', '.join(missing)} are not registered. With --task_prefix, register the "
        "copy first, e.g. in a module passed as --task_module that calls "
        "tasks_registry.flan.register(vocabulary=..., prefix=...).")


# ---------------------------------------------------------------------------
# Running: launchers and results on disk.
# ---------------------------------------------------------------------------


def run_subprocess(argv: Sequence[str]) -> None:
  """Runs `python -m instruct_jax ARGV`; its stderr is relayed and its tail kept for errors."""
  sys.stdout.flush()
  sys.stderr.flush()
  process = subprocess.Popen([sys.executable, "-m", "instruct_jax", *argv],
                             stderr=subprocess.PIPE, text=True, errors="replace")
  tail = collections.deque(maxlen=50)
  for line in process.stderr:
    sys.stderr.write(line)
    tail.append(line.rstrip("\n"))
  error = step_error(process.wait(), list(tail))
  if error is not None:
    raise error


def step_error(code: int, stderr_tail: Sequence[str]) -> Optional[Exception]:
  """The launcher's error for a run's exit status: None (0), interrupted (75) or failed."""
  if code == 0:
    return None
  if code == errors.EXIT_STOPPED:
    return StepInterruptedError(f"exit status {code}: stopped by a signal after saving a "
                                "checkpoint")
  return StepFailedError(f"exit status {code}: {_error_summary(stderr_tail)}")


def _error_summary(lines: Sequence[str]) -> str:
  """The CLI's own one-line error if it printed one, else the last lines of stderr."""
  for line in reversed(lines):
    if line.startswith(f"{PROGRAM}: error:"):
      return line[len(f"{PROGRAM}: error:"):].strip()
  for line in reversed(lines):
    if _EXCEPTION_LINE.match(line):
      return line.strip()
  meaningful = [l.strip() for l in lines if l.strip()]
  return " | ".join(meaningful[-3:]) or "no error output"


def find_results(run: ClusterRun) -> Optional[tuple[int, str]]:
  """(step, path) of the newest metrics_step_<step>.json the cluster's eval wrote, if any."""
  return layout.latest_metrics_file(run.results_dir)


def check_training_finished(run: ClusterRun) -> None:
  """Raises SweepInterruptedError when the cluster's training did not finish.

  A trainer stopped by SIGTERM (preemption) saves and exits cleanly; evaluating
  that checkpoint would record a half-trained result that later reruns skip,
  and starting the next cluster on a machine being preempted is pointless.
  The outcome comes from the run status file the trainer writes (MODEL_DIR/run.json).
  """
  status = layout.read_run_status(run.model_dir)
  if status is not None and not status.finished:
    raise SweepInterruptedError(
        f"Training of held-out cluster {run.cluster} stopped at step {status.last_step} of "
        f"{status.total_steps} ({status.status}; its checkpoint is in {run.model_dir}). "
        "Rerun the same command to resume it and the rest of the sweep.")


def load_results(path: str) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} from an eval metrics_step_<step>.json."""
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)["tasks"]


@dataclasses.dataclass
class ClusterOutcome:
  """What happened to one cluster in this invocation."""
  cluster: str
  status: str                      # "evaluated" | "existing" | "failed"
  stage: Optional[str] = None      # "train" | "eval" when failed
  error: Optional[str] = None
  step: Optional[int] = None
  results_path: Optional[str] = None
  task_metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def run_cluster(run: ClusterRun, launcher: Launcher, force: bool = False,
                say: Callable[[str], None] = print) -> ClusterOutcome:
  """Train then evaluate one held-out cluster, or reuse results already on disk."""
  existing = find_results(run)
  if existing and not force:
    step, path = existing
    say(f"[sweep] holdout {run.cluster}: zero-shot results exist ({path}, step {step}); "
        "skipping. Pass --force to run it again.")
    return ClusterOutcome(run.cluster, "existing", step=step, results_path=path,
                          task_metrics=load_results(path))
  for stage, argv in (("train", run.train_argv), ("eval", run.eval_argv)):
    say(f"[sweep] holdout {run.cluster}: {stage}: {command_line(argv)}")
    interrupted = None
    try:
      with stop_signals.StopOnSignal(on_signal=lambda name: say(
          f"[sweep] {name} received: waiting for the current run to checkpoint and exit, "
          "then stopping the sweep.")) as stop:
        launcher(argv)
    except StepInterruptedError as e:
      interrupted = e
    except StepFailedError as e:
      if not stop.signal_name:
        say(f"[sweep] holdout {run.cluster}: {stage} FAILED: {e}")
        return ClusterOutcome(run.cluster, "failed", stage=stage, error=str(e))
    if stage == "train":
      check_training_finished(run)  # run.json: also catches a stop that exited 0.
    if stop.signal_name:
      raise SweepInterruptedError(
          f"Stopped by {stop.signal_name} during the {stage} run of held-out cluster "
          f"{run.cluster}. Rerun the same command to resume (finished clusters are skipped).")
    if interrupted is not None:
      raise SweepInterruptedError(
          f"The {stage} run of held-out cluster {run.cluster} was stopped ({interrupted}), "
          "probably by preemption, so the sweep stops. Rerun the same command to resume "
          "(finished clusters are skipped).") from interrupted
  found = find_results(run)
  if not found:
    error = f"eval finished but wrote no metrics_step_<step>.json in {run.results_dir}"
    say(f"[sweep] holdout {run.cluster}: eval FAILED: {error}")
    return ClusterOutcome(run.cluster, "failed", stage="eval", error=error)
  step, path = found
  say(f"[sweep] holdout {run.cluster}: done (step {step}, {path}).")
  return ClusterOutcome(run.cluster, "evaluated", step=step, results_path=path,
                        task_metrics=load_results(path))


# ---------------------------------------------------------------------------
# The aggregate report.
# ---------------------------------------------------------------------------


def aggregate_report(outcomes: Sequence[ClusterOutcome]) -> dict[str, Any]:
  """reports.build_report over every finished cluster, a cluster being the held-out one."""
  owner = {task: o.cluster for o in outcomes for task in o.task_metrics}
  merged = {task: metrics for o in outcomes for task, metrics in o.task_metrics.items()}
  return reports.build_report(merged, cluster_of=owner.__getitem__)


def _runs_table(outcomes: Sequence[ClusterOutcome], runs: Sequence[ClusterRun],
                report: dict[str, Any]) -> str:
  scores = {c["cluster"]: c["mean_score"] for c in report["clusters"]}
  model_dirs = {r.cluster: r.model_dir for r in runs}
  rows = []
  for o in outcomes:
    status = {"existing": "done earlier (skipped)",
              "failed": f"failed in {o.stage}"}.get(o.status, o.status)
    rows.append([o.cluster, status, toolkit.MISSING if o.step is None else o.step,
                 toolkit.format_score(scores.get(o.cluster)), model_dirs[o.cluster]])
  lines = ["## Runs", ""] + toolkit.markdown_table(
      ["Held-out cluster", "Status", "Step", "Zero-shot score", "MODEL_DIR"],
      ["---", "---", "---:", "---:", "---"], rows)
  failures = [o for o in outcomes if o.status == "failed"]
  if failures:
    lines += ["", "### Failures", ""]
    lines += [f"- {o.cluster} ({o.stage}): {o.error}" for o in failures]
  return "\n".join(lines) + "\n"


def write_aggregate(root: str, config: SweepConfig, runs: Sequence[ClusterRun],
                    outcomes: Sequence[ClusterOutcome]) -> tuple[dict[str, str], str]:
  """<root>/sweep_report.{md,json,png}; returns the paths and the markdown."""
  report = aggregate_report(outcomes)
  title = f"{config.recipe.name} zero-shot on held-out clusters"
  markdown = reports.render_markdown(report, title) + "\n" + _runs_table(outcomes, runs, report)
  by_cluster = {r.cluster: r for r in runs}
  record = {
      **report,
      "sweep": f"{config.recipe.name.lower()}-holdout",
      "model_dir_root": root,
      "task_prefix": config.prefix,
      "runs": [{
          "cluster": o.cluster, "status": o.status, "stage": o.stage, "error": o.error,
          "step": o.step, "results": o.results_path,
          "model_dir": by_cluster[o.cluster].model_dir,
          "train_command": command_line(by_cluster[o.cluster].train_argv),
          "eval_command": command_line(by_cluster[o.cluster].eval_argv),
      } for o in outcomes],
  }
  paths = toolkit.write_files(root, REPORT_STEM, markdown, record,
                              reports.plot_clusters(report, title))
  return paths, markdown


def run_sweep(config: SweepConfig, launcher: Launcher, force: bool = False,
              write_files: bool = True,
              say: Callable[[str], None] = print) -> list[ClusterOutcome]:
  """Every cluster in turn, then the aggregate; raises SweepFailedError if any failed."""
  runs = plan(config)
  root = normalized_root(config.model_dir_root)
  outcomes = [run_cluster(r, launcher, force=force, say=say) for r in runs]
  if write_files:
    paths, markdown = write_aggregate(root, config, runs, outcomes)
    say(markdown)
    say("[sweep] Wrote " + ", ".join(paths.values()))
  failed = [o for o in outcomes if o.status == "failed"]
  if failed:
    details = "; ".join(f"{o.cluster} ({o.stage}: {o.error})" for o in failed)
    raise SweepFailedError(
        f"{len(failed)} of {len(outcomes)} held-out cluster(s) failed: {details}. The others "
        "finished; rerun the same command to retry (clusters with results are skipped).")
  return outcomes
