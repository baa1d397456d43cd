"""MD4 and GenMD4 negative ELBOs against exact answers from an oracle denoiser.

With the true posterior as denoiser the continuous-time bound is tight:
NELBO(x) = -log p(x) up to the eps end-point terms. Expectations over the
mask draw are computed exactly by enumerating all 2**L mask patterns, and the
time integral by Gauss-Legendre quadrature, so these checks are
deterministic; the Monte-Carlo estimators used in training are checked
against the same numbers within their standard errors.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import known_distribution as kd
from md4 import configuration
from md4.diffusion import chunked_logits
from md4.diffusion import common
from md4.diffusion import genmd4
from md4.diffusion import masked
from md4.diffusion import schedules

jax.config.update("jax_enable_x64", False)

X_CASES = [
    np.array([0, 0, 0, 0, 0]),
    np.array([0, 1, 2, 1, 2]),
    np.array([2, 2, 2, 2, 2]),
]


def _pattern_probs(keep):
  """P(mask pattern) for each pattern, keep: [n, L] -> [n, P]."""
  masked = jnp.asarray(kd.mask_patterns())  # [P, L]
  logp = jnp.where(
      masked[None], jnp.log1p(-keep[:, None]), jnp.log(keep[:, None])
  )  # [n, P, L]
  return jnp.exp(logp.sum(-1))


def _patterns_as_z(x, num_times):
  masked = jnp.asarray(kd.mask_patterns())  # [P, L]
  z = jnp.where(masked, kd.VOCAB, jnp.asarray(x)[None])  # [P, L]
  return jnp.tile(z, (num_times, 1))  # [n*P, L]


@functools.partial(jax.jit, static_argnums=(1,))
def _expected_md4_ce(x, schedule, t):
  """E_{z ~ q(z_t|x)} masked cross-entropy under the oracle, [n]."""
  n, num_patterns = t.shape[0], 2**kd.LENGTH
  denoise = kd.oracle(lambda v, tt: schedule.alpha(tt))
  z = _patterns_as_z(x, 1)
  z = jnp.tile(z, (n, 1))  # [n*P, L]
  t_rep = jnp.repeat(t, num_patterns)  # [n*P]
  x_rep = jnp.broadcast_to(x, z.shape)
  ce = common.masked_cross_entropy(x_rep, z, denoise(z, t_rep, None), kd.VOCAB)
  keep = jnp.broadcast_to(schedule.alpha(t)[:, None], (n, kd.LENGTH))
  return (ce.reshape(n, num_patterns) * _pattern_probs(keep)).sum(-1)


def exact_md4_nelbo(x, schedule, num_steps=0, nodes=400):
  """The MD4 NELBO of x, expectations exact, time integral by quadrature."""
  x = jnp.asarray(x)
  prior = float(masked.prior_loss(schedule, kd.LENGTH, kd.VOCAB))
  recon = float(masked.recon_loss(schedule, kd.LENGTH, kd.VOCAB))
  if num_steps:
    t_mid = (jnp.arange(num_steps) + 0.5) / num_steps
    weight, t_query = masked.diffusion_weight(schedule, t_mid, num_steps)
    diff = float((weight * _expected_md4_ce(x, schedule, t_query)).mean())
  else:
    # t = exp(s): the integrand varies on the scale of eps near t = 0.
    s, gw = kd.gauss_legendre(math.log(1e-9), 0.0, nodes)
    t = jnp.asarray(np.exp(s), jnp.float32)
    weight = -schedule.loss_weight(t)  # at the times themselves, not draws
    integrand = weight * _expected_md4_ce(x, schedule, t) * t
    diff = float((jnp.asarray(gw, jnp.float32) * integrand).sum())
  return diff + recon + prior


@pytest.mark.parametrize("name", ["linear", "cosine", "poly2", "poly0.5"])
@pytest.mark.parametrize("x", X_CASES, ids=lambda x: "".join(map(str, x)))
def test_md4_continuous_nelbo_is_tight_with_the_true_posterior(name, x):
  schedule = schedules.MaskingSchedule(name, eps=1e-6)
  assert exact_md4_nelbo(x, schedule) == pytest.approx(
      kd.neg_log_prob(x), abs=2e-3
  )


@pytest.mark.slow
def test_md4_discrete_nelbo_is_above_continuous_and_converges_to_it():
  schedule = schedules.MaskingSchedule("linear", eps=1e-6)
  x = X_CASES[1]
  continuous = exact_md4_nelbo(x, schedule)
  discrete = [
      exact_md4_nelbo(x, schedule, num_steps=T) for T in (2, 8, 32, 128, 1024)
  ]
  gaps = np.array(discrete) - continuous
  assert np.all(gaps > 0), gaps
  assert np.all(np.diff(gaps) < 0), gaps  # More steps, tighter bound.
  assert gaps[-1] < 0.01 * gaps[0]
  assert gaps[-1] < 1e-2


def _mc(loss_fn, x, num_samples, rng):
  """Mean and standard error of per-example losses on copies of x."""
  batch = jnp.tile(jnp.asarray(x)[None], (num_samples, 1))
  values = np.asarray(loss_fn(rng, batch), np.float64)
  return values.mean(), values.std() / math.sqrt(num_samples)


@pytest.mark.parametrize("num_steps", [0, 16])
def test_md4_monte_carlo_nelbo_matches_the_exact_value(num_steps):
  schedule = schedules.MaskingSchedule("cosine")
  denoise = kd.oracle(lambda v, t: schedule.alpha(t))

  @jax.jit
  def loss_fn(rng, batch):
    return masked.nelbo(
        rng, batch, denoise, schedule, vocab_size=kd.VOCAB, num_steps=num_steps
    )["loss"]

  for i, x in enumerate(X_CASES):
    exact = exact_md4_nelbo(x, schedule, num_steps=num_steps)
    mean, se = _mc(loss_fn, x, 20000, jax.random.key(i))
    assert abs(mean - exact) < 4 * se + 1e-4, (x, mean, se, exact)
    if num_steps == 0:
      assert abs(mean - kd.neg_log_prob(x)) < 4 * se + 2e-3


def _conditional_neg_log_prob(x, scored):
  """-log p(x_scored | x_unscored) by enumerating the known distribution."""
  states = kd.all_states()
  log_p = kd.log_probs(states)
  agree = np.all(states[:, ~scored] == x[~scored], axis=1)
  log_marginal = np.logaddexp.reduce(log_p[agree])
  return float(-(kd.log_probs(x[None])[0] - log_marginal))


@pytest.mark.parametrize(
    "scored",
    [[True, True, True, False, False], [False, True, False, True, True]],
    ids=["prefix", "scattered"],
)
def test_md4_loss_mask_bound_is_tight_for_the_scored_tokens_given_the_rest(
    scored,
):
  # Unscored positions stay observed, so with the true posterior the bound
  # is -log p(x_scored | x_unscored), not -log p(x).
  scored = np.array(scored)
  schedule = schedules.MaskingSchedule("cosine")
  denoise = kd.oracle(lambda v, t: schedule.alpha(t))

  @jax.jit
  def loss_fn(rng, batch):
    mask = jnp.broadcast_to(jnp.asarray(scored), batch.shape)
    return masked.nelbo(
        rng, batch, denoise, schedule, vocab_size=kd.VOCAB, loss_mask=mask
    )

  x = X_CASES[1]
  batch = jnp.tile(jnp.asarray(x)[None], (20000, 1))
  terms = loss_fn(jax.random.key(5), batch)
  values = np.asarray(terms["loss"], np.float64)
  mean, se = values.mean(), values.std() / math.sqrt(len(values))
  expected = _conditional_neg_log_prob(x, scored)
  assert abs(mean - expected) < 4 * se + 2e-3, (mean, se, expected)
  assert abs(mean - kd.neg_log_prob(x)) > 0.5  # a different number
  n = int(scored.sum())
  np.testing.assert_allclose(
      terms["loss_prior"], n * 1e-4 * math.log(kd.VOCAB), rtol=1e-3
  )


def test_md4_loss_mask_never_noises_unscored_tokens_and_all_true_is_plain():
  schedule = schedules.MaskingSchedule("linear")
  seen = []

  def denoise(z, t, label):
    del t, label
    seen.append(np.asarray(z))
    return jnp.zeros(z.shape + (kd.VOCAB,))

  x = jnp.asarray(kd.sample(np.random.default_rng(1), 256))
  scored = np.zeros(x.shape, bool)
  scored[:, :2] = True
  scored[:8] = False  # examples with nothing scored
  rng = jax.random.key(3)
  terms = masked.nelbo(
      rng, x, denoise, schedule, vocab_size=kd.VOCAB, loss_mask=scored
  )
  z = seen[-1]
  np.testing.assert_array_equal(z[~scored], np.asarray(x)[~scored])
  assert (z[scored] == kd.VOCAB).mean() > 0.3  # scored ones are noised
  np.testing.assert_array_equal(terms["loss"][:8], 0.0)
  # Uniform logits: each masked scored token costs log V, nothing else.
  counts = (z == kd.VOCAB).sum(1)
  assert np.all(counts[8:] <= 2)
  plain = masked.nelbo(rng, x, denoise, schedule, vocab_size=kd.VOCAB)
  every = masked.nelbo(
      rng,
      x,
      denoise,
      schedule,
      vocab_size=kd.VOCAB,
      loss_mask=np.ones(x.shape, bool),
  )
  for key in plain:
    np.testing.assert_allclose(every[key], plain[key], rtol=1e-6)
  np.testing.assert_array_equal(seen[-1], seen[-2])  # the same draws


@pytest.mark.slow
def test_md4_loss_terms_add_up_and_bits_per_dim_is_loss_over_n_ln2():
  schedule = schedules.MaskingSchedule("linear")
  denoise = kd.oracle(lambda v, t: schedule.alpha(t))
  batch = jnp.asarray(kd.sample(np.random.default_rng(0), 64))
  terms = masked.nelbo(
      jax.random.key(0), batch, denoise, schedule, vocab_size=kd.VOCAB
  )
  np.testing.assert_allclose(
      terms["loss"],
      terms["loss_diff"] + terms["loss_recon"] + terms["loss_prior"],
      rtol=1e-6,
  )
  np.testing.assert_allclose(
      terms["loss_prior"], kd.LENGTH * 1e-4 * math.log(kd.VOCAB), rtol=1e-3
  )
  summary = common.summarize(terms, kd.LENGTH)
  assert summary["bits_per_dim"] == pytest.approx(
      float(terms["loss"].mean()) / (kd.LENGTH * kd.LN2), rel=1e-5
  )


def test_md4_weighted_summary_ignores_padding_examples():
  terms = {"loss": jnp.array([1.0, 3.0, 100.0])}
  summary = common.summarize(terms, 1, weight=jnp.array([1.0, 1.0, 0.0]))
  assert float(summary["loss"]) == pytest.approx(2.0)


def test_target_log_prob_equals_log_softmax_gather():
  logits = jax.random.normal(jax.random.key(1), (4, 7, 11)) * 5
  x = jax.random.randint(jax.random.key(2), (4, 7), 0, 11)
  expected = jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], -1)[
      ..., 0
  ]
  np.testing.assert_allclose(
      chunked_logits.target_log_prob(logits, x), expected, rtol=1e-5, atol=1e-6
  )
  bf16 = chunked_logits.target_log_prob(logits.astype(jnp.bfloat16), x)
  assert bf16.dtype == jnp.float32


def test_antithetic_times_are_stratified_over_the_unit_interval():
  t = np.sort(np.asarray(common.sample_times(jax.random.key(3), 8, True)))
  assert np.all((t >= 0) & (t < 1))
  np.testing.assert_allclose(np.diff(t), 1 / 8, atol=1e-6)


# ------------------------------------------------------ time end points --

_F32 = np.finfo(np.float32)
# What a float32 U[0, 1) draw can be at its ends: 0, the smallest positive
# (subnormal) and normal floats, and the largest float below 1.
EXTREME_DRAWS = np.array(
    [
        0.0,
        _F32.smallest_subnormal,
        _F32.tiny,
        np.nextafter(np.float32(1.0), np.float32(0.0)),
    ],
    np.float32,
)
ENDPOINT_SCHEDULES = ["linear", "cosine", "poly0.5", "poly2"]
_EP_VOCAB, _EP_LENGTH = 7, 256


def _table_denoiser(table):
  """logits [B, L, V] = table[z]: a denoiser with parameters (the table)."""
  return lambda z, t, label: table[z]


def _endpoint_batch(num_draws):
  x = jax.random.randint(
      jax.random.key(11), (num_draws, _EP_LENGTH), 0, _EP_VOCAB
  )
  keys = jax.random.split(jax.random.key(12), num_draws)
  table = jax.random.normal(jax.random.key(13), (_EP_VOCAB + 1, _EP_VOCAB))
  return x, keys, table


def _assert_finite(tree, what):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    assert np.all(np.isfinite(np.asarray(leaf))), (
        what,
        jax.tree_util.keystr(path),
        leaf,
    )


@pytest.mark.parametrize("eps", [1e-4, 0.05])
@pytest.mark.parametrize("num_steps", [0, 16])
@pytest.mark.parametrize("name", ENDPOINT_SCHEDULES)
def test_md4_loss_and_gradient_are_finite_at_the_extreme_float32_draws(
    name, num_steps, eps
):
  # eps = 0.05 masks about 13 of the 256 tokens even at the smallest time,
  # so the weight there multiplies a non-zero cross-entropy.
  schedule = schedules.MaskingSchedule(name, eps=eps)
  u = jnp.asarray(EXTREME_DRAWS)
  x, keys, table = _endpoint_batch(len(u))
  weight, t_query = masked.diffusion_weight(schedule, u, num_steps)
  _assert_finite({"weight": weight, "t": t_query}, name)
  assert np.all(np.asarray(t_query) > 0) and np.all(np.asarray(weight) >= 0)

  def loss(p):
    terms = masked.nelbo(
        keys,
        x,
        _table_denoiser(p),
        schedule,
        vocab_size=_EP_VOCAB,
        num_steps=num_steps,
        t=u,
    )
    return terms["loss"].sum(), terms

  (_, terms), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(table)
  _assert_finite({"terms": terms, "grad": grad}, name)


@pytest.mark.parametrize("t1", [1e-4, 1e-8])
def test_genmd4_loss_and_gradients_are_finite_at_the_extreme_float32_draws(t1):
  u = jnp.asarray(EXTREME_DRAWS)
  x, keys, table = _endpoint_batch(len(u))
  param = _power_param(
      np.array([0.5, 1.0, 2.5, 0.2, 3.0, 1.0, 1.0], np.float32)
  )

  def loss(p, pp):
    terms, _ = genmd4.nelbo(
        keys,
        x,
        _table_denoiser(p),
        pp,
        vocab_size=_EP_VOCAB,
        eps=0.05,
        t1=t1,
        t=u,
    )
    return terms["loss"].sum(), terms

  (_, terms), grads = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  )(table, param)
  _assert_finite({"terms": terms, "grads": grads}, t1)


def test_antithetic_draws_never_leave_the_interval_whose_loss_is_finite():
  # The offsets where (u + b / B) mod 1 comes near 0 or 1: every 1 - b / B
  # and the float32 values a few ulps either side, plus the extreme draws.
  batch = 256
  near = [np.float32(1.0) - np.float32(b / batch) for b in range(batch)]
  offsets = set(EXTREME_DRAWS.tolist())
  for v in near:
    for direction in (0.0, 1.0):
      w = v
      for _ in range(4):
        if 0.0 <= w < 1.0:
          offsets.add(float(w))
        w = np.nextafter(w, np.float32(direction))
  offsets = jnp.asarray(sorted(offsets), jnp.float32)  # [n]
  draws = jax.vmap(lambda o: common.antithetic_draws(o, batch))(offsets)
  draws = np.asarray(draws).ravel()
  # The hazard of the old draw: the offset 1 - b / B makes a time exactly 0.
  assert np.any(draws == 0.0)
  assert np.all((draws >= 0.0) & (draws < 1.0))
  times = np.asarray(common.time_of_draw(jnp.asarray(draws)))
  assert times.min() >= 2.0**-24 and times.max() <= 1.0
  for name in ENDPOINT_SCHEDULES:
    weight, _ = masked.diffusion_weight(
        schedules.MaskingSchedule(name), jnp.asarray(draws), 0
    )
    assert np.all(np.isfinite(np.asarray(weight))), name
  t1 = 1e-4  # GenMD4's time never falls below t1.
  genmd4_times = np.float32(t1) + np.float32(1.0 - t1) * draws
  assert genmd4_times.min() >= np.float32(t1)


def test_genmd4_and_the_config_reject_t1_zero_naming_the_field():
  x, keys, table = _endpoint_batch(2)
  with pytest.raises(
      ValueError, match=r"config\.model\.genmd4\.t1 must be in \(0, 1"
  ):
    genmd4.nelbo(
        keys,
        x,
        _table_denoiser(table),
        _power_param(np.ones(7)),
        vocab_size=_EP_VOCAB,
        t1=0.0,
        t=jnp.zeros(2),
    )
  with pytest.raises(ValueError, match="config.model.genmd4.t1"):
    genmd4.nelbo(
        keys,
        x,
        _table_denoiser(table),
        _power_param(np.ones(7)),
        vocab_size=_EP_VOCAB,
        t1=1e-50,
        t=jnp.zeros(2),
    )  # 0 in f32
  config = configuration.default_config()
  config.model.process = "genmd4"
  config.model.genmd4.t1 = 0.0
  with pytest.raises(
      ValueError, match=r"config\.model\.genmd4\.t1=0\.0 .*\(0, 1"
  ):
    configuration.validate(config)


def test_forward_process_keeps_tokens_with_probability_alpha():
  x = jnp.zeros((200_000,), jnp.int32)
  z = common.forward_sample(jax.random.key(4), x, 0.3, mask_id=9)
  assert set(np.unique(np.asarray(z))) <= {0, 9}
  assert float((z == 0).mean()) == pytest.approx(0.3, abs=0.005)


def test_tokens_outside_the_vocabulary_are_rejected_with_the_field_name():
  with pytest.raises(ValueError, match="vocab_size"):
    common.check_tokens(np.array([[0, 1, 5]]), 5, (3,))
  with pytest.raises(ValueError, match="data_shape"):
    common.check_tokens(np.array([[0, 1]]), 5, (3,))


def test_label_dropout_uses_the_reserved_no_label_id():
  label = jnp.arange(10000) % 10
  dropped = common.drop_labels(jax.random.key(5), label, 0.25, num_classes=10)
  is_null = np.asarray(dropped == 10)
  assert is_null.mean() == pytest.approx(0.25, abs=0.02)
  np.testing.assert_array_equal(
      np.asarray(dropped)[~is_null], np.asarray(label)[~is_null]
  )


# ----------------------------------------------------------------- GenMD4 --

POWERS = np.array([0.5, 1.0, 2.5], np.float32)


def _power_param(w):
  return jnp.log(jnp.expm1(jnp.asarray(w, jnp.float32)))


def _genmd4_oracle(w, eps):
  return kd.oracle(lambda v, t: genmd4.alpha(jnp.asarray(w)[v], t, eps))


def exact_genmd4_diff(x, w, eps, t1, denoise, nodes=400):
  """Exact E over masks, quadrature over log t, of GenMD4's loss_diff."""
  x = jnp.asarray(x)
  s, gw = kd.gauss_legendre(math.log(t1), 0.0, nodes)
  t = jnp.asarray(np.exp(s), jnp.float32)  # [n]
  n, num_patterns = t.shape[0], 2**kd.LENGTH
  z = jnp.tile(_patterns_as_z(x, 1), (n, 1))  # [n*P, L]
  t_rep = jnp.repeat(t, num_patterns)
  x_rep = jnp.broadcast_to(x, z.shape)
  f = genmd4.diffusion_integrand(
      x_rep, z, denoise(z, t_rep, None), w, t_rep, kd.VOCAB
  )  # [n*P]
  keep = genmd4.alpha(w[x][None], t[:, None], eps)  # [n, L]
  expected = (f.reshape(n, num_patterns) * _pattern_probs(keep)).sum(-1)
  return (jnp.asarray(gw, jnp.float32) * expected * t).sum()


