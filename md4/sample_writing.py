"""Writes samples as files in the workdir and to TensorBoard.

Images become one PNG grid per write (`samples/step_<N>.png`); text becomes
`samples/step_<N>.txt`, one decoded sample per paragraph.
"""

import math
import os

import numpy as np
from PIL import Image

SAMPLE_DIR = "samples"


def image_grid(images: np.ndarray, vocab_size: int) -> np.ndarray:
  """Tiles [N, H, W, C] token images into one uint8 [rows*H, cols*W, C] grid.

  Token values 0..V-1 are mapped linearly to 0..255; a one-pixel dark gap
  separates the cells.
  """
  n, h, w, c = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  scale = 255.0 / max(vocab_size - 1, 1)
  pixels = np.clip(np.rint(images * scale), 0, 255).astype(np.uint8)
  grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h,
         1 + q * (w + 1):1 + q * (w + 1) + w] = pixels[i]
  return grid


def write_samples(workdir: str, step: int, samples: np.ndarray, info,
                  writer=None) -> str:
  """Writes one batch of samples; returns the file's path."""
  directory = os.path.join(workdir, SAMPLE_DIR)
  os.makedirs(directory, exist_ok=True)
  if info.kind == "image":
    grid = image_grid(samples, info.vocab_size)
    path = os.path.join(directory, f"step_{step}.png")
    # Small images (8x8 digits) are enlarged so the grid is legible.
    zoom = max(1, 256 // grid.shape[0])
    big = np.repeat(np.repeat(grid, zoom, 0), zoom, 1)
    mode = "L" if big.shape[-1] == 1 else "RGB"
    Image.fromarray(big[..., 0] if mode == "L" else big, mode).save(path)
    if writer is not None:
      writer.write_images(step, {"samples": big[None]})
    return path
  decode = info.decode or (lambda tokens: " ".join(map(str, tokens)))
  texts = [decode(np.asarray(s).reshape(-1)) for s in samples]
  path = os.path.join(directory, f"step_{step}.txt")
  with open(path, "w") as f:
    f.write("\n\n".join(texts) + "\n")
  if writer is not None:
    writer.write_texts(step, {"samples": "\n\n".join(texts[:4])})
  return path
