"""Errors whose message already says what to fix: the CLI prints them without a traceback."""
from typing import Optional


class ActionableError(Exception):
  """Base class: the message names the problem and the fix."""


class UsageError(ActionableError, ValueError):
  """A problem with command-line flags, gin configuration or input files."""


# Exit status of a run stopped by SIGTERM / SIGINT after saving its checkpoint: "preempted,
# run the same command again to resume" (EX_TEMPFAIL). The sweep and the launch scripts
# read it that way; 0 means the run reached its total steps; 1 is any other error.
EXIT_STOPPED = 75


class RunStopped(Exception):
  """A run stopped by a signal after checkpointing; rerunning the same command resumes it.

  Not an ActionableError: nothing is wrong with the configuration. The CLI prints
  the message and exits with EXIT_STOPPED.
  """


def one_line(error: BaseException, limit: Optional[int] = None) -> str:
  """"TypeName: first line of the message" (cut at `limit` characters when given).

  For one-line reports of an error (a console warning, run.json): tensorstore and
  orbax messages can be kilobytes long; the full text belongs in a log or file.
  """
  text = str(error).strip()
  line = text.splitlines()[0] if text else ""
  if limit is not None and len(line) > limit:
    line = line[:limit] + " ..."
  return f"{type(error).__name__}: {line}" if line else type(error).__name__
