r"""Trains an md4 model.

  python md4/main.py --config=configs/md4/digits.py --workdir=./expt
  python md4/main.py --config=configs/md4/openwebtext.py:medium \
      --workdir=./owt --config.train.batch_size=256
  md4-train --config=configs/md4/digits.py --workdir=./expt  # pip install

The console shows md4's start-up summary, progress and results;
`--verbosity=1` adds every library's log (see md4/console.py).
"""

import os
import sys

# `python md4/main.py` puts md4/ rather than the repository on the path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console

console.hide_native_logs()  # Before anything imports TensorFlow.

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from md4 import config_files
from md4 import configuration
from md4 import distributed
from md4 import error_boundary
from md4 import fields
from md4 import metrics

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':variant'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, logs and samples are written; rerun to resume.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 for a multi-process "
    "run; clusters JAX recognises (SLURM, Open MPI, TPU pods) need no flags.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in a multi-process run."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0-based."
)
flags.mark_flags_as_required(["config", "workdir"])


# Errors that are the user's to fix (config, data, workdir, divergence):
# reported as one line and exit status 1, with no traceback.
USER_ERRORS = error_boundary.USER_ERRORS


def run(config, workdir: str, name: str = "") -> str:
  """Trains; returns the summary, or exits non-zero with one clear message.

  Args:
    config: the run's config.
    workdir: where it writes.
    name: the config file and overrides, logged once the config is valid.

  Raises:
    SystemExit: whose message names the problem, for a bad config, bad
      data, an unusable workdir or a diverged run.
  """
  with error_boundary.reported():
    # The cheap field checks run before the heavy imports (TensorFlow via
    # clu), so a bad config fails within seconds.
    configuration.validate(config)
    if name:
      logging.info("Config:   %s", name)
    from md4 import train  # pylint: disable=g-import-not-at-top

    result = train.train_and_evaluate(config, workdir)
  logging.debug("Done: %s", result)
  return summarize(result, config)


def summarize(result: dict, config) -> str:
  """The lines printed at the end of a run."""
  moved = [f"  moved aside: {line}" for line in result.get("set_aside", ())]
  if moved:
    moved.insert(
        0,
        "Unreadable or damaged checkpoints were moved aside "
        "(kept, not deleted); the run resumed from an older one:",
    )
  if result["preempted"]:
    return "\n".join(
        moved
        + [
            f"Stopped by a signal at step {result['step']}; checkpoint saved in"
            f" {result['checkpoints']}. Rerun the same command to resume."
        ]
    )
  if not result.get("trained_steps", 1):
    return "\n".join(
        moved
        + [
            f"Nothing to train: the checkpoint in {result['checkpoints']} is at"
            f" step {result['step']}, not below"
            f" config.train.num_steps={config.train.num_steps}. Raise"
            " config.train.num_steps to train further."
        ]
    )
  summary = moved + [f"Finished at step {result['step']}."]
  if result.get("bad_steps"):
    summary.append(
        f"  non-finite:  {result['bad_steps']} of {result['trained_steps']} "
        "steps had NaN/Inf and were discarded (config.train.max_bad_steps="
        f"{config.train.max_bad_steps}); lower "
        "config.optimizer.learning_rate if this recurs."
    )
  for key, value in sorted(result["eval"].items()):
    if key.endswith(tuple(metrics.LABELS)):
      summary.append(f"  {key}: {value:.4f}")
  summary += [
      f"  samples:     {result.get('samples', '-')}",
      f"  tensorboard: tensorboard --logdir={result['tensorboard']}",
      f"  checkpoints: {result['checkpoints']}",
  ]
  return "\n".join(summary)


def check_config_arguments(argv) -> None:
  """Loads --config and checks its --config.* fields before absl parses them.

  absl and ml_collections report a missing or broken config file and a
  misspelt field with a long traceback; this names the file or the flag and
  the nearest valid field instead.

  Raises:
    error_boundary.UserError: naming the flag and the fix.
  """
  value, flag_names = None, []
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg == "--":
      break
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(args):
      value = args[i + 1]
    elif arg.startswith("--config."):
      flag_names.append(arg[2:].split("=", 1)[0])
  if value is None:
    return  # absl reports the missing required flag.
  path, _, variant = value.partition(":")
  config = load_config_file(path, variant or None, value)
  for name in flag_names:
    check_field(config, name)


def load_config_file(path: str, variant: str | None, value: str):
  """config_recipes.load_file with errors that name the file and the fix."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise error_boundary.UserError(
        f"--config={value}: the config file {path!r} does not exist; give "
        "the path of a config file, e.g. configs/md4/digits.py."
    )
  try:
    spec = importlib.util.spec_from_file_location("md4_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise error_boundary.UserError(
        f"--config={value}: {e.filename} line {e.lineno} is not valid "
        f"Python ({e.msg}); fix the config file."
    ) from e
  except Exception as e:  # pylint: disable=broad-except
    raise error_boundary.UserError(
        f"--config={value}: importing the config file raised "
        f"{type(e).__name__}: {e}{_where(e, path)}; fix the config file.",
    ) from e
  if not callable(getattr(module, "get_config", None)):
    raise error_boundary.UserError(
        f"--config={value}: {path} defines no get_config(arg) function; a "
        "config file returns its ConfigDict from get_config."
    )
  try:
    return module.get_config(variant)
  except ValueError as e:
    # md4's configs reject an unknown variant with a ValueError that lists
    # the valid ones.
    raise error_boundary.UserError(f"--config={value}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise error_boundary.UserError(
        f"--config={value}: get_config({variant!r}) raised "
        f"{type(e).__name__}: {e}{_where(e, path)}; fix the config file.",
    ) from e


def _where(error: BaseException, path: str) -> str:
  """' (path line N)' of the config file's deepest frame in the traceback."""
  import traceback  # pylint: disable=g-import-not-at-top

  lines = [
      f.lineno
      for f in traceback.extract_tb(error.__traceback__)
      if os.path.abspath(f.filename) == os.path.abspath(path)
  ]
  return f" ({path} line {lines[-1]})" if lines else ""


def check_field(config, name: str) -> None:
  """Raises UserError for a --config.a.b flag naming no field of config."""
  node, parts = config, name.split(".")[1:]
  for i, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      section = ".".join(["config"] + parts[:i])
      hint = fields.did_you_mean(part, keys, spell=f"--{section}.{{}}")
      hint = (
          "." + hint
          if hint
          else f"; its fields: {', '.join(sorted(keys))}."
          if keys
          else f"; {section} is a value, not a section."
      )
      raise error_boundary.UserError(
          f"--{name}: {section} has no field {part!r}{hint}"
      )
    node = node[part]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup(flags.FLAGS.verbosity)
  distributed.initialize(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  print(run(_CONFIG.value, _WORKDIR.value, config_name()))


def config_name() -> str:
  """The config file, variant and command-line overrides of this run."""
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  return " ".join(
      [name] + [f"--config.{k}={v}" for k, v in sorted(overrides.items())]
  )


def cli() -> None:
  """The `md4-train` command (and `python md4/main.py`)."""
  error_boundary.run_app(
      main,
      check_argv=check_config_arguments,
      argv=config_files.resolve_argv(sys.argv),
  )


if __name__ == "__main__":
  cli()
