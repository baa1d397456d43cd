"""Writes samples as files (and to TensorBoard during training).

Training: images become one PNG grid per write (`samples/step_<N>.png`); text
becomes `samples/step_<N>.txt`, one decoded sample per paragraph.

`md4.sample` writes into one output directory:

* images: `samples.png` (grid), `known.png` (inpainting: the given pixels,
  unknown ones in the mask colour), `samples.npy`;
* text: `samples.txt` (paragraphs), `samples.jsonl` (one object per sample:
  index, text, tokens, and the prompt when there is one), `samples.npy`;
  texts cut at their end-of-text (`md4.sample --stop_at_eos`) hold only the
  tokens before the cut in .txt and .jsonl (with `length`), while
  `samples.npy` keeps every token and `samples_lengths.npy` the lengths;
* `--reconstruct_from`: the same three kinds of file for `originals`,
  `noised` (masked tokens in `MASK_COLOR` or as the unknown character) and
  `reconstructions` instead of `samples`;
* `--history`: `history.gif` (the denoising process, one frame per recorded
  time) and `history_strip.png` (a few frames side by side, labelled with
  their time). Masked tokens are drawn in `MASK_COLOR` (images) or as the
  tokenizer's unknown character (text).
"""

import json
import math
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

SAMPLE_DIR = "samples"
MASK_COLOR = (214, 40, 40)  # Masked pixels in history frames.
TEXT_WIDTH = 64  # Characters per rendered text line.
_MIN_GRID_SIZE = 256  # Small grids are enlarged to about this many pixels.


def check_output_dir(directory: str, flag: str) -> None:
  """Fails early, naming `flag`, when `directory` cannot be written.

  Writes and removes a probe file, creating the directory for it and
  removing again what it created, so a request refused later leaves nothing
  behind. Run before the slow restore and sampling.
  """
  created = os.path.abspath(directory)  # the topmost directory made here
  while not os.path.exists(os.path.dirname(created)):
    created = os.path.dirname(created)
  made = not os.path.exists(created)
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".md4_write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
    if made:
      for parent in _parents(directory, created):
        os.rmdir(parent)
  except OSError as e:
    raise ValueError(
        f"{directory} cannot be written ({e.strerror}); give {flag}=<a "
        "directory you can write to> (a run's workdir may be read-only).",
    ) from e


def _parents(directory: str, top: str) -> list[str]:
  """`directory` and its ancestors up to and including `top`, deepest first."""
  path, out = os.path.abspath(directory), []
  while True:
    out.append(path)
    if path == top or os.path.dirname(path) == path:
      return out
    path = os.path.dirname(path)


# -------------------------------------------------------------- images ----


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
    grid[
        1 + r * (h + 1) : 1 + r * (h + 1) + h,
        1 + q * (w + 1) : 1 + q * (w + 1) + w,
    ] = pixels[i]
  return grid


def masked_image_grid(images: np.ndarray, vocab_size: int) -> np.ndarray:
  """Like `image_grid` but RGB, with pixels holding a mask token coloured."""
  masked = (images >= vocab_size).any(-1, keepdims=True)  # [N, H, W, 1]
  grey = image_grid(np.where(images >= vocab_size, 0, images), vocab_size)
  rgb = np.repeat(grey, 3, -1) if grey.shape[-1] == 1 else grey[..., :3]
  where = image_grid(masked.astype(np.int32), 2)[..., 0] > 0  # [rows, cols]
  rgb[where] = MASK_COLOR
  return rgb


