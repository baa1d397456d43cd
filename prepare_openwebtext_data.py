r"""Prepares OpenWebText (or FineWeb-Edu) for md4: GPT-2 tokens in ArrayRecord.

    python prepare_openwebtext_data.py                     # OpenWebText, hub
    python prepare_openwebtext_data.py --dataset=fineweb_edu
    python prepare_openwebtext_data.py --input=/corpora/owt --tokenizer_dir=gpt2
    python prepare_openwebtext_data.py --max_documents=20000 --seq_len=256

Reads the documents from the Hugging Face hub (the `datasets` package,
streaming) or, with `--input`, from local files: a directory of `.txt` files
(each file one document), `.jsonl` files (one JSON object per line, text in
`--text_field`), `.parquet` files (column `--text_field`), any of them
optionally gzipped (`.txt.gz`, `.jsonl.gz`), or a dataset saved with
`datasets.save_to_disk` (its "train" split). Local files are read in sorted
path order.

Each document is tokenized with GPT-2's byte-level BPE, loaded from
`--tokenizer_dir` (vocab.json + merges.txt; default `<data_dir>/gpt2`,
downloaded there from the hub when missing and online), in `--num_proc`
worker processes, and followed by the end-of-text token (50256). The token
stream is cut into blocks of `--seq_len` tokens; each block goes to the
held-out "valid" split with probability `--eval_fraction`, drawn from a
generator seeded by (`--seed`, shard), else to "train".

What lands in `<data_dir>/<dataset>/` (e.g. `data_dir/openwebtext/`):

    train-00000.array_record ...   training blocks, one record per block: the
                                   tokens as little-endian uint16 bytes
                                   (uint32 for vocabularies over 65,536)
    valid-00000.array_record ...   held-out blocks, same format
    tokenizer/                     a copy of the tokenizer files, so training
                                   can decode samples without the hub
    metadata.json                  settings, tokenizer, vocab size, seq_len,
                                   dtype, source, per-shard counts, totals

The stream is processed in shards of `--shard_documents` consecutive
documents, each packed on its own (the last partial block of a shard is
dropped and counted in `dropped_tokens`), so a shard's files depend only on
its documents and the settings. metadata.json is rewritten after every
complete shard; re-running the same command resumes after the last complete
shard, and the files are identical to those of one uninterrupted run. A
finished run records `"complete": true`.

`--tokenizer=sentencepiece` packs with a sentencepiece model instead (its
`.model` in `--tokenizer_dir`, or one trained there on the first documents
with `--sentencepiece_vocab_size=N`); documents are then separated by its
end-of-sequence id. md4 loads the result with `data.dataset = "openwebtext"`
/ `"fineweb_edu"` (or `"tokens"` for other corpora); see README.md.
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import gzip
import hashlib
import itertools
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

# Run from anywhere: md4's tokenizer module sits next to this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import error_boundary
from md4.data import tokenizers

# pylint: enable=g-import-not-at-top,wrong-import-position

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
TOKENIZER_SUBDIR = "tokenizer"
SPLITS = ("train", "valid")
ARRAY_RECORD_OPTIONS = "group_size:1,zstd:3"  # one record per chunk: O(1) reads
HUB_DATASETS = {
    # --dataset: (hub name, default --hub_config)
    "openwebtext": ("Skylion007/openwebtext", ""),
    "fineweb_edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT"),
}
GPT2_HUB_MODEL = "openai-community/gpt2"
SENTENCEPIECE_MODEL = "sentencepiece.model"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet", ".txt.gz", ".jsonl.gz")
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")
PREPARE_COMMAND = "python prepare_openwebtext_data.py"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command-line flags."""
  p = error_boundary.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
      "--dataset",
      choices=sorted(HUB_DATASETS),
      default="openwebtext",
      help="which corpus; also names the output subdirectory.",
  )
  p.add_argument(
      "--input",
      default="",
      help=(
          "local directory/file of .txt/.jsonl/.parquet or a saved"
          " HF dataset; empty: stream from the Hugging Face hub."
      ),
  )
  p.add_argument(
      "--text_field",
      default="text",
      help="field (column) holding the text in jsonl/parquet/HF.",
  )
  p.add_argument(
      "--hub_config",
      default=None,
      help="hub configuration (FineWeb-Edu: sample-10BT).",
  )
  p.add_argument(
      "--data_dir",
      default="./data_dir",
      help="output root; files go to <data_dir>/<dataset>/.",
  )
  p.add_argument(
      "--tokenizer",
      choices=("gpt2", "sentencepiece"),
      default="gpt2",
      help="GPT-2 BPE or a sentencepiece model.",
  )
  p.add_argument(
      "--tokenizer_dir",
      default="",
      help=(
          "GPT-2 vocab.json + merges.txt (or a sentencepiece"
          " .model); default <data_dir>/gpt2 or <data_dir>/"
          "sentencepiece."
      ),
  )
  p.add_argument(
      "--sentencepiece_vocab_size",
      type=int,
      default=0,
      help=(
          "train a sentencepiece model of this size when"
          " --tokenizer_dir has none."
      ),
  )
  p.add_argument(
      "--sentencepiece_train_documents",
      type=int,
      default=100_000,
      help="documents the sentencepiece model is trained on.",
  )
  p.add_argument("--seq_len", type=int, default=1024, help="tokens per block.")
  p.add_argument(
      "--eval_fraction",
      type=float,
      default=0.02,
      help="probability that a block is held out for evaluation.",
  )
  p.add_argument(
      "--seed", type=int, default=0, help="seeds the held-out block choice."
  )
  p.add_argument(
      "--shard_documents",
      type=int,
      default=100_000,
      help="documents per shard (the unit of resumption).",
  )
  p.add_argument(
      "--max_documents",
      type=int,
      default=0,
      help="stop after this many documents; 0 reads them all.",
  )
  p.add_argument(
      "--num_proc",
      type=int,
      default=os.cpu_count() or 1,
      help="tokenizer worker processes; 1 tokenizes in-process.",
  )
  p.add_argument(
      "--batch_documents",
      type=int,
      default=256,
      help="documents per worker task.",
  )
  p.add_argument(
      "--verbosity",
      "-v",
      type=int,
      default=0,
      help="1: print the traceback of a reported error too.",
  )
  args = p.parse_args(argv)
  _check_args(p, args)
  return args


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  positive = (
      "seq_len",
      "shard_documents",
      "num_proc",
      "batch_documents",
      "sentencepiece_train_documents",
  )
  for name in positive:
    if getattr(args, name) <= 0:
      p.error(f"--{name} must be positive, got {getattr(args, name)}.")
  if args.max_documents < 0:
    p.error(
        "--max_documents must be 0 (all) or positive, got"
        f" {args.max_documents}."
    )
  if not 0.0 <= args.eval_fraction < 1.0:
    p.error(f"--eval_fraction must be in [0, 1), got {args.eval_fraction}.")
  if not 0 <= args.seed < 2**63:
    p.error(f"--seed must be a non-negative integer, got {args.seed}.")
  if args.hub_config is None:
    args.hub_config = HUB_DATASETS[args.dataset][1]


