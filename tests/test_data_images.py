"""Tests of the image loaders: MNIST and the TFDS image sets.

MNIST from the real IDX files in ../shared/data when present; the TFDS sets
through `tfds.testing.mock_data` (random images of the data set's features).
"""

import gzip
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_setup import build, make_config, mnist_config, needs_mnist, take
from md4 import config_recipes
from md4.data import mnist
from md4.data import tfds_images

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- MNIST -------------------------------------------------------------------


@needs_mnist
def test_mnist_from_idx_files_has_60000_train_and_10000_test_images():
  loaded = mnist.load(mnist_config(), binarized=False)
  assert len(loaded.train) == 60_000 and len(loaded.eval["test"]) == 10_000
  batch = next(iter(build(mnist_config()).train))
  assert batch["x"].shape == (32, 28, 28, 1) and batch["x"].dtype == np.int32
  assert batch["x"].max() == 255 and batch["label"].shape == (32,)


@needs_mnist
def test_binarized_mnist_thresholds_mnist_at_half_intensity():
  grey = mnist.load(mnist_config(), binarized=False).train[0]["x"]
  binary = mnist.load(mnist_config("binarized_mnist"), binarized=True).train[0][
      "x"
  ]
  assert set(np.unique(binary).tolist()) == {0, 1}
  np.testing.assert_array_equal(binary, (grey / 255 > 0.5).astype(np.int32))


@needs_mnist
def test_mnist_pad_to_32_centres_the_image_in_a_zero_border():
  config = mnist_config("binarized_mnist", pad_to=32, data_shape=(32, 32, 1))
  batch = next(iter(build(config).train))
  assert batch["x"].shape == (32, 32, 32, 1)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert (batch["x"][:, border] == 0).all()
  assert batch["x"][:, 2:30, 2:30].max() == 1


def test_mnist_falls_back_to_tfds_when_no_idx_files_exist(tmp_path):
  config = mnist_config(
      data_dir=str(tmp_path), pad_to=32, data_shape=(32, 32, 1)
  )
  with tfds.testing.mock_data(num_examples=6):
    datasets = build(config, batch=4, eval_batch=4)
    batch = next(iter(datasets.train))
    test_batches = list(datasets.eval["test"]())
  assert batch["x"].shape == (4, 32, 32, 1) and batch["label"].shape == (4,)
  assert (batch["x"][:, :2] == 0).all()
  assert [b["weight"].sum() for b in test_batches] == [4, 2]


