"""Protein sequences from FASTA files, as amino-acid tokens.

Files: every `*.fasta`, `*.fa`, `*.faa` (optionally gzipped, `.gz`) in
`<data_dir>/protein/`, or `data_config.path` (a file or a directory, relative
to `data_dir` or absolute), read in sorted order. Each record's sequence
lines are joined and upper-cased; a trailing "*" (stop) is dropped.

Tokens (`ALPHABET`): the 20 standard amino acids "ACDEFGHIKLMNPQRSTVWY" are
ids 0-19, then X (unknown) 20, B (D or N) 21, Z (E or Q) 22, U
(selenocysteine) 23, O (pyrrolysine) 24, and `PAD` = 25; vocabulary 26. The
pad token also marks the end of a protein: it fills the positions after the
last residue, so a model learns where proteins end, and samples are cut at
their first trailing pad when decoded.

Split: a fixed seeded permutation (independent of the training seed) holds
out `data_config.eval_fraction` of the proteins as "valid".

Examples are `seq_len = data_shape[0]` tokens:
* training: a protein longer than `seq_len` is cropped at a random start
  (drawn per record from grain's seeded generator, so a restored iterator
  redraws the same crops); a shorter one is padded with `PAD`;
* evaluation: the first `seq_len` residues, padded with `PAD`.
"""

import gzip
import pathlib
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from md4.data import sources
from md4.data import token_files
from md4.data import tokenizers

ALPHABET = "ACDEFGHIKLMNPQRSTVWY" + "XBZUO"
PAD = len(ALPHABET)  # 25
VOCAB_SIZE = PAD + 1  # 26
SUFFIXES = (".fasta", ".fa", ".faa")


class Tokenizer(tokenizers.CharTokenizer):
  """Amino-acid letters to ids (see `ALPHABET`), with a pad id."""

  def __init__(self):
    super().__init__(ALPHABET, name="protein", special=("pad",))

  def decode(self, tokens) -> str:
    """Residues up to the trailing pads; inner pads show as "-"."""
    tokens = np.asarray(tokens)
    keep = len(tokens)
    while keep and tokens[keep - 1] == PAD:
      keep -= 1
    text = super().decode(tokens[:keep])
    inner_pads = np.flatnonzero(tokens[:keep] == PAD)
    if inner_pads.size:
      chars = list(text)
      for i in inner_pads:
        chars[i] = "-"
      text = "".join(chars)
    return text


def fasta_files(data_config: Any) -> list[pathlib.Path]:
  """The FASTA files to read, sorted; FileNotFoundError if there are none."""
  where = pathlib.Path(data_config.data_dir) / (data_config.path or "protein")
  if where.is_file():
    return [where]
  names = SUFFIXES + tuple(s + ".gz" for s in SUFFIXES)
  files = sorted(p for p in where.glob("*") if p.name.endswith(names))
  if not files:
    raise FileNotFoundError(
        f"no FASTA files ({', '.join('*' + n for n in names)}) in {where};"
        " put the protein sequences there (e.g. a UniProt proteome .fasta.gz"
        " downloaded on a machine with internet access) or set"
        " data_config.path to a FASTA file or directory."
    )
  return files


def read_fasta(path: pathlib.Path) -> Iterator[tuple[str, str]]:
  """Yields (header, sequence) of each record of a plain or gzipped FASTA."""
  opener = gzip.open if path.name.endswith(".gz") else open
  with opener(path, "rt", encoding="ascii", errors="replace") as f:
    header, lines = None, []
    for line_number, line in enumerate(f, 1):
      line = line.strip()
      if line.startswith(">"):
        if header is not None:
          yield header, "".join(lines)
        header, lines = line[1:], []
      elif line and not line.startswith(";"):
        if header is None:
          raise ValueError(
              f"{path}:{line_number} has sequence before any '>' header; it"
              " is not a FASTA file."
          )
        lines.append(line)
    if header is not None:
      yield header, "".join(lines)


