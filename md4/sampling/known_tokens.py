"""Known tokens for conditional sampling: text prompts, infilling, inpainting.

Text (`text_known`): a template of given text and gaps, encoded with the data
set's tokenizer and laid out from position 0,

    "once upon a time"              a prefix; the rest is generated
    "the cat [12] on the mat"       12 tokens generated between two spans
    "once upon a time[*]the end."   `[*]` takes whatever length makes the
                                    template fill the sequence, so the last
                                    span ends the sequence

Positions after the template are generated. `[N]` and `[*]` are the only
special marks.

Images (`image_known`): a mask of known pixels, either a named region (the
known part: `top`, `bottom`, `left`, `right`, `center`, `border`) or a PNG
file whose white pixels are known, applied to given images (e.g. test-split
examples). Every channel of a known pixel is known.
"""

import re

import numpy as np
from PIL import Image

from md4.sampling import core

GAP = re.compile(r"\[(\d+|\*)\]")
REGIONS = ("top", "bottom", "left", "right", "center", "border")


# ---------------------------------------------------------------- text ----


def character_encoder(info):
  """An encoder inverting a character-level `info.decode`, or None.

  Used when a data set gives no `encode`: if every id decodes to one
  distinct character (text8, protein letters), encoding is the inverse map.
  """
  if info.decode is None:
    return None
  chars = [info.decode(np.array([i])) for i in range(info.vocab_size)]
  if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
    return None
  index = {c: i for i, c in enumerate(chars)}

  def encode(text: str) -> np.ndarray:
    unknown = sorted(set(text) - set(index))
    if unknown:
      raise ValueError(
          f"prompt has characters {unknown} outside the data "
          f"set's alphabet {''.join(chars)!r}."
      )
    return np.array([index[c] for c in text], np.int32)

  return encode


def encoder(info, dataset: str):
  """The data set's `encode`, else the inverse of a character decoder."""
  encode = info.encode or character_encoder(info)
  if encode is None:
    raise ValueError(
        f"the {dataset} data set gives no encoder (DataInfo.encode), so "
        "--prompt/--infill cannot be tokenized; set `encode` in its loader."
    )
  return encode


def text_known(
    template: str,
    encode,
    length: int,
    num_samples: int,
    length_flag: str = "config.data.data_shape",
) -> core.Known:
  """Known tokens [B, L] from a prompt or infilling template (see above).

  `length_flag` names where the length L comes from, for the error of a
  template longer than L.
  """
  pieces = GAP.split(template)
  texts, gaps = pieces[0::2], pieces[1::2]
  encoded = [np.asarray(encode(t), np.int32).reshape(-1) for t in texts]
  if gaps.count("*") > 1:
    raise ValueError(
        f"--infill={template!r} has {gaps.count('*')} [*] gaps;"
        " at most one can stretch to fill the sequence."
    )
  fixed = sum(len(e) for e in encoded) + sum(int(g) for g in gaps if g != "*")
  if fixed > length:
    raise ValueError(
        f"the template {template!r} needs {fixed} tokens but sequences have "
        f"{length} ({length_flag}); shorten it."
    )
  tokens = np.zeros(length, np.int32)
  mask = np.zeros(length, bool)
  position = 0
  for i, piece in enumerate(encoded):
    tokens[position : position + len(piece)] = piece
    mask[position : position + len(piece)] = True
    position += len(piece)
    if i < len(gaps):
      position += length - fixed if gaps[i] == "*" else int(gaps[i])
  return core.Known(
      np.broadcast_to(mask, (num_samples, length)),
      np.broadcast_to(tokens, (num_samples, length)),
  )


# -------------------------------------------------------------- images ----


def region_mask(region: str, height: int, width: int) -> np.ndarray:
  """bool [H, W], True on the known part named by `region`."""
  rows, cols = np.mgrid[:height, :width]
  inner = (
      (rows >= height // 4)
      & (rows < height - height // 4)
      & (cols >= width // 4)
      & (cols < width - width // 4)
  )
  masks = {
      "top": rows < height // 2,
      "bottom": rows >= height // 2,
      "left": cols < width // 2,
      "right": cols >= width // 2,
      "center": inner,
      "border": ~inner,
  }
  if region not in masks:
    raise ValueError(
        f"--inpaint={region!r} is neither a region "
        f"({', '.join(REGIONS)}) nor a .png file."
    )
  return masks[region]


def pixel_mask(spec: str, height: int, width: int) -> np.ndarray:
  """bool [H, W] from a region name or a PNG (white = known).

  A PNG of another size is scaled to [H, W] only when its aspect ratio is
  the images' (e.g. a 16x16 mask for 8x8 images); any other shape would
  be stretched, so it is refused.
  """
  if not spec.lower().endswith(".png"):
    return region_mask(spec, height, width)
  try:
    image = Image.open(spec).convert("L")
  except OSError as e:
    raise ValueError(
        f"--inpaint={spec!r} cannot be read as an image "
        f"({e}); give a PNG whose white pixels are known, or a "
        f"region ({', '.join(REGIONS)})."
    ) from e
  if image.width * height != image.height * width:
    raise ValueError(
        f"--inpaint={spec!r} is {image.width}x{image.height} pixels but the "
        f"images are {width}x{height} (width x height); give a mask of that "
        "size (or a multiple of it)."
    )
  image = image.resize((width, height), Image.NEAREST)
  return np.asarray(image) > 127


def image_known(spec: str, images: np.ndarray) -> core.Known:
  """Known tokens [B, H, W, C]: the pixels of `images` inside the mask."""
  height, width = images.shape[1:3]
  known = pixel_mask(spec, height, width)  # [H, W]
  mask = np.broadcast_to(known[None, :, :, None], images.shape)
  return core.Known(mask, images.astype(np.int32))


def check_known_tokens(known: core.Known, vocab_size: int, flag: str) -> None:
  """Refuses known tokens outside [0, vocab_size), naming the flag."""
  given = np.asarray(known.tokens)[np.asarray(known.mask)]
  if given.size and (given.min() < 0 or given.max() >= vocab_size):
    bad = int(given.min() if given.min() < 0 else given.max())
    raise ValueError(
        f"{flag} gives token id {bad}, outside the model's vocabulary [0, "
        f"{vocab_size}) (config.data.vocab_size); give only ids the run was "
        "trained on."
    )


def split_rows(
    datasets, split: str, count: int, flag: str = "--inpaint_split"
) -> dict[str, np.ndarray]:
  """The first `count` examples of a split: {"x": [n, ...], "label": [n]}.

  `split` is an evaluation split or "train" (the first batches of the
  shuffled training loader); "label" is there when the data has labels.
  `flag` names the command-line flag in the error for an unknown split.
  """
  if split == "train":
    batches = iter(datasets.train)
  elif split in datasets.eval:
    batches = datasets.eval[split]()
  else:
    raise ValueError(
        f"{flag}={split!r} is not a split; valid: train, "
        f"{', '.join(datasets.eval)}."
    )
  rows, found = {}, 0
  for batch in batches:
    real = (
        np.asarray(batch["weight"]) > 0
        if "weight" in batch
        else np.ones(len(batch["x"]), bool)
    )  # [b], padding dropped
    for key in ("x", "label"):
      if key in batch:
        rows.setdefault(key, []).append(np.asarray(batch[key])[real])
    found += int(real.sum())
    if found >= count:
      break
  return {key: np.concatenate(parts)[:count] for key, parts in rows.items()}


def split_examples(datasets, split: str, count: int) -> np.ndarray:
  """The first `count` examples' tokens of a split, [n, ...]."""
  return split_rows(datasets, split, count)["x"]
