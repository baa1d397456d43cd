"""One small trained run (digits:tiny, 6 steps), shared by the sampling and
evaluation tests of a pytest process and removed at exit."""

import atexit
import functools
import importlib.util
import os
import shutil
import tempfile

from md4 import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config():
  spec = importlib.util.spec_from_file_location(
      "digits_config", os.path.join(ROOT, "configs", "md4", "digits.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


@functools.lru_cache(maxsize=None)
def trained_run() -> tuple[str, dict]:
  """(workdir, train_and_evaluate's result) of the shared run."""
  workdir = tempfile.mkdtemp(prefix="md4_trained_digits_")
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  return workdir, train.train_and_evaluate(digits_config(), workdir)
