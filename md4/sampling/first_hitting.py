"""First-hitting sampling (Zheng et al., 2024): exact continuous-time MD4.

With M tokens masked at time tau, each is revealed at an independent time
with P(still masked at s) = (1 - alpha(s)) / (1 - alpha(tau)); the first of
them is revealed at s with

    1 - alpha(s) = (1 - alpha(tau)) * u^(1/M),   u ~ U(0, 1),

and it is equally likely to be any of the M. The sampler jumps straight to
that time, reveals one uniformly chosen masked token with a value drawn from
mu(z, s), and repeats: one network call per token, no time grid, and no
discretisation error. When the next time would fall below t = 0 (alpha(s) >
alpha(0) = 1 - eps) every token still masked is drawn from mu(z, 0), the
final fill of the grid samplers. MD4 only; `alpha` is inverted by bisection,
so any MD4 schedule works. It starts from settings.start_time (1, or the
time a reconstruction's inputs were masked to).
"""

import jax
import jax.numpy as jnp

from md4.sampling import core

BISECTION_STEPS = 40


def inverse_alpha(alpha, target: jax.Array) -> jax.Array:
  """t in [0, 1] with alpha(t) = target (alpha decreasing), by bisection."""

  def halve(_, bounds):
    low, high = bounds
    middle = 0.5 * (low + high)
    later = alpha(middle) > target  # the root lies after the middle
    return jnp.where(later, middle, low), jnp.where(later, high, middle)

  bounds = (jnp.zeros_like(target), jnp.ones_like(target))
  return jax.lax.fori_loop(0, BISECTION_STEPS, halve, bounds)[1]


def sample_first_hitting(
    reverse, rng, num_samples, settings, known=None
) -> core.Result:
  """Exact continuous-time samples; network_calls = tokens revealed."""
  alpha = reverse.require_alpha("first_hitting")
  known = (
      known
      if known is not None
      else core.no_known(num_samples, reverse.data_shape)
  )
  mask_id = reverse.mask_id
  data_rank = len(reverse.data_shape)
  z = core.initial_tokens(known, mask_id)
  alpha_end = alpha(jnp.float32(0.0))
  tau = jnp.full((num_samples,), settings.start_time, jnp.float32)
  reveal_time = jnp.where(known.mask, 2.0, 0.0)

  # Known positions may hold the mask id (held masked): never revealed.
  def to_reveal(z):
    return (z == mask_id) & ~known.mask

  def pending(carry):
    return jnp.any(to_reveal(carry[0]))

  def event(carry):
    z, tau, reveal_time, calls = carry
    time_rng, position_rng, value_rng = jax.random.split(
        jax.random.fold_in(rng, calls), 3
    )
    masked = core.flat_positions(to_reveal(z), data_rank)  # [B, N]
    num_masked = jnp.maximum(masked.sum(-1), 1)  # [B]
    # ----------------------------------------- when: the next time --
    u = jnp.maximum(core.uniform(time_rng, tau.shape), 1e-38)
    target = 1.0 - (1.0 - alpha(tau)) * jnp.exp(jnp.log(u) / num_masked)
    at_end = target >= alpha_end  # [B]
    s = jnp.where(at_end, 0.0, jnp.minimum(inverse_alpha(alpha, target), tau))
    # ----------------------------------------- which token, which value --
    log_mu = reverse.log_probs(z, s)  # [B, ..., V]
    position = core.categorical(
        position_rng, jnp.where(masked, 0.0, -jnp.inf)
    )  # [B]
    chosen = jax.nn.one_hot(position, masked.shape[1], dtype=bool)
    chosen = (chosen | at_end[:, None]) & masked  # [B, N]
    chosen = chosen.reshape(z.shape)
    values = core.categorical(value_rng, log_mu)  # [B, ...]
    z = jnp.where(chosen, values, z).astype(z.dtype)
    reveal_time = jnp.where(
        chosen, s.reshape(s.shape + (1,) * data_rank), reveal_time
    )
    return z, s, reveal_time, calls + 1

  z, _, reveal_time, calls = jax.lax.while_loop(
      pending, event, (z, tau, reveal_time, jnp.int32(0))
  )
  history = None
  if settings.num_frames:
    history = core.frames_from_reveal_times(
        z, reveal_time, settings.num_frames, mask_id
    )
  return core.Result(z, calls, history)
