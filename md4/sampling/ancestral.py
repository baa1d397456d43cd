"""Ancestral sampling: the reverse of the masking process on a time grid.

From z_1 = all masks, each step t -> s < t reveals every masked token
independently: value v with probability unmask(s, t)[v] * mu_theta(z_t, t)[v],
otherwise it stays masked. Revealed tokens never change again. The last step
(s = 0) is followed by filling any token still masked with a draw from the
denoiser, since alpha(0) = 1 - eps leaves a few masked by construction.
"""

import jax
import jax.numpy as jnp

from md4 import model as model_lib


def time_grid(num_steps: int, grid: str = "uniform") -> jax.Array:
  """Times 1 = t_T > ... > t_0 = 0, [num_steps + 1]."""
  u = jnp.linspace(1.0, 0.0, num_steps + 1)
  if grid == "uniform":
    return u
  if grid == "cosine":
    return 1.0 - jnp.cos(0.5 * jnp.pi * u)
  raise ValueError(f"--grid={grid!r} is not a time grid; valid: uniform, "
                   "cosine.")


def categorical(rng: jax.Array, probs: jax.Array) -> jax.Array:
  """Draws indices from probabilities [..., K] by inverting the CDF.

  Inverse-CDF sampling uses the probabilities themselves, so small ones are
  not truncated the way float32 Gumbel noise truncates them.
  """
  cdf = jnp.cumsum(probs, axis=-1)  # [..., K]
  u = jax.random.uniform(rng, probs.shape[:-1] + (1,)) * cdf[..., -1:]
  return jnp.minimum((cdf <= u).sum(-1), probs.shape[-1] - 1)


def reverse_step(rng, z, logits, unmask_prob, mask_id: int):
  """One reverse step: reveal masked tokens of z; [B, ...] -> [B, ...]."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [B, ..., V]
  reveal = probs * unmask_prob  # [B, ..., V]
  stay = jnp.clip(1.0 - reveal.sum(-1, keepdims=True), 0.0, 1.0)
  choice = categorical(rng, jnp.concatenate([reveal, stay], -1))
  # choice == V means "stay masked", which is exactly mask_id.
  new = jnp.where(choice == reveal.shape[-1], mask_id, choice)
  return jnp.where(z == mask_id, new, z).astype(z.dtype)


def sample(model: model_lib.DiffusionModel, variables, rng: jax.Array,
           num_samples: int, num_steps: int, label=None,
           grid: str = "uniform") -> jax.Array:
  """Draws num_samples examples [N, *data_shape] with an ancestral sampler."""
  times = time_grid(num_steps, grid)
  mask_id = model.mask_id
  z = jnp.full((num_samples,) + tuple(model.data_shape), mask_id, jnp.int32)
  ones = jnp.ones((num_samples,), jnp.float32)

  def denoise(z, t):
    return model.apply(variables, z, t, label, method=model.denoise)

  def body(i, z):
    t, s = times[i] * ones, times[i + 1] * ones
    unmask = model.apply(variables, s, t, method=model.unmask_probability)
    return reverse_step(jax.random.fold_in(rng, i), z, denoise(z, t), unmask,
                        mask_id)

  z = jax.lax.fori_loop(0, num_steps, body, z)
  final = jax.nn.softmax(denoise(z, 0.0 * ones).astype(jnp.float32), -1)
  fill = categorical(jax.random.fold_in(rng, num_steps), final)
  return jnp.where(z == mask_id, fill, z)
