"""Ancestral sampling of a T-step transition chain (D3PM): x_T, then T steps.

x_T comes from the process's prior (`prior_sample`: all masks for absorbing
noise, uniform values otherwise); each step draws x_{t-1} ~ p(x_{t-1} | x_t)
with the process's `log_posterior`, the reverse step the loss trains, so the
configured D3PM parameterization ("soft_x0" or "posterior_mixture") holds for
both and the network's x0 prediction is never argmaxed. The network sees the
time t / T. One network call per step, T in all; the last step (t = 1) gives
the mask state zero probability, so every token is a data value at the end.
History frame k is the state at time 1 - k / (F - 1).
"""

import jax
import jax.numpy as jnp
import numpy as np

from md4.sampling import core


def sample_reverse_chain(
    reverse: core.Reverse,
    rng: jax.Array,
    num_samples: int,
    settings: core.BaseSettings,
    known: core.Known | None = None,
) -> core.Result:
  """Draws [N, *data_shape] samples with the process's T-step chain.

  Args:
    reverse: the model; its process has the transition-chain capability.
    rng: PRNG key.
    num_samples: N.
    settings: num_frames is read (start_time must be 1).
    known: must be None: the chain has no conditioning on known tokens.

  Returns:
    The `core.Result`; network_calls counts the denoiser calls (T).
  """
  if known is not None:
    raise ValueError(
        "the reverse chain cannot keep known tokens; drop "
        "--prompt, --infill and --inpaint."
    )
  process = reverse.process
  num_steps = process.num_steps
  shape = (num_samples,) + tuple(reverse.data_shape)
  init_rng, rng = jax.random.split(rng)
  z = process.prior_sample(init_rng, shape)

  def body(carry, i):
    z, calls = carry
    step = jnp.full((num_samples,), num_steps - i, jnp.int32)  # T .. 1
    logits = reverse.denoise(z, step.astype(jnp.float32) / num_steps)
    log_p = process.log_posterior(logits, z, step)  # [N, ..., S]
    z = core.categorical(jax.random.fold_in(rng, i), log_p).astype(jnp.int32)
    return (z, calls + 1), z

  z_T = z
  (z, calls), states = jax.lax.scan(
      body, (z, jnp.int32(0)), jnp.arange(num_steps)
  )
  if settings.num_frames <= 0:
    return core.Result(z, calls)
  # all_states[i] = x_{T - i}; frame k at time 1 - k / (F - 1).
  all_states = jnp.concatenate([z_T[None], states])  # [T + 1, N, ...]
  picks = (
      np.linspace(0, num_steps, settings.num_frames).round().astype(np.int32)
  )
  return core.Result(z, calls, all_states[picks])
