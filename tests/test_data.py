"""Tests of md4.data: sources, sharding, checkpointing, config checks.

Everything runs offline on data the tests generate or on scikit-learn's bundled
digits; real MNIST and the E. coli proteome are read from ../shared/data when
that folder exists. The prepared OpenWebText files are tested in
test_prepare_openwebtext.py.
"""

import gzip
import io
import json
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
from md4.data import protein
from md4.data import text8
from md4.data import token_files

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared/data"
SHARED_MNIST = SHARED_DATA / "mnist"
SHARED_PROTEIN = SHARED_DATA / "protein"
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
      path="",
      characters="",
      eval_fraction=0.05,
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


def test_config_path_given_to_a_data_set_that_ignores_it_raises():
  with pytest.raises(ValueError, match="data_config.path is 'x.txt'"):
    build(make_config(path="x.txt"))
  with pytest.raises(ValueError, match="data_config.characters is 'ab'"):
    build(make_config(characters="ab"))


# --- protein -----------------------------------------------------------------

needs_proteome = pytest.mark.skipif(
    not SHARED_PROTEIN.is_dir(),
    reason=f"the E. coli proteome FASTA not found in {SHARED_PROTEIN}",
)
PROTEINS = {
    "sp|P1|SHORT": "MKTAYIAK",
    "sp|P2|LONG": "ACDEFGHIKLMNPQRSTVWY" * 3 + "XBZUO",  # 65 residues
    "sp|P3|STOP": "mkvlaa*",  # lower case and a stop: MKVLAA
}


def write_fasta(path, proteins, width=10):
  lines = []
  for header, sequence in proteins.items():
    lines.append(f">{header} some description")
    lines += [sequence[i : i + width] for i in range(0, len(sequence), width)]
  text = "\n".join(lines) + "\n"
  if path.name.endswith(".gz"):
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


def protein_config(data_dir, **overrides):
  fields = dict(data_dir=str(data_dir), data_shape=(32,), vocab_size=26)
  fields.update(overrides)
  return make_config("protein", **fields)


def test_fasta_records_become_amino_acid_tokens_of_plain_and_gzipped_files(
    tmp_path,
):
  (tmp_path / "protein").mkdir()
  items = list(PROTEINS.items())
  write_fasta(tmp_path / "protein/a.fasta", dict(items[:2]))
  write_fasta(tmp_path / "protein/b.fa.gz", dict(items[2:]))
  files = protein.fasta_files(protein_config(tmp_path))
  tokens, offsets = protein.read_proteins(files)
  assert np.diff(offsets).tolist() == [8, 65, 6]
  tokenizer = protein.Tokenizer()
  assert tokenizer.decode(tokens[offsets[2]:]) == "MKVLAA"
  assert tokens[offsets[1]:offsets[2]][-5:].tolist() == [20, 21, 22, 23, 24]


def test_protein_training_examples_are_random_crops_or_padded_proteins(
    tmp_path,
):
  (tmp_path / "protein").mkdir()
  write_fasta(tmp_path / "protein/p.fasta", PROTEINS)
  config = protein_config(tmp_path, eval_fraction=0.3)
  loaded = protein.load(config)
  assert len(loaded.train) == 2 and len(loaded.eval["valid"]) == 1
  crop = protein.RandomCropOrPad(32)
  long = protein.Tokenizer().encode(PROTEINS["sp|P2|LONG"])
  starts = set()
  for seed in range(20):
    x = crop.random_map(long, np.random.default_rng(seed))["x"]
    assert x.shape == (32,) and x.dtype == np.int32
    start = [i for i in range(len(long) - 31)
             if (long[i : i + 32] == x).all()]
    starts.add(start[0])
  assert len(starts) > 5
  short = crop.random_map(long[:8], np.random.default_rng(0))["x"]
  assert short[:8].tolist() == long[:8].tolist()
  assert (short[8:] == protein.PAD).all()


def test_protein_eval_examples_are_the_first_residues_then_padding(tmp_path):
  (tmp_path / "protein").mkdir()
  write_fasta(tmp_path / "protein/p.fasta", PROTEINS)
  datasets = build(protein_config(tmp_path, eval_fraction=0.3), batch=2,
                   eval_batch=2)
  (batch,) = list(datasets.eval["valid"]())
  text = datasets.info.decode(batch["x"][0])
  assert text in {s.upper().rstrip("*")[:32] for s in PROTEINS.values()}


def test_protein_character_outside_the_alphabet_names_file_and_protein(
    tmp_path,
):
  (tmp_path / "protein").mkdir()
  write_fasta(tmp_path / "protein/p.fasta", {"gappy": "MKV-LA"})
  with pytest.raises(ValueError, match=r"p.fasta, protein 'gappy.*'-'"):
    build(protein_config(tmp_path))


