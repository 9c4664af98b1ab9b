"""Checks of the gin macros once every file and binding is parsed, before any work.

Gin accepts a binding of any macro name, so a misspelt `--gin.TRAIN_STEP=10` would
change nothing, and a value of the wrong type (`TRAIN_STEPS='ten'`) would fail deep
inside a run with a traceback that never names the macro. `check` reads the parsed
configuration back (gin.config_str(), through gin's own parser) and raises one
UsageError naming every unknown macro, with the closest known names, and every
value outside its macro's rule.

A macro is known when something reads it (`%NAME`): the parsed configuration, or
any shipped gin file. The second half matters because shared files and bindings set
macros for several commands: a model gin's OPTIMIZER is read by `train`, not by
`eval`, and the sweep passes its --gin bindings (e.g. TRAIN_STEPS) to both commands.
"""
import dataclasses
import difflib
import functools
import glob
import os
from typing import Any, Callable, Optional, Sequence

import gin
from gin import config_parser

import gin_configs
from instruct_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class _Reference:
  """An `@configurable(...)` or `%MACRO` value, as written (`text`); not resolved."""
  text: str

  @property
  def is_macro(self) -> bool:
    return self.text.startswith("%")


class _MacroReader(config_parser.ParserDelegate):
  """Parser delegate that records the macros a gin text reads and resolves nothing."""

  def __init__(self):
    self.read: set[str] = set()

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return _Reference(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

  def macro(self, macro_name):
    if not macro_name.startswith("gin."):  # %gin.REQUIRED and other gin constants
      self.read.add(macro_name)
    return _Reference(f"%{macro_name}")


def _macros(text: str) -> tuple[dict[str, Any], set[str]]:
  """({macro: value} defined by `text`, names of the macros it reads)."""
  reader = _MacroReader()
  defined = {}
  for statement in config_parser.ConfigParser(text, reader):
    if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
      defined[statement.selector] = statement.value
  return defined, reader.read


@functools.cache
def shipped_macros() -> frozenset[str]:
  """Every macro some gin file under gin_configs/ reads."""
  read = set()
  for path in glob.glob(os.path.join(gin_configs.ROOT, "**", "*.gin"), recursive=True):
    with open(path, encoding="utf-8") as f:
      read |= _macros(f.read())[1]
  return frozenset(read)


# ---------------------------------------------------------------------------
# What each macro's value may be.
# ---------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a macro's literal value must be. A `%MACRO` value is checked where it is
  defined; an `@configurable()` value only when `references_allowed` is False."""
  accepts: Callable[[Any], bool]
  expected: str     # "a positive integer"
  example: str      # a valid value, in gin syntax
  references_allowed: bool = True


POSITIVE_INT = Rule(lambda v: _is_int(v) and v > 0, "a positive integer", "100")
OPTIONAL_POSITIVE_INT = Rule(lambda v: v is None or (_is_int(v) and v > 0),
                             "a positive integer or None", "100")
NON_NEGATIVE_INT = Rule(lambda v: _is_int(v) and v >= 0, "an integer >= 0", "0")
INT = Rule(_is_int, "an integer", "0")
POSITIVE_NUMBER = Rule(lambda v: _is_number(v) and v > 0, "a positive number", "0.001")
NON_NEGATIVE_NUMBER = Rule(lambda v: _is_number(v) and v >= 0, "a number >= 0", "0.0")
RATE = Rule(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)", "0.1")
TOP_P = Rule(lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]", "0.9")
PATH = Rule(lambda v: isinstance(v, str) and bool(v), "a path string (in quotes)",
            "'/tmp/run'")
OPTIONAL_PATH = Rule(lambda v: v is None or (isinstance(v, str) and bool(v)),
                     "a path string (in quotes) or None", "'/tmp/run'")
FEATURE_LENGTHS = Rule(
    lambda v: v is None or (isinstance(v, dict) and bool(v) and all(
        isinstance(k, str) and _is_int(n) and n > 0 for k, n in v.items())),
    "a dict of feature name -> positive length", "{'inputs': 512, 'targets': 128}")
# The names of optimizers.OPTIMIZERS, written out so that --help imports no jax.
# A quoted 'False' is a non-empty string, which Python takes as true.
BOOL = Rule(lambda v: isinstance(v, bool), "True or False (no quotes)", "False")
OPTIMIZER = Rule(lambda v: v in ("adafactor", "adamw"), "'adafactor' or 'adamw' (set "
                 "their options with optimizers.adafactor.* / optimizers.adamw.*)",
                 "'adamw'", references_allowed=False)

RULES: dict[str, Rule] = {
    "TRAIN_STEPS": POSITIVE_INT,
    "BATCH_SIZE": POSITIVE_INT,
    "LOG_PERIOD": POSITIVE_INT,
    "EVAL_PERIOD": OPTIONAL_POSITIVE_INT,
    "SAVE_PERIOD": OPTIONAL_POSITIVE_INT,
    "KEEP_CHECKPOINTS": OPTIONAL_POSITIVE_INT,
    "NUM_MICROBATCHES": OPTIONAL_POSITIVE_INT,
    "ZERO_GRAD_PATIENCE": OPTIONAL_POSITIVE_INT,
    "NUM_PARTITIONS": POSITIVE_INT,
    "PARAMETER_PARTITIONING_DIMS": POSITIVE_INT,
    "RANDOM_SEED": INT,
    "TASK_FEATURE_LENGTHS": FEATURE_LENGTHS,
    "MODEL_DIR": PATH,
    "CHECKPOINT_PATH": PATH,
    "INITIAL_CHECKPOINT_PATH": OPTIONAL_PATH,
    "EVAL_OUTPUT_DIR": OPTIONAL_PATH,
    "OPTIMIZER": OPTIMIZER,
    "RESTORE_DATA_ITERATOR": BOOL,
    "CARRY_ADAFACTOR_STATE": BOOL,
    "USE_CACHED_TASKS": BOOL,
    "SHUFFLE_TRAIN_EXAMPLES": BOOL,
    "PACKING": BOOL,
    "LEARNING_RATE": POSITIVE_NUMBER,
    "WARMUP_STEPS": NON_NEGATIVE_INT,
    "DROPOUT_RATE": RATE,
    "LABEL_SMOOTHING": RATE,
    "Z_LOSS": NON_NEGATIVE_NUMBER,
    "EVAL_NUM_EXAMPLES": OPTIONAL_POSITIVE_INT,
    "INFER_EVAL_NUM_EXAMPLES": OPTIONAL_POSITIVE_INT,
    "MAX_DECODE_LENGTH": OPTIONAL_POSITIVE_INT,
    "NUM_BEAMS": POSITIVE_INT,
    "TEMPERATURE": POSITIVE_NUMBER,
    "TOP_K": NON_NEGATIVE_INT,
    "TOP_P": TOP_P,
    "BENCH_BATCH_SIZE": POSITIVE_INT,
    "BENCH_INPUT_LENGTH": POSITIVE_INT,
    "BENCH_TARGET_LENGTH": POSITIVE_INT,
    "BENCH_STEPS": POSITIVE_INT,
    "BENCH_NUM_PARTITIONS": POSITIVE_INT,
    "BENCH_PARAMETER_PARTITIONING_DIMS": POSITIVE_INT,
    "BENCH_NUM_BEAMS": POSITIVE_INT,
}


# ---------------------------------------------------------------------------
# The check.
# ---------------------------------------------------------------------------


def check(bindings: Sequence[str] = ()) -> None:
  """Raises UsageError for unknown macros and bad values in the parsed gin config.

  `bindings` are the command line's "KEY = VALUE" bindings, only to say where a
  bad macro was set.
  """
  defined, read = _macros(gin.config_str())
  on_command_line = {}
  for binding in bindings:
    for name in _macros(binding)[0]:
      on_command_line[name] = binding.replace(" = ", "=", 1)
  problems = []
  for name in sorted(defined.keys() - read - shipped_macros()):
    problems.append(_unknown(name, on_command_line.get(name), read))
  for name, value in defined.items():
    rule = RULES.get(name)
    if rule is None or (isinstance(value, _Reference) and (
        value.is_macro or rule.references_allowed)):
      continue
    if not rule.accepts(value):
      problems.append(_bad_value(name, value, rule, on_command_line.get(name)))
  if problems:
    raise UsageError("\n".join(problems))


def _where(name: str, binding: Optional[str]) -> str:
  return f"--gin.{binding}" if binding else f"`{name} = ...` in a gin file"


def _unknown(name: str, binding: Optional[str], read: set[str]) -> str:
  close = (difflib.get_close_matches(name, sorted(read), n=3)
           or difflib.get_close_matches(name, sorted(shipped_macros()), n=3))
  hint = (f"did you mean {' or '.join(close)}?" if close else
          "the macros a configuration reads are the %NAME in its gin files.")
  return (f"Unknown gin macro {name} ({_where(name, binding)}): no gin configuration "
          f"reads it; {hint}")


def _bad_value(name: str, value: Any, rule: Rule, binding: Optional[str]) -> str:
  shown = value.text if isinstance(value, _Reference) else repr(value)
  example = f'"{rule.example}"' if any(c in rule.example for c in "'{ ") else rule.example
  return (f"Gin macro {name} is {shown} ({_where(name, binding)}) but must be "
          f"{rule.expected}, e.g. --gin.{name}={example}.")
