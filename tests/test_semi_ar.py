"""Semi-autoregressive sampling: blocks, strided windows, end-of-text rules.

`md4.sampling.semi_ar` is checked against explicit loops written here, a
recording denoiser (every input the network sees), and exact distributions
of the small Markov chain of `known_distribution.py` drawn with its exact
posterior denoiser (the oracle); `md4.sample`'s new flags end to end on a
tiny trained run over token files with an end-of-text id (slow), and each
bad combination before the restore, on workdirs that hold only config.json.
"""

import dataclasses
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import known_distribution as kd
import numpy as np
import pytest
import trained_digits

from md4 import config_recipes
from md4 import run as run_lib
from md4 import sample as sample_command
from md4 import sampling
from md4 import train
from md4.diffusion import schedules
from md4.sampling import core
from md4.sampling import semi_ar

SCHEDULE = schedules.MaskingSchedule("linear", 1e-4)
KNOWN_TOKEN_SAMPLERS = (
    "ancestral",
    "topp",
    "mean",
    "confidence",
    "remask",
    "cached",
    "first_hitting",
)
ROOT = trained_digits.ROOT
END = 7  # The tiny token run's end-of-text id.


# ------------------------------------------------------------ helpers -----


def oracle_reverse(record=None) -> core.Reverse:
  """The exact denoiser of the known chain; `record(z)` sees every input."""
  denoise = kd.oracle(lambda values, t: SCHEDULE.alpha(t))

  def recorded(z, t):
    if record is not None:
      jax.debug.callback(record, z, ordered=True)
    return denoise(z, t)

  return core.from_schedule(recorded, SCHEDULE, kd.VOCAB, (kd.LENGTH,))


def fixed_reverse(length, vocab, record=None, seed=0) -> core.Reverse:
  """A denoiser whose logits [L, V] ignore z and t; records its inputs."""
  logits = jnp.asarray(
      3.0 * np.random.default_rng(seed).normal(size=(length, vocab)),
      jnp.float32,
  )

  def denoise(z, t):
    del t
    if record is not None:
      jax.debug.callback(record, z, ordered=True)
    return jnp.broadcast_to(logits, z.shape + (vocab,))

  return core.from_schedule(denoise, SCHEDULE, vocab, (length,))


def generate(reverse, sampler, plan, num_samples, seed=0, known=None, **values):
  entry = sampling.get(sampler)
  settings = entry.make_settings(**values)
  text = semi_ar.text_known(known, num_samples, plan, reverse.mask_id)
  result = jax.jit(
      lambda rng: semi_ar.generate(
          entry.draw, reverse, rng, num_samples, settings, plan, text
      )
  )(jax.random.key(seed))
  return np.asarray(result.samples), int(result.network_calls)


def total_variation_bound(p: np.ndarray, n: int) -> float:
  """E[TV] bound + McDiarmid slack at false-alarm probability 1e-6."""
  return 0.5 * np.sqrt(p * (1 - p) / n).sum() + math.sqrt(
      math.log(1e6) / (2 * n)
  )


def assert_draws_follow(samples: np.ndarray, log_p: dict) -> None:
  """Total variation and mean log p of samples against a distribution."""
  states = list(log_p)
  p = np.exp(np.array([log_p[s] for s in states]))
  assert abs(p.sum() - 1) < 1e-9
  index = {s: i for i, s in enumerate(states)}
  counts = np.zeros(len(states))
  for row in samples:
    counts[index[tuple(int(v) for v in row)]] += 1
  n = len(samples)
  tv = 0.5 * np.abs(counts / n - p).sum()
  assert tv < total_variation_bound(p, n), tv
  lp = np.array([log_p[s] for s in states])
  mean, var = (p * lp).sum(), (p * lp**2).sum() - (p * lp).sum() ** 2
  got = (counts * lp).sum() / n
  assert abs(got - mean) < 5 * math.sqrt(var / n), (got, mean)


# ------------------------------------------------------ plans and masks ---


