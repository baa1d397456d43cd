"""GenMD4: masked diffusion with a learnable, state-dependent schedule.

Each token value v has its own polynomial schedule

  alpha_v(t) = 1 - (1 - eps) t^{w_v},   w = softplus(power_param)  [V],

so a token x is still unmasked at time t with probability alpha_{x}(t)
(Shi et al., 2024, Sec. 5). With a_v(t) = -alpha_v'(t) / (1 - alpha_v(t)) =
w_v / t, the continuous-time diffusion term of the negative ELBO is

  loss_diff = int_{t1}^1 E_q(z_t|x) sum_{i: z_t^i = MASK}
      [ sum_v a_v mu_v - a_{x_i} - a_{x_i} log mu_{x_i} ] dt,

with mu = softmax(denoiser logits) at position i. Each bracket is the rate of
KL between the true and the model reverse jump processes, hence >= 0, and
the bound is tight when mu is the true posterior of x_i given z_t. With one
w for every value it reduces to MD4.

The schedule parameters also shape q(z_t | x), a discrete draw, so their
gradient has a score-function part. We estimate it with REINFORCE and a
leave-one-out baseline from two draws z_t^(1), z_t^(2) at the same t:

  surrogate = (f1 + f2) / 2 + stop_grad(f1 - f2) / 2 * (log q1 - log q2),

whose gradient is the unbiased RLOO estimate; its value differs from the
bound, which is reported separately as `loss_nelbo`.

Reconstruction at t1 uses a uniform decoder for still-masked tokens (exact
expectation: sum_i (1 - alpha_{x_i}(t1)) log V); the prior term is
KL(q(z_1|x) || p(z_1)) = N eps log V, as in MD4.
"""

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from md4 import fields
from md4 import sharding
from md4.diffusion import chunked_logits
from md4.diffusion import common
from md4.diffusion import process as process_lib

NUM_DRAWS = 2  # z_t draws per example for the leave-one-out baseline.


def power_param_init(power_init: float):
  """Initializer giving softplus(param) = power_init for every value."""
  if power_init <= 0:
    raise ValueError(
        f"config.model.genmd4.power_init must be > 0, got {power_init}."
    )
  inverse_softplus = math.log(math.expm1(power_init))

  def init(rng, shape, dtype=jnp.float32):
    del rng
    return jnp.full(shape, inverse_softplus, dtype)

  return init


def powers(power_param: jax.Array) -> jax.Array:
  """Schedule exponents w = softplus(param), [V]."""
  return jax.nn.softplus(power_param)


def alpha(w_x: jax.Array, t: jax.Array, eps: float) -> jax.Array:
  """alpha_{x}(t) given the exponent of each token's value (broadcasting)."""
  return 1.0 - (1.0 - eps) * jnp.power(t, w_x)


def log_q(
    x_power: jax.Array, z_masked: jax.Array, t: jax.Array, eps: float
) -> jax.Array:
  """log q(z_t | x) per example [B], from the mask pattern.

  Args:
    x_power: w_{x_i} per token [B, ...].
    z_masked: bool [B, ...], True where z_t is the mask token.
    t: [B, 1, ...] times.
    eps: schedule offset.
  """
  log_masked = math.log1p(-eps) + x_power * jnp.log(t)  # log(1 - alpha)
  log_kept = jnp.log1p(-jnp.exp(log_masked))  # log alpha
  per_token = jnp.where(z_masked, log_masked, log_kept)
  return per_token.reshape(per_token.shape[0], -1).sum(axis=-1)


