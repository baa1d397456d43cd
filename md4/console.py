"""What a person sees in the terminal: md4's own lines, others' on request.

At the default `--verbosity=0` the console shows md4's INFO lines as
`HH:MM:SS message`, and warnings and errors from every library. The INFO
output of orbax, grain, clu, jax and TensorFlow (theirs through absl or
Python logging, and TensorFlow's C++ start-up lines) is hidden; it returns,
in absl's usual format, with `--verbosity=1`.

A training run then prints a start-up summary, one progress line per
`config.train.log_every` steps (`Progress`), one line per evaluation,
sample write and checkpoint, and the end summary.

The entry points call `hide_native_logs(sys.argv)` before anything imports
TensorFlow, and `setup(verbosity)` once the flags are parsed.
"""

from collections.abc import Mapping, Sequence
import logging
import os
import sys
import time

from absl import logging as absl_logging

from md4 import metrics

# Lines from files under these directories are md4's own.
_OWN_DIRS = (os.path.dirname(os.path.abspath(__file__)),)
# Environment variables that quiet TensorFlow's C++ logs, set only when the
# user has not set them. oneDNN's notice is logged whatever the minimum
# level; TensorFlow computes nothing here, so its oneDNN ops are not needed.
QUIET_NATIVE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


def verbosity_in(argv: Sequence[str]) -> int:
  """The value of absl's --verbosity (or -v) in a command line; 0 if absent."""
  value = "0"
  args = list(argv[1:])
  for i, arg in enumerate(args):
    for name in ("--verbosity", "-v", "--v"):
      if arg == name and i + 1 < len(args):
        value = args[i + 1]
      elif arg.startswith(name + "="):
        value = arg[len(name) + 1 :]
  try:
    return int(value)
  except ValueError:
    return 0


def hide_native_logs(argv: Sequence[str] | None = None) -> None:
  """Quiets TensorFlow's C++ INFO lines unless --verbosity >= 1.

  Must run before TensorFlow is imported (clu imports it).

  Args:
    argv: the command line; default sys.argv.
  """
  if verbosity_in(sys.argv if argv is None else argv) < 1:
    for key, value in QUIET_NATIVE_ENV.items():
      os.environ.setdefault(key, value)


class _OwnInfoOnly(logging.Filter):
  """Passes warnings and errors, and INFO only from md4's own files."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = os.path.abspath(record.pathname)
    return any(path.startswith(d + os.sep) for d in _OWN_DIRS)


class _ShortFormatter(logging.Formatter):
  """`HH:MM:SS message`; warnings and errors name their level."""

  def format(self, record: logging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
    text = f"{stamp} {level}{record.getMessage()}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


def setup(verbosity: int) -> None:
  """Shapes the console for a command; call it after the flags are parsed.

  Args:
    verbosity: absl's --verbosity. Below 1, only md4's INFO lines (short
      format) and everyone's warnings; 1 or more, everything, absl format.
  """
  handler = absl_logging.get_absl_handler()
  for f in list(handler.filters):
    if isinstance(f, _OwnInfoOnly):
      handler.removeFilter(f)
  if verbosity >= 1:
    handler.setFormatter(absl_logging.PythonFormatter())
    return
  handler.addFilter(_OwnInfoOnly())
  handler.setFormatter(_ShortFormatter())


# ----------------------------------------------------------- training -----


def duration(seconds: float) -> str:
  """'42s', '7m05s', '3h12m'."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
  """The per-`log_every` training line: step, loss, unit, steps/s, ETA.

  Steps/s is the rate since the previous line; the ETA divides the steps
  left by the mean rate since `start` (the first step after compiling), so
  it includes the time evaluations, samples and checkpoints take.
  """

  def __init__(self, num_steps: int, unit: str, clock=time.monotonic):
    self._num_steps = num_steps
    self._unit = unit
    self._clock = clock
    self._start = None  # (step, time) of `start`.
    self._last = None  # (step, time) of the previous line, or of start.

  def start(self, step: int) -> None:
    """Marks `step` done at the time rates are measured from."""
    self._start = self._last = (step, self._clock())

  def line(self, step: int, scalars: Mapping[str, float]) -> str:
    """The progress line at `step` from its train metrics (floats)."""
    parts = [f"step {step}/{self._num_steps}"]
    if "loss" in scalars:
      parts.append(f"loss {scalars['loss']:.4g}")
    if "bits_per_dim" in scalars:
      value = metrics.from_bits_per_dim(self._unit, scalars["bits_per_dim"])
      parts.append(f"{metrics.LABELS[self._unit]} {value:.4f}")
    now = self._clock()
    if self._last is not None and step > self._last[0] and now > self._last[1]:
      rate = (step - self._last[0]) / (now - self._last[1])
      mean_rate = (step - self._start[0]) / (now - self._start[1])
      parts.append(f"{rate:.3g} steps/s")
      parts.append(f"ETA {duration((self._num_steps - step) / mean_rate)}")
    self._last = (step, now)
    return "  ".join(parts)


def eval_line(step: int, results: Mapping[str, float], unit: str) -> str:
  """'step 1000 eval: test bits/dim 1.8012' over every evaluated split."""
  parts = []
  for key, value in results.items():
    split, _, name = key.partition("/")
    if name == "bits_per_dim":
      shown = metrics.from_bits_per_dim(unit, value)
      parts.append(f"{split} {metrics.LABELS[unit]} {shown:.4f}")
  return f"step {step} eval (EMA): " + (", ".join(parts) or "no splits")


def count(n: int) -> str:
  return f"{n:,}"


def startup_summary(
    *,
    dataset: str,
    info,
    sizes: Mapping[str, int],
    process: str,
    network: str,
    num_params: int,
    table_path: str,
    devices: Sequence[str],
    num_processes: int,
    workdir: str,
    train,
) -> list[str]:
  """The start-up lines of a training run (data, model, run, devices).

  Args:
    dataset: config.data.dataset.
    info: the data set's `DataInfo`.
    sizes: split -> number of records ("train" and the evaluation splits).
    process: config.model.process.
    network: config.network.name.
    num_params: parameters of the model.
    table_path: where the parameter table is written.
    devices: the platform of each device, e.g. ["cpu"].
    num_processes: jax.process_count().
    workdir: the run's directory.
    train: config.train.

  Returns:
    Lines to log, one each.
  """
  shape = "x".join(map(str, info.data_shape))
  what = "images" if info.kind == "image" else "tokens"
  split_sizes = ", ".join(f"{k} {count(v)}" for k, v in sizes.items())
  platforms = sorted(set(devices))
  device_text = (
      ", ".join(f"{devices.count(p)} {p}" for p in platforms) or "none"
  )
  return [
      (
          f"Data:     {dataset}, {shape} {what} of {count(info.vocab_size)} "
          f"values; examples: {split_sizes}"
      ),
      (
          f"Model:    {process}, {network} network, {count(num_params)} "
          f"parameters (table: {table_path})"
      ),
      (
          f"Run:      {count(train.num_steps)} steps of batch "
          f"{count(train.batch_size)}; eval every {count(train.eval_every)}, "
          f"samples every {count(train.sample_every)}, checkpoint every "
          f"{count(train.checkpoint_every)}"
      ),
      f"Devices:  {device_text} device(s), {num_processes} process(es)",
      f"Workdir:  {os.path.abspath(workdir)}",
  ]
