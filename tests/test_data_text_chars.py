"""Tests of a user's plain text file, modelled character by character."""

import json

import numpy as np
import pytest

from data_setup import all_real, build, make_config
from md4.data import pipelines

TEXT = "Größe matters. Ünïcode is fine; so are numbers 0-9!\n" * 40


def text_config(path, **overrides):
  fields = dict(
      data_dir=str(path.parent),
      path=path.name,
      data_shape=(16,),
      vocab_size=len(set(TEXT)),
  )
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
  valid = "".join(
      datasets.info.decode(x) for x in all_real(datasets.eval["valid"]())
  )
  num_train = len(TEXT) - int(len(TEXT) * 0.05)
  assert TEXT[num_train:].startswith(valid) and len(valid) >= 16


def test_text_file_with_characters_from_the_config_uses_their_order(
    tmp_path,
):
  path = tmp_path / "abc.txt"
  path.write_text("abcab" * 200)
  config = text_config(path, characters="cba", vocab_size=3)
  loaded = pipelines.build_datasets(
      config, global_batch_size=2, eval_batch_size=2, seed=0
  )
  x = next(iter(loaded.train))["x"][0]
  assert set(x.tolist()) <= {0, 1, 2}
  assert loaded.info.decode(np.array([0, 1, 2])) == "cba"
  assert not (tmp_path / "abc.txt.vocab.json").exists()


def test_text_file_vocab_size_mismatch_names_the_right_size(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(TEXT, encoding="utf-8")
  with pytest.raises(
      ValueError, match=f"set data_config.vocab_size = {len(set(TEXT))}"
  ):
    build(text_config(path, vocab_size=5))


def test_text_file_character_outside_a_stored_vocabulary_raises(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("abab" * 100)
  build(text_config(path, vocab_size=2), batch=2, eval_batch=2)
  path.write_text("abab" * 100 + "z")
  for vocab_size in (2, 3):  # Either size: the message names both fixes.
    with pytest.raises(
        ValueError,
        match=r"1 characters 'z' that are not in "
        r"its frozen vocabulary .*corpus.txt.vocab.json",
    ):
      build(text_config(path, vocab_size=vocab_size), batch=2, eval_batch=2)
  # The fix it names works, keeping the frozen ids.
  datasets = build(
      text_config(path, characters="abz", vocab_size=3), batch=2, eval_batch=2
  )
  assert datasets.info.decode(np.array([0, 1, 2])) == "abz"


def test_an_empty_text_file_is_refused_and_no_vocabulary_is_written(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("")
  with pytest.raises(ValueError, match="corpus.txt is empty; put the text"):
    build(text_config(path, vocab_size=2), batch=2, eval_batch=2)
  assert not (tmp_path / "corpus.txt.vocab.json").exists()


def test_text_file_info_encode_inverts_decode(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(TEXT, encoding="utf-8")
  info = build(text_config(path), batch=4, eval_batch=4).info
  prompt = "Ünïcode 0-9!"
  ids = info.encode(prompt)
  assert ids.dtype == np.int32 and len(ids) == len(prompt)
  assert info.decode(ids) == prompt
  with pytest.raises(ValueError, match=r"outside the vocabulary.*'Z'"):
    info.encode("Zebra")
