"""Block diffusion (BD3-LM): its mask, its bound at the two ends (block size
L is MD4, block size 1 is autoregressive), its tightness with the exact
posterior, its KV-cached sampler, and a run trained, evaluated and sampled
by md4's own commands."""

import itertools
import json
import os

import text_runs
import jax
import jax.numpy as jnp
import known_distribution as kd
import numpy as np
import pytest

from md4 import config_recipes
from md4 import configuration
from md4 import evaluate
from md4 import model as model_lib
from md4 import run as run_lib
from md4 import sample as sample_command
from md4 import sampling
from md4.diffusion import block_diffusion
from md4.networks import block_attention
from md4.sampling import core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BD_TEXT8 = os.path.join(ROOT, "configs", "block_diffusion", "text8.py")
MD4_TEXT8 = os.path.join(ROOT, "configs", "md4", "text8.py")


def tiny_config(block_size: int, length: int = 16, path: str = BD_TEXT8):
  config = config_recipes.load_file(path, "tiny")
  config.data.data_shape = (length,)
  if config.model.process == "block_diffusion":
    config.model.block_diffusion.block_size = block_size
  return config


random_variables = text_runs.random_variables


# --------------------------------------------------------------- mask -----


@pytest.mark.parametrize("length,block", [(8, 1), (8, 2), (8, 4), (8, 8)])
def test_training_mask_equals_the_papers_mask_built_by_loops(length, block):
  expected = np.zeros((2 * length, 2 * length), bool)
  for q in range(2 * length):
    for k in range(2 * length):
      q_clean, k_clean = q >= length, k >= length
      q_block, k_block = (q % length) // block, (k % length) // block
      if not q_clean and not k_clean:  # noised sees its own block
        expected[q, k] = q_block == k_block
      elif not q_clean and k_clean:  # and the clean blocks before it
        expected[q, k] = k_block < q_block
      elif q_clean and k_clean:  # clean: block-causal
        expected[q, k] = k_block <= q_block
  np.testing.assert_array_equal(
      block_attention.training_mask(length, block), expected
  )


def test_a_block_size_that_does_not_divide_the_length_is_refused():
  config = tiny_config(block_size=4, length=16)
  config.model.block_diffusion.block_size = 5
  with pytest.raises(
      ValueError,
      match=r"block_diffusion.block_size=5 must divide the sequence length 16"
      r".*valid block sizes: 1, 2, 4, 8, 16",
  ):
    configuration.validate(config)
  config = tiny_config(block_size=4)
  config.network.time_features = "t"
  with pytest.raises(ValueError, match="time_features='none'"):
    configuration.validate(config)


# ---------------------------------------------------------- the bound -----


@pytest.mark.parametrize("given_times", [False, True])
def test_block_size_l_is_md4s_bound_draw_for_draw(given_times):
  length = 16
  bd_config = tiny_config(block_size=length, length=length)
  md4_config = tiny_config(0, length, MD4_TEXT8)
  md4_config.network.time_features = "none"
  bd, md4 = (model_lib.build_model(c) for c in (bd_config, md4_config))
  variables = random_variables(bd)
  x = jax.random.randint(jax.random.key(3), (4, length), 0, 27)
  t = jnp.array([0.1, 0.4, 0.7, 0.95]) if given_times else None
  rngs = {"sample": jax.random.key(4)}
  ours, _ = bd.apply(variables, x, rngs=rngs, t=t)
  theirs, _ = md4.apply(variables, x, rngs=rngs, t=t)
  for name in ("loss", "loss_diff", "loss_prior", "loss_recon"):
    np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5)
  assert float(ours["loss_diff"].min()) > 0  # Something was masked.


