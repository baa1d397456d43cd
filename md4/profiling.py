"""A periodic profiler trace of the training loop, for TensorBoard.

With config.train.profile_every = k > 0, process 0 traces the
config.train.profile_steps steps that follow every k-th step with
`jax.profiler.start_trace` / `stop_trace`, into `<workdir>/profile/`
(`TRACE_DIR`; the trace lies under `plugins/profile/<time>/` there). Then
`tensorboard --logdir=<workdir>` shows it in its Profile tab (with the
`tensorboard-plugin-profile` package installed). The first trace begins
after step k, so the first step's compilation is not in it. Each step is
marked with `jax.profiler.StepTraceAnnotation`, which TensorBoard's step
view reads.
"""

import os

from absl import logging
import jax

TRACE_DIR = "profile"


class PeriodicTrace:
  """Starts and stops the trace around the steps to profile.

  Use as a context manager (a trace still running at exit is stopped and
  saved) and call `after_step` once a step is done.
  """

  def __init__(
      self,
      workdir: str,
      every: int,
      num_steps: int,
      last_step: int,
      enabled: bool = True,
  ):
    """Traces num_steps steps after every `every`-th; every = 0 is off.

    Args:
      workdir: the run's workdir; the trace goes to <workdir>/profile/.
      every: k, steps between traces; 0 = no trace.
      num_steps: steps per trace.
      last_step: the run's last step; no trace starts there.
      enabled: False on processes other than 0.
    """
    self.logdir = os.path.join(workdir, TRACE_DIR)
    self._every = every if enabled else 0
    self._num_steps = num_steps
    self._last_step = last_step
    self._stop_after = None  # The last step of the running trace.

  def __enter__(self) -> "PeriodicTrace":
    return self

  def __exit__(self, *exc) -> None:
    if self._stop_after is not None:
      self._stop(None)

  def _stop(self, outputs) -> None:
    jax.block_until_ready(outputs)  # The traced steps' device work.
    jax.profiler.stop_trace()
    logging.info(
        "Profiler trace of steps %d-%d written to %s.",
        self._stop_after - self._num_steps + 1,
        self._stop_after,
        self.logdir,
    )
    self._stop_after = None

  def after_step(self, step: int, outputs=None) -> None:
    """Stops a trace that has covered its steps; starts one after k * every.

    Args:
      step: the number of steps done.
      outputs: arrays of the last step (e.g. the state), waited for before
        the trace stops.
    """
    if self._stop_after is not None and step >= self._stop_after:
      self._stop(outputs)
    if (
        self._every
        and self._stop_after is None
        and step % self._every == 0
        and step < self._last_step
    ):
      jax.profiler.start_trace(self.logdir)
      self._stop_after = step + self._num_steps
