"""Helpers the fault and bad-input tests share: file-tree hashes and config
mutations."""

import hashlib
import os


def tree_hashes(path: str) -> dict[str, str]:
  """Path relative to `path` -> sha256 of every file below it."""
  out = {}
  for directory, _, files in os.walk(path):
    for name in files:
      full = os.path.join(directory, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def set_fields(**fields):
  """A config mutation `(config, unused) -> None` setting "section__field"
  (or top-level) values."""

  def mutate(config, unused):
    for key, value in fields.items():
      *sections, field = key.split("__")
      node = config
      for section in sections:
        node = node[section]
      node[field] = value

  return mutate
