"""How close two runs' trees of arrays must be: relative error per leaf.

Runs on different meshes or process layouts sum gradients in different
orders, so they differ by float32 round-off (~1e-7 of each leaf's scale).
Adam turns a gradient g below its eps (1e-8) into a step lr * g / eps: that
round-off, divided by eps, moves a few elements by up to ~1e-4 of one step.
Leaves that start at zero (biases, adaLN-zero modulations) are only a few such
steps large after a few steps, so parameters are measured against each leaf's
largest entry or, if that is smaller, the initialiser scale of the weights
(`PARAM_FLOOR`): an error of RTOL at that scale is what a downstream
activation feels. Adam's moments are gradient sums and are measured against
their own scale (`MOMENT_FLOOR` only avoids 0 / 0).
"""

import numpy as np

from md4.networks import transformer

RTOL = 1e-5
PARAM_FLOOR = transformer.INIT_STD
MOMENT_FLOOR = float(np.finfo(np.float32).tiny)


def leaf_error(a, b, floor: float) -> float:
  """max |a - b| / max(max |b|, floor) over one array."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(float(np.abs(b).max(initial=0.0)), floor)
  return float(np.abs(a - b).max(initial=0.0)) / scale


def assert_leaves_close(name, got, want, floor: float) -> None:
  """Every leaf of `got` within RTOL of the same leaf of `want`."""
  assert len(got) == len(want), (name, len(got), len(want))
  errors = [leaf_error(a, b, floor) for a, b in zip(got, want)]
  worst = int(np.argmax(errors))
  assert errors[worst] <= RTOL, (name, f"leaf {worst}", errors[worst])
