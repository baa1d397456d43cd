"""The unit a data set's bound is reported in: bits/dim, bits/char, perplexity.

Every bound md4 computes is in nats per example; `bits_per_dim` divides by
D ln 2 (D tokens or sub-pixels per example). Each data set declares its
unit in its `DataInfo.unit`: images report bits/dim, character data (text8,
text_chars, protein) the same number as bits/char, and token data (GPT-2
BPE, sentencepiece, your own ids) perplexity, exp(nats / D) =
2 ** bits_per_dim. Training's logs, `md4.evaluate` and main's summary all
take their numbers from `in_units`.
"""

import math

import numpy as np

# Unit key -> how the console writes it.
LABELS = {
    "bits_per_dim": "bits/dim",
    "bits_per_char": "bits/char",
    "perplexity": "perplexity",
}


def check_unit(unit: str) -> str:
  if unit not in LABELS:
    raise ValueError(f"unit must be one of {', '.join(LABELS)}, got {unit!r}.")
  return unit


def in_units(
    nats: float, se: float, num_elements: int, unit: str
) -> dict[str, dict[str, float]]:
  """A bound (mean nats per example, its standard error) in every unit that
  applies: nats, bits/dim, and the data set's own unit when it differs.

  The perplexity's standard error is the delta method's,
  perplexity * se / D.
  """
  check_unit(unit)
  to_bits = 1.0 / (num_elements * math.log(2.0))
  out = {
      "nelbo_nats": {"mean": nats, "se": se},
      "bits_per_dim": {"mean": nats * to_bits, "se": se * to_bits},
  }
  if unit == "bits_per_char":
    out["bits_per_char"] = dict(out["bits_per_dim"])
  elif unit == "perplexity":
    perplexity = math.exp(nats / num_elements)
    out["perplexity"] = {
        "mean": perplexity,
        "se": perplexity * se / num_elements,
    }
  return out


def from_bits_per_dim(unit: str, bits_per_dim: float) -> float:
  """A bound given in bits per dimension, in `unit` (a key of LABELS)."""
  check_unit(unit)
  return 2.0**bits_per_dim if unit == "perplexity" else bits_per_dim


def ratio_with_se(nats: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
  """sum(nats) / sum(counts) and its delta-method standard error over the
  blocks: sqrt(sum((a_i - r n_i)^2) / (m (m - 1))) / mean(n)."""
  nats = np.asarray(nats, np.float64)
  counts = np.asarray(counts, np.float64)
  r = nats.sum() / counts.sum()
  m = len(nats)
  if m < 2:
    return float(r), math.nan
  residual = nats - r * counts
  se = math.sqrt((residual**2).sum() / (m * (m - 1))) / counts.mean()
  return float(r), float(se)
