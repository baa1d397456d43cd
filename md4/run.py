"""A run's set-up: built for training or, read-only, for inference.

* `build(config, workdir)`: validates the config and builds the model, the
  data, the mesh and the shardings (`Setup`); `create_state` the sharded
  initial state. Training (`md4.train`), `md4.sample` and `md4.evaluate`
  all start here.
* The workdir: `config.json` saved at start-up (`save_config`) and checked
  on resume (`check_saved_config`: the same model shape), the
  `restore_from` run's shape, the disk-space preflight, the parameter table
  and the start-up summary.
* `restore(workdir)`: a trained run read back without writing to it
  (`config.json` over today's defaults, a config of an older md4's layout
  upgraded; command-line overrides; the EMA parameters of a checkpoint).

Nothing here imports the loop (`md4.train`) or the commands.
"""

import ast
from collections.abc import Sequence
import dataclasses
import json
import os
import shutil
from typing import Any

from absl import logging
from clu import parameter_overview
from etils import epath
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp

from md4 import checkpointing
from md4 import configuration
from md4 import console
from md4 import fields
from md4 import model as model_lib
from md4 import networks
from md4 import optimizers
from md4 import sharding
from md4.data import pipelines


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any


@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built from a config before any compilation."""

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  rules: tuple
  model: model_lib.DiffusionModel
  optimizer: optax.GradientTransformation
  datasets: pipelines.Datasets
  state_shardings: Any
  abstract_state: Any
  batch_sharding: jax.sharding.NamedSharding


def init_state(model, optimizer, rng) -> TrainState:
  """Boxed (logically partitioned) initial state; run under eval_shape/jit."""
  params = model_lib.init_variables(model, rng)["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      ema_params=params,
  )


def check_workdir(workdir: str) -> None:
  """Fails early, with the path, when the workdir cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per process: processes may share the workdir.
    probe = os.path.join(
        workdir, f".md4_write_test_{jax.process_index()}_{os.getpid()}"
    )
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(
        f"--workdir={workdir!r} is not writable ({e.strerror}); choose a "
        "directory you can write to."
    ) from e


def build(
    config: ml_collections.ConfigDict, workdir: str, writable: bool = True
) -> Setup:
  """Validates the config and builds model, data, mesh and shardings.

  Args:
    config: the run's config.
    workdir: the run's directory.
    writable: check that the workdir can be written (training); False for
      commands that only read a run.
  """
  configuration.validate(config)
  if writable:
    check_workdir(workdir)
  mesh = sharding.make_mesh(config.sharding.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  dp = sharding.data_parallel_size(mesh, rules)
  configuration.check_batch_sizes(
      config, dp, jax.process_count(), f" (mesh {dict(mesh.shape)})"
  )
  datasets = pipelines.build_datasets(
      config.data,
      global_batch_size=config.train.batch_size,
      eval_batch_size=config.train.eval_batch_size,
      seed=config.seed,
  )
  model = model_lib.build_model(config, datasets.info.num_classes)
  optimizer = optimizers.build_optimizer(
      config.optimizer, config.train.num_steps
  )
  # Initialisation runs outside the mesh context: flax reshapes some boxed
  # kernels (DenseGeneral) after creating them, which a sharding constraint
  # on the flat kernel would reject; out_shardings place the result instead.
  boxed = jax.eval_shape(
      lambda r: init_state(model, optimizer, r), jax.random.key(0)
  )
  state_shardings = sharding.tree_shardings(mesh, rules, boxed)
  unboxed = nn.meta.unbox(boxed)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      unboxed,
      state_shardings,
  )
  batch_sharding = sharding.logical_sharding(mesh, rules, (sharding.BATCH,))
  return Setup(
      config,
      mesh,
      rules,
      model,
      optimizer,
      datasets,
      state_shardings,
      abstract_state,
      batch_sharding,
  )


def create_state(setup: Setup, rng) -> TrainState:
  """The initial state, created sharded across the mesh."""
  init = jax.jit(
      lambda r: nn.meta.unbox(init_state(setup.model, setup.optimizer, r)),
      out_shardings=setup.state_shardings,
  )
  return init(rng)


# ------------------------------------------------------- saved config -----

CONFIG_FILE = "config.json"
PARAMETER_TABLE_FILE = "parameters.txt"


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the run's config to `<workdir>/config.json`; returns the path.

  `md4.sample` and `md4.evaluate` rebuild the model from it. Rewritten at
  every start once the state is restored (or initialised), so a resumed run
  records the config it continues with, and a config that cannot resume
  leaves the saved one as it was.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(path + ".tmp", path)
  return path


