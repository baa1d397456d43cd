"""The autoregressive baseline: its exact likelihood, causal attention, its
sampler, and a run trained, evaluated and sampled by md4's own commands."""

import itertools
import subprocess
import sys
import json
import os

import flax.linen as nn
import text_runs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import config_recipes
from md4 import configuration
from md4 import evaluate
from md4 import model as model_lib
from md4 import run as run_lib
from md4 import sample as sample_command
from md4 import sampling
from md4.diffusion import autoregressive
from md4.networks import lean_attention
from md4.sampling import core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AR_TEXT8 = os.path.join(ROOT, "configs", "autoregressive", "text8.py")


def tiny_ar_config(length: int = 12, vocab_size: int = 7):
  config = config_recipes.load_file(AR_TEXT8, "tiny")
  config.data.data_shape = (length,)
  config.data.vocab_size = vocab_size
  return config


random_variables = text_runs.random_variables


# -------------------------------------------------------- likelihood ------


@pytest.mark.slow
def test_loss_is_the_exact_negative_log_likelihood_of_an_explicit_loop():
  config = tiny_ar_config()
  model = model_lib.build_model(config)
  variables = random_variables(model)
  length, vocab = 12, 7
  x = jax.random.randint(jax.random.key(3), (3, length), 0, vocab)
  terms, _ = model.apply(variables, x, rngs={"sample": jax.random.key(4)})
  start = vocab  # The start token is the id after the vocabulary.
  time = jnp.zeros((3,), jnp.float32)
  junk = np.random.default_rng(5)
  expected = np.zeros(3)
  prefix = 5
  expected_prefix = None
  for i in range(length):
    if i == prefix:
      expected_prefix = expected.copy()
    # Position i sees the start token and x_1 .. x_{i-1}; what follows is
    # junk that causal attention must never read.
    inputs = np.asarray(junk.integers(0, vocab, (3, length)))
    inputs[:, 0] = start
    inputs[:, 1 : i + 1] = np.asarray(x)[:, :i]
    logits = model.apply(
        variables, jnp.asarray(inputs, jnp.int32), time, method=model.denoise
    )  # [3, L, V]
    log_p = jax.nn.log_softmax(np.asarray(logits, np.float64)[:, i], -1)
    expected -= np.take_along_axis(
        np.asarray(log_p), np.asarray(x)[:, i : i + 1], -1
    )[:, 0]
  np.testing.assert_allclose(terms["loss"], expected, rtol=2e-5)
  # A loss mask on the first 5 positions (the rest padding): -log p(x_{<=5}),
  # whatever the padding holds.
  scored = jnp.arange(length)[None] < prefix
  padded = jnp.where(scored, x, 1)
  masked, _ = model.apply(
      variables, padded, rngs={"sample": jax.random.key(4)}, loss_mask=scored
  )
  np.testing.assert_allclose(masked["loss"], expected_prefix, rtol=2e-5)
  # The same for every call: the likelihood draws nothing.
  again, _ = model.apply(variables, x, rngs={"sample": jax.random.key(9)})
  np.testing.assert_array_equal(again["loss"], terms["loss"])


def test_the_network_must_be_causal_and_time_free():
  config = tiny_ar_config()
  config.network.causal = False
  with pytest.raises(
      ValueError, match="needs a causal network.*config.network.causal=True"
  ):
    configuration.validate(config)
  config = tiny_ar_config()
  config.network.time_features = "t"
  with pytest.raises(ValueError, match="time_features='none'"):
    configuration.validate(config)


@pytest.mark.slow
def test_causal_attention_equals_attention_masked_by_an_explicit_loop():
  b, length, heads, dim = 2, 9, 3, 4
  q, k, v = (
      jax.random.normal(key, (b, length, heads, dim))
      for key in jax.random.split(jax.random.key(0), 3)
  )
  cotangent = jax.random.normal(jax.random.key(1), (b, length, heads, dim))

  def dense_masked(q, k, v):
    scores = jnp.einsum("blnh,bsnh->bnls", q, k) / np.sqrt(dim)
    allowed = np.zeros((length, length), bool)
    for i in range(length):
      for j in range(length):
        allowed[i, j] = j <= i
    scores = jnp.where(allowed, scores, -jnp.inf)
    return jnp.einsum("bnls,bsnh->blnh", jax.nn.softmax(scores, -1), v)

  def lean(q, k, v):
    return lean_attention.lean_attention(q, k, v, True)

  np.testing.assert_allclose(
      lean(q, k, v), dense_masked(q, k, v), rtol=1e-5, atol=1e-6
  )
  ours = jax.grad(lambda *a: (lean(*a) * cotangent).sum(), (0, 1, 2))(q, k, v)
  theirs = jax.grad(lambda *a: (dense_masked(*a) * cotangent).sum(), (0, 1, 2))(
      q, k, v
  )
  for a, e in zip(ours, theirs):
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
  # Not causal: the first position sees the last one.
  full = lean_attention.lean_attention(q, k, v, False)
  assert not np.allclose(full[:, 0], lean(q, k, v)[:, 0])


