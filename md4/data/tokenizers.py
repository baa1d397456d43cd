"""Tokenizers behind one small interface: characters, GPT-2 BPE, sentencepiece.

Every tokenizer has

    encode(text) -> int32 ids [N]        (no special tokens added)
    decode(ids [L]) -> str               (ids outside the vocabulary, such as
                                          the mask id, show as `UNKNOWN`)
    vocab_size                           (ids are in [0, vocab_size))
    special_ids                          (name -> id, e.g. {"eot": 50256})

* `CharTokenizer(alphabet)`: one id per character, the character's position in
  `alphabet` (text8: " abc...z"; protein: amino-acid letters; a user's text
  file: its characters). Optional extra special ids follow the alphabet.
* `GPT2Tokenizer(directory)`: GPT-2's byte-level BPE from `vocab.json` and
  `merges.txt` (Hugging Face file names), or a `tokenizer.json`, read with
  the `tokenizers` library. Ids equal the reference GPT-2 tokenizer's; text
  that spells "<|endoftext|>" is encoded as ordinary text, never as the
  end-of-text id, so a document cannot fake a document boundary.
* `SentencePieceTokenizer(model_path)`, and `train_sentencepiece` to make a
  model from a corpus.

`load(kind, path)` builds one by name.
"""

from collections.abc import Iterable, Mapping, Sequence
import json
import os
import pathlib
from typing import Protocol

import numpy as np

# Shown by `decode` for ids outside the vocabulary (e.g. the mask token).
UNKNOWN = "_"
GPT2_END_OF_TEXT = "<|endoftext|>"
GPT2_FILES = ("vocab.json", "merges.txt")
GPT2_JSON_FILE = "tokenizer.json"
KINDS = ("chars", "gpt2", "sentencepiece")
_INVALID = -1  # marks characters outside the alphabet in lookups


class Tokenizer(Protocol):
  """What every md4 tokenizer provides."""

  vocab_size: int
  special_ids: Mapping[str, int]

  def encode(self, text: str) -> np.ndarray:
    ...

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    ...


def _one_sequence(tokens: np.ndarray | Sequence[int]) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(
        f"decode takes one sequence of ids [L], got shape {tokens.shape};"
        " decode each row separately."
    )
  return tokens.astype(np.int64)


def _decode_known_runs(tokens: np.ndarray, vocab_size: int, decode_run) -> str:
  """Decodes runs of in-vocabulary ids; each unknown id becomes `UNKNOWN`."""
  known = (tokens >= 0) & (tokens < vocab_size)
  pieces, start = [], 0
  for bad in np.flatnonzero(~known):
    if bad > start:
      pieces.append(decode_run(tokens[start:bad].tolist()))
    pieces.append(UNKNOWN)
    start = bad + 1
  if start < len(tokens):
    pieces.append(decode_run(tokens[start:].tolist()))
  return "".join(pieces)


