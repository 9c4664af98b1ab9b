"""The command line: the only code that reads argv, parses gin and chooses exit codes.

    instruct-jax train --gin_file=runs/smoke.gin --gin.TRAIN_STEPS=100
    python -m instruct_jax train --gin_file=runs/finetune.gin \
        --gin_file=models/flan_t5/base.gin --gin.MODEL_DIR="'gs://bucket/run'"

One thin module per command in this package, each defining run(args), which
calls the library with explicit arguments (or the gin-configured library entry
function); every command's flags are declared in flags.py. Gin files are found
relative to the current directory, --gin_search_paths, the shipped gin_configs/
folder and its parent (so both `runs/smoke.gin` and `gin_configs/runs/smoke.gin`
work). Only the chosen command's module is imported, and only to run it: the
command modules pull in jax, so --help never imports them.

The console is quiet: TensorFlow/XLA C++ lines, absl/seqio logging and Python
warnings go to the command's log file (cli/console.py; train's is in MODEL_DIR/logs,
the others' in <temp dir>/instruct_jax_logs); --verbose shows them as they come.

Exit codes (launch scripts and the sweep act on them):
  0   the command did what it was asked (train: TRAIN_STEPS reached, now or earlier);
  75  (errors.EXIT_STOPPED) stopped by SIGTERM / SIGINT after saving a checkpoint, e.g.
      preempted: run the same command again to resume;
  1   any error: a configuration problem (the message says the fix), another trainer
      holding MODEL_DIR, a crash;
  2   bad command-line flags (argparse).
"""
import argparse
import importlib
import sys
import traceback
from typing import Optional, Sequence

from instruct_jax import errors
from instruct_jax.cli import console
from instruct_jax.cli import flags
from instruct_jax.cli import gin_setup
from instruct_jax.cli import runtime

# Command name -> module in this package; each module's HELP is the one-line summary.
COMMANDS = {
    "train": "train",
    "bench": "bench",
    "convert": "convert",
    "eval": "eval",
    "infer": "infer",
    "select": "selection",
    "symbol-eval": "symbol_eval",
    "sweep": "sweep",
    "cache": "cache",
    "prepare": "prepare",
    "inspect": "inspect_mixture",
    "synthesize": "synthesize",
}
# Kept here (not in the modules) so `instruct-jax --help` imports no command module.
COMMAND_HELP = {
    "train": "Train or fine-tune on a seqio task/mixture (gin: runs/*.gin + models/*.gin).",
    "bench": "Time the train step of a model gin: tokens/s, TFLOP/s, MFU, memory.",
    "convert": "Convert T5 / Llama checkpoints: --from hf|t5x into ours (+ model gin), or --to hf.",
    "eval": "Evaluate a checkpoint on a seqio task/mixture (gin: runs/eval.gin + a model gin).",
    "infer": "Predict or score JSON-lines/TSV inputs with a checkpoint (gin: runs/infer.gin).",
    "select": "Evaluate every checkpoint of a run on held-out tasks and pick the best one.",
    "symbol-eval": "Symbol-tuning eval suites on a checkpoint + side-by-side report "
                   "(gin: experiments/symbol_tuning/eval.gin).",
    "sweep": "FLAN leave-one-cluster-out sweep: train + zero-shot eval per held-out cluster.",
    "cache": "Cache seqio tasks offline with Apache Beam (train with USE_CACHED_TASKS=True).",
    "prepare": "Build (or --dry_run: check) the TFDS datasets a mixture reads.",
    "inspect": "Describe a mixture: tasks, rates, example counts (cache stats when cached), "
               "sample prompts.",
    "synthesize": "Synthesize instruction-response pairs for a raw corpus with a synthesizer "
                  "model (gin: experiments/ipt/synthesize.gin + a model gin).",
}


def command_module(name: str):
  return importlib.import_module(f"{__name__}.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
  """The parser of every command (flags.py imports nothing heavy)."""
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
    flags.common(sub)
    flags.ADD_ARGUMENTS[name](sub)
  return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The flags of `argv`, with its --gin.KEY=VALUE bindings as `gin_bindings`.

  --help and bad flags exit here, before anything is imported or logged.
  """
  rest, bindings = gin_setup.split_gin_bindings(argv)
  args = build_parser().parse_args(rest)
  args.gin_bindings = bindings
  return args


def run_command(argv: Sequence[str], join_job: bool = True) -> None:
  """Parses `argv` (flags, gin files and bindings) and runs its command.

  join_job=False skips joining a multi-process job (for commands run by a process
  that already joined one, e.g. the sweep's in-process launcher).
  """
  args = parse_args(argv)
  if join_job:
    runtime.keep_tensorflow_off_accelerators()
    runtime.initialize_multihost(args.coordinator_address, args.num_processes, args.process_id)
  module = command_module(args.command)
  bindings = args.gin_bindings
  if args.gin_file or bindings:
    # A command's own gin files (GIN_FILES) come after the user's files, before the
    # user's bindings, so --gin.KEY=VALUE still overrides them.
    gin_files = [*args.gin_file, *getattr(module, "GIN_FILES", ())]
    gin_setup.parse_gin(gin_files, bindings, args.gin_search_paths)
  module.run(args)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The console script: runs the command and turns its outcome into an exit code.

  Library noise goes to the command's log file unless --verbose (cli/console.py).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)  # --help and bad flags exit here, before a log file is opened.
  with console.for_command(args.command, verbose=args.verbose) as quiet:
    try:
      run_command(argv)
    except errors.RunStopped as e:
      # Not an error: the checkpoint is saved; a distinct status lets launchers resume.
      print(e, flush=True)
      sys.exit(errors.EXIT_STOPPED)
    except errors.ActionableError as e:
      if args.traceback:
        traceback.print_exc()
      print(f"instruct-jax: error: {e}", file=sys.stderr)
      sys.exit(1)
    except Exception:  # pylint: disable=broad-except
      if quiet is not None:  # The traceback follows; the library's log may explain it.
        print(f"instruct-jax: the full log is in {quiet.path}", file=sys.stderr)
      raise