# ------------------------------------------------------------ sampler -----


class MarkovTable(nn.Module):
  """A 'network' whose logits at position i depend on input i only: with
  the shifted input, p(x_i | x_{<i}) = softmax(table[x_{i-1}])."""

  table: np.ndarray

  def __call__(self, z, t, label=None, *, train=False):
    return jnp.asarray(self.table, jnp.float32)[z]  # [B, L, V]


def markov_reverse(table, length):
  vocab = table.shape[1]
  process = autoregressive.Autoregressive(vocab, (length,))
  model = model_lib.DiffusionModel(MarkovTable(table), process)
  return core.from_model(model, {})


def markov_probs(table, length):
  """p(x) of every sequence, by the chain rule written out here."""
  log_p = np.log(np.exp(table) / np.exp(table).sum(-1, keepdims=True))
  vocab = table.shape[1]
  states = list(itertools.product(range(vocab), repeat=length))
  probs = []
  for s in states:
    previous, total = vocab, 0.0  # Row V: the start token.
    for token in s:
      total += log_p[previous, token]
      previous = token
    probs.append(np.exp(total))
  return states, np.array(probs)


def test_autoregressive_sampler_draws_the_exact_chain_rule_distribution():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(4, 3)) * 1.5  # Rows: values 0..2, then start.
  length, n = 3, 40_000
  reverse = markov_reverse(table, length)
  entry = sampling.get("autoregressive")
  settings = entry.make_settings(temperature=1.0, topp=1.0)
  result = jax.jit(lambda r: entry.draw(reverse, r, n, settings))(
      jax.random.key(1)
  )
  assert int(result.network_calls) == length
  states, probs = markov_probs(table, length)
  index = {s: i for i, s in enumerate(states)}
  counts = np.bincount(
      [index[tuple(s)] for s in np.asarray(result.samples)],
      minlength=len(states),
  )
  tv = 0.5 * np.abs(counts / n - probs).sum()
  assert tv < 0.02, tv
  # A low temperature concentrates on the most likely sequence.
  cold = entry.make_settings(temperature=0.05, topp=1.0)
  samples = np.asarray(
      jax.jit(lambda r: entry.draw(reverse, r, 500, cold))(
          jax.random.key(2)
      ).samples
  )
  best = states[int(np.argmax(probs))]
  assert (samples == np.array(best)).all(-1).mean() > 0.95


def test_autoregressive_sampler_keeps_a_prompt_and_conditions_on_it():
  table = np.full((4, 3), -20.0)
  table[0, 1] = table[1, 2] = table[2, 0] = table[3, 0] = 0.0  # 0->1->2->0
  reverse = markov_reverse(table, 5)
  given = np.zeros((8, 5), bool)
  given[:, 0] = True
  tokens = np.zeros((8, 5), np.int32)
  tokens[:, 0] = 2
  known = core.Known(jnp.asarray(given), jnp.asarray(tokens))
  entry = sampling.get("autoregressive")
  result = entry.draw(
      reverse, jax.random.key(0), 8, entry.make_settings(num_frames=3), known
  )
  np.testing.assert_array_equal(
      np.asarray(result.samples), np.tile([2, 0, 1, 2, 0], (8, 1))
  )
  history = np.asarray(result.history)
  assert history.shape == (3, 8, 5)
  assert (history[0][:, 1:] == 3).all() and (history[0][:, 0] == 2).all()
  np.testing.assert_array_equal(history[-1], result.samples)


def test_settings_of_the_autoregressive_sampler_are_checked():
  with pytest.raises(ValueError, match="--temperature=0.0 must be > 0"):
    sampling.get("autoregressive").make_settings(temperature=0.0).validate()
  with pytest.raises(ValueError, match=r"--topp=1.5 must be in \(0, 1\]"):
    sampling.get("autoregressive").make_settings(topp=1.5).validate()


# -------------------------------------------------- through the commands --