class CharTokenizer:
  """One token per character: a character's id is its index in `alphabet`."""

  def __init__(
      self,
      alphabet: str,
      *,
      name: str = "chars",
      special: Sequence[str] = (),
  ):
    """Builds the lookup tables.

    Args:
      alphabet: the characters, each once; ids 0 .. len(alphabet) - 1.
      name: names the data in error messages, e.g. "text8".
      special: names of special ids placed after the alphabet, e.g. ("pad",).
    """
    if not alphabet or len(set(alphabet)) != len(alphabet):
      raise ValueError(
          f"a {name} alphabet must list each character once, got"
          f" {alphabet[:80]!r}; remove the repeated characters."
      )
    self.name = name
    self.alphabet = alphabet
    self.special_ids = {s: len(alphabet) + i for i, s in enumerate(special)}
    self.vocab_size = len(alphabet) + len(special)
    # Code points, sorted, and the id of each, for searchsorted lookups.
    points = np.array([ord(c) for c in alphabet], np.int64)
    order = np.argsort(points)
    self._points = points[order]
    self._point_ids = order.astype(np.int64)
    # Fast path for single-byte alphabets: byte value -> id.
    self._byte_to_id = None
    if self._points[-1] < 256:
      self._byte_to_id = np.full(256, _INVALID, np.int32)
      self._byte_to_id[self._points] = self._point_ids
    self._id_to_char = np.array(list(alphabet) + [UNKNOWN] * (len(special) + 1))

  def encode_bytes(self, data: bytes) -> np.ndarray:
    """Encodes single-byte (ASCII/Latin-1) text; returns ids `[len(data)]`.

    The ids are uint8 when they fit (text8's 100M characters stay 100 MB),
    else int32.
    """
    if self._byte_to_id is None:
      return self.encode(data.decode("utf-8"))
    ids = self._byte_to_id[np.frombuffer(data, np.uint8)]  # [N]
    self._check(ids, lambda i: bytes([data[i]]).decode("latin-1"))
    return ids.astype(np.uint8 if self.vocab_size <= 256 else np.int32)

  def encode(self, text: str) -> np.ndarray:
    """Encodes a string; returns int32 ids `[len(text)]`."""
    if self._byte_to_id is not None and text.isascii():
      return self.encode_bytes(text.encode("ascii")).astype(np.int32)
    points = np.frombuffer(text.encode("utf-32-le"), np.uint32)  # [N]
    points = points.astype(np.int64)
    where = np.searchsorted(self._points, points)
    where = np.minimum(where, len(self._points) - 1)
    ids = np.where(
        self._points[where] == points, self._point_ids[where], _INVALID
    )
    self._check(ids, lambda i: text[i])
    return ids.astype(np.int32)

  def _check(self, ids: np.ndarray, char_at) -> None:
    bad = np.flatnonzero(ids == _INVALID)
    if bad.size:
      found = sorted({char_at(i) for i in bad[:1000]})
      raise ValueError(
          f"{self.name} data contains {bad.size} characters outside the"
          f" vocabulary {self.alphabet[:100]!r}, first at position {bad[0]}"
          f" (found {found[:20]}); {self.name} text may only use the"
          " vocabulary's characters."
      )

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    """Decodes ids `[L]`; specials and unknown ids become `UNKNOWN`."""
    tokens = _one_sequence(tokens)
    letters = len(self.alphabet)
    known = (tokens >= 0) & (tokens < letters)
    return "".join(self._id_to_char[np.where(known, tokens, letters)])


