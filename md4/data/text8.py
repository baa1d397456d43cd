"""text8: the first 100M characters of cleaned English Wikipedia.

The file `<data_dir>/text8/text8.zip` holds one member, `text8`: 100,000,000
characters of lowercase `a-z` and space. It is downloaded from `URL` when
missing (a machine without internet gets a FileNotFoundError saying where to
put the file).

Tokens: a character's index in `ALPHABET = " abcdefghijklmnopqrstuvwxyz"`, so
space is 0, "a" is 1, ..., "z" is 26; vocabulary 27.

Splits: the standard 90M / 5M / 5M characters (train / valid / test) for the
real file; other lengths are split 90% / 5% / 5% in the same order.

Examples are `seq_len = data_shape[0]` characters:
* training: random crops. Record `i` is the window starting at `i * seq_len`;
  a grain `RandomMap` shifts the crop start by a random offset in
  `[0, seq_len)`, so an epoch covers the split once with a fresh alignment and
  every start position is reachable. The offset is drawn from the generator
  grain gives each record, which is seeded from the loader seed and the
  record's position in the stream (the position encodes the epoch and the
  record), so crops are reproducible and a restored iterator redraws them
  exactly.
* evaluation ("valid", "test"): consecutive non-overlapping chunks; the
  incomplete tail of a split is dropped.
"""

import http.client
import os
import pathlib
from typing import Any
import urllib.request
import zipfile

import grain
import numpy as np

from md4.data import sources
from md4.data import tokenizers

URL = "http://mattmahoney.net/dc/text8.zip"
MEMBER = "text8"
ALPHABET = " abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(ALPHABET)  # 27
# Shown by `decode` for ids outside the vocabulary (e.g. the mask token).
UNKNOWN_CHAR = tokenizers.UNKNOWN
DOWNLOAD_TIMEOUT_S = 30.0


class Tokenizer(tokenizers.CharTokenizer):
  """Maps text8 characters to token ids and back (see `ALPHABET`)."""

  def __init__(self):
    super().__init__(ALPHABET, name="text8")


def split_sizes(num_chars: int) -> tuple[int, int, int]:
  """Returns (train, valid, test) sizes: 90M/5M/5M for the 100M-char file."""
  num_train = num_chars * 9 // 10
  num_valid = num_chars // 20
  return num_train, num_valid, num_chars - num_train - num_valid


