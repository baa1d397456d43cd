"""Tests of md4.data.pipelines on the bundled digits.

Batches, seeded order, restored iterators, process sharding, config checks,
the start-up sample check and random flips.
"""

import numpy as np
import pytest

from data_setup import build, build_for_process, image_keys, make_config
from data_setup import assert_restore_continues, mnist_config
from data_setup import real_examples, take
from md4.data import digits
from md4.data import pipelines

# --- digits ------------------------------------------------------------------


def test_digits_batches_have_int32_images_in_vocab_range_and_labels():
  datasets = build(make_config())
  batch = next(iter(datasets.train))
  assert set(batch) == {"x", "label"}
  assert batch["x"].dtype == np.int32 and batch["x"].shape == (32, 8, 8, 1)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (32,)
  assert 0 <= batch["x"].min() and batch["x"].max() < 17
  assert batch["x"].max() == 16  # the full grey range is used
  assert set(batch["label"].tolist()) <= set(range(10))
  assert datasets.info == pipelines.DataInfo(
      data_shape=(8, 8, 1),
      vocab_size=17,
      num_classes=10,
      kind="image",
      unit="bits_per_dim",
  )


def test_digits_split_into_1497_train_and_300_disjoint_test_images():
  loaded = digits.load(make_config())
  assert len(loaded.train) == 1497
  assert list(loaded.eval) == ["test"]
  train = {loaded.train[i]["x"].tobytes() for i in range(len(loaded.train))}
  test_batches = list(build(make_config(), eval_batch=128).eval["test"]())
  test = real_examples(test_batches)
  assert len(test) == 300 == len(set(test))
  assert not train & {x for x, _ in test}


