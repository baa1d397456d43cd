"""D3PM (uniform, absorbing, Gaussian) and multinomial diffusion against
brute force."""

import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import known_distribution as kd
from md4 import checkpointing
from md4 import config_recipes
from md4 import configuration
from md4 import model as model_lib
from md4 import run as run_lib
from md4 import sample as sample_command
from md4 import sample_writing
from md4 import sampling
from md4.diffusion import common
from md4.diffusion import d3pm
from md4.diffusion import masked
from md4.diffusion import schedules
from md4.sampling import core

pytestmark = pytest.mark.slow

K, T = 3, 12
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def paper_gaussian_matrix(beta, k):
  """Austin et al.'s discretised Gaussian, written out in probability space."""
  weight = lambda n: np.exp(-4.0 * n**2 / ((k - 1) ** 2 * beta))
  norm = sum(weight(n) for n in range(-(k - 1), k))
  q = np.array([[weight(i - j) / norm for j in range(k)] for i in range(k)])
  np.fill_diagonal(q, 0.0)
  np.fill_diagonal(q, 1.0 - q.sum(1))
  return q


def explicit_step_matrices(process):
  """Q_t[i, j] = q(x_t = j | x_{t-1} = i) as dense float64 matrices."""
  s = process.num_states
  if process.transition == "gaussian":
    return [
        paper_gaussian_matrix(beta, s)
        for beta in d3pm.betas(process.schedule, process.num_steps)
    ]
  u = np.zeros(s)
  if process.transition == "uniform":
    u[:] = 1.0 / process.vocab_size
  else:
    u[process.mask_id] = 1.0
  mats = []
  for beta in d3pm.betas(process.schedule, process.num_steps):
    q = (1 - beta) * np.eye(s) + beta * u[None, :]
    if process.transition == "absorbing":
      q[process.mask_id] = 0.0
      q[process.mask_id, process.mask_id] = 1.0
    mats.append(q)
  return mats


def reference_reverse_step(parameterization, step, before, p0, x_t):
  """p(x_{t-1} = j | x_t) by explicit sums over x_0 = k, float64 [S].

  Args:
    parameterization: "soft_x0" (Austin et al. Eq. 4): q(x_t | j) sum_k
      p0[k] Qbar_{t-1}[k, j], renormalised; "posterior_mixture": sum_k
      p0[k] q(j | x_t, x_0 = k) over the k that reach x_t.
    step: Q_t [S, S], rows x_{t-1}.
    before: Qbar_{t-1} [S, S], rows x_0.
    p0: the prediction over the K data values [K].
    x_t: the state.
  """
  num_states, num_values = step.shape[0], len(p0)
  out = np.zeros(num_states)
  if parameterization == "soft_x0":
    for j in range(num_states):
      out[j] = step[j, x_t] * sum(
          p0[k] * before[k, j] for k in range(num_values)
      )
    return out / out.sum()
  after = before @ step  # Qbar_t
  reach = np.array([after[k, x_t] > 0 for k in range(num_values)])
  w = p0 * reach / (p0 * reach).sum()
  for k in range(num_values):
    if reach[k]:
      # Bayes: q(x_{t-1} = j | x_t, x_0 = k) for every j.
      out += w[k] * step[:, x_t] * before[k] / after[k, x_t]
  return out


def uniform_matrices(abar_prev, abar_t, k):
  """Qbar_{t-1} and Q_t of uniform noise from two abar values [K, K]."""
  alpha = abar_t / abar_prev
  return (
      abar_prev * np.eye(k) + (1 - abar_prev) / k,
      alpha * np.eye(k) + (1 - alpha) / k,
  )


CASES = [
    ("uniform", "linear"),
    ("uniform", "cosine"),
    ("absorbing", "jsd"),
    ("absorbing", "cosine"),
    ("gaussian", "linear"),
    ("gaussian", "cosine"),
]


def reference_cosine_abar(t, num_steps, s=0.008):
  """abar_t of Hoogeboom et al.'s and Austin et al.'s cosine schedule, not
  squared: cos(pi/2 (t/T + s)/(1 + s)) / cos(pi/2 s/(1 + s))."""
  f = lambda u: math.cos((u / num_steps + s) / (1 + s) * math.pi / 2)
  return f(t) / f(0)