def enlarge(grid: np.ndarray) -> np.ndarray:
  """Repeats pixels so small grids (8x8 digits) are legible."""
  zoom = max(1, _MIN_GRID_SIZE // grid.shape[0])
  return np.repeat(np.repeat(grid, zoom, 0), zoom, 1)


def to_pil(grid: np.ndarray) -> Image.Image:
  if grid.ndim == 3 and grid.shape[-1] == 1:
    return Image.fromarray(grid[..., 0], "L")
  return Image.fromarray(grid, "RGB")


# ---------------------------------------------------------------- text ----


def decode_all(samples: np.ndarray, info) -> list[str]:
  """One string per sample with the data set's decoder (ids otherwise)."""
  decode = info.decode or (lambda tokens: " ".join(map(str, tokens)))
  return [decode(np.asarray(s).reshape(-1)) for s in samples]


def render_text(texts: list[str], width: int = TEXT_WIDTH) -> np.ndarray:
  """Text blocks rendered as one white uint8 RGB image, blocks separated."""
  lines = []
  for text in texts:
    lines += [text[i : i + width] for i in range(0, max(len(text), 1), width)]
    lines.append("")
  draw_size = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  line_height = 12
  text_width = max(int(draw_size.textlength("M" * width)), 1)
  image = Image.new(
      "RGB", (text_width + 12, line_height * len(lines) + 12), "white"
  )
  canvas = ImageDraw.Draw(image)
  for i, line in enumerate(lines):
    canvas.text((6, 6 + i * line_height), line, fill="black")
  return np.asarray(image)


# ------------------------------------------------------ training writes ---


def write_samples(
    workdir: str, step: int, samples: np.ndarray, info, writer=None
) -> str:
  """Writes one batch of training-time samples; returns the file's path."""
  directory = os.path.join(workdir, SAMPLE_DIR)
  os.makedirs(directory, exist_ok=True)
  if info.kind == "image":
    big = enlarge(image_grid(samples, info.vocab_size))
    path = os.path.join(directory, f"step_{step}.png")
    to_pil(big).save(path)
    if writer is not None:
      writer.write_images(step, {"samples": big[None]})
    return path
  texts = decode_all(samples, info)
  path = os.path.join(directory, f"step_{step}.txt")
  with open(path, "w") as f:
    f.write("\n\n".join(texts) + "\n")
  if writer is not None:
    writer.write_texts(step, {"samples": "\n\n".join(texts[:4])})
  return path


# ------------------------------------------------------- md4.sample -------


def write_sample_files(
    directory: str,
    samples: np.ndarray,
    info,
    *,
    known=None,
    prompt: str = "",
    name: str = "samples",
    lengths: np.ndarray | None = None,
) -> list[str]:
  """Writes md4.sample's outputs (see the module docstring); their paths.

  Files are called `<name>.npy`, `<name>.png` or `<name>.txt` and
  `<name>.jsonl`; tokens equal to the mask id (V) are drawn masked.
  `lengths` (int [N], text only) cuts sample i to its first lengths[i]
  tokens in .txt and .jsonl and is saved as `<name>_lengths.npy`.
  """
  os.makedirs(directory, exist_ok=True)
  paths = [os.path.join(directory, f"{name}.npy")]
  np.save(paths[0], samples)
  if lengths is not None:
    paths.append(os.path.join(directory, f"{name}_lengths.npy"))
    np.save(paths[-1], np.asarray(lengths, np.int32))
    samples = [s[:n] for s, n in zip(np.asarray(samples), lengths)]
  if info.kind == "image":
    paths.append(os.path.join(directory, f"{name}.png"))
    masked = (np.asarray(samples) >= info.vocab_size).any()
    grid = (masked_image_grid if masked else image_grid)(
        samples, info.vocab_size
    )
    to_pil(enlarge(grid)).save(paths[-1])
    if known is not None and np.asarray(known.mask).any():
      given = np.where(known.mask, known.tokens, info.vocab_size)
      paths.append(os.path.join(directory, "known.png"))
      to_pil(
          enlarge(masked_image_grid(given[: len(samples)], info.vocab_size))
      ).save(paths[-1])
    return paths
  texts = decode_all(samples, info)
  paths.append(os.path.join(directory, f"{name}.txt"))
  with open(paths[-1], "w") as f:
    f.write("\n\n".join(texts) + "\n")
  paths.append(os.path.join(directory, f"{name}.jsonl"))
  with open(paths[-1], "w") as f:
    for i, (text, tokens) in enumerate(zip(texts, samples)):
      record = {
          "index": i,
          "text": text,
          "tokens": np.asarray(tokens).reshape(-1).tolist(),
      }
      if lengths is not None:
        record["length"] = len(record["tokens"])
      if prompt:
        record["prompt"] = prompt
      f.write(json.dumps(record) + "\n")
  return paths


def history_frames(
    history: np.ndarray, info, max_samples: int = 16
) -> list[np.ndarray]:
  """One uint8 RGB image per frame of history [F, B, ...] (mask included)."""
  history = history[:, : max_samples if info.kind == "image" else 4]
  if info.kind == "image":
    return [
        enlarge(masked_image_grid(frame, info.vocab_size)) for frame in history
    ]
  return [render_text(decode_all(frame, info)) for frame in history]


def _label(image: np.ndarray, text: str) -> np.ndarray:
  """Adds a white band with `text` above an RGB image."""
  band = Image.new("RGB", (image.shape[1], 14), "white")
  ImageDraw.Draw(band).text((3, 1), text, fill="black")
  return np.concatenate([np.asarray(band), image], axis=0)


def write_history(
    directory: str, history: np.ndarray, info, strip_frames: int = 6
) -> list[str]:
  """Writes history.gif and history_strip.png; returns their paths.

  Frame k of the F frames shows the state at time t = 1 - k / (F - 1).
  """
  os.makedirs(directory, exist_ok=True)
  frames = history_frames(history, info)
  num = len(frames)
  times = np.linspace(1.0, 0.0, num)
  gif = os.path.join(directory, "history.gif")
  pil_frames = [Image.fromarray(f) for f in frames]
  durations = [120] * (num - 1) + [1500]  # Hold the final samples.
  pil_frames[0].save(
      gif,
      save_all=True,
      append_images=pil_frames[1:],
      duration=durations,
      loop=0,
  )
  chosen = np.unique(
      np.linspace(0, num - 1, min(strip_frames, num)).round().astype(int)
  )
  labelled = [_label(frames[k], f"t={times[k]:.2f}") for k in chosen]
  height = max(f.shape[0] for f in labelled)
  width = max(f.shape[1] for f in labelled)
  padded = [
      np.pad(
          f,
          ((0, height - f.shape[0]), (0, width - f.shape[1]), (0, 0)),
          constant_values=255,
      )
      for f in labelled
  ]
  # Images side by side, text panels one above the other.
  axis = 1 if info.kind == "image" else 0
  gap = np.full((height, 4, 3) if axis else (4, width, 3), 255, np.uint8)
  pieces = [p for f in padded for p in (f, gap)][:-1]
  strip = os.path.join(directory, "history_strip.png")
  Image.fromarray(np.concatenate(pieces, axis=axis)).save(strip)
  return [gif, strip]
