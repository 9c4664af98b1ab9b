"""`instruct-jax sweep`: multi-run protocols (instruct_jax.experiments) from the command line.

    instruct-jax sweep flan-holdout --model_dir_root=gs://bucket/flan_holdout \
        --gin_file=models/t5_1_1/base.gin [--clusters=nli,sentiment] [--dry-run]

The sweep's library (plan, runs, aggregate) is instruct_jax.experiments.holdout_sweep;
this module picks the registry's recipe by name, chooses the launcher and
turns flags into a SweepConfig.
"""
import importlib
import os
import pkgutil
import traceback
from typing import Sequence

import gin
import jax
import seqio

from instruct_jax import cli
from instruct_jax.data import pipeline
from instruct_jax.errors import ActionableError
from instruct_jax.errors import RunStopped
from instruct_jax.errors import UsageError
from instruct_jax.experiments import holdout_sweep

# Sweep name -> (module registering its tasks, dotted path of its HoldoutRecipe).
SWEEP_RECIPES = {"flan-holdout": ("tasks_registry", "tasks_registry.flan.holdout_sweep.RECIPE")}


def _import_task_module(task_module: str) -> None:
  try:
    pipeline.import_registry_module(task_module)
  except ImportError as e:
    raise UsageError(f"Cannot import --task_module {task_module!r} ({e}); give an importable "
                     "module that registers the prefixed copy of the tasks.") from e


def run_in_process(argv: Sequence[str]) -> None:
  """Runs `instruct-jax ARGV` in this process, gin cleared around it.

  For processes that are already part of a multi-process job; the job stays
  joined (multi-host flags are not repeated). A run stopped by a signal
  (RunStopped, exit status 75 as a subprocess) stops the sweep, as in run_subprocess.
  """
  gin.clear_config()
  try:
    cli.run_command(argv, join_job=False)
  except RunStopped as e:
    raise holdout_sweep.StepInterruptedError(str(e)) from e
  except ActionableError as e:
    raise holdout_sweep.StepFailedError(str(e)) from e
  except SystemExit as e:
    if e.code not in (0, None):
      raise holdout_sweep.StepFailedError(f"exited with status {e.code}") from e
  except Exception as e:  # pylint: disable=broad-except  # Reported; the sweep goes on.
    traceback.print_exc()
    raise holdout_sweep.StepFailedError(f"{type(e).__name__}: {e}") from e
  finally:
    gin.clear_config()


def _choose_launcher(name: str) -> holdout_sweep.Launcher:
  in_job = jax.distributed.is_initialized()
  if name == "subprocess" and in_job:
    raise UsageError("--launcher=subprocess cannot be used inside a multi-process job (this "
                     "process already joined it); use --launcher=in_process or auto.")
  if name == "in_process" or (name == "auto" and in_job):
    return run_in_process
  return holdout_sweep.run_subprocess


def _is_first_process() -> bool:
  """Whether this process writes the aggregate (every host of a job runs the sweep)."""
  if not jax.distributed.is_initialized():
    return True  # Without a job, asking jax would start a backend that the runs need.
  return jax.process_index() == 0


def config_from_args(args) -> holdout_sweep.SweepConfig:
  registry_module, recipe_path = SWEEP_RECIPES[args.sweep]
  importlib.import_module(registry_module)
  clusters = [c.strip() for entry in args.clusters for c in entry.split(",") if c.strip()]
  return holdout_sweep.SweepConfig(
      model_dir_root=args.model_dir_root,
      recipe=pkgutil.resolve_name(recipe_path),
      clusters=tuple(clusters) if args.clusters else None,
      gin_files=tuple(args.gin_file),
      bindings=tuple(args.gin_bindings),
      train_bindings=tuple(args.train_binding),
      eval_bindings=tuple(args.eval_binding),
      gin_search_paths=tuple(args.gin_search_paths),
      task_prefix=args.task_prefix,
      task_module=args.task_module)


def run(args) -> None:
  """Dry run: print the commands. Otherwise run every cluster and write the aggregate."""
  config = config_from_args(args)
  if not config.gin_files:
    raise UsageError("The sweep needs a model gin for its runs, e.g. "
                     "--gin_file=models/t5_1_1/base.gin (the size of the experiments' "
                     "INITIAL_CHECKPOINT_PATH), or --gin_file=runs/sweep_smoke.gin on CPU.")
  runs = holdout_sweep.plan(config)
  if config.task_module:
    _import_task_module(config.task_module)
  holdout_sweep.check_mixtures_registered(runs, seqio.MixtureRegistry.names())
  if args.dry_run:
    print(f"# {args.sweep} sweep: {len(runs)} held-out cluster(s); dry run, nothing is run.")
    for r in runs:
      print(f"\n# holdout {r.cluster}: train on {r.train_mixture}, zero-shot eval on "
            f"{r.eval_mixture}")
      print(holdout_sweep.command_line(r.train_argv))
      print(holdout_sweep.command_line(r.eval_argv))
    report = os.path.join(holdout_sweep.normalized_root(config.model_dir_root),
                          holdout_sweep.REPORT_STEM)
    print(f"\n# then: {report}.{{md,json,png}}")
    return
  launcher = _choose_launcher(args.launcher)
  holdout_sweep.run_sweep(config, launcher, force=args.force, write_files=_is_first_process())