def test_cosine_abar_is_the_unsquared_curve_of_the_reference_code():
  process = d3pm.D3PM("uniform", K, 1000, "cosine")
  abar = np.exp(np.asarray(process.log_tables()[2], np.float64))  # [T + 1]
  # The values the issue quotes from the closed form (ours were 0.847,
  # 0.494, 0.024, 0.0002 with cos^2).
  quoted = {250: 0.920, 500: 0.703, 900: 0.155, 990: 0.0156}
  for t, value in quoted.items():
    closed = reference_cosine_abar(t, 1000)
    assert abs(closed - value) < 1e-3, (t, closed)
    assert abs(abar[t] - closed) < 1e-3, (t, abar[t], closed)
  # Every step in between too, and the last step reaches the prior.
  closed = np.array([reference_cosine_abar(t, 1000) for t in range(1000)])
  np.testing.assert_allclose(abar[:1000], closed, rtol=1e-4, atol=1e-7)
  assert abar[1000] == 0.0


def test_linear_betas_are_the_reference_range_at_every_num_steps():
  np.testing.assert_allclose(
      d3pm.betas("linear", 200), np.linspace(1e-4, 0.02, 200), rtol=0, atol=0
  )
  np.testing.assert_allclose(
      d3pm.betas("linear", 1000), np.linspace(1e-4, 0.02, 1000), rtol=0, atol=0
  )


