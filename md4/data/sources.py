"""What a data-set module hands to the pipeline builder.

Every data-set module (`digits`, `text8`, `mnist`, `tfds_images`,
`token_files`, `protein`, `text_chars`) has a `load(data_config) ->
LoadedData` function. `LoadedData` holds grain
random-access sources whose records are finished examples,

    {"x": int32 [*data_shape], "label": int32 []}   ("label" only if labelled)

except for the training source, which may need `train_transforms` (e.g. text8's
random crop) to become one. `pipelines.build_datasets` turns these into the
shuffled, sharded, batched training loader and the padded evaluation batches.

A source's `repr` is stored in data-iterator checkpoints and compared on
restore, so it names the data (never a memory address or a local path). A
source may also have `describe(index) -> str` naming the file a record comes
from, which `check_sample` (run on every split at start-up) puts in its
errors.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any

import grain
import numpy as np

Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Facts about a data set that the model and the samplers need.

  Attributes:
    data_shape: shape of one example's `x`, e.g. `(L,)` or `(H, W, C)`.
    vocab_size: token values are in `[0, vocab_size)`.
    num_classes: number of label classes; 0 when examples carry no label.
    kind: "text" or "image".
    unit: what its bound is reported in (`md4.metrics.LABELS`):
      "bits_per_dim" (images), "bits_per_char" (character data) or
      "perplexity" (token data).
    decode: for text, turns tokens `[L]` back into a string; None for images.
    encode: for text, turns a string into int tokens `[n]` (the tokenizer's
      `encode`, no special tokens); used for prompts. None when unknown.
    separator_id: for token data, the id that ends every document in the
      training stream (GPT-2's end-of-text), when the data records it.
  """

  data_shape: tuple[int, ...]
  vocab_size: int
  num_classes: int
  kind: str
  unit: str = "bits_per_dim"
  decode: Callable[[np.ndarray], str] | None = None
  encode: Callable[[str], np.ndarray] | None = None
  separator_id: int | None = None


def text_info(
    seq_len: int,
    vocab_size: int,
    unit: str,
    encode: Callable[[str], np.ndarray] | None,
    decode: Callable[[np.ndarray], str] | None,
    separator_id: int | None = None,
) -> DataInfo:
  """The `DataInfo` of a text data set of sequences of `seq_len` tokens."""
  return DataInfo(
      data_shape=(seq_len,),
      vocab_size=int(vocab_size),
      num_classes=0,
      kind="text",
      unit=unit,
      decode=decode,
      encode=encode,
      separator_id=separator_id,
  )


@dataclasses.dataclass(frozen=True)
class LoadedData:
  """A data set's sources, as returned by each data-set module's `load`.

  Attributes:
    info: the data set's `DataInfo`.
    train: random-access source of training records.
    eval: evaluation split name -> random-access source of finished examples.
    train_transforms: grain transforms turning a training record into a
      finished example (empty when `train` records already are examples).
  """

  info: DataInfo
  train: grain.sources.RandomAccessDataSource
  eval: Mapping[str, grain.sources.RandomAccessDataSource]
  train_transforms: tuple[grain.transforms.Transformation, ...] = ()


def check_matches_config(
    data_config: Any,
    *,
    data_shape: Sequence[int],
    vocab_size: int,
    shape_hint: str = "",
) -> None:
  """Raises ValueError if the data's shape or vocabulary differs from config.

  Args:
    data_config: the `config.data` ConfigDict (reads `dataset`, `data_shape`
      and `vocab_size`).
    data_shape: the shape of one example of the data, e.g. `(28, 28, 1)`.
    vocab_size: the number of token values of the data.
    shape_hint: extra advice appended to the data_shape error (e.g. "or change
      data_config.pad_to").
  """
  name = data_config.dataset
  data_shape = tuple(int(d) for d in data_shape)
  if int(data_config.vocab_size) != vocab_size:
    raise ValueError(
        f"data_config.vocab_size is {data_config.vocab_size} but the {name}"
        f" data has {vocab_size} token values; set data_config.vocab_size ="
        f" {vocab_size}."
    )
  config_shape = tuple(data_config.data_shape)
  if config_shape != data_shape:
    raise ValueError(
        f"data_config.data_shape is {config_shape} but {name} examples have"
        f" shape {data_shape}; set data_config.data_shape = {data_shape}"
        f"{shape_hint}."
    )


