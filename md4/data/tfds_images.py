"""Image data sets read through TensorFlow Datasets (TFDS).

TFDS data live in `<data_dir>/tfds`. A data set that is not prepared there is
downloaded and prepared in the ArrayRecord format, which gives random access
(`builder.as_data_source`), so grain can shuffle it without loading it into
memory. A data set prepared earlier in the TFRecord format has no random
access; small ones (CIFAR-10, MNIST) are then read into memory instead.

* `cifar10`: 32x32x3, 256 values, 10 classes; evaluation split "test".
* `imagenet64`: TFDS `downsampled_imagenet/64x64`, 64x64x3, 256 values. That
  TFDS data set has no labels, so `num_classes` is 0 (it is read from the TFDS
  features, so a labelled variant would be picked up). Evaluation split
  "valid" is the TFDS "validation" split (ImageNet's test labels and images
  are not public).
* `class_cond_imagenet64`: TFDS `imagenet2012` (1.28M training, 50,000
  validation images of any size, 1000 classes), each image centre-cropped to
  a square of its short side and area-resized to 64x64x3 (`CentreCropResize`,
  the recipe of upstream MD4's class-conditional ImageNet 64); labels kept. TFDS cannot download ImageNet: the ILSVRC2012 tar files must be put
  in its manual directory first. Evaluation split "valid" is "validation".
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import pathlib
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from md4.data import sources

TFDS_SUBDIR = "tfds"
IMAGE_VOCAB_SIZE = 256
IMAGENET2012 = "imagenet2012"
IMAGENET64_SIZE = 64


class ColumnarExamples:
  """TFDS examples held in memory as columns, indexed like a data source."""

  def __init__(self, name: str, split: str, columns: Mapping[str, np.ndarray]):
    self._name = name
    self._split = split
    self._columns = dict(columns)
    self._length = len(next(iter(self._columns.values())))

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {key: column[index] for key, column in self._columns.items()}

  def __repr__(self) -> str:
    return (
        f"ColumnarExamples(name={self._name!r}, split={self._split!r},"
        f" num_records={self._length})"
    )


def tfds_dir(data_config: Any) -> pathlib.Path:
  """Returns the TFDS data directory, `<data_dir>/tfds`."""
  return pathlib.Path(data_config.data_dir) / TFDS_SUBDIR


def _build_command(name: str, data_dir: pathlib.Path) -> str:
  """The shell command that prepares a TFDS data set where md4 reads it."""
  manual = ""
  if name == IMAGENET2012:
    manual = " --manual_dir=DIR_WITH_ILSVRC2012_TARS"
  return (
      f"tfds build {name} --data_dir={data_dir}"
      f" --file_format=array_record{manual}"
  )


def open_splits(
    name: str,
    splits: Sequence[str],
    data_dir: pathlib.Path,
    *,
    in_memory_ok: bool,
) -> tuple[Any, dict[str, Sequence[dict[str, Any]]]]:
  """Opens TFDS splits as random-access sequences of TFDS examples.

  Args:
    name: TFDS name, e.g. "cifar10" or "downsampled_imagenet/64x64".
    splits: TFDS split names, e.g. ("train", "test").
    data_dir: TFDS data directory.
    in_memory_ok: whether a TFRecord-prepared data set may be read into memory
      (only sensible for small data sets).

  Returns:
    The TFDS `DatasetInfo` and a dict split -> sequence of example dicts.

  Raises:
    FileNotFoundError: if the data set is not prepared and cannot be
      downloaded (e.g. offline).
    ValueError: if it is prepared as TFRecord and `in_memory_ok` is False.
  """
  builder = tfds.builder(name, data_dir=str(data_dir))
  if not builder.is_prepared():
    try:
      builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # TFDS fails in many ways: network, missing deps.
      where = (
          "with ImageNet's ILSVRC2012_img_train.tar and"
          " ILSVRC2012_img_val.tar (from image-net.org) in"
          " DIR_WITH_ILSVRC2012_TARS"
          if name == IMAGENET2012
          else "on a machine with internet access"
      )
      raise FileNotFoundError(
          f"TFDS data set {name!r} is not prepared in {data_dir} and TFDS"
          f" could not download and prepare it ({type(e).__name__}: {e})."
          f" Run `{_build_command(name, data_dir)}` {where} (or prepare it"
          f" elsewhere and copy the data directory's contents to {data_dir});"
          f" data_config.data_dir is {data_dir.parent}."
      ) from e
  try:
    examples = {s: builder.as_data_source(split=s) for s in splits}
  except NotImplementedError as e:  # Prepared as TFRecord: no random access.
    if not in_memory_ok:
      raise ValueError(
          f"TFDS data set {name!r} in {data_dir} is stored as TFRecord, which"
          " has no random access and is too large to read into memory;"
          f" prepare it again with `{_build_command(name, data_dir)}` (after"
          " removing the TFRecord copy)."
      ) from e
    examples = {
        s: ColumnarExamples(
            name, s, tfds.as_numpy(builder.as_dataset(split=s, batch_size=-1))
        )
        for s in splits
    }
  return builder.info, examples


class TfdsImageSource:
  """Turns TFDS image examples into `{"x": int32 [H, W, C], "label": int32}`."""

  def __init__(
      self,
      examples: Sequence[dict[str, Any]],
      *,
      with_label: bool,
      transform: Callable[[np.ndarray], np.ndarray] | None = None,
  ):
    """Wraps a TFDS split.

    Args:
      examples: random-access TFDS examples with "image" (and "label").
      with_label: whether to emit "label".
      transform: applied to each uint8 image `[H, W, C]`; must be picklable
        (grain worker processes receive the source by pickling).
    """
    self._examples = examples
    self._with_label = with_label
    self._transform = transform

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> sources.Example:
    raw = self._examples[index]
    image = np.asarray(raw["image"])  # [H, W, C] uint8
    if self._transform is not None:
      image = self._transform(image)
    example = {"x": image.astype(np.int32)}
    if self._with_label:
      example["label"] = np.asarray(raw["label"], np.int32)
    return example

  def __repr__(self) -> str:
    return (
        f"TfdsImageSource({self._examples!r}, with_label={self._with_label},"
        f" transform={self._transform!r})"
    )


def area_weights(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Which input pixels make each output pixel of an area resize, and how much.

  Output pixel `i` of `size` averages the input interval `[i * n / size,
  (i + 1) * n / size)` of `n` pixels, each input pixel weighted by the length
  it covers (the area filter of OpenCV's INTER_AREA and TensorFlow's "area";
  PIL's BOX filter differs: it weighs whole pixels by their centres).

  Args:
    n: input pixels along the axis.
    size: output pixels along the axis.

  Returns:
    rows: int `[size, k]`, input pixels of each output pixel (padded with
      in-range indices of weight 0).
    weights: float32 `[size, k]`, summing to 1 along `k`.
  """
  scale = n / size
  edges = np.arange(size + 1) * scale  # [size + 1]
  k = int(np.ceil(scale)) + 1  # the most input pixels one output touches
  rows = np.floor(edges[:-1]).astype(np.int64)[:, None] + np.arange(k)
  covered = np.minimum(edges[1:, None], rows + 1) - np.maximum(
      edges[:-1, None], rows
  )  # [size, k]
  weights = np.clip(covered, 0.0, None) / scale
  return np.minimum(rows, n - 1), weights.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CentreCropResize:
  """Centre square crop of the short side, then an area resize (picklable).

  Turns uint8 `[H, W, C]` into uint8 `[size, size, C]`. Numpy only, so grain
  worker processes need no TensorFlow, and as fast as TensorFlow's "area"
  resize (about 1 ms for a 375x500 image on one core, see
  benchmarks/data.py); PIL's BOX filter is faster but not an area average
  (see `area_weights`).
  """

  size: int

  def __call__(self, image: np.ndarray) -> np.ndarray:
    height, width, _ = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top : top + side, left : left + side]  # [S, S, C]
    rows, weights = area_weights(side, self.size)  # [size, k] each
    # Rows, then columns: each output pixel is a weighted sum of its inputs.
    tall = crop[rows].astype(np.float32)  # [size, k, S, C]
    half = np.einsum("ik,ikwc->iwc", weights, tall)  # [size, S, C]
    wide = half[:, rows]  # [size, size, k, C]
    resized = np.einsum("jk,ijkc->ijc", weights, wide)  # [size, size, C]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def num_classes(tfds_info: Any) -> int:
  """Number of label classes in the TFDS features; 0 if there is no label."""
  features = tfds_info.features
  if "label" not in features:
    return 0
  return int(features["label"].num_classes)


