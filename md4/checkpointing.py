"""Orbax checkpoints of the train state together with the data iterator.

A checkpoint holds `state` (step, parameters, optimizer state, EMA) and
`data` (the grain iterator position), so a resumed run sees exactly the
batches it would have seen. Orbax writes each step to a temporary directory
and renames it when complete, so an interrupted save never replaces the
previous checkpoint: `<step>.orbax-checkpoint-tmp-<n>` directories are
ignored by `latest_step` and restore, and removed at start-up.

Each step directory also holds `md4_digests.json`, a checksum of every
saved array (`md4.checkpoint_integrity`), checked on restore. A checkpoint
that cannot be read (a truncated or garbled file) or whose arrays no longer
match their checksums is moved to `unreadable_checkpoints/` in the workdir,
never deleted, and the next older one is restored instead. A state with NaN
or Inf in any array is never saved.

A save that the disk cannot hold is refused before it starts when the free
space says so; one that fails while writing (a full disk, a quota, a file
over the shell's `ulimit -f`) ends with one error naming the checkpoint that
is kept, its partial directory removed, and orbax's error logs of it hidden.

Before any restore, the shapes in the checkpoint's metadata are compared
with the ones the config builds: a checkpoint of another model shape is
reported as such (never as damaged) and nothing is moved.
"""

from collections.abc import Sequence
import contextlib
import errno
import logging as py_logging
import os
import re
import shutil
import sys
import traceback
from typing import Any
import warnings

from absl import logging
from etils import epath
import grain.python as grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from md4 import checkpoint_integrity

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable_checkpoints"
# What orbax names a step directory while it is being written.
PARTIAL_SAVE = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def saved_steps(workdir: str) -> list[int]:
  """The finished checkpoint steps in a workdir, ascending."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


def remove_partial_saves(workdir: str) -> list[str]:
  """Deletes the temporary directories of saves that never finished.

  Only names of orbax's temporary form (`<step>.orbax-checkpoint-tmp-<n>`)
  are touched; a finalized `<step>` directory never is. Orbax ignores these
  directories anyway; removing them frees their disk space.

  Returns:
    The removed paths.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  removed = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if PARTIAL_SAVE.match(name) and os.path.isdir(path):
      shutil.rmtree(path)
      removed.append(path)
      logging.warning(
          "Removed %s: a checkpoint save that was interrupted "
          "before it finished.",
          path,
      )
  return removed


def estimated_size(abstract_state) -> int:
  """Bytes one checkpoint of this state takes, before compression."""
  return sum(
      leaf.size * leaf.dtype.itemsize
      for leaf in jax.tree.leaves(abstract_state)
  )


def make_manager(
    workdir: str,
    keep: int,
    keep_period: int,
) -> ocp.CheckpointManager:
  """A manager keeping the last `keep` steps plus every keep_period-th."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      keep_period=keep_period or None,
      create=True,
      enable_async_checkpointing=False,
  )
  return ocp.CheckpointManager(
      epath.Path(checkpoint_dir(workdir)).absolute(),
      options=options,
      item_names=("state", "data"),
  )


class ModelShapeError(ValueError):
  """A checkpoint holds arrays of other names or shapes than the config's."""


class NonFiniteStateError(FloatingPointError):
  """The state to save holds NaN or Inf; the previous checkpoints are kept."""


class NoRoomError(ValueError):
  """A save failed for want of disk space; the previous checkpoints are kept."""


# The errors of a disk that cannot take more, and what the user can do.
_NO_ROOM_FIXES = {
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free space within your quota",
    # A file over the process's size limit (with SIGXFSZ ignored).
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}
# How tensorstore, orbax's writer, names the OS error inside its message
# (the quotes backslashed where the message is inside an error's repr).
_OS_ERROR_CODE = re.compile(r"os_error_code=\\?'?(\d+)")


