"""Samplers against exact distributions, conditioning, exact draws, outputs.

Distribution tests draw N = 20,000 samples with the exact posterior denoiser
(the oracle) of the small Markov chain in `known_distribution.py` and compare
them with the distribution the sampler should produce: the known
distribution itself for the continuous-time first-hitting sampler, and for
T-step samplers the exact distribution of T reverse steps, computed by
dynamic programming over every partially masked sequence (4**5 states). Two
checks each, with false-alarm probabilities below 1e-6:

* total variation < E[TV] + sqrt(log(1e6) / 2N), E[TV] <= sum_i
  sqrt(p_i (1 - p_i) / N) / 2 (McDiarmid: one sample moves TV by <= 1/N);
* the mean log p(x) of the samples is within 5 standard errors of its exact
  expectation: a sampler whose effective temperature is lowered (the
  float32 Gumbel-max effect of Zheng et al., 2024) over-samples likely
  sequences and fails this.
"""

import dataclasses
import functools
import itertools
import json
import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import known_distribution as kd
import ml_collections
import numpy as np
from PIL import Image
import pytest
import trained_digits

from md4 import config_recipes
from md4 import configuration
from md4 import model as model_lib
from md4 import run as run_lib
from md4 import sample_writing
from md4 import sampling
from md4 import train
from md4.data import sources
from md4.data import text8
from md4.diffusion import genmd4
from md4.diffusion import masked
from md4.diffusion import schedules
from md4.sampling import ancestral
from md4.sampling import cached
from md4.sampling import known_tokens
from md4.sampling import confidence
from md4.sampling import core
from md4.sampling import drawing

pytestmark = pytest.mark.slow

NUM_SAMPLES = 20_000
SCHEDULE = schedules.MaskingSchedule("linear", 1e-4)
MASK = kd.VOCAB


# ------------------------------------------------------------ helpers -----


def oracle_reverse() -> core.Reverse:
  denoise = kd.oracle(lambda values, t: SCHEDULE.alpha(t))
  return core.from_schedule(
      lambda z, t: denoise(z, t), SCHEDULE, kd.VOCAB, (kd.LENGTH,)
  )


# GenMD4: one schedule per value, alpha_v(t) = 1 - (1 - eps) t^{w_v}.
POWERS = np.array([0.5, 1.0, 3.0])


def genmd4_alpha(t, eps=1e-4):
  """alpha_v(t) [..., V] for times t [...]."""
  return 1.0 - (1.0 - eps) * jnp.asarray(t)[..., None] ** POWERS


def genmd4_reverse() -> core.Reverse:
  def alpha_tokens(values, t):  # values [1, S, L], t [B, 1, 1]
    return genmd4_alpha(t[:, 0, 0])[:, values[0]]  # [B, S, L]

  denoise = kd.oracle(alpha_tokens)
  # softplus(power_param) = POWERS; the process forms the reveal
  # probabilities, the test's own alpha the exact target.
  power_param = jnp.log(jnp.expm1(jnp.asarray(POWERS, jnp.float32)))
  return core.Reverse(
      denoise,
      genmd4.GenMD4(kd.VOCAB, (kd.LENGTH,)),
      {"power_param": power_param},
  )


def known_probs() -> np.ndarray:
  p = np.exp(kd.log_probs(kd.all_states()))
  return p / p.sum()


