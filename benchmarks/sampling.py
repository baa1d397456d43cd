r"""Sampling speed (samples/s, network calls) and categorical exactness.

    python benchmarks/sampling.py                       # both parts
    python benchmarks/sampling.py --parts=speed --lengths=256,1024 \
        --sizes=cpu,tiny --batches=4,2 --steps=1000
    python benchmarks/sampling.py --parts=exactness --draws=100000000

Speed: for each sequence length in `--lengths`, one model: the DiT
transformer of the paired size in `--sizes` (`cpu`: 4 layers, width 256,
8 heads; `tiny`: 2 x 64, 4 heads) with `time_features="none"`, vocabulary
27, random weights (speed does not depend on training). For each sampler
(by default every sampler of an MD4 model, with its own settings at their
defaults; naive `ancestral` first, as the base of the ratios) the script
compiles one batch of the paired `--batches` samples and draws it once,
untimed; then
`--repeats` rounds each time one batch of every sampler, alternating
(the order rotated each round): samples/s, network calls per sample, and
both as ratios against `ancestral` at the same length, in the same run. The
default pairs the `cpu` network with L = 256 and the `tiny` one with
L = 1024: the `cpu` network takes about 0.5 s per call at L = 1024 on 2
cores, so its naive sampler alone would take about 9 minutes a sample.
Issue #5's target: the cached sampler makes at least 5x fewer network calls
and draws at least 3x the samples/s of the naive one at 1,000 steps.

Exactness: the probability that a two-outcome categorical draw
[log(1 - pi), log(pi)] returns the rare outcome, divided by pi (1 = exact):

* `inverse_cdf_f32` (md4's draw before issue #5: cumsum of float32
  probabilities, one 23-bit uniform; the rare outcome first, as the reveal
  values come before "stay masked") and `gumbel_f32` (`jax.random.
  categorical`, default mode "low": float32 Gumbel-max) are deterministic
  functions of 23-bit uniforms, so their probabilities are computed exactly
  by enumerating every uniform (with XLA's own float32 log);
* `gumbel_high` (`jax.random.categorical(mode="high")`) and `md4_race`
  (`md4.sampling.core.categorical`) are estimated from `--draws` draws per
  pi (Poisson standard error shown); the draws/s of all four are timed.
"""

import dataclasses
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

# pylint: enable=g-import-not-at-top,wrong-import-position

console.hide_native_logs()  # Before md4's modules import TensorFlow.

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import config_recipes
from md4 import configuration
from md4 import model as model_lib
from md4 import sampling
from md4.sampling import core

# pylint: enable=g-import-not-at-top,wrong-import-position

_PARTS = flags.DEFINE_list("parts", ["speed", "exactness"], "speed, exactness.")
_SAMPLERS = flags.DEFINE_list(
    "samplers",
    None,
    "Samplers timed in the speed part; default every sampler of an MD4 "
    "model, naive `ancestral` first (the ratios' base).",
)
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024"], "Sequence lengths.")
_SIZES = flags.DEFINE_list(
    "sizes",
    ["cpu", "tiny"],
    "Transformer size for each length (see "
    "md4.config_recipes.TRANSFORMER_SIZES).",
)
_BATCHES = flags.DEFINE_list(
    "batches", ["4", "2"], "Samples per compiled call, for each length."
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 2, "Alternating rounds; each times one batch of every sampler."
)
_STEPS = flags.DEFINE_integer("steps", 1000, "Time steps T.")
_DRAWS = flags.DEFINE_integer(
    "draws", 100_000_000, "Sampled draws per pi (exactness part)."
)
_PIS = flags.DEFINE_list(
    "pis",
    ["1e-5", "1e-6", "1e-7", "1e-8"],
    "Rare-outcome probabilities (exactness part).",
)
_CHUNK = 10_000_000


# -------------------------------------------------------------- speed -----