def diffusion_integrand(
    x: jax.Array,
    z_t: jax.Array,
    logits: jax.Array,
    w: jax.Array,
    t: jax.Array,
    mask_id: int,
) -> jax.Array:
  """The bracket of loss_diff summed over masked tokens, per example [B].

  Args:
    x: int tokens [B, ...].
    z_t: int tokens [B, ...].
    logits: [B, ..., V].
    w: exponents [V].
    t: times [B].
    mask_id: the mask token.
  """
  log_mu_x = chunked_logits.target_log_prob(logits, x)  # [B, ...]
  mu = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [B, ..., V]
  expected_w = jnp.einsum("...v,v->...", mu, w)  # [B, ...]
  w_x = w[x]  # [B, ...]
  per_token = expected_w - w_x - w_x * log_mu_x  # [B, ...] times t
  per_token = jnp.where(z_t == mask_id, per_token, 0.0)
  return per_token.reshape(per_token.shape[0], -1).sum(axis=-1) / t


def nelbo(
    rng: jax.Array,
    x: jax.Array,
    denoise: common.Denoiser,
    power_param: jax.Array,
    *,
    vocab_size: int,
    eps: float = 1e-4,
    t1: float = 1e-4,
    label: jax.Array | None = None,
    antithetic: bool = True,
    t: jax.Array | None = None,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """The GenMD4 surrogate loss and negative ELBO per example.

  The denoiser is called once on a batch of 2B (two draws per example).

  Args:
    rng: PRNG key for the time and the mask draws, or one key per example
      [B] for the mask draws (then `t` must be given).
    x: int tokens [B, *data_shape] in [0, vocab_size).
    denoise: `logits = denoise(z_t, t, label)`.
    power_param: unconstrained schedule parameters [V].
    vocab_size: V; the mask token is V.
    eps: alpha_v(1) = eps.
    t1: the diffusion integral runs over [t1, 1]; reconstruction is at t1.
      Must be > 0 (in float32): the integrand is w / t.
    label: optional int [B].
    antithetic: stratify the B time samples.
    t: optional draws u [B] in [0, 1), instead of drawing them; the time is
      t1 + (1 - t1) u in [t1, 1], and the diffusion term is scaled by the
      interval's length 1 - t1, so the estimate of the integral over
      [t1, 1] is unbiased.

  Returns:
    (terms, scalars): per-example nats [B] (`loss` the surrogate,
    `loss_nelbo`, `loss_diff`, `loss_recon`, `loss_prior`) and the schedule's
    `power_min`, `power_mean`, `power_max`.
  """
  mask_id = common.mask_token(vocab_size)
  batch_size = x.shape[0]
  num_elements = math.prod(x.shape[1:])
  w = powers(power_param)  # [V]
  if eps <= 0:
    raise ValueError(
        f"config.model.genmd4.eps must be > 0 for GenMD4, got {eps}."
    )
  if not 0.0 < float(np.float32(t1)) < 1.0:
    raise ValueError(
        "config.model.genmd4.t1 must be in (0, 1) for GenMD4 (in float32), got"
        f" {t1}: the diffusion integral starts at t1 and its integrand is w /"
        " t, infinite at t = 0; set e.g. config.model.genmd4.t1=1e-4."
    )
  t_rng, z_rng = common.time_and_mask_rngs(rng, t)
  if t is None:
    t = common.sample_times(t_rng, batch_size, antithetic)
  t = t1 + (1.0 - t1) * t  # [B] in [t1, 1]
  x2 = jnp.concatenate([x] * NUM_DRAWS)  # [2B, ...]
  t2 = jnp.concatenate([t] * NUM_DRAWS)  # [2B]
  label2 = None if label is None else jnp.concatenate([label] * NUM_DRAWS)
  t2_data = common.broadcast_to_data(t2, x2)  # [2B, 1, ...]
  w_x2 = w[x2]  # [2B, ...]
  # Draw k of example b in row k * B + b: [B, 2, ...] -> [2B, ...].
  u = common.uniform(z_rng, (batch_size, NUM_DRAWS) + x.shape[1:])
  u = jnp.swapaxes(u, 0, 1).reshape(x2.shape)
  keep = u < alpha(w_x2, t2_data, eps)
  z2 = jnp.where(keep, x2, jnp.asarray(mask_id, x2.dtype))  # [2B, ...]

  logits = denoise(z2, t2, label2)  # [2B, ..., V]
  f = (1.0 - t1) * diffusion_integrand(x2, z2, logits, w, t2, mask_id)  # [2B]
  logq = log_q(w_x2, z2 == mask_id, t2_data, eps)  # [2B]
  f1, f2 = jnp.split(f, NUM_DRAWS)
  logq1, logq2 = jnp.split(logq, NUM_DRAWS)
  loss_diff = 0.5 * (f1 + f2)
  reinforce = 0.5 * jax.lax.stop_gradient(f1 - f2) * (logq1 - logq2)

  x_power = w[x]  # [B, ...]
  masked_at_t1 = (1.0 - eps) * jnp.power(t1, x_power)  # 1 - alpha_x(t1)
  loss_recon = masked_at_t1.reshape(batch_size, -1).sum(-1) * math.log(
      vocab_size
  )
  loss_prior = jnp.full(
      (batch_size,), num_elements * eps * math.log(vocab_size), jnp.float32
  )
  loss_nelbo = loss_diff + loss_recon + loss_prior
  terms = {
      "loss": loss_nelbo + reinforce,
      "loss_nelbo": loss_nelbo,
      "loss_diff": loss_diff,
      "loss_recon": loss_recon,
      "loss_prior": loss_prior,
  }
  scalars = {"power_min": w.min(), "power_mean": w.mean(), "power_max": w.max()}
  return terms, scalars


@dataclasses.dataclass(frozen=True)
class GenMD4(process_lib.Process):
  """GenMD4: a learnable polynomial schedule per token value (this module).

  Attributes:
    eps: alpha_v(1) = eps.
    power_init: the initial exponent w_v of every value.
    t1: the diffusion integral runs over [t1, 1].
  """

  eps: float = 1e-4
  power_init: float = 1.0
  t1: float = 1e-4

  name: ClassVar[str] = "genmd4"
  summary: ClassVar[str] = (
      "masked diffusion with a learnable schedule per "
      "value (Shi et al., 2024, Sec. 5)"
  )
  FIELDS: ClassVar[tuple[fields.Field, ...]] = (
      fields.Field(
          "model.genmd4.eps",
          1e-4,
          "alpha_v(1) = eps.",
          low=0.0,
          high=0.5,
          low_open=True,
          high_open=True,
      ),
      fields.Field(
          "model.genmd4.power_init",
          1.0,
          "Initial exponent w_v of every value's schedule.",
          low=0.0,
          low_open=True,
      ),
      fields.Field(
          "model.genmd4.t1",
          1e-4,
          "The bound's integral runs over [t1, 1] (reconstruction "
          "at t1); > 0, its integrand is w / t.",
          low=0.0,
          high=1.0,
          low_open=True,
          high_open=True,
      ),
  )
  capabilities: ClassVar[frozenset[str]] = frozenset({process_lib.UNMASKING})
  default_sampler: ClassVar[str] = "ancestral"

  def __post_init__(self):
    power_param_init(self.power_init)  # Checks it.

  def param_specs(self):
    return {
        "power_param": process_lib.ParamSpec(
            power_param_init(self.power_init),
            (self.vocab_size,),
            (sharding.VOCAB,),
        )
    }

  def nelbo(self, params, rng, x, denoise, *, label, antithetic, t):
    return nelbo(
        rng,
        x,
        denoise,
        params["power_param"],
        vocab_size=self.vocab_size,
        eps=self.eps,
        t1=self.t1,
        label=label,
        antithetic=antithetic,
        t=t,
    )

  def unmask_probability(self, params, s, t):
    w = powers(params["power_param"])  # [V]
    expand = (1,) * len(self.data_shape) + (1,)
    s_b, t_b = s.reshape(s.shape + expand), t.reshape(t.shape + expand)
    return common.reveal_probability(
        alpha(w, s_b, self.eps), alpha(w, t_b, self.eps)
    )  # [B, 1.., V]

  def keep_probability(self, params, x, t):
    t_b = t.reshape(t.shape + (1,) * (x.ndim - 1))
    return alpha(powers(params["power_param"])[x], t_b, self.eps)