def no_room_errno(error: BaseException | str) -> int | None:
  """ENOSPC, EDQUOT or EFBIG if the error (or its causes) is one, else None.

  Orbax reports a failed write as a ValueError from tensorstore whose text
  holds `[os_error_code='28']`; Python's own writes raise OSError.
  """
  while isinstance(error, BaseException):
    if isinstance(error, OSError) and error.errno in _NO_ROOM_FIXES:
      return error.errno
    for code in _OS_ERROR_CODE.findall(str(error)):
      if int(code) in _NO_ROOM_FIXES:
        return int(code)
    error = error.__cause__ or error.__context__
  if isinstance(error, str):
    for code in _OS_ERROR_CODE.findall(error):
      if int(code) in _NO_ROOM_FIXES:
        return int(code)
  return None


class _HideNoRoomLogs(py_logging.Filter):
  """Drops orbax's error logs (with tracebacks) of a write the disk refused.

  The save raises the same error in the main thread, where it becomes one
  message; orbax's writer threads log it first, a page per thread, and
  asyncio logs each abandoned write's task ("Task exception was never
  retrieved") when it is collected, which can be after the save returned.
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno < py_logging.ERROR or not (
        "orbax" in record.pathname or record.name == "asyncio"
    ):
      return True
    if no_room_errno(record.getMessage()) is not None:
      return False
    return not (
        record.exc_info
        and record.exc_info[1] is not None
        and no_room_errno(record.exc_info[1]) is not None
    )


_HIDE_NO_ROOM_LOGS = _HideNoRoomLogs()
# Orbax logs through absl; asyncio (orbax's event loops) through its own.
_NO_ROOM_LOGGERS = ("absl", "asyncio")


def _is_closed_loop_callback(error) -> bool:
  """A tensorstore write completing into an event loop orbax has closed."""
  if (
      not isinstance(error, RuntimeError)
      or str(error) != "Event loop is closed"
  ):
    return False
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and frames[0].name == "call_soon_threadsafe"


def _hide_closed_loop_callbacks(hook):
  """sys.unraisablehook without the tracebacks of an abandoned save.

  When one write of a save fails, orbax closes the save's event loop while
  tensorstore's other writes are still in flight; each of them then reports
  `RuntimeError: Event loop is closed` as unraisable (hundreds of
  tracebacks, some after the command's error). They say nothing that the
  save's own error does not.
  """

  def unraisablehook(unraisable):
    if not _is_closed_loop_callback(unraisable.exc_value):
      hook(unraisable)

  unraisablehook.md4_hides_closed_loop = True
  return unraisablehook


@contextlib.contextmanager
def _no_room_logs_hidden():
  """Orbax's own reports of a write the disk refused, hidden in the block.

  After a failed save the log filters and the unraisable hook stay: the
  abandoned writes finish (and would print) while the command is ending.
  """
  loggers = [py_logging.getLogger(name) for name in _NO_ROOM_LOGGERS]
  hidden = [
      logger for logger in loggers if _HIDE_NO_ROOM_LOGS not in logger.filters
  ]
  for logger in hidden:
    logger.addFilter(_HIDE_NO_ROOM_LOGS)
  hook = sys.unraisablehook
  if not getattr(hook, "md4_hides_closed_loop", False):
    sys.unraisablehook = _hide_closed_loop_callbacks(hook)
  yield  # An error leaves the filters and the hook in place.
  sys.unraisablehook = hook
  for logger in hidden:
    logger.removeFilter(_HIDE_NO_ROOM_LOGS)


def _last_kept(
    manager: ocp.CheckpointManager, none: str, below: int | None = None
) -> str:
  """Names the newest finished checkpoint (below `below` if given)."""
  steps = [
      s
      for s in ocp.utils.checkpoint_steps(str(manager.directory))
      if below is None or s < below
  ]
  latest = max(steps, default=None)
  return (
      none
      if latest is None
      else f"the last checkpoint, {step_dir(manager, latest)}, is kept"
  )


def remove_partial_save(manager: ocp.CheckpointManager, step: int) -> list[str]:
  """Deletes the temporary directories of `step`'s unfinished save."""
  directory = str(manager.directory)
  removed = []
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return removed
  for name in sorted(os.listdir(directory)):
    if PARTIAL_SAVE.match(name) and name.split(".", 1)[0] == str(step):
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      removed.append(os.path.join(directory, name))
  return removed


def _no_room(manager, step: int, code: int) -> NoRoomError:
  # The failed save's writes that never started are garbage-collected as
  # the command ends, each a "coroutine ... was never awaited" warning.
  warnings.filterwarnings(
      "ignore",
      category=RuntimeWarning,
      message="coroutine '.*' was never awaited",
  )
  removed = remove_partial_save(manager, step)
  partial = "; its partial files were removed" if removed else ""
  kept = _last_kept(manager, "no checkpoint was saved yet", below=step)
  return NoRoomError(
      f"checkpoint {step} could not be written to {manager.directory} "
      f"({os.strerror(code)}){partial}; {kept}. "
      f"{_NO_ROOM_FIXES[code].capitalize()}, then rerun the same command to "
      "resume."
  )


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def shape_differences(state_dir: str, abstract_state) -> list[str] | None:
  """'name: saved S, config T' for every array that differs, or None.

  None means that the checkpoint's metadata cannot be read (a damaged
  checkpoint, which its restore then reports).
  """
  try:
    saved = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir)).tree
  except Exception:  # pylint: disable=broad-except
    return None
  saved = dict(
      zip(checkpoint_integrity.leaf_names(saved), jax.tree.leaves(saved))
  )
  given = dict(
      zip(
          checkpoint_integrity.leaf_names(abstract_state),
          jax.tree.leaves(abstract_state),
      )
  )
  out = []
  # The parameters first: the EMA and optimizer state repeat their shapes.
  names = sorted(
      set(saved) | set(given), key=lambda n: (not n.startswith("params/"), n)
  )
  for name in names:
    if name not in given:
      out.append(f"{name}: saved, not built by this config")
    elif name not in saved:
      out.append(f"{name}: built by this config, not saved")
    elif tuple(getattr(saved[name], "shape", ())) != tuple(given[name].shape):
      out.append(
          f"{name}: saved {tuple(saved[name].shape)}, config "
          f"{tuple(given[name].shape)}"
      )
  return out


