"""A trained run restored from its workdir: config, model, data, EMA params.

Training writes `<workdir>/config.json` at start-up (`train.save_config`);
this module reads it back over `configuration.default_config()` (so fields
added to md4 since keep their defaults; JSON lists become tuples),
applies command-line overrides such as `data.data_dir=/elsewhere`, rebuilds
the model, data and mesh with `train.build`, and restores the EMA parameters
of the latest (or a chosen) checkpoint.
"""

import ast
from collections.abc import Sequence
import dataclasses
import difflib
import json
import os
from typing import Any

from etils import epath
import ml_collections
import orbax.checkpoint as ocp

from md4 import checkpointing
from md4 import configuration
from md4 import train


@dataclasses.dataclass
class RestoredRun:
  """What `restore` returns.

  Attributes:
    workdir: the run's directory.
    config: its config, with overrides applied.
    setup: `train.build`'s model, data sets, mesh and shardings.
    params: the EMA parameters of the checkpoint.
    step: the checkpoint's training step.
  """
  workdir: str
  config: ml_collections.ConfigDict
  setup: train.Setup
  params: Any
  step: int


def _tuples(value):
  """JSON lists back to tuples, recursively (md4 configs use tuples)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _parse(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A bare string, e.g. data.data_dir=/data.


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets one `section.field=value` (value a Python literal or a string)."""
  if "=" not in override:
    raise ValueError(f"--override={override!r} must look like "
                     "section.field=value, e.g. data.data_dir=/data.")
  key, text = override.split("=", 1)
  *parents, field = key.strip().split(".")
  node = config
  for i, name in enumerate(parents):
    if name not in node or not isinstance(node[name],
                                          ml_collections.ConfigDict):
      raise ValueError(f"--override={override!r}: config has no section "
                       f"{'.'.join(parents[:i + 1])!r}.")
    node = node[name]
  if field not in node:
    near = difflib.get_close_matches(field, list(node.keys()), n=1)
    hint = f" Did you mean {'.'.join(parents + near)!r}?" if near else ""
    raise ValueError(f"--override={override!r}: {key!r} is not a config "
                     f"field.{hint}")
  with node.unlocked():
    node[field] = _parse(text)


def load_config(workdir: str, overrides: Sequence[str] = (),
                ) -> ml_collections.ConfigDict:
  """The config a run saved in its workdir, with overrides applied."""
  path = os.path.join(workdir, train.CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"--workdir={workdir!r} has no {train.CONFIG_FILE}; training writes "
        "it at start-up (md4/main.py). Give the workdir of a training run.")
  with open(path) as f:
    saved = configuration.upgrade_saved(_tuples(json.load(f)))
  # Fields added to md4 after the run was trained take their defaults.
  config = configuration.default_config()
  _merge(config, saved)
  configuration.drop_ignored(config)
  for override in overrides:
    apply_override(config, override)
  return config


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
  """Saved values over the defaults, section by section (network whole)."""
  for key, value in saved.items():
    if (isinstance(value, dict) and key != "network" and key in config
        and isinstance(config[key], ml_collections.ConfigDict)):
      _merge(config[key], value)
    else:
      config[key] = value


def checkpoint_step(manager: ocp.CheckpointManager, step: int | None,
                    workdir: str) -> int:
  """The latest step, or `step` after checking that it was saved."""
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(
        f"--workdir={workdir!r} holds no checkpoint under "
        f"{checkpointing.CHECKPOINT_DIR}/; train first (md4/main.py).")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f"--step={step} was not saved in {workdir!r}; saved "
                     f"steps: {', '.join(map(str, steps))}.")
  return step


def restore(workdir: str, step: int | None = None,
            overrides: Sequence[str] = ()) -> RestoredRun:
  """Rebuilds a run from its workdir and restores its EMA parameters.

  Args:
    workdir: a training run's `--workdir`.
    step: the checkpoint to load; None = the latest.
    overrides: `section.field=value` changes to the saved config.

  Returns:
    The `RestoredRun`.
  """
  config = load_config(workdir, overrides)
  # Reading a run writes nothing to its workdir, so an archived (read-only)
  # run can be sampled and evaluated with the outputs written elsewhere.
  setup = train.build(config, workdir, writable=False)
  manager = ocp.CheckpointManager(
      epath.Path(checkpointing.checkpoint_dir(workdir)).absolute(),
      item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(read_only=True))
  step = checkpoint_step(manager, step, workdir)
  manager.close()
  state = checkpointing.read_state(
      checkpointing.checkpoint_dir(workdir), step, setup.abstract_state,
      f"--workdir={workdir!r}",
      f"Its {train.CONFIG_FILE} no longer describes it; restore that file, "
      "or drop the --override that changed the model shape.")
  return RestoredRun(workdir, config, setup, state.ema_params, step)
