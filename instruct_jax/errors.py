"""Errors whose message already says what to fix: the CLI prints them without a traceback."""


class ActionableError(Exception):
  """Base class: the message names the problem and the fix."""


class UsageError(ActionableError, ValueError):
  """A problem with command-line flags, gin configuration or input files."""
