"""Ancestral sampling for D3PM: x_T from the prior, then T reverse steps.

Each step draws x_{t-1} ~ p(x_{t-1} | x_t) = sum_{x0} q(x_{t-1} | x_t, x0)
p~(x0 | x_t): the network's x0 prediction marginalised through the true
posterior (never an argmax). One network call per step, T calls in all; the
last step (t = 1) gives the mask state zero probability, so every token is
a data value at the end.
"""

import jax
import jax.numpy as jnp

from md4.sampling import core


def sample(model, variables, rng: jax.Array, num_samples: int, label=None,
           num_frames: int = 0):
  """Draws [N, *data_shape] samples; with num_frames, also a history.

  Args:
    model: a `DiffusionModel` with process "d3pm".
    variables: its variables ({"params": ...}).
    rng: PRNG key.
    num_samples: N.
    label: optional class id for class-conditional models.
    num_frames: > 0 to also return that many evenly spaced states
      [num_frames, N, *data_shape] from x_T to x_0.

  Returns:
    samples, or (samples, history) when num_frames > 0.
  """
  num_steps = model.num_steps
  shape = (num_samples,) + tuple(model.data_shape)
  init_rng, rng = jax.random.split(rng)
  if model.transition == "absorbing":
    z = jnp.full(shape, model.mask_id, jnp.int32)
  else:
    z = jax.random.randint(init_rng, shape, 0, model.vocab_size)
  labels = (None if label is None else
            jnp.full((num_samples,), label, jnp.int32))

  def body(z, i):
    step = jnp.full((num_samples,), num_steps - i, jnp.int32)  # T .. 1
    log_p = model.apply(variables, z, step, labels,
                        method=model.reverse_log_probs)  # [N, ..., S]
    z = core.categorical(jax.random.fold_in(rng, i), log_p).astype(jnp.int32)
    return z, z

  z, states = jax.lax.scan(body, z, jnp.arange(num_steps))
  if num_frames <= 0:
    return z
  picks = jnp.linspace(0, num_steps - 1, num_frames).round().astype(jnp.int32)
  return z, states[picks]
