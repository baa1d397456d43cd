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

All functions are pure functions of arrays; the denoiser is any callable
`logits = denoise(z_t, t, label)` returning float logits [B, *data_shape, V],
or a `FactoredLogits` (the output head's input and weights, from which the
cross-entropy forms the logits a chunk of positions at a time: the [B, N, V]
logits and their gradient are never held at once).
"""

from collections.abc import Callable, Mapping
import dataclasses
import math

import jax
import jax.numpy as jnp

from md4.diffusion import schedules

Denoiser = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


def mask_token(vocab_size: int) -> int:
  """The id of the mask token: one past the last data value."""
  return vocab_size


def check_tokens(x, vocab_size: int, data_shape) -> None:
  """Raises ValueError for a batch that cannot be data for this model.

  Shape and dtype are always checked; values (every token in [0, V)) are
  checked when x is concrete (a host batch), not while tracing.
  """
  if tuple(x.shape[1:]) != tuple(data_shape):
    raise ValueError(
        f"data batch has shape {tuple(x.shape)} but config.data.data_shape is "
        f"{tuple(data_shape)}; set data_shape to the data set's example shape.")
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"data batch must hold integer tokens, got {x.dtype}.")
  if isinstance(x, jax.core.Tracer):
    return
  low, high = int(x.min()), int(x.max())
  if low < 0 or high >= vocab_size:
    raise ValueError(
        f"data batch has tokens in [{low}, {high}] but config.data.vocab_size "
        f"is {vocab_size}; tokens must lie in [0, {vocab_size - 1}] (the id "
        f"{vocab_size} is the mask token). Raise vocab_size or fix the data.")


def antithetic_draws(u: jax.Array, batch_size: int) -> jax.Array:
  """(u + b / B) mod 1 for b = 0..B-1: B draws in [0, 1) from one offset.

  For a float32 offset u in [0, 1) every draw is in [0, 1): a sum that
  rounds up to 1 wraps to exactly 0, never to 1.

  Args:
    u: a scalar offset in [0, 1).
    batch_size: B.

  Returns:
    float32 draws [B], stratified: one in each interval [b / B, (b + 1) / B)
    up to rounding.
  """
  return jnp.mod(u + jnp.arange(batch_size) / batch_size, 1.0)


def sample_times(rng: jax.Array, batch_size: int, antithetic: bool = True,
                 ) -> jax.Array:
  """Draws u ~ U[0, 1) per example; antithetic = stratified, one offset.

  These are draws, not yet times: each process maps them onto the interval
  its time integral covers (MD4 `time_of_draw`, GenMD4 [t1, 1], D3PM the
  steps 1..T). Antithetic sampling u_b = (u + b / B) mod 1 covers [0, 1)
  evenly within a batch, which lowers the variance of the Monte-Carlo time
  integral.
  """
  if antithetic:
    return antithetic_draws(jax.random.uniform(rng, ()), batch_size)
  return jax.random.uniform(rng, (batch_size,))


def time_of_draw(u: jax.Array) -> jax.Array:
  """The continuous time t = 1 - u in (0, 1] of a draw u in [0, 1).

  U[0, 1) maps onto U(0, 1], so the Monte-Carlo estimate of the integral
  over (0, 1] stays unbiased, and t is never 0, where the weight
  -alpha'(t) / (1 - alpha(t)) of polyK with K < 1 is infinite. In float32
  the smallest time is 1 - (1 - 2**-24) = 2**-24 (the largest float32 below
  1 is 1 - 2**-24), where every schedule's weight is finite.
  """
  return 1.0 - u


def discretize_times(t: jax.Array, num_steps: int):
  """Maps t in [0, 1) to the T-step grid: returns (s, t) = ((i-1)/T, i/T)."""
  i = jnp.floor(t * num_steps) + 1.0
  i = jnp.clip(i, 1.0, num_steps)
  return (i - 1.0) / num_steps, i / num_steps


def uniform(rng: jax.Array, shape) -> jax.Array:
  """U[0, 1) draws of `shape` from one key, or from one key per example.

  With per-example keys (a [B] array of typed keys) each example's draws
  depend only on its own key, so splitting a batch into micro-batches does
  not change any example's noise.
  """
  if rng.ndim == 0:
    return jax.random.uniform(rng, shape)
  return jax.vmap(lambda k: jax.random.uniform(k, shape[1:]))(rng)


def forward_sample(rng: jax.Array, x: jax.Array, alpha_t: jax.Array,
                   mask_id: int) -> jax.Array:
  """Draws z_t ~ q(z_t | x): each token kept with probability alpha_t.

  Args:
    rng: a PRNG key, or one key per example [B].
    x: int tokens [B, ...].
    alpha_t: keep probability, broadcastable to x (e.g. [B, 1, ...]).
    mask_id: the mask token.

  Returns:
    z_t: int tokens [B, ...], same dtype as x.
  """
  keep = uniform(rng, x.shape) < alpha_t
  return jnp.where(keep, x, jnp.asarray(mask_id, x.dtype))


@dataclasses.dataclass(frozen=True)
class FactoredLogits:
  """Logits not yet formed: (features @ kernel + bias) cast to float32.

  A denoiser whose last layer is a dense projection to V values can return
  this instead of its logits [B, *data_shape, V]; `target_log_prob` then
  forms the logits of `chunk` positions (B x chunk rows) at a time, in the
  forward and again in the backward pass, so that neither the full logits
  nor their gradient is live at once. The math is that of the dense layer
  followed by a float32 log-softmax.

  Attributes:
    features: [B, *data_shape, D], the output layer's input (compute dtype).
    kernel: [D, V] in the compute dtype.
    bias: [V] in the compute dtype.
    chunk: positions per chunk (> 0); the last chunk is padded.
  """
  features: jax.Array
  kernel: jax.Array
  bias: jax.Array
  chunk: int

  def __post_init__(self):
    if self.chunk <= 0:
      raise ValueError(f"FactoredLogits.chunk must be > 0, got {self.chunk}.")


def _dense_logits(features, kernel, bias):
  """features [..., D] @ kernel [D, V] + bias, as a dense layer, in float32."""
  return (jnp.dot(features, kernel) + bias).astype(jnp.float32)  # [..., V]


def _chunk_forward(kernel, bias, f, x):
  """One chunk's log softmax[x] and logsumexp: f [R, D], x [R] -> [R], [R]."""
  logits = _dense_logits(f, kernel, bias)  # [R, V]
  lse = jax.nn.logsumexp(logits, axis=-1)  # [R]
  picked = jnp.take_along_axis(logits, x[:, None], axis=-1)[:, 0]  # [R]
  return picked - lse, lse


