"""Command line: flags -> (multi-host init) -> gin -> train | bench | ...

    instruct-jax train --gin_file=runs/smoke.gin --gin.TRAIN_STEPS=100
    python -m instruct_jax train --gin_file=runs/finetune.gin \
        --gin_file=models/flan_t5/base.gin --gin.MODEL_DIR="'gs://bucket/run'"

Gin files are found relative to the current directory, --gin_search_paths, the
shipped gin_configs/ folder and its parent (so both `runs/smoke.gin` and
`gin_configs/runs/smoke.gin` work).
"""
import argparse
import contextlib
import glob
import importlib
import inspect
import logging
import os
import re
import sys
import traceback
from typing import Callable, Optional, Sequence

import gin

import gin_configs
from instruct_jax.errors import ActionableError
from instruct_jax.errors import UsageError

_REQUIRED_MACRO = re.compile(r"^(\w+)/macro\.value set to `%gin\.REQUIRED` but not subsequently")
_REQUIRED_PARAM = re.compile(r"^(\S+) set to `%gin\.REQUIRED` but not subsequently")


# Commands other than `train` live in their own modules, each defining
# add_arguments(parser) and run(args); gin files and bindings are parsed before run.
COMMAND_MODULES = {
    "bench": "instruct_jax.bench",
    "convert": "instruct_jax.interop.convert",
    "eval": "instruct_jax.evaluation",
    "infer": "instruct_jax.inference",
    "select": "instruct_jax.selection",
    "symbol-eval": "instruct_jax.symbol_eval",
    "sweep": "instruct_jax.sweep",
}
COMMAND_HELP = {
    "train": "Train or fine-tune on a seqio task/mixture (gin: runs/*.gin + models/*.gin).",
    "bench": "Time the train step of a model gin: tokens/s, TFLOP/s, MFU, memory.",
    "convert": "Convert T5 checkpoints: --from hf|t5x into ours (+ model gin), or --to hf.",
    "eval": "Evaluate a checkpoint on a seqio task/mixture (gin: runs/eval.gin + a model gin).",
    "infer": "Predict or score JSON-lines/TSV inputs with a checkpoint (gin: runs/infer.gin).",
    "select": "Evaluate every checkpoint of a run on held-out tasks and pick the best one.",
    "symbol-eval": "Symbol-tuning eval suites on a checkpoint + side-by-side report "
                   "(gin: experiments/symbol_tuning/eval.gin).",
    "sweep": "FLAN leave-one-cluster-out sweep: train + zero-shot eval per held-out cluster.",
}


def build_parser(command: Optional[str]) -> argparse.ArgumentParser:
  """The parser; only the chosen command's module is imported (they pull in jax)."""
  parser = argparse.ArgumentParser(
      prog="instruct-jax",
      description="t5x-compatible instruction tuning in JAX. Gin bindings are given as "
                  "--gin.KEY=VALUE (strings need inner quotes: --gin.MODEL_DIR=\"'/tmp/run'\").")
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name, help_text in COMMAND_HELP.items():
    sub = subparsers.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("--gin_file", action="append", default=[],
                     help="Gin file to parse; repeatable, later files override earlier ones.")
    sub.add_argument("--gin_search_paths", action="append", default=[],
                     help="Extra directories (comma-separated) to look up gin files in.")
    sub.add_argument("--coordinator_address", default=None,
                     help="HOST:PORT of process 0, for multi-host runs.")
    sub.add_argument("--num_processes", type=int, default=None)
    sub.add_argument("--process_id", type=int, default=None)
    sub.add_argument("--traceback", action="store_true",
                     help="Show the full Python traceback for configuration errors.")
    if name == command and name in COMMAND_MODULES:
      importlib.import_module(COMMAND_MODULES[name]).add_arguments(sub)
  return parser


