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
from instruct_jax.cli import flags
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.eval import selection as selection_lib



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
  values = {macro: getattr(args, flag) for flag, macro in flags.SELECT_FLAG_MACROS.items()
            if getattr(args, flag) is not None}
  if "SELECT_STEPS" in values:
    values["SELECT_STEPS"] = [int(s) for s in values["SELECT_STEPS"].split(",") if s.strip()]
  return [f"{macro} = {value!r}" for macro, value in values.items()]


def length_bindings(args, task_feature_lengths) -> list[str]:
  """--inputs_length / --targets_length, each replacing one entry of TASK_FEATURE_LENGTHS."""
  lengths = {feature: getattr(args, flag) for flag, feature in flags.SELECT_LENGTH_FLAGS.items()
             if getattr(args, flag) is not None}
  if not lengths:
    return []
  return [f"TASK_FEATURE_LENGTHS = {({**(task_feature_lengths or {}), **lengths})!r}"]


def configure(args) -> None:
  """Parses the model gin (or the run's config.gin), runs/select.gin, --gin bindings, flags."""
  _parse_model_gin(args)
  with gin.unlock_config():
    # select.gin after the model gin, then the --gin bindings, then the flags.
    gin_setup.parse_gin([flags.SELECT_GIN], [*args.gin_bindings, *flag_bindings(args)],
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
                                   f"{flags.SELECT_GIN} should.")
  try:
    chosen = select_fn()
  except FileNotFoundError as e:  # e.g. a held-out set's file (its message says where to put it)
    raise UsageError(str(e)) from e
  if jax.process_index() == 0:
    print(chosen.markdown, flush=True)
    print("Wrote " + ", ".join(chosen.paths.values()), flush=True)
    print(f"Chosen checkpoint: {chosen.best_checkpoint}", flush=True)
