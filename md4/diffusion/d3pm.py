"""Discrete-time D3PM (Austin et al., 2021): uniform, absorbing, Gaussian.

States: K data values, plus the mask id K for absorbing noise (S = K or K+1).
With uniform or absorbing noise one step keeps a token with probability
1 - beta_t and otherwise resamples it from u (uniform over the K values, or
the mask):

  q(x_t | x_{t-1}) = (1 - beta_t) [x_t = x_{t-1}] + beta_t u(x_t),
  q(x_t | x_0)     = abar_t [x_t = x_0] + (1 - abar_t) u(x_t),
  abar_t = prod_{s <= t} (1 - beta_s)  (float64 cumulative product).

Both matrices have this closed form, so nothing of size S x S is built.

Discretised-Gaussian noise (ordinal values such as pixels; Austin et al.,
appendix A.2.2) moves a value i to j != i with probability

  Q_t[i, j] = exp(-4 (i - j)^2 / ((K - 1)^2 beta_t))
              / sum_{n=-(K-1)}^{K-1} exp(-4 n^2 / ((K - 1)^2 beta_t)),

and keeps it with the rest of the row's mass. Q_t is symmetric with rows
summing to one, so it is doubly stochastic and its stationary distribution,
the prior p(x_T), is uniform. Its steps and cumulative products
Qbar_t = Q_1 ... Q_t are dense [K, K] tables, multiplied in float64 and
stored as float32 logarithms; the reverse step then materialises
[..., K, K] log-weights, which suits small K (a few to 17 grey levels;
256 levels on large images would need a chunked version). Binary data
(K = 2) is rejected: its one move spans the whole range, with probability
about exp(-4 / beta_t) <= 0.018 per step, so the chain never nears its
uniform prior (prior KL about log 2 per dimension); use uniform noise.
Multinomial diffusion (Hoogeboom et al., 2021) is exactly the uniform case
with the cosine schedule, the "soft_x0" reverse step and no auxiliary loss;
absorbing D3PM with abar_t = alpha(t/T) is MD4's discrete-time ELBO (tests
show both).

The denoiser predicts p~(x_0 | x_t) over the K values (the mask gets no
probability). `parameterization` chooses how the reverse step uses it:

  "soft_x0" (default; Austin et al. Eq. 4, Hoogeboom et al.'s posterior):
    p(x_{t-1} | x_t) propto q(x_t | x_{t-1}) sum_k p~(k | x_t)
    q(x_{t-1} | x_0 = k), the true posterior's formula with p~ as a soft x_0.
  "posterior_mixture": p(x_{t-1} | x_t) = sum_k q(x_{t-1} | x_t, x_0 = k)
    p~(k | x_t) over the k that could have produced x_t, which weighs each k
    by 1 / q(x_t | k) relative to "soft_x0".

Both reach the same best reverse step (the model class is the same), but
p~ means something else: under "posterior_mixture" the bound's optimum is
p~ = q(x_0 | x_t), the optimum of the hybrid CE term too; under "soft_x0" it
is q(x_0 | x_t) / q(x_t | x_0) renormalised, so the CE term pulls p~ away
from the bound's optimum (Austin et al. train this way). Checkpoints and
hybrid_coeff values do not transfer between the two. Absorbing transitions
give the same step under both (q(x_t | k) is the same for every consistent k).
At t = 1 each is its general form with Qbar_0 = I: "soft_x0" gives
p~(x_0) q(x_1 | x_0) renormalised, as Hoogeboom et al.'s code does (Austin
et al.'s code uses p~ itself at t = 1); "posterior_mixture" gives p~ over
the consistent x_0.

The negative ELBO is

  prior KL(q(x_T | x_0) || p(x_T)) + sum_{t=2}^T KL(q(x_{t-1}|x_t,x_0) ||
  p(x_{t-1}|x_t)) - log p(x_0 | x_1),

estimated with one uniformly drawn t per example (times T). The prior KL is
finite only where p(x_T) covers q(x_T | x_0): absorbing noise needs a
schedule that ends with abar_T = 0 (jsd, cosine). All computation
is in log space.
"""

import dataclasses
import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from md4 import fields
from md4.diffusion import chunked_logits
from md4.diffusion import common
from md4.diffusion import process as process_lib

TRANSITIONS = ("uniform", "absorbing", "gaussian")
# How the reverse step uses p~(x_0 | x_t); the module docstring says why two.
PARAMETERIZATIONS = ("soft_x0", "posterior_mixture")
SCHEDULES = ("linear", "cosine", "jsd")
_NEG_INF = -jnp.inf


