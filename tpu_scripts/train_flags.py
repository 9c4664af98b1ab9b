"""What the launchers know about `instruct-jax train` flags, checked before any machine starts.

The launchers forward the flags after `--` to `instruct-jax train` unchanged. A typo there
would otherwise only show up after a TPU pod or a SLURM allocation has started, so the
mistakes that cost accelerator hours are caught here, on the user's own machine.
Standard library only: the launchers run on a laptop or login node without jax or gin.
"""
from __future__ import annotations

import ast
import re
import shlex
from typing import Sequence

# The launchers set these themselves (SLURM) or let jax detect them (TPU VM).
DISTRIBUTED_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")

# Exit status of `instruct-jax train` stopped by SIGTERM / SIGINT after saving a checkpoint
# (instruct_jax.errors.EXIT_STOPPED, copied: the launchers cannot import instruct_jax).
# Preempted, not failed: running the same command again resumes.
EXIT_STOPPED = 75

_PATH_PREFIXES = ("gs://", "s3://", "/", "./", "../", "~")


def split_at_double_dash(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `script options -- train flags`; train flags stay exactly as the shell gave them."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  i = argv.index("--")
  return argv[:i], argv[i + 1:]


def is_env_assignment(text: str) -> bool:
  """True for KEY=VALUE where KEY is a valid shell variable name."""
  return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", text, flags=re.DOTALL) is not None


def shell_quote(word: str) -> str:
  """Like shlex.quote, but "--gin.X='a b'" instead of '--gin.X='"'"'a b'"'"'' where that is safe.

  Inside double quotes a POSIX shell only interprets $ ` \\ and " itself (and an interactive
  bash also !), so a word free of those can be double-quoted; gin strings read better so.
  """
  if shlex.quote(word) == word or any(c in word for c in '"$`\\!'):
    return shlex.quote(word)
  return f'"{word}"'


def shell_join(words: Sequence[str]) -> str:
  return " ".join(shell_quote(w) for w in words)


def gin_overrides(train_args: Sequence[str]) -> dict[str, str]:
  """Maps KEY -> raw VALUE for every `--gin.KEY=VALUE` flag (the last one wins, as in gin)."""
  overrides = {}
  for arg in train_args:
    if arg.startswith("--gin.") and "=" in arg:
      key, value = arg[len("--gin."):].split("=", 1)
      overrides[key] = value
  return overrides


def gin_string(value: str) -> str:
  """Quotes a Python str as a gin string literal, e.g. gs://b/run -> 'gs://b/run'."""
  return repr(value)


def parse_gin_string(literal: str) -> str | None:
  """The str a gin string literal stands for, or None when `literal` is not a quoted string."""
  try:
    value = ast.literal_eval(literal.strip())
  except (ValueError, SyntaxError):
    return None
  return value if isinstance(value, str) else None


def check_train_args(train_args: Sequence[str], model_dir_prefix: str | None = None) -> None:
  """Raises ValueError, saying how to fix it, for train flags that would fail or lose work.

  Args:
    train_args: the flags for `instruct-jax train` (everything after `--`).
    model_dir_prefix: when set (e.g. "gs://"), MODEL_DIR must be given and start with it,
      because checkpoints on a TPU VM's own disk vanish with the VM and relaunching could
      not resume from them.
  """
  if not train_args:
    raise ValueError(
        "Expected the flags for `instruct-jax train` after `--`, found none. Example:\n"
        "  ... -- --gin_file=runs/finetune.gin --gin_file=models/flan_t5/base.gin "
        "--gin.MODEL_DIR=\"'gs://BUCKET/run'\"")
  for arg in train_args:
    name = arg.split("=", 1)[0]
    if name in DISTRIBUTED_FLAGS:
      raise ValueError(
          f"Found {name} among the train flags; the launcher sets the multi-process flags "
          f"itself (SLURM) or jax detects them (TPU VM). Remove {name} from the flags "
          f"after `--`.")
  for key, value in gin_overrides(train_args).items():
    if value.startswith(_PATH_PREFIXES):
      raise ValueError(
          f"--gin.{key}={value} is not a gin value: gin strings need their own quotes. "
          f"Write it as --gin.{key}=\"{gin_string(value)}\" (outer shell quotes, inner gin "
          f"quotes).")
  if model_dir_prefix is None:
    return
  overrides = gin_overrides(train_args)
  example = f"--gin.MODEL_DIR=\"'{model_dir_prefix}BUCKET/PATH'\""
  if "MODEL_DIR" not in overrides:
    raise ValueError(
        f"Expected {example} among the train flags, found no MODEL_DIR. Checkpoints and "
        f"logs go to MODEL_DIR, and relaunching resumes from the latest checkpoint there.")
  model_dir = parse_gin_string(overrides["MODEL_DIR"])
  if model_dir is None or not model_dir.startswith(model_dir_prefix):
    raise ValueError(
        f"Expected MODEL_DIR on {model_dir_prefix} (e.g. {example}), found "
        f"--gin.MODEL_DIR={overrides['MODEL_DIR']}. A TPU VM's disk disappears when it is "
        f"deleted or preempted, so checkpoints there could not be resumed from.")