def download_text8(path: pathlib.Path) -> None:
  """Downloads `URL` to `path` (atomically: a partial file is never left)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
  try:
    with urllib.request.urlopen(URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
      with open(partial, "wb") as f:
        while chunk := response.read(1 << 20):
          f.write(chunk)
    os.replace(partial, path)
  finally:
    partial.unlink(missing_ok=True)


def _ensure_file(path: pathlib.Path) -> None:
  """Downloads the file if it is missing; FileNotFoundError if that fails."""
  if path.exists():
    return
  try:
    download_text8(path)
  except (OSError, http.client.HTTPException) as e:
    raise FileNotFoundError(
        f"text8 not found at {path} and downloading it from {URL} failed"
        f" ({type(e).__name__}: {e}). Download text8.zip on a machine with"
        f" internet access and copy it to {path} (data_config.data_dir is"
        f" {path.parent.parent})."
    ) from e


def read_tokens(path: pathlib.Path) -> np.ndarray:
  """Reads the zip at `path` and returns the whole text as uint8 ids `[N]`."""
  try:
    with zipfile.ZipFile(path) as archive:
      if MEMBER not in archive.namelist():
        raise ValueError(
            f"{path} has members {archive.namelist()[:5]} but no {MEMBER!r};"
            f" it must be the text8.zip from {URL}."
        )
      data = archive.read(MEMBER)
  except zipfile.BadZipFile as e:
    raise ValueError(
        f"{path} is not a valid zip file ({e}); delete it and download"
        f" text8.zip from {URL} again."
    ) from e
  return Tokenizer().encode_bytes(data)


def _seq_len(data_config: Any) -> int:
  shape = tuple(data_config.data_shape)
  if len(shape) != 1 or int(shape[0]) < 1:
    raise ValueError(
        f"data_config.data_shape is {shape} but text8 examples are 1-D"
        " sequences; set data_config.data_shape = (seq_len,), e.g. (256,)."
    )
  return int(shape[0])


def chunks(tokens: np.ndarray, seq_len: int, split: str) -> np.ndarray:
  """Non-overlapping chunks `[len(tokens) // seq_len, seq_len]`."""
  num_chunks = len(tokens) // seq_len
  if num_chunks == 0:
    raise ValueError(
        f"the {split} split has {len(tokens)} tokens, fewer than"
        f" one sequence of data_config.data_shape[0] = {seq_len}; use a"
        " shorter sequence or a longer file."
    )
  return tokens[: num_chunks * seq_len].reshape(num_chunks, seq_len)


class CropWindowSource:
  """Training records of a token stream: window `i` starts at `i * seq_len`.

  A window has up to `2 * seq_len - 1` characters (fewer at the end of the
  split), enough for `RandomCrop` to take any of `seq_len` start offsets.
  """

  def __init__(self, name: str, tokens: np.ndarray, seq_len: int):
    if len(tokens) < seq_len:
      raise ValueError(
          f"the {name} split has {len(tokens)} tokens, fewer than one"
          f" sequence of data_config.data_shape[0] = {seq_len}; use a"
          " shorter sequence or more data."
      )
    self._name = name
    self._tokens = tokens
    self._seq_len = seq_len

  def __len__(self) -> int:
    return len(self._tokens) // self._seq_len

  def __getitem__(self, index: int) -> np.ndarray:
    start = index * self._seq_len
    return self._tokens[start : start + 2 * self._seq_len - 1]

  def __repr__(self) -> str:
    return (
        f"CropWindowSource(name={self._name!r}, num_chars={len(self._tokens)},"
        f" seq_len={self._seq_len})"
    )


class RandomCrop(grain.transforms.RandomMap):
  """Crops `seq_len` tokens at a random offset of a window."""

  def __init__(self, seq_len: int):
    self.seq_len = seq_len

  def random_map(
      self, element: np.ndarray, rng: np.random.Generator
  ) -> sources.Example:
    max_offset = min(self.seq_len - 1, len(element) - self.seq_len)
    offset = int(rng.integers(0, max_offset + 1))
    crop = element[offset : offset + self.seq_len]
    return {"x": crop.astype(np.int32)}  # [seq_len]

  def __repr__(self) -> str:
    return f"RandomCrop(seq_len={self.seq_len})"


def load(data_config: Any) -> sources.LoadedData:
  """Loads text8 from `<data_dir>/text8/text8.zip`, downloading if missing."""
  seq_len = _seq_len(data_config)
  sources.check_matches_config(
      data_config, data_shape=(seq_len,), vocab_size=VOCAB_SIZE
  )
  path = pathlib.Path(data_config.data_dir) / "text8" / "text8.zip"
  _ensure_file(path)
  tokens = read_tokens(path)  # [N] uint8
  num_train, num_valid, _ = split_sizes(len(tokens))
  train = tokens[:num_train]
  valid = tokens[num_train : num_train + num_valid]
  test = tokens[num_train + num_valid :]
  tokenizer = Tokenizer()
  info = sources.text_info(
      seq_len,
      VOCAB_SIZE,
      "bits_per_char",
      encode=tokenizer.encode,
      decode=tokenizer.decode,
  )
  return sources.LoadedData(
      info=info,
      train=CropWindowSource("text8/train", train, seq_len),
      train_transforms=(RandomCrop(seq_len),),
      eval={
          "valid": sources.ArraySource(
              "text8/valid", chunks(valid, seq_len, "text8 valid")
          ),
          "test": sources.ArraySource(
              "text8/test", chunks(test, seq_len, "text8 test")
          ),
      },
  )