def betas(schedule: str, num_steps: int) -> np.ndarray:
  """beta_1..beta_T in float64, as Austin et al.'s D3PM code defines them.

  linear: linspace(1e-4, 0.02, T), DDPM's range as given at every T (Austin
    et al. pair it with Gaussian transitions). At T = 1000 abar_T ~ 4e-5;
    at T = 200 abar_T ~ 0.13, so the chain stops short of its prior and the
    bound's prior term says how far.
  cosine: abar(t) = cos(pi/2 (t/T + s)/(1 + s)) / cos(pi/2 s/(1 + s)),
    s = 0.008, not squared: the schedule Hoogeboom et al.'s multinomial code
    uses (the square root of Nichol & Dhariwal's Gaussian cos^2 curve) and
    Austin et al.'s `cosine`. Betas are clipped at 0.999 as in Austin et
    al.'s code, except the last, which is 1 (theirs: 0.999) so the chain
    reaches its prior exactly.
  jsd: 1 / (T - t + 1), which makes abar_t = 1 - t/T (Austin et al.'s
    absorbing schedule).
  """
  t = np.arange(1, num_steps + 1, dtype=np.float64)
  if schedule == "linear":
    return np.linspace(1e-4, 0.02, num_steps)
  if schedule == "cosine":
    s = 0.008
    f = lambda u: np.cos((u / num_steps + s) / (1 + s) * np.pi / 2)
    abar = f(np.concatenate([[0.0], t])) / f(0.0)
    b = np.clip(1.0 - abar[1:] / abar[:-1], 0.0, 0.999)
    b[-1] = 1.0
    return b
  if schedule == "jsd":
    return 1.0 / (num_steps - t + 1.0)
  raise ValueError(
      f"config.model.d3pm.schedule={schedule!r} is not a D3PM "
      f"schedule; valid: {', '.join(SCHEDULES)}."
  )


def gaussian_log_step(beta: float, vocab_size: int) -> np.ndarray:
  """log Q[i, j] of one discretised-Gaussian step, float64 [K, K].

  The off-diagonal entries are the band's normalised weights in log space
  (no exp-then-log underflow); the diagonal takes the rest of the row.
  """
  k = vocab_size
  n = np.arange(-(k - 1), k, dtype=np.float64)
  logits = -4.0 * n**2 / ((k - 1) ** 2 * beta)  # Max 0 at n = 0.
  log_band = logits - np.log(np.exp(logits).sum())  # [2K - 1]
  i = np.arange(k)
  log_q = log_band[k - 1 + np.abs(i[:, None] - i[None, :])]  # [K, K]
  off = np.exp(log_q)
  np.fill_diagonal(off, 0.0)
  np.fill_diagonal(log_q, np.log1p(-off.sum(1)))
  return log_q


@functools.lru_cache(maxsize=8)
def gaussian_log_tables(vocab_size: int, num_steps: int, schedule: str):
  """log Q_t and log Qbar_t for t = 0..T, float64 [T + 1, K, K] each.

  Q_0 = Qbar_0 = I. The cumulative products are taken in float64; entries
  below float64's range become exact zeros (-inf logarithms).
  """
  eye = np.eye(vocab_size)
  with np.errstate(divide="ignore"):
    log_eye = np.log(eye)
  steps, cumulative = [log_eye], [log_eye]
  total = eye
  for beta in betas(schedule, num_steps):
    log_q = gaussian_log_step(beta, vocab_size)
    total = total @ np.exp(log_q)
    steps.append(log_q)
    with np.errstate(divide="ignore"):
      cumulative.append(np.log(total))
  return np.stack(steps), np.stack(cumulative)