def test_same_seed_gives_identical_batches_and_another_seed_another_order():
  config = make_config()
  first = take(iter(build(config, seed=7).train), 3)
  again = take(iter(build(config, seed=7).train), 3)
  other = take(iter(build(config, seed=8).train), 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert image_keys(first) != image_keys(other)


def test_each_epoch_is_a_different_permutation_of_the_training_split():
  # 1497 = 3 * 499: three batches are exactly one epoch.
  iterator = iter(build(make_config(), batch=499).train)
  epoch1, epoch2 = image_keys(take(iterator, 3)), image_keys(take(iterator, 3))
  loaded = digits.load(make_config())
  train = [loaded.train[i]["x"].tobytes() for i in range(len(loaded.train))]
  assert sorted(epoch1) == sorted(train) == sorted(epoch2)
  assert epoch1 != epoch2


def test_restored_iterator_reproduces_the_following_batches():
  assert_restore_continues(
      lambda: build(make_config()).train, keys=("x", "label")
  )


def test_eval_iterators_are_fresh_finite_and_deterministic():
  make_batches = build(make_config(), eval_batch=128).eval["test"]
  first, second = list(make_batches()), list(make_batches())
  assert len(first) == 3  # ceil(300 / 128)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["x"], b["x"])
  assert all(b["x"].shape == (128, 8, 8, 1) for b in first)
  assert first[-1]["weight"].dtype == np.float32
  assert first[-1]["weight"].tolist() == [1.0] * 44 + [0.0] * 84


# --- process sharding --------------------------------------------------------


def test_two_processes_get_half_batches_of_disjoint_training_examples():
  # 1496 = 2 * 748: one batch is one process's whole shard for an epoch.
  batches = [
      next(iter(build_for_process(p, make_config(), batch=1496).train))
      for p in range(2)
  ]
  keys = [set(image_keys([b])) for b in batches]
  assert all(b["x"].shape == (748, 8, 8, 1) for b in batches)
  assert len(keys[0]) == len(keys[1]) == 748
  assert not keys[0] & keys[1]


def test_two_processes_cover_the_eval_split_once_with_padding_weighted_zero():
  whole = real_examples(build(make_config(), eval_batch=64).eval["test"]())
  parts = [
      list(build_for_process(p, make_config(), eval_batch=64).eval["test"]())
      for p in range(2)
  ]
  for batches in parts:
    assert len(batches) == 5  # ceil(150 / 32), the same on every process
    assert all(len(b["weight"]) == 32 for b in batches)
    padding = [b["x"][b["weight"] == 0] for b in batches]
    assert sum(len(p) for p in padding) == 5 * 32 - 150
    assert all((p == 0).all() for p in padding)
  union = real_examples(parts[0]) + real_examples(parts[1])
  assert union == whole and len(set(union)) == 300


def test_batch_sizes_not_divisible_by_process_count_raise():
  with pytest.raises(ValueError, match="global_batch_size is 33"):
    build(make_config(), batch=33, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="eval_batch_size is 9"):
    build(make_config(), eval_batch=9, process_index=1, process_count=2)


# --- config checks -----------------------------------------------------------


@pytest.mark.parametrize(
    "config, field",
    [
        (make_config(vocab_size=16), "data_config.vocab_size is 16"),
        (make_config(data_shape=(8, 8)), "data_config.data_shape is (8, 8)"),
        (make_config("mnist_typo"), "data_config.dataset is 'mnist_typo'"),
        (make_config(pad_to=32), "data_config.pad_to is 32"),
        (
            make_config("cifar10", data_shape=(32, 32, 3)),
            "data_config.vocab_size is 17",
        ),
        (mnist_config(pad_to=32), "pad_to"),
        (mnist_config(pad_to=20, data_shape=(20, 20, 1)), "pad_to is 20"),
    ],
)
def test_config_that_does_not_match_the_data_raises_naming_the_field(
    config,
    field,
):
  with pytest.raises(ValueError) as error:
    build(config)
  assert field in str(error.value)


def test_unknown_dataset_error_lists_the_valid_names():
  with pytest.raises(ValueError) as error:
    build(make_config("imagenet"))
  assert all(name in str(error.value) for name in pipelines.DATASET_NAMES)


def test_config_path_given_to_a_data_set_that_ignores_it_raises():
  with pytest.raises(ValueError, match="data_config.path is 'x.txt'"):
    build(make_config(path="x.txt"))
  with pytest.raises(ValueError, match="data_config.characters is 'ab'"):
    build(make_config(characters="ab"))


# --- start-up validation ------------------------------------------------------


class _BadSource:
  """Finished examples, one of which breaks the config."""

  def __init__(self, bad_x):
    self._bad_x = bad_x

  def __len__(self):
    return 10

  def __getitem__(self, index):
    return {"x": self._bad_x if index == 9 else np.zeros(4, np.int32)}

  def describe(self, index):
    return f"/data/shard-3.bin record {index}"


@pytest.mark.parametrize(
    "bad_x, expected",
    [
        (np.full(4, 7, np.int32), "token value 7 is outside"),
        (np.full(4, -1, np.int32), "token value -1 is outside"),
        (np.zeros(5, np.int32), "data_config.data_shape is (4,)"),
    ],
)
def test_sample_check_names_the_file_the_value_and_the_field(
    bad_x,
    expected,
):
  config = make_config("tokens", data_shape=(4,), vocab_size=7)
  with pytest.raises(ValueError) as error:
    sources_check = pipelines.sources.check_sample
    sources_check(_BadSource(bad_x), config, finished=True)
  assert "/data/shard-3.bin record 9" in str(error.value)
  assert expected in str(error.value)


# --- random flips -------------------------------------------------------------


def test_random_flip_mirrors_some_training_images_and_nothing_else():
  flipping = build(make_config(random_flip=True), batch=128, seed=3)
  plain = build(make_config(), batch=128, seed=3)
  got, want = take(iter(flipping.train), 2), take(iter(plain.train), 2)
  num_flipped = 0
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["label"], w["label"])
    for x, original in zip(g["x"], w["x"]):
      mirrored = original[:, ::-1]
      assert (x == original).all() or (x == mirrored).all()
      num_flipped += int((x == mirrored).all() and (x != original).any())
  assert 64 < num_flipped < 192  # about half of 256 (p < 1e-10 outside)
  for g, w in zip(flipping.eval["test"](), plain.eval["test"]()):
    np.testing.assert_array_equal(g["x"], w["x"])


def test_random_flips_repeat_with_the_seed_and_after_a_restore():
  config = make_config(random_flip=True)
  first = take(iter(build(config, seed=5).train), 2)
  again = take(iter(build(config, seed=5).train), 2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["x"], b["x"])
  assert_restore_continues(lambda: build(config, seed=5).train)