def test_block_size_1_fully_masked_is_the_autoregressive_nll():
  """u = 0 gives t = 1: with eps = 0 every token is masked and weighted by
  1, and prior and reconstruction vanish, so the bound is sum_i -log
  p(x_i | x_<i), computed here token by token through the KV cache."""
  length, vocab = 12, 27
  config = tiny_config(block_size=1, length=length)
  config.model.block_diffusion.eps = 0.0
  model = model_lib.build_model(config)
  variables = random_variables(model, seed=2)
  x = jax.random.randint(jax.random.key(5), (3, length), 0, vocab)
  network = core.from_model(model, variables).network

  def denoise(z, t, label, factored=False, **inputs):
    del label, factored
    return network(z, t, **inputs)

  terms, _ = model.process.nelbo_of_draws(
      jax.random.key(6), x, jnp.zeros((3, length)), denoise
  )
  mask = jnp.full((3, 1), vocab, jnp.int32)
  time = jnp.zeros((3,))
  cache = {}
  expected = np.zeros(3)
  for i in range(length):
    logits, _ = network(mask, time, cache=cache, start=i)
    log_p = jax.nn.log_softmax(np.asarray(logits, np.float64)[:, 0], -1)
    expected -= np.take_along_axis(log_p, np.asarray(x)[:, i : i + 1], -1)[:, 0]
    _, kv = network(x[:, i : i + 1], time, cache=cache, start=i)
    cache = (
        kv
        if i == 0
        else {n: jnp.concatenate([cache[n], kv[n]], axis=2) for n in kv}
    )
  np.testing.assert_allclose(terms["loss"], expected, rtol=2e-5)
  np.testing.assert_allclose(terms["loss_prior"] + terms["loss_recon"], 0.0)


# Exact posterior on a 4-token Markov chain (the known distribution's chain),
# blocks of 2.
LENGTH, BLOCK = 4, 2


def chain_states():
  states = np.array(
      list(itertools.product(range(kd.VOCAB), repeat=LENGTH)), np.int32
  )
  log_p = np.log(kd.INITIAL[states[:, 0]])
  for i in range(1, LENGTH):
    log_p += np.log(kd.TRANSITION[states[:, i - 1], states[:, i]])
  return states, log_p