@dataclasses.dataclass(frozen=True)
class D3PM:
  """A D3PM forward process: transition kind, size and schedule.

  Attributes:
    transition: "uniform", "absorbing" or "gaussian".
    vocab_size: K data values; the mask id is K (absorbing only).
    num_steps: T.
    schedule: "linear", "cosine" or "jsd".
    parameterization: how the reverse step uses the denoiser's p~(x_0 | x_t),
      "soft_x0" (the papers') or "posterior_mixture" (module docstring).
  """

  transition: str
  vocab_size: int
  num_steps: int
  schedule: str
  parameterization: str = "soft_x0"

  def __post_init__(self):
    if self.transition not in TRANSITIONS:
      raise ValueError(
          f"config.model.d3pm.transition={self.transition!r}; valid: "
          f"{', '.join(TRANSITIONS)}."
      )
    if self.num_steps < 1:
      raise ValueError(
          "config.model.d3pm.num_steps must be >= 1 for D3PM, got "
          f"{self.num_steps}."
      )
    if self.parameterization not in PARAMETERIZATIONS:
      raise ValueError(
          f"config.model.d3pm.parameterization={self.parameterization!r}; "
          f"valid: {', '.join(PARAMETERIZATIONS)}."
      )
    abar_last = np.prod(1.0 - betas(self.schedule, self.num_steps))
    if self.transition == "absorbing" and abar_last > 0:
      raise ValueError(
          f"config.model.d3pm.schedule={self.schedule!r} with "
          "config.model.d3pm.transition='absorbing' keeps abar_T = "
          f"{abar_last:.1e} of the tokens unmasked at T = {self.num_steps}, "
          "but the prior p(x_T) is all masks, so the prior KL is infinite; "
          "set config.model.d3pm.schedule='jsd' (1/(T-t+1), Austin et al.'s "
          "absorbing schedule) or 'cosine', which mask every token at T."
      )
    if self.transition == "gaussian" and self.vocab_size < 3:
      raise ValueError(
          "config.model.d3pm.transition='gaussian' needs"
          f" config.data.vocab_size >= 3 ordinal values, got {self.vocab_size}:"
          " with two values its one move spans the whole range (probability <="
          " 0.018 per step), so the chain never reaches its uniform prior"
          " (prior KL about log 2 nats per dimension). For binary data set"
          " config.model.d3pm.transition='uniform'."
      )

  # ------------------------------------------------------ the schedule --

  @property
  def mask_id(self) -> int:
    return common.mask_token(self.vocab_size)

  @property
  def num_states(self) -> int:
    return self.vocab_size + (self.transition == "absorbing")

  def log_tables(self):
    """float32 tables indexed by t = 0..T of log(1-beta), log beta,
    log abar, log(1-abar), computed from float64 products."""
    b = np.concatenate([[0.0], betas(self.schedule, self.num_steps)])
    abar = np.cumprod(1.0 - b)  # abar_0 = 1
    with np.errstate(divide="ignore"):
      tables = [np.log1p(-b), np.log(b), np.log(abar), np.log1p(-abar)]
    return [jnp.asarray(x, jnp.float32) for x in tables]

  def gaussian_tables(self):
    """float32 log Q_t and log Qbar_t, [T + 1, K, K] each (Gaussian only)."""
    steps, cumulative = gaussian_log_tables(
        self.vocab_size, self.num_steps, self.schedule
    )
    return (
        jnp.asarray(steps, jnp.float32),
        jnp.asarray(cumulative, jnp.float32),
    )

  def _noise_log_prob(self, j):
    """log u(j) for state ids j (any shape); for Gaussian noise the uniform
    stationary distribution (the prior)."""
    if self.transition in ("uniform", "gaussian"):
      return jnp.full(j.shape, -math.log(self.vocab_size))
    return jnp.where(j == self.mask_id, 0.0, _NEG_INF)

  def _mix(self, log_keep, log_noise, same, j):
    """log(keep [same] + noise u(j)) elementwise, -inf safe."""
    noise = log_noise + self._noise_log_prob(j)
    return jnp.where(same, jnp.logaddexp(log_keep, noise), noise)

  # -------------------------------------------------- forward process --

  def log_q_marginal(self, x0, t):
    """log q(x_t = j | x_0) for every state j: [B, ..., S]."""
    if self.transition == "gaussian":
      _, log_cum = self.gaussian_tables()
      return log_cum[common.broadcast_to_data(t, x0), x0]  # [B, ..., K]
    _, _, log_abar, log_1m_abar = self.log_tables()
    t_b = common.broadcast_to_data(t, x0)[..., None]  # [B, 1.., 1]
    j = jnp.arange(self.num_states)
    return self._mix(log_abar[t_b], log_1m_abar[t_b], j == x0[..., None], j)

  def sample_marginal(self, rng, x0, t):
    """x_t ~ q(x_t | x_0) for integer steps t [B]."""
    if self.transition == "gaussian":
      # The exponential race: argmax_j log q_j - log E_j, E_j ~ Exp(1).
      log_q = self.log_q_marginal(x0, t)  # [B, ..., K]
      e = -jnp.log1p(-common.uniform(rng, log_q.shape))
      e = jnp.maximum(e, np.finfo(np.float32).tiny)
      return jnp.argmax(log_q - jnp.log(e), axis=-1).astype(x0.dtype)
    _, _, log_abar, _ = self.log_tables()
    keep_rng, noise_rng = jax.random.split(rng)
    keep = jnp.log(
        common.uniform(keep_rng, x0.shape)
    ) < common.broadcast_to_data(log_abar[t], x0)
    if self.transition == "uniform":
      noise = jax.random.randint(noise_rng, x0.shape, 0, self.vocab_size)
    else:
      noise = jnp.full(x0.shape, self.mask_id)
    return jnp.where(keep, x0, noise).astype(x0.dtype)

  def log_q_given_each_x0(self, x_t, t):
    """log q(x_t | x_0 = k) for every data value k: [B, ..., K]."""
    if self.transition == "gaussian":
      _, log_cum = self.gaussian_tables()
      by_column = jnp.swapaxes(log_cum, 1, 2)  # [T + 1, x_t, x_0]
      return by_column[common.broadcast_to_data(t, x_t), x_t]
    _, _, log_abar, log_1m_abar = self.log_tables()
    t_b = common.broadcast_to_data(t, x_t)[..., None]
    k = jnp.arange(self.vocab_size)
    same = k == x_t[..., None]
    if self.transition == "uniform":
      noise = log_1m_abar[t_b] - math.log(self.vocab_size)
      return jnp.where(same, jnp.logaddexp(log_abar[t_b], noise), noise)
    masked = x_t[..., None] == self.mask_id
    return jnp.where(
        masked,
        log_1m_abar[t_b] * jnp.ones_like(same, float),
        jnp.where(same, log_abar[t_b], _NEG_INF),
    )

  def log_q_step(self, x_t, t):
    """log q(x_t | x_{t-1} = j) for every state j: [B, ..., S]."""
    if self.transition == "gaussian":
      log_step, _ = self.gaussian_tables()
      by_column = jnp.swapaxes(log_step, 1, 2)  # [T + 1, x_t, x_{t-1}]
      return by_column[common.broadcast_to_data(t, x_t), x_t]
    log_1m_beta, log_beta, _, _ = self.log_tables()
    t_b = common.broadcast_to_data(t, x_t)[..., None]
    j = jnp.arange(self.num_states)
    noise = log_beta[t_b] + self._noise_log_prob(x_t[..., None])
    if self.transition == "absorbing":
      # From the mask state x_t can only be the mask.
      from_mask = jnp.where(x_t[..., None] == self.mask_id, 0.0, _NEG_INF)
      keep = jnp.where(
          j == x_t[..., None], jnp.logaddexp(log_1m_beta[t_b], noise), noise
      )
      return jnp.where(j == self.mask_id, from_mask, keep)
    return jnp.where(
        j == x_t[..., None], jnp.logaddexp(log_1m_beta[t_b], noise), noise
    )

  # ---------------------------------------------------------- posterior --

  def log_posterior(self, log_x0, x_t, t):
    """log p(x_{t-1} | x_t) from a prediction of x_0: [B, ..., S].

    `self.parameterization` picks the form (module docstring); a one-hot
    x_0 gives the true posterior q(x_{t-1} | x_t, x_0) under both.

    Args:
      log_x0: log-probabilities (or logits) over the K values [B, ..., K];
        a one-hot in log space gives the true posterior.
      x_t: states [B, ...].
      t: steps [B] in 1..T.
    """
    log_x0 = log_x0.astype(jnp.float32)
    if self.parameterization == "soft_x0":
      # q(x_t | x_{t-1}) sum_k p~(k) q(x_{t-1} | k), renormalised.
      log_w = jax.nn.log_softmax(log_x0, axis=-1)  # [B, ..., K]
    else:
      # sum_k p~(k) q(x_{t-1} | x_t, k): the same with p~(k) / q(x_t | k),
      # over the k that reach x_t.
      lq = self.log_q_given_each_x0(x_t, t)  # [B, ..., K]
      consistent = lq > _NEG_INF
      log_p0 = jax.nn.log_softmax(
          jnp.where(consistent, log_x0, _NEG_INF), axis=-1
      )
      log_w = jnp.where(consistent, log_p0 - lq, _NEG_INF)  # [B, ..., K]
    mixed = self._log_mix_marginals(log_w, t - 1)
    return jax.nn.log_softmax(self.log_q_step(x_t, t) + mixed, axis=-1)

  def _log_mix_marginals(self, log_w, s):
    """log sum_k w_k q(x_s = j | x_0 = k) for every state j: [B, ..., S].

    Args:
      log_w: log-weights over the K data values [B, ..., K].
      s: steps [B] in 0..T-1.
    """
    s_b = common.broadcast_to_data(s, log_w[..., 0])  # [B, 1..]
    if self.transition == "gaussian":
      _, log_cum = self.gaussian_tables()
      # [B, ..., K, 1] + [B, 1.., K, K], summed over x_0 = k.
      terms = log_w[..., :, None] + log_cum[s_b]
      # A state no x_0 reaches (all terms -inf; e.g. j far from x_t at small
      # s) is -inf, set outside logsumexp, whose gradient would be NaN.
      reached = (terms > _NEG_INF).any(axis=-2)  # [B, ..., K]
      terms = jnp.where(reached[..., None, :], terms, 0.0)
      return jnp.where(reached, jax.nn.logsumexp(terms, axis=-2), _NEG_INF)
    _, _, log_abar, log_1m_abar = self.log_tables()
    s_b = s_b[..., None]  # [B, 1.., 1]
    data_part = log_abar[s_b] + log_w  # j < K
    noise = log_1m_abar[s_b] + jax.nn.logsumexp(log_w, axis=-1, keepdims=True)
    if self.transition == "uniform":
      return jnp.logaddexp(data_part, noise - math.log(self.vocab_size))
    return jnp.concatenate([data_part, noise], axis=-1)


