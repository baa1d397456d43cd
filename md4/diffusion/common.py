"""What every process shares: tokens, time draws, per-example noise, labels.

Time draws u ~ U[0, 1) (stratified within a batch when antithetic); each
process maps them onto its own times. Noise can come from one key or one
key per example, so splitting a batch into micro-batches never changes an
example's noise. `masked_cross_entropy` is the loss term of every masking
process; `reveal_probability` is the MD4 reverse step's one formula, used by
the bound and by the samplers.
"""

from collections.abc import Callable, Mapping
import math

import jax
import jax.numpy as jnp

from md4.diffusion import chunked_logits

# `logits = denoise(z_t, t, label)`: logits [B, *data_shape, V], or
# `chunked_logits.FactoredLogits` where the loss asked for them.
Denoiser = Callable[
    [jax.Array, jax.Array, jax.Array | None],
    jax.Array | chunked_logits.FactoredLogits,
]


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
        f"{tuple(data_shape)}; set data_shape to the data set's example shape."
    )
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"data batch must hold integer tokens, got {x.dtype}.")
  if isinstance(x, jax.core.Tracer):
    return
  low, high = int(x.min()), int(x.max())
  if low < 0 or high >= vocab_size:
    raise ValueError(
        f"data batch has tokens in [{low}, {high}] but config.data.vocab_size "
        f"is {vocab_size}; tokens must lie in [0, {vocab_size - 1}] (the id "
        f"{vocab_size} is the mask token). Raise vocab_size or fix the data."
    )


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


def sample_times(
    rng: jax.Array,
    batch_size: int,
    antithetic: bool = True,
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


def forward_sample(
    rng: jax.Array, x: jax.Array, alpha_t: jax.Array, mask_id: int
) -> jax.Array:
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


def time_and_mask_rngs(rng, t):
  """Splits one key into (time, mask) keys; per-example keys need given t."""
  if rng.ndim == 0:
    return jax.random.split(rng)
  if t is None:
    raise ValueError("per-example keys need the times t to be given")
  return None, rng


def broadcast_to_data(v: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example [B] values to [B, 1, ..., 1] matching x's rank."""
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def masked_cross_entropy(
    x: jax.Array,
    z_t: jax.Array,
    logits: jax.Array | chunked_logits.FactoredLogits,
    mask_id: int,
) -> jax.Array:
  """sum over masked positions of -log mu[x]; per example [B]."""
  masked = z_t == mask_id
  logp = chunked_logits.target_log_prob(logits, x, masked)  # [B, ...]
  per_token = jnp.where(masked, -logp, 0.0)
  return per_token.reshape(per_token.shape[0], -1).sum(axis=-1)


def reveal_probability(alpha_s: jax.Array, alpha_t: jax.Array) -> jax.Array:
  """(alpha(s) - alpha(t)) / (1 - alpha(t)): P(a token masked at t is
  revealed by s < t), the weight of the MD4 reverse step and of its T-step
  bound (Shi et al., 2024, Eq. 6)."""
  return (alpha_s - alpha_t) / (1.0 - alpha_t)


def drop_labels(
    rng: jax.Array, label: jax.Array, drop_prob: float, num_classes: int
) -> jax.Array:
  """Replaces each label by the "no label" id `num_classes` w.p. drop_prob.

  Training with dropped labels lets one network serve as both the
  conditional and the unconditional model for classifier-free guidance.
  """
  if drop_prob <= 0.0:
    return label
  drop = jax.random.bernoulli(rng, drop_prob, label.shape)
  return jnp.where(drop, num_classes, label)


def summarize(
    terms: Mapping[str, jax.Array],
    num_elements: int,
    weight: jax.Array | None = None,
) -> dict[str, jax.Array]:
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