def test_missing_protein_fasta_says_where_to_put_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "protein")):
    build(protein_config(tmp_path))


@needs_proteome
def test_ecoli_proteome_loads_with_a_seeded_split_of_its_4363_proteins():
  config = protein_config(SHARED_DATA, data_shape=(128,))
  loaded = protein.load(config)
  assert len(loaded.train) + len(loaded.eval["valid"]) == 4363
  assert len(loaded.eval["valid"]) == round(4363 * 0.05)
  again = protein.load(config)
  valid = [loaded.eval["valid"][i]["x"] for i in range(5)]
  for i, x in enumerate(valid):
    np.testing.assert_array_equal(again.eval["valid"][i]["x"], x)
  batch = next(iter(build(config, batch=16).train))
  assert batch["x"].shape == (16, 128)
  assert 0 <= batch["x"].min() and batch["x"].max() <= protein.PAD
  assert (batch["x"][:, 0] != protein.PAD).all()


@needs_proteome
def test_ecoli_proteome_restored_iterator_redraws_the_same_crops():
  config = protein_config(SHARED_DATA, data_shape=(64,))
  iterator = iter(build(config, batch=8).train)
  take(iterator, 2)
  state = iterator.get_state()
  expected = take(iterator, 2)
  restored = iter(build(config, batch=8).train)
  restored.set_state(state)
  for want, got in zip(expected, take(restored, 2)):
    np.testing.assert_array_equal(want["x"], got["x"])


# --- users' token arrays -----------------------------------------------------


def tokens_config(path, **overrides):
  fields = dict(data_dir=str(path.parent), path=path.name,
                data_shape=(16,), vocab_size=100)
  fields.update(overrides)
  return make_config("tokens", **fields)


