"""A single-writer lease on MODEL_DIR, so two trainers never write one run's checkpoints.

Two launches on one MODEL_DIR (a retried job whose first attempt still runs, a
typo in a sweep) would both write checkpoint_<step> and metrics, and each resume
would silently mix their work. The lease is the file MODEL_DIR/lease.json naming
its holder (host, pid, start time, last heartbeat, random owner id). It works
without flock, so also on object stores:

  * Local paths: the record is written to a private temporary file and hard-linked
    to lease.json (os.link fails if the name exists), falling back to
    os.open(O_CREAT | O_EXCL) where links are unsupported. Taking a free lease is
    atomic: of two racing launches exactly one wins.
  * Other filesystems (gs://, ...) through tf.io.gfile: a temporary file renamed
    with overwrite=False, then read back to confirm the owner id. Object stores
    have no atomic create-if-absent here, so two launches racing within the same
    moment may both pass the existence check; the read-back makes the later writer
    win in nearly all cases, and the loser finds out at its next heartbeat at the
    latest (heartbeat() raises LeaseHeldError when the file names another owner).

Takeovers (a stale heartbeat, or take_over=True) overwrite the file and read it
back, with the same best-effort guarantee. Staleness compares the holder's clock
with ours, so keep stale_seconds well above any clock skew between hosts.
Pure Python: call it from one process (e.g. process 0) of a multi-host job.
"""
import json
import os
import socket
import time
import uuid
from typing import Optional

from absl import logging
import tensorflow as tf

from instruct_jax.checkpoints import layout
from instruct_jax.errors import ActionableError


class LeaseHeldError(ActionableError):
  """Another live process holds (or took over) the MODEL_DIR lease."""


def _is_local(path: str) -> bool:
  return "://" not in str(path)


def _died_on_this_host(holder: dict) -> bool:
  """Whether the holder ran on this host and its process no longer exists.

  A crashed or killed run (kill -9, out of memory) never releases its lease; when it
  ran here, waiting for its heartbeat to go stale would only delay the relaunch.
  """
  pid = holder.get("pid")
  if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
    return False
  if pid == os.getpid():
    return False  # Ours, from an earlier lease object of this process: not dead.
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False  # Alive, owned by another user.
  return False


def _describe(record: dict, now: float) -> str:
  """"host H, pid P, started <time>, last heartbeat Ns ago" for a lease record."""
  started = record.get("started")
  started_text = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
                  if isinstance(started, (int, float)) else "at an unknown time")
  beat = record.get("heartbeat")
  age = f"{now - beat:.0f}s ago" if isinstance(beat, (int, float)) else "unknown"
  return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started "
          f"{started_text}, last heartbeat {age}")