def kl(log_q, log_p):
  """KL between categoricals in log space over the last axis, -inf safe."""
  q = jnp.exp(log_q)
  return jnp.where(q > 0, q * (log_q - log_p), 0.0).sum(-1)


def _sum_data(v):
  return v.reshape(v.shape[0], -1).sum(-1)


def prior_loss(process: D3PM, x0):
  """KL(q(x_T | x_0) || p(x_T)) per example; p is u at every position
  (uniform for Gaussian noise, its stationary distribution)."""
  t_last = jnp.full((x0.shape[0],), process.num_steps, jnp.int32)
  log_q = process.log_q_marginal(x0, t_last)
  j = jnp.arange(process.num_states)
  log_prior = jnp.broadcast_to(process._noise_log_prob(j), log_q.shape)  # pylint: disable=protected-access
  return _sum_data(kl(log_q, log_prior))


def step_loss(process: D3PM, x0, x_t, t, logits):
  """L_{t-1} per example: the step's KL, or -log p(x0 | x1) at t = 1."""
  one_hot_log = jnp.where(
      jnp.arange(process.vocab_size) == x0[..., None], 0.0, _NEG_INF
  )
  log_q = process.log_posterior(one_hot_log, x_t, t)  # [B, ..., S]
  log_p = process.log_posterior(logits, x_t, t)  # [B, ..., S]
  step_kl = kl(log_q, log_p)
  recon = -jnp.take_along_axis(log_p, x0[..., None], axis=-1)[..., 0]
  first = common.broadcast_to_data(t == 1, x0)
  return _sum_data(jnp.where(first, recon, step_kl))


