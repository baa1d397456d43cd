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

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':variant'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and "
                               "samples are written; rerun to resume.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a multi-process "
    "run; clusters JAX recognises (SLURM, Open MPI, TPU pods) need no flags.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


# Errors that are the user's to fix (config, data, workdir, divergence):
# reported as one line and exit status 1, with no traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError)


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
  try:
    # The cheap field checks run before the heavy imports (TensorFlow via
    # clu), so a bad config fails within seconds.
    configuration.validate(config)
    if name:
      logging.info("Config:   %s", name)
    from md4 import train  # pylint: disable=g-import-not-at-top
    result = train.train_and_evaluate(config, workdir)
  except USER_ERRORS as e:
    # The traceback, for a bug rather than a bad input: --verbosity=1.
    logging.debug("md4 error", exc_info=True)
    raise SystemExit(f"md4 error: {e}") from e
  logging.debug("Done: %s", result)
  if result["preempted"]:
    return (f"Stopped by a signal at step {result['step']}; checkpoint saved "
            f"in {result['checkpoints']}. Rerun the same command to resume.")
  summary = [f"Finished at step {result['step']}."]
  for key, value in sorted(result["eval"].items()):
    if key.endswith(("bits_per_dim", "perplexity")):
      summary.append(f"  {key}: {value:.4f}")
  summary += [f"  samples:     {result.get('samples', '-')}",
              f"  tensorboard: tensorboard --logdir={result['tensorboard']}",
              f"  checkpoints: {result['checkpoints']}"]
  return "\n".join(summary)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup(flags.FLAGS.verbosity)
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  print(run(_CONFIG.value, _WORKDIR.value, config_name()))


def config_name() -> str:
  """The config file, variant and command-line overrides of this run."""
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  return " ".join([name] + [f"--config.{k}={v}"
                            for k, v in sorted(overrides.items())])


def cli() -> None:
  """The `md4-train` command (and `python md4/main.py`)."""
  app.run(main, argv=config_files.resolve_argv(sys.argv))


if __name__ == "__main__":
  cli()