def speed_model(length: int, size: str):
  """The benchmark's model at one length and random EMA-like parameters."""
  c = configuration.default_config()
  c.data.dataset = "text8"
  c.data.data_shape = (length,)
  c.data.vocab_size = 27
  c.network = config_recipes.transformer(size, dropout_rate=0.0)
  c.network.time_features = "none"
  model = model_lib.build_model(c)
  params = jax.jit(lambda r: model_lib.init_variables(model, r))(
      jax.random.key(0)
  )["params"]
  return model, params


def run_speed() -> None:
  if not len(_LENGTHS.value) == len(_SIZES.value) == len(_BATCHES.value):
    raise app.UsageError(
        "--lengths, --sizes and --batches need one entry per length."
    )
  rows = []
  for length, size, batch in zip(_LENGTHS.value, _SIZES.value, _BATCHES.value):
    rows += run_speed_at(int(length), size, int(batch))
  print(
      "\n| L | network | sampler | network calls / sample | samples/s | "
      "fewer calls | samples/s vs ancestral | load |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(
        f"| {r['length']} | `{r['size']}` | `{r['sampler']}` | "
        f"{r['calls']:.0f} | {r['samples_per_s']:.4g} | "
        f"{r['fewer_calls']:.2f}x | **{r['speedup']:.2f}x** | "
        f"{r['load']} |"
    )


def sampler_names(process) -> list[str]:
  """Every sampler of the process, `ancestral` (the naive one) first."""
  names = list(sampling.names_for(process))
  return ["ancestral"] + [n for n in names if n != "ancestral"]


def compiled_sampler(model, params, name: str, settings, batch: int):
  """One batch of the named sampler, jitted and compiled: rng -> Result.

  The sampler's own settings take their defaults, with the grid of
  `settings`.
  """
  sampler = sampling.get(name)
  sample_fn = sampler.draw
  settings = sampler.make_settings(**dataclasses.asdict(settings))

  def one_batch(params, rng):
    reverse = core.from_model(model, {"params": params})
    return sample_fn(reverse, rng, batch, settings)

  compiled = jax.jit(one_batch).lower(params, jax.random.key(0)).compile()
  return lambda rng: jax.block_until_ready(compiled(params, rng))


def run_speed_at(length: int, size: str, batch: int) -> list[dict]:
  """Every sampler at one length; ratios against the first (ancestral).

  All samplers are compiled first; then `--repeats` rounds each draw one
  batch of every sampler (the order rotated by one each round), so that
  load changes reach every sampler alike. Samples/s: batch x rounds / the
  sampler's summed time.
  """
  model, params = speed_model(length, size)
  settings = core.Settings(num_steps=_STEPS.value)
  settings.validate()
  names = list(_SAMPLERS.value or sampler_names(model.process))
  print(
      f"\nSpeed: transformer {size}, time_features=none, V=27, "
      f"L={length}, T={_STEPS.value}, batch {batch}, {_REPEATS.value} "
      f"alternating rounds, {jax.devices()[0].device_kind}, load average "
      f"{os.getloadavg()[0]:.1f}",
      flush=True,
  )
  runs, compile_s = {}, {}
  for name in names:
    start = time.perf_counter()
    runs[name] = compiled_sampler(model, params, name, settings, batch)
    compile_s[name] = time.perf_counter() - start
  for name in names:  # One untimed draw each: first-run costs stay out.
    runs[name](jax.random.key(1))
  seconds = {n: 0.0 for n in names}
  calls = {n: [] for n in names}
  loads = []
  for r in range(_REPEATS.value):
    loads.append(os.getloadavg()[0])
    for j in range(len(names)):
      name = names[(j + r) % len(names)]
      start = time.perf_counter()
      result = runs[name](jax.random.fold_in(jax.random.key(0), r))
      seconds[name] += time.perf_counter() - start
      calls[name].append(int(result.network_calls))
  print(
      f"{'sampler':15s} {'calls/sample':>13s} {'samples/s':>10s} "
      f"{'fewer calls':>12s} {'speed-up':>9s} {'compile s':>10s}"
  )
  rows = []
  base = names[0]
  load = f"{min(loads):.1f}-{max(loads):.1f}"
  for name in names:
    rate = batch * _REPEATS.value / seconds[name]
    mean_calls = float(np.mean(calls[name]))
    rows.append({
        "length": length,
        "size": size,
        "sampler": name,
        "load": load,
        "calls": mean_calls,
        "samples_per_s": rate,
        "fewer_calls": float(np.mean(calls[base])) / mean_calls,
        "speedup": seconds[base] / seconds[name],
    })
    print(
        f"{name:15s} {mean_calls:13.1f} {rate:10.4f} "
        f"{rows[-1]['fewer_calls']:11.2f}x {rows[-1]['speedup']:8.2f}x "
        f"{compile_s[name]:10.1f}"
    )
  print(
      "load average at the start of each round: "
      + ", ".join(f"{x:.1f}" for x in loads)
  )
  expected = expected_reveal_steps(model, settings, length)
  print(
      f"Floor for any exact sampler of this {_STEPS.value}-step process: "
      f"one call per distinct reveal step, {expected:.1f} expected per "
      f"sample, i.e. at most {(_STEPS.value + 1) / expected:.2f}x fewer "
      "calls than the naive sampler.",
      flush=True,
  )
  return rows


