"""ReMDM-style remasking (Wang et al., 2025), the "rescale" schedule.

The reverse step may send a revealed token back to the mask, which lets later
steps correct it. With sigma_t in [0, sigma_max], sigma_max = min(1,
(1 - alpha_s) / alpha_t), the step t -> s is

  revealed token:  masked again with probability sigma_t, else kept;
  masked token:    revealed with value v with probability
                   (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t) mu_v,

which keeps the marginal q(z_s | x) of the forward process for any such
sigma_t. Here sigma_t = strength * sigma_max (`--remask_strength`, eta in
[0, 1]); eta = 0 is the ancestral sampler. Known tokens are never remasked.
MD4 only: the reveal probabilities need a value-independent alpha.
"""

import dataclasses

import jax
import jax.numpy as jnp

from md4.sampling import core


def _strength(value) -> str | None:
  if not 0.0 <= value <= 1.0:
    return "must be in [0, 1]; 0 is ancestral sampling"
  return None


@dataclasses.dataclass(frozen=True)
class RemaskSettings(core.Settings):
  """The grid settings and ReMDM's remasking strength eta."""

  remask_strength: float = core.setting(
      0.05, "ReMDM eta in [0, 1] (0 = ancestral).", _strength
  )


def remask_step(
    reverse: core.Reverse, step: core.Step, strength: float
) -> jax.Array:
  alpha = reverse.require_alpha("remask")
  expand = (1,) * (step.z.ndim - 1)
  a_t = alpha(step.t).reshape(step.t.shape + expand)  # [B, 1, ...]
  a_s = alpha(step.s).reshape(step.s.shape + expand)
  sigma = strength * jnp.minimum(1.0, (1.0 - a_s) / a_t)  # [B, 1, ...]
  unmask = (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t)  # [B, 1, ...]
  reveal_rng, remask_rng = jax.random.split(step.rng)
  z = core.ancestral_reveal(
      reveal_rng, step.z, step.log_mu, unmask[..., None], reverse.mask_id
  )
  revealed_at_t = (step.z != reverse.mask_id) & ~step.known.mask
  remasked = revealed_at_t & core.bernoulli(remask_rng, sigma, z.shape)
  return jnp.where(remasked, reverse.mask_id, z).astype(z.dtype)


def sample_remask(reverse, rng, num_samples, settings, known=None):
  reverse.require_alpha("remask")

  def step_fn(reverse, step):
    return remask_step(reverse, step, settings.remask_strength)

  return core.run(reverse, rng, num_samples, settings, step_fn, known)