@functools.lru_cache(maxsize=None)
def step_distribution(
    num_steps: int,
    remask_strength: float = 0.0,
    genmd4: bool = False,
    grid: str = "uniform",
):
  """Exact distribution over all_states() of T reverse steps and the fill.

  From each of the 4**L partially masked sequences, a masked token is
  revealed as v with probability p_v mu_v (p_v the same for every v in MD4)
  and a revealed one is masked again with probability sigma (ReMDM; 0
  otherwise), independently per position.
  """
  partial = np.array(
      list(itertools.product(range(MASK + 1), repeat=kd.LENGTH))
  )  # [S', L]
  if genmd4:
    reverse = genmd4_reverse()
    denoise = jax.jit(reverse.denoise)
    alpha = lambda t: np.asarray(genmd4_alpha(np.float32(t)), np.float64)
  else:
    denoise = jax.jit(kd.oracle(lambda values, t: SCHEDULE.alpha(t)))
    alpha = lambda t: float(SCHEDULE.alpha(np.float32(t)))
  times = core.grid_times(num_steps, grid).astype(np.float64)
  masked = partial == MASK  # [S', L]

  def transition(t, reveal, sigma):
    logits = denoise(
        jnp.asarray(partial), jnp.full((len(partial),), t, jnp.float32)
    )
    mu = np.exp(np.asarray(logits, np.float64))
    mu /= mu.sum(-1, keepdims=True)  # [S', L, V]
    # GenMD4 at t = 0: a masked token is impossible (alpha_v(0) = 1), so the
    # oracle is undefined there; those states have probability 0.
    mu = np.nan_to_num(mu)
    factor = np.zeros(partial.shape + (MASK + 1,))  # [S', L, V + 1]
    factor[..., :MASK] = np.where(
        masked[..., None],
        reveal * mu,
        (1 - sigma) * np.eye(MASK + 1)[partial][..., :MASK],
    )
    stay = 1 - (reveal * mu).sum(-1)  # [S', L]
    factor[..., MASK] = np.where(masked, stay, sigma)
    # [S', S', L]: the factor of position j for target state s'.
    per_position = factor[:, np.arange(kd.LENGTH)[None, :], partial]
    return per_position.prod(-1)  # [S', S']

  dist = np.zeros(len(partial))
  dist[-1] = 1.0  # Everything masked.
  for i in range(num_steps):
    a_t, a_s = alpha(times[i]), alpha(times[i + 1])
    sigma = (
        remask_strength * min(1.0, (1 - a_s) / a_t) if remask_strength else 0.0
    )
    reveal = (a_s - (1 - sigma) * a_t) / (1 - a_t)
    dist = dist @ transition(times[i], reveal, sigma)
  dist = dist @ transition(0.0, 1.0, 0.0)
  index = {tuple(s): i for i, s in enumerate(partial)}
  return np.array([dist[index[tuple(s)]] for s in kd.all_states()])


def state_indices(samples: np.ndarray) -> np.ndarray:
  """Index of each sample in all_states() (base-V digits)."""
  return (samples * kd.VOCAB ** np.arange(kd.LENGTH - 1, -1, -1)).sum(-1)


def assert_matches(samples: np.ndarray, target: np.ndarray) -> None:
  """TV and temperature checks of samples [N, L] against target [S]."""
  n = len(samples)
  counts = np.bincount(state_indices(samples), minlength=len(target))
  tv = 0.5 * np.abs(counts / n - target).sum()
  bound = 0.5 * np.sqrt(target * (1 - target) / n).sum() + math.sqrt(
      math.log(1e6) / (2 * n)
  )
  assert tv < bound, f"total variation {tv:.4f} >= bound {bound:.4f}"
  log_p = kd.log_probs(kd.all_states())  # [S]
  expected = (target * log_p).sum()
  se = math.sqrt((target * (log_p - expected) ** 2).sum() / n)
  mean = log_p[state_indices(samples)].mean()
  assert (
      abs(mean - expected) < 5 * se
  ), f"mean log p {mean:.4f} vs expected {expected:.4f} (se {se:.4f})"


def draw(
    name: str,
    settings: core.Settings,
    known=None,
    seed: int = 0,
    num_samples: int = NUM_SAMPLES,
    reverse=None,
    **own,
) -> core.Result:
  """The named sampler, with the grid settings and its own (`own`)."""
  reverse = reverse or oracle_reverse()
  entry = sampling.get(name)
  settings = entry.make_settings(**dataclasses.asdict(settings), **own)
  fn = jax.jit(lambda r: entry.draw(reverse, r, num_samples, settings, known))
  return jax.device_get(fn(jax.random.key(seed)))


# ------------------------------------------------ exact distributions -----


@pytest.mark.parametrize("name", ["ancestral", "mean", "cached"])
def test_sampler_matches_the_exact_distribution_of_its_steps(name):
  result = draw(name, core.Settings(num_steps=20))
  assert_matches(np.asarray(result.samples), step_distribution(20))