class ArraySource:
  """A random-access source over examples held in numpy arrays.

  Values are stored compactly (e.g. uint8) and converted to int32 per record.
  """

  def __init__(
      self,
      name: str,
      x: np.ndarray,
      label: np.ndarray | None = None,
  ):
    """Wraps arrays of examples.

    Args:
      name: names the data in `repr` (and so in checkpoints), e.g.
        "digits/train".
      x: integer array `[N, *data_shape]`.
      label: integer array `[N]`, or None for unlabelled data.
    """
    if label is not None and len(label) != len(x):
      raise ValueError(
          f"{name}: label has {len(label)} entries but x has {len(x)}"
          " examples; they must have one label per example."
      )
    self._name = name
    self._x = x
    self._label = label

  def __len__(self) -> int:
    return len(self._x)

  def __getitem__(self, index: int) -> Example:
    example = {"x": self._x[index].astype(np.int32)}
    if self._label is not None:
      example["label"] = np.asarray(self._label[index], np.int32)
    return example

  def __repr__(self) -> str:
    return f"ArraySource(name={self._name!r}, num_records={len(self)})"


def record_location(
    source: grain.sources.RandomAccessDataSource, index: int
) -> str:
  """Names record `index` of `source`: its file and row where known."""
  describe = getattr(source, "describe", None)
  return describe(index) if describe else f"{source!r} record {index}"


def check_tokens_in_vocab(
    x: np.ndarray,
    vocab_size: int,
    source: grain.sources.RandomAccessDataSource,
    indices: Sequence[int],
    split: str,
) -> None:
  """Raises ValueError naming the record of the first out-of-vocab token.

  Args:
    x: int tokens `[n, ...]` of the records `indices` of `source`.
    vocab_size: token values must lie in `[0, vocab_size)`.
    source: where the records come from (named via `record_location`).
    indices: the source index of each row of `x`.
    split: the split's name, for the message.
  """
  if not x.size:
    return
  flat = x.reshape(len(x), -1)  # [n, D]
  bad_rows = np.flatnonzero(((flat < 0) | (flat >= vocab_size)).any(axis=1))
  if not len(bad_rows):
    return
  row = int(bad_rows[0])
  values = flat[row]
  bad = values[(values < 0) | (values >= vocab_size)]
  raise ValueError(
      f"evaluation split {split!r}, {record_location(source, indices[row])}:"
      f" token value {int(bad[0])} is outside [0, data_config.vocab_size ="
      f" {vocab_size}) ({len(bad_rows)} such examples in this batch); fix"
      " the data, or set data_config.vocab_size to at least"
      f" {int(flat.max()) + 1} if the ids are right."
  )


def check_sample(
    source: grain.sources.RandomAccessDataSource,
    data_config: Any,
    *,
    finished: bool,
    num_samples: int = 8,
) -> None:
  """Checks evenly spaced records of a source against the config.

  Token values must lie in `[0, data_config.vocab_size)`; finished examples
  (`{"x": ...}`) must have shape `data_config.data_shape`. Raw training
  records (`finished=False`, e.g. text windows before a crop) are checked for
  values only. A source with a `describe(index)` method names the file the
  record came from.

  Args:
    source: the records.
    data_config: `config.data` (reads `dataset`, `vocab_size`, `data_shape`).
    finished: whether records are finished examples.
    num_samples: how many records to read, first and last included.

  Raises:
    ValueError: naming the record's file, the offending value and the field.
  """
  vocab_size = int(data_config.vocab_size)
  data_shape = tuple(int(d) for d in data_config.data_shape)
  num = len(source)
  for index in np.unique(
      np.linspace(0, num - 1, min(num, num_samples)).astype(np.int64)
  ):
    record = source[int(index)]
    x = np.asarray(record["x"] if isinstance(record, dict) else record)
    where = record_location(source, int(index))
    if finished and tuple(x.shape) != data_shape:
      raise ValueError(
          f"{where}: a {data_config.dataset} example has shape"
          f" {tuple(x.shape)} but data_config.data_shape is {data_shape}; set"
          f" data_config.data_shape = {tuple(x.shape)} or fix the data."
      )
    if not x.size:
      continue
    low, high = int(x.min()), int(x.max())
    if low < 0 or high >= vocab_size:
      bad = low if low < 0 else high
      raise ValueError(
          f"{where}: token value {bad} is outside [0, data_config.vocab_size"
          f" = {vocab_size}); set data_config.vocab_size to at least"
          f" {high + 1} (with no negative ids), or fix the data."
      )
