"""Stop training cleanly on SIGTERM / SIGINT (cluster preemption, Ctrl-C).

The first signal asks the loop to finish its current step, save a checkpoint
and return; a second signal restores the default handler and re-raises, so
it stops the process at once. In a multi-process run every process must
stop at the same step (saving is collective), so the flag is agreed on with
a tiny all-gather.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
  """Context manager turning the first SIGTERM/SIGINT into a stop request."""

  def __init__(self):
    self._requested = threading.Event()
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in _SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def _handle(self, signum, frame):
    del frame
    if self._requested.is_set():  # Second signal: stop now.
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
      return
    self._requested.set()

  @property
  def requested(self) -> bool:
    """True on every process once any process received a signal."""
    local = self._requested.is_set()
    if jax.process_count() == 1:
      return local
    flags = multihost_utils.process_allgather(np.array(local))
    return bool(np.any(flags))
