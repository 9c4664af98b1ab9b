"""Gin at the command-line edge: bindings from argv, parsing with readable errors, %MODEL.

After parsing, gin_macros.check rejects unknown macros and bad macro values, so a
typo fails before any work.

The library takes explicit arguments; only the commands in this package parse gin
files and ask gin for configured entry functions (the trainer records the
resolved config it is given).
"""
import contextlib
import difflib
import inspect
import logging
import os
import re
from typing import Any, Callable, Optional, Sequence

import gin

import gin_configs
from instruct_jax.cli import gin_macros
from instruct_jax.errors import UsageError

_REQUIRED_MACRO = re.compile(r"^(\w+)/macro\.value set to `%gin\.REQUIRED` but not subsequently")
_REQUIRED_PARAM = re.compile(r"^(\S+) set to `%gin\.REQUIRED` but not subsequently")
_UNSET_MACRO = re.compile(r"^No bindings specified for '(\w+)/gin\.macro'")
_UNKNOWN_PARAM = re.compile(r"^Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'")


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
    unset = _UNSET_MACRO.match(message)
    if unset:
      name = unset.group(1)
      raise UsageError(f"Gin macro {name} is read (%{name}) but never set. Pass "
                       f"--gin.{name}=VALUE or bind `{name} = ...` in a gin file.") from e
    unknown = _UNKNOWN_PARAM.match(message)
    if unknown:
      raise UsageError(_unknown_parameter(*unknown.groups(), message)) from e
    raise UsageError("Gin configuration error: " + _one_line(message)) from e
  except (SyntaxError, IOError) as e:
    culprit = _find_bad_binding(bindings)
    hint = (f" in binding {culprit!r}" if culprit else "") + (
        ". String values need inner quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"; "
        "gin files are searched in the current directory, --gin_search_paths and "
        f"{gin_configs.ROOT}.")
    raise UsageError(f"Malformed gin configuration{hint} ({type(e).__name__}: {e})") from e
  gin_macros.check(bindings)


def _one_line(message: str) -> str:
  """Gin's message as one line: the problem, then where (a file and line, or a binding)."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  where = next((lines[i:i + 2] for i, line in enumerate(lines)
                if line.startswith(("In file", "In bindings string"))), None)
  return lines[0] + (f" ({_where(where)})" if where else "")


def _where(location: list[str]) -> str:
  """'--gin.KEY=VALUE' for a command-line binding, else gin's file and line."""
  if location[0].startswith("In bindings string") and len(location) > 1:
    return "--gin." + location[-1].replace(" = ", "=", 1)
  return ": ".join(location)


def _unknown_parameter(selector: str, name: str, message: str) -> str:
  """A misspelt `configurable.parameter` binding, with the closest parameter names."""
  try:
    configurable = gin.get_configurable(selector)
    signature = inspect.signature(inspect.unwrap(
        configurable.__init__ if inspect.isclass(configurable) else configurable))
    parameters = [p for p in signature.parameters if p != "self"]
  except (ValueError, TypeError):
    parameters = []
  close = difflib.get_close_matches(name, parameters, n=3)
  hint = (f"; did you mean {' or '.join(close)}?" if close else
          f"; its parameters are {', '.join(parameters)}." if parameters else ".")
  where = _where([line.strip() for line in message.splitlines()[1:] if line.strip()] or ["?"])
  return f"{selector} has no parameter {name} ({where}){hint}"


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


def macro(name: str) -> Any:
  """The value of gin macro `name`, or None when no parsed file defines it."""
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


def _configured_macro(value: Any) -> Any:
  """Gin hands a macro's built value to the CLI through this function's binding."""
  return value


def build_macro(name: str, hint: str) -> Any:
  """Builds what gin macro `name` (e.g. %MODEL, %OPTIMIZER) refers to.

  The one way commands obtain a configured object that no entry function binds.
  `hint` says which gin file defines the macro, for the error when none does.
  """
  if macro(name) is None:
    raise UsageError(f"The gin configuration defines no {name} macro; {hint}")
  with gin.unlock_config():  # The parsed config may be locked (gin's finalize).
    gin.parse_config(["from __gin__ import dynamic_registration",
                      "from instruct_jax.cli import gin_setup",
                      f"gin_setup._configured_macro.value = %{name}"])
  return gin.get_configurable(_configured_macro)()

