"""`instruct-jax select`: evaluate every checkpoint of a run on held-out tasks, pick the best.

    instruct-jax select --model_dir=/runs/cot_distill --mixture=cot_heldout_math_eval

Configured through gin like `eval`: the model gin (--gin_file, else the run's own
MODEL_DIR/config.gin), then runs/select.gin, then the flags below, each a
shortcut for one of select.gin's macros, then --gin.MACRO=VALUE bindings.
"""
import os

import gin
import jax
import tensorflow as tf

from instruct_jax.checkpoints import layout
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.eval import selection as selection_lib

SELECT_GIN = "runs/select.gin"
# Flag -> the select.gin macro it sets (when given).
FLAG_MACROS = {
    "model_dir": "MODEL_DIR",
    "mixture": "MIXTURE_OR_TASK_NAME",
    "split": "EVAL_SPLIT",
    "batch_size": "BATCH_SIZE",
    "num_examples": "EVAL_NUM_EXAMPLES",
    "steps": "SELECT_STEPS",
    "output_dir": "EVAL_OUTPUT_DIR",
    "module": "MIXTURE_OR_TASK_MODULE",
    "num_partitions": "NUM_PARTITIONS",
}
LENGTH_FLAGS = {"inputs_length": "inputs", "targets_length": "targets"}


def add_arguments(parser) -> None:
  defaults = f"default: {SELECT_GIN}"
  parser.add_argument("--model_dir", required=True,
                      help="Training run directory holding checkpoint_<step> directories.")
  parser.add_argument("--mixture", default=None,
                      help=f"seqio task or mixture to select on ({defaults}: "
                           f"{selection_lib.DEFAULT_MIXTURE}).")
  parser.add_argument("--split", default=None, help=f"Split of its tasks ({defaults}: test).")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="Global eval batch size, a multiple of the data-parallel size "
                           f"({defaults}: 32).")
  parser.add_argument("--inputs_length", type=int, default=None,
                      help="Input length in tokens (few-shot prompts are built to fit 1024).")
  parser.add_argument("--targets_length", type=int, default=None,
                      help="Decoding length in tokens: room for the chain of thought "
                           f"({defaults}: 256).")
  parser.add_argument("--num_examples", type=int, default=None,
                      help="Evaluate only the first N examples of each task.")
  parser.add_argument("--steps", default=None,
                      help="Comma-separated checkpoint steps to consider (default: all).")
  parser.add_argument("--output_dir", default=None,
                      help="Where reports go (default: MODEL_DIR/selection).")
  parser.add_argument("--module", default=None,
                      help="Module to import for task registrations "
                           f"({defaults}: tasks_registry).")
  parser.add_argument("--num_partitions", type=int, default=None,
                      help=f"Model-parallel partitions of the eval mesh ({defaults}: 1).")


def _parse_model_gin(args) -> None:
  """The run's model: the given model gin (already parsed), else the run's own config.gin."""
  if args.gin_file:
    return
  config = os.path.join(args.model_dir, layout.CONFIG_FILE)
  if not tf.io.gfile.exists(config):
    raise UsageError(f"No --gin_file given and {config} does not exist; pass the model gin "
                     "the run was trained with, e.g. --gin_file=models/flan_t5/base.gin.")
  with gin.unlock_config():
    with tf.io.gfile.GFile(config) as f:
      gin.parse_config(f.read())


def flag_bindings(args) -> list[str]:
  """Gin bindings of the flags that were given (a flag left out keeps select.gin's value)."""
  values = {macro: getattr(args, flag) for flag, macro in FLAG_MACROS.items()
            if getattr(args, flag) is not None}
  if "SELECT_STEPS" in values:
    values["SELECT_STEPS"] = [int(s) for s in values["SELECT_STEPS"].split(",") if s.strip()]
  return [f"{macro} = {value!r}" for macro, value in values.items()]


def length_bindings(args, task_feature_lengths) -> list[str]:
  """--inputs_length / --targets_length, each replacing one entry of TASK_FEATURE_LENGTHS."""
  lengths = {feature: getattr(args, flag) for flag, feature in LENGTH_FLAGS.items()
             if getattr(args, flag) is not None}
  if not lengths:
    return []
  return [f"TASK_FEATURE_LENGTHS = {({**(task_feature_lengths or {}), **lengths})!r}"]


def configure(args) -> None:
  """Parses the model gin (or the run's config.gin), runs/select.gin, --gin bindings, flags."""
  _parse_model_gin(args)
  with gin.unlock_config():
    # select.gin after the model gin, then the --gin bindings, then the flags.
    gin_setup.parse_gin([SELECT_GIN], [*args.gin_bindings, *flag_bindings(args)],
                        args.gin_search_paths)
  lengths = length_bindings(args, gin_setup.macro("TASK_FEATURE_LENGTHS"))
  if lengths:
    with gin.unlock_config():  # Parsing finalizes (locks) the config.
      gin_setup.parse_gin([], lengths)


def run(args) -> None:
  configure(args)
  if gin_setup.macro("MODEL") is None:
    raise UsageError("The gin configuration defines no MODEL macro; include a model gin such "
                     "as --gin_file=models/t5_1_1/base.gin.")
  select_fn = gin_setup.configured(selection_lib.select_checkpoint,
                                   f"No gin file binds `selection.select_checkpoint`; "
                                   f"{SELECT_GIN} should.")
  try:
    chosen = select_fn()
  except FileNotFoundError as e:  # e.g. a held-out set's file (its message says where to put it)
    raise UsageError(str(e)) from e
  if jax.process_index() == 0:
    print(chosen.markdown, flush=True)
    print("Wrote " + ", ".join(chosen.paths.values()), flush=True)
    print(f"Chosen checkpoint: {chosen.best_checkpoint}", flush=True)
