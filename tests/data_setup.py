"""Configs, loaders and batch keys shared by the tests/test_data_*.py files.

Real MNIST and the E. coli proteome are read from ../shared/data (beside the
checkout) when that folder exists; tests that need them skip otherwise.
"""

import pathlib

import ml_collections
import numpy as np
import pytest

from md4.data import pipelines

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared/data"
SHARED_MNIST = SHARED_DATA / "mnist"
SHARED_PROTEIN = SHARED_DATA / "protein"
SHARED_GPT2 = SHARED_DATA / "gpt2"


def make_config(dataset="digits", **overrides):
  fields = dict(
      dataset=dataset,
      data_dir="/nonexistent/md4-test-data",
      data_shape=(8, 8, 1),
      vocab_size=17,
      num_workers=0,
      pad_to=0,
      path="",
      characters="",
      eval_fraction=0.05,
      random_flip=False,
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def build(config, *, batch=32, eval_batch=64, seed=0, **kwargs):
  return pipelines.build_datasets(
      config,
      global_batch_size=batch,
      eval_batch_size=eval_batch,
      seed=seed,
      **kwargs,
  )


def build_for_process(index, config, **kwargs):
  """Builds the data sets as process `index` of two sees them."""
  return build(config, process_index=index, process_count=2, **kwargs)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_restore_continues(make_loader, skip=3, keys=("x",)):
  """A fresh loader restored from an iterator's state yields its next batches.

  Args:
    make_loader: () -> a new train loader, built as on resume.
    skip: batches drawn before the state is saved.
    keys: batch entries compared.
  """
  iterator = iter(make_loader())
  take(iterator, skip)
  state = iterator.get_state()
  expected = take(iterator, 2)
  restored = iter(make_loader())
  restored.set_state(state)
  for want, got in zip(expected, take(restored, 2)):
    for key in keys:
      np.testing.assert_array_equal(want[key], got[key])


def image_keys(batches):
  """One hashable key per example (digits images are all distinct)."""
  return [x.tobytes() for b in batches for x in b["x"]]


def real_examples(batches):
  """Unpadded examples of eval batches, as (x bytes, label) keys."""
  return [
      (x.tobytes(), int(label))
      for b in batches
      for x, label, w in zip(b["x"], b["label"], b["weight"])
      if w == 1.0
  ]


def all_real(batches):
  return np.concatenate([b["x"][b["weight"] > 0] for b in batches])


needs_mnist = pytest.mark.skipif(
    not SHARED_MNIST.is_dir(),
    reason=f"real MNIST IDX files not found in {SHARED_MNIST}",
)


def mnist_config(dataset="mnist", **overrides):
  fields = dict(
      data_dir=str(SHARED_MNIST.parent),
      data_shape=(28, 28, 1),
      vocab_size=2 if dataset == "binarized_mnist" else 256,
  )
  fields.update(overrides)
  return make_config(dataset, **fields)
