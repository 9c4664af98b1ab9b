"""A command's console: our own lines on screen, library noise in a log file.

TensorFlow and XLA write C++ log lines straight to file descriptor 2 (oneDNN
notes, "failed call to cuInit" on machines without a GPU), and seqio, absl,
jax and Python's warnings module log through Python `logging`; together they
bury the first screen of every run. While a `QuietConsole` is active:

  * file descriptor 2 points at the log file, so every C++ line lands there;
  * `sys.stderr` (when it wrote to descriptor 2) becomes a copy of the real
    terminal, so the CLI's errors and tracebacks still show;
  * every Python log record (INFO and up) and every Python warning goes to the
    log file; WARNING and up records logged by instruct_jax's own code are
    also shown on the console, since they are meant for the user.

stdout (progress lines, banners, reports) is untouched. The log starts in
`default_log_dir()`; `train` moves it into MODEL_DIR/logs once it holds the
run (`move_log_into`). `--verbose` skips all of this: everything shows as it
would without it. The state is process-wide, like the file descriptors it
swaps, and everything is restored on exit (commands run inside tests or the
sweep's in-process launcher leave the process as they found it).
"""
import contextlib
import datetime
import logging
import os
import shutil
import sys
import tempfile
from typing import Iterator, Optional

from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FILE_FORMAT = "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"
_CONSOLE_FORMAT = "instruct-jax: warning: %(message)s"
LOGS_SUBDIR = "logs"

_active: Optional["QuietConsole"] = None


def default_log_dir() -> str:
  """Where a command's log starts: <system temp dir>/instruct_jax_logs."""
  return os.path.join(tempfile.gettempdir(), "instruct_jax_logs")


def log_file_name(command: str) -> str:
  """<command>-<UTC time>-<pid>.log: launches never share (or overwrite) a log."""
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
  return f"{command}-{now}-{os.getpid()}.log"


class _FromInstructJax(logging.Filter):
  """Passes records logged by code inside the instruct_jax package."""

  def filter(self, record: logging.LogRecord) -> bool:
    return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR + os.sep)


def _writes_to_fd(stream, fd: int) -> bool:
  try:
    return stream.fileno() == fd
  except (AttributeError, OSError, ValueError):
    return False  # e.g. pytest's capture objects: they do not write to the descriptor.


class QuietConsole:
  """Sends descriptor 2, Python logging and warnings to `path` until `close()`."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._file = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    sys.stdout.flush()
    sys.stderr.flush()
    self._saved_fd2 = os.dup(2)
    os.dup2(self._file.fileno(), 2)
    self._saved_stderr = sys.stderr
    if _writes_to_fd(sys.stderr, 2):
      sys.stderr = open(os.dup(self._saved_fd2), "w", buffering=1,
                        encoding=self._saved_stderr.encoding, errors="backslashreplace")
    self.console = sys.stderr

    root = logging.getLogger()
    self._saved_handlers = list(root.handlers)
    self._saved_root_level = root.level
    self._saved_absl_verbosity = absl_logging.get_verbosity()
    self._file_handler = logging.StreamHandler(self._file)
    self._file_handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    console_handler = logging.StreamHandler(self.console)
    console_handler.setLevel(logging.WARNING)
    console_handler.addFilter(_FromInstructJax())
    console_handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
    self._console_handler = console_handler
    for handler in self._saved_handlers:
      root.removeHandler(handler)
    root.addHandler(self._file_handler)
    root.addHandler(console_handler)
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.captureWarnings(True)

  def move_into(self, directory: str) -> str:
    """Moves the log (what it holds so far, and all that follows) into `directory`.

    A directory on another file system (or bucket) than the log is copied, and
    the descriptors are pointed at the new file. Remote directories (gs://) are
    not written to: the log stays where it is. Returns the log's path.
    """
    if "://" in directory:
      return self.path
    new_path = os.path.join(directory, os.path.basename(self.path))
    if os.path.abspath(new_path) == os.path.abspath(self.path):
      return self.path
    os.makedirs(directory, exist_ok=True)
    self._file.flush()
    shutil.copyfile(self.path, new_path)
    new_file = open(new_path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    os.dup2(new_file.fileno(), 2)
    self._file_handler.setStream(new_file)
    self._file.close()
    os.remove(self.path)
    self._file, self.path = new_file, new_path
    return self.path

  def close(self) -> None:
    """Restores descriptor 2, sys.stderr, the logging handlers and levels."""
    logging.captureWarnings(False)
    absl_logging.set_verbosity(self._saved_absl_verbosity)
    root = logging.getLogger()
    root.removeHandler(self._file_handler)
    root.removeHandler(self._console_handler)
    for handler in self._saved_handlers:
      root.addHandler(handler)
    root.setLevel(self._saved_root_level)
    sys.stdout.flush()
    if sys.stderr is not self._saved_stderr:
      sys.stderr.flush()
      sys.stderr.close()
      sys.stderr = self._saved_stderr
    os.dup2(self._saved_fd2, 2)
    os.close(self._saved_fd2)
    self._file.close()


@contextlib.contextmanager
def for_command(command: str, verbose: bool) -> Iterator[Optional[QuietConsole]]:
  """The console of one command: quiet (yields the QuietConsole) unless `verbose` (None).

  A command run while another one's console is active (the sweep's in-process
  launcher) shares that console.
  """
  global _active
  if verbose or _active is not None:
    yield _active
    return
  quiet = QuietConsole(os.path.join(default_log_dir(), log_file_name(command)))
  _active = quiet
  try:
    yield quiet
  finally:
    _active = None
    quiet.close()


def move_log_into(model_dir: str) -> Optional[str]:
  """Moves the active log into MODEL_DIR/logs; returns its path (None when --verbose)."""
  if _active is None:
    return None
  return _active.move_into(os.path.join(model_dir, LOGS_SUBDIR))


def log_path() -> Optional[str]:
  """Where the active command logs (None when --verbose: everything is on the console)."""
  return _active.path if _active is not None else None
