"""Tests of users' token arrays (.npy and ArrayRecord files)."""

import io
import json
import shutil

import numpy as np
import pytest

from data_setup import SHARED_GPT2, all_real, build, build_for_process
from data_setup import make_config
from md4.data import token_files
from md4.data import tokenizers

needs_gpt2 = pytest.mark.skipif(
    not (SHARED_GPT2 / "vocab.json").is_file(),
    reason=f"the GPT-2 tokenizer files not found in {SHARED_GPT2}",
)


def tokens_config(path, **overrides):
  fields = dict(
      data_dir=str(path.parent),
      path=path.name,
      data_shape=(16,),
      vocab_size=100,
  )
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
      all_real(datasets.eval["valid"]()), rows[:3, :32].reshape(6, 16)
  )
  assert datasets.info.decode(np.array([1, 2, 30])) == "1 2 30"
  assert datasets.info.unit == "perplexity"


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


def test_token_directory_info_encode_reads_space_separated_ids(tmp_path):
  directory = tmp_path / "mine"
  directory.mkdir()
  np.save(directory / "all.npy", np.arange(1600) % 100)
  info = build(tokens_config(directory)).info
  ids = info.encode("1 2  30\n7")
  assert ids.dtype == np.int32 and ids.tolist() == [1, 2, 30, 7]
  assert info.decode(ids) == "1 2 30 7"
  with pytest.raises(ValueError, match="'cat' is not a token id"):
    info.encode("1 cat")


# --- prepared corpora (the layout prepare_openwebtext_data.py writes) ----------

PREPARED_TEXT = "the quick brown fox jumps over the lazy dog. " * 20


def write_prepared(data_dir, tokenizer, kind, tokenizer_files, seq_len=16):
  """`<data_dir>/openwebtext/` as the prep script leaves it, tokens raw."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  directory = data_dir / "openwebtext"
  (directory / token_files.TOKENIZER_SUBDIR).mkdir(parents=True)
  for file in tokenizer_files:
    shutil.copy(file, directory / token_files.TOKENIZER_SUBDIR)
  tokens = tokenizer.encode(PREPARED_TEXT).astype("<u2")
  blocks = tokens[: len(tokens) // seq_len * seq_len].reshape(-1, seq_len)
  files = {
      "train": ["train-00000.array_record"],
      "valid": ["valid-00000.array_record"],
  }
  for split, rows in (("train", blocks[2:]), ("valid", blocks[:2])):
    writer = array_record_module.ArrayRecordWriter(
        str(directory / files[split][0]), "group_size:1"
    )
    for row in rows:
      writer.write(row.tobytes())
    writer.close()
  metadata = {
      "complete": True,
      "vocab_size": tokenizer.vocab_size,
      "tokenizer": {"kind": kind},
      "seq_len": seq_len,
      "dtype": "uint16",
      "files": files,
  }
  (directory / token_files.METADATA_FILE).write_text(json.dumps(metadata))
  return make_config(
      "openwebtext",
      data_dir=str(data_dir),
      data_shape=(seq_len,),
      vocab_size=tokenizer.vocab_size,
  )


def test_prepared_corpus_info_encodes_with_its_sentencepiece_copy(tmp_path):
  model = tokenizers.train_sentencepiece(
      PREPARED_TEXT.split(". "), tmp_path / "spm/model", vocab_size=40
  )
  tokenizer = tokenizers.SentencePieceTokenizer(model)
  config = write_prepared(
      tmp_path / "data", tokenizer, "sentencepiece", [model]
  )
  info = build(config, batch=4, eval_batch=4).info
  prompt = "the lazy fox"
  np.testing.assert_array_equal(info.encode(prompt), tokenizer.encode(prompt))
  assert info.decode(info.encode(prompt)) == prompt


@needs_gpt2
def test_prepared_corpus_info_encodes_with_gpt2_ids(tmp_path):
  tokenizer = tokenizers.GPT2Tokenizer(SHARED_GPT2)
  config = write_prepared(
      tmp_path,
      tokenizer,
      "gpt2",
      [SHARED_GPT2 / f for f in tokenizers.GPT2_FILES],
  )
  info = build(config, batch=4, eval_batch=4).info
  assert info.encode("Hello world").tolist() == [15496, 995]
  assert info.decode(info.encode(" the lazy dog.")) == " the lazy dog."


def test_every_eval_batch_is_checked_naming_the_split_file_and_row(tmp_path):
  directory = tmp_path / "mine"
  directory.mkdir()
  np.save(directory / "train.npy", np.zeros((8, 16), np.int32))
  valid = np.zeros((40, 16), np.int32)
  valid[13, 5] = 250  # Between the records the start-up sample reads.
  np.save(directory / "valid.npy", valid)
  datasets = build(tokens_config(directory), batch=4, eval_batch=8)
  with pytest.raises(ValueError) as error:
    list(datasets.eval["valid"]())
  message = str(error.value)
  assert "evaluation split 'valid'" in message
  assert "valid.npy (row 13," in message and "token value 250" in message
  assert message.endswith("if the ids are right.")