@pytest.mark.parametrize("name", ["ancestral", "cached"])
def test_sampler_on_the_cosine_grid_matches_the_exact_distribution(name):
  result = draw(name, core.Settings(num_steps=8, grid="cosine"), seed=9)
  target = step_distribution(8, grid="cosine")
  assert 0.5 * np.abs(target - step_distribution(8)).sum() > 0.01
  assert_matches(np.asarray(result.samples), target)


@pytest.mark.parametrize("name", ["ancestral", "mean"])
def test_genmd4_sampler_matches_the_exact_distribution_of_its_steps(name):
  result = draw(
      name, core.Settings(num_steps=20), seed=8, reverse=genmd4_reverse()
  )
  target = step_distribution(20, genmd4=True)
  assert 0.5 * np.abs(target - step_distribution(20)).sum() > 0.01
  assert_matches(np.asarray(result.samples), target)


def test_remask_sampler_matches_the_exact_distribution_of_its_steps():
  settings = core.Settings(num_steps=20)
  result = draw("remask", settings, seed=1, remask_strength=0.5)
  target = step_distribution(20, remask_strength=0.5)
  assert 0.5 * np.abs(target - step_distribution(20)).sum() > 0.01
  assert_matches(np.asarray(result.samples), target)


def test_first_hitting_sampler_matches_the_known_distribution():
  result = draw("first_hitting", core.Settings(), seed=2)
  assert int(result.network_calls) == kd.LENGTH
  assert_matches(np.asarray(result.samples), known_probs())


def test_step_distribution_approaches_the_known_distribution_as_steps_grow():
  p = known_probs()
  tvs = [0.5 * np.abs(step_distribution(t) - p).sum() for t in (5, 20, 40)]
  assert tvs[0] > tvs[1] > tvs[2]
  assert tvs[2] < 0.02


def test_first_hitting_infilling_matches_the_known_conditional_distribution():
  states = kd.all_states()
  given = np.zeros((NUM_SAMPLES, kd.LENGTH), bool)
  given[:, [0, 3]] = True
  tokens = np.zeros((NUM_SAMPLES, kd.LENGTH), np.int32)
  tokens[:, 0], tokens[:, 3] = 1, 2
  known = core.Known(jnp.asarray(given), jnp.asarray(tokens))
  result = draw("first_hitting", core.Settings(), known=known, seed=3)
  samples = np.asarray(result.samples)
  assert (samples[:, 0] == 1).all() and (samples[:, 3] == 2).all()
  conditional = known_probs() * ((states[:, 0] == 1) & (states[:, 3] == 2))
  assert int(result.network_calls) == kd.LENGTH - 2
  assert_matches(samples, conditional / conditional.sum())


# ------------------------------------------- starting below t = 1 -----


# The samplers of an MD4 model (every unmasking one).
MD4_SAMPLERS = sampling.names_for(masked.MD4(kd.VOCAB, (kd.LENGTH,)))


@pytest.mark.parametrize("name", MD4_SAMPLERS)
def test_sampler_started_at_t_reveals_nothing_before_t_then_follows_alpha(name):
  rng = np.random.default_rng(1)
  given = rng.random((2000, kd.LENGTH)) < 0.4
  tokens = rng.integers(0, kd.VOCAB, given.shape).astype(np.int32)
  known = core.Known(jnp.asarray(given), jnp.asarray(tokens))
  # Frames at tau = 1, .75, .5, .25, 0; the process starts at t = 0.6.
  settings = core.Settings(num_steps=7, num_frames=5, start_time=0.6)
  history = np.asarray(
      draw(name, settings, known=known, num_samples=2000, seed=4).history
  )
  start = np.where(given, tokens, MASK)
  np.testing.assert_array_equal(history[1], start)
  if name != "remask":  # ReMDM started below 1 masks a little more.
    # Frame tau = 0.25 is the state after the last step ending at s >= 0.25;
    # (1 - alpha(s)) / (1 - alpha(0.6)) of the unknown tokens are masked.
    ends = core.sampler_times(settings)[1:]
    s = ends[ends >= 0.25].min()
    expected = (1.0 - SCHEDULE.alpha(s)) / (1.0 - SCHEDULE.alpha(0.6))
    still = (history[3][~given] == MASK).mean()
    assert abs(still - expected) < 0.05, (still, expected)
  assert not (history[-1] == MASK).any()