def block_oracle(z, t, label=None, factored=False, clean=None, block_size=None):
  """p(x_i = v | noised block, clean blocks before it), by enumeration."""
  del t, label, factored
  states, log_p = chain_states()
  states, log_p = jnp.asarray(states), jnp.asarray(log_p, jnp.float32)
  out = []
  for k in range(LENGTH // block_size):
    before = slice(0, k * block_size)
    here = slice(k * block_size, (k + 1) * block_size)
    agrees_before = jnp.all(
        clean[:, None, before] == states[None, :, before], -1
    )  # [B, S]
    seen = z[:, None, here]
    agrees_here = jnp.all(
        (seen == kd.VOCAB) | (seen == states[None, :, here]), -1
    )
    post = jax.nn.softmax(
        jnp.where(agrees_before & agrees_here, log_p[None], -jnp.inf), -1
    )  # [B, S]
    one_hot = jax.nn.one_hot(states[:, here], kd.VOCAB)  # [S, b, V]
    out.append(jnp.einsum("bs,siv->biv", post, one_hot))
  return jnp.log(jnp.maximum(jnp.concatenate(out, 1), 1e-30))


def exact_expected_bound(x, nodes=40):
  """sum_k int_0^1 (1/t) E_mask[CE of block k] dt for alpha = 1 - t, with
  the exact posterior written out in NumPy (eps = 0: no end terms)."""
  states, log_p = chain_states()
  t_nodes, weights = kd.gauss_legendre(0.0, 1.0, nodes)
  total = 0.0
  for k in range(LENGTH // BLOCK):
    lo, hi = k * BLOCK, (k + 1) * BLOCK
    prefix = np.all(states[:, :lo] == x[:lo], -1)
    for pattern in itertools.product([False, True], repeat=BLOCK):
      masked = np.array(pattern)
      if not masked.any():
        continue
      visible = np.all((states[:, lo:hi] == x[lo:hi]) | masked[None], -1)
      post = np.where(prefix & visible, np.exp(log_p), 0.0)
      post /= post.sum()
      ce = 0.0
      for i in np.nonzero(masked)[0]:
        ce -= np.log(post[states[:, lo + i] == x[lo + i]].sum())
      m = masked.sum()
      # P(pattern | t) / t = t^(m - 1) (1 - t)^(b - m), m >= 1.
      density = t_nodes ** (m - 1) * (1 - t_nodes) ** (BLOCK - m)
      total += ce * float((weights * density).sum())
  return total


@pytest.mark.parametrize("x", [[0, 0, 0, 0], [0, 1, 2, 1], [2, 2, 1, 0]])
def test_the_bound_is_tight_with_the_exact_posterior(x):
  x = np.array(x)
  states, log_p = chain_states()
  neg_log_p = -log_p[np.all(states == x, -1)][0]
  exact = exact_expected_bound(x)
  assert exact == pytest.approx(neg_log_p, abs=1e-6)
  # The process's Monte-Carlo estimate with the oracle, unbiased around it.
  process = block_diffusion.BlockDiffusion(
      vocab_size=kd.VOCAB, data_shape=(LENGTH,), block_size=BLOCK, eps=0.0
  )
  draws = 4096
  batch = jnp.broadcast_to(jnp.asarray(x, jnp.int32), (draws, LENGTH))
  terms, _ = jax.jit(
      lambda rng: process.nelbo(
          {}, rng, batch, block_oracle, label=None, antithetic=True, t=None
      )
  )(jax.random.key(7))
  loss = np.asarray(terms["loss"], np.float64)
  stderr = loss.std() / np.sqrt(draws)
  assert abs(loss.mean() - neg_log_p) < 4 * stderr + 1e-4, (
      loss.mean(),
      neg_log_p,
      stderr,
  )


def test_the_clipped_schedule_is_a_training_objective_only():
  plain = block_diffusion.BlockDiffusion(
      vocab_size=kd.VOCAB, data_shape=(LENGTH,), block_size=BLOCK
  )
  clipped = block_diffusion.BlockDiffusion(
      vocab_size=kd.VOCAB,
      data_shape=(LENGTH,),
      block_size=BLOCK,
      clip_min=0.3,
      clip_max=0.8,
  )
  u = jnp.linspace(0.0, 0.999, 11)[:, None]
  tau = clipped.times(u, train=True)
  assert float(tau.min()) >= 0.3 - 1e-6 and float(tau.max()) <= 0.8 + 1e-6
  np.testing.assert_array_equal(clipped.times(u, False), plain.times(u, False))
  states, _ = chain_states()
  batch = jnp.asarray(states[np.random.default_rng(0).choice(len(states), 64)])

  def nelbo(process, train):
    return process.nelbo(
        {},
        jax.random.key(3),
        batch,
        block_oracle,
        label=None,
        antithetic=True,
        t=None,
        train=train,
    )[0]["loss"]

  np.testing.assert_array_equal(nelbo(clipped, False), nelbo(plain, False))
  assert not np.allclose(nelbo(clipped, True), nelbo(plain, True))


# -------------------------------------------------------- the sampler -----


@pytest.mark.parametrize("prompt_length", [3, 4])
def test_kv_cached_sampler_equals_the_uncached_one_sample_for_sample(
    prompt_length,
):
  length = 16
  config = tiny_config(block_size=4, length=length)
  model = model_lib.build_model(config)
  reverse = core.from_model(model, random_variables(model, seed=4))
  prompt = np.zeros((5, length), bool)
  prompt[:, :prompt_length] = True
  known = core.Known(
      jnp.asarray(prompt), jnp.asarray(np.tile(np.arange(length), (5, 1)))
  )
  entry = sampling.get("block")
  drawn = {}
  for kv_cache in (True, False):
    settings = entry.make_settings(num_steps=6, kv_cache=kv_cache)
    drawn[kv_cache] = jax.jit(
        lambda rng, s=settings: entry.draw(reverse, rng, 5, s, known)
    )(jax.random.key(11))
  cached, uncached = drawn[True], drawn[False]
  np.testing.assert_array_equal(cached.samples, uncached.samples)
  samples = np.asarray(cached.samples)
  np.testing.assert_array_equal(
      samples[:, :prompt_length], np.arange(prompt_length)[None].repeat(5, 0)
  )
  assert samples.min() >= 0 and samples.max() < 27  # No mask left.
  assert len({tuple(s) for s in samples}) > 1
  blocks = length // 4
  # A block given whole (a prompt of 4) takes no denoising steps.
  denoised = blocks - prompt_length // 4
  assert int(uncached.network_calls) == denoised * 7
  assert int(cached.network_calls) == denoised * 7 + blocks  # + the cache


def test_the_sampler_stops_once_every_sample_has_the_stop_token():
  length = 16
  config = tiny_config(block_size=4, length=length)
  model = model_lib.build_model(config)
  reverse = core.from_model(model, random_variables(model, seed=4))
  entry = sampling.get("block")
  full = entry.draw(
      reverse, jax.random.key(2), 1, entry.make_settings(num_steps=4)
  )
  samples = np.asarray(full.samples)
  token = int(samples[0, 2])  # In the first block: the stop comes after it.
  stopped = entry.draw(
      reverse,
      jax.random.key(2),
      1,
      entry.make_settings(num_steps=4, stop_token=token),
  )
  out = np.asarray(stopped.samples)
  np.testing.assert_array_equal(out[:, :4], samples[:, :4])
  assert np.all(out[:, 4:] == model.mask_id)  # Never generated.
  assert int(stopped.network_calls) == 4 + 1 + 1
  assert np.all(samples[:, 4:] != model.mask_id)  # Without the stop: all.


def test_sampler_settings_are_checked():
  entry = sampling.get("block")
  with pytest.raises(ValueError, match="--history is not available"):
    entry.make_settings(num_frames=4).validate()
  with pytest.raises(ValueError, match="--stop_token=-2 must be a token id"):
    entry.make_settings(stop_token=-2).validate()


# -------------------------------------------------- through the commands --


@pytest.fixture(scope="module")
def trained_block(tmp_path_factory):
  """A tiny block diffusion text8 run trained by train_and_evaluate."""
  root = tmp_path_factory.mktemp("block")
  return text_runs.train_tiny_text8(root, BD_TEXT8, "tiny,8")


@pytest.mark.slow
def test_block_diffusion_run_trains_evaluates_and_samples(
    trained_block, tmp_path
):
  workdir, result = trained_block
  bpc = result["eval"]["valid/bits_per_char"]
  assert np.isfinite(bpc) and 0 < bpc < 8
  assert os.path.exists(result["samples"])
  run = run_lib.restore(workdir)
  bound = evaluate.negative_elbo(
      run, "valid", num_examples=8, num_time_samples=2, progress=False
  )
  assert bound["headline"] == "bits_per_char"
  assert 0 < bound["bits_per_char"]["mean"] < 8
  out = str(tmp_path / "out")
  summary = sample_command.sample_to_files(
      sample_command.Request(
          workdir=workdir,
          output_dir=out,
          num_samples=3,
          batch_size=2,
          steps=3,
          prompt="the ",
      )
  )
  assert summary["request"]["sampler"] == "block"
  length = run.config.data.data_shape[0]
  assert summary["network_calls_per_sample"] == (length // 8) * (3 + 2)
  with open(os.path.join(out, "samples.jsonl")) as f:
    texts = [json.loads(line)["text"] for line in f]
  assert len(texts) == 3 and all(t.startswith("the ") for t in texts)
  with pytest.raises(
      ValueError, match="'unmasking' capability.*Use --sampler=block"
  ):
    sample_command.sample_to_files(
        sample_command.Request(
            workdir=workdir, output_dir=str(tmp_path / "no"), sampler="cached"
        )
    )
  assert not os.path.exists(tmp_path / "no")
  with pytest.raises(ValueError, match="--blocks does not apply to config"):
    sample_command.sample_to_files(
        sample_command.Request(
            workdir=workdir, output_dir=str(tmp_path / "no"), blocks=2
        )
    )
  assert not os.path.exists(tmp_path / "no")
  # Longer than L: MDLM-style windows, each keeping the last L - S tokens.
  longer = str(tmp_path / "longer")
  summary = sample_command.sample_to_files(
      sample_command.Request(
          workdir=workdir,
          output_dir=longer,
          num_samples=2,
          batch_size=2,
          steps=2,
          prompt="the ",
          length=length + 16,
          stride=8,
      )
  )
  with open(os.path.join(longer, "samples.jsonl")) as f:
    texts = [json.loads(line)["text"] for line in f]
  assert [len(t) for t in texts] == [length + 16] * 2
  assert all(t.startswith("the ") for t in texts)
  # Window 0 denoises every block; windows 1 and 2 only their last one
  # (blocks given whole are skipped); each window appends every block.
  blocks = length // 8
  assert summary["network_calls_per_sample"] == (blocks + 2) * 3 + 3 * blocks
