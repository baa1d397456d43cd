"""Masking schedules: end points, monotonicity, derivatives and weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4.diffusion import schedules

NAMES = ["linear", "cosine", "poly1", "poly3", "poly0.5", "poly1.7"]


@pytest.mark.parametrize("name", NAMES)
def test_schedule_end_points_are_one_minus_eps_and_eps(name):
  s = schedules.MaskingSchedule(name, eps=1e-3)
  assert float(s.alpha(jnp.float32(0.0))) == pytest.approx(1 - 1e-3, abs=1e-6)
  assert float(s.alpha(jnp.float32(1.0))) == pytest.approx(1e-3, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_is_decreasing_with_negative_derivative(name):
  s = schedules.MaskingSchedule(name)
  t = jnp.linspace(0.0, 1.0, 1001)
  alpha = np.asarray(s.alpha(t))
  assert np.all(np.diff(alpha) <= 0)  # float32 resolution near flat ends
  assert alpha[0] - alpha[-1] > 0.99
  assert np.all(np.asarray(s.dalpha(t[1:-1])) < 0)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_derivative_equals_autodiff_of_alpha(name):
  s = schedules.MaskingSchedule(name)
  t = jnp.linspace(0.01, 0.99, 57)
  autodiff = jax.vmap(jax.grad(s.alpha))(t)
  np.testing.assert_allclose(s.dalpha(t), autodiff, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_loss_weight_is_dalpha_over_one_minus_alpha(name):
  s = schedules.MaskingSchedule(name)
  t = jnp.linspace(0.01, 0.99, 57)
  # 1 - alpha agrees up to the float32 rounding of alpha itself.
  np.testing.assert_allclose(s.mask_prob(t), 1 - s.alpha(t), rtol=0, atol=2e-7)
  expected = s.dalpha(t) / s.mask_prob(t)
  np.testing.assert_allclose(s.loss_weight(t), expected, rtol=1e-6)
  assert np.all(np.asarray(s.loss_weight(t)) < 0)


def test_mask_probability_keeps_its_digits_near_t_zero():
  t = np.array([1e-7, 1e-5, 1e-3], np.float32)
  t64 = t.astype(np.float64)
  for name, exact in [
      ("linear", t64),
      ("cosine", np.sin(np.pi / 2 * t64)),
      ("poly3", t64**3),
      ("poly0.5", t64**0.5),
  ]:
    got = schedules.MaskingSchedule(name, eps=0.0).mask_prob(jnp.asarray(t))
    np.testing.assert_allclose(got, exact, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", NAMES)
def test_loss_weight_is_finite_from_the_smallest_time_md4_draws_to_one(name):
  # md4.time_of_draw gives times in [2**-24, 1] (float32 U[0, 1) draws).
  t = jnp.asarray(2.0 ** -np.arange(24, -1, -1), jnp.float32)  # [25]
  for eps in (0.0, 1e-4):
    weight = np.asarray(schedules.MaskingSchedule(name, eps).loss_weight(t))
    assert np.all(np.isfinite(weight)) and np.all(weight <= 0), (eps, weight)


def test_log_snr_is_log_odds_of_alpha():
  s = schedules.MaskingSchedule("cosine")
  t = jnp.linspace(0.0, 1.0, 11)
  alpha = np.asarray(s.alpha(t), np.float64)
  np.testing.assert_allclose(
      s.log_snr(t), np.log(alpha / (1 - alpha)), rtol=1e-4, atol=1e-4
  )


def test_closed_forms_of_linear_and_cosine():
  t = jnp.array([0.25, 0.5])
  lin = schedules.MaskingSchedule("linear", eps=0.0)
  np.testing.assert_allclose(lin.alpha(t), [0.75, 0.5], rtol=1e-6)
  cos = schedules.MaskingSchedule("cosine", eps=0.0)
  np.testing.assert_allclose(
      cos.alpha(t), 1 - np.cos(np.pi / 2 * (1 - t)), rtol=1e-6
  )
  poly = schedules.MaskingSchedule("poly3", eps=0.0)
  np.testing.assert_allclose(poly.alpha(t), 1 - np.asarray(t) ** 3, rtol=1e-6)


@pytest.mark.parametrize("bad", ["linea", "poly", "poly-1", "poly0", "sqrt"])
def test_unknown_schedule_names_list_the_valid_ones(bad):
  with pytest.raises(ValueError, match="linear, cosine, polyK"):
    schedules.MaskingSchedule(bad)