def read_proteins(files: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes all proteins: (tokens uint8 [total], offsets int64 [N + 1])."""
  tokenizer = Tokenizer()
  pieces = []
  for path in files:
    for header, sequence in read_fasta(path):
      sequence = sequence.upper().removesuffix("*")
      if not sequence:
        continue
      try:
        pieces.append(tokenizer.encode(sequence).astype(np.uint8))
      except ValueError as e:
        raise ValueError(
            f"{path}, protein {header[:60]!r}: {e} Remove or replace those"
            " characters (gaps, stops, digits) in the FASTA file."
        ) from e
  if not pieces:
    raise ValueError(
        f"the FASTA files {[str(f) for f in files]} hold no protein sequence."
    )
  offsets = np.cumsum([0] + [len(p) for p in pieces])
  return np.concatenate(pieces), offsets


class ProteinSource:
  """Proteins `indices` of a ragged token array: each record is a protein.

  With `seq_len`, records are finished examples (first `seq_len` residues,
  padded); without, they are the whole proteins as uint8 token arrays.
  """

  def __init__(
      self,
      name: str,
      tokens: np.ndarray,
      offsets: np.ndarray,
      indices: np.ndarray,
      seq_len: int | None = None,
  ):
    self._name = name
    self._tokens = tokens
    self._offsets = offsets
    self._indices = indices
    self._seq_len = seq_len

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> np.ndarray | sources.Example:
    protein = int(self._indices[index])
    residues = self._tokens[self._offsets[protein] : self._offsets[protein + 1]]
    if self._seq_len is None:
      return residues
    return {"x": pad_or_crop(residues, self._seq_len, 0)}

  def describe(self, index: int) -> str:
    return f"{self._name} protein {int(self._indices[index])}"

  def __repr__(self) -> str:
    return (
        f"ProteinSource(name={self._name!r}, num_proteins={len(self)},"
        f" seq_len={self._seq_len})"
    )


def pad_or_crop(residues: np.ndarray, seq_len: int, start: int) -> np.ndarray:
  """`seq_len` tokens from `start`, padded with PAD; int32 `[seq_len]`."""
  out = np.full(seq_len, PAD, np.int32)
  piece = residues[start : start + seq_len]
  out[: len(piece)] = piece
  return out


class RandomCropOrPad(grain.transforms.RandomMap):
  """Crops a long protein at a random start; pads a short one."""

  def __init__(self, seq_len: int):
    self.seq_len = seq_len

  def random_map(
      self, element: np.ndarray, rng: np.random.Generator
  ) -> sources.Example:
    max_start = max(0, len(element) - self.seq_len)
    start = int(rng.integers(0, max_start + 1))
    return {"x": pad_or_crop(element, self.seq_len, start)}

  def __repr__(self) -> str:
    return f"RandomCropOrPad(seq_len={self.seq_len})"


def load(data_config: Any) -> sources.LoadedData:
  """Loads proteins as a "train" source and a held-out "valid" source."""
  seq_len = token_files.seq_len_of(data_config)
  sources.check_matches_config(
      data_config, data_shape=(seq_len,), vocab_size=VOCAB_SIZE
  )
  files = fasta_files(data_config)
  tokens, offsets = read_proteins(files)
  train, valid = token_files.held_out_indices(
      len(offsets) - 1,
      float(data_config.eval_fraction),
      f"the proteins in {files[0].parent}",
  )
  tokenizer = Tokenizer()
  return sources.LoadedData(
      info=sources.text_info(
          seq_len,
          VOCAB_SIZE,
          "bits_per_char",
          encode=tokenizer.encode,
          decode=tokenizer.decode,
      ),
      train=ProteinSource("protein/train", tokens, offsets, train),
      train_transforms=(RandomCropOrPad(seq_len),),
      eval={
          "valid": ProteinSource(
              "protein/valid", tokens, offsets, valid, seq_len
          )
      },
  )
