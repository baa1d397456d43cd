"""Orbax checkpoints of the train state together with the data iterator.

A checkpoint holds `state` (step, parameters, optimizer state, EMA) and
`data` (the grain iterator position), so a resumed run sees exactly the
batches it would have seen. Orbax writes each step to a temporary directory
and renames it when complete, so an interrupted save never replaces the
previous checkpoint.
"""

import os

from etils import epath
import grain.python as grain
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


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


def restore(manager: ocp.CheckpointManager, abstract_state, data_iterator,
            step: int | None = None):
  """Restores state (sharded like abstract_state) and the iterator in place."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.PyGrainCheckpointRestore(data_iterator)))
  return restored.state


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
