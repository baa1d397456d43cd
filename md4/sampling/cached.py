"""Cached ancestral sampling: the network is called only when a token changes.

For MD4 whether a masked token is revealed in a step does not depend on the
denoiser, only on the schedule: a token masked at t_0 = 1 is still masked
after step i with probability S_i = (1 - alpha(t_{i+1})) / (1 - alpha(t_0)).
So every token's reveal step is drawn up front from one uniform u,

    r = #{i < T : S_i > u}  in {0, ..., T}    (T = the final fill at t = 0),

and the token's value is drawn from mu(z_{t_r}, t_r) when step r comes: the
ancestral sampler's distribution, drawn in a different order. A step where
none of a sample's tokens is revealed uses no network output, so the cached
loop visits each sample's own reveal steps only: in round k every sample of
the batch is at its k-th distinct reveal step (one batched call with a time
per sample); a finished sample rides along unchanged. Calls per sample: the
number of distinct reveal steps, about T (1 - (1 - 1/T)^N) for N tokens on a
linear schedule and uniform grid (about 227 for N = 256, T = 1000), instead
of T + 1.

For a network without time input (time_features = "none") each skipped call
would have seen the same z as the previous one: this is the cache of the
issue, exact. The skip is exact for time-conditioned MD4 networks too, since
the outputs skipped are never used. `skip=False` makes the same draws with a
call at every step (the uncached reference): both return the same samples
for the same key. MD4 only (GenMD4's reveal probability depends on mu).
"""

import jax
import jax.numpy as jnp

from md4.sampling import core


def reveal_steps(
    reverse: core.Reverse,
    plan_keys: jax.Array,
    times: jax.Array,
    known: core.Known,
) -> jax.Array:
  """Every token's reveal step, int32 [B, ...]: -1 known, T the final fill."""
  alpha = reverse.require_alpha("cached")
  a = alpha(times)  # [T + 1], increasing as t decreases
  survive = (1.0 - a[1:]) / (1.0 - a[0])  # [T], decreasing
  u = jax.vmap(lambda k: core.uniform(k, reverse.data_shape))(plan_keys)
  num_steps = times.shape[0] - 1
  # #{i : S_i > u} = T - #{i : S_i <= u}, counted on the ascending order.
  steps = num_steps - jnp.searchsorted(survive[::-1], u, side="right")
  return jnp.where(known.mask, -1, steps).astype(jnp.int32)


def _draw_values(value_keys, steps, log_mu):
  """Per-sample categorical draws keyed by (sample, step); [B, ...]."""
  return jax.vmap(
      lambda k, i, lm: core.categorical(jax.random.fold_in(k, i), lm)
  )(value_keys, steps, log_mu)


def sample_cached(
    reverse, rng, num_samples, settings, known=None, skip: bool = True
) -> core.Result:
  """Ancestral samples with network calls only at reveal steps.

  Args:
    reverse: an MD4 model.
    rng: PRNG key.
    num_samples: B.
    settings: num_steps, grid, start_time and num_frames are read.
    known: given tokens, or None.
    skip: False calls the network at every step (same draws, for checking).

  Returns:
    The `Result`; network_calls is the number of rounds.
  """
  num_steps = settings.num_steps
  times = jnp.asarray(core.sampler_times(settings))  # [T + 1]
  known = (
      known
      if known is not None
      else core.no_known(num_samples, reverse.data_shape)
  )
  mask_id = reverse.mask_id
  keys = jax.random.split(rng, num_samples)
  plan_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  value_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  steps = reveal_steps(reverse, plan_keys, times, known)  # [B, ...]
  z = core.initial_tokens(known, mask_id)
  expand = (1,) * len(reverse.data_shape)

  def reveal(z, current):
    """Reveals the tokens whose step is `current` [B]; one network call."""
    t = times[jnp.minimum(current, num_steps)]  # [B]
    log_mu = reverse.log_probs(z, t)  # [B, ..., V]
    values = _draw_values(value_keys, current, log_mu)
    now = steps == current.reshape(current.shape + expand)
    return jnp.where(now, values, z).astype(z.dtype)

  if skip:
    # -------------------------------- one round per distinct step ----
    # Known positions may hold the mask id (held masked): not to reveal.
    def to_reveal(z):
      return (z == mask_id) & ~known.mask

    def pending(carry):
      return jnp.any(to_reveal(carry[0]))

    def round_(carry):
      z, calls = carry
      masked = to_reveal(z)
      later = jnp.where(masked, steps, num_steps + 1)
      current = later.reshape(num_samples, -1).min(-1)  # [B]
      return reveal(z, current), calls + 1

    z, calls = jax.lax.while_loop(pending, round_, (z, jnp.int32(0)))
  else:
    # ---------------------------------------- every step, uncached ---
    def every_step(i, z):
      return reveal(z, jnp.full((num_samples,), i, jnp.int32))

    z = jax.lax.fori_loop(0, num_steps + 1, every_step, z)
    calls = jnp.int32(num_steps + 1)

  history = None
  if settings.num_frames:
    after = jnp.concatenate([times[1:], jnp.zeros((1,))])  # [T + 1]
    reveal_time = jnp.where(known.mask, 2.0, after[jnp.maximum(steps, 0)])
    history = core.frames_from_reveal_times(
        z, reveal_time, settings.num_frames, mask_id
    )
  return core.Result(z, calls, history)
