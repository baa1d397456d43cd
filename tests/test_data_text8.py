"""Tests of the text8 loader on a generated text8-style zip."""

import pathlib
import zipfile

from absl import flags
import numpy as np
import pytest

from data_setup import assert_restore_continues, build, build_for_process
from data_setup import make_config, take
from md4.data import text8

TEXT8_CHARS = 20_000
SEQ_LEN = 64


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
    text8_dir,
    text8_text,
):
  datasets = build(text8_config(text8_dir), batch=8, eval_batch=4)
  assert set(datasets.eval) == {"valid", "test"}
  assert datasets.info.kind == "text" and datasets.info.num_classes == 0
  assert datasets.info.unit == "bits_per_char"
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
    text8_dir,
    text8_text,
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
  assert_restore_continues(
      lambda: build(text8_config(text8_dir), batch=8).train
  )


@pytest.mark.slow
def test_text8_loader_with_a_worker_process_matches_the_in_process_loader(
    text8_dir,
    parsed_flags,
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
    tmp_path,
    monkeypatch,
):
  def offline(path):
    raise OSError(f"network unreachable, cannot fetch {path.name}")

  monkeypatch.setattr(text8, "download_text8", offline)
  with pytest.raises(FileNotFoundError) as error:
    build(text8_config(tmp_path))
  assert str(tmp_path / "text8" / "text8.zip") in str(error.value)


def test_missing_text8_is_downloaded_to_the_data_dir(
    tmp_path,
    monkeypatch,
    text8_text,
):
  def fake_download(path):
    write_text8(path.parent.parent, text8_text)

  monkeypatch.setattr(text8, "download_text8", fake_download)
  datasets = build(text8_config(tmp_path))
  assert next(iter(datasets.train))["x"].shape == (32, SEQ_LEN)


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


def test_text8_config_needs_a_one_dimensional_shape_and_27_tokens(text8_dir):
  with pytest.raises(ValueError, match=r"data_shape = \(seq_len,\)"):
    build(text8_config(text8_dir, data_shape=(8, 8)))
  with pytest.raises(ValueError, match="vocab_size = 27"):
    build(text8_config(text8_dir, vocab_size=28))


def test_text8_info_encode_inverts_decode(text8_dir):
  info = build(text8_config(text8_dir)).info
  ids = info.encode("the cat sat")
  assert ids.dtype == np.int32 and len(ids) == 11
  assert info.decode(ids) == "the cat sat"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    info.encode("The Cat")


def test_random_flip_of_text_data_raises_naming_the_field(text8_dir):
  with pytest.raises(ValueError, match="data_config.random_flip = False"):
    build(text8_config(text8_dir, random_flip=True))
