"""Reconstruction: real data masked forward to a time t, then denoised from t.

`reconstruct` masks each token of some examples with probability
1 - alpha(t) under the model's own schedule (1 - alpha_x(t), per value, for
GenMD4), then runs a sampler from t down to 0 with the unmasked tokens given
(`core.Settings.start_time = t`: the T steps of the grid span [0, t]). The
share of tokens that come back equal to the original says how much of the
data the model recovers at that noise level (`Reconstruction.scores`).

The upstream md4 code rounds t up to its T-step grid and runs the last
ceil(t T) steps of the full grid instead.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from md4.diffusion import common
from md4.diffusion import process as process_lib
from md4.sampling import core
from md4.sampling import drawing


@dataclasses.dataclass
class Reconstruction:
  """What `reconstruct` returns.

  Attributes:
    originals: int [N, *data_shape], the examples.
    noised: int [N, *data_shape], the examples masked forward to t (mask id
      V where masked): the sampler's input.
    expected_masked_fraction: the mean over tokens of 1 - keep probability.
    drawn: the sampler's output; `drawn.samples` are the reconstructions.
  """

  originals: np.ndarray
  noised: np.ndarray
  expected_masked_fraction: float
  drawn: drawing.Drawn

  def scores(self, mask_id: int) -> dict[str, float | None]:
    """Masked share, and the share of tokens reconstructed as the original.

    `equal_fraction` counts every token (unmasked ones are given, so always
    equal); `masked_equal_fraction` only the masked ones (None when no token
    was masked).
    """
    masked = self.noised == mask_id  # [N, ...]
    equal = self.drawn.samples == self.originals  # [N, ...]
    return {
        "masked_fraction": float(masked.mean()),
        "expected_masked_fraction": self.expected_masked_fraction,
        "equal_fraction": float(equal.mean()),
        "masked_equal_fraction": (
            float(equal[masked].mean()) if masked.any() else None
        ),
    }


def noise(
    reverse: core.Reverse, keys: jax.Array, x: jax.Array, t: float
) -> tuple[jax.Array, jax.Array]:
  """z_t ~ q(z_t | x): each token kept with its keep probability at t.

  Args:
    reverse: the model (its `keep_probability`).
    keys: one PRNG key per example [N], so an example's mask does not
      depend on the others.
    x: int tokens [N, *data_shape].
    t: the time in (0, 1].

  Returns:
    (z_t int [N, ...] with mask id V where masked, keep probabilities
    float [N, ...]).
  """
  reason = process_lib.reason_missing(
      reverse.process,
      process_lib.UNMASKING,
      "--reconstruct_from",
      "Reconstruct from a masked-diffusion run (md4, genmd4).",
  )
  if reason:
    raise ValueError(reason)
  times = jnp.full((x.shape[0],), t, jnp.float32)  # [N]
  keep = reverse.keep_probability(x, times)  # [N, ...]
  return common.forward_sample(keys, x, keep, reverse.mask_id), keep


def reconstruct(
    model,
    params,
    examples: np.ndarray,
    sampler: str,
    settings: core.Settings,
    *,
    batch_size: int,
    seed: int,
    labels: np.ndarray | None = None,
    guidance: float = 0.0,
) -> Reconstruction:
  """Masks examples forward to settings.start_time and denoises them.

  Args:
    model: the `DiffusionModel` (MD4 or GenMD4).
    params: its (EMA) parameters.
    examples: int [N, *data_shape] in [0, V).
    sampler: a name in `md4.sampling.SAMPLERS`.
    settings: the sampler settings; start_time is the noise level t.
    batch_size: samples per compiled sampler call.
    seed: seeds the masks and the sampler (apart from each other).
    labels: the examples' classes [N] for class-conditional models, or None.
    guidance: classifier-free guidance scale (needs labels).

  Returns:
    The `Reconstruction`.
  """
  settings.validate()
  examples = np.asarray(examples, np.int32)
  # A stream apart from the sampler's fold_in(key(seed), batch) keys.
  noise_key = jax.random.split(jax.random.key(seed))[1]
  keys = jax.random.split(noise_key, len(examples))

  def noised_of(params, keys, x):
    reverse = core.from_model(model, {"params": params})
    return noise(reverse, keys, x, settings.start_time)

  noised, keep = jax.jit(noised_of)(params, keys, examples)
  noised = np.asarray(noised)
  known = core.Known(noised != model.mask_id, examples)
  drawn = drawing.draw(
      model,
      params,
      sampler,
      settings,
      num_samples=len(examples),
      batch_size=batch_size,
      seed=seed,
      known=known,
      label=labels,
      guidance=guidance,
  )
  return Reconstruction(examples, noised, float(1.0 - np.mean(keep)), drawn)
