"""Errors whose message already says what to fix: the CLI prints them without a traceback."""


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