# ------------------------------------------------------------ documents -----


def hub_documents(args: argparse.Namespace) -> Iterator[str]:
  """Streams the documents of `--dataset` from the Hugging Face hub."""
  datasets = _import_datasets("streaming from the hub")
  name, _ = HUB_DATASETS[args.dataset]
  try:
    stream = datasets.load_dataset(
        name, name=args.hub_config or None, split="train", streaming=True
    )
    for example in stream:
      yield example[args.text_field]
  except (ConnectionError, OSError) as e:
    raise SystemExit(
        f"cannot stream {name} from the Hugging Face hub ({type(e).__name__}:"
        f" {e}). Offline, download the corpus elsewhere and pass its"
        " directory with --input=DIR."
    ) from e


def _import_datasets(why: str) -> Any:
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(
        f"{why} needs the Hugging Face `datasets` package: pip install"
        " datasets. (A directory of .txt/.jsonl/.parquet files needs no"
        " extra package.)"
    ) from e
  return datasets


def is_saved_dataset(path: pathlib.Path) -> bool:
  """Whether `path` is a directory written by `datasets.save_to_disk`."""
  return path.is_dir() and any(
      (path / f).is_file() for f in SAVED_DATASET_FILES
  )


def local_files(path: pathlib.Path) -> list[pathlib.Path]:
  """The corpus files under `path` (or `path` itself), in sorted order."""
  if not path.is_dir():
    files = [path]
  else:
    files = sorted(
        p
        for p in path.rglob("*")
        if not p.is_dir() and p.name.endswith(LOCAL_SUFFIXES)
    )
  if not files or not files[0].name.endswith(LOCAL_SUFFIXES):
    raise SystemExit(
        f"--input={path} holds no corpus files; it must be a saved HF"
        f" dataset or hold files ending in {', '.join(LOCAL_SUFFIXES)}."
    )
  return files