def expected_reveal_steps(model, settings, length: int) -> float:
  """E[number of distinct steps at which a sample reveals a token].

  Each of the L tokens is revealed at step i with probability p_i (the
  schedule's mass between grid times i and i + 1; the final fill takes the
  rest), independently of the others, so step i has a reveal with
  probability 1 - (1 - p_i)^L. A sampler drawing the T-step process exactly
  needs a network call at each such step (the state changed), so the sum is
  a floor on calls per sample; the cached sampler attains it.
  """
  times = np.asarray(
      core.time_grid(settings.num_steps, settings.grid), np.float64
  )
  alpha = np.asarray(model.process.alpha({})(times), np.float64)
  masked = (1.0 - alpha) / (1.0 - alpha[0])  # [T + 1], 1 at t_0 = 1
  p = np.append(-np.diff(masked), masked[-1])  # [T + 1]
  return float(np.sum(1.0 - (1.0 - p) ** length))


# ---------------------------------------------------------- exactness -----

_TINY = np.finfo(np.float32).tiny


def grid_uniforms() -> np.ndarray:
  """Every value of jax's 23-bit float32 uniform on [tiny, 1), ascending."""
  u = np.arange(2**23, dtype=np.float64) * 2.0**-23
  return np.maximum(u.astype(np.float32), np.float32(_TINY))


def exact_inverse_cdf_f32(pi: float) -> float:
  """P(rare) of the pre-issue-5 draw: cumsum([pi, 1 - pi]) in float32."""
  probs = np.array([pi, 1.0 - pi], np.float32)
  cdf = np.cumsum(probs, dtype=np.float32)  # [2]
  u = np.arange(2**23, dtype=np.float64) * 2.0**-23  # [0, 1) grid
  scaled = (u.astype(np.float32) * cdf[-1]).astype(np.float32)
  return float(np.mean(scaled < cdf[0]))  # rare outcome = index 0


def exact_gumbel_f32(pi: float) -> float:
  """P(rare) of float32 Gumbel-max (mode "low"), by enumerating uniforms."""
  g = np.asarray(jax.jit(lambda u: -jnp.log(-jnp.log(u)))(grid_uniforms()))
  l0, l1 = np.float32(np.log1p(-pi)), np.float32(np.log(pi))
  common = np.sort((g + l0).astype(np.float32))  # outcome 0's scores
  rare = (g + l1).astype(np.float32)
  # The rare outcome (index 1) wins when its score is strictly larger.
  wins = np.searchsorted(common, rare, side="left").astype(np.float64)
  return float(wins.sum() / 2.0**46)


