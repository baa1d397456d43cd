"""Tests of prepare_openwebtext_data.py and the loaders of its output.

A small .jsonl corpus made here goes through the whole script, with a BPE
built here and, when ../shared/data/gpt2 exists, with the real GPT-2 files.
Multi-process runs start the script as a subprocess, as a user would.
"""

import errno
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

from absl import flags
import ml_collections
import numpy as np
import pytest
import tokenizers as hf_tokenizers

from md4.data import pipelines
from md4.data import token_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "prepare_openwebtext_data.py"
SHARED_GPT2 = ROOT.parent / "shared/data/gpt2"
NUM_DOCUMENTS = 200
SEQ_LEN = 32
BPE_VOCAB = 300  # the test BPE: 256 bytes, end-of-text, 43 merges
WORDS = (
    "the of and to in data model token diffusion mask sample text web"
    " page open über café 42 1,000 (note) — end."
).split()

needs_gpt2 = pytest.mark.skipif(
    not SHARED_GPT2.is_dir(),
    reason=f"GPT-2 tokenizer files not found in {SHARED_GPT2}",
)


def _load_script():
  spec = importlib.util.spec_from_file_location(
      "prepare_openwebtext_data", SCRIPT
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


prepare_script = _load_script()


@pytest.fixture(scope="module")
def corpus():
  rng = np.random.default_rng(0)
  return [
      " ".join(rng.choice(WORDS, rng.integers(3, 60)))
      + ("\n\nSecond paragraph." if i % 7 == 0 else "")
      for i in range(NUM_DOCUMENTS)
  ]


def jsonl_lines(texts):
  return [json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory, corpus):
  directory = tmp_path_factory.mktemp("corpus")
  lines = jsonl_lines(corpus)
  (directory / "part-0.jsonl").write_text("".join(lines[:120]))
  (directory / "part-1.jsonl").write_text("".join(lines[120:]))
  return directory


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, corpus):
  """A GPT-2-format BPE (vocab.json + merges.txt) trained on the corpus."""
  directory = tmp_path_factory.mktemp("bpe")
  bpe = hf_tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
      corpus,
      vocab_size=BPE_VOCAB,
      min_frequency=2,
      special_tokens=["<|endoftext|>"],
      show_progress=False,
  )
  bpe.save_model(str(directory))
  return directory


def reference_ids(tokenizer_dir, texts):
  """Each document's ids from tokenizers' GPT-2 class, then end-of-text."""
  bpe = hf_tokenizers.ByteLevelBPETokenizer(
      str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt")
  )
  eot = bpe.token_to_id("<|endoftext|>")
  return [bpe.encode(t).ids + [eot] for t in texts]


def flags_for(input_dir, data_dir, tokenizer_dir, **overrides):
  values = dict(
      input=input_dir,
      data_dir=data_dir,
      tokenizer_dir=tokenizer_dir,
      seq_len=SEQ_LEN,
      shard_documents=50,
      batch_documents=8,
      num_proc=1,
      eval_fraction=0.1,
  )
  values.update(overrides)
  return [f"--{k}={v}" for k, v in values.items()]


def run_in_process(*args, **overrides):
  prepare_script.main(flags_for(*args, **overrides))


