"""Ancestral sampling and its two small variations: nucleus and two-step.

* `ancestral`: the reverse of the masking process on a time grid. In a step
  t -> s every masked token draws one of V + 1 outcomes: value v with
  probability unmask(s, t)[v] * mu(z_t, t)[v], or "stay masked"
  (`core.ancestral_reveal`).
* `topp`: the same step with mu replaced by its nucleus, the smallest set of
  values holding at least `topp` of the mass, renormalised (Holtzman et al.,
  2020). Biased on purpose; topp = 1 is `ancestral`.
* `mean`: the same distribution as `ancestral`, drawn in two steps (Shi et
  al., 2024, App. G): first whether the token is revealed, a Bernoulli with
  probability r = sum_v unmask_v mu_v (unmask(s, t) for MD4), then its value
  from unmask_v mu_v / r (mu itself for MD4: the "mean" prediction). The
  paper found this variant scored worse than the one-step draw; with float32
  Gumbel-max the one-step draw loses its rare values (Zheng et al., 2024),
  which lowers its temperature, while the two-step draw never mixes the tiny
  factor unmask(s, t) into the value probabilities. With the exact draws of
  `core.categorical` the two agree; `tests/test_sampling.py` checks both
  against the exact distribution of the T-step sampler.
"""

import dataclasses

import jax
import jax.numpy as jnp

from md4.sampling import core


def _mass(value) -> str | None:
  if not 0.0 < value <= 1.0:
    return "must be in (0, 1]; 1 keeps every value (plain sampling)"
  return None


@dataclasses.dataclass(frozen=True)
class TopPSettings(core.Settings):
  """The grid settings and the nucleus mass of `topp`."""

  topp: float = core.setting(0.9, "Nucleus mass kept, in (0, 1].", _mass)


# `time_grid` and `categorical` have always been importable from here.
time_grid = core.time_grid
categorical = core.categorical


def ancestral_step(reverse: core.Reverse, step: core.Step) -> jax.Array:
  unmask = reverse.unmask_probability(step.s, step.t)
  return core.ancestral_reveal(
      step.rng, step.z, step.log_mu, unmask, reverse.mask_id
  )


def mean_step(reverse: core.Reverse, step: core.Step) -> jax.Array:
  """Bernoulli(reveal mass), then the value given that it is revealed."""
  unmask = reverse.unmask_probability(step.s, step.t)  # [B, 1.., 1 | V]
  log_weights = jnp.log(unmask) + step.log_mu  # [B, ..., V]
  reveal_mass = jnp.exp(jax.nn.logsumexp(log_weights, axis=-1))  # [B, ...]
  reveal_rng, value_rng = jax.random.split(step.rng)
  revealed = core.bernoulli(reveal_rng, reveal_mass, step.z.shape)
  value = core.categorical(value_rng, log_weights)  # [B, ...]
  masked = step.z == reverse.mask_id
  return jnp.where(masked & revealed, value, step.z).astype(step.z.dtype)


def nucleus(log_mu: jax.Array, topp: float) -> jax.Array:
  """log mu restricted to its top-p nucleus and renormalised, [..., V].

  Keeps value v when the mass of the values more probable than v is below
  topp (ties at the threshold are all kept), so at least one value survives.
  """
  if topp >= 1.0:
    return log_mu
  ordered = -jnp.sort(-log_mu, axis=-1)  # [..., V], descending
  before = jnp.cumsum(jnp.exp(ordered), axis=-1) - jnp.exp(ordered)
  kept = (before < topp).sum(-1, keepdims=True)  # [..., 1] >= 1
  threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)  # [..., 1]
  filtered = jnp.where(log_mu >= threshold, log_mu, -jnp.inf)
  return jax.nn.log_softmax(filtered, axis=-1)


def sample_ancestral(reverse, rng, num_samples, settings, known=None):
  return core.run(reverse, rng, num_samples, settings, ancestral_step, known)


def sample_topp(reverse, rng, num_samples, settings, known=None):
  return core.run(
      reverse,
      rng,
      num_samples,
      settings,
      ancestral_step,
      known,
      transform=lambda log_mu: nucleus(log_mu, settings.topp),
  )


def sample_mean(reverse, rng, num_samples, settings, known=None):
  return core.run(reverse, rng, num_samples, settings, mean_step, known)