@pytest.mark.parametrize("k", [2, 5, 17])
def test_gaussian_steps_are_symmetric_doubly_stochastic_paper_matrices(k):
  for beta in (1e-3, 0.02, 0.3, 1.0):
    q = np.exp(d3pm.gaussian_log_step(beta, k))
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-12)
    np.testing.assert_array_equal(q, q.T)
    assert q.min() >= 0.0
    np.testing.assert_allclose(
        q, paper_gaussian_matrix(beta, k), rtol=1e-9, atol=1e-300
    )
    # Ordinal: from the middle value, moving further is less likely.
    row = q[k // 2, k // 2 :]
    assert (np.diff(row[1:]) <= 0).all()


@pytest.mark.parametrize("transition,schedule", CASES)
def test_cumulative_marginals_equal_repeated_matrix_products(
    transition, schedule
):
  process = d3pm.D3PM(transition, K, T, schedule)
  cumulative = np.eye(process.num_states)
  x0 = jnp.arange(K)
  for t, q in enumerate(explicit_step_matrices(process), start=1):
    cumulative = cumulative @ q
    got = np.exp(
        np.asarray(process.log_q_marginal(x0[:, None], jnp.full((K,), t)))
    )[
        :, 0
    ]  # [K, S]
    np.testing.assert_allclose(got, cumulative[:K], atol=1e-6)


@pytest.mark.parametrize("parameterization", d3pm.PARAMETERIZATIONS)
@pytest.mark.parametrize("transition,schedule", CASES)
def test_reverse_step_equals_explicit_sums_over_x0(
    transition, schedule, parameterization
):
  process = d3pm.D3PM(transition, K, T, schedule, parameterization)
  mats = explicit_step_matrices(process)
  rng = np.random.default_rng(0)
  for t in (1, 2, 5, T):
    before = np.eye(process.num_states)
    for q in mats[: t - 1]:
      before = before @ q
    logits = rng.normal(size=K) * 2
    p0 = np.exp(logits) / np.exp(logits).sum()
    for x_t in range(process.num_states):
      if not (before @ mats[t - 1])[:K, x_t].any():
        continue
      expected = reference_reverse_step(
          parameterization, mats[t - 1], before, p0, x_t
      )
      got = np.exp(
          np.asarray(
              process.log_posterior(
                  jnp.asarray(logits, jnp.float32)[None],
                  jnp.array([x_t]),
                  jnp.array([t]),
              )
          )
      )[0]
      np.testing.assert_allclose(got, expected, atol=1e-5)
      # A one-hot x_0 gives the true posterior under both forms.
      for x0 in range(K):
        after = before @ mats[t - 1]
        if after[x0, x_t] == 0:
          continue
        bayes = mats[t - 1][:, x_t] * before[x0] / after[x0, x_t]
        one_hot = jnp.where(jnp.arange(K) == x0, 0.0, -jnp.inf)[None]
        got = np.exp(
            np.asarray(
                process.log_posterior(one_hot, jnp.array([x_t]), jnp.array([t]))
            )
        )[0]
        np.testing.assert_allclose(got, bayes, atol=1e-5)


def test_reverse_step_is_the_papers_form_by_default_on_the_issue_example():
  """Uniform, K = 3, T = 12, t = 5, x_t = 0 (issue 13, section 3)."""
  t, x_t = 5, 0
  logits = np.array([0.2515, -0.2642, 1.2808])  # default_rng(0).normal(3)*2
  p0 = np.exp(logits) / np.exp(logits).sum()
  # The issue's numbers were computed with the old cos^2 schedule.
  f = lambda u: math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2
  before, step = uniform_matrices(f(t - 1) / f(0), f(t) / f(0), K)
  np.testing.assert_allclose(
      reference_reverse_step("soft_x0", step, before, p0, x_t),
      [0.849, 0.038, 0.113],
      atol=1e-3,
  )
  np.testing.assert_allclose(
      reference_reverse_step("posterior_mixture", step, before, p0, x_t),
      [0.694, 0.073, 0.233],
      atol=1e-3,
  )
  # The process, every t and x_t, against the same sums on its schedule
  # (the unsquared cosine, written out).
  steps = np.repeat(np.arange(1, T + 1), K)  # [T K]
  states = np.tile(np.arange(K), T)
  batch_logits = jnp.asarray(np.tile(logits, (T * K, 1)), jnp.float32)

  def reverse_step(*parameterization):
    process = d3pm.D3PM("uniform", K, T, "cosine", *parameterization)
    return np.exp(
        np.asarray(
            process.log_posterior(
                batch_logits, jnp.asarray(states), jnp.asarray(steps)
            )
        )
    )  # [T K, K]

  def expected(name):
    rows = []
    for t, x_t in zip(steps, states):
      abar_t = 0.0 if t == T else reference_cosine_abar(t, T)
      before, step = uniform_matrices(
          reference_cosine_abar(t - 1, T), abar_t, K
      )
      rows.append(reference_reverse_step(name, step, before, p0, x_t))
    return np.array(rows)

  # The default is the papers' form.
  np.testing.assert_allclose(reverse_step(), expected("soft_x0"), atol=2e-5)
  got = {name: reverse_step(name) for name in ("soft_x0", "posterior_mixture")}
  for name, value in got.items():
    np.testing.assert_allclose(value, expected(name), atol=2e-5, err_msg=name)
  # The two forms are different models of the same logits.
  assert np.abs(got["soft_x0"] - got["posterior_mixture"]).max() > 0.05


def test_absorbing_d3pm_loss_equals_md4_discrete_time_loss():
  v, steps, length, batch = 5, 16, 7, 64
  process = d3pm.D3PM("absorbing", v, steps, "jsd")  # abar_t = 1 - t/T
  schedule = schedules.MaskingSchedule("linear", eps=0.0)  # alpha = 1 - t
  rng = jax.random.key(0)
  x = jax.random.randint(rng, (batch, length), 0, v)
  step = jax.random.randint(jax.random.key(1), (batch,), 1, steps + 1)
  x_t = process.sample_marginal(jax.random.key(2), x, step)
  logits = jax.random.normal(jax.random.key(3), (batch, length, v)) * 2
  ours = steps * d3pm.step_loss(process, x, x_t, step, logits)
  weight, t_query = masked.diffusion_weight(
      schedule, (step - 0.5) / steps, steps
  )
  np.testing.assert_allclose(t_query, step / steps, rtol=1e-6)
  theirs = weight * common.masked_cross_entropy(x, x_t, logits, v)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  assert float(d3pm.prior_loss(process, x).max()) == 0.0


def test_multinomial_diffusion_is_uniform_d3pm_with_the_cosine_schedule():
  """Hoogeboom et al.'s reverse step, written out from their closed form.

  theta_post(x_t, x0_hat) propto [alpha_t x_t + (1 - alpha_t)/K] *
  [abar_{t-1} x0_hat + (1 - abar_{t-1})/K], with x0_hat the network's
  softmax and abar_t = cos(pi/2 (t/T + s)/(1 + s)) / cos(pi/2 s/(1 + s)).
  Their last step keeps alpha_T = sqrt(0.001); ours is 0, so the chain
  ends on the uniform prior (that step is checked with alpha_T = 0).
  """
  process = d3pm.D3PM("uniform", K, T, "cosine")  # The multinomial config.
  rng = np.random.default_rng(1)
  for t in range(1, T + 1):
    abar_prev = reference_cosine_abar(t - 1, T)
    a_t = 0.0 if t == T else reference_cosine_abar(t, T) / abar_prev
    for x_t in range(K):
      logits = rng.normal(size=K) * 2
      x0_hat = np.exp(logits) / np.exp(logits).sum()
      theta = (a_t * (np.arange(K) == x_t) + (1 - a_t) / K) * (
          abar_prev * x0_hat + (1 - abar_prev) / K
      )
      theta /= theta.sum()
      got = np.exp(
          np.asarray(
              process.log_posterior(
                  jnp.asarray(logits, jnp.float32)[None],
                  jnp.array([x_t]),
                  jnp.array([t]),
              )
          )
      )[0]
      np.testing.assert_allclose(
          got, theta, atol=1e-5, err_msg=f"t={t} x_t={x_t}"
      )


# The schedules the reference code pairs with each transition, at its T:
# linear (Gaussian) at T = 1000; cosine and 1/(T-t+1) end in a beta of 1.
# Linear at T = 200 (abar_T ~ 0.13) and Gaussian with cosine (~0.005 nats per
# dimension left at T = 200) stop short of the prior; the bound's prior
# term reports it.
PRIOR_CASES = [
    ("uniform", "linear", 1000),
    ("uniform", "cosine", 200),
    ("absorbing", "jsd", 200),
    ("absorbing", "cosine", 200),
    ("gaussian", "linear", 1000),
]


@pytest.mark.parametrize("transition,schedule,steps", PRIOR_CASES)
def test_forward_process_reaches_the_prior_sampling_starts_from(
    transition, schedule, steps
):
  # Gaussian noise is for ordinal values: digits' 17 grey levels.
  vocab = 17 if transition == "gaussian" else 2
  process = d3pm.D3PM(transition, vocab, steps, schedule)
  x = jnp.ones((4096, 16), jnp.int32)
  prior = d3pm.prior_loss(process, x)
  assert float(prior.max()) / 16 < 1e-3  # nats per dimension
  x_T = process.sample_marginal(jax.random.key(0), x, jnp.full((4096,), steps))
  if transition == "absorbing":
    assert bool((x_T == process.mask_id).all())
  else:
    counts = np.bincount(np.asarray(x_T).ravel(), minlength=vocab)
    np.testing.assert_allclose(counts / x_T.size, 1.0 / vocab, atol=0.01)


STATES_BY_POSITION = jnp.asarray(kd.all_states()).T  # [L, S]


def _oracle_logits(log_obs, parameterization):
  """The best logits for the known distribution from per-token likelihoods.

  Args:
    log_obs: log q(z_l | x_0,l = s_l) for every state s [B, L, S].
    parameterization: "posterior_mixture" wants p~(k) = q(x_0,l = k | z);
      "soft_x0" wants q(x_0,l = k | z) / q(z_l | k), renormalised: the same
      posterior with position l's own likelihood left out.

  Returns:
    [B, L, K] logits, in log space throughout.
  """
  log_p = jnp.asarray(kd.log_probs(kd.all_states()), jnp.float32)  # [S]
  # The sum over positions, with -inf (unreachable) terms counted apart so
  # that leaving one out never computes -inf - -inf.
  ruled_out = log_obs == -jnp.inf
  finite = jnp.where(ruled_out, 0.0, log_obs)
  total = finite.sum(1, keepdims=True)  # [B, 1, S]
  ruled_out_total = ruled_out.sum(1, keepdims=True)
  if parameterization == "soft_x0":
    others = total - finite  # [B, L, S]
    others_ruled_out = ruled_out_total - ruled_out > 0
  else:
    others, others_ruled_out = total, ruled_out_total > 0  # [B, 1, S]
  log_joint = jnp.where(others_ruled_out, -jnp.inf, log_p + others)
  top = log_joint.max(-1, keepdims=True)  # [B, L or 1, 1]
  weights = jnp.exp(log_joint - top)
  marginal = jnp.stack(
      [
          jnp.where(STATES_BY_POSITION == v, weights, 0.0).sum(-1)
          for v in range(kd.VOCAB)
      ],
      -1,
  )  # [B, L, K]
  # The top state gives its value weight 1; the floor keeps the CE finite
  # for values the oracle rules out.
  return jnp.log(jnp.maximum(marginal, 1e-30)) + top


def _uniform_oracle(process):
  """The best denoiser for uniform noise on the known distribution.

  Uniform noise keeps every q(z_l | k) >= (1 - abar_t) / K > 0 and every
  posterior value far above float32's floor, so "soft_x0"'s target is
  formed by subtracting log q(z_l | k) from the posterior's logarithm
  (cheaper than `_oracle_logits`, which the sampler would call T times).
  """
  states = jnp.asarray(kd.all_states())  # [S, L]
  log_p = jnp.asarray(kd.log_probs(kd.all_states()), jnp.float32)
  _, _, log_abar, log_1m_abar = process.log_tables()

  def denoise(z, t, label=None):
    del label
    step = jnp.round(t * process.num_steps).astype(jnp.int32)
    la, lm = log_abar[step][:, None, None], log_1m_abar[step][:, None, None]
    noise = lm - math.log(kd.VOCAB)
    same = z[:, None, :] == states[None]
    log_obs = jnp.where(same, jnp.logaddexp(la, noise), noise)  # [B, S, L]
    post = jax.nn.softmax(log_p[None] + log_obs.sum(-1), -1)  # [B, S]
    marginal = jnp.einsum(
        "bs,slv->blv", post, jax.nn.one_hot(states, kd.VOCAB)
    )  # [B, L, K]
    logits = jnp.log(jnp.maximum(marginal, 1e-30))
    if process.parameterization == "posterior_mixture":
      return logits
    same = z[..., None] == jnp.arange(kd.VOCAB)  # [B, L, K]
    return logits - jnp.where(same, jnp.logaddexp(la, noise), noise)

  return denoise


def _matrix_oracle(process):
  """The best denoiser from explicit products of the step matrices."""
  cumulative = [np.eye(process.num_states)]
  for q in explicit_step_matrices(process):
    cumulative.append(cumulative[-1] @ q)
  with np.errstate(divide="ignore"):
    # [T + 1, x_t, x_0]
    log_cum = jnp.asarray(
        np.log(np.stack(cumulative)).swapaxes(1, 2), jnp.float32
    )

  def denoise(z, t, label=None):
    del label
    step = jnp.round(t * process.num_steps).astype(jnp.int32)
    lq = log_cum[step[:, None], z]  # [B, L, K]: log q(z_l | x_0 = k)
    log_obs = jnp.take_along_axis(
        lq,
        jnp.broadcast_to(
            STATES_BY_POSITION, (z.shape[0],) + STATES_BY_POSITION.shape
        ),
        axis=-1,
    )  # [B, L, S]
    return _oracle_logits(log_obs, process.parameterization)

  return denoise


@pytest.mark.parametrize(
    "transition,parameterization",
    [
        ("uniform", "soft_x0"),
        ("uniform", "posterior_mixture"),
        ("absorbing", "soft_x0"),
        ("gaussian", "soft_x0"),
    ],
)
def test_d3pm_nelbo_with_the_true_posterior_is_near_the_entropy(
    transition, parameterization
):
  schedule = "jsd" if transition == "absorbing" else "cosine"
  process = d3pm.D3PM(transition, kd.VOCAB, 200, schedule, parameterization)
  if transition == "absorbing":
    _, _, log_abar, _ = process.log_tables()
    denoise = kd.oracle(
        lambda v, t: jnp.exp(log_abar[jnp.round(t * 200).astype(jnp.int32)])
    )
  elif transition == "uniform":
    denoise = _uniform_oracle(process)
  else:
    denoise = _matrix_oracle(process)
  x = jnp.asarray(kd.sample(np.random.default_rng(0), 20000))

  @jax.jit
  def run(rng):
    terms, _ = d3pm.nelbo(rng, x, denoise, process)
    return terms

  terms = run(jax.random.key(0))
  nelbo = np.asarray(terms["loss_nelbo"], np.float64)
  mean, se = nelbo.mean(), nelbo.std() / math.sqrt(len(nelbo))
  entropy = kd.entropy()
  # A bound: not below the entropy; with true posteriors and T = 200 close.
  # The gap is KL(q(x_T) || prior) <= the mean prior term, plus the cost of
  # per-token reverse steps. Three values are too few for the Gaussian
  # kernel to reach its uniform prior (its prior term is reported, ~1.3
  # nats over the 5 positions), so it gets that term as slack. Both
  # parameterizations reach the same bound with their own best denoiser.
  slack = float(terms["loss_prior"].mean()) if transition == "gaussian" else 0
  assert mean > entropy - 4 * se
  assert mean < 1.05 * entropy + slack, (mean, entropy, slack)


def test_gaussian_loss_gradients_are_finite_where_states_are_unreachable():
  # At small t the float64 tables hold exact zeros (-inf logs) far from the
  # diagonal: some x_{t-1} is reachable from no x_0.
  process = d3pm.D3PM("gaussian", 17, 20, "linear")
  x0 = jnp.tile(jnp.arange(17), (2, 1))  # [2, 17]
  x_t = jnp.minimum(x0 + 1, 16)  # Reachable from x0 in one step.
  noise = jax.random.normal(jax.random.key(1), (2, 17, 17))
  grad = jax.jit(
      jax.grad(
          lambda w: d3pm.step_loss(
              process, x0, x_t, jnp.array([1, 2]), w * noise
          ).sum()
      )
  )(1.0)
  assert np.isfinite(float(grad)) and float(grad) != 0.0


def test_hybrid_loss_includes_the_variational_term_and_the_scaled_ce():
  process = d3pm.D3PM("uniform", 4, 10, "linear")
  x = jax.random.randint(jax.random.key(0), (8, 6), 0, 4)
  logits_fn = lambda z, t, c: jax.nn.one_hot(z, 4) * 2.0
  terms, _ = d3pm.nelbo(
      jax.random.key(1), x, logits_fn, process, hybrid_coeff=0.01
  )
  np.testing.assert_allclose(
      terms["loss"],
      terms["loss_nelbo"] + 0.01 * 10 * terms["loss_ce"],
      rtol=1e-6,
  )
  np.testing.assert_allclose(
      terms["loss_nelbo"], terms["loss_diff"] + terms["loss_prior"], rtol=1e-6
  )
  assert float(terms["loss_diff"].min()) > 0


def test_predicting_the_mask_is_impossible_in_the_reverse_process():
  process = d3pm.D3PM("absorbing", 4, 10, "jsd")
  x_t = jnp.full((1, 3), process.mask_id)
  logits = jnp.zeros((1, 3, 4))
  log_p = process.log_posterior(logits, x_t, jnp.array([1]))
  # At t = 1 every token is revealed: the mask has zero probability.
  assert float(jnp.exp(log_p[..., process.mask_id]).max()) == 0.0
  np.testing.assert_allclose(jnp.exp(log_p).sum(-1), 1.0, rtol=1e-6)


def test_unknown_transition_or_schedule_is_rejected_with_the_field():
  with pytest.raises(ValueError, match="transition"):
    d3pm.D3PM("gauss", 4, 10, "linear")
  with pytest.raises(ValueError, match="vocab_size >= 3"):
    d3pm.D3PM("gaussian", 1, 10, "linear")
  with pytest.raises(ValueError, match="d3pm.parameterization='x0'"):
    d3pm.D3PM("uniform", 4, 10, "linear", "x0")
  with pytest.raises(ValueError, match="linear, cosine, jsd"):
    d3pm.D3PM("uniform", 4, 10, "quadratic")


def _d3pm_config(**model):
  config = configuration.default_config()
  config.model.process = "d3pm"
  config.model.d3pm.num_steps = 200
  for name, value in model.items():
    config.model.d3pm[name] = value
  return config


def test_absorbing_noise_with_a_schedule_that_leaves_tokens_is_rejected():
  # Linear betas keep prod(1 - beta) ~ 0.13 of the tokens at T = 200 (4e-5
  # at T = 1000); the all-mask prior gives them probability 0.
  abar_T = np.prod(1 - np.linspace(1e-4, 0.02, 200))
  assert abar_T > 0.1
  config = _d3pm_config(transition="absorbing", schedule="linear")
  with pytest.raises(
      ValueError,
      match=(
          r"config.model.d3pm.schedule='linear' with config.model.d3pm."
          r"transition='absorbing'.*prior KL is infinite.*set "
          r"config.model.d3pm.schedule='jsd'"
      ),
  ):
    configuration.validate(config)
  for schedule in ("jsd", "cosine"):  # Both end with beta_T = 1.
    config.model.d3pm.schedule = schedule
    configuration.validate(config)


def test_gaussian_noise_on_binary_data_is_rejected():
  config = _d3pm_config(transition="gaussian", schedule="linear")
  config.data.vocab_size = 2
  with pytest.raises(
      ValueError,
      match=(
          r"config.model.d3pm.transition='gaussian' needs"
          r" config.data.vocab_size"
          r" >= 3.*set config.model.d3pm.transition='uniform'"
      ),
  ):
    configuration.validate(config)
  config.data.vocab_size = 3
  configuration.validate(config)
  # Why: at K = 2 the only move has probability exp(-4/beta) / (1 +
  # 2 exp(-4/beta)) <= 0.018 per step (beta <= 1).
  move = math.exp(-4.0) / (1 + 2 * math.exp(-4.0))
  assert move < 0.018
  np.testing.assert_allclose(
      np.exp(d3pm.gaussian_log_step(1.0, 2))[0, 1], move, rtol=1e-12
  )


def test_unknown_d3pm_parameterization_is_rejected_by_validate():
  config = _d3pm_config(parameterization="x0_posterior")
  with pytest.raises(
      ValueError,
      match=(
          "config.model.d3pm.parameterization='x0_posterior' is not valid; "
          "valid: soft_x0, posterior_mixture"
      ),
  ):
    configuration.validate(config)


class _OracleNetwork(nn.Module):
  """A parameter-free 'network' returning the oracle's logits."""

  denoise: Any

  def __call__(self, z, t, label=None, *, train=False):
    return self.denoise(z, t, label)


@pytest.mark.parametrize("transition", ["absorbing", "uniform"])
def test_d3pm_sampler_with_the_true_posterior_draws_the_distribution(
    transition,
):
  steps = 200
  schedule = "cosine" if transition == "uniform" else "jsd"
  process = d3pm.D3PM(transition, kd.VOCAB, steps, schedule)
  if transition == "absorbing":
    _, _, log_abar, _ = process.log_tables()
    denoise = kd.oracle(
        lambda v, t: jnp.exp(log_abar[jnp.round(t * steps).astype(jnp.int32)])
    )
  else:
    denoise = _uniform_oracle(process)
  model = model_lib.DiffusionModel(
      network=_OracleNetwork(denoise),
      process=d3pm.D3PMProcess(
          kd.VOCAB,
          (kd.LENGTH,),
          transition=transition,
          num_steps=steps,
          schedule=schedule,
      ),
  )
  entry = sampling.get("reverse_chain")
  settings = entry.make_settings(num_frames=5)
  result = jax.jit(
      lambda r: entry.draw(core.from_model(model, {}), r, 20000, settings)
  )(jax.random.key(0))
  samples, history = result.samples, result.history
  assert int(result.network_calls) == steps
  samples = np.asarray(samples)
  assert samples.min() >= 0 and samples.max() < kd.VOCAB  # No mask left.
  assert history.shape == (5, 20000, kd.LENGTH)
  states = kd.all_states()
  index = {tuple(s): i for i, s in enumerate(states)}
  counts = np.bincount(
      [index[tuple(s)] for s in samples], minlength=len(states)
  )
  truth = np.exp(kd.log_probs(states))
  tv = 0.5 * np.abs(counts / counts.sum() - truth).sum()
  assert tv < 0.05, tv


@pytest.mark.parametrize("parameterization", d3pm.PARAMETERIZATIONS)
def test_sampler_reverse_step_uses_the_loss_parameterization(parameterization):
  logits = jax.random.normal(jax.random.key(0), (4, 6, K)) * 2
  model = model_lib.DiffusionModel(
      network=_OracleNetwork(lambda z, t, c: logits),
      process=d3pm.D3PMProcess(
          K,
          (6,),
          transition="uniform",
          num_steps=T,
          schedule="cosine",
          parameterization=parameterization,
      ),
  )
  z = jax.random.randint(jax.random.key(1), (4, 6), 0, K)
  step = jnp.array([1, 4, 7, T])
  reverse = core.from_model(model, {})
  got = reverse.process.log_posterior(reverse.denoise(z, step / T), z, step)
  process = d3pm.D3PM("uniform", K, T, "cosine", parameterization)
  np.testing.assert_array_equal(got, process.log_posterior(logits, z, step))
  # build_model reads the field from the config.
  config = config_recipes.load_file(
      os.path.join(ROOT, "configs", "multinomial", "binarized_mnist.py"),
      "digits",
  )
  config.model.d3pm.parameterization = parameterization
  assert (
      model_lib.build_model(config).process.parameterization == parameterization
  )


# ------------------------------------------------- python -m md4.sample ----

SAMPLE_STEPS = 6  # T of the initialised run below.


@pytest.fixture(scope="module")
def d3pm_workdir(tmp_path_factory):
  """A workdir as training leaves it: config.json and a real orbax
  checkpoint of an absorbing D3PM on digits (tiny U-Net). The state has the
  train state's structure, with random parameters: compiling the real
  initialisation (the whole loss) would cost more than the test."""
  workdir = str(tmp_path_factory.mktemp("d3pm_run"))
  config = config_recipes.load_file(
      os.path.join(ROOT, "configs", "d3pm", "text8.py"), "digits"
  )
  config.network = config_recipes.unet(
      ch=16, num_res_blocks=1, dropout_rate=0.0, embed_dim=8
  )
  config.model.d3pm.num_steps = SAMPLE_STEPS
  setup = run_lib.build(config, workdir)
  run_lib.save_config(config, workdir)
  rng = np.random.default_rng(0)
  state = jax.tree.map(
      lambda a: jax.device_put(
          (rng.normal(size=a.shape) * 0.1).astype(a.dtype), a.sharding
      ),
      setup.abstract_state,
  )
  manager = checkpointing.make_manager(workdir, 1, 0)
  checkpointing.save(manager, 1, state, iter(setup.datasets.train))
  manager.close()
  return workdir


def test_sample_command_runs_the_d3pm_chain_and_writes_png_gif_and_strip(
    d3pm_workdir, tmp_path
):
  out = str(tmp_path / "out")
  summary = sample_command.sample_to_files(
      sample_command.Request(
          workdir=d3pm_workdir,
          output_dir=out,
          num_samples=5,
          batch_size=4,
          history=True,
          history_frames=4,
      )
  )
  assert sorted(os.listdir(out)) == [
      "history.gif",
      "history_strip.png",
      "samples.npy",
      "samples.png",
      "summary.json",
  ]
  samples = np.load(os.path.join(out, "samples.npy"))
  assert samples.shape == (5, 8, 8, 1)
  # The final step is taken: no mask (id 17) is left.
  assert samples.min() >= 0 and samples.max() < 17
  grid = sample_writing.enlarge(sample_writing.image_grid(samples, 17))
  with Image.open(os.path.join(out, "samples.png")) as png:
    assert png.size == (grid.shape[1], grid.shape[0])
  mask_color = np.array(sample_writing.MASK_COLOR)
  with Image.open(os.path.join(out, "history.gif")) as gif:
    assert gif.n_frames == 4
    gif.seek(0)
    first = np.asarray(gif.convert("RGB"))
    gif.seek(3)
    last = np.asarray(gif.convert("RGB"))
  assert (first == mask_color).all(-1).mean() > 0.5  # x_T: all masked.
  assert not (last == mask_color).all(-1).any()  # x_0: none masked.
  with Image.open(os.path.join(out, "history_strip.png")) as strip:
    assert strip.size[0] > first.shape[1]
  with open(os.path.join(out, "summary.json")) as f:
    saved = json.load(f)
  # One network call per step, T in all.
  assert (
      saved["network_calls_per_sample"]
      == summary["network_calls_per_sample"]
      == SAMPLE_STEPS
  )


@pytest.mark.parametrize(
    "flag,value,message",
    [
        (
            "sampler",
            "cached",
            (
                "--sampler=cached needs a process with the "
                "'unmasking' capability.*Use --sampler=reverse_chain"
            ),
        ),
        ("sampler", "topp", "--sampler=topp needs"),
        ("steps", 3, "--steps=3 does not apply to --sampler=reverse_chain"),
        ("grid", "cosine", "--grid=cosine does not apply"),
        (
            "own_settings",
            (("topp", 0.5),),
            (
                "--topp does not apply to --sampler=reverse_chain; it is a"
                " setting of --sampler=topp or autoregressive"
            ),
        ),
        (
            "inpaint",
            "left",
            "--inpaint does not apply to --sampler=reverse_chain",
        ),
        (
            "reconstruct_from",
            "test",
            (
                "--reconstruct_from needs a process with "
                "the 'unmasking' capability"
            ),
        ),
    ],
)
def test_sample_command_names_the_flag_that_does_not_apply_to_d3pm(
    d3pm_workdir, tmp_path, flag, value, message
):
  request = sample_command.Request(
      workdir=d3pm_workdir, output_dir=str(tmp_path / "out"), **{flag: value}
  )
  with pytest.raises(ValueError, match=message):
    sample_command.sample_to_files(request)
  assert not os.path.exists(tmp_path / "out")