def check_shapes(state_dir: str, abstract_state, what: str, fix: str) -> None:
  """Raises ModelShapeError when a checkpoint's arrays differ from the config.

  Args:
    state_dir: a checkpoint's `<step>/state` directory.
    abstract_state: the shapes the config builds.
    what: names the checkpoint in the message, e.g. "the checkpoint ...".
    fix: the advice that ends the message.
  """
  differences = shape_differences(state_dir, abstract_state)
  if not differences:
    return
  listed = "\n  ".join(differences[:6])
  more = len(differences) - 6
  raise ModelShapeError(
      f"{what} holds a model of another shape than this config builds "
      f"({len(differences)} arrays differ):\n  {listed}"
      f"{f'{chr(10)}  ... and {more} more' if more > 0 else ''}\n{fix}"
  )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    data_iterator,
) -> None:
  """Saves state and iterator position at `step` (a no-op if it exists).

  The checksums of the state's arrays are written beside it.

  Raises:
    NonFiniteStateError: if an array holds NaN or Inf (nothing is saved, so
      no finite checkpoint is rotated out for it).
  """
  if step in manager.all_steps():
    return
  summary = checkpoint_integrity.summarize(state)
  if summary.nonfinite:
    latest = manager.latest_step()
    kept = (
        "none was saved yet"
        if latest is None
        else f"{step_dir(manager, latest)} is kept"
    )
    listed = ", ".join(summary.nonfinite[:3])
    more = len(summary.nonfinite) - 3
    raise NonFiniteStateError(
        f"step {step}: the train state holds NaN or Inf in {listed}"
        f"{f' and {more} more arrays' if more > 0 else ''}, so it was not "
        f"saved (the last checkpoint, {kept}). Set "
        "config.train.check_nans=True (discards non-finite steps), lower "
        "config.optimizer.learning_rate or check the data, then rerun."
    )
  _check_room(manager, step, state)
  try:
    with _no_room_logs_hidden():
      manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=grain.PyGrainCheckpointSave(data_iterator),
          ),
      )
      manager.wait_until_finished()
      if jax.process_index() == 0:
        checkpoint_integrity.write(step_dir(manager, step), summary)
  except Exception as e:  # pylint: disable=broad-except
    code = no_room_errno(e)
    if code is None:
      raise
    raise _no_room(manager, step, code) from e


