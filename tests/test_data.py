"""Tests of md4.data: sources, sharding, checkpointing, config checks.

Everything runs offline on data the tests generate or on scikit-learn's bundled
digits; real MNIST is read from ../shared/data/mnist when that folder exists.
"""

import gzip
import pathlib
import zipfile

from absl import flags
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from md4.data import digits
from md4.data import mnist
from md4.data import pipelines
from md4.data import text8

SHARED_MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared/data/mnist"
TEXT8_CHARS = 20_000
SEQ_LEN = 64


def make_config(dataset="digits", **overrides):
  fields = dict(
      dataset=dataset,
      data_dir="/nonexistent/md4-test-data",
      data_shape=(8, 8, 1),
      vocab_size=17,
      num_workers=0,
      pad_to=0,
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def build(config, *, batch=32, eval_batch=64, seed=0, **kwargs):
  return pipelines.build_datasets(
      config,
      global_batch_size=batch,
      eval_batch_size=eval_batch,
      seed=seed,
      **kwargs,
  )


def build_for_process(index, config, **kwargs):
  """Builds the data sets as process `index` of two sees them."""
  return build(config, process_index=index, process_count=2, **kwargs)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def image_keys(batches):
  """One hashable key per example (digits images are all distinct)."""
  return [x.tobytes() for b in batches for x in b["x"]]


def real_examples(batches):
  """Unpadded examples of eval batches, as (x bytes, label) keys."""
  return [
      (x.tobytes(), int(label))
      for b in batches
      for x, label, w in zip(b["x"], b["label"], b["weight"])
      if w == 1.0
  ]


def write_text8(data_dir, text):
  path = pathlib.Path(data_dir) / "text8" / "text8.zip"
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("text8", text)
  return path


def text8_config(data_dir, **overrides):
  fields = dict(data_dir=str(data_dir), data_shape=(SEQ_LEN,), vocab_size=27)
  fields.update(overrides)
  return make_config("text8", **fields)


@pytest.fixture(scope="module")
def text8_text():
  rng = np.random.default_rng(123)
  return "".join(rng.choice(list(text8.ALPHABET), TEXT8_CHARS))


@pytest.fixture
def text8_dir(tmp_path, text8_text):
  write_text8(tmp_path, text8_text)
  return tmp_path


@pytest.fixture
def parsed_flags():
  # grain's worker processes read absl flags; main.py parses them via app.run.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# --- digits ------------------------------------------------------------------


def test_digits_batches_have_int32_images_in_vocab_range_and_labels():
  datasets = build(make_config())
  batch = next(iter(datasets.train))
  assert set(batch) == {"x", "label"}
  assert batch["x"].dtype == np.int32 and batch["x"].shape == (32, 8, 8, 1)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (32,)
  assert 0 <= batch["x"].min() and batch["x"].max() < 17
  assert batch["x"].max() == 16  # the full grey range is used
  assert set(batch["label"].tolist()) <= set(range(10))
  assert datasets.info == pipelines.DataInfo(
      data_shape=(8, 8, 1), vocab_size=17, num_classes=10, kind="image"
  )


def test_digits_split_into_1497_train_and_300_disjoint_test_images():
  loaded = digits.load(make_config())
  assert len(loaded.train) == 1497
  assert list(loaded.eval) == ["test"]
  train = {loaded.train[i]["x"].tobytes() for i in range(len(loaded.train))}
  test_batches = list(build(make_config(), eval_batch=128).eval["test"]())
  test = real_examples(test_batches)
  assert len(test) == 300 == len(set(test))
  assert not train & {x for x, _ in test}


def test_same_seed_gives_identical_batches_and_another_seed_another_order():
  config = make_config()
  first = take(iter(build(config, seed=7).train), 3)
  again = take(iter(build(config, seed=7).train), 3)
  other = take(iter(build(config, seed=8).train), 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert image_keys(first) != image_keys(other)


def test_each_epoch_is_a_different_permutation_of_the_training_split():
  # 1497 = 3 * 499: three batches are exactly one epoch.
  iterator = iter(build(make_config(), batch=499).train)
  epoch1, epoch2 = image_keys(take(iterator, 3)), image_keys(take(iterator, 3))
  loaded = digits.load(make_config())
  train = [loaded.train[i]["x"].tobytes() for i in range(len(loaded.train))]
  assert sorted(epoch1) == sorted(train) == sorted(epoch2)
  assert epoch1 != epoch2


def test_restored_iterator_reproduces_the_following_batches():
  loader = build(make_config()).train
  iterator = iter(loader)
  take(iterator, 3)
  state = iterator.get_state()
  expected = take(iterator, 2)
  restored = iter(build(make_config()).train)  # a fresh loader, as on resume
  restored.set_state(state)
  for want, got in zip(expected, take(restored, 2)):
    np.testing.assert_array_equal(want["x"], got["x"])
    np.testing.assert_array_equal(want["label"], got["label"])


def test_eval_iterators_are_fresh_finite_and_deterministic():
  make_batches = build(make_config(), eval_batch=128).eval["test"]
  first, second = list(make_batches()), list(make_batches())
  assert len(first) == 3  # ceil(300 / 128)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["x"], b["x"])
  assert all(b["x"].shape == (128, 8, 8, 1) for b in first)
  assert first[-1]["weight"].dtype == np.float32
  assert first[-1]["weight"].tolist() == [1.0] * 44 + [0.0] * 84


# --- process sharding --------------------------------------------------------


def test_two_processes_get_half_batches_of_disjoint_training_examples():
  # 1496 = 2 * 748: one batch is one process's whole shard for an epoch.
  batches = [
      next(iter(build_for_process(p, make_config(), batch=1496).train))
      for p in range(2)
  ]
  keys = [set(image_keys([b])) for b in batches]
  assert all(b["x"].shape == (748, 8, 8, 1) for b in batches)
  assert len(keys[0]) == len(keys[1]) == 748
  assert not keys[0] & keys[1]


def test_two_processes_cover_the_eval_split_once_with_padding_weighted_zero():
  whole = real_examples(build(make_config(), eval_batch=64).eval["test"]())
  parts = [
      list(build_for_process(p, make_config(), eval_batch=64).eval["test"]())
      for p in range(2)
  ]
  for batches in parts:
    assert len(batches) == 5  # ceil(150 / 32), the same on every process
    assert all(len(b["weight"]) == 32 for b in batches)
    padding = [b["x"][b["weight"] == 0] for b in batches]
    assert sum(len(p) for p in padding) == 5 * 32 - 150
    assert all((p == 0).all() for p in padding)
  union = real_examples(parts[0]) + real_examples(parts[1])
  assert union == whole and len(set(union)) == 300


def test_processes_with_unequal_eval_parts_yield_equally_many_batches(
    text8_dir,
):
  # The valid split has 1000 // 64 = 15 chunks: parts of 7 and 8.
  config = text8_config(text8_dir)
  parts = [
      list(build_for_process(p, config, batch=8, eval_batch=8).eval["valid"]())
      for p in range(2)
  ]
  assert [len(batches) for batches in parts] == [2, 2]
  assert [sum(b["weight"].sum() for b in bs) for bs in parts] == [7, 8]


def test_batch_sizes_not_divisible_by_process_count_raise():
  with pytest.raises(ValueError, match="global_batch_size is 33"):
    build(make_config(), batch=33, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="eval_batch_size is 9"):
    build(make_config(), eval_batch=9, process_index=1, process_count=2)


# --- text8 -------------------------------------------------------------------


def test_text8_splits_are_90_5_5_percent_of_the_characters():
  assert text8.split_sizes(100_000_000) == (90_000_000, 5_000_000, 5_000_000)
  assert text8.split_sizes(TEXT8_CHARS) == (18_000, 1_000, 1_000)


def test_text8_tokenizer_maps_space_to_0_letters_to_1_26_and_round_trips():
  tokenizer = text8.Tokenizer()
  tokens = tokenizer.encode("the cat z")
  assert tokens.dtype == np.int32
  assert tokens.tolist() == [20, 8, 5, 0, 3, 1, 20, 0, 26]
  assert tokenizer.decode(tokens) == "the cat z"
  assert tokenizer.decode(np.array([1, 27, 2])) == "a_b"  # 27: mask id


def test_text8_eval_chunks_are_the_consecutive_complete_pieces_of_each_split(
    text8_dir, text8_text,
):
  datasets = build(text8_config(text8_dir), batch=8, eval_batch=4)
  assert set(datasets.eval) == {"valid", "test"}
  assert datasets.info.kind == "text" and datasets.info.num_classes == 0
  for split, start in (("valid", 18_000), ("test", 19_000)):
    batches = list(datasets.eval[split]())
    chunks = [
        datasets.info.decode(x)
        for b in batches
        for x, w in zip(b["x"], b["weight"])
        if w == 1.0
    ]
    assert len(chunks) == 1000 // SEQ_LEN
    assert all(len(c) == SEQ_LEN for c in chunks)
    assert "".join(chunks) == text8_text[start : start + 15 * SEQ_LEN]


def test_text8_training_crops_come_from_the_train_split_at_random_offsets(
    text8_dir, text8_text,
):
  datasets = build(text8_config(text8_dir), batch=16)
  batches = take(iter(datasets.train), 4)
  assert batches[0]["x"].shape == (16, SEQ_LEN)
  assert batches[0]["x"].dtype == np.int32
  train_text = text8_text[:18_000]
  starts = [
      train_text.find(datasets.info.decode(x)) for b in batches for x in b["x"]
  ]
  assert min(starts) >= 0
  assert any(s % SEQ_LEN for s in starts)


def test_text8_restored_iterator_redraws_the_same_crops(text8_dir):
  iterator = iter(build(text8_config(text8_dir), batch=8).train)
  take(iterator, 3)
  state = iterator.get_state()
  expected = take(iterator, 2)
  restored = iter(build(text8_config(text8_dir), batch=8).train)
  restored.set_state(state)
  for want, got in zip(expected, take(restored, 2)):
    np.testing.assert_array_equal(want["x"], got["x"])


def test_text8_loader_with_a_worker_process_matches_the_in_process_loader(
    text8_dir, parsed_flags,
):
  del parsed_flags
  in_process = take(iter(build(text8_config(text8_dir), batch=8).train), 3)
  config = text8_config(text8_dir, num_workers=1)
  worker = take(iter(build(config, batch=8).train), 3)
  for want, got in zip(in_process, worker):
    np.testing.assert_array_equal(want["x"], got["x"])


def test_text8_characters_outside_the_vocabulary_raise(tmp_path):
  write_text8(tmp_path, "hello World " * 100)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    build(text8_config(tmp_path))


def test_missing_text8_raises_file_not_found_naming_the_path(
    tmp_path, monkeypatch,
):
  def offline(path):
    raise OSError(f"network unreachable, cannot fetch {path.name}")

  monkeypatch.setattr(text8, "download_text8", offline)
  with pytest.raises(FileNotFoundError) as error:
    build(text8_config(tmp_path))
  assert str(tmp_path / "text8" / "text8.zip") in str(error.value)


def test_missing_text8_is_downloaded_to_the_data_dir(
    tmp_path, monkeypatch, text8_text,
):
  def fake_download(path):
    write_text8(path.parent.parent, text8_text)

  monkeypatch.setattr(text8, "download_text8", fake_download)
  datasets = build(text8_config(tmp_path))
  assert next(iter(datasets.train))["x"].shape == (32, SEQ_LEN)


# --- MNIST -------------------------------------------------------------------

needs_mnist = pytest.mark.skipif(
    not SHARED_MNIST.is_dir(),
    reason=f"real MNIST IDX files not found in {SHARED_MNIST}",
)


def mnist_config(dataset="mnist", **overrides):
  fields = dict(
      data_dir=str(SHARED_MNIST.parent), data_shape=(28, 28, 1),
      vocab_size=2 if dataset == "binarized_mnist" else 256,
  )
  fields.update(overrides)
  return make_config(dataset, **fields)


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


# --- config checks -----------------------------------------------------------


@pytest.mark.parametrize(
    "config, field",
    [
        (make_config(vocab_size=16), "data_config.vocab_size is 16"),
        (make_config(data_shape=(8, 8)), "data_config.data_shape is (8, 8)"),
        (make_config("mnist_typo"), "data_config.dataset is 'mnist_typo'"),
        (make_config(pad_to=32), "data_config.pad_to is 32"),
        (make_config("cifar10", data_shape=(32, 32, 3)),
         "data_config.vocab_size is 17"),
        (mnist_config(pad_to=32), "pad_to"),
        (mnist_config(pad_to=20, data_shape=(20, 20, 1)), "pad_to is 20"),
    ],
)
def test_config_that_does_not_match_the_data_raises_naming_the_field(
    config, field,
):
  with pytest.raises(ValueError) as error:
    build(config)
  assert field in str(error.value)


def test_unknown_dataset_error_lists_the_valid_names():
  with pytest.raises(ValueError) as error:
    build(make_config("imagenet"))
  assert all(name in str(error.value) for name in pipelines.DATASET_NAMES)


def test_text8_config_needs_a_one_dimensional_shape_and_27_tokens(text8_dir):
  with pytest.raises(ValueError, match=r"data_shape = \(seq_len,\)"):
    build(text8_config(text8_dir, data_shape=(8, 8)))
  with pytest.raises(ValueError, match="vocab_size = 27"):
    build(text8_config(text8_dir, vocab_size=28))