def sampled(
    method, pi: float, draws: int, stream: int
) -> tuple[float, float, float]:
  """(P(rare) / pi, its standard error, draws/s) from `draws` draws.

  Each method gets its own key stream: from the same bits `gumbel_high` and
  `md4_race` make the same rare draws, so shared keys would share their
  statistical error.
  """
  logits = jnp.log(jnp.array([1.0 - pi, pi], jnp.float32))
  count_fn = jax.jit(
      lambda r: (method(r, jnp.broadcast_to(logits, (_CHUNK, 2))) == 1).sum()
  )
  count_fn(jax.random.key(0)).block_until_ready()
  chunks = max(1, draws // _CHUNK)
  start = time.perf_counter()
  keys = [jax.random.fold_in(jax.random.key(stream), i) for i in range(chunks)]
  count = sum(int(count_fn(k)) for k in keys)
  rate = chunks * _CHUNK / (time.perf_counter() - start)
  n = chunks * _CHUNK
  return count / n / pi, np.sqrt(max(count, 1)) / n / pi, rate


def inverse_cdf_f32(rng, log_probs):
  """md4's draw before issue #5, with the rare outcome (index 1) first."""
  probs = jnp.exp(log_probs[..., ::-1])  # [..., 2], rare outcome first
  cdf = jnp.cumsum(probs, -1)
  u = jax.random.uniform(rng, probs.shape[:-1] + (1,)) * cdf[..., -1:]
  return 1 - jnp.minimum((cdf <= u).sum(-1), 1)


METHODS = {
    "inverse_cdf_f32": inverse_cdf_f32,
    "gumbel_f32": lambda r, l: jax.random.categorical(r, l, mode="low"),
    "gumbel_high": lambda r, l: jax.random.categorical(r, l, mode="high"),
    "md4_race": core.categorical,
}


def run_exactness() -> None:
  print(
      "\nExactness: P(rare outcome) / pi for a draw from [1 - pi, pi] "
      f"(1 = exact); exact = enumerated, else {_DRAWS.value:.1e} draws "
      "+- standard error"
  )
  rates = {}
  header = f"{'pi':>8s} " + " ".join(f"{m:>22s}" for m in METHODS)
  print(header)
  for text in _PIS.value:
    pi = float(text)
    cells = [
        f"{exact_inverse_cdf_f32(pi) / pi:.4f} (exact)",
        f"{exact_gumbel_f32(pi) / pi:.4f} (exact)",
    ]
    for name in ("gumbel_high", "md4_race"):
      if pi * _DRAWS.value < 30:
        cells.append("- (too rare)")
        continue
      stream = list(METHODS).index(name) * 1000 + _PIS.value.index(text)
      ratio, se, rates[name] = sampled(METHODS[name], pi, _DRAWS.value, stream)
      cells.append(f"{ratio:.3f} +- {se:.3f}")
    print(f"{pi:8.0e} " + " ".join(f"{c:>22s}" for c in cells))
  for name in ("inverse_cdf_f32", "gumbel_f32"):
    _, _, rates[name] = sampled(METHODS[name], 1e-3, _CHUNK, 0)
  print(
      "draws/s (2 outcomes): "
      + ", ".join(f"{m} {rates[m] / 1e6:.1f}M" for m in METHODS if m in rates)
  )


def check_flags() -> None:
  """Rejects unknown parts and samplers before anything is compiled."""
  unknown = [p for p in _PARTS.value if p not in ("speed", "exactness")]
  if unknown:
    raise app.UsageError(
        f"--parts: unknown {unknown}; valid: speed, exactness."
    )
  for name in _SAMPLERS.value or ():
    try:
      sampling.get(name)
    except ValueError as e:
      raise app.UsageError(f"--samplers={name}: {e}") from e


def main(argv):
  del argv
  check_flags()
  print(f"jax {jax.__version__}, {jax.devices()}")
  if "speed" in _PARTS.value:
    run_speed()
  if "exactness" in _PARTS.value:
    run_exactness()


if __name__ == "__main__":
  error_boundary.run_app(main)
