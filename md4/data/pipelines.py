"""Training and evaluation pipelines: `build_datasets(config.data, ...)`.

Training: a grain `DataLoader` over this process's shard of the training
records; infinite, shuffled with the given seed (a fresh permutation every
epoch), batches of `global_batch_size // process_count`. Iterating it gives a
`grain.DataLoaderIterator` whose `get_state`/`set_state` (or orbax's
`grain.checkpoint.CheckpointSave/Restore`) checkpoint the position exactly.
With `data_config.random_flip`, training images are mirrored left-right with
probability 1/2 (`RandomFlip`), drawn from grain's per-record generator, so
the flips too are fixed by the seed and redrawn exactly after a restore.

Evaluation: per split, a callable returning a fresh finite iterator over this
process's contiguous part of the split, in order, with batches of exactly
`eval_batch_size // process_count`. Every process yields the same number of
batches (collectives need it); the last ones are padded with zero examples
whose `"weight"` is 0.0 (1.0 for real examples). Every evaluation batch's
tokens are checked against `[0, vocab_size)`, with an error naming the
split, file and row, so a bad record never becomes a NaN bound.

Batches are dicts of numpy arrays: `"x"` int32 `[b, *data_shape]`, `"label"`
int32 `[b]` for labelled data sets, and `"weight"` float32 `[b]` in eval.

At start-up a sample of every split is checked against `data_shape` and
`[0, vocab_size)` (`sources.check_sample`), so bad data fails before any
compilation, with an error naming the file.
"""

from collections.abc import Callable, Iterator
import dataclasses
import functools
from typing import Any

import grain
import jax
import numpy as np

from md4.data import digits
from md4.data import mnist
from md4.data import protein
from md4.data import sources
from md4.data import text8
from md4.data import text_chars
from md4.data import tfds_images
from md4.data import token_files

DataInfo = sources.DataInfo
Batch = dict[str, np.ndarray]

_LOADERS: dict[str, Callable[[Any], sources.LoadedData]] = {
    "digits": digits.load,
    "text8": text8.load,
    "mnist": functools.partial(mnist.load, binarized=False),
    "binarized_mnist": functools.partial(mnist.load, binarized=True),
    "cifar10": tfds_images.load_cifar10,
    "imagenet64": tfds_images.load_imagenet64,
    "class_cond_imagenet64": tfds_images.load_class_cond_imagenet64,
    "openwebtext": token_files.load_prepared,
    "fineweb_edu": token_files.load_prepared,
    "protein": protein.load,
    "tokens": token_files.load_tokens,
    "text_chars": text_chars.load,
}
# Data sets that read `data_config.pad_to`, `path` and `characters`.
_PADDABLE = ("mnist", "binarized_mnist")
_WITH_PATH = ("openwebtext", "fineweb_edu", "protein", "tokens", "text_chars")
_WITH_CHARACTERS = ("text_chars",)
DATASET_NAMES = tuple(_LOADERS)
FLIP_PROBABILITY = 0.5


@dataclasses.dataclass(frozen=True)
class Datasets:
  """What `build_datasets` returns.

  Attributes:
    train: infinite, shuffled, sharded training loader; `iter(train)` gives a
      checkpointable iterator of batches.
    eval: evaluation split name -> callable returning a fresh finite iterator
      of padded batches with a "weight" entry.
    info: shape, vocabulary, classes, kind and decoder of the data.
    sizes: split name ("train" and the evaluation splits) -> records in it
      (for the start-up summary).
  """

  train: grain.DataLoader
  eval: dict[str, Callable[[], Iterator[Batch]]]
  info: DataInfo
  sizes: dict[str, int] = dataclasses.field(default_factory=dict)