@jax.custom_vjp
def _chunked_log_prob(features, kernel, bias, x):
  """log softmax(features @ kernel + bias)[x] chunk by chunk.

  Args:
    features: [C, R, D], C chunks of R rows.
    kernel: [D, V].
    bias: [V].
    x: int32 targets [C, R].

  Returns:
    float32 [C, R].
  """
  return _chunked_log_prob_fwd(features, kernel, bias, x)[0]


def _chunked_log_prob_fwd(features, kernel, bias, x):
  logp, lse = jax.lax.map(
      lambda fx: _chunk_forward(kernel, bias, *fx), (features, x))  # [C, R]
  return logp, (features, kernel, bias, x, lse)


def _chunked_log_prob_bwd(residuals, g):
  """Re-forms each chunk's logits; d logp[x] / d logits = onehot(x) - p."""
  features, kernel, bias, x, lse = residuals
  vocab = kernel.shape[-1]

  def chunk_grads(acc, inputs):
    f, xc, lse_c, g_c = inputs  # [R, D], [R], [R], [R]
    logits = _dense_logits(f, kernel, bias)  # [R, V]
    p = jnp.exp(logits - lse_c[:, None])  # [R, V]
    target = jnp.arange(vocab)[None, :] == xc[:, None]  # [R, V]
    d_logits = (g_c[:, None] * (target.astype(jnp.float32) - p)).astype(
        f.dtype)  # [R, V]
    d_f = jnp.dot(d_logits, kernel.T)  # [R, D]
    d_kernel, d_bias = acc
    d_kernel += jnp.dot(f.T, d_logits, preferred_element_type=jnp.float32)
    d_bias += d_logits.astype(jnp.float32).sum(axis=0)
    return (d_kernel, d_bias), d_f

  zeros = (jnp.zeros(kernel.shape, jnp.float32),
           jnp.zeros(bias.shape, jnp.float32))
  (d_kernel, d_bias), d_features = jax.lax.scan(
      chunk_grads, zeros, (features, x, lse, g))  # d_features: [C, R, D]
  return (d_features, d_kernel.astype(kernel.dtype), d_bias.astype(bias.dtype),
          None)


