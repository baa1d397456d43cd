"""Small data files the tests write for themselves."""

import os
import zipfile

import numpy as np

WORDS = ["the", "of", "and", "one", "zero", "nine", "in", "a", "to", "is"]


def write_text8(data_dir: str, n: int = 40_000, seed: int = 0) -> str:
  """A text8-style zip of n characters at data_dir/text8/text8.zip."""
  rng = np.random.default_rng(seed)
  text = " ".join(rng.choice(WORDS, size=n // 3))[:n]
  os.makedirs(os.path.join(data_dir, "text8"), exist_ok=True)
  path = os.path.join(data_dir, "text8", "text8.zip")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("text8", text)
  return path