def split_gin_bindings(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.KEY=VALUE` (or `--gin.KEY VALUE`) bindings from other flags."""
  rest, bindings = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise UsageError(f"Gin binding {arg!r} has no value; write --gin.{body}=VALUE.")
        body = f"{body}={argv[i + 1]}"
        i += 1
      key, value = body.split("=", 1)
      bindings.append(f"{key} = {value}")
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


def _on_cloud_tpu_vm() -> bool:
  """TPU VMs expose their chips as /dev/accel* or VFIO devices; jax finds the slice itself."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
              or os.environ.get("TPU_WORKER_HOSTNAMES"))


def initialize_multihost(coordinator_address: Optional[str], num_processes: Optional[int],
                         process_id: Optional[int]) -> None:
  """Joins a multi-process job: explicit flags, or auto-detected on Cloud TPU VMs."""
  import jax  # pylint: disable=g-import-not-at-top
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise UsageError("--coordinator_address needs --num_processes and --process_id too.")
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif num_processes is not None or process_id is not None:
    raise UsageError("--num_processes/--process_id need --coordinator_address=HOST:PORT too.")
  elif _on_cloud_tpu_vm():
    jax.distributed.initialize()


def keep_tensorflow_off_accelerators() -> None:
  """seqio's tf.data input runs on the host; TF must not grab GPU memory JAX needs."""
  if not glob.glob("/dev/nvidia[0-9]*"):
    return  # Asking TF about GPUs on a machine without any only logs CUDA errors.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files and bindings, turning gin's errors into ones that say what to fix."""
  paths = [p for entry in search_paths for p in entry.split(",") if p]
  for path in [os.getcwd(), *paths, gin_configs.ROOT, os.path.dirname(gin_configs.ROOT)]:
    gin.add_config_file_search_path(path)
  try:
    with _quiet_gin_path_lookups():
      gin.parse_config_files_and_bindings(list(gin_files), list(bindings))
  except ValueError as e:
    message = str(e)
    required = _REQUIRED_MACRO.match(message)
    if required:
      name = required.group(1)
      raise UsageError(f"Required gin macro {name} is not set. Pass --gin.{name}=VALUE on the "
                       f"command line or bind `{name} = ...` in a gin file.") from e
    required = _REQUIRED_PARAM.match(message)
    if required:
      raise UsageError(f"Required gin parameter {required.group(1)} is not set; bind it in a "
                       f"gin file or with --gin.{required.group(1)}=VALUE.") from e
    raise UsageError(f"Gin configuration error: {message}") from e
  except (SyntaxError, IOError) as e:
    culprit = _find_bad_binding(bindings)
    hint = (f" in binding {culprit!r}" if culprit else "") + (
        ". String values need inner quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"; "
        "gin files are searched in the current directory, --gin_search_paths and "
        f"{gin_configs.ROOT}.")
    raise UsageError(f"Malformed gin configuration{hint} ({type(e).__name__}: {e})") from e


@contextlib.contextmanager
def _quiet_gin_path_lookups():
  """Gin logs an error for every search path that lacks a file, even when a later one
  has it; a file found nowhere still raises, so these lines are only noise."""
  noise = lambda record: not record.getMessage().startswith("Path not found")
  root = logging.getLogger()
  root.addFilter(noise)
  try:
    yield
  finally:
    root.removeFilter(noise)


def _find_bad_binding(bindings: Sequence[str]) -> Optional[str]:
  for binding in bindings:
    try:
      gin.config_parser.ConfigParser(binding, gin.config.ParserDelegate(skip_unknown=True)
                                    ).parse_statement()
    except SyntaxError:
      return binding
  return None


def write_config(model_dir: Optional[str]) -> None:
  """Saves the resolved gin config to MODEL_DIR/config.gin (process 0 only)."""
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not model_dir or jax.process_index() != 0:
    return
  tf.io.gfile.makedirs(model_dir)
  with tf.io.gfile.GFile(os.path.join(model_dir, "config.gin"), "w") as f:
    f.write(gin.config_str())


def _macro(name: str):
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return None


def configured(fn: Callable, hint: str) -> Callable:
  """gin's wrapper of `fn`, after checking that the parsed gin files bind it.

  (gin keeps a function registered after clear_config, so being registered is not
  enough: without bindings the call would fail on missing arguments.)
  """
  first_param = next(iter(inspect.signature(fn).parameters))
  try:
    configurable = gin.get_configurable(fn)
    gin.query_parameter(f"{fn.__module__}.{fn.__name__}.{first_param}")
  except ValueError as e:
    raise UsageError(hint) from e
  return configurable


def run_train(args) -> None:
  """The `train` command: calls the gin-configured `trainer.train`."""
  from instruct_jax.train import trainer  # pylint: disable=g-import-not-at-top
  if not args.gin_file:
    raise UsageError("train needs at least one --gin_file (e.g. --gin_file=runs/smoke.gin).")
  train_fn = configured(trainer.train, "No gin file binds `trainer.train`; include a runs/*.gin "
                        "file such as runs/finetune.gin or runs/smoke.gin.")
  write_config(_macro("MODEL_DIR"))
  train_fn()


def main(argv: Optional[Sequence[str]] = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  show_traceback = "--traceback" in argv
  try:
    rest, bindings = split_gin_bindings(argv)
    command = next((a for a in rest if not a.startswith("-")), None)
    args = build_parser(command).parse_args(rest)
    args.gin_bindings = bindings
    keep_tensorflow_off_accelerators()
    initialize_multihost(args.coordinator_address, args.num_processes, args.process_id)
    if args.gin_file or bindings:
      parse_gin(args.gin_file, bindings, args.gin_search_paths)
    if args.command == "train":
      run_train(args)
    else:
      importlib.import_module(COMMAND_MODULES[args.command]).run(args)
  except ActionableError as e:
    if show_traceback:
      traceback.print_exc()
    print(f"instruct-jax: error: {e}", file=sys.stderr)
    sys.exit(1)