def _open_text(path: pathlib.Path):
  if path.name.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def file_documents(path: pathlib.Path, text_field: str) -> Iterator[str]:
  """The documents of one local file."""
  name = path.name.removesuffix(".gz")
  if name.endswith(".txt"):
    with _open_text(path) as f:
      yield f.read()
  elif name.endswith(".jsonl"):
    with _open_text(path) as f:
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        record = json.loads(line)
        if text_field not in record:
          raise SystemExit(
              f"{path}:{line_number} has no field {text_field!r} (fields:"
              f" {sorted(record)[:10]}); set --text_field."
          )
        yield record[text_field]
  else:  # .parquet
    try:
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise SystemExit(
          f"reading {path} needs pyarrow: pip install pyarrow."
      ) from e
    table = pq.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
      raise SystemExit(
          f"{path} has no column {text_field!r} (columns:"
          f" {table.schema_arrow.names[:10]}); set --text_field."
      )
    for batch in table.iter_batches(columns=[text_field], batch_size=1024):
      yield from batch.column(0).to_pylist()


def check_input(args: argparse.Namespace) -> None:
  """Fails, before anything is written, for an --input with no corpus."""
  if not args.input:
    return
  path = pathlib.Path(args.input)
  if not path.exists():
    raise SystemExit(
        f"--input={path} does not exist; give the directory or"
        " file of the corpus."
    )
  if not is_saved_dataset(path):
    local_files(path)


def local_documents(args: argparse.Namespace) -> Iterator[str]:
  """The documents of `--input`, in a fixed order."""
  path = pathlib.Path(args.input)
  check_input(args)
  if is_saved_dataset(path):
    datasets = _import_datasets(f"reading the saved dataset {path}")
    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
      saved = saved["train"]
    for example in saved:
      yield example[args.text_field]
    return
  for file in local_files(path):
    yield from file_documents(file, args.text_field)


def documents(args: argparse.Namespace) -> Iterator[str]:
  return local_documents(args) if args.input else hub_documents(args)


def source_name(args: argparse.Namespace) -> str:
  if args.input:
    return f"local:{pathlib.Path(args.input).resolve()}"
  name, _ = HUB_DATASETS[args.dataset]
  config = f"/{args.hub_config}" if args.hub_config else ""
  return f"hub:{name}{config}"


# ------------------------------------------------------------ tokenizer -----


def tokenizer_dir(args: argparse.Namespace) -> pathlib.Path:
  if args.tokenizer_dir:
    return pathlib.Path(args.tokenizer_dir)
  return pathlib.Path(args.data_dir) / args.tokenizer


