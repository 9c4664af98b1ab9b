"""SIGTERM / SIGINT as a flag: long loops finish their current unit of work, then stop.

Preemption (VM shutdown, scancel) and Ctrl-C should checkpoint and exit cleanly
rather than die mid-step. A second signal raises KeyboardInterrupt so a stuck
process can still be stopped.
"""
import signal
import threading
from typing import Callable, Optional


class StopOnSignal:
  """Context manager recording the first SIGTERM / SIGINT in `signal_name`."""

  def __init__(self, on_signal: Optional[Callable[[str], None]] = None):
    self.signal_name: Optional[str] = None
    self._on_signal = on_signal
    self._previous = {}

  def __enter__(self):
    # Python only lets the main thread install handlers; elsewhere signals keep
    # their default behaviour.
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:  # A second signal: stop waiting, leave now.
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    if self._on_signal is not None:
      self._on_signal(self.signal_name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  @property
  def requested(self) -> bool:
    return self.signal_name is not None
