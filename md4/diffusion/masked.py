"""MD4: masked diffusion with a state-independent schedule (Shi et al., 2024).

Tokens take values in {0, ..., V-1}; the mask token is `MASK = V`. The forward
process masks each token independently: q(z_t = x | x) = alpha(t),
q(z_t = MASK | x) = 1 - alpha(t).

The negative ELBO of one example x with N = prod(data_shape) tokens is

  loss = loss_prior + loss_diff + loss_recon, where

  loss_prior = KL(q(z_1 | x) || p(z_1)) = N alpha(1) log V
      p(z_1): each token masked with probability 1 - alpha(1), otherwise
      uniform over the V values (alpha(1) = eps).
  loss_diff  = int_0^1 alpha'(t) / (1 - alpha(t))
                 E_q(z_t|x) [ sum_{i: z_t^i = MASK} log mu_theta(z_t, t)_i[x_i] ] dt
      (continuous time), estimated at t = 1 - u, u ~ U[0, 1): a time in
      (0, 1], never 0, where polyK with K < 1 has alpha'(0) = -inf (the
      integrand itself stays integrable); or its T-step discrete counterpart
      T E_{i ~ U{1..T}} E_q(z_t(i)|x) [ (alpha(s(i)) - alpha(t(i))) / (1 - alpha(t(i)))
                 sum_{masked} -log mu_theta(z_t(i), t(i))[x] ],  t(i) = i/T, s(i) = (i-1)/T.
  loss_recon = -E_q(z_0|x) log p(x | z_0) with p keeping unmasked tokens and
      decoding a still-masked token uniformly: exactly N (1 - alpha(0)) log V.

With a loss mask m [B, *data_shape] (True: scored), a position with m = 0
is never noised (z_t keeps x there at every t) and never scored, and N is
each example's count of scored positions: the bound is then on
-log p(x_scored | x_unscored), the unscored tokens observed throughout, as
padding is in one-example-per-sequence evaluation (MDLM's unwrapped
batches). With m all True it is the plain bound, draw for draw.

All functions are pure functions of arrays; the denoiser is any callable
`logits = denoise(z_t, t, label)` returning float logits [B, *data_shape, V],
or a `FactoredLogits` (the output head's input and weights, from which the
cross-entropy forms the logits a chunk of positions at a time: the [B, N, V]
logits and their gradient are never held at once).
"""

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from md4 import fields
from md4.diffusion import common
from md4.diffusion import process as process_lib
from md4.diffusion import schedules


def prior_loss(
    schedule: schedules.MaskingSchedule, num_elements: int, vocab_size: int
) -> jax.Array:
  """KL(q(z_1|x) || p(z_1)) = N alpha(1) log V, the same for every x."""
  return num_elements * schedule.alpha(jnp.float32(1.0)) * math.log(vocab_size)


def recon_loss(
    schedule: schedules.MaskingSchedule, num_elements: int, vocab_size: int
) -> jax.Array:
  """-E log p(x | z_0) with a uniform decoder: N (1 - alpha(0)) log V."""
  return (
      num_elements
      * (1.0 - schedule.alpha(jnp.float32(0.0)))
      * math.log(vocab_size)
  )


def diffusion_weight(
    schedule: schedules.MaskingSchedule, u: jax.Array, num_steps: int
):
  """Per-example weight on the masked cross-entropy, and the time to query.

  Continuous time (num_steps == 0): -alpha'(t) / (1 - alpha(t)) at the time
  t = 1 - u in (0, 1] (`time_of_draw`), queried at t.
  Discrete time: T (alpha(s) - alpha(t)) / (1 - alpha(t)) on the grid point
  t(i) = i / T, i = floor(u T) + 1, queried at t(i).

  Args:
    schedule: the masking schedule.
    u: draws [B] in [0, 1).
    num_steps: 0 for continuous time, else T.

  Returns:
    (weight [B] >= 0, finite, query time [B]).
  """
  if num_steps == 0:
    t = common.time_of_draw(u)
    return -schedule.loss_weight(t), t
  s, t_i = common.discretize_times(u, num_steps)
  alpha_s, alpha_t = schedule.alpha(s), schedule.alpha(t_i)
  return num_steps * common.reveal_probability(alpha_s, alpha_t), t_i