def check_image_shape(
    source: TfdsImageSource, expected: tuple[int, ...], dataset: str
) -> None:
  """Checks that the first example has the shape the data set promises."""
  actual = tuple(source[0]["x"].shape)
  if actual != expected:
    raise ValueError(
        f"{dataset} images in TFDS have shape {actual}, expected {expected};"
        " the prepared TFDS data is not the variant md4 expects, check the"
        " TFDS data set name and version in <data_dir>/tfds."
    )


def _load(
    data_config: Any,
    *,
    tfds_name: str,
    eval_splits: Mapping[str, str],
    data_shape: tuple[int, ...],
    in_memory_ok: bool,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> sources.LoadedData:
  """Loads a TFDS image data set; `eval_splits` maps our names to TFDS's.

  `transform` (see `TfdsImageSource`) applies to every split.
  """
  sources.check_matches_config(
      data_config, data_shape=data_shape, vocab_size=IMAGE_VOCAB_SIZE
  )
  tfds_info, examples = open_splits(
      tfds_name,
      ("train", *eval_splits.values()),
      tfds_dir(data_config),
      in_memory_ok=in_memory_ok,
  )
  classes = num_classes(tfds_info)
  train = TfdsImageSource(
      examples["train"], with_label=classes > 0, transform=transform
  )
  check_image_shape(train, data_shape, data_config.dataset)
  return sources.LoadedData(
      info=sources.DataInfo(
          data_shape=data_shape,
          vocab_size=IMAGE_VOCAB_SIZE,
          num_classes=classes,
          kind="image",
          unit="bits_per_dim",
      ),
      train=train,
      eval={
          ours: TfdsImageSource(
              examples[theirs], with_label=classes > 0, transform=transform
          )
          for ours, theirs in eval_splits.items()
      },
  )


def load_cifar10(data_config: Any) -> sources.LoadedData:
  """CIFAR-10: 50,000 training and 10,000 test images, 32x32x3, 10 classes."""
  return _load(
      data_config,
      tfds_name="cifar10",
      eval_splits={"test": "test"},
      data_shape=(32, 32, 3),
      in_memory_ok=True,
  )


def load_imagenet64(data_config: Any) -> sources.LoadedData:
  """Downsampled ImageNet 64x64: 1.28M training, 50,000 validation images."""
  return _load(
      data_config,
      tfds_name="downsampled_imagenet/64x64",
      eval_splits={"valid": "validation"},
      data_shape=(64, 64, 3),
      in_memory_ok=False,
  )


def load_class_cond_imagenet64(data_config: Any) -> sources.LoadedData:
  """ImageNet 2012 at 64x64 with its 1000 labels (see the module doc)."""
  return _load(
      data_config,
      tfds_name=IMAGENET2012,
      eval_splits={"valid": "validation"},
      data_shape=(IMAGENET64_SIZE, IMAGENET64_SIZE, 3),
      in_memory_ok=False,
      transform=CentreCropResize(IMAGENET64_SIZE),
  )