def test_mnist_missing_everywhere_raises_file_not_found(tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise OSError("network unreachable")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
    build(mnist_config(data_dir=str(tmp_path)))


def test_mnist_with_only_some_idx_files_raises_naming_the_missing(tmp_path):
  (tmp_path / "mnist").mkdir()
  (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
    build(mnist_config(data_dir=str(tmp_path)))


def test_idx_reader_rejects_a_truncated_file(tmp_path):
  path = tmp_path / "images.gz"
  header = bytes([0, 0, 8, 3]) + np.array([2, 28, 28], ">u4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + bytes(28 * 28))  # one image of the two declared
  with pytest.raises(ValueError, match="truncated"):
    mnist.read_idx(path)


# --- TFDS image data sets ----------------------------------------------------


def test_cifar10_from_tfds_gives_labelled_32x32x3_batches(tmp_path):
  config = make_config(
      "cifar10",
      data_dir=str(tmp_path),
      data_shape=(32, 32, 3),
      vocab_size=256,
  )
  with tfds.testing.mock_data(num_examples=10):
    datasets = build(config, batch=4, eval_batch=4)
    iterator = iter(datasets.train)
    batches = take(iterator, 3)  # 10 records: the third crosses an epoch
    test_batches = list(datasets.eval["test"]())
  assert batches[0]["x"].shape == (4, 32, 32, 3)
  assert batches[0]["x"].dtype == np.int32
  assert 0 <= batches[0]["x"].min() and batches[0]["x"].max() < 256
  assert batches[0]["label"].dtype == np.int32
  assert datasets.info.num_classes == 10
  assert [b["weight"].sum() for b in test_batches] == [4, 4, 2]


# --- class-conditional ImageNet 64x64 ------------------------------------------


def blocks_image(rng, outer, vertical):
  """An image whose centre square is 2x2 blocks averaging `means`, framed.

  The square is 128x128, framed by 32-pixel bands of `outer` above and below
  (`vertical`) or left and right, so only an exact centre crop and 2x2 area
  averages give `means` [64, 64, 3] back.
  """
  means = rng.integers(3, 250, (64, 64, 3))
  offsets = np.array([[-3, -1], [1, 3]])[None, :, None, :, None]  # mean 0
  centre = (means[:, None, :, None, :] + offsets).reshape(128, 128, 3)
  band = np.full((32, 128, 3), outer)
  image = np.concatenate([band, centre, band])  # [192, 128, 3]
  if not vertical:
    image = image.transpose(1, 0, 2)  # [128, 192, 3]
    means = means.transpose(1, 0, 2)
  return image.astype(np.uint8), means


@pytest.mark.parametrize("vertical", [True, False])
def test_centre_crop_resize_keeps_the_central_square_of_area_averages(
    vertical,
):
  rng = np.random.default_rng(0)
  image, means = blocks_image(rng, 255, vertical)
  out = tfds_images.CentreCropResize(64)(image)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, means)


def test_area_resize_weights_edge_pixels_by_the_share_they_cover():
  # Side 100 -> 64: output column j covers [1.5625 j, 1.5625 (j + 1)).
  # Columns 0-29 are 0 and the rest 192, so column 19 ([29.6875, 31.25))
  # is 0.8 covered by 192: 153.6 -> 154 (a box filter on pixel centres
  # would give 192).
  image = np.full((100, 100, 1), 192, np.uint8)
  image[:, :30] = 0
  out = tfds_images.CentreCropResize(64)(image)[0, :, 0]
  assert out[:19].tolist() == [0] * 19
  assert out[19] == 154
  assert out[20:].tolist() == [192] * 44
  rng = np.random.default_rng(1)
  noise = rng.integers(0, 256, (97, 150, 3), np.uint8)
  crop = noise[:, 26:123]
  resized = tfds_images.CentreCropResize(64)(noise)
  # An area average keeps the mean (up to rounding each pixel by < 0.5).
  assert abs(resized.mean() - crop.mean()) < 0.5


def test_class_cond_imagenet64_crops_resizes_and_keeps_the_labels(tmp_path):
  config = config_recipes.load_file(
      str(ROOT / "configs/md4/imagenet64.py"), "cond"
  )
  assert config.model.class_conditional
  config.data.data_dir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=6):
    datasets = build(config.data, batch=4, eval_batch=4)
    batch = next(iter(datasets.train))
    valid = list(datasets.eval["valid"]())
    raw = tfds.builder(
        "imagenet2012", data_dir=str(tmp_path / "tfds")
    ).as_data_source(split="validation")
    raw = [raw[i] for i in range(len(raw))]
  assert datasets.info.num_classes == 1000 and datasets.info.kind == "image"
  assert batch["x"].shape == (4, 64, 64, 3) and batch["x"].dtype == np.int32
  assert batch["label"].dtype == np.int32
  assert ((0 <= batch["label"]) & (batch["label"] < 1000)).all()
  # The mock images have arbitrary sizes, none 64x64.
  assert all(r["image"].shape[:2] != (64, 64) for r in raw)
  x = np.concatenate([b["x"][b["weight"] > 0] for b in valid])
  labels = np.concatenate([b["label"][b["weight"] > 0] for b in valid])
  crop = tfds_images.CentreCropResize(64)
  np.testing.assert_array_equal(x, [crop(r["image"]) for r in raw])
  np.testing.assert_array_equal(labels, [r["label"] for r in raw])