@pytest.mark.slow
@pytest.mark.parametrize("x", X_CASES, ids=lambda x: "".join(map(str, x)))
def test_genmd4_nelbo_is_tight_with_the_true_posterior(x):
  eps, t1 = 1e-6, 1e-8
  w = jnp.asarray(POWERS)
  diff = exact_genmd4_diff(x, w, eps, t1, _genmd4_oracle(POWERS, eps))
  terms, _ = genmd4.nelbo(
      jax.random.key(0),
      jnp.asarray(x)[None],
      _genmd4_oracle(POWERS, eps),
      _power_param(POWERS),
      vocab_size=kd.VOCAB,
      eps=eps,
      t1=t1,
  )
  total = float(diff + terms["loss_recon"][0] + terms["loss_prior"][0])
  assert total == pytest.approx(kd.neg_log_prob(x), abs=2e-3)


@pytest.mark.slow
def test_genmd4_with_equal_powers_reduces_to_the_md4_weighted_cross_entropy():
  rng = jax.random.key(7)
  logits = jax.random.normal(rng, (16, kd.LENGTH, kd.VOCAB)) * 3
  x = jnp.asarray(kd.sample(np.random.default_rng(2), 16))
  z = jnp.where(jax.random.bernoulli(rng, 0.5, x.shape), kd.VOCAB, x)
  t = jnp.linspace(0.05, 1.0, 16)
  for k in (0.5, 1.0, 3.0):
    gen = genmd4.diffusion_integrand(
        x, z, logits, jnp.full((kd.VOCAB,), k), t, kd.VOCAB
    )
    # For alpha = 1 - t^k, -alpha' / (1 - alpha) = k / t.
    md = k / t * common.masked_cross_entropy(x, z, logits, kd.VOCAB)
    np.testing.assert_allclose(gen, md, rtol=2e-5, atol=1e-5)