# Fields that fix the shapes of the saved parameters (or what they mean).
MODEL_SHAPE_FIELDS = (
    "network",
    "data.data_shape",
    "data.vocab_size",
    "model.process",
)
# Network fields that change how the step runs, not the parameters: a
# resumed run may change them freely.
RUNTIME_NETWORK_FIELDS = (
    "dropout_rate",
    "dtype",
    "remat",
    "attention_impl",
    "logits_chunk",
)


def _field(tree: dict, name: str):
  for part in name.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _differences(saved, given, prefix: str) -> list[str]:
  """'field: saved A, given B' for every leaf that differs.

  A key the saved config lacks is a field added to md4 after that run was
  saved; it is not counted as a change.
  """
  if isinstance(saved, dict) and isinstance(given, dict):
    out = []
    for key in sorted(set(saved) & set(given)):
      out += _differences(saved[key], given[key], f"{prefix}.{key}")
    out += [
        f"{prefix}.{key}: saved {saved[key]!r}, not given"
        for key in sorted(set(saved) - set(given))
    ]
    return out
  return (
      [] if saved == given else [f"{prefix}: saved {saved!r}, given {given!r}"]
  )


def write_parameter_table(params, workdir: str) -> str:
  """Writes the parameter table (name, shape, size, mean, std) to the workdir.

  Also logged at --verbosity=1. Returns the path.
  """
  table = parameter_overview.get_parameter_overview(params)
  path = os.path.join(workdir, PARAMETER_TABLE_FILE)
  with open(path, "w") as f:
    f.write(table + "\n")
  logging.debug("Parameters:\n%s", table)
  return path


def log_startup_summary(setup: Setup, workdir: str) -> None:
  """The start-up summary: data and sizes, model, run, devices, workdir."""
  config = setup.config
  lines = console.startup_summary(
      dataset=config.data.dataset,
      info=setup.datasets.info,
      sizes=setup.datasets.sizes,
      process=config.model.process,
      network=config.network.name,
      num_params=networks.count_params(setup.abstract_state.params),
      table_path=os.path.join(os.path.abspath(workdir), PARAMETER_TABLE_FILE),
      devices=[d.platform for d in jax.devices()],
      num_processes=jax.process_count(),
      workdir=workdir,
      train=config.train,
  )
  for line in lines:
    logging.info("%s", line)


def model_shape_changes(
    config: ml_collections.ConfigDict, path: str
) -> list[str]:
  """The model-shape fields in which config differs from a saved config.json.

  Raises:
    OSError, ValueError: if the file cannot be read.
  """
  with open(path) as f:
    saved = json.load(f)
  given = json.loads(config.to_json_best_effort())
  for tree in (saved, given):
    for key in RUNTIME_NETWORK_FIELDS:
      tree.get("network", {}).pop(key, None)
  changes = []
  for name in MODEL_SHAPE_FIELDS:
    changes += _differences(
        _field(saved, name), _field(given, name), f"config.{name}"
    )
  return changes


def check_saved_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir saved with another model shape.

  With config.allow_config_change the changes are only logged; the restore
  then checks that the checkpoint's arrays fit the new config.

  Raises:
    ValueError: naming each differing field, unless
      config.allow_config_change is True.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    changes = model_shape_changes(config, path)
  except (OSError, ValueError) as e:
    if config.allow_config_change:
      logging.warning(
          "%s cannot be read (%s); continuing with the given "
          "config (config.allow_config_change).",
          path,
          e,
      )
      return
    raise ValueError(
        f"{path} cannot be read ({e}); restore it, or pass "
        "--config.allow_config_change=True to overwrite it."
    ) from e
  if changes and config.allow_config_change:
    logging.warning(
        "Continuing %s with a changed config (config.allow_config_change): %s",
        workdir,
        "; ".join(changes),
    )
  elif changes:
    raise ValueError(
        f"--workdir={workdir} holds a run with another model shape ({path}):"
        "\n  "
        + "\n  ".join(changes)
        + "\nUse a new --workdir, or pass "
        "--config.allow_config_change=True to continue with the new config "
        "(possible only where the parameter shapes stay the same)."
    )


def check_restore_from(config: ml_collections.ConfigDict) -> None:
  """Compares config.restore_from's saved config.json with this config.

  Raises:
    ValueError: naming the differing model-shape fields (before any of the
      checkpoint is read).
  """
  if not config.restore_from:
    return
  directory, _ = checkpointing.find_checkpoint(config.restore_from)
  path = os.path.join(os.path.dirname(directory), CONFIG_FILE)
  if not os.path.exists(path):
    return  # A bare checkpoint directory: the restore compares shapes.
  try:
    changes = model_shape_changes(config, path)
  except (OSError, ValueError):
    return
  if changes:
    raise ValueError(
        f"config.restore_from={config.restore_from!r} is a run of another "
        f"model shape ({path}):\n  "
        + "\n  ".join(changes)
        + "\nSet these "
        "fields as that run had them, or restore from a run of this shape."
    )