def ensure_gpt2_files(directory: pathlib.Path) -> None:
  """Downloads GPT-2's vocab.json and merges.txt into `directory` if absent."""
  if all((directory / f).is_file() for f in tokenizers.GPT2_FILES):
    return
  if (directory / tokenizers.GPT2_JSON_FILE).is_file():
    return
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top

    directory.mkdir(parents=True, exist_ok=True)
    for name in tokenizers.GPT2_FILES:
      huggingface_hub.hf_hub_download(
          GPT2_HUB_MODEL, name, local_dir=str(directory)
      )
  except Exception as e:  # No package, no network, no hub: all say the same.
    raise SystemExit(
        f"GPT-2 tokenizer files not found in {directory} and downloading"
        f" them from the hub model {GPT2_HUB_MODEL} failed"
        f" ({type(e).__name__}: {e}). Copy vocab.json and merges.txt there,"
        " or pass --tokenizer_dir=DIR."
    ) from e


def ensure_sentencepiece_model(args: argparse.Namespace) -> pathlib.Path:
  """The sentencepiece model file, trained first if asked to."""
  directory = tokenizer_dir(args)
  models = sorted(directory.glob("*.model")) if directory.is_dir() else []
  if len(models) == 1:
    return models[0]
  if len(models) > 1:
    raise SystemExit(f"{directory} holds {len(models)} .model files; keep one.")
  if args.sentencepiece_vocab_size <= 0:
    raise SystemExit(
        f"no sentencepiece .model in {directory}; pass --tokenizer_dir=DIR"
        " holding one, or --sentencepiece_vocab_size=N to train one there."
    )
  count = args.sentencepiece_train_documents
  if args.max_documents:
    count = min(count, args.max_documents)
  print(
      f"training a sentencepiece model ({args.sentencepiece_vocab_size}"
      f" pieces) on {count} documents",
      file=sys.stderr,
  )
  return tokenizers.train_sentencepiece(
      itertools.islice(documents(args), count),
      directory / SENTENCEPIECE_MODEL.removesuffix(".model"),
      vocab_size=args.sentencepiece_vocab_size,
  )


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """How workers load the tokenizer, and what metadata says about it."""

  kind: str  # "gpt2" or "sentencepiece"
  path: str  # a directory (gpt2) or a .model file
  files: tuple[str, ...]  # the files that define it
  vocab_size: int
  separator_id: int  # appended to every document
  sha256: str

  def load(self) -> tokenizers.Tokenizer:
    return tokenizers.load(self.kind, self.path)


def tokenizer_spec(args: argparse.Namespace) -> TokenizerSpec:
  """Finds (downloads, or trains) the tokenizer and describes it."""
  if args.tokenizer == "gpt2":
    directory = tokenizer_dir(args)
    ensure_gpt2_files(directory)
    tokenizer = tokenizers.GPT2Tokenizer(directory)
    path, files = directory, [directory / f for f in tokenizer.files]
    separator = tokenizer.special_ids["eot"]
  else:
    path = ensure_sentencepiece_model(args)
    tokenizer = tokenizers.SentencePieceTokenizer(path)
    files = [path]
    separator = tokenizer.special_ids.get("eos", -1)
    if separator < 0:
      raise SystemExit(
          f"the sentencepiece model {path} has no eos id to"
          " separate documents; train it with an eos piece."
      )
  digest = hashlib.sha256()
  for file in files:
    digest.update(file.read_bytes())
  return TokenizerSpec(
      kind=args.tokenizer,
      path=str(path),
      files=tuple(str(f) for f in files),
      vocab_size=tokenizer.vocab_size,
      separator_id=int(separator),
      sha256=digest.hexdigest(),
  )


# -------------------------------------------------------------- workers -----


@dataclasses.dataclass(frozen=True)
class Task:
  """A batch of documents of one shard; `last` ends the shard."""

  shard: int
  texts: list[str]
  last: bool