def run_subprocess(*args, **overrides):
  result = subprocess.run(
      [sys.executable, str(SCRIPT), *flags_for(*args, **overrides)],
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def read_records(path, dtype):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  reader = array_record_module.ArrayRecordReader(str(path))
  records = reader.read_all()
  reader.close()
  return [np.frombuffer(r, dtype) for r in records]


def shard_streams(out_dir):
  """Re-interleaves each shard's train and valid blocks in stream order."""
  with open(out_dir / "metadata.json") as f:
    metadata = json.load(f)
  streams = []
  for shard in metadata["shards"]:
    blocks = {
        split: (
            iter(read_records(out_dir / shard["files"][split], "<u2"))
            if split in shard["files"]
            else iter(())
        )
        for split in ("train", "valid")
    }
    num = shard["train_blocks"] + shard["valid_blocks"]
    rng = np.random.default_rng([metadata["seed"], shard["index"]])
    held_out = rng.random(num) < metadata["eval_fraction"]
    stream = [next(blocks["valid" if v else "train"]) for v in held_out]
    streams.append(np.concatenate(stream) if stream else np.zeros(0))
  return metadata, streams


def all_files(directory):
  return {
      str(p.relative_to(directory)): p.read_bytes()
      for p in sorted(directory.rglob("*"))
      if p.is_file()
  }


def packed_config(data_dir, dataset="openwebtext", **overrides):
  fields = dict(
      dataset=dataset,
      data_dir=str(data_dir),
      data_shape=(SEQ_LEN,),
      vocab_size=BPE_VOCAB,
      num_workers=0,
      pad_to=0,
      path="",
      characters="",
      eval_fraction=0.05,
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def build(config, *, batch=8, eval_batch=8, seed=0, **kwargs):
  return pipelines.build_datasets(
      config,
      global_batch_size=batch,
      eval_batch_size=eval_batch,
      seed=seed,
      **kwargs,
  )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, input_dir, bpe_dir):
  data_dir = tmp_path_factory.mktemp("prepared")
  run_subprocess(input_dir, data_dir, bpe_dir, num_proc=2)
  return data_dir


# --- the script --------------------------------------------------------------


def test_prepare_packs_each_document_and_an_end_of_text_into_blocks(
    prepared,
    bpe_dir,
    corpus,
):
  out_dir = prepared / "openwebtext"
  metadata, streams = shard_streams(out_dir)
  documents = reference_ids(bpe_dir, corpus)
  assert metadata["complete"] and len(metadata["shards"]) == 4
  for shard, stream in zip(metadata["shards"], streams):
    first = shard["index"] * 50
    expected = np.concatenate(documents[first : first + 50])
    num_blocks = len(expected) // SEQ_LEN
    assert shard["tokens"] == len(expected)
    assert shard["dropped_tokens"] == len(expected) - num_blocks * SEQ_LEN
    np.testing.assert_array_equal(stream, expected[: num_blocks * SEQ_LEN])
  totals = metadata["totals"]
  assert totals["documents"] == NUM_DOCUMENTS
  assert metadata["vocab_size"] == BPE_VOCAB and metadata["dtype"] == "uint16"
  assert metadata["tokenizer"]["kind"] == "gpt2"
  assert metadata["tokenizer"]["separator_id"] == 0  # first special token
  assert sorted(os.listdir(out_dir / "tokenizer")) == [
      "merges.txt",
      "vocab.json",
  ]


def test_prepare_holds_out_a_seeded_share_of_the_blocks(
    prepared,
    input_dir,
    bpe_dir,
    tmp_path,
):
  totals = json.loads((prepared / "openwebtext/metadata.json").read_text())[
      "totals"
  ]
  num_blocks = totals["train_blocks"] + totals["valid_blocks"]
  assert 0.03 < totals["valid_blocks"] / num_blocks < 0.2  # 0.1 expected
  run_in_process(input_dir, tmp_path / "same", bpe_dir)
  run_in_process(input_dir, tmp_path / "other", bpe_dir, seed=1)
  assert all_files(tmp_path / "same") == all_files(prepared)
  assert all_files(tmp_path / "other") != all_files(prepared)


@needs_gpt2
def test_prepare_with_the_shared_gpt2_files_gives_the_tokenizers_gpt2_ids(
    input_dir,
    tmp_path,
    corpus,
):
  run_in_process(input_dir, tmp_path, SHARED_GPT2, max_documents=60)
  metadata, streams = shard_streams(tmp_path / "openwebtext")
  assert metadata["vocab_size"] == 50257
  assert metadata["tokenizer"]["separator_id"] == 50256
  documents = reference_ids(SHARED_GPT2, corpus[:60])
  for first, stream in zip((0, 50), streams):
    expected = np.concatenate(documents[first : first + 50])
    np.testing.assert_array_equal(stream, expected[: len(stream)])
    assert len(expected) - len(stream) < SEQ_LEN


def _open_fifo_for_writing(path, timeout_s=60.0):
  """Opens a FIFO once its reader (the script) has opened it."""
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      return os.fdopen(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "w")
    except OSError as e:
      if e.errno != errno.ENXIO or time.monotonic() > deadline:
        raise
      time.sleep(0.05)


def _wait_for_shards(out_dir, count, process, timeout_s=60.0):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    assert process.poll() is None, "the script ended before it was killed"
    try:
      metadata = json.loads((out_dir / "metadata.json").read_text())
      if len(metadata["shards"]) >= count:
        return metadata
    except (FileNotFoundError, json.JSONDecodeError):
      pass
    time.sleep(0.05)
  raise AssertionError(f"no {count} complete shards in {timeout_s} s")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_prepare_killed_half_way_and_rerun_writes_the_files_of_one_run(
    tmp_path,
    bpe_dir,
    corpus,
):
  lines = jsonl_lines(corpus)
  input_dir = tmp_path / "input"
  input_dir.mkdir()
  fifo = input_dir / "docs.jsonl"
  os.mkfifo(fifo)
  killed = tmp_path / "killed"
  args = flags_for(input_dir, killed, bpe_dir, num_proc=2)
  # The corpus arrives through a pipe: after 2.8 shards the script waits
  # for more input in the middle of shard 2, and is killed there.
  with open(tmp_path / "log.txt", "w") as log:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
  try:
    with _open_fifo_for_writing(fifo) as pipe:
      pipe.writelines(lines[:140])
      pipe.flush()
      metadata = _wait_for_shards(killed / "openwebtext", 2, process)
      os.killpg(process.pid, signal.SIGKILL)
      process.wait(timeout=30)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  assert not metadata["complete"]
  fifo.unlink()
  fifo.write_text("".join(lines))
  rerun = run_subprocess(input_dir, killed, bpe_dir, num_proc=2)
  assert "resuming after shard 1 (100 documents)" in rerun.stderr
  whole = tmp_path / "whole"
  run_subprocess(input_dir, whole, bpe_dir, num_proc=2)
  files = all_files(whole)
  assert "openwebtext/train-00003.array_record" in files
  assert all_files(killed) == files


def test_prepare_grows_a_max_documents_run_to_the_whole_corpus(
    prepared,
    input_dir,
    bpe_dir,
    tmp_path,
):
  run_in_process(input_dir, tmp_path, bpe_dir, max_documents=70)
  metadata = json.loads((tmp_path / "openwebtext/metadata.json").read_text())
  assert metadata["totals"]["documents"] == 70
  assert [s["documents"] for s in metadata["shards"]] == [50, 20]
  run_in_process(input_dir, tmp_path, bpe_dir)  # resumes after shard 0
  assert all_files(tmp_path) == all_files(prepared)
  run_in_process(input_dir, tmp_path, bpe_dir)  # complete: nothing to do
  assert all_files(tmp_path) == all_files(prepared)


def test_prepare_input_error_with_worker_processes_exits_with_its_message(
    tmp_path,
    bpe_dir,
):
  input_dir = tmp_path / "bad"
  input_dir.mkdir()
  (input_dir / "a.jsonl").write_text(
      jsonl_lines(["fine"] * 30)[0] * 30 + '{"body": "no text field"}\n'
  )
  result = subprocess.run(
      [
          sys.executable,
          str(SCRIPT),
          *flags_for(input_dir, tmp_path / "out", bpe_dir, num_proc=2),
      ],
      capture_output=True,
      text=True,
      timeout=60,
      check=False,
  )
  assert result.returncode != 0
  assert "a.jsonl:31 has no field 'text'" in result.stderr


class _FakeDatasets(types.ModuleType):
  """Stands in for the `datasets` package: records how it was called."""

  def __init__(self, texts):
    super().__init__("datasets")
    self.texts = texts
    self.calls = []

  class DatasetDict(dict):
    pass

  def load_dataset(self, path, name=None, split=None, streaming=False):
    self.calls.append(
        dict(path=path, name=name, split=split, streaming=streaming)
    )
    return ({"text": t} for t in self.texts)

  def load_from_disk(self, path):
    self.calls.append(dict(load_from_disk=path))
    return self.DatasetDict(train=[{"text": t} for t in self.texts])


@pytest.mark.parametrize(
    "dataset, hub_name, hub_config",
    [
        ("openwebtext", "Skylion007/openwebtext", None),
        ("fineweb_edu", "HuggingFaceFW/fineweb-edu", "sample-10BT"),
    ],
)
def test_prepare_without_input_streams_the_corpus_from_the_hub(
    tmp_path,
    bpe_dir,
    corpus,
    monkeypatch,
    dataset,
    hub_name,
    hub_config,
):
  fake = _FakeDatasets(corpus[:30])
  monkeypatch.setitem(sys.modules, "datasets", fake)
  prepare_script.main([
      f"--dataset={dataset}",
      f"--data_dir={tmp_path}",
      f"--tokenizer_dir={bpe_dir}",
      f"--seq_len={SEQ_LEN}",
      "--num_proc=1",
  ])
  assert fake.calls == [
      dict(path=hub_name, name=hub_config, split="train", streaming=True)
  ]
  metadata = json.loads((tmp_path / dataset / "metadata.json").read_text())
  assert metadata["totals"]["documents"] == 30
  assert metadata["source"] == f"hub:{hub_name}" + (
      f"/{hub_config}" if hub_config else ""
  )


def test_prepare_reads_the_train_split_of_a_saved_hf_dataset(
    tmp_path,
    bpe_dir,
    corpus,
    monkeypatch,
):
  fake = _FakeDatasets(corpus[:6])
  monkeypatch.setitem(sys.modules, "datasets", fake)
  saved = tmp_path / "saved"
  saved.mkdir()
  (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
  run_in_process(saved, tmp_path / "out", bpe_dir, seq_len=4, eval_fraction=0.0)
  assert fake.calls == [dict(load_from_disk=str(saved))]
  _, (stream,) = shard_streams(tmp_path / "out/openwebtext")
  expected = np.concatenate(reference_ids(bpe_dir, corpus[:6]))
  np.testing.assert_array_equal(stream, expected[: len(stream)])


def test_prepare_from_the_hub_without_datasets_says_how_to_install_it(
    tmp_path,
    bpe_dir,
    monkeypatch,
):
  monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
  with pytest.raises(SystemExit, match="pip install datasets"):
    prepare_script.main(
        [f"--data_dir={tmp_path}", f"--tokenizer_dir={bpe_dir}", "--num_proc=1"]
    )


def test_prepare_refuses_to_resume_with_other_settings(
    input_dir,
    bpe_dir,
    tmp_path,
):
  run_in_process(input_dir, tmp_path, bpe_dir, max_documents=10)
  with pytest.raises(SystemExit, match="seq_len"):
    run_in_process(input_dir, tmp_path, bpe_dir, seq_len=64)


@pytest.mark.slow
def test_prepare_reads_txt_and_gzipped_jsonl_and_parquet_files(
    tmp_path,
    bpe_dir,
    corpus,
):
  pq = pytest.importorskip("pyarrow.parquet")
  pa = pytest.importorskip("pyarrow")
  input_dir = tmp_path / "mixed"
  (input_dir / "b").mkdir(parents=True)
  (input_dir / "a.txt").write_text(corpus[0])
  import gzip  # pylint: disable=g-import-not-at-top

  with gzip.open(input_dir / "b" / "c.jsonl.gz", "wt") as f:
    f.writelines(jsonl_lines(corpus[1:3]))
  pq.write_table(pa.table({"text": corpus[3:6]}), input_dir / "b" / "d.parquet")
  run_in_process(
      input_dir, tmp_path / "out", bpe_dir, seq_len=4, eval_fraction=0.0
  )
  _, (stream,) = shard_streams(tmp_path / "out/openwebtext")
  expected = np.concatenate(reference_ids(bpe_dir, corpus[:6]))
  np.testing.assert_array_equal(stream, expected[: len(stream)])


def test_prepare_trains_a_sentencepiece_model_when_asked(
    input_dir,
    tmp_path,
    corpus,
):
  run_in_process(
      input_dir,
      tmp_path,
      "",
      tokenizer="sentencepiece",
      sentencepiece_vocab_size=120,
      max_documents=40,
  )
  out_dir = tmp_path / "openwebtext"
  metadata = json.loads((out_dir / "metadata.json").read_text())
  assert metadata["vocab_size"] == 120
  assert metadata["tokenizer"]["separator_id"] == 2  # sentencepiece eos
  assert (tmp_path / "sentencepiece" / "sentencepiece.model").is_file()
  assert (out_dir / "tokenizer" / "sentencepiece.model").is_file()


def test_prepare_without_tokenizer_files_offline_says_where_to_put_them(
    input_dir,
    tmp_path,
    monkeypatch,
):
  def offline(*args, **kwargs):
    raise OSError("network unreachable")

  import huggingface_hub  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
  with pytest.raises(SystemExit, match="Copy vocab.json and merges.txt"):
    prepare_script.main([f"--input={input_dir}", f"--data_dir={tmp_path}"])


# --- loading the prepared files ----------------------------------------------


def test_openwebtext_loader_reads_the_prepared_blocks_and_decodes_them(
    prepared,
    corpus,
):
  datasets = build(packed_config(prepared))
  batch = next(iter(datasets.train))
  assert batch["x"].shape == (8, SEQ_LEN) and batch["x"].dtype == np.int32
  assert datasets.info.kind == "text" and datasets.info.vocab_size == BPE_VOCAB
  assert list(datasets.eval) == ["valid"]
  text = datasets.info.decode(batch["x"][0])
  assert text.replace("<|endoftext|>", "") in "".join(corpus)
  metadata = json.loads((prepared / "openwebtext/metadata.json").read_text())
  valid = [b for b in datasets.eval["valid"]()]
  assert sum(b["weight"].sum() for b in valid) == (
      metadata["totals"]["valid_blocks"]
  )


def test_a_shorter_data_shape_cuts_each_block_into_pieces(prepared):
  full = build(packed_config(prepared)).eval["valid"]
  half = build(packed_config(prepared, data_shape=(SEQ_LEN // 2,))).eval[
      "valid"
  ]
  whole = np.concatenate([b["x"][b["weight"] > 0] for b in full()])
  pieces = np.concatenate([b["x"][b["weight"] > 0] for b in half()])
  np.testing.assert_array_equal(pieces.reshape(-1, SEQ_LEN), whole)


def test_fineweb_edu_loads_from_its_own_directory(
    input_dir,
    bpe_dir,
    tmp_path,
):
  run_in_process(
      input_dir, tmp_path, bpe_dir, dataset="fineweb_edu", max_documents=50
  )
  datasets = build(packed_config(tmp_path, "fineweb_edu"))
  assert next(iter(datasets.train))["x"].shape == (8, SEQ_LEN)
  with pytest.raises(FileNotFoundError):
    build(packed_config(tmp_path, "openwebtext"))


def test_two_processes_read_disjoint_blocks_that_cover_the_training_split(
    prepared,
):
  loaded = token_files.load_prepared(packed_config(prepared))
  num = len(loaded.train) // 2 * 2
  keys = []
  for p in range(2):
    datasets = build(
        packed_config(prepared), batch=num, process_index=p, process_count=2
    )
    keys.append({x.tobytes() for x in next(iter(datasets.train))["x"]})
  everything = {
      loaded.train[i]["x"].tobytes() for i in range(len(loaded.train))
  }
  assert len(keys[0]) == len(keys[1]) == num // 2
  assert not keys[0] & keys[1]
  assert keys[0] | keys[1] <= everything
  # One global batch of `num` records: an odd record is left out.
  assert len(everything - (keys[0] | keys[1])) == len(loaded.train) - num


def test_openwebtext_same_seed_same_batches_and_restore_gives_the_next(
    prepared,
):
  iterator = iter(build(packed_config(prepared), seed=3).train)
  first = [next(iterator) for _ in range(3)]
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  again = iter(build(packed_config(prepared), seed=3).train)
  for want in first:
    np.testing.assert_array_equal(next(again)["x"], want["x"])
  restored = iter(build(packed_config(prepared), seed=3).train)
  restored.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(restored)["x"], want["x"])


@pytest.mark.slow
def test_openwebtext_with_a_grain_worker_matches_the_in_process_loader(
    prepared,
):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  in_process = iter(build(packed_config(prepared)).train)
  worker = iter(build(packed_config(prepared, num_workers=1)).train)
  for _ in range(2):
    np.testing.assert_array_equal(next(in_process)["x"], next(worker)["x"])


def test_missing_openwebtext_names_the_command_that_prepares_it(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    build(packed_config(tmp_path))
  assert "python prepare_openwebtext_data.py --dataset=openwebtext" in str(
      error.value
  )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(vocab_size=50257), "data_config.vocab_size is 50257"),
        (dict(data_shape=(2 * SEQ_LEN,)), f"--seq_len={2 * SEQ_LEN}"),
        (dict(data_shape=(4, 8)), "data_config.data_shape is (4, 8)"),
    ],
)
def test_openwebtext_config_that_does_not_match_the_metadata_raises(
    prepared,
    overrides,
    message,
):
  with pytest.raises(ValueError) as error:
    build(packed_config(prepared, **overrides))
  assert message in str(error.value)


def test_unfinished_preparation_says_to_rerun_the_command(
    prepared,
    tmp_path,
):
  metadata = json.loads((prepared / "openwebtext/metadata.json").read_text())
  metadata["complete"] = False
  (tmp_path / "openwebtext").mkdir()
  (tmp_path / "openwebtext/metadata.json").write_text(json.dumps(metadata))
  with pytest.raises(ValueError, match="again .* to resume"):
    build(packed_config(tmp_path))


def test_an_attempt_that_failed_before_its_first_shard_never_blocks_the_fix(
    input_dir,
    bpe_dir,
    tmp_path,
):
  with pytest.raises(SystemExit, match=r"^md4 error: .*set --text_field\.$"):
    run_in_process(input_dir, tmp_path, bpe_dir, text_field="body")
  # The corrected command is not refused as "prepared with other settings".
  run_in_process(input_dir, tmp_path, bpe_dir, max_documents=10)
  metadata = json.loads((tmp_path / "openwebtext/metadata.json").read_text())
  assert metadata["complete"] and metadata["text_field"] == "text"


def test_a_mistyped_input_writes_nothing(bpe_dir, tmp_path):
  with pytest.raises(SystemExit, match="does not exist; give the directory"):
    run_in_process(tmp_path / "no_such_corpus", tmp_path / "out", bpe_dir)
  assert not (tmp_path / "out").exists()
