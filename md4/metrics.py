"""The unit a data set's bound is reported in: bits/dim, bits/char, perplexity.

Every bound md4 computes is in nats per example; `bits_per_dim` divides by
D ln 2 (D tokens or sub-pixels per example). Images report bits/dim,
character data (text8, text_chars, protein) the same number as bits/char,
and token data (GPT-2 BPE, sentencepiece, your own ids) perplexity,
exp(nats / D) = 2 ** bits_per_dim.
"""

CHARACTER_DATASETS = ("text8", "text_chars", "protein")
# Unit key -> how the console writes it.
LABELS = {"bits_per_dim": "bits/dim", "bits_per_char": "bits/char",
          "perplexity": "perplexity"}


def headline(kind: str, dataset: str) -> str:
  """The unit key a data set is reported in (a key of LABELS)."""
  if kind == "image":
    return "bits_per_dim"
  return "bits_per_char" if dataset in CHARACTER_DATASETS else "perplexity"


def from_bits_per_dim(unit: str, bits_per_dim: float) -> float:
  """A bound given in bits per dimension, in `unit` (a key of LABELS)."""
  if unit not in LABELS:
    raise ValueError(f"unit must be one of {', '.join(LABELS)}, got {unit!r}.")
  return 2.0 ** bits_per_dim if unit == "perplexity" else bits_per_dim