@pytest.mark.slow
def test_genmd4_monte_carlo_nelbo_matches_the_exact_value():
  eps, t1 = 1e-4, 1e-4
  denoise = _genmd4_oracle(POWERS, eps)
  param = _power_param(POWERS)

  @jax.jit
  def loss_fn(rng, batch):
    terms, _ = genmd4.nelbo(
        rng, batch, denoise, param, vocab_size=kd.VOCAB, eps=eps, t1=t1
    )
    return terms["loss_nelbo"]

  for i, x in enumerate(X_CASES):
    terms, _ = genmd4.nelbo(
        jax.random.key(0),
        jnp.asarray(x)[None],
        denoise,
        param,
        vocab_size=kd.VOCAB,
        eps=eps,
        t1=t1,
    )
    exact = float(
        exact_genmd4_diff(x, jnp.asarray(POWERS), eps, t1, denoise)
        + terms["loss_recon"][0]
        + terms["loss_prior"][0]
    )
    # The bound is above -log p(x) by the uniform decoder's cost at t1.
    assert exact >= kd.neg_log_prob(x) - 1e-3  # quadrature error
    mean, se = _mc(loss_fn, x, 20000, jax.random.key(10 + i))
    assert abs(mean - exact) < 4 * se + 1e-3, (x, mean, se, exact)