@dataclasses.dataclass(frozen=True)
class Tokenized:
  shard: int
  tokens: np.ndarray  # [T]: the documents' ids, each followed by a separator
  num_documents: int
  last: bool


_worker: dict[str, Any] = {}


def init_worker(spec: TokenizerSpec, dtype: str) -> None:
  # One process per core: the tokenizer's own thread pool would oversubscribe.
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  _worker["tokenizer"] = spec.load()
  _worker["separator"] = spec.separator_id
  _worker["dtype"] = np.dtype(dtype)


def tokenize(task: Task) -> Tokenized:
  """Tokenizes a task's documents into one array, separators appended."""
  encoded = _worker["tokenizer"].encode_batch(task.texts) if task.texts else []
  total = sum(len(ids) + 1 for ids in encoded)
  tokens = np.empty(total, _worker["dtype"])  # [T]
  position = 0
  for ids in encoded:
    tokens[position : position + len(ids)] = ids
    position += len(ids)
    tokens[position] = _worker["separator"]
    position += 1
  return Tokenized(task.shard, tokens, len(task.texts), task.last)


def tasks(
    docs: Iterator[str],
    first_shard: int,
    shard_documents: int,
    batch_documents: int,
) -> Iterator[Task]:
  """Groups documents into per-shard batches; the final one is `last`."""
  shard = first_shard
  while True:
    shard_docs = itertools.islice(docs, shard_documents)
    count = 0
    while batch := list(itertools.islice(shard_docs, batch_documents)):
      count += len(batch)
      full = count == shard_documents
      yield Task(shard, batch, last=full)
    if count < shard_documents:
      if count:  # the stream ended inside this shard
        yield Task(shard, [], last=True)
      return
    shard += 1


# --------------------------------------------------------------- output -----


def shard_file(split: str, shard: int) -> str:
  return f"{split}-{shard:05d}.array_record"


class ShardWriter:
  """Packs a shard's token stream into blocks and writes both splits."""

  def __init__(
      self, out_dir: pathlib.Path, shard: int, settings: dict[str, Any]
  ):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    self._writer_class = array_record_module.ArrayRecordWriter
    self._out_dir = out_dir
    self._shard = shard
    self._seq_len = settings["seq_len"]
    self._eval_fraction = settings["eval_fraction"]
    self._dtype = np.dtype(settings["dtype"]).newbyteorder("<")
    self._rng = np.random.default_rng([settings["seed"], shard])
    self._pending = np.zeros(0, self._dtype)  # [< seq_len] carried tokens
    self._writers = {}
    self.counts = {
        "documents": 0,
        "tokens": 0,
        "train_blocks": 0,
        "valid_blocks": 0,
    }

  def _partial(self, split: str) -> pathlib.Path:
    return self._out_dir / (shard_file(split, self._shard) + ".partial")

  def add(self, result: Tokenized) -> None:
    self.counts["documents"] += result.num_documents
    self.counts["tokens"] += len(result.tokens)
    stream = np.concatenate([self._pending, result.tokens.astype(self._dtype)])
    num_blocks = len(stream) // self._seq_len
    blocks = stream[: num_blocks * self._seq_len].reshape(
        num_blocks, self._seq_len
    )  # [n, seq_len]
    self._pending = stream[num_blocks * self._seq_len :]
    held_out = self._rng.random(num_blocks) < self._eval_fraction  # [n]
    for block, valid in zip(blocks, held_out):
      split = "valid" if valid else "train"
      if split not in self._writers:
        self._writers[split] = self._writer_class(
            str(self._partial(split)), ARRAY_RECORD_OPTIONS
        )
      self._writers[split].write(block.tobytes())
      self.counts[f"{split}_blocks"] += 1

  def finish(self) -> dict[str, Any]:
    """Closes the files, gives them their final names; returns the entry."""
    for split, writer in self._writers.items():
      writer.close()
      os.replace(
          self._partial(split), self._out_dir / shard_file(split, self._shard)
      )
    return {
        "index": self._shard,
        **self.counts,
        "dropped_tokens": len(self._pending),
        "files": {s: shard_file(s, self._shard) for s in sorted(self._writers)},
    }


