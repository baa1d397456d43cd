"""One training run per workdir: a lock file held for the life of the run.

A second run in the same workdir (a resubmitted cluster job, a command
typed twice) would remove the first one's in-flight checkpoint save as
"interrupted" and write its own checkpoints among the other's. So a run
holds `<workdir>/md4.lock` from before it touches the workdir until it
ends:

* The file records the owner: host, PID, the process's start time and
  the command line. The lock itself is an advisory `flock` on that file,
  which the kernel releases when the process dies, however it dies.
* A lock whose owner has gone (SIGKILL, a crashed node) is stale: the next
  run takes it over with a warning naming the old owner. A lock held by a
  live run is refused with one line naming it.
* On the owner's host, a recorded PID that is still alive with the
  recorded start time counts as live even where `flock` is not shared
  (some network file systems), so a run on the same host is never doubled.
* In a multi-process run only process 0 takes the lock; the outcome is
  agreed on by every process, so all of them stop when it is refused.

Released (and the file removed) when the run returns or raises.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Any

from absl import logging

LOCK_FILE = "md4.lock"


class WorkdirLockedError(ValueError):
  """Another live run holds the workdir."""


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_FILE)


def _process_start(pid: int) -> str | None:
  """The kernel's start time of a process (clock ticks since boot), if known.

  Together with the PID it identifies a process: a PID reused later by
  another process has another start time.
  """
  try:
    with open(f"/proc/{pid}/stat") as f:
      # The command name (field 2) may hold spaces; fields after its ')'.
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  """Whether process `pid` (of this host) runs and is the recorded one."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Exists, owned by another user.
  current = _process_start(pid)
  return start is None or current is None or current == start


def owner_record() -> dict[str, Any]:
  """What the lock file says about this process."""
  return {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "process_start": _process_start(os.getpid()),
      "started": (
          datetime.datetime.now().astimezone().isoformat(timespec="seconds")
      ),
      "command": " ".join(sys.argv),
  }


def describe(owner: dict[str, Any]) -> str:
  return (
      f"PID {owner.get('pid')} on host {owner.get('host')}, started "
      f"{owner.get('started')}"
  )


def _read_owner(fd: int) -> dict[str, Any] | None:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 1 << 16).decode("utf-8", "replace")
  try:
    owner = json.loads(text)
  except ValueError:
    return None
  return owner if isinstance(owner, dict) else None


def _refuse(path: str, owner: dict[str, Any] | None) -> WorkdirLockedError:
  who = describe(owner) if owner else "another process"
  return WorkdirLockedError(
      f"the workdir is in use by another md4 run ({who}; lock {path}); wait "
      "for it to finish or stop it, or choose another --workdir."
  )


class WorkdirLock:
  """The held lock of one workdir; use `acquire` and `release`."""

  def __init__(self, workdir: str):
    self.path = lock_path(workdir)
    self._fd: int | None = None
    self.previous_owner: dict[str, Any] | None = None

  def acquire(self) -> None:
    """Takes the lock, taking over a stale one with a warning.

    Raises:
      WorkdirLockedError: naming the owner, when a live run holds it.
    """
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
          if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
          raise _refuse(self.path, _read_owner(fd)) from None
        # The holder before us may have removed the file between our open
        # and our flock: then we hold a lock on a deleted file. Retry.
        try:
          if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
            os.close(fd)
            continue
        except FileNotFoundError:
          os.close(fd)
          continue
        owner = _read_owner(fd)
        if (
            owner
            and owner.get("host") == socket.gethostname()
            and owner.get("pid") != os.getpid()
            and isinstance(owner.get("pid"), int)
            and _alive(owner["pid"], owner.get("process_start"))
        ):
          raise _refuse(self.path, owner)
      except BaseException:
        with contextlib.suppress(OSError):
          os.close(fd)
        raise
      break
    if owner:
      self.previous_owner = owner
      logging.warning(
          "Took over the stale lock %s of a run that ended without releasing "
          "it (%s). If that run is in fact still running, stop this one.",
          self.path,
          describe(owner),
      )
    record = json.dumps(owner_record(), indent=1).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record + b"\n", 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Removes the lock file and releases the lock (idempotent)."""
    if self._fd is None:
      return
    with contextlib.suppress(OSError):
      # Removed while still held, so no one can lock the old file after.
      if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
        os.remove(self.path)
    with contextlib.suppress(OSError):
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


def _agree(ok: bool) -> bool:
  """True on every process when `ok` holds on every process."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


@contextlib.contextmanager
def held(workdir: str, process_index: int = 0):
  """Holds the workdir's lock for the `with` block (process 0 takes it).

  Args:
    workdir: an existing directory.
    process_index: this process; only process 0 takes the lock, and every
      process raises when it is refused.

  Yields:
    The `WorkdirLock` (None on processes other than 0).

  Raises:
    WorkdirLockedError: naming the owner, when another live run holds it.
  """
  lock = WorkdirLock(workdir) if process_index == 0 else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      error = e
  if not _agree(error is None):
    if error is not None:
      raise error
    if lock is not None:
      lock.release()
    raise WorkdirLockedError(
        f"process 0 could not lock the workdir {workdir!r}: another md4 run "
        "uses it (see process 0's message)."
    )
  start = time.monotonic()
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
      logging.info(
          "Released %s after %.0f s.", lock.path, time.monotonic() - start
      )