def test_block_known_masks_are_the_explicit_loop_s():
  length, block = 12, 4
  rng = np.random.default_rng(0)
  given = rng.random((3, length)) < 0.3
  tokens = rng.integers(0, 5, (3, length)).astype(np.int32)
  base = core.Known(jnp.asarray(given), jnp.asarray(tokens))
  for k in range(length // block):
    expected = given.copy()
    for i in range(length):
      if not k * block <= i < (k + 1) * block:
        expected[:, i] = True  # before: generated; after: held masked.
    got = semi_ar.block_known(base, k, block)
    np.testing.assert_array_equal(got.mask, expected)
    np.testing.assert_array_equal(got.tokens, tokens)


@pytest.mark.parametrize(
    "length, stride", [(40, 8), (41, 8), (17, 16), (16, None), (9, None)]
)
def test_windows_cover_the_length_as_an_explicit_loop_does(length, stride):
  plan = semi_ar.plan_for(16, blocks=4, length=length, stride=stride)
  step = stride or (16 // 2 if length > 16 else 16)
  covered, windows = 16, 1
  while covered < length:
    covered, windows = covered + step, windows + 1
  assert plan.num_windows == windows
  assert plan.buffer_length == covered >= plan.text_length == length
  assert plan.block_length == 4
  text = semi_ar.text_known(None, 2, plan, mask_id=9)
  held = np.arange(covered) >= length  # positions past --length
  np.testing.assert_array_equal(np.asarray(text.mask)[0], held)
  assert (np.asarray(text.tokens)[:, held] == 9).all()


def test_each_block_gets_steps_over_blocks_and_at_least_one():
  settings = core.Settings(num_steps=10)
  assert semi_ar.block_settings(settings, 3).num_steps == 3
  assert semi_ar.block_settings(settings, 16).num_steps == 1
  assert semi_ar.block_settings(settings, 1) is settings
  base = core.BaseSettings()  # first_hitting: no steps to share
  assert semi_ar.block_settings(base, 4) is base


# ------------------------------------------------------------ blocks -----


def _tiered(fast):
  """The samplers, those not in `fast` marked slow (each compiles twice)."""
  return [
      s if s in fast else pytest.param(s, marks=pytest.mark.slow)
      for s in KNOWN_TOKEN_SAMPLERS
  ]


@pytest.mark.parametrize("sampler", _tiered(("ancestral",)))
def test_one_block_of_one_window_is_the_plain_sampler_draw_for_draw(sampler):
  reverse = oracle_reverse()
  plan = semi_ar.plan_for(kd.LENGTH, blocks=1)
  got, calls = generate(reverse, sampler, plan, 16, seed=3, num_steps=6)
  entry = sampling.get(sampler)
  plain = jax.jit(
      lambda rng: entry.draw(
          reverse, rng, 16, entry.make_settings(num_steps=6), None
      )
  )(jax.random.key(3))
  np.testing.assert_array_equal(got, plain.samples)
  assert calls == int(plain.network_calls)


# The samplers fixed for held-masked positions run in the fast tier.
@pytest.mark.parametrize(
    "sampler", _tiered(("confidence", "cached", "first_hitting"))
)
def test_blocks_are_drawn_left_to_right_with_later_blocks_held_masked(
    sampler,
):
  length, vocab, block = 8, 4, 2
  mask = vocab
  seen = []
  reverse = fixed_reverse(length, vocab, record=lambda z: seen.append(z))
  plan = semi_ar.plan_for(length, block_length=block)
  # A prompt of 1 token and one given token in the last block.
  given = np.zeros((3, length), bool)
  given[:, [0, 7]] = True
  tokens = np.zeros((3, length), np.int32)
  tokens[:, 0], tokens[:, 7] = 1, 2
  samples, calls = generate(
      reverse,
      sampler,
      plan,
      3,
      known=core.Known(given, tokens),
      num_steps=8,
  )
  seen = [np.asarray(z) for z in seen]
  assert calls == len(seen) > 0
  assert samples.shape == (3, length) and (samples < vocab).all()
  np.testing.assert_array_equal(samples[given], tokens[given])
  blocks_done = []
  for z in seen:
    np.testing.assert_array_equal(z[given], tokens[given])
    free = ~given[0]
    revealed = (z != mask) | ~free  # [B, L]
    state = revealed.reshape(3, -1, block).all(-1)  # blocks done
    # The first block not done (K when all are: a last fill call).
    current = int(np.argmin(np.append(state.all(0), False)))
    blocks_done.append(current)
    # Blocks before the current one are done and never change after.
    before = np.arange(length) < current * block
    np.testing.assert_array_equal(z[:, before], samples[:, before])
    # Blocks after it are still masked where nothing is given.
    after = (np.arange(length) >= (current + 1) * block) & free
    assert (z[:, after] == mask).all(), (sampler, current, z)
    if sampler != "remask":  # ReMDM may mask a revealed token again.
      shown = (z != mask) & free
      np.testing.assert_array_equal(z[shown], samples[shown])
  assert blocks_done == sorted(blocks_done)
  assert set(range(length // block)) <= set(blocks_done)


def test_confidence_reveals_each_block_on_the_schedule_of_its_own_tokens():
  length, vocab, block, steps = 12, 5, 4, 6
  seen = []
  reverse = fixed_reverse(length, vocab, record=lambda z: seen.append(z))
  plan = semi_ar.plan_for(length, block_length=block)
  generate(reverse, "confidence", plan, 2, num_steps=steps * length // block)
  times = core.grid_times(steps, "uniform")
  fraction = (1 - SCHEDULE.alpha(times)) / (1 - SCHEDULE.alpha(1.0))
  seen = np.asarray(seen).reshape(length // block, steps + 1, 2, length)
  for k, calls in enumerate(seen):
    inside = (np.arange(length) >= k * block) & (
        np.arange(length) < (k + 1) * block
    )
    for j, z in enumerate(calls):  # call j sees the state at times[j]
      masked = (z[:, inside] == vocab).sum(-1)
      np.testing.assert_array_equal(masked, np.round(block * fraction[j]))
      assert (z[:, np.arange(length) >= (k + 1) * block] == vocab).all()


# ----------------------------------------------------------- windows -----


def test_each_window_is_given_the_previous_window_s_last_tokens():
  seen = []
  reverse = oracle_reverse(record=lambda z: seen.append(z))
  plan = semi_ar.plan_for(kd.LENGTH, length=12, stride=3)
  steps = 4  # ancestral: steps + 1 calls per window, so call c is window c // 5
  samples, calls = generate(reverse, "ancestral", plan, 4, num_steps=steps)
  assert samples.shape == (4, 12) and (samples < kd.VOCAB).all()
  windows = 1 + math.ceil((12 - kd.LENGTH) / 3)  # 4: 5 + 3 + 3 + 1 tokens
  assert calls == len(seen) == windows * (steps + 1)
  keep = kd.LENGTH - 3
  for c, z in enumerate(map(np.asarray, seen)):
    start = (c // (steps + 1)) * 3
    end = min(start + kd.LENGTH, 12)
    if start:  # the previous window's last L - S tokens, given
      np.testing.assert_array_equal(
          z[:, :keep], samples[:, start : start + keep]
      )
    shown = z[:, : end - start] != kd.VOCAB
    np.testing.assert_array_equal(
        z[:, : end - start][shown], samples[:, start:end][shown]
    )
    assert (z[:, end - start :] == kd.VOCAB).all()  # past --length: masked
    if c % (steps + 1) == 0:  # a window's first call: its new part masked
      assert (z[:, keep if start else 0 : end - start] == kd.VOCAB).all()


def markov_log_probs(length: int, min_length=0, end=None) -> dict:
  """log p of every sequence of the chain; `end` renormalised away early."""
  out = {}
  for x in itertools.product(range(kd.VOCAB), repeat=length):
    lp, previous = 0.0, None
    for i, v in enumerate(x):
      p = kd.INITIAL if previous is None else kd.TRANSITION[previous]
      if i < min_length:
        if v == end:
          lp = -np.inf
          break
        p = p / (1.0 - p[end])
      lp += math.log(p[v])
      previous = v
    if lp > -np.inf:
      out[x] = lp
  return out


def test_strided_windows_of_the_exact_sampler_draw_the_longer_chain():
  # The chain is Markov, so a window given its first L - S tokens draws the
  # next S as the chain does: the texts follow the chain of length N.
  plan = semi_ar.plan_for(kd.LENGTH, length=7, stride=2)
  samples, _ = generate(oracle_reverse(), "first_hitting", plan, 20_000)
  assert_draws_follow(samples, markov_log_probs(7))


def test_min_length_forbids_end_of_text_at_the_first_positions_exactly():
  # One token per block: each block draws p(x_k | x_<k); token 2 as the
  # end of text is forbidden below position 3 and renormalised away.
  plan = dataclasses.replace(
      semi_ar.plan_for(kd.LENGTH, blocks=kd.LENGTH, min_length=3), end_id=2
  )
  samples, calls = generate(oracle_reverse(), "first_hitting", plan, 20_000)
  assert calls == kd.LENGTH
  assert not (samples[:, :3] == 2).any()
  assert (samples[:, 3:] == 2).mean() > 0.2  # It is likely elsewhere.
  assert_draws_follow(samples, markov_log_probs(kd.LENGTH, 3, end=2))


def test_min_length_counts_text_positions_across_windows():
  vocab, length = 4, 8
  # Logits that make token 0 (the end) almost certain everywhere.
  reverse = fixed_reverse(length, vocab)
  reverse = dataclasses.replace(
      reverse,
      denoise=lambda z, t: jnp.zeros(z.shape + (vocab,)).at[..., 0].set(20.0),
  )
  plan = dataclasses.replace(
      semi_ar.plan_for(length, length=20, stride=4, min_length=14), end_id=0
  )
  samples, _ = generate(reverse, "ancestral", plan, 8, num_steps=4)
  assert not (samples[:, :14] == 0).any()
  assert (samples[:, 14:] == 0).all()


# --------------------------------------------------------- end of text ---


def test_end_lengths_cut_at_the_first_end_of_text_after_the_given_tokens():
  rng = np.random.default_rng(1)
  samples = rng.integers(0, 4, (50, 10))
  samples[7] = 1  # no end of text
  given = np.zeros((1, 10), bool)
  given[0, :2] = True  # a 2-token prompt; an end of text there is kept.
  lengths = semi_ar.end_lengths(samples, 0, given)
  for row, n in zip(samples, lengths):
    expected = 10
    for i in range(2, 10):
      if row[i] == 0:
        expected = i
        break
    assert n == expected
  summary = semi_ar.length_summary(lengths, 10)
  assert summary["no_end_of_text"] == int((lengths == 10).sum()) >= 1
  assert summary["median"] == float(np.median(lengths))
  assert summary["min"] == lengths.min() and summary["max"] == lengths.max()


# ---------------------------------------------- bad requests, no restore --


def token_files(directory, separator=END):
  """Token files of ids in [0, 8), with a metadata.json naming an end id."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  stream = rng.integers(0, END, (80, 16)).astype(np.int32)
  stream[:, 5::6] = END  # documents of 5 tokens, each ended
  np.save(os.path.join(directory, "train.npy"), stream[:64])
  np.save(os.path.join(directory, "valid.npy"), stream[64:])
  if separator is not None:
    with open(os.path.join(directory, "metadata.json"), "w") as f:
      json.dump(
          {
              "vocab_size": 8,
              "seq_len": 16,
              "dtype": "int32",
              "tokenizer": {"kind": "ids", "separator_id": separator},
          },
          f,
      )
  return str(directory)


def token_config(data):
  config = trained_digits.digits_config()
  config.data.dataset = "tokens"
  config.data.path = data
  config.data.data_shape = (16,)
  config.data.vocab_size = 8
  config.network = config_recipes.load_file(
      os.path.join(ROOT, "configs", "md4", "text8.py"), "tiny"
  ).network
  config.train.num_steps = config.train.checkpoint_every = 1
  config.train.eval_every = config.train.sample_every = 1000
  config.train.eval_batch_size = 16
  return config


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
  """Workdirs holding only config.json: a restore would fail at once."""
  root = tmp_path_factory.mktemp("semi_ar_configs")
  configs = {
      "tokens": token_config(token_files(root / "tokens")),
      "no_end": token_config(token_files(root / "no_end", separator=None)),
      "digits": trained_digits.digits_config(),
      "d3pm": config_recipes.load_file(
          os.path.join(ROOT, "configs", "d3pm", "text8.py"), "tiny"
      ),
      "autoregressive": config_recipes.load_file(
          os.path.join(ROOT, "configs", "autoregressive", "text8.py"), "tiny"
      ),
  }
  workdirs = {}
  for name, config in configs.items():
    workdirs[name] = str(root / name / "run")
    os.makedirs(workdirs[name])
    run_lib.save_config(config, workdirs[name])
  return workdirs


BAD_REQUESTS = {
    "block size not dividing L": (
        "tokens",
        dict(block_length=5),
        (
            "--block_length=5 must be a positive divisor of the sequence length"
            " 16 (config.data.data_shape); give one of 1, 2, 4, 8, 16."
        ),
    ),
    "blocks not dividing L": (
        "tokens",
        dict(blocks=3),
        "--blocks=3 must be a positive divisor",
    ),
    "blocks and block length": (
        "tokens",
        dict(blocks=2, block_length=8),
        "give at most one of them.",
    ),
    "length not reachable": (
        "tokens",
        dict(length=40, stride=17),
        (
            "--stride=17 cannot reach --length=40: each window must add between"
            " 1 and 16 new tokens"
        ),
    ),
    "stride without a longer length": (
        "tokens",
        dict(stride=4),
        "give --length or drop --stride.",
    ),
    "prompt longer than length": (
        "tokens",
        dict(length=4, prompt="1 2 3 4 5"),
        "needs 5 tokens but sequences have 4 (--length); shorten it.",
    ),
    "min length beyond the text": (
        "tokens",
        dict(min_length=17),
        "--min_length=17 must be in [0, 16]",
    ),
    "history with blocks": (
        "tokens",
        dict(blocks=2, history=True),
        "drop --history (or --blocks).",
    ),
    "no end of text in the data": (
        "no_end",
        dict(stop_at_eos=True),
        (
            "--stop_at_eos needs an end-of-text token, but the tokens data set"
            " has none"
        ),
    ),
    "stop flag on images": (
        "digits",
        dict(stop_at_eos=True),
        (
            "--stop_at_eos needs text data (sequences of one length), but"
            " config.data.dataset='digits' has examples of shape (8, 8, 1);"
            " drop --stop_at_eos."
        ),
    ),
    "min length on images": (
        "digits",
        dict(min_length=3),
        "drop --min_length.",
    ),
    "blocks with reverse_chain": (
        "d3pm",
        dict(blocks=2, sampler="reverse_chain"),
        "--blocks does not apply to --sampler=reverse_chain",
    ),
    "blocks on an autoregressive run": (
        "autoregressive",
        dict(blocks=2),
        "--blocks needs a process with the 'unmasking' capability",
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_a_bad_request_is_refused_before_the_restore(
    name, config_only, tmp_path
):
  workdir, fields, message = BAD_REQUESTS[name]
  out = tmp_path / "out"
  request = sample_command.Request(
      workdir=config_only[workdir],
      output_dir=str(out),
      num_samples=2,
      batch_size=2,
      **fields,
  )
  # With no checkpoint, reaching the restore would raise FileNotFoundError.
  with pytest.raises(ValueError) as error:
    sample_command.sample_to_files(request)
  assert message in str(error.value), str(error.value)
  assert not out.exists()


# -------------------------------------------- end to end (tiny run) ------


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
  """A 1-step MD4 run on token files whose end-of-text id is 7."""
  root = tmp_path_factory.mktemp("semi_ar_run")
  config = token_config(token_files(root / "tokens"))
  workdir = str(root / "run")
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.slow
def test_the_command_writes_strided_blockwise_texts_cut_at_end_of_text(
    token_run, tmp_path
):
  out = tmp_path / "out"
  summary = sample_command.sample_to_files(
      sample_command.Request(
          workdir=token_run,
          output_dir=str(out),
          num_samples=6,
          batch_size=4,
          steps=8,
          sampler="ancestral",
          blocks=4,
          length=40,
          stride=8,
          prompt="1 2 3",
          stop_at_eos=True,
          min_length=6,
      )
  )
  samples = np.load(out / "samples.npy")
  lengths = np.load(out / "samples_lengths.npy")
  assert samples.shape == (6, 40) and (samples < 8).all()
  assert (samples[:, :3] == [1, 2, 3]).all()
  assert not (samples[:, :6] == END).any()  # --min_length=6
  records = [json.loads(l) for l in open(out / "samples.jsonl")]
  texts = open(out / "samples.txt").read().strip().split("\n\n")
  for row, n, record, text in zip(samples, lengths, records, texts):
    ends = [i for i in range(3, 40) if row[i] == END]
    assert n == (ends[0] if ends else 40)
    assert record["tokens"] == row[:n].tolist() and record["length"] == n
    assert text == record["text"] == " ".join(map(str, row[:n]))
  assert summary["lengths"] == {
      "end_of_text_id": END,
      "min": lengths.min(),
      "median": float(np.median(lengths)),
      "mean": pytest.approx(lengths.mean()),
      "max": lengths.max(),
      "no_end_of_text": int((lengths == 40).sum()),
  }
  # Calls: per window, T / K + 1 per block with a position to draw.
  calls = 0
  for start in range(0, 40 - 16 + 1, 8):
    for k in range(4):
      new = [p for p in range(k * 4, k * 4 + 4) if start + p >= 3]
      if start > 0:
        new = [p for p in new if p >= 16 - 8]
      calls += (8 // 4 + 1) if new else 0
  assert summary["network_calls_per_sample"] == calls
  assert summary["semi_autoregressive"]["windows"] == 4
  assert summary["semi_autoregressive"]["steps_per_block"] == 2


@pytest.mark.slow
def test_one_block_through_the_command_is_the_plain_draw(token_run, tmp_path):
  draws = {}
  for name, fields in (("plain", {}), ("blocks", dict(blocks=1))):
    out = tmp_path / name
    summary = sample_command.sample_to_files(
        sample_command.Request(
            workdir=token_run,
            output_dir=str(out),
            num_samples=4,
            batch_size=4,
            steps=6,
            seed=5,
            sampler="confidence",
            **fields,
        )
    )
    draws[name] = (
        np.load(out / "samples.npy"),
        summary["network_calls_per_sample"],
    )
  np.testing.assert_array_equal(draws["plain"][0], draws["blocks"][0])
  assert draws["plain"][1] == draws["blocks"][1] == 7
