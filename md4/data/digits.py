"""scikit-learn's bundled 8x8 handwritten digits: a data set needing no files.

1,797 grey-scale images of 8x8 pixels with 17 grey levels (0..16) and labels
0-9, shipped inside scikit-learn, so it works offline and in CI. The split is a
permutation under a fixed seed (independent of the training seed), so every
run and every process sees the same 1,497 training and 300 test images.
"""

from typing import Any

import numpy as np
from sklearn import datasets as sklearn_datasets

from md4.data import sources

DATA_SHAPE = (8, 8, 1)
VOCAB_SIZE = 17  # grey levels 0..16
NUM_CLASSES = 10
NUM_EXAMPLES = 1797
NUM_TRAIN = 1497
NUM_TEST = NUM_EXAMPLES - NUM_TRAIN  # 300
_SPLIT_SEED = 0


def load(data_config: Any) -> sources.LoadedData:
  """Loads the digits as a "train" source and a "test" evaluation source."""
  sources.check_matches_config(
      data_config, data_shape=DATA_SHAPE, vocab_size=VOCAB_SIZE
  )
  bunch = sklearn_datasets.load_digits()
  # images: [N, 8, 8] float64 with integer values 0..16.
  images = bunch.images.astype(np.uint8)[..., None]  # [N, 8, 8, 1]
  labels = bunch.target.astype(np.int32)  # [N]
  if len(images) != NUM_EXAMPLES:
    raise ValueError(
        f"scikit-learn's load_digits returned {len(images)} images, expected"
        f" {NUM_EXAMPLES}; the train/test split sizes assume the standard"
        " data set."
    )
  order = np.random.default_rng(_SPLIT_SEED).permutation(NUM_EXAMPLES)
  train, test = order[:NUM_TRAIN], order[NUM_TRAIN:]
  info = sources.DataInfo(
      data_shape=DATA_SHAPE,
      vocab_size=VOCAB_SIZE,
      num_classes=NUM_CLASSES,
      kind="image",
      unit="bits_per_dim",
  )
  return sources.LoadedData(
      info=info,
      train=sources.ArraySource("digits/train", images[train], labels[train]),
      eval={
          "test": sources.ArraySource("digits/test", images[test], labels[test])
      },
  )