class GPT2Tokenizer:
  """GPT-2 byte-level BPE read from a local directory (no download)."""

  def __init__(self, directory: str | os.PathLike[str]):
    """Loads `vocab.json` + `merges.txt`, else `tokenizer.json`, from it.

    Raises:
      FileNotFoundError: if the directory holds neither.
      ImportError: if the `tokenizers` package is not installed.
    """
    import tokenizers  # pylint: disable=g-import-not-at-top

    self.directory = pathlib.Path(directory)
    vocab, merges = (self.directory / f for f in GPT2_FILES)
    if vocab.is_file() and merges.is_file():
      tokenizer = tokenizers.Tokenizer(
          tokenizers.models.BPE.from_file(str(vocab), str(merges))
      )
      tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
          add_prefix_space=False
      )
      tokenizer.decoder = tokenizers.decoders.ByteLevel()
      self.files = GPT2_FILES
    elif (self.directory / GPT2_JSON_FILE).is_file():
      tokenizer = tokenizers.Tokenizer.from_file(
          str(self.directory / GPT2_JSON_FILE)
      )
      self.files = (GPT2_JSON_FILE,)
    else:
      raise FileNotFoundError(
          f"no GPT-2 tokenizer in {self.directory}: it needs"
          f" {' and '.join(GPT2_FILES)} (or {GPT2_JSON_FILE}). Copy GPT-2's"
          " tokenizer files there (the Hugging Face `gpt2` model's"
          " vocab.json and merges.txt)."
      )
    self._tokenizer = tokenizer
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    end_of_text = tokenizer.token_to_id(GPT2_END_OF_TEXT)
    if end_of_text is None:
      raise ValueError(
          f"the tokenizer in {self.directory} has no {GPT2_END_OF_TEXT!r}"
          " token; GPT-2 BPE needs it to separate documents."
      )
    self.special_ids = {"eot": int(end_of_text)}

  def encode(self, text: str) -> np.ndarray:
    """Encodes text as ordinary text; returns int32 ids `[N]`."""
    ids = self._tokenizer.encode(text, add_special_tokens=False).ids
    return np.asarray(ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Encodes many documents at once (faster than one `encode` each)."""
    encodings = self._tokenizer.encode_batch(
        list(texts), add_special_tokens=False
    )
    return [e.ids for e in encodings]

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    """Decodes ids `[L]`; ids outside the vocabulary become `UNKNOWN`."""
    return _decode_known_runs(
        _one_sequence(tokens),
        self.vocab_size,
        lambda ids: self._tokenizer.decode(ids, skip_special_tokens=False),
    )


class SentencePieceTokenizer:
  """A sentencepiece model loaded from its `.model` file."""

  def __init__(self, model_path: str | os.PathLike[str]):
    import sentencepiece  # pylint: disable=g-import-not-at-top

    self.model_path = pathlib.Path(model_path)
    if not self.model_path.is_file():
      raise FileNotFoundError(
          f"no sentencepiece model at {self.model_path}; train one with"
          " md4.data.tokenizers.train_sentencepiece (or"
          " prepare_openwebtext_data.py --tokenizer=sentencepiece"
          " --sentencepiece_vocab_size=N) or give the path of a .model file."
      )
    self._processor = sentencepiece.SentencePieceProcessor(
        model_file=str(self.model_path)
    )
    self.vocab_size = int(self._processor.get_piece_size())
    specials = {
        "unk": self._processor.unk_id(),
        "bos": self._processor.bos_id(),
        "eos": self._processor.eos_id(),
        "pad": self._processor.pad_id(),
    }
    self.special_ids = {k: int(v) for k, v in specials.items() if v >= 0}

  def encode(self, text: str) -> np.ndarray:
    """Encodes text without bos/eos; returns int32 ids `[N]`."""
    return np.asarray(self._processor.encode(text), np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._processor.encode(list(texts))

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    """Decodes ids `[L]`; ids outside the vocabulary become `UNKNOWN`."""
    return _decode_known_runs(
        _one_sequence(tokens), self.vocab_size, self._processor.decode
    )


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | os.PathLike[str],
    *,
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
) -> pathlib.Path:
  """Trains a sentencepiece model on `texts`; returns `<model_prefix>.model`.

  The model has unk 0, bos 1, eos 2 and pad 3 (eos separates documents when
  packing). Training is deterministic for the same texts and settings.

  Args:
    texts: the training corpus, one document or sentence per item.
    model_prefix: where to write `<prefix>.model` and `<prefix>.vocab`.
    vocab_size: the number of pieces, including the four special ones.
    model_type: "bpe", "unigram", "char" or "word".
    character_coverage: share of characters the pieces must cover; 1.0 keeps
      every character (right for small alphabets such as amino acids).
  """
  import sentencepiece  # pylint: disable=g-import-not-at-top

  model_prefix = pathlib.Path(model_prefix)
  model_prefix.parent.mkdir(parents=True, exist_ok=True)
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_prefix=str(model_prefix),
      vocab_size=int(vocab_size),
      model_type=model_type,
      character_coverage=character_coverage,
      unk_id=0,
      bos_id=1,
      eos_id=2,
      pad_id=3,
      num_threads=1,
      minloglevel=2,
  )
  return model_prefix.with_name(model_prefix.name + ".model")


def load(kind: str, path: str | os.PathLike[str]) -> Tokenizer:
  """Builds a tokenizer by kind.

  Args:
    kind: "gpt2" (a directory with vocab.json + merges.txt),
      "sentencepiece" (a .model file, or a directory holding exactly one) or
      "chars" (a JSON file {"characters": [...]}).
    path: the file or directory.

  Returns:
    The tokenizer.
  """
  path = pathlib.Path(path)
  if kind == "gpt2":
    return GPT2Tokenizer(path)
  if kind == "sentencepiece":
    if path.is_dir():
      models = sorted(path.glob("*.model"))
      if len(models) != 1:
        raise FileNotFoundError(
            f"{path} holds {len(models)} sentencepiece .model files, expected"
            " exactly one; give the path of the .model file."
        )
      path = models[0]
    return SentencePieceTokenizer(path)
  if kind == "chars":
    with open(path, encoding="utf-8") as f:
      return CharTokenizer("".join(json.load(f)["characters"]), name=path.name)
  raise ValueError(
      f"tokenizer kind {kind!r} is not known; choose one of {', '.join(KINDS)}."
  )