_chunked_log_prob.defvjp(_chunked_log_prob_fwd, _chunked_log_prob_bwd)


def factored_target_log_prob(logits: FactoredLogits, x: jax.Array,
                             ) -> jax.Array:
  """log softmax(logits)[x] in float32, forming B x chunk rows at a time.

  Args:
    logits: the factors; features [B, *data_shape, D].
    x: int targets [B, *data_shape].

  Returns:
    float32 [B, *data_shape].
  """
  f = logits.features
  batch, dim = f.shape[0], f.shape[-1]
  num_positions = math.prod(f.shape[1:-1])
  chunk = min(logits.chunk, num_positions)
  num_chunks = -(-num_positions // chunk)
  pad = num_chunks * chunk - num_positions
  # Chunks run along the positions, so a batch-sharded mesh stays sharded.
  f = jnp.pad(f.reshape(batch, num_positions, dim), ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(x.reshape(batch, num_positions).astype(jnp.int32),
                    ((0, 0), (0, pad)))
  f = f.reshape(batch, num_chunks, chunk, dim).swapaxes(0, 1)  # [C, B, c, D]
  targets = targets.reshape(batch, num_chunks, chunk).swapaxes(0, 1)
  logp = _chunked_log_prob(
      f.reshape(num_chunks, batch * chunk, dim), logits.kernel, logits.bias,
      targets.reshape(num_chunks, batch * chunk))  # [C, B * c]
  logp = logp.reshape(num_chunks, batch, chunk).swapaxes(0, 1)  # [B, C, c]
  logp = logp.reshape(batch, num_chunks * chunk)[:, :num_positions]
  return logp.reshape(x.shape)  # [B, *data_shape]


def target_log_prob(logits: jax.Array | FactoredLogits, x: jax.Array,
                    ) -> jax.Array:
  """log softmax(logits)[x] in float32, without a [..., V] one-hot.

  Args:
    logits: [..., V] any float dtype, or `FactoredLogits` (formed in chunks).
    x: int targets [...], values in [0, V).

  Returns:
    float32 [...].
  """
  if isinstance(logits, FactoredLogits):
    return factored_target_log_prob(logits, x)
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [...]
  picked = jnp.take_along_axis(logits, x[..., None].astype(jnp.int32),
                               axis=-1)[..., 0]  # [...]
  return picked - lse


def broadcast_to_data(v: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example [B] values to [B, 1, ..., 1] matching x's rank."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def masked_cross_entropy(x: jax.Array, z_t: jax.Array, logits: jax.Array,
                         mask_id: int) -> jax.Array:
  """sum over masked positions of -log mu[x]; per example [B]."""
  logp = target_log_prob(logits, x)  # [B, ...]
  masked = (z_t == mask_id)
  per_token = jnp.where(masked, -logp, 0.0)
  return per_token.reshape(per_token.shape[0], -1).sum(axis=-1)


def prior_loss(schedule: schedules.MaskingSchedule, num_elements: int,
               vocab_size: int) -> jax.Array:
  """KL(q(z_1|x) || p(z_1)) = N alpha(1) log V, the same for every x."""
  return num_elements * schedule.alpha(jnp.float32(1.0)) * math.log(vocab_size)


def recon_loss(schedule: schedules.MaskingSchedule, num_elements: int,
               vocab_size: int) -> jax.Array:
  """-E log p(x | z_0) with a uniform decoder: N (1 - alpha(0)) log V."""
  return (num_elements * (1.0 - schedule.alpha(jnp.float32(0.0)))
          * math.log(vocab_size))


def diffusion_weight(schedule: schedules.MaskingSchedule, u: jax.Array,
                     num_steps: int):
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
    t = time_of_draw(u)
    return -schedule.loss_weight(t), t
  s, t_i = discretize_times(u, num_steps)
  alpha_s, alpha_t = schedule.alpha(s), schedule.alpha(t_i)
  return num_steps * (alpha_s - alpha_t) / (1.0 - alpha_t), t_i


def nelbo(rng: jax.Array, x: jax.Array, denoise: Denoiser,
          schedule: schedules.MaskingSchedule, *, vocab_size: int,
          label: jax.Array | None = None, num_steps: int = 0,
          antithetic: bool = True, t: jax.Array | None = None,
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

  Returns:
    Per-example nats [B]: `loss` = `loss_diff` + `loss_recon` + `loss_prior`.
  """
  mask_id = mask_token(vocab_size)
  batch_size = x.shape[0]
  num_elements = math.prod(x.shape[1:])
  t_rng, z_rng = time_and_mask_rngs(rng, t)
  if t is None:
    t = sample_times(t_rng, batch_size, antithetic)  # [B] draws in [0, 1)
  weight, t_query = diffusion_weight(schedule, t, num_steps)  # [B], [B]
  alpha_t = broadcast_to_data(schedule.alpha(t_query), x)  # [B, 1, ...]
  z_t = forward_sample(z_rng, x, alpha_t, mask_id)  # [B, ...]
  logits = denoise(z_t, t_query, label)  # [B, ..., V]
  loss_diff = weight * masked_cross_entropy(x, z_t, logits, mask_id)  # [B]

  ones = jnp.ones((batch_size,), jnp.float32)
  loss_prior = prior_loss(schedule, num_elements, vocab_size) * ones
  loss_recon = recon_loss(schedule, num_elements, vocab_size) * ones
  return {
      "loss": loss_diff + loss_recon + loss_prior,
      "loss_diff": loss_diff,
      "loss_recon": loss_recon,
      "loss_prior": loss_prior,
  }


def time_and_mask_rngs(rng, t):
  """Splits one key into (time, mask) keys; per-example keys need given t."""
  if rng.ndim == 0:
    return jax.random.split(rng)
  if t is None:
    raise ValueError("per-example keys need the times t to be given")
  return None, rng


def drop_labels(rng: jax.Array, label: jax.Array, drop_prob: float,
                num_classes: int) -> jax.Array:
  """Replaces each label by the "no label" id `num_classes` w.p. drop_prob.

  Training with dropped labels lets one network serve as both the
  conditional and the unconditional model for classifier-free guidance.
  """
  if drop_prob <= 0.0:
    return label
  drop = jax.random.bernoulli(rng, drop_prob, label.shape)
  return jnp.where(drop, num_classes, label)


def summarize(terms: Mapping[str, jax.Array], num_elements: int,
              weight: jax.Array | None = None) -> dict[str, jax.Array]:
  """Weighted batch means of per-example terms, plus bits per dimension.

  Args:
    terms: per-example [B] values (nats per example).
    num_elements: tokens or sub-pixels per example.
    weight: optional [B] example weights (0 for padding).

  Returns:
    Scalars: each term's mean, and `bits_per_dim` = loss / (N ln 2) (from
    `loss_nelbo` when present, the true bound for GenMD4).
  """
  if weight is None:
    weight = jnp.ones_like(terms["loss"])
  total = jnp.maximum(weight.sum(), 1.0)
  out = {k: (v * weight).sum() / total for k, v in terms.items()}
  bound = out.get("loss_nelbo", out["loss"])
  out["bits_per_dim"] = bound / (num_elements * math.log(2.0))
  return out
