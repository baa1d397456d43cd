"""MaskGIT-style confidence sampling (Chang et al., 2022).

Each step draws a candidate value for every masked token from mu, scores it
by its log-probability plus Gumbel noise scaled by `choice_temperature` and
annealed to zero over the steps, and reveals the k best-scoring tokens; the
rest stay masked. k keeps the number still masked on the schedule: after the
step t -> s, round(U * masked_fraction(s)) of the U unknown tokens stay
masked, as many as the ancestral sampler leaves on average (from the start
time t_0: masked_fraction(s) relative to t_0).

Not an exact sampler of the model: it trades diversity for fidelity, which
often helps with few steps.
"""

import dataclasses

import jax
import jax.numpy as jnp

from md4.sampling import core


def _non_negative(value) -> str | None:
  return "must be >= 0" if value < 0.0 else None


@dataclasses.dataclass(frozen=True)
class ConfidenceSettings(core.Settings):
  """The grid settings and the scale of the annealed choice noise."""

  choice_temperature: float = core.setting(
      1.0,
      "Gumbel noise on the confidence scores (0 = most confident first).",
      _non_negative,
  )


def confidence_step(
    reverse: core.Reverse,
    step: core.Step,
    choice_temperature: float,
    start_time: float = 1.0,
) -> jax.Array:
  data_rank = len(reverse.data_shape)
  value_rng, noise_rng = jax.random.split(step.rng)
  values = core.categorical(value_rng, step.log_mu)  # [B, ...]
  score = jnp.take_along_axis(step.log_mu, values[..., None], -1)[..., 0]
  anneal = 1.0 - (step.index + 1) / step.num_steps
  gumbel = -jnp.log(
      jnp.maximum(core.exponential(noise_rng, values.shape), 1e-38)
  )
  score = score + choice_temperature * anneal * gumbel  # [B, ...]
  # A known position may hold the mask id (a later block of semi-
  # autoregressive sampling, held masked); it is never revealed nor counted.
  masked = (step.z == reverse.mask_id) & ~step.known.mask
  score = jnp.where(masked, score, -jnp.inf)

  # ------------------------------------------ how many to reveal ------
  flat_score = core.flat_positions(score, data_rank)  # [B, N]
  num_masked = core.flat_positions(masked, data_rank).sum(-1)  # [B]
  num_unknown = (~core.flat_positions(step.known.mask, data_rank)).sum(-1)
  stay = jnp.round(
      num_unknown * reverse.masked_fraction(step.s, start_time)
  )  # [B]
  count = jnp.maximum(num_masked - stay.astype(jnp.int32), 0)  # [B]

  # ------------------------------------------ the most confident k ----
  rank = jnp.argsort(jnp.argsort(-flat_score, axis=-1), axis=-1)  # [B, N]
  reveal = (rank < count[:, None]).reshape(masked.shape) & masked
  return jnp.where(reveal, values, step.z).astype(step.z.dtype)


def sample_confidence(reverse, rng, num_samples, settings, known=None):
  def step_fn(reverse, step):
    return confidence_step(
        reverse, step, settings.choice_temperature, settings.start_time
    )

  return core.run(reverse, rng, num_samples, settings, step_fn, known)