class RunLease:
  """Holds MODEL_DIR/lease.json while a trainer writes MODEL_DIR.

  Use as `with RunLease(model_dir) as lease: ... lease.heartbeat() ...`, or call
  acquire() / release() explicitly. heartbeat() is cheap enough to call every step.
  """

  def __init__(self, model_dir: str, take_over: bool = False,
               heartbeat_seconds: float = 30.0, stale_seconds: float = 300.0):
    """Args:
      model_dir: the run directory (local path or gs://...).
      take_over: take the lease even from a live holder (`--force`), with a warning.
      heartbeat_seconds: heartbeat() rewrites the file at most this often.
      stale_seconds: a lease whose heartbeat is older than this is taken over (its
        holder is presumed dead). Keep it several heartbeat periods long.
    """
    if heartbeat_seconds <= 0 or stale_seconds <= heartbeat_seconds:
      raise ValueError(
          f"Need 0 < heartbeat_seconds < stale_seconds; got heartbeat_seconds="
          f"{heartbeat_seconds}, stale_seconds={stale_seconds}. A lease must be refreshed "
          "several times before others may consider it stale.")
    self.model_dir = str(model_dir)
    self.path = os.path.join(self.model_dir, layout.LEASE_FILE)
    self.take_over = take_over
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_seconds = stale_seconds
    self.owner = uuid.uuid4().hex
    self._record: Optional[dict] = None
    self._last_beat = 0.0

  @property
  def held(self) -> bool:
    """Whether this object acquired the lease and has not released it."""
    return self._record is not None

  def __enter__(self) -> "RunLease":
    self.acquire()
    return self

  def __exit__(self, *exc_info):
    self.release()

  # -------------------------------------------------------------------------
  # The public operations.
  # -------------------------------------------------------------------------

  def acquire(self) -> None:
    """Takes the lease, or raises LeaseHeldError naming the live holder and the fix."""
    if self.held:
      return
    tf.io.gfile.makedirs(self.model_dir)
    now = time.time()
    record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
              "started": now, "heartbeat": now}
    if self._create(record):
      self._confirm(record)
      return
    holder = self._read()
    if holder is None:  # vanished between our attempt and the read: try once more
      if self._create(record):
        self._confirm(record)
        return
      holder = self._read() or {}
    age = self._age(holder, now)
    if self.take_over:
      logging.warning("Taking over the lease on %s from %s (--force).", self.model_dir,
                      _describe(holder, now))
    elif _died_on_this_host(holder):
      logging.warning(
          "Taking over the lease on %s: its holder (%s) ran on this host and its process "
          "is gone (crashed or killed).", self.model_dir, _describe(holder, now))
    elif age is not None and age > self.stale_seconds:
      logging.warning(
          "Taking over the stale lease on %s: its holder (%s) has not renewed it for more "
          "than %.0fs and is presumed gone.", self.model_dir, _describe(holder, now),
          self.stale_seconds)
    else:
      raise self._held_error(holder, now)
    self._write(record)
    self._confirm(record)

  def heartbeat(self) -> None:
    """Renews the lease when heartbeat_seconds have passed; raises if someone took it over."""
    if not self.held:
      raise RuntimeError("RunLease.heartbeat() called without holding the lease; call "
                         "acquire() first (or use the lease as a context manager).")
    now = time.time()
    if now - self._last_beat < self.heartbeat_seconds:
      return
    holder = self._read()
    if holder is None:
      # Deleted under us (e.g. by hand): take it back unless someone else just did.
      if not self._create(dict(self._record, heartbeat=now)):
        holder = self._read() or {}
    if holder is not None and holder.get("owner") != self.owner:
      self._record = None
      raise LeaseHeldError(
          f"Another process took over the lease on {self.model_dir} "
          f"({_describe(holder, now)}), so this run stops writing there. Two trainers "
          "must not share one MODEL_DIR: let the other one finish, or stop it and "
          "rerun this one.")
    self._record = dict(self._record, heartbeat=now)
    self._write(self._record)
    self._last_beat = now

  def release(self) -> None:
    """Deletes the lease file if it is still ours; never raises (it runs in finally blocks)."""
    if not self.held:
      return
    self._record = None
    try:
      holder = self._read()
      if holder is not None and holder.get("owner") == self.owner:
        tf.io.gfile.remove(self.path)
      elif holder is not None:
        logging.warning("Not releasing the lease on %s: it now belongs to %s.",
                        self.model_dir, _describe(holder, time.time()))
    except Exception:  # pylint: disable=broad-except
      logging.warning("Could not release the lease %s; delete it by hand if no trainer "
                      "runs on %s.", self.path, self.model_dir, exc_info=True)

  # -------------------------------------------------------------------------
  # File operations.
  # -------------------------------------------------------------------------

  def _temp_path(self) -> str:
    # Not "lease.json<suffix>": some filesystems (tf's ram://) match names by prefix.
    return os.path.join(self.model_dir, f".{layout.LEASE_FILE}-{self.owner}.tmp")

  def _create(self, record: dict) -> bool:
    """Writes the lease file only if none exists; returns whether this call created it."""
    data = json.dumps(record, indent=2, sort_keys=True) + "\n"
    if _is_local(self.path):
      temp = self._temp_path()
      with open(temp, "w") as f:
        f.write(data)
      try:
        os.link(temp, self.path)
        return True
      except FileExistsError:
        return False
      except OSError:  # no hard links on this filesystem
        return self._create_exclusive(data)
      finally:
        os.remove(temp)
    try:
      layout.write_atomically(self.path, data, overwrite=False)
      return True
    except tf.errors.AlreadyExistsError:
      return False

  def _create_exclusive(self, data: str) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(data)
    return True

  def _write(self, record: dict) -> None:
    """Replaces the lease file with `record` (a reader sees the old or the new file)."""
    layout.write_atomically(self.path, json.dumps(record, indent=2, sort_keys=True) + "\n")

  def _read(self) -> Optional[dict]:
    """The lease record; None when there is no file; {} when it is unreadable."""
    try:
      with tf.io.gfile.GFile(self.path) as f:
        text = f.read()
    except tf.errors.NotFoundError:
      return None
    try:
      record = json.loads(text)
      return record if isinstance(record, dict) else {}
    except ValueError:
      return {}

  def _age(self, holder: dict, now: float) -> Optional[float]:
    """Seconds since the holder's last heartbeat (file mtime when the record is unreadable)."""
    beat = holder.get("heartbeat")
    if isinstance(beat, (int, float)):
      return now - beat
    try:
      return now - tf.io.gfile.stat(self.path).mtime_nsec / 1e9
    except tf.errors.NotFoundError:
      return None

  def _confirm(self, record: dict) -> None:
    """Reads the file back: on object stores a racing writer may have replaced ours."""
    holder = self._read() or {}
    if holder.get("owner") != self.owner:
      raise self._held_error(holder, time.time())
    self._record = record
    self._last_beat = record["heartbeat"]

  def _held_error(self, holder: dict, now: float) -> LeaseHeldError:
    return LeaseHeldError(
        f"{self.model_dir} is in use by another training run ({_describe(holder, now)}); "
        "two trainers writing one MODEL_DIR would corrupt each other's checkpoints. If "
        "that process is still running, wait for it or use another MODEL_DIR. If it is "
        f"gone, pass --force to `instruct-jax train`, or delete {self.path}. (A lease "
        f"whose heartbeat is older than {self.stale_seconds:.0f}s is taken over "
        "automatically.)")