def _check_room(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Refuses a save the disk cannot hold, before orbax starts writing.

  A save that runs out of space fails deep inside orbax's writer threads
  (pages of tracebacks); checked here, it is one message, and the kept
  checkpoints are untouched.
  """
  needed = estimated_size(state)
  free = shutil.disk_usage(str(manager.directory)).free
  if jax.process_count() > 1:  # One decision: saving is collective.
    # In MiB as float32: jax holds no 64-bit integers by default.
    mib = multihost_utils.process_allgather(np.float32(free / 2**20))
    free = int(np.min(mib) * 2**20)
  if free < needed:
    kept = _last_kept(manager, "no checkpoint was saved yet")
    raise NoRoomError(
        f"no room on disk for checkpoint {step} in {manager.directory}: "
        f"{free / 2**20:.1f} MiB free, about {needed / 2**20:.1f} MiB needed "
        f"({kept}); free disk space, then rerun the same command to resume."
    )


def _restore_step(manager, step, abstract_state, data_iterator):
  restored = manager.restore(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.PyGrainCheckpointRestore(data_iterator),
      ),
  )
  checkpoint_integrity.verify(step_dir(manager, step), restored.state)
  return restored.state


RESHAPE_FIX = (
    "A run resumes only into the shapes it was saved with, even with "
    "config.allow_config_change=True. Undo the change of model shape, or "
    "train the new shape in a new --workdir. The checkpoints are intact; "
    "nothing was changed."
)


def restore(
    manager: ocp.CheckpointManager,
    abstract_state,
    data_iterator,
    step: int | None = None,
    moved: list[str] | None = None,
):
  """Restores state (sharded like abstract_state) and the iterator in place.

  With `step` None, tries the newest checkpoint first; one that cannot be
  read, or fails its integrity check, is moved aside (see `set_aside`) with
  a warning naming it, and the next older one is tried.

  Args:
    manager: the run's checkpoint manager.
    abstract_state: shapes and shardings to restore into.
    data_iterator: the grain iterator, set to the saved position.
    step: the step to restore; None = the newest readable one.
    moved: if given, gets one line per checkpoint moved aside (for the
      run's end summary).

  Raises:
    ModelShapeError: if the newest checkpoint holds another model shape
      (nothing is moved).
    ValueError: naming every checkpoint tried when none can be read.
  """
  if step is not None:
    return _restore_step(manager, step, abstract_state, data_iterator)
  failures = []
  for candidate in sorted(manager.all_steps(), reverse=True):
    path = step_dir(manager, candidate)
    check_shapes(
        os.path.join(path, "state"),
        abstract_state,
        f"the checkpoint {path}",
        RESHAPE_FIX,
    )
    try:
      state = _restore_step(manager, candidate, abstract_state, data_iterator)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax, tensorstore and grain raise many types for a damaged file.
      failures.append((candidate, f"{path}: {type(e).__name__}: {e}"))
      logging.warning(
          "Checkpoint %s cannot be read (%s: %s); trying the previous one.",
          path,
          type(e).__name__,
          e,
      )
      continue
    if failures and jax.process_index() == 0:
      for candidate_failed, reason in failures:
        target = set_aside(manager, candidate_failed)
        if moved is not None:
          moved.append(
              f"{step_dir(manager, candidate_failed)} -> {target} "
              f"({reason.split(': ', 1)[1][:200]})"
          )
    if failures:
      manager.reload()
    return state
  failures = [reason for _, reason in failures]
  raise ValueError(
      "no checkpoint in "
      + str(manager.directory)
      + " can be read:\n  "
      + "\n  ".join(failures)
      + "\nMove the damaged step directories away or choose a new --workdir."
  )


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves an unreadable step out of the way (never deletes it).

  It goes to `<workdir>/unreadable_checkpoints/<step>[.n]`, so the run can
  save that step again and the damaged files stay for inspection.

  Returns:
    The new path.
  """
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(
      os.path.dirname(str(manager.directory)), UNREADABLE_DIR
  )
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, str(step))
  n = 0
  while os.path.exists(target):
    n += 1
    target = os.path.join(target_dir, f"{step}.{n}")
  os.rename(source, target)
  logging.warning(
      "Moved the unreadable checkpoint %s to %s (kept, not "
      "deleted); training continues from an older step.",
      source,
      target,
  )
  return target


def find_checkpoint(path: str) -> tuple[str, int]:
  """Resolves a workdir or a checkpoint directory to (manager dir, step).

  Raises:
    FileNotFoundError: naming the path when it holds no checkpoint.
  """
  path = os.path.abspath(path)
  candidates = [checkpoint_dir(path), path]
  for directory in candidates:
    if os.path.isdir(directory):
      steps = ocp.utils.checkpoint_steps(directory)
      if steps:
        return directory, max(steps)
  parent, name = os.path.split(path.rstrip("/"))
  if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return parent, int(name)
  raise FileNotFoundError(
      f"config.restore_from={path!r} holds no checkpoint; give a workdir of "
      "an earlier run or one of its checkpoints/<step> directories."
  )


def read_state(
    directory: str,
    step: int,
    abstract_state,
    what: str,
    fix: str,
    parts: Sequence[str] | None = None,
):
  """The `state` item of a checkpoint, read-only, shape-checked and verified.

  Args:
    directory: a checkpoint manager's directory (`<workdir>/checkpoints`).
    step: the step to read.
    abstract_state: shapes and shardings to restore into.
    what: names the checkpoint's owner in messages, e.g. "--workdir=...".
    fix: advice for a checkpoint of another model shape.
    parts: read only these fields of the state (e.g. `("ema_params",)` for
      sampling: the optimizer state, twice the parameters' size, is then
      never read) and return them as a dict; None reads the whole state.
      The shapes of every field are checked either way, and the digests of
      the fields read.

  Raises:
    ModelShapeError: for a checkpoint of another model shape.
    ValueError: for a checkpoint that fails its integrity check.
  """
  path = os.path.join(directory, str(step))
  check_shapes(
      os.path.join(path, "state"),
      abstract_state,
      f"the checkpoint {path} ({what})",
      fix,
  )
  manager = ocp.CheckpointManager(
      epath.Path(directory).absolute(),
      item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(read_only=True),
  )
  if parts is None:
    state_args = ocp.args.StandardRestore(abstract_state)
  else:
    wanted = {name: getattr(abstract_state, name) for name in parts}
    state_args = ocp.args.PyTreeRestore(
        item=wanted,
        restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
        partial_restore=True,
    )
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=state_args))
  finally:
    manager.close()
  try:
    checkpoint_integrity.verify(path, restored.state, partial=parts is not None)
  except checkpoint_integrity.IntegrityError as e:
    raise ValueError(
        f"{e}; it is damaged. Use another checkpoint (saved steps: "
        f"{', '.join(map(str, sorted(ocp.utils.checkpoint_steps(directory))))})"
        ", or restore the files from a copy."
    ) from e
  return restored.state


def restore_params(path: str, abstract_state) -> dict[str, Any]:
  """{"params", "ema_params"} of another run's checkpoint (no optimizer
  state is read)."""
  directory, step = find_checkpoint(path)
  return read_state(
      directory,
      step,
      abstract_state,
      f"config.restore_from={path!r}",
      "config.restore_from needs a run of the same model shape; point it at "
      "such a run, or change the network fields to match that run's "
      "config.json.",
      parts=("params", "ema_params"),
  )