def disk_space_needed(
    workdir: str, abstract_state, keep_checkpoints: int
) -> tuple[int, int]:
  """(checkpoints still to fit, bytes): keep_checkpoints + 1 in all.

  Orbax writes a new checkpoint before it deletes the oldest kept one, so
  `keep_checkpoints + 1` exist at once; those already saved in the workdir
  use disk space already.
  """
  existing = len(checkpointing.saved_steps(workdir))
  count = max(1, keep_checkpoints + 1 - existing)
  return count, count * checkpointing.estimated_size(abstract_state)


def check_disk_space(
    workdir: str, abstract_state, keep_checkpoints: int = 1
) -> None:
  """Fails up front when the workdir's disk cannot hold the checkpoints."""
  count, needed = disk_space_needed(workdir, abstract_state, keep_checkpoints)
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise ValueError(
        f"--workdir={workdir} has {free / 2**20:.1f} MiB free, but "
        f"{count} more checkpoints of this model (config.train."
        f"keep_checkpoints={keep_checkpoints}, plus the one being written) "
        f"need about {needed / 2**20:.1f} MiB; free disk space, lower "
        "config.train.keep_checkpoints, or choose a --workdir on a larger "
        "disk."
    )


def preflight(setup: Setup, workdir: str) -> None:
  """Checks that need the built setup; run before anything is written."""
  check_saved_config(setup.config, workdir)
  check_restore_from(setup.config)
  check_disk_space(
      workdir, setup.abstract_state, setup.config.train.keep_checkpoints
  )


# ------------------------------------------------------- restore ----


@dataclasses.dataclass
class RestoredRun:
  """What `restore` returns.

  Attributes:
    workdir: the run's directory.
    config: its config, with overrides applied.
    setup: `build`'s model, data sets, mesh and shardings.
    params: the EMA parameters of the checkpoint.
    step: the checkpoint's training step.
  """

  workdir: str
  config: ml_collections.ConfigDict
  setup: Setup
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
    raise ValueError(
        f"--override={override!r} must look like "
        "section.field=value, e.g. data.data_dir=/data."
    )
  key, text = override.split("=", 1)
  *parents, field = key.strip().split(".")
  node = config
  for i, name in enumerate(parents):
    if name not in node or not isinstance(
        node[name], ml_collections.ConfigDict
    ):
      raise ValueError(
          f"--override={override!r}: config has no section "
          f"{'.'.join(parents[:i + 1])!r}."
      )
    node = node[name]
  if field not in node:
    prefix = "".join(f"{name}." for name in parents)
    hint = fields.did_you_mean(field, node.keys(), spell=f"'{prefix}{{}}'")
    raise ValueError(
        f"--override={override!r}: {key!r} is not a config field.{hint}"
    )
  with node.unlocked():
    node[field] = _parse(text)


def load_config(
    workdir: str,
    overrides: Sequence[str] = (),
) -> ml_collections.ConfigDict:
  """The config a run saved in its workdir, with overrides applied."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"--workdir={workdir!r} has no {CONFIG_FILE}; training writes "
        "it at start-up (md4/main.py). Give the workdir of a training run."
    )
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
    if (
        isinstance(value, dict)
        and key != "network"
        and key in config
        and isinstance(config[key], ml_collections.ConfigDict)
    ):
      _merge(config[key], value)
    else:
      config[key] = value


def checkpoint_step(
    manager: ocp.CheckpointManager, step: int | None, workdir: str
) -> int:
  """The latest step, or `step` after checking that it was saved."""
  steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(
        f"--workdir={workdir!r} holds no checkpoint under "
        f"{checkpointing.CHECKPOINT_DIR}/; train first (md4/main.py)."
    )
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(
        f"--step={step} was not saved in {workdir!r}; saved "
        f"steps: {', '.join(map(str, steps))}."
    )
  return step


def restore(
    workdir: str, step: int | None = None, overrides: Sequence[str] = ()
) -> RestoredRun:
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
  setup = build(config, workdir, writable=False)
  manager = ocp.CheckpointManager(
      epath.Path(checkpointing.checkpoint_dir(workdir)).absolute(),
      item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(read_only=True),
  )
  step = checkpoint_step(manager, step, workdir)
  manager.close()
  state = checkpointing.read_state(
      checkpointing.checkpoint_dir(workdir),
      step,
      setup.abstract_state,
      f"--workdir={workdir!r}",
      f"Its {CONFIG_FILE} no longer describes it; restore that file, "
      "or drop the --override that changed the model shape.",
      parts=("ema_params",),  # Sampling and evaluation read only the EMA.
  )
  return RestoredRun(workdir, config, setup, state["ema_params"], step)
