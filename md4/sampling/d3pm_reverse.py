"""Ancestral sampling for D3PM: x_T from the prior, then T reverse steps.

Each step draws x_{t-1} ~ p(x_{t-1} | x_t), the reverse step the loss
trains: `DiffusionModel.reverse_log_probs` goes through the same
`D3PM.log_posterior` as the bound, so the model's `d3pm_parameterization`
("soft_x0": q(x_t | x_{t-1}) sum_k p~(k | x_t) q(x_{t-1} | x_0 = k);
"posterior_mixture": sum_k q(x_{t-1} | x_t, k) p~(k | x_t)) holds for both,
and the network's x0 prediction is never argmaxed. One network call per
step, T calls in all; the last step (t = 1) gives the mask state zero
probability, so every token is a data value at the end.

`reverse_chain` returns a `core.Result` (samples, network calls, history
frames); `draw` runs it batch after batch for `python -m md4.sample`, like
`md4.sampling.drawing.draw` does for the MD4 samplers.
"""

import jax
import jax.numpy as jnp
import numpy as np

from md4.sampling import core
from md4.sampling import drawing


def reverse_chain(model, variables, rng: jax.Array, num_samples: int,
                  label=None, num_frames: int = 0) -> core.Result:
  """Draws [N, *data_shape] samples with the T-step reverse chain.

  Args:
    model: a `DiffusionModel` with process "d3pm".
    variables: its variables ({"params": ...}).
    rng: PRNG key.
    num_samples: N.
    label: optional class id for class-conditional models.
    num_frames: > 0 to also record that many evenly spaced states
      [num_frames, N, *data_shape], from x_T (frame 0, time 1) to x_0
      (the last frame, time 0).

  Returns:
    The `core.Result`; network_calls counts the denoiser calls (T).
  """
  num_steps = model.num_steps
  shape = (num_samples,) + tuple(model.data_shape)
  init_rng, rng = jax.random.split(rng)
  if model.transition == "absorbing":
    z = jnp.full(shape, model.mask_id, jnp.int32)
  else:  # The uniform prior (also Gaussian noise's stationary one).
    z = jax.random.randint(init_rng, shape, 0, model.vocab_size)
  labels = (None if label is None else
            jnp.full((num_samples,), label, jnp.int32))

  def body(carry, i):
    z, calls = carry
    step = jnp.full((num_samples,), num_steps - i, jnp.int32)  # T .. 1
    log_p = model.apply(variables, z, step, labels,
                        method=model.reverse_log_probs)  # [N, ..., S]
    z = core.categorical(jax.random.fold_in(rng, i), log_p).astype(jnp.int32)
    return (z, calls + 1), z

  z_T = z
  (z, calls), states = jax.lax.scan(body, (z, jnp.int32(0)),
                                    jnp.arange(num_steps))
  if num_frames <= 0:
    return core.Result(z, calls)
  # all_states[i] = x_{T - i}; frame k at time 1 - k / (F - 1).
  all_states = jnp.concatenate([z_T[None], states])  # [T + 1, N, ...]
  picks = np.linspace(0, num_steps, num_frames).round().astype(np.int32)
  return core.Result(z, calls, all_states[picks])


def sample(model, variables, rng: jax.Array, num_samples: int, label=None,
           num_frames: int = 0):
  """`reverse_chain`'s samples, or (samples, history) when num_frames > 0."""
  result = reverse_chain(model, variables, rng, num_samples, label,
                         num_frames)
  return result.samples if num_frames <= 0 else (result.samples,
                                                 result.history)


def draw(model, params, *, num_samples: int, batch_size: int, seed: int,
         label: int | None = None, num_frames: int = 0) -> drawing.Drawn:
  """num_samples samples in batches of one compiled reverse chain.

  Batch b uses the key fold_in(key(seed), b); the last batch is trimmed;
  the history is the first batch's.
  """
  batch_size = drawing.batch_size_for(num_samples, batch_size)

  def one_batch(params, rng):
    return reverse_chain(model, {"params": params}, rng, batch_size, label,
                         num_frames)

  return drawing.run_batches(one_batch, params, num_samples=num_samples,
                             batch_size=batch_size, seed=seed)
