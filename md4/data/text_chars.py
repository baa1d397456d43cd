"""A user's plain text file, modelled character by character.

The file is `data_config.path` (relative to `data_dir`, or absolute; default
`<data_dir>/text_chars/text.txt`), read as UTF-8.

Vocabulary: the characters of `data_config.characters` when it is set (ids in
that order), else those of the file `<text file>.vocab.json`
(`{"characters": [...]}`) when it exists, else the file's own characters in
code-point order, which are then written to that vocab file so later runs
(and a grown text) keep the same ids. `data_config.vocab_size` must equal the
number of characters; the error says the right number.

Split: the last `data_config.eval_fraction` of the characters are the "valid"
split, the rest train. As for text8, training examples are random crops of
`seq_len = data_shape[0]` characters and evaluation examples consecutive
non-overlapping chunks.
"""

import json
import os
import pathlib
from typing import Any

import numpy as np

from md4.data import sources
from md4.data import text8
from md4.data import token_files
from md4.data import tokenizers

DEFAULT_FILE = "text_chars/text.txt"
VOCAB_SUFFIX = ".vocab.json"


def text_path(data_config: Any) -> pathlib.Path:
  return pathlib.Path(data_config.data_dir) / (data_config.path or DEFAULT_FILE)


def vocab_path(path: pathlib.Path) -> pathlib.Path:
  return path.with_name(path.name + VOCAB_SUFFIX)


def _read_text(path: pathlib.Path) -> str:
  if not path.is_file():
    raise FileNotFoundError(
        f"no text file at {path}; put the text there or set data_config.path"
        " to a UTF-8 text file (relative to data_config.data_dir, or"
        " absolute)."
    )
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(
        f"{path} is not UTF-8 text ({e}); convert it to UTF-8."
    ) from e
  if not text:
    raise ValueError(
        f"the text file {path} is empty; put the text to model in it, or"
        " set data_config.path to another file."
    )
  return text


def alphabet(data_config: Any, path: pathlib.Path, text: str) -> str:
  """The vocabulary: from the config, the vocab file, or the text itself."""
  if data_config.characters:
    return data_config.characters
  stored = vocab_path(path)
  if stored.is_file():
    with open(stored, encoding="utf-8") as f:
      frozen = "".join(json.load(f)["characters"])
    new = "".join(sorted(set(text) - set(frozen)))
    if new:
      raise ValueError(
          f"the text file {path} has {len(new)} characters {new!r} that are"
          f" not in its frozen vocabulary {stored} ({len(frozen)} characters,"
          " kept so that ids stay the same across runs); set"
          f" data_config.characters = {frozen + new!r} and"
          f" data_config.vocab_size = {len(frozen) + len(new)} (the frozen"
          f" ids first), or delete {stored} to rebuild it from the text."
      )
    return frozen
  characters = "".join(sorted(set(text)))
  _write_vocab(stored, characters)
  return characters


def _write_vocab(stored: pathlib.Path, characters: str) -> None:
  """Saves the vocabulary next to the text (atomically; best effort)."""
  partial = stored.with_name(f"{stored.name}.partial-{os.getpid()}")
  try:
    with open(partial, "w", encoding="utf-8") as f:
      json.dump({"characters": list(characters)}, f, ensure_ascii=False)
    os.replace(partial, stored)
  except OSError:
    partial.unlink(missing_ok=True)  # a read-only directory: ids still work


def load(data_config: Any) -> sources.LoadedData:
  """Loads the text file as a "train" and a "valid" split of characters."""
  seq_len = token_files.seq_len_of(data_config)
  path = text_path(data_config)
  text = _read_text(path)
  tokenizer = tokenizers.CharTokenizer(
      alphabet(data_config, path, text), name=f"the text file {path}"
  )
  sources.check_matches_config(
      data_config, data_shape=(seq_len,), vocab_size=tokenizer.vocab_size
  )
  tokens = tokenizer.encode(text)  # [N] int32
  dtype = np.uint8 if tokenizer.vocab_size <= 256 else np.int32
  tokens = tokens.astype(dtype)
  eval_fraction = float(data_config.eval_fraction)
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(
        f"data_config.eval_fraction is {eval_fraction}; text_chars holds out"
        " the last share of the text for evaluation, so it must be in (0,"
        " 1), e.g. 0.05."
    )
  num_train = len(tokens) - int(len(tokens) * eval_fraction)
  return sources.LoadedData(
      info=sources.text_info(
          seq_len,
          tokenizer.vocab_size,
          "bits_per_char",
          encode=tokenizer.encode,
          decode=tokenizer.decode,
      ),
      train=text8.CropWindowSource(
          "text_chars/train", tokens[:num_train], seq_len
      ),
      train_transforms=(text8.RandomCrop(seq_len),),
      eval={
          "valid": sources.ArraySource(
              "text_chars/valid",
              text8.chunks(tokens[num_train:], seq_len, "text_chars valid"),
          )
      },
  )