def nelbo(
    rng: jax.Array,
    x: jax.Array,
    denoise: common.Denoiser,
    schedule: schedules.MaskingSchedule,
    *,
    vocab_size: int,
    label: jax.Array | None = None,
    num_steps: int = 0,
    antithetic: bool = True,
    t: jax.Array | None = None,
    loss_mask: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """One Monte-Carlo sample of the MD4 negative ELBO per example.

  Args:
    rng: PRNG key for the time and the mask draws, or one key per example
      [B] for the mask draws (then `t` must be given).
    x: int tokens [B, *data_shape] in [0, vocab_size).
    denoise: `logits = denoise(z_t, t, label)`, logits [B, *data_shape, V]
      or `FactoredLogits`.
    schedule: the masking schedule.
    vocab_size: V; the mask token is V.
    label: optional int [B] passed through to the denoiser.
    num_steps: 0 for continuous time, T > 0 for the T-step discrete ELBO.
    antithetic: stratify the B time samples.
    t: optional draws [B] in [0, 1) to use instead of drawing them; the
      continuous time is 1 - t (`time_of_draw`), the discrete step
      floor(t T) + 1.
    loss_mask: optional bool [B, *data_shape], True where a token is scored;
      the others are never masked (the module docstring).

  Returns:
    Per-example nats [B]: `loss` = `loss_diff` + `loss_recon` + `loss_prior`.
  """
  mask_id = common.mask_token(vocab_size)
  batch_size = x.shape[0]
  num_elements = math.prod(x.shape[1:])
  t_rng, z_rng = common.time_and_mask_rngs(rng, t)
  if t is None:
    t = common.sample_times(
        t_rng, batch_size, antithetic
    )  # [B] draws in [0, 1)
  weight, t_query = diffusion_weight(schedule, t, num_steps)  # [B], [B]
  alpha_t = common.broadcast_to_data(schedule.alpha(t_query), x)  # [B, 1, ...]
  z_t = common.forward_sample(z_rng, x, alpha_t, mask_id)  # [B, ...]
  ones = jnp.ones((batch_size,), jnp.float32)
  loss_prior = prior_loss(schedule, num_elements, vocab_size) * ones
  loss_recon = recon_loss(schedule, num_elements, vocab_size) * ones
  if loss_mask is not None:
    loss_mask = jnp.broadcast_to(loss_mask, x.shape).astype(bool)
    z_t = jnp.where(loss_mask, z_t, x)  # unscored: observed at every t
    scored = loss_mask.reshape(batch_size, -1).sum(-1).astype(jnp.float32)
    loss_prior = prior_loss(schedule, 1, vocab_size) * scored
    loss_recon = recon_loss(schedule, 1, vocab_size) * scored
  logits = denoise(z_t, t_query, label)  # [B, ..., V]
  loss_diff = weight * common.masked_cross_entropy(
      x, z_t, logits, mask_id
  )  # [B]

  return {
      "loss": loss_diff + loss_recon + loss_prior,
      "loss_diff": loss_diff,
      "loss_recon": loss_recon,
      "loss_prior": loss_prior,
  }


@dataclasses.dataclass(frozen=True)
class MD4(process_lib.Process):
  """MD4: masking with one schedule alpha(t) for every value (this module).

  Attributes:
    schedule: linear, cosine or polyK.
    eps: alpha stays in [eps, 1 - eps].
    num_steps: 0 for the continuous-time bound, T > 0 for the T-step one.
  """

  schedule: str = "linear"
  eps: float = 1e-4
  num_steps: int = 0

  name: ClassVar[str] = "md4"
  summary: ClassVar[str] = (
      "masked diffusion, one schedule for every value (Shi et al., 2024)"
  )
  FIELDS: ClassVar[tuple[fields.Field, ...]] = (
      fields.Field(
          "model.md4.schedule",
          "linear",
          "Masking schedule alpha(t): linear, cosine or polyK (e.g. poly3).",
      ),
      fields.Field(
          "model.md4.eps",
          1e-4,
          "alpha(t) stays in [eps, 1 - eps].",
          low=0.0,
          high=0.5,
          high_open=True,
      ),
      fields.Field(
          "model.md4.num_steps",
          0,
          "0: continuous-time ELBO; T > 0: the T-step ELBO.",
          low=0,
      ),
  )
  capabilities: ClassVar[frozenset[str]] = frozenset(
      {process_lib.UNMASKING, process_lib.VALUE_INDEPENDENT}
  )
  default_sampler: ClassVar[str] = "ancestral"
  supports_loss_mask: ClassVar[bool] = True

  def __post_init__(self):
    schedules.checked(self.schedule, self.eps, self.name)

  @property
  def masking(self) -> schedules.MaskingSchedule:
    return schedules.MaskingSchedule(self.schedule, self.eps)

  def nelbo(
      self, params, rng, x, denoise, *, label, antithetic, t, loss_mask=None
  ):
    del params
    loss_denoise = lambda z, tt, c: denoise(z, tt, c, factored=True)
    terms = nelbo(
        rng,
        x,
        loss_denoise,
        self.masking,
        vocab_size=self.vocab_size,
        label=label,
        num_steps=self.num_steps,
        antithetic=antithetic,
        t=t,
        loss_mask=loss_mask,
    )
    return terms, {}

  def unmask_probability(self, params, s, t):
    del params
    expand = (1,) * (len(self.data_shape) + 1)
    a_s = self.masking.alpha(s).reshape(s.shape + expand)
    a_t = self.masking.alpha(t).reshape(t.shape + expand)
    return common.reveal_probability(a_s, a_t)  # [B, 1.., 1]

  def keep_probability(self, params, x, t):
    del params
    t_b = t.reshape(t.shape + (1,) * (x.ndim - 1))
    return jnp.broadcast_to(self.masking.alpha(t_b), x.shape)

  def alpha(self, params):
    del params
    return self.masking.alpha