def test_sampler_times_scale_the_grid_to_the_start_time():
  settings = core.Settings(num_steps=4, grid="cosine", start_time=0.5)
  np.testing.assert_allclose(
      core.sampler_times(settings),
      0.5 * core.grid_times(4, "cosine"),
      rtol=1e-6,
  )
  with pytest.raises(
      ValueError, match=r"--reconstruct_t=0.0 must be in \(0, 1\]"
  ):
    core.Settings(start_time=0.0).validate()


def test_genmd4_keep_probability_is_alpha_of_each_tokens_value():
  config = configuration.default_config()
  config.data.dataset, config.data.data_shape = "text8", (8,)
  config.data.vocab_size = 5
  config.network = config_recipes.transformer("tiny", dropout_rate=0.0)
  config.model.process, config.model.genmd4.power_init = "genmd4", 2.0
  model = model_lib.build_model(config)
  variables = model_lib.init_variables(model, jax.random.key(0))
  params = jax.tree.map(lambda w: w, variables["params"])
  params["power_param"] = jnp.arange(5.0) - 2.0
  reverse = core.from_model(model, {"params": params})
  x = jnp.asarray(np.random.default_rng(0).integers(0, 5, (3, 8)), jnp.int32)
  t = jnp.array([0.2, 0.5, 0.9])
  w = jax.nn.softplus(params["power_param"])[x]  # [3, 8]
  expected = 1.0 - (1.0 - config.model.genmd4.eps) * t[:, None] ** w
  np.testing.assert_allclose(
      reverse.keep_probability(x, t), expected, rtol=1e-5
  )


# ------------------------------------------------------- fewer calls ------


def time_agnostic_model(vocab_size=7, length=32):
  config = configuration.default_config()
  config.data.dataset = "text8"
  config.data.data_shape = (length,)
  config.data.vocab_size = vocab_size
  config.network = config_recipes.transformer("tiny", dropout_rate=0.0)
  config.network.time_features = "none"
  model = model_lib.build_model(config)
  params = jax.jit(lambda r: model_lib.init_variables(model, r))(
      jax.random.key(0)
  )["params"]
  # Sharper than at init, so the draws depend on the context.
  params = jax.tree.map(lambda w: 3.0 * w, params)
  return model, params


def test_cached_sampler_returns_the_uncached_samples_when_the_model_ignores_time():
  model, params = time_agnostic_model()
  reverse = core.from_model(model, {"params": params})
  settings = core.Settings(num_steps=200)
  runs = {}
  for skip in (True, False):
    fn = jax.jit(
        lambda r, skip=skip: cached.sample_cached(
            reverse, r, 4, settings, skip=skip
        )
    )
    runs[skip] = jax.device_get(fn(jax.random.key(4)))
  np.testing.assert_array_equal(runs[True].samples, runs[False].samples)
  assert int(runs[False].network_calls) == 201
  assert int(runs[True].network_calls) <= 33  # distinct reveal steps + fill
  assert len(np.unique(np.asarray(runs[True].samples))) > 1


def test_cached_sampler_skips_only_unused_calls_of_a_time_conditioned_model():
  reverse = oracle_reverse()
  settings = core.Settings(num_steps=100)
  results = [
      jax.device_get(
          jax.jit(
              lambda r, skip=skip: cached.sample_cached(
                  reverse, r, 500, settings, skip=skip
              )
          )(jax.random.key(5))
      )
      for skip in (True, False)
  ]
  np.testing.assert_array_equal(results[0].samples, results[1].samples)
  assert int(results[0].network_calls) <= kd.LENGTH + 1 < 101


def test_cached_and_first_hitting_samplers_report_far_fewer_network_calls():
  vocab_size, length = 4, 64
  reverse = core.from_schedule(
      lambda z, t: jnp.zeros(z.shape + (vocab_size,)),
      SCHEDULE,
      vocab_size,
      (length,),
  )
  settings = core.Settings(num_steps=1000)
  calls = {
      name: int(
          draw(name, settings, num_samples=4, reverse=reverse).network_calls
      )
      for name in ("ancestral", "cached", "first_hitting")
  }
  assert calls["ancestral"] == 1001
  assert calls["first_hitting"] == length
  assert calls["cached"] <= length + 1
  assert calls["ancestral"] >= 5 * calls["cached"]


