"""MNIST and binarized MNIST, from the original IDX files or from TFDS.

The IDX files (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`) are read from
`<data_dir>/mnist/`. When none of them is there, TFDS `mnist` in
`<data_dir>/tfds` is used (downloaded if possible).

* `mnist`: 28x28x1 grey levels 0..255 (vocab 256), labels 0-9.
* `binarized_mnist`: pixel / 255 > 0.5 -> 1, else 0 (vocab 2), labels 0-9.

`data_config.pad_to = S > 0` pads each image with value 0 to SxS (centred,
the odd pixel going to the bottom/right), e.g. 32 for U-Nets that halve the
resolution several times. Evaluation split: "test".
"""

import dataclasses
import gzip
import pathlib
from typing import Any

import numpy as np

from md4.data import sources
from md4.data import tfds_images

IMAGE_SIZE = 28
NUM_CLASSES = 10
IDX_FILES = {
    # split: (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Binarizes and pads uint8 images `[..., 28, 28, 1]` (picklable)."""

  binarize: bool
  pad_to: int

  def __call__(self, images: np.ndarray) -> np.ndarray:
    if self.binarize:
      images = (images.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)
    if self.pad_to:
      before = (self.pad_to - IMAGE_SIZE) // 2
      after = self.pad_to - IMAGE_SIZE - before
      spatial = [(before, after), (before, after), (0, 0)]
      leading = [(0, 0)] * (images.ndim - 3)
      images = np.pad(images, leading + spatial, constant_values=0)
    return images


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes, e.g. images `[N, 28, 28]`."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  # Header: two zero bytes, the type code, the number of dimensions, then
  # one big-endian uint32 per dimension.
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
    raise ValueError(
        f"{path} is not an IDX file of unsigned bytes (header"
        f" {data[:4].hex()}); replace it with the original MNIST file."
    )
  ndim = data[3]
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(dims)):
    raise ValueError(
        f"{path} declares shape {dims} but holds {len(data) - offset} values;"
        " the file is truncated or corrupt, replace it with the original."
    )
  return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def _expected_shape(data_config: Any) -> tuple[int, int, int]:
  pad_to = int(data_config.pad_to)
  if pad_to and pad_to < IMAGE_SIZE:
    raise ValueError(
        f"data_config.pad_to is {pad_to} but MNIST images are"
        f" {IMAGE_SIZE}x{IMAGE_SIZE}; set pad_to to 0 (no padding) or at"
        f" least {IMAGE_SIZE}."
    )
  size = pad_to or IMAGE_SIZE
  return (size, size, 1)


def _idx_sources(
    directory: pathlib.Path, name: str, preprocess: Preprocess
) -> dict[str, sources.ArraySource]:
  out = {}
  for split, (images_file, labels_file) in IDX_FILES.items():
    images = read_idx(directory / images_file)[..., None]  # [N, 28, 28, 1]
    labels = read_idx(directory / labels_file)  # [N]
    out[split] = sources.ArraySource(
        f"{name}/{split}", preprocess(images), labels.astype(np.int32)
    )
  return out


def _tfds_sources(
    data_config: Any, directory: pathlib.Path, preprocess: Preprocess
) -> dict[str, tfds_images.TfdsImageSource]:
  tfds_dir = tfds_images.tfds_dir(data_config)
  try:
    _, examples = tfds_images.open_splits(
        "mnist", tuple(IDX_FILES), tfds_dir, in_memory_ok=True
    )
  except FileNotFoundError as e:
    names = ", ".join(f for pair in IDX_FILES.values() for f in pair)
    raise FileNotFoundError(
        f"MNIST not found: put the IDX files ({names}) in {directory}, or"
        f" prepared TFDS mnist in {tfds_dir}. Reading TFDS failed: {e}"
    ) from e
  return {
      split: tfds_images.TfdsImageSource(
          examples[split], with_label=True, transform=preprocess
      )
      for split in IDX_FILES
  }


def load(data_config: Any, *, binarized: bool) -> sources.LoadedData:
  """Loads (binarized) MNIST as "train" and "test" sources."""
  data_shape = _expected_shape(data_config)
  vocab_size = 2 if binarized else 256
  sources.check_matches_config(
      data_config,
      data_shape=data_shape,
      vocab_size=vocab_size,
      shape_hint=" (or change data_config.pad_to)",
  )
  name = "binarized_mnist" if binarized else "mnist"
  preprocess = Preprocess(binarize=binarized, pad_to=int(data_config.pad_to))
  directory = pathlib.Path(data_config.data_dir) / "mnist"
  files = [f for pair in IDX_FILES.values() for f in pair]
  missing = [f for f in files if not (directory / f).exists()]
  if not missing:
    splits = _idx_sources(directory, name, preprocess)
  elif len(missing) == len(files):
    splits = _tfds_sources(data_config, directory, preprocess)
  else:
    raise FileNotFoundError(
        f"{directory} has only some of the MNIST IDX files; missing:"
        f" {', '.join(missing)}. Add them (or remove the others to use TFDS)."
    )
  info = sources.DataInfo(
      data_shape=data_shape,
      vocab_size=vocab_size,
      num_classes=NUM_CLASSES,
      kind="image",
      unit="bits_per_dim",
  )
  return sources.LoadedData(
      info=info, train=splits["train"], eval={"test": splits["test"]}
  )