def write_npy_records(path, rows):
  """An ArrayRecord file whose records are .npy bytes, one row each."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for row in rows:
    buffer = io.BytesIO()
    np.save(buffer, row)
    writer.write(buffer.getvalue())
  writer.close()


def all_real(batches):
  return np.concatenate([b["x"][b["weight"] > 0] for b in batches])


def test_token_directory_with_split_files_reads_npy_and_array_record(
    tmp_path,
):
  directory = tmp_path / "mine"
  directory.mkdir()
  stream = np.arange(100, dtype=np.uint16) % 100  # 6 examples of 16
  rows = (np.arange(4 * 40).reshape(4, 40) % 100).astype(np.int32)
  np.save(directory / "train-a.npy", stream)
  np.save(directory / "train-b.npy", rows)  # 2 examples per row
  write_npy_records(directory / "valid.array_record", rows[:3, :32])
  loaded = token_files.load_tokens(tokens_config(directory))
  assert len(loaded.train) == 6 + 8 and list(loaded.eval) == ["valid"]
  np.testing.assert_array_equal(loaded.train[1]["x"], stream[16:32])
  np.testing.assert_array_equal(loaded.train[6 + 3]["x"], rows[1, 16:32])
  datasets = build(tokens_config(directory), batch=4, eval_batch=4)
  np.testing.assert_array_equal(
      all_real(datasets.eval["valid"]()), rows[:3, :32].reshape(6, 16))
  assert datasets.info.decode(np.array([1, 2, 30])) == "1 2 30"


def test_token_directory_without_split_files_holds_out_a_seeded_share(
    tmp_path,
):
  directory = tmp_path / "mine"
  directory.mkdir()
  np.save(directory / "all.npy", np.arange(1600) % 1000)  # 100 examples
  config = tokens_config(directory, eval_fraction=0.1, vocab_size=1000)
  loaded = token_files.load_tokens(config)
  assert len(loaded.train) == 90 and len(loaded.eval["valid"]) == 10
  train = {loaded.train[i]["x"].tobytes() for i in range(90)}
  valid = {loaded.eval["valid"][i]["x"].tobytes() for i in range(10)}
  assert len(train | valid) == 100 and not train & valid
  again = token_files.load_tokens(config)
  assert valid == {again.eval["valid"][i]["x"].tobytes() for i in range(10)}


def test_token_directory_two_processes_get_disjoint_examples(tmp_path):
  directory = tmp_path / "mine"
  directory.mkdir()
  np.save(directory / "train.npy", np.arange(64 * 16).reshape(64, 16) % 1000)
  np.save(directory / "valid.npy", np.zeros((4, 16), np.int32))
  config = tokens_config(directory, vocab_size=1000)
  parts = [
      next(iter(build_for_process(p, config, batch=64).train))["x"]
      for p in range(2)
  ]
  keys = [{x.tobytes() for x in part} for part in parts]
  assert len(keys[0]) == len(keys[1]) == 32 and not keys[0] & keys[1]


def test_token_out_of_range_names_the_file_the_value_and_the_field(
    tmp_path,
):
  directory = tmp_path / "mine"
  directory.mkdir()
  rows = np.ones((8, 16), np.int32)
  rows[-1, 3] = 100  # vocab_size is 100
  np.save(directory / "train.npy", rows)
  np.save(directory / "valid.npy", rows[:2])
  with pytest.raises(ValueError) as error:
    build(tokens_config(directory))
  message = str(error.value)
  assert str(directory / "train.npy") in message
  assert "token value 100" in message and "data_config.vocab_size" in message


def test_token_rows_shorter_than_data_shape_raise_naming_the_file(tmp_path):
  directory = tmp_path / "mine"
  directory.mkdir()
  np.save(directory / "train.npy", np.zeros((4, 8), np.int32))
  with pytest.raises(ValueError, match=r"train.npy has rows of 8 tokens"):
    build(tokens_config(directory))


def test_missing_token_directory_says_to_set_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="data_config.path"):
    build(tokens_config(tmp_path / "absent"))


# --- users' text file ---------------------------------------------------------

TEXT = "Größe matters. Ünïcode is fine; so are numbers 0-9!\n" * 40


def text_config(path, **overrides):
  fields = dict(data_dir=str(path.parent), path=path.name, data_shape=(16,),
                vocab_size=len(set(TEXT)))
  fields.update(overrides)
  return make_config("text_chars", **fields)


def test_text_file_vocabulary_is_its_characters_saved_next_to_it(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(TEXT, encoding="utf-8")
  datasets = build(text_config(path), batch=4, eval_batch=4)
  stored = json.loads((tmp_path / "corpus.txt.vocab.json").read_text())
  assert "".join(stored["characters"]) == "".join(sorted(set(TEXT)))
  batch = next(iter(datasets.train))
  assert batch["x"].shape == (4, 16)
  assert all(datasets.info.decode(x) in TEXT for x in batch["x"])
  valid = "".join(datasets.info.decode(x)
                  for x in all_real(datasets.eval["valid"]()))
  num_train = len(TEXT) - int(len(TEXT) * 0.05)
  assert TEXT[num_train:].startswith(valid) and len(valid) >= 16


def test_text_file_with_characters_from_the_config_uses_their_order(
    tmp_path,
):
  path = tmp_path / "abc.txt"
  path.write_text("abcab" * 200)
  config = text_config(path, characters="cba", vocab_size=3)
  loaded = pipelines.build_datasets(
      config, global_batch_size=2, eval_batch_size=2, seed=0)
  x = next(iter(loaded.train))["x"][0]
  assert set(x.tolist()) <= {0, 1, 2}
  assert loaded.info.decode(np.array([0, 1, 2])) == "cba"
  assert not (tmp_path / "abc.txt.vocab.json").exists()


def test_text_file_vocab_size_mismatch_names_the_right_size(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(TEXT, encoding="utf-8")
  with pytest.raises(ValueError,
                     match=f"set data_config.vocab_size = {len(set(TEXT))}"):
    build(text_config(path, vocab_size=5))


def test_text_file_character_outside_a_stored_vocabulary_raises(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("abab" * 100)
  build(text_config(path, vocab_size=2), batch=2, eval_batch=2)
  path.write_text("abab" * 100 + "z")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    build(text_config(path, vocab_size=2), batch=2, eval_batch=2)


# --- start-up validation ------------------------------------------------------


class _BadSource:
  """Finished examples, one of which breaks the config."""

  def __init__(self, bad_x):
    self._bad_x = bad_x

  def __len__(self):
    return 10

  def __getitem__(self, index):
    return {"x": self._bad_x if index == 9 else np.zeros(4, np.int32)}

  def describe(self, index):
    return f"/data/shard-3.bin record {index}"


@pytest.mark.parametrize(
    "bad_x, expected",
    [
        (np.full(4, 7, np.int32), "token value 7 is outside"),
        (np.full(4, -1, np.int32), "token value -1 is outside"),
        (np.zeros(5, np.int32), "data_config.data_shape is (4,)"),
    ],
)
def test_sample_check_names_the_file_the_value_and_the_field(
    bad_x, expected,
):
  config = make_config("tokens", data_shape=(4,), vocab_size=7)
  with pytest.raises(ValueError) as error:
    sources_check = pipelines.sources.check_sample
    sources_check(_BadSource(bad_x), config, finished=True)
  assert "/data/shard-3.bin record 9" in str(error.value)
  assert expected in str(error.value)
