"""Orbax checkpoints of the train state together with the data iterator.

A checkpoint holds `state` (step, parameters, optimizer state, EMA) and
`data` (the grain iterator position), so a resumed run sees exactly the
batches it would have seen. Orbax writes each step to a temporary directory
and renames it when complete, so an interrupted save never replaces the
previous checkpoint: `<step>.orbax-checkpoint-tmp-<n>` directories are
ignored by `latest_step` and restore, and removed at start-up.

A checkpoint that cannot be read (a truncated or garbled file) is moved to
`unreadable_checkpoints/` in the workdir, never deleted, and the next older
one is restored instead.
"""

import os
import re
import shutil

from absl import logging
from etils import epath
import grain.python as grain
import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable_checkpoints"
# What orbax names a step directory while it is being written.
PARTIAL_SAVE = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


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
      logging.warning("Removed %s: a checkpoint save that was interrupted "
                      "before it finished.", path)
  return removed


def estimated_size(abstract_state) -> int:
  """Bytes one checkpoint of this state takes, before compression."""
  return sum(leaf.size * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(abstract_state))


def make_manager(workdir: str, keep: int, keep_period: int,
                 ) -> ocp.CheckpointManager:
  """A manager keeping the last `keep` steps plus every keep_period-th."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, keep_period=keep_period or None, create=True,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      epath.Path(checkpoint_dir(workdir)).absolute(), options=options,
      item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator,
         ) -> None:
  """Saves state and iterator position at `step` (a no-op if it exists)."""
  if step in manager.all_steps():
    return
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.PyGrainCheckpointSave(data_iterator)))
  manager.wait_until_finished()


def _restore_step(manager, step, abstract_state, data_iterator):
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.PyGrainCheckpointRestore(data_iterator)))
  return restored.state


def restore(manager: ocp.CheckpointManager, abstract_state, data_iterator,
            step: int | None = None):
  """Restores state (sharded like abstract_state) and the iterator in place.

  With `step` None, tries the newest checkpoint first; one that cannot be
  read is moved aside (see `set_aside`) with a warning naming it, and the
  next older one is tried.

  Raises:
    ValueError: naming every checkpoint tried when none can be read.
  """
  if step is not None:
    return _restore_step(manager, step, abstract_state, data_iterator)
  failures = []
  for candidate in sorted(manager.all_steps(), reverse=True):
    try:
      state = _restore_step(manager, candidate, abstract_state, data_iterator)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax, tensorstore and grain raise many types for a damaged file.
      path = os.path.join(str(manager.directory), str(candidate))
      failures.append(f"{path}: {type(e).__name__}: {e}")
      logging.warning("Checkpoint %s cannot be read (%s: %s); trying the "
                      "previous one.", path, type(e).__name__, e)
      continue
    if failures and jax.process_index() == 0:
      for candidate_failed in sorted(manager.all_steps()):
        if candidate_failed > candidate:
          set_aside(manager, candidate_failed)
    if failures:
      manager.reload()
    return state
  raise ValueError(
      "no checkpoint in " + str(manager.directory) + " can be read:\n  " +
      "\n  ".join(failures) + "\nMove the damaged step directories away or "
      "choose a new --workdir.")


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves an unreadable step out of the way (never deletes it).

  It goes to `<workdir>/unreadable_checkpoints/<step>[.n]`, so the run can
  save that step again and the damaged files stay for inspection.

  Returns:
    The new path.
  """
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(os.path.dirname(str(manager.directory)),
                            UNREADABLE_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, str(step))
  n = 0
  while os.path.exists(target):
    n += 1
    target = os.path.join(target_dir, f"{step}.{n}")
  os.rename(source, target)
  logging.warning("Moved the unreadable checkpoint %s to %s (kept, not "
                  "deleted); training continues from an older step.",
                  source, target)
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
      "an earlier run or one of its checkpoints/<step> directories.")


def restore_params(path: str, abstract_state):
  """The `state` item (parameters and EMA) of another run's checkpoint."""
  directory, step = find_checkpoint(path)
  manager = ocp.CheckpointManager(
      epath.Path(directory), item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(read_only=True))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored.state