def read_metadata(out_dir: pathlib.Path) -> dict[str, Any] | None:
  path = out_dir / METADATA_FILE
  if not path.exists():
    return None
  with open(path) as f:
    return json.load(f)


def write_metadata(out_dir: pathlib.Path, metadata: dict[str, Any]) -> None:
  """Writes metadata.json atomically (a crash leaves the old or the new)."""
  partial = out_dir / (METADATA_FILE + ".partial")
  with open(partial, "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(partial, out_dir / METADATA_FILE)


def build_metadata(settings, shards, *, complete, max_documents):
  totals = {
      k: sum(s[k] for s in shards)
      for k in (
          "documents",
          "tokens",
          "dropped_tokens",
          "train_blocks",
          "valid_blocks",
      )
  }
  return {
      "format_version": FORMAT_VERSION,
      **settings,
      "shards": shards,
      "totals": totals,
      "files": {
          split: [s["files"][split] for s in shards if split in s["files"]]
          for split in SPLITS
      },
      "complete": complete,
      "max_documents": max_documents,
  }


def resume_point(
    out_dir: pathlib.Path, settings: dict[str, Any], args: argparse.Namespace
) -> list[dict[str, Any]] | None:
  """The complete shards to keep; None if the same run already finished."""
  old = read_metadata(out_dir)
  if old is None:
    return []
  if not old["shards"] and not old["complete"]:
    # An earlier attempt stopped before its first shard was complete (e.g.
    # a bad --text_field): nothing of it is kept, so any settings may start.
    return []
  changed = sorted(k for k in settings if old.get(k) != settings[k])
  if changed:
    raise SystemExit(
        f"{out_dir} was prepared with other settings ({', '.join(changed)}:"
        f" {[old.get(k) for k in changed]} there, now"
        f" {[settings[k] for k in changed]}); use the same flags to resume,"
        " or delete the directory to start over."
    )
  if old["complete"] and old["max_documents"] == args.max_documents:
    return None
  # Only full shards are final: a short last shard grows with more input.
  shards = [s for s in old["shards"] if s["documents"] == args.shard_documents]
  if args.max_documents:
    shards = shards[: args.max_documents // args.shard_documents]
  return shards


def remove_stale_files(out_dir: pathlib.Path, keep: int) -> None:
  """Deletes partial files and shard files of shards `keep` and later."""
  for path in out_dir.glob("*.array_record*"):
    split, _, rest = path.name.partition("-")
    index = rest.split(".")[0]
    if (
        path.name.endswith(".partial")
        or split not in SPLITS
        or not index.isdigit()
        or int(index) >= keep
    ):
      path.unlink()


def copy_tokenizer(spec: TokenizerSpec, out_dir: pathlib.Path) -> None:
  target = out_dir / TOKENIZER_SUBDIR
  target.mkdir(exist_ok=True)
  for file in spec.files:
    shutil.copyfile(file, target / pathlib.Path(file).name)


def settings_of(
    args: argparse.Namespace, spec: TokenizerSpec
) -> dict[str, Any]:
  """Everything that decides the files' contents (checked on resume)."""
  return {
      "dataset": args.dataset,
      "source": source_name(args),
      "text_field": args.text_field,
      "tokenizer": {
          "kind": spec.kind,
          "files": [pathlib.Path(f).name for f in spec.files],
          "sha256": spec.sha256,
          "separator_id": spec.separator_id,
      },
      "vocab_size": spec.vocab_size,
      "dtype": "uint16" if spec.vocab_size <= 2**16 else "uint32",
      "seq_len": args.seq_len,
      "eval_fraction": args.eval_fraction,
      "seed": args.seed,
      "shard_documents": args.shard_documents,
  }


def prepare(args: argparse.Namespace) -> dict[str, Any]:
  """Runs (or resumes) the preparation; returns the final metadata."""
  out_dir = pathlib.Path(args.data_dir) / args.dataset
  check_input(args)  # Nothing is written for a mistyped --input.
  out_dir.mkdir(parents=True, exist_ok=True)
  spec = tokenizer_spec(args)
  settings = settings_of(args, spec)
  shards = resume_point(out_dir, settings, args)
  if shards is None:
    print(f"{out_dir} is already prepared; nothing to do.", file=sys.stderr)
    return read_metadata(out_dir)
  remove_stale_files(out_dir, keep=len(shards))
  copy_tokenizer(spec, out_dir)
  write_metadata(
      out_dir,
      build_metadata(
          settings, shards, complete=False, max_documents=args.max_documents
      ),
  )
  done_documents = len(shards) * args.shard_documents
  docs = itertools.islice(
      documents(args), done_documents, args.max_documents or None
  )
  work = tasks(docs, len(shards), args.shard_documents, args.batch_documents)
  if shards:
    print(
        f"resuming after shard {len(shards) - 1} ({done_documents} documents)",
        file=sys.stderr,
    )
  _run(args, spec, settings, out_dir, shards, work)
  metadata = build_metadata(
      settings, shards, complete=True, max_documents=args.max_documents
  )
  write_metadata(out_dir, metadata)
  totals = metadata["totals"]
  print(
      f"wrote {totals['train_blocks']} train and {totals['valid_blocks']}"
      f" valid blocks of {args.seq_len} tokens ({totals['documents']}"
      f" documents, {totals['tokens']} tokens) to {out_dir}",
      file=sys.stderr,
  )
  return metadata


def tokenized_in_order(
    work: Iterator[Task], num_proc: int, init: tuple[Any, ...]
) -> Iterator[Tokenized]:
  """Tokenizes tasks in `num_proc` worker processes; yields results in order.

  The input is read here, in the calling thread, a few tasks ahead of the
  results (so an input error is raised here, and memory stays bounded); a
  worker that dies raises BrokenProcessPool instead of hanging.
  """
  if num_proc == 1:
    init_worker(*init)
    yield from map(tokenize, work)
    return
  ahead = 2 * num_proc
  with concurrent.futures.ProcessPoolExecutor(
      num_proc, initializer=init_worker, initargs=init
  ) as executor:
    pending = collections.deque()
    try:
      for task in work:
        pending.append(executor.submit(tokenize, task))
        if len(pending) >= ahead:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()


def _run(args, spec, settings, out_dir, shards, work) -> None:
  """Tokenizes `work` in worker processes and writes shard after shard."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  results = tokenized_in_order(work, args.num_proc, (spec, settings["dtype"]))
  bar = tqdm(
      unit="tok",
      unit_scale=True,
      desc=f"{args.dataset} tokens",
      initial=sum(s["tokens"] for s in shards),
      smoothing=0.1,
  )
  writer = None
  try:
    for result in results:
      if writer is None:
        writer = ShardWriter(out_dir, result.shard, settings)
      writer.add(result)
      bar.update(len(result.tokens))
      if result.last:
        shards.append(writer.finish())
        writer = None
        write_metadata(
            out_dir,
            build_metadata(
                settings,
                shards,
                complete=False,
                max_documents=args.max_documents,
            ),
        )
        bar.set_postfix(shards=len(shards), refresh=False)
  finally:
    bar.close()


def main(argv: Sequence[str] | None = None) -> None:
  """Runs the command; a user error exits with one `md4 error:` message."""
  start = time.perf_counter()
  with error_boundary.reported(sys.argv if argv is None else ["", *argv]):
    metadata = prepare(parse_args(argv))
  seconds = time.perf_counter() - start
  print(
      f"done in {seconds:.1f} s ({metadata['totals']['tokens']} tokens in"
      " total)",
      file=sys.stderr,
  )


if __name__ == "__main__":
  main()