def nelbo(
    rng,
    x,
    denoise,
    process: D3PM,
    *,
    hybrid_coeff: float = 0.0,
    label=None,
    antithetic: bool = True,
    t=None,
):
  """One-sample D3PM negative ELBO and the hybrid objective, per example.

  Args:
    rng: PRNG key, or one key per example [B] (then `t` must be given).
    x: int tokens [B, *data_shape] in [0, K).
    denoise: `logits = denoise(x_t, t / T, label)` over K values.
    process: the forward process.
    hybrid_coeff: lambda of the auxiliary -log p~(x0 | x_t) term (its
      optimum is the bound's only under "posterior_mixture"; see the module
      docstring).
    label: optional int [B].
    antithetic: stratify the B step draws.
    t: optional continuous times [B] in [0, 1), mapped to steps 1..T.

  Returns:
    (terms, scalars): per-example nats: `loss` (the training objective,
    T (L_{t-1} + lambda CE) + prior), `loss_nelbo` (the bound),
    `loss_diff` (T L_{t-1}), `loss_prior`, `loss_ce`.
  """
  t_rng, z_rng = common.time_and_mask_rngs(rng, t)
  if t is None:
    t = common.sample_times(t_rng, x.shape[0], antithetic)
  steps = jnp.clip(
      jnp.floor(t * process.num_steps).astype(jnp.int32) + 1,
      1,
      process.num_steps,
  )  # [B] in 1..T
  if z_rng.ndim:  # Per-example keys: one noise key each.
    x_t = jax.vmap(
        lambda k, xi, ti: process.sample_marginal(k, xi[None], ti[None])[0]
    )(z_rng, x, steps)
  else:
    x_t = process.sample_marginal(z_rng, x, steps)
  logits = denoise(x_t, steps.astype(jnp.float32) / process.num_steps, label)
  num_steps = process.num_steps
  loss_diff = num_steps * step_loss(process, x, x_t, steps, logits)
  loss_ce = -_sum_data(chunked_logits.target_log_prob(logits, x))
  loss_prior = prior_loss(process, x)
  loss_nelbo = loss_diff + loss_prior
  terms = {
      "loss": loss_nelbo + hybrid_coeff * num_steps * loss_ce,
      "loss_nelbo": loss_nelbo,
      "loss_diff": loss_diff,
      "loss_prior": loss_prior,
      "loss_ce": loss_ce,
  }
  return terms, {}


