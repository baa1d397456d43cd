"""Masking schedules alpha(t): the probability that a token is still unmasked.

Every schedule is alpha(t) = (1 - 2 eps) f(t) + eps with f(0) = 1, f(1) = 0
and f decreasing, so alpha(0) = 1 - eps and alpha(1) = eps. Keeping alpha away
from 0 and 1 keeps log-SNR and the loss weight finite at the end points.
1 - alpha(t) = (1 - 2 eps) (1 - f(t)) + eps is formed from 1 - f(t) written
out (t, sin(pi t / 2), t^K), not as 1 - alpha: near t = 0 the subtraction
loses every digit (1 - (1 - t^3) is 0 in float32 for t below 3e-3 when
eps = 0).

The continuous-time MD4 loss weights the masked cross-entropy at time t by
alpha'(t) / (1 - alpha(t)) (negative; the loss multiplies it by a negative
log-probability), see Shi et al. (2024), eq. (5).
"""

import dataclasses
import math
import re

import jax.numpy as jnp

_POLY = re.compile(r"^poly(\d+(?:\.\d+)?)$")
VALID_NAMES = ("linear", "cosine", "polyK (e.g. poly3, poly0.5)")


@dataclasses.dataclass(frozen=True)
class MaskingSchedule:
  """A masking schedule alpha(t) with its derivative and derived quantities.

  Attributes:
    name: `linear`, `cosine`, or `polyK` for any exponent K > 0.
    eps: keeps alpha in [eps, 1 - eps].
  """

  name: str
  eps: float = 1e-4

  def __post_init__(self):
    _shape_fn(self.name)  # Validates the name early.
    if not 0.0 <= self.eps < 0.5:
      raise ValueError(f"config.model.eps must be in [0, 0.5), got {self.eps}.")

  def alpha(self, t):
    """alpha(t) for t in [0, 1]; any shape."""
    f, _, _ = _shape_fn(self.name)
    return (1.0 - 2.0 * self.eps) * f(t) + self.eps

  def mask_prob(self, t):
    """1 - alpha(t), the probability of being masked, without cancellation."""
    _, _, one_minus_f = _shape_fn(self.name)
    return (1.0 - 2.0 * self.eps) * one_minus_f(t) + self.eps

  def dalpha(self, t):
    """d alpha / dt."""
    _, df, _ = _shape_fn(self.name)
    return (1.0 - 2.0 * self.eps) * df(t)

  def log_snr(self, t):
    """log(alpha / (1 - alpha))."""
    alpha = self.alpha(t)
    return jnp.log(alpha) - jnp.log1p(-alpha)

  def loss_weight(self, t):
    """alpha'(t) / (1 - alpha(t)), the continuous-time ELBO weight (<= 0).

    Finite for every t in (0, 1] (with eps = 0 it is -K / t for polyK); at
    t = 0 it is -inf for polyK with K < 1, which md4.time_of_draw avoids.
    """
    return self.dalpha(t) / self.mask_prob(t)


def _shape_fn(name: str):
  """Returns (f, f', 1 - f) for a schedule name."""
  if name == "linear":
    return (lambda t: 1.0 - t), (lambda t: -jnp.ones_like(t)), (lambda t: t)
  if name == "cosine":
    half_pi = math.pi / 2
    return (
        lambda t: 1.0 - jnp.cos(half_pi * (1.0 - t)),
        lambda t: -half_pi * jnp.sin(half_pi * (1.0 - t)),
        lambda t: jnp.sin(half_pi * t),
    )  # = cos(pi/2 (1 - t))
  match = _POLY.match(name) if isinstance(name, str) else None
  if match:
    k = float(match.group(1))
    if k > 0:
      return (
          lambda t: 1.0 - jnp.power(t, k),
          lambda t: -k * jnp.power(t, k - 1.0),
          lambda t: jnp.power(t, k),
      )
  raise ValueError(
      f"config.model.schedule={name!r} is not a masking schedule; valid: "
      f"{', '.join(VALID_NAMES)}."
  )


def checked(name: str, eps: float, section: str) -> MaskingSchedule:
  """The schedule, or its ValueError naming the fields of `section`
  (e.g. "md4": config.model.md4.schedule)."""
  try:
    return MaskingSchedule(name, eps)
  except ValueError as e:
    raise ValueError(
        str(e).replace("config.model.", f"config.model.{section}.")
    ) from None