# --------------------------------------------- training-time samples ----


def test_training_samples_are_the_configured_sampler_on_the_configured_grid():
  model, params = time_agnostic_model()
  config = configuration.default_config()
  config.train.sampler, config.train.sampling_grid = "confidence", "cosine"
  config.train.sample_steps, config.train.num_samples = 6, 4
  configuration.validate(config)
  rng = jax.random.key(3)
  got = jax.jit(lambda p, r: train._draw_samples(model, p, r, config))(
      params, rng
  )

  def direct(name, grid):
    reverse = core.from_model(model, {"params": params})
    settings = sampling.get(name).make_settings(num_steps=6, grid=grid)
    return jax.jit(lambda r: sampling.get(name).draw(reverse, r, 4, settings))(
        rng
    ).samples

  np.testing.assert_array_equal(got, direct("confidence", "cosine"))
  # The same key gives other samples with another sampler or grid.
  assert (np.asarray(got) != direct("ancestral", "cosine")).any()
  assert (np.asarray(got) != direct("confidence", "uniform")).any()


def test_training_samples_of_a_class_conditional_model_cycle_the_labels():
  num_classes, vocab_size = 3, 5
  model = model_lib.DiffusionModel(
      LabelTable(vocab_size, num_classes),
      masked.MD4(vocab_size, (6,)),
      num_classes=num_classes,
  )
  # Class c always predicts value c; "no label" (row 3) predicts value 4.
  table = 50.0 * jax.nn.one_hot([0, 1, 2, 4], vocab_size)
  params = {"network": {"table": table}}
  config = configuration.default_config()
  config.train.sample_steps, config.train.num_samples = 4, 7
  samples = np.asarray(
      jax.jit(lambda p, r: train._draw_samples(model, p, r, config))(
          params, jax.random.key(0)
      )
  )
  expected = np.arange(7)[:, None] % num_classes
  np.testing.assert_array_equal(samples, np.broadcast_to(expected, (7, 6)))


# -------------------------------------------------------- conditioning ----


@pytest.mark.parametrize("name", MD4_SAMPLERS)
def test_prompt_and_inpainting_never_change_the_given_tokens(name):
  rng = np.random.default_rng(0)
  given = rng.random((64, kd.LENGTH)) < 0.4
  tokens = rng.integers(0, kd.VOCAB, (64, kd.LENGTH)).astype(np.int32)
  known = core.Known(jnp.asarray(given), jnp.asarray(tokens))
  settings = core.Settings(num_steps=8, num_frames=5)
  own = {"remask_strength": 0.9} if name == "remask" else {}
  result = draw(name, settings, known=known, num_samples=64, **own)
  samples, history = np.asarray(result.samples), np.asarray(result.history)
  np.testing.assert_array_equal(samples[given], tokens[given])
  assert ((samples >= 0) & (samples < kd.VOCAB)).all()
  for frame in history:
    np.testing.assert_array_equal(frame[given], tokens[given])
  assert (history[0][~given] == MASK).all()
  np.testing.assert_array_equal(history[-1], samples)


def abc_encoder(text):
  return np.array(["abc".index(c) for c in text], np.int32)