@pytest.mark.slow
def test_genmd4_reinforce_gradient_is_unbiased_for_the_schedule():
  """Mean surrogate gradient = gradient of the exact expected loss_diff."""
  eps, t1 = 1e-4, 1e-3
  # A fixed (non-oracle) denoiser so the schedule enters only through q and
  # the loss weights: exactly the dependence the surrogate must capture.
  denoise = _genmd4_oracle(np.array([1.0, 1.0, 1.0], np.float32), eps)
  x = X_CASES[1]

  def exact(param):
    return exact_genmd4_diff(x, genmd4.powers(param), eps, t1, denoise)

  param = _power_param(POWERS)
  expected_grad = np.asarray(jax.grad(exact)(param))

  @jax.jit
  def surrogate_grads(rng):
    batch = jnp.tile(jnp.asarray(x)[None], (4000, 1))

    def per_example(p):
      terms, _ = genmd4.nelbo(
          rng,
          batch,
          denoise,
          p,
          vocab_size=kd.VOCAB,
          eps=eps,
          t1=t1,
          antithetic=False,
      )
      return terms["loss"] - terms["loss_recon"] - terms["loss_prior"]

    return jax.jacrev(per_example)(param)  # [N, V]

  grads = np.concatenate(
      [np.asarray(surrogate_grads(jax.random.key(s))) for s in range(5)]
  )
  mean = grads.mean(0)
  se = grads.std(0) / math.sqrt(len(grads))
  assert np.all(np.abs(mean - expected_grad) < 4 * se + 1e-3), (
      mean,
      se,
      expected_grad,
  )
  # The score-function part matters: without it the estimate is biased.
  assert np.abs(expected_grad).max() > 10 * se.max()


@pytest.mark.slow
def test_genmd4_reports_its_powers_and_the_surrogate_differs_from_the_bound():
  x = jnp.asarray(kd.sample(np.random.default_rng(1), 32))
  terms, scalars = genmd4.nelbo(
      jax.random.key(0),
      x,
      _genmd4_oracle(POWERS, 1e-4),
      _power_param(POWERS),
      vocab_size=kd.VOCAB,
  )
  assert float(scalars["power_min"]) == pytest.approx(0.5, rel=1e-5)
  assert float(scalars["power_max"]) == pytest.approx(2.5, rel=1e-5)
  assert float(scalars["power_mean"]) == pytest.approx(4.0 / 3, rel=1e-5)
  np.testing.assert_allclose(
      terms["loss_nelbo"],
      terms["loss_diff"] + terms["loss_recon"] + terms["loss_prior"],
      rtol=1e-6,
  )
  assert not np.allclose(terms["loss"], terms["loss_nelbo"])


def test_genmd4_power_initialisation_gives_power_init():
  init = genmd4.power_param_init(1.0)
  w = genmd4.powers(init(None, (5,)))
  np.testing.assert_allclose(w, 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="power_init"):
    genmd4.power_param_init(0.0)