@dataclasses.dataclass(frozen=True)
class D3PMProcess(process_lib.Process):
  """D3PM and multinomial diffusion as a process (this module).

  Attributes:
    transition: uniform, absorbing or gaussian.
    schedule: the beta schedule, linear, cosine or jsd.
    num_steps: T.
    hybrid_coeff: lambda of the auxiliary cross-entropy.
    parameterization: the reverse step, soft_x0 or posterior_mixture.
  """

  transition: str = "uniform"
  schedule: str = "linear"
  num_steps: int = 1000
  hybrid_coeff: float = 0.0
  parameterization: str = "soft_x0"

  name: ClassVar[str] = "d3pm"
  summary: ClassVar[str] = (
      "D3PM (Austin et al., 2021) uniform, absorbing, "
      "Gaussian; multinomial diffusion"
  )
  FIELDS: ClassVar[tuple[fields.Field, ...]] = (
      fields.Field(
          "model.d3pm.transition",
          "uniform",
          "Noise: uniform (multinomial diffusion), absorbing "
          "(masking) or gaussian (ordinal values).",
          choices=TRANSITIONS,
      ),
      fields.Field(
          "model.d3pm.schedule",
          "linear",
          "beta_t: linear, cosine, or jsd (1/(T-t+1)).",
          choices=SCHEDULES,
      ),
      fields.Field(
          "model.d3pm.num_steps", 1000, "T, the chain's steps.", low=1
      ),
      fields.Field(
          "model.d3pm.hybrid_coeff",
          0.0,
          "lambda of the auxiliary cross-entropy loss.",
          low=0.0,
      ),
      fields.Field(
          "model.d3pm.parameterization",
          "soft_x0",
          "Reverse step from p~(x_0 | x_t): soft_x0 (the papers') "
          "or posterior_mixture (module docstring); checkpoints do "
          "not transfer between them.",
          choices=PARAMETERIZATIONS,
      ),
  )
  capabilities: ClassVar[frozenset[str]] = frozenset(
      {process_lib.TRANSITION_CHAIN}
  )
  default_sampler: ClassVar[str] = "reverse_chain"

  @classmethod
  def legacy_names(cls) -> dict[str, str]:
    names = super().legacy_names()
    del names["parameterization"]
    return dict(names, d3pm_parameterization="parameterization")

  def __post_init__(self):
    _ = self.chain  # Checks the combination.

  @property
  def chain(self) -> D3PM:
    return D3PM(
        self.transition,
        self.vocab_size,
        self.num_steps,
        self.schedule,
        self.parameterization,
    )

  def nelbo(self, params, rng, x, denoise, *, label, antithetic, t):
    del params
    return nelbo(
        rng,
        x,
        denoise,
        self.chain,
        hybrid_coeff=self.hybrid_coeff,
        label=label,
        antithetic=antithetic,
        t=t,
    )

  def prior_sample(self, rng: jax.Array, shape) -> jax.Array:
    """x_T ~ p(x_T): all masks (absorbing) or uniform values; int32."""
    if self.transition == "absorbing":
      return jnp.full(shape, self.mask_id, jnp.int32)
    return jax.random.randint(rng, shape, 0, self.vocab_size)

  def log_posterior(self, logits, z, step):
    """log p(x_{t-1} | x_t = z) over states [B, ..., S] at steps [B]."""
    return self.chain.log_posterior(logits, z, step)
