"""Token arrays read from files: prepared corpora and users' token directories.

* `openwebtext`, `fineweb_edu`: the output of `prepare_openwebtext_data.py`
  in `<data_dir>/<dataset>/` (or `data_config.path`): `train-*.array_record`
  and `valid-*.array_record` (one block of tokens per record, raw
  little-endian bytes of the dtype in `metadata.json`), the tokenizer copy in
  `tokenizer/` (decodes samples and encodes prompts) and `metadata.json`,
  whose vocabulary size and block length are checked against the config.
  Evaluation split: "valid".
* `tokens`: a directory of the user's token arrays (`data_config.path`,
  default `<data_dir>/tokens`), either `.npy` files or `.array_record` files:
  - a 1-D `.npy` array is a token stream, cut into consecutive examples;
  - a 2-D `.npy` array `[N, M]` holds N rows, each giving `M // seq_len`
    examples;
  - an ArrayRecord record is one row, stored as `.npy` bytes (`np.save` to a
    buffer), or as raw bytes when a `metadata.json` like the prepared one
    gives the dtype.
  Files whose names start with "train" form the training split and those
  starting with "valid"/"eval"/"test" the evaluation splits ("valid",
  "valid", "test"); with no "train*" file, a seeded `data_config.eval_fraction`
  of all examples is held out as "valid". Samples decode as space-separated
  ids, and prompts are read as such ids (or both go through the prepared
  tokenizer when `metadata.json` names one and `tokenizer/` holds it).

Examples are `seq_len = data_shape[0]` tokens: row `r` of a file gives the
examples `row[p * seq_len : (p + 1) * seq_len]` for `p < M // seq_len`, so a
corpus prepared with blocks of 1024 also serves a config of length 256.
"""

import io
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from md4.data import sources
from md4.data import tokenizers

METADATA_FILE = "metadata.json"
TOKENIZER_SUBDIR = "tokenizer"
PREPARED = ("openwebtext", "fineweb_edu")
_NPY_MAGIC = b"\x93NUMPY"
_SPLIT_PREFIXES = (
    ("train", "train"),
    ("valid", "valid"),
    ("eval", "valid"),
    ("test", "test"),
)
_SPLIT_SEED = 0  # the held-out examples of unsplit data; not the train seed


class NpyRecords:
  """Rows of a `.npy` file, memory-mapped in each process that reads them."""

  def __init__(self, path: pathlib.Path, seq_len: int):
    self.path = path
    array = self._open()
    if array.ndim == 1:  # a stream: rows of seq_len consecutive tokens
      self.num_rows, self.row_len = len(array) // seq_len, seq_len
    elif array.ndim == 2:
      self.num_rows, self.row_len = array.shape
    else:
      raise ValueError(
          f"{path} holds an array of shape {array.shape}; token files must be"
          " 1-D (a token stream) or 2-D [examples, length]."
      )
    if not np.issubdtype(array.dtype, np.integer):
      raise ValueError(
          f"{path} holds {array.dtype} values; token files must hold"
          " integers (e.g. uint16 or int32)."
      )
    self._array = None  # opened lazily, per process

  def _open(self) -> np.ndarray:
    try:
      return np.load(self.path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
      raise ValueError(f"{self.path} is not a readable .npy file: {e}") from e

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, row: int) -> np.ndarray:
    if self._array is None:
      self._array = self._open()
    if self._array.ndim == 1:
      return self._array[row * self.row_len : (row + 1) * self.row_len]
    return self._array[row]

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_array": None}