def build_datasets(
    data_config: Any,
    *,
    global_batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Datasets:
  """Builds the training loader and evaluation iterators of a data set.

  Args:
    data_config: `config.data` with `dataset`, `data_dir`, `data_shape`,
      `vocab_size`, `num_workers` (grain worker processes; 0 = in-process),
      `pad_to` (MNIST variants only; 0 = no padding), `path` (file-based
      data sets: their file or directory), `characters` (text_chars only),
      `eval_fraction` (data without an evaluation split of its own) and
      `random_flip` (images only: mirror training images at random).
    global_batch_size: training examples per step over all processes.
    eval_batch_size: evaluation examples per batch over all processes.
    seed: shuffling (and random crop) seed, an integer in [0, 2**32).
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of processes; defaults to `jax.process_count()`.

  Returns:
    The `Datasets`.

  Raises:
    ValueError: for an unknown data set, a config that does not match the
      data, or batch sizes not divisible by the process count.
    FileNotFoundError: if the data is missing and cannot be downloaded.
  """
  process_index, process_count = _processes(process_index, process_count)
  train_batch = _per_process(global_batch_size, process_count, "global_batch")
  eval_batch = _per_process(eval_batch_size, process_count, "eval_batch")
  _check_seed(seed)
  _check_num_workers(data_config.num_workers)
  load = _loader(data_config)
  loaded = load(data_config)
  # Start-up validation: a sample of every split against the config.
  sources.check_sample(
      loaded.train, data_config, finished=not loaded.train_transforms
  )
  for source in loaded.eval.values():
    sources.check_sample(source, data_config, finished=True)
  augmentations = _augmentations(data_config, loaded.info)

  if len(loaded.train) < process_count:
    raise ValueError(
        f"the {data_config.dataset} training split has {len(loaded.train)}"
        f" records, fewer than the {process_count} processes sharing it."
    )
  # Every process walks the same shuffled order of global batches and keeps
  # its own slice of each, so a global batch (and the training run) is the
  # same whatever the number of processes.
  everything = grain.sharding.NoSharding()
  train = grain.DataLoader(
      data_source=loaded.train,
      sampler=grain.samplers.IndexSampler(
          num_records=len(loaded.train),
          shard_options=everything,
          shuffle=True,
          num_epochs=None,
          seed=int(seed),
      ),
      operations=[
          *loaded.train_transforms,
          *augmentations,
          grain.transforms.Batch(
              batch_size=global_batch_size, drop_remainder=True
          ),
          ProcessSlice(process_index, train_batch),
      ],
      worker_count=int(data_config.num_workers),
      shard_options=everything,
      read_options=_read_options(int(data_config.num_workers)),
  )
  evals = {
      split: functools.partial(
          eval_batches,
          source,
          batch_size=eval_batch,
          process_index=process_index,
          process_count=process_count,
          vocab_size=int(data_config.vocab_size),
          split=split,
      )
      for split, source in loaded.eval.items()
  }
  sizes = {
      "train": len(loaded.train),
      **{split: len(source) for split, source in loaded.eval.items()},
  }
  return Datasets(train=train, eval=evals, info=loaded.info, sizes=sizes)


class RandomFlip(grain.transforms.RandomMap):
  """Mirrors an image example `{"x": [H, W, C], ...}` left-right, p = 1/2."""

  def random_map(
      self, element: sources.Example, rng: np.random.Generator
  ) -> sources.Example:
    if rng.random() < FLIP_PROBABILITY:
      element = {**element, "x": np.ascontiguousarray(element["x"][:, ::-1])}
    return element

  def __repr__(self) -> str:
    return "RandomFlip()"


def _augmentations(
    data_config: Any, info: DataInfo
) -> tuple[grain.transforms.Transformation, ...]:
  """The random training-only transforms the config asks for."""
  # A hand-built data config may predate the field: no flips then.
  if not data_config.get("random_flip", False):
    return ()
  if info.kind != "image":
    raise ValueError(
        f"data_config.random_flip is True but {data_config.dataset} is"
        f" {info.kind}, not images; set data_config.random_flip = False."
    )
  return (RandomFlip(),)


class ProcessSlice(grain.transforms.Map):
  """Keeps rows [p * b, (p + 1) * b) of a global batch: process p's part."""

  def __init__(self, process_index: int, batch_size: int):
    self._start = process_index * batch_size
    self._stop = self._start + batch_size

  def map(self, element: Batch) -> Batch:
    return {k: v[self._start : self._stop] for k, v in element.items()}


def eval_batches(
    source: grain.sources.RandomAccessDataSource,
    *,
    batch_size: int,
    process_index: int,
    process_count: int,
    vocab_size: int | None = None,
    split: str = "",
) -> Iterator[Batch]:
  """Yields this process's part of `source` in padded batches.

  Process `p` reads the `p`-th of `process_count` contiguous parts (sizes
  differ by at most one). All processes yield `ceil(ceil(N / process_count) /
  batch_size)` batches; padding examples are zeros with weight 0.

  Args:
    source: random-access source of finished examples.
    batch_size: examples per batch in this process.
    process_index: this process.
    process_count: number of processes.
    vocab_size: when given, every batch's tokens are checked against
      `[0, vocab_size)` (the start-up check reads a sample of records only).
    split: the split's name, for that check's error.

  Yields:
    Dicts of `[batch_size, ...]` arrays with an extra "weight" float32
    `[batch_size]`.
  """
  num_examples = len(source)
  start = process_index * num_examples // process_count
  end = (process_index + 1) * num_examples // process_count
  largest_part = -(-num_examples // process_count)
  num_batches = -(-largest_part // batch_size)
  blank = {k: np.zeros_like(v) for k, v in source[0].items()}
  for batch_start in range(start, start + num_batches * batch_size, batch_size):
    indices = range(batch_start, min(batch_start + batch_size, end))
    examples = [source[i] for i in indices]
    num_real = len(examples)
    examples += [blank] * (batch_size - num_real)
    batch = {k: np.stack([ex[k] for ex in examples]) for k in blank}
    if vocab_size is not None:
      sources.check_tokens_in_vocab(
          batch["x"][:num_real], vocab_size, source, indices, split
      )
    weight = np.zeros(batch_size, np.float32)  # [b]
    weight[:num_real] = 1.0
    batch["weight"] = weight
    yield batch


def load_info(data_config: Any) -> sources.DataInfo:
  """The data set's `DataInfo` (shape, tokenizer, end-of-text id) alone.

  Runs the data set's loader (token files are memory-mapped, text files
  read) but builds no loader; for checks made before a run is restored.
  """
  return _loader(data_config)(data_config).info


def _loader(data_config: Any) -> Callable[[Any], sources.LoadedData]:
  name = data_config.dataset
  if name not in _LOADERS:
    raise ValueError(
        f"data_config.dataset is {name!r}, which is not a known data set;"
        f" choose one of {', '.join(DATASET_NAMES)}."
    )
  if int(data_config.pad_to) and name not in _PADDABLE:
    raise ValueError(
        f"data_config.pad_to is {data_config.pad_to} but padding only applies"
        f" to {', '.join(_PADDABLE)}, not {name!r}; set data_config.pad_to ="
        " 0."
    )
  for field, users in (("path", _WITH_PATH), ("characters", _WITH_CHARACTERS)):
    if data_config[field] and name not in users:
      raise ValueError(
          f"data_config.{field} is {data_config[field]!r} but only"
          f" {', '.join(users)} read it, not {name!r}; set"
          f" data_config.{field} = ''."
      )
  return _LOADERS[name]


def _processes(
    process_index: int | None, process_count: int | None
) -> tuple[int, int]:
  if (process_index is None) != (process_count is None):
    raise ValueError(
        f"got process_index={process_index} and process_count={process_count};"
        " pass both, or neither to use jax.process_index()/process_count()."
    )
  if process_index is None:
    return jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index must be in [0, process_count={process_count}), got"
        f" {process_index}."
    )
  return process_index, process_count


def _per_process(batch_size: int, process_count: int, name: str) -> int:
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
        f"{name}_size is {batch_size}, which must be a positive multiple of"
        f" the number of processes ({process_count}); change {name}_size."
    )
  return batch_size // process_count


def _read_options(num_workers: int) -> grain.ReadOptions | None:
  """In-process loading reads records serially, without prefetch threads.

  grain's default (16 threads, 500 records prefetched) polls its whole
  prefetch buffer for every record; on in-memory and local-disk sources that
  costs more than it saves (digits: 57 -> 230 batches/s of 64 without it,
  see benchmarks/data.py). Worker processes keep grain's defaults, which
  overlap slow (e.g. network) reads.
  """
  if num_workers:
    return None
  return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _check_seed(seed: int) -> None:
  if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(
        "seed must be an integer in [0, 2**32) (grain's shuffle seed), got"
        f" {seed!r}; change the config's seed."
    )


def _check_num_workers(num_workers: int) -> None:
  if int(num_workers) < 0:
    raise ValueError(
        f"data_config.num_workers is {num_workers}; set it to 0 (load in this"
        " process) or a positive number of grain worker processes."
    )
