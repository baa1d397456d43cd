"""Tests of the image loaders: MNIST and the TFDS image sets.

MNIST from the real IDX files in ../shared/data when present; the TFDS sets
through `tfds.testing.mock_data` (random images of the data set's features).
"""

import gzip

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_setup import build, make_config, mnist_config, needs_mnist, take
from md4.data import mnist


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
  binary = mnist.load(
      mnist_config("binarized_mnist"), binarized=True
  ).train[0]["x"]
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
  config = mnist_config(data_dir=str(tmp_path), pad_to=32,
                        data_shape=(32, 32, 1))
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

  monkeypatch.setattr(
      tfds.core.DatasetBuilder, "download_and_prepare", offline
  )
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
      "cifar10", data_dir=str(tmp_path), data_shape=(32, 32, 3),
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