class ArrayRecordRecords:
  """Records of one `.array_record` file, each a row of tokens."""

  def __init__(self, path: pathlib.Path, dtype: str | None):
    self.path = path
    self._dtype = None if dtype is None else np.dtype(dtype).newbyteorder("<")
    self._source = grain.sources.ArrayRecordDataSource([str(path)])
    self.num_rows = len(self._source)
    self.row_len = len(self[0]) if self.num_rows else 0

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, row: int) -> np.ndarray:
    data = self._source[row]
    if data.startswith(_NPY_MAGIC):
      return np.load(io.BytesIO(data), allow_pickle=False)
    if self._dtype is None:
      raise ValueError(
          f"{self.path} record {row} is raw bytes, not .npy bytes, and no"
          f" {METADATA_FILE} gives their dtype; store each record with"
          ' np.save into a buffer, or add a metadata.json with "dtype".'
      )
    return np.frombuffer(data, self._dtype)


class TokenExamples:
  """Examples of `seq_len` tokens cut from the rows of token files."""

  def __init__(
      self,
      name: str,
      files: Sequence[NpyRecords | ArrayRecordRecords],
      seq_len: int,
      indices: np.ndarray | None = None,
  ):
    """Indexes the examples of `files`.

    Args:
      name: names the data in `repr` (and so in checkpoints).
      files: the files, in order.
      seq_len: tokens per example.
      indices: if given, this source is these examples of all files.
    """
    self._name = name
    self._files = list(files)
    self._seq_len = seq_len
    self._per_row = [f.row_len // seq_len for f in self._files]
    counts = [len(f) * k for f, k in zip(self._files, self._per_row)]
    self._starts = np.cumsum([0] + counts)  # [F + 1]
    self._indices = indices

  @property
  def num_all(self) -> int:
    """Examples in all files, before `indices` selects some."""
    return int(self._starts[-1])

  def __len__(self) -> int:
    if self._indices is not None:
      return len(self._indices)
    return self.num_all

  def _locate(self, index: int) -> tuple[int, int, int]:
    """(file, row, piece) of example `index`."""
    if self._indices is not None:
      index = int(self._indices[index])
    file = int(np.searchsorted(self._starts, index, side="right")) - 1
    row, piece = divmod(index - int(self._starts[file]), self._per_row[file])
    return file, row, piece

  def __getitem__(self, index: int) -> sources.Example:
    file, row, piece = self._locate(index)
    tokens = self._files[file][row]
    start = piece * self._seq_len
    return {"x": np.asarray(tokens[start : start + self._seq_len], np.int32)}

  def describe(self, index: int) -> str:
    """Where example `index` comes from (for error messages)."""
    file, row, piece = self._locate(index)
    return (
        f"{self._files[file].path} (row {row}, tokens from"
        f" {piece * self._seq_len})"
    )

  def __repr__(self) -> str:
    return (
        f"TokenExamples(name={self._name!r}, num_examples={len(self)},"
        f" seq_len={self._seq_len})"
    )


def seq_len_of(data_config: Any) -> int:
  shape = tuple(data_config.data_shape)
  if len(shape) != 1 or int(shape[0]) < 1:
    raise ValueError(
        f"data_config.data_shape is {shape} but {data_config.dataset}"
        " examples are 1-D token sequences; set data_config.data_shape ="
        " (seq_len,), e.g. (1024,)."
    )
  return int(shape[0])


def _open_files(paths, seq_len, dtype) -> list[NpyRecords | ArrayRecordRecords]:
  files = []
  for path in paths:
    if path.suffix == ".npy":
      records = NpyRecords(path, seq_len)
    else:
      records = ArrayRecordRecords(path, dtype)
    if len(records) and records.row_len < seq_len:
      raise ValueError(
          f"{path} has rows of {records.row_len} tokens, shorter than one"
          f" example of data_config.data_shape[0] = {seq_len}; use a shorter"
          " data_shape or longer rows."
      )
    files.append(records)
  return files


def _examples(name, paths, seq_len, dtype, indices=None) -> TokenExamples:
  examples = TokenExamples(
      name, _open_files(paths, seq_len, dtype), seq_len, indices
  )
  if len(examples) == 0:
    raise ValueError(
        f"the {name} split has no example of data_config.data_shape[0] ="
        f" {seq_len} tokens ({len(paths)} files); add data or shorten"
        " data_shape."
    )
  return examples


def _prepared_metadata(directory: pathlib.Path, dataset: str) -> dict[str, Any]:
  path = directory / METADATA_FILE
  command = (
      f"python prepare_openwebtext_data.py --dataset={dataset}"
      f" --data_dir={directory.parent}"
  )
  if not path.is_file():
    raise FileNotFoundError(
        f"{dataset} is not prepared: {path} does not exist. Prepare it with"
        f" `{command}` (see its --help for local input files and"
        " --tokenizer_dir), or set data_config.data_dir to where it was"
        " prepared."
    )
  with open(path) as f:
    metadata = json.load(f)
  if not metadata.get("complete"):
    raise ValueError(
        f"{path} says the preparation of {dataset} did not finish; run"
        f" `{command}` again (with the same flags) to resume it."
    )
  return metadata


def _check_prepared(
    metadata: dict[str, Any], path: pathlib.Path, data_config: Any, seq_len: int
) -> None:
  if int(data_config.vocab_size) != metadata["vocab_size"]:
    raise ValueError(
        f"data_config.vocab_size is {data_config.vocab_size} but {path} was"
        f" tokenized with a vocabulary of {metadata['vocab_size']}"
        f" ({metadata['tokenizer']['kind']}); set data_config.vocab_size ="
        f" {metadata['vocab_size']}."
    )
  if seq_len > metadata["seq_len"]:
    raise ValueError(
        f"data_config.data_shape is ({seq_len},) but {path} holds blocks of"
        f" {metadata['seq_len']} tokens; set data_config.data_shape ="
        f" ({metadata['seq_len']},) or shorter, or prepare the data again"
        f" with --seq_len={seq_len}."
    )


def _codec(
    directory: pathlib.Path, metadata: dict[str, Any] | None
) -> tuple[Callable[[str], np.ndarray], Callable[[np.ndarray], str]]:
  """(encode, decode) of the prepared tokenizer copy, else of plain ids."""
  tokenizer_dir = directory / TOKENIZER_SUBDIR
  if metadata is not None and tokenizer_dir.is_dir():
    try:
      tokenizer = tokenizers.load(metadata["tokenizer"]["kind"], tokenizer_dir)
      return tokenizer.encode, tokenizer.decode
    except (FileNotFoundError, ImportError, ValueError):
      pass  # samples are still written, and prompts read, as ids
  return text_as_ids, ids_as_text


def separator_of(metadata: dict[str, Any] | None) -> int | None:
  """The document separator a prepared corpus's metadata records, if any."""
  if not metadata:
    return None
  separator = metadata.get("tokenizer", {}).get("separator_id")
  return None if separator is None or separator < 0 else int(separator)


def ids_as_text(tokens: np.ndarray | Sequence[int]) -> str:
  """Space-separated ids: the decoder of token data without a tokenizer."""
  return " ".join(str(int(t)) for t in np.asarray(tokens).reshape(-1))


def text_as_ids(text: str) -> np.ndarray:
  """Inverse of `ids_as_text`: "5 17 3" -> int32 `[3]`, for prompts."""
  words = text.split()
  bad = [w for w in words if not (w.isascii() and w.isdigit())]
  if bad:
    raise ValueError(
        f"{bad[0]!r} is not a token id: this token data has no tokenizer"
        f" ({TOKENIZER_SUBDIR}/ with a {METADATA_FILE} naming it), so text is"
        ' read as space-separated non-negative ids, e.g. "17 4 230".'
    )
  return np.array([int(w) for w in words], np.int32)


def _directory(data_config: Any) -> pathlib.Path:
  if data_config.path:
    return pathlib.Path(data_config.data_dir) / data_config.path
  return pathlib.Path(data_config.data_dir) / data_config.dataset


def load_prepared(data_config: Any) -> sources.LoadedData:
  """Loads `openwebtext` or `fineweb_edu` as prepared by the script."""
  seq_len = seq_len_of(data_config)
  directory = _directory(data_config)
  metadata = _prepared_metadata(directory, data_config.dataset)
  _check_prepared(metadata, directory / METADATA_FILE, data_config, seq_len)
  name = data_config.dataset
  splits = {
      split: _examples(
          f"{name}/{split}",
          [directory / f for f in metadata["files"][split]],
          seq_len,
          metadata["dtype"],
      )
      for split in ("train", "valid")
      if metadata["files"][split]
  }
  if "train" not in splits:
    raise ValueError(
        f"{directory / METADATA_FILE} lists no training file;"
        " prepare more documents."
    )
  encode, decode = _codec(directory, metadata)
  return sources.LoadedData(
      info=sources.text_info(
          seq_len,
          metadata["vocab_size"],
          "perplexity",
          encode=encode,
          decode=decode,
          separator_id=separator_of(metadata),
      ),
      train=splits.pop("train"),
      eval=splits,
  )


def _split_files(paths: list[pathlib.Path]) -> dict[str, list[pathlib.Path]]:
  splits = {}
  for path in paths:
    for prefix, split in _SPLIT_PREFIXES:
      if path.name.startswith(prefix):
        splits.setdefault(split, []).append(path)
        break
  return splits


def held_out_indices(
    num: int, eval_fraction: float, what: str
) -> tuple[np.ndarray, np.ndarray]:
  """A fixed seeded split of `num` items: (train, valid) sorted indices."""
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(
        f"data_config.eval_fraction is {eval_fraction} but {what} has no"
        " evaluation split of its own, so a share in (0, 1) must be held"
        " out; set data_config.eval_fraction, e.g. 0.05."
    )
  num_valid = max(1, round(num * eval_fraction))
  if num_valid >= num:
    raise ValueError(
        f"{what} has {num} examples, too few to hold out"
        f" data_config.eval_fraction = {eval_fraction} and still train;"
        " add data or lower eval_fraction."
    )
  order = np.random.default_rng(_SPLIT_SEED).permutation(num)
  return np.sort(order[num_valid:]), np.sort(order[:num_valid])


def load_tokens(data_config: Any) -> sources.LoadedData:
  """Loads the user's token arrays from `data_config.path`."""
  seq_len = seq_len_of(data_config)
  directory = _directory(data_config)
  paths = sorted(
      p for p in directory.glob("*") if p.suffix in (".npy", ".array_record")
  )
  if not paths:
    raise FileNotFoundError(
        f"no .npy or .array_record token files in {directory}; put them"
        " there or set data_config.path (relative to data_config.data_dir,"
        " or absolute) to their directory."
    )
  metadata = None
  if (directory / METADATA_FILE).is_file():
    with open(directory / METADATA_FILE) as f:
      metadata = json.load(f)
    _check_prepared(metadata, directory / METADATA_FILE, data_config, seq_len)
  dtype = metadata["dtype"] if metadata else None
  splits = _split_files(paths)
  if "train" in splits:
    examples = {
        s: _examples(f"tokens/{s}", ps, seq_len, dtype)
        for s, ps in splits.items()
    }
  else:
    everything = _examples("tokens/all", paths, seq_len, dtype)
    train, valid = held_out_indices(
        everything.num_all,
        float(data_config.eval_fraction),
        f"the token files in {directory}",
    )
    files = _open_files(paths, seq_len, dtype)
    examples = {
        "train": TokenExamples("tokens/train", files, seq_len, train),
        "valid": TokenExamples("tokens/valid", files, seq_len, valid),
    }
  encode, decode = _codec(directory, metadata)
  return sources.LoadedData(
      info=sources.text_info(
          seq_len,
          int(data_config.vocab_size),
          "perplexity",
          encode=encode,
          decode=decode,
          separator_id=separator_of(metadata),
      ),
      train=examples.pop("train"),
      eval=examples,
  )