def test_infill_template_places_spans_and_stretches_the_star_gap():
  known = known_tokens.text_known("a[2]cb", abc_encoder, 8, 3)
  np.testing.assert_array_equal(known.mask[0], [1, 0, 0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(known.tokens[2][known.mask[2]], [0, 2, 1])
  known = known_tokens.text_known("ab[*]c", abc_encoder, 8, 1)
  np.testing.assert_array_equal(known.mask[0], [1, 1, 0, 0, 0, 0, 0, 1])
  np.testing.assert_array_equal(known.tokens[0][[0, 1, 7]], [0, 1, 2])
  prefix = known_tokens.text_known("ba", abc_encoder, 8, 1)
  np.testing.assert_array_equal(prefix.mask[0], [1, 1, 0, 0, 0, 0, 0, 0])
  with pytest.raises(ValueError, match="needs 9 tokens but sequences have 8"):
    known_tokens.text_known("abc[6]", abc_encoder, 8, 1)
  with pytest.raises(ValueError, match="at most one can stretch"):
    known_tokens.text_known("a[*]b[*]", abc_encoder, 8, 1)


def test_character_encoder_inverts_a_character_decoder():
  tokenizer = text8.Tokenizer()
  info = sources.DataInfo((16,), 27, 0, "text", decode=tokenizer.decode)
  encode = known_tokens.encoder(info, "text8")
  ids = encode("the cat")
  np.testing.assert_array_equal(ids, tokenizer.encode("the cat"))
  assert tokenizer.decode(ids) == "the cat"
  with pytest.raises(ValueError, match="outside the data set's alphabet"):
    encode("The Cat")
  no_decoder = sources.DataInfo((16,), 50, 0, "text")
  with pytest.raises(ValueError, match="gives no encoder"):
    known_tokens.encoder(no_decoder, "tokens")


def test_image_masks_name_the_known_region_and_read_pngs(tmp_path):
  top = known_tokens.pixel_mask("top", 8, 8)
  assert top[:4].all() and not top[4:].any()
  border = known_tokens.pixel_mask("border", 8, 8)
  assert border[0].all() and not border[2:6, 2:6].any()
  png = np.zeros((16, 16), np.uint8)
  png[:, :8] = 255
  Image.fromarray(png).save(tmp_path / "mask.png")
  from_png = known_tokens.pixel_mask(str(tmp_path / "mask.png"), 8, 8)
  np.testing.assert_array_equal(from_png, known_tokens.pixel_mask("left", 8, 8))
  with pytest.raises(ValueError, match="neither a region"):
    known_tokens.pixel_mask("middle", 8, 8)


# ----------------------------------------------------- sampler details ----


def test_cosine_grid_is_the_references_fine_near_t_equal_one():
  # The reference's t = sin(pi u / 2) on u = 1, 7/8, ..., 0 (MaskGIT's order):
  # [1, .981, .924, .832, .707, .556, .383, .195, 0].
  expected = np.sin(0.5 * np.pi * np.arange(8, -1, -1) / 8)
  np.testing.assert_allclose(core.grid_times(8, "cosine"), expected, atol=1e-6)
  np.testing.assert_allclose(
      core.grid_times(8, "cosine")[[1, 4, 7]], [0.981, 0.707, 0.195], atol=5e-4
  )
  steps = -np.diff(core.grid_times(8, "cosine"))
  assert (np.diff(steps) > 0).all()  # finest steps first, near t = 1
  np.testing.assert_allclose(core.grid_times(8), np.linspace(1, 0, 9))


def test_nucleus_keeps_the_smallest_set_of_values_reaching_topp():
  log_mu = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.exp(np.asarray(ancestral.nucleus(log_mu, 0.8)))[0]
  np.testing.assert_allclose(kept, [0.625, 0.375, 0.0, 0.0], rtol=1e-6)
  kept = np.exp(np.asarray(ancestral.nucleus(log_mu, 0.81)))[0]
  assert (kept > 0).sum() == 3
  np.testing.assert_allclose(ancestral.nucleus(log_mu, 1.0), log_mu)


def test_confidence_step_reveals_the_most_confident_masked_tokens():
  length = 8
  # Position j predicts value 0 with probability 1 - 10**-(j + 1).
  p_other = 10.0 ** -(np.arange(length) + 1.0)
  log_mu = jnp.log(jnp.stack([1 - p_other, p_other], -1))[None]  # [1, L, 2]
  reverse = core.from_schedule(lambda z, t: log_mu, SCHEDULE, 2, (length,))
  z = jnp.full((1, length), 2, jnp.int32)
  step = core.Step(
      jax.random.key(0),
      jnp.int32(0),
      4,
      z,
      log_mu,
      jnp.ones(1),
      jnp.full((1,), 0.75),
      core.no_known(1, (length,)),
  )
  out = np.asarray(confidence.confidence_step(reverse, step, 0.0))[0]
  # round(8 * masked_fraction(0.75)) = 6 stay masked: the 2 most confident go.
  np.testing.assert_array_equal(out, [2, 2, 2, 2, 2, 2, 0, 0])


def test_samplers_needing_an_md4_schedule_reject_genmd4_with_the_fix():
  process = genmd4.GenMD4(3, (5,))
  reverse = core.Reverse(lambda z, t: z, process, {"power_param": jnp.zeros(3)})
  for name in ("cached", "first_hitting", "remask"):
    entry = sampling.get(name)
    reason = entry.reason_not_applicable(process)
    assert re.search(
        f"--sampler={name} needs a process with the "
        "'value_independent' capability.*Use --sampler="
        "ancestral",
        reason,
    ), reason
    with pytest.raises(ValueError, match="'value_independent' capability"):
      entry.draw(reverse, jax.random.key(0), 2, entry.settings())
  assert sampling.names_for(process) == (
      "ancestral",
      "topp",
      "mean",
      "confidence",
  )
  with pytest.raises(ValueError, match="valid: ancestral, topp"):
    sampling.get("beam")


def test_label_and_guidance_are_checked_against_the_model():
  config = trained_digits.digits_config()
  plain = model_lib.build_model(config, num_classes=10)
  with pytest.raises(ValueError, match="--label=3 but the model is not"):
    core.from_model(plain, None, label=3)
  config.model.class_conditional = True
  conditional = model_lib.build_model(config, num_classes=10)
  with pytest.raises(ValueError, match="--guidance=2.0 needs --label"):
    core.from_model(conditional, None, guidance=2.0)
  with pytest.raises(ValueError, match=r"--label must be in \[0, 10\)"):
    core.from_model(conditional, None, label=10)


class LabelTable(nn.Module):
  """A rigged class-conditional denoiser: logits = table[label], per token."""

  vocab_size: int
  num_classes: int

  @nn.compact
  def __call__(self, z, t, label, train=False):
    del t, train
    table = self.param(
        "table",
        nn.initializers.normal(1.0),
        (self.num_classes + 1, self.vocab_size),
    )
    return jnp.broadcast_to(
        table[label][:, None, :], z.shape + (self.vocab_size,)
    )


def test_guided_logits_extrapolate_from_unconditional_to_conditional():
  model = model_lib.DiffusionModel(
      LabelTable(5, 10), masked.MD4(5, (4,)), num_classes=10
  )
  variables = model.init(
      jax.random.key(0),
      jnp.zeros((2, 4), jnp.int32),
      jnp.zeros((2,), jnp.int32),
  )
  z, t = jnp.full((2, 4), 5, jnp.int32), jnp.full((2,), 0.5)
  table = variables["params"]["network"]["table"]
  cond = jax.nn.log_softmax(table[3])
  uncond = jax.nn.log_softmax(table[10])  # the "no label" row
  guided = core.from_model(model, variables, label=3, guidance=1.5)
  expected = jnp.broadcast_to(2.5 * cond - 1.5 * uncond, (2, 4, 5))
  np.testing.assert_allclose(
      guided.denoise(z, t), expected, rtol=1e-5, atol=1e-5
  )
  plain = core.from_model(model, variables, label=3)
  np.testing.assert_allclose(
      jax.nn.log_softmax(plain.denoise(z, t)),
      jnp.broadcast_to(cond, (2, 4, 5)),
      atol=1e-5,
  )


# --------------------------------------------------------- exact draws ----


def test_uniform_keeps_resolving_values_far_below_float32_spacing():
  rng = np.random.default_rng(0)
  n = 100_000
  # Bits whose top 24 are zero: the event u < 2**-24 of a 24-bit uniform.
  high = jnp.asarray(rng.integers(0, 256, n, dtype=np.uint32))
  low = jnp.asarray(rng.integers(0, 2**32, n, dtype=np.uint32))
  u = np.sort(np.asarray(core.uniform_from_bits(high, low), np.float64))
  scaled = u * 2.0**24  # should be U[0, 1)
  # float32 keeps 24 significant bits here: ~2**24 values, a few collide.
  assert scaled.max() < 1.0 and len(np.unique(u)) > 0.99 * n
  ks = np.abs(scaled - np.arange(1, n + 1) / n).max()
  assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov, p ~ 0.01
  assert u[0] < 1e-12
  # jax's float32 uniform has 23 bits: all such draws would be exactly 0.
  plain = np.asarray(jax.random.uniform(jax.random.key(0), (n,)), np.float64)
  np.testing.assert_array_equal(plain * 2**23, np.round(plain * 2**23))


def test_categorical_matches_a_distribution_spanning_four_decades():
  probs = np.array([0.5, 0.3, 0.19, 0.0089, 1e-3, 1e-4])
  probs /= probs.sum()
  n = 2_000_000
  draws = jax.jit(
      lambda r: core.categorical(
          r,
          jnp.broadcast_to(
              jnp.log(jnp.asarray(probs, jnp.float32)), (n, len(probs))
          ),
      )
  )(jax.random.key(7))
  counts = np.bincount(np.asarray(draws), minlength=len(probs))
  expected = n * probs
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 30.0  # chi-square, 5 degrees of freedom: p ~ 1.5e-5
  assert abs(counts[-1] - expected[-1]) < 5 * math.sqrt(expected[-1])


def test_categorical_never_draws_impossible_outcomes():
  log_probs = jnp.log(jnp.array([0.0, 1e-30, 1.0], jnp.float32))
  draws = np.asarray(
      core.categorical(
          jax.random.key(0), jnp.broadcast_to(log_probs, (1_000_000, 3))
      )
  )
  assert (draws == 2).mean() > 0.999999 and (draws != 0).all()
  single = jnp.array([[-jnp.inf, -jnp.inf, 3.0, -jnp.inf]] * 1000)
  assert (np.asarray(core.categorical(jax.random.key(1), single)) == 2).all()


# ------------------------------------------------------------- outputs ----


def test_draw_gives_each_sample_its_own_label_across_batches():
  model = model_lib.DiffusionModel(
      LabelTable(5, 3), masked.MD4(5, (4,)), num_classes=3
  )
  params = {"network": {"table": 50.0 * jax.nn.one_hot([0, 1, 2, 4], 5)}}
  labels = np.array([2, 0, 1, 1, 2])
  drawn = drawing.draw(
      model,
      params,
      "ancestral",
      core.Settings(num_steps=3),
      num_samples=5,
      batch_size=2,
      seed=0,
      label=labels,
  )
  np.testing.assert_array_equal(
      drawn.samples, np.broadcast_to(labels[:, None], (5, 4))
  )


def test_text_samples_are_written_as_txt_and_jsonl_that_decode(tmp_path):
  tokenizer = text8.Tokenizer()
  info = sources.DataInfo(
      (12,), 27, 0, "text", decode=tokenizer.decode, encode=tokenizer.encode
  )
  known = known_tokens.text_known(
      "the[*]end", known_tokens.encoder(info, "text8"), 12, 3
  )
  samples = np.where(
      known.mask,
      known.tokens,
      np.random.default_rng(0).integers(0, 27, (3, 12)),
  )
  paths = sample_writing.write_sample_files(
      str(tmp_path), samples, info, known=known, prompt="the[*]end"
  )
  with open(os.path.join(tmp_path, "samples.txt")) as f:
    paragraphs = f.read().strip("\n").split("\n\n")
  with open(os.path.join(tmp_path, "samples.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(paragraphs) == len(records) == 3 and len(paths) == 3
  for i, record in enumerate(records):
    assert record["text"] == paragraphs[i] == tokenizer.decode(samples[i])
    assert record["text"].startswith("the") and record["text"].endswith("end")
    assert record["tokens"] == samples[i].tolist()
    assert record["prompt"] == "the[*]end"
  history = np.stack([np.where(known.mask, known.tokens, 27), samples])
  gif, strip = sample_writing.write_history(str(tmp_path), history, info)
  with Image.open(gif) as image:
    assert image.n_frames == 2
  assert Image.open(strip).size[1] > Image.open(gif).size[1]


def test_training_saves_its_config_and_overrides_are_checked():
  workdir, _ = trained_digits.trained_run()
  config = run_lib.load_config(
      workdir, ["data.data_dir=/elsewhere", "train.eval_batch_size=50"]
  )
  assert config.data.data_shape == (8, 8, 1)
  assert config.data.data_dir == "/elsewhere"
  assert config.train.eval_batch_size == 50
  assert isinstance(config.network, ml_collections.ConfigDict)
  with pytest.raises(ValueError, match="Did you mean 'train.num_steps'"):
    run_lib.load_config(workdir, ["train.num_step=3"])
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    run_lib.load_config(os.path.dirname(workdir))