@pytest.fixture(scope="module")
def trained_ar(tmp_path_factory):
  """A tiny autoregressive text8 run trained by train_and_evaluate."""
  root = tmp_path_factory.mktemp("ar")
  return text_runs.train_tiny_text8(root, AR_TEXT8, "tiny")


@pytest.mark.slow
def test_autoregressive_run_trains_evaluates_and_samples(trained_ar, tmp_path):
  workdir, result = trained_ar
  length = 32
  bpc = result["eval"]["valid/bits_per_char"]
  # An exact likelihood, so a bound below log2(27) once it has learnt a
  # little, and finite.
  assert np.isfinite(bpc) and 0 < bpc < 6
  assert "valid/perplexity" not in result["eval"]  # Characters: bits/char.
  assert os.path.exists(result["samples"])
  # md4.evaluate: the same number whatever the time samples (none drawn).
  run = run_lib.restore(workdir)
  one = evaluate.negative_elbo(
      run, "valid", num_examples=8, num_time_samples=1, progress=False
  )
  two = evaluate.negative_elbo(
      run, "valid", num_examples=8, num_time_samples=2, seed=3, progress=False
  )
  assert one["headline"] == "bits_per_char"
  assert one["bits_per_char"]["mean"] == pytest.approx(
      two["bits_per_char"]["mean"], rel=1e-6
  )
  # md4.sample: the process's own sampler by default, with its settings.
  out = str(tmp_path / "out")
  summary = sample_command.sample_to_files(
      sample_command.Request(
          workdir=workdir,
          output_dir=out,
          num_samples=3,
          batch_size=2,
          prompt="the ",
          own_settings=(("temperature", 0.8),),
      )
  )
  assert summary["request"]["sampler"] == "autoregressive"
  assert summary["settings"]["temperature"] == 0.8
  assert summary["network_calls_per_sample"] == length
  with open(os.path.join(out, "samples.jsonl")) as f:
    texts = [json.loads(line)["text"] for line in f]
  assert len(texts) == 3 and all(t.startswith("the ") for t in texts)
  assert all(len(t) == length for t in texts)
  for flag, value, message in (
      ("steps", 8, "--steps=8 does not apply to --sampler=autoregressive"),
      ("sampler", "ancestral", "'unmasking' capability"),
      ("reconstruct_from", "valid", "--reconstruct_from needs a process"),
      (
          "own_settings",
          (("remask_strength", 0.1),),
          "--remask_strength does not apply to --sampler=autoregressive",
      ),
  ):
    with pytest.raises(ValueError, match=message):
      sample_command.sample_to_files(
          sample_command.Request(
              workdir=workdir, output_dir=str(tmp_path / "no"), **{flag: value}
          )
      )
  assert not os.path.exists(tmp_path / "no")


@pytest.mark.slow
def test_an_autoregressive_run_judges_samples_with_its_exact_likelihood(
    trained_ar, tmp_path
):
  workdir, _ = trained_ar
  out = tmp_path / "judged"
  summary = sample_command.sample_to_files(
      sample_command.Request(
          workdir=workdir,
          output_dir=str(out),
          num_samples=3,
          batch_size=3,
          judge=workdir,
      )
  )
  name = os.path.basename(workdir)
  judged = json.loads((out / f"judged_{name}.json").read_text())
  assert summary["judged"]["generative_perplexity"] == (
      judged["generative_perplexity"]
  )
  with open(out / "samples.jsonl") as f:
    tokens = np.array([json.loads(line)["tokens"] for line in f], np.int32)
  # Independently: the run's own exact NLL of the sampled tokens.
  run = run_lib.restore(workdir)
  terms, _ = run.setup.model.apply(
      {"params": run.params},
      jnp.asarray(tokens),
      rngs={"sample": jax.random.key(0)},
  )
  np.testing.assert_allclose(
      [s["nll"] for s in judged["per_sample"]], terms["loss"], rtol=1e-5
  )
  assert [s["tokens"] for s in judged["per_sample"]] == [32] * 3
  # The md4.judge command on the directory gives the same figures.
  done = subprocess.run(
      [
          sys.executable,
          "-m",
          "md4.judge",
          f"--judge={workdir}",
          f"--samples={tmp_path}",
          f"--output={tmp_path / 'again.json'}",
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
      check=False,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  again = json.loads((tmp_path / "again.json").read_text())
  assert again["generative_perplexity"]["mean"] == pytest.approx(
      judged["generative_perplexity"]["mean"], rel=1e-5
  )
  assert "generative perplexity" in done.stdout
