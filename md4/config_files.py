"""Where `--config=configs/<family>/<dataset>.py` is found.

A config path is read as given when it exists (relative to the working
directory, or absolute). Otherwise a path starting with `configs/` or
`md4/configs/` names one of md4's shipped configs, found in the repository
next to the package (a clone, or `pip install -e .`) or inside the
installed package (`pip install .` ships them as `md4/configs/`), so
`md4-train --config=configs/md4/digits.py` works from any directory.
"""

from collections.abc import Sequence
import os

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The shipped configs: in the repository, then inside an installed package.
SHIPPED_DIRS = (
    os.path.join(os.path.dirname(_PACKAGE_DIR), "configs"),
    os.path.join(_PACKAGE_DIR, "configs"),
)
_PREFIXES = ("configs/", "md4/configs/", "./configs/")


def resolve(path: str) -> str:
  """The file a --config value names (the `:variant` suffix kept).

  Args:
    path: `file.py` or `file.py:variant`.

  Returns:
    `path` itself when the file exists or is not a shipped-config name,
    else the shipped file's absolute path with the same suffix.
  """
  file, sep, variant = path.partition(":")
  if os.path.exists(file) or os.path.isabs(file):
    return path
  relative = file.replace(os.sep, "/")
  for prefix in _PREFIXES:
    if relative.startswith(prefix):
      name = relative[len(prefix) :]
      for directory in SHIPPED_DIRS:
        candidate = os.path.join(directory, name)
        if os.path.exists(candidate):
          return candidate + sep + variant
  return path


def resolve_argv(argv: Sequence[str], flag: str = "config") -> list[str]:
  """argv with `--<flag>=PATH` / `--<flag> PATH` resolved by `resolve`."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(f"--{flag}="):
      out[i] = f"--{flag}=" + resolve(arg[len(flag) + 3 :])
    elif arg == f"--{flag}" and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out
