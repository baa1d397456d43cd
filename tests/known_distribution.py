"""A small known distribution and its exact posterior denoiser (the oracle).

Sequences of length L over V symbols drawn from a Markov chain; with V**L
states every probability and every posterior is computed by enumeration.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

VOCAB = 3
LENGTH = 5
INITIAL = np.array([0.6, 0.3, 0.1])
TRANSITION = np.array(
    [[0.70, 0.20, 0.10], [0.15, 0.05, 0.80], [0.30, 0.60, 0.10]]
)


def all_states() -> np.ndarray:
  """Every sequence, [V**L, L] int32."""
  return np.array(
      list(itertools.product(range(VOCAB), repeat=LENGTH)), np.int32
  )


def log_probs(states: np.ndarray) -> np.ndarray:
  """Exact log p(x) for each row of states, float64."""
  lp = np.log(INITIAL[states[:, 0]])
  for i in range(1, states.shape[1]):
    lp = lp + np.log(TRANSITION[states[:, i - 1], states[:, i]])
  return lp


def entropy() -> float:
  lp = log_probs(all_states())
  return float(-(np.exp(lp) * lp).sum())


def sample(rng: np.random.Generator, n: int) -> np.ndarray:
  states = all_states()
  p = np.exp(log_probs(states))
  return states[rng.choice(len(states), size=n, p=p / p.sum())]


def oracle(alpha_tokens):
  """The exact posterior denoiser for the masked forward process.

  Args:
    alpha_tokens: `alpha = alpha_tokens(values, t)`: the keep probability of
      tokens with the given values [..., L] at times t broadcast to [..., L].
      State-independent schedules ignore the values.

  Returns:
    `logits = denoise(z_t, t, label)` with logits [B, L, V] equal to the log
    of p(x_i = v | z_t): the posterior over every sequence x given the
    masked observation, marginalised per position.
  """
  states = jnp.asarray(all_states())  # [S, L]
  log_p = jnp.asarray(log_probs(all_states()), jnp.float32)  # [S]
  mask_id = VOCAB

  def denoise(z, t, label=None):
    del label
    t_s = t[:, None, None]  # [B, 1, 1]
    keep = alpha_tokens(states[None], t_s)  # [B, S, L]
    keep = jnp.broadcast_to(keep, (z.shape[0],) + states.shape)
    masked = z[:, None, :] == mask_id  # [B, 1, L]
    agrees = z[:, None, :] == states[None]  # [B, S, L]
    log_obs = jnp.where(
        masked, jnp.log1p(-keep), jnp.where(agrees, jnp.log(keep), -jnp.inf)
    )
    log_post = log_p[None] + log_obs.sum(-1)  # [B, S]
    post = jax.nn.softmax(log_post, axis=-1)  # [B, S]
    one_hot_states = jax.nn.one_hot(states, VOCAB)  # [S, L, V], tiny
    marginal = jnp.einsum("bs,slv->blv", post, one_hot_states)  # [B, L, V]
    return jnp.log(jnp.maximum(marginal, 1e-30))

  return denoise


def mask_patterns() -> np.ndarray:
  """Every subset of masked positions, bool [2**L, L]."""
  return np.array(list(itertools.product([False, True], repeat=LENGTH)))


def neg_log_prob(x: np.ndarray) -> float:
  return float(-log_probs(x[None])[0])


def gauss_legendre(a: float, b: float, n: int):
  nodes, weights = np.polynomial.legendre.leggauss(n)
  return (0.5 * (b - a) * nodes + 0.5 * (b + a), 0.5 * (b - a) * weights)


LN2 = math.log(2.0)
