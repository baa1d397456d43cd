r"""md4's train step against a reference-equivalent step, side by side.

    python benchmarks/train_step.py --shapes=text8,owt,cifar --rounds=5 \
        --json=/tmp/train_step.json
    python benchmarks/train_step.py --shapes=text8 --bf16 --loss_steps=50

For each shape the script builds the shipped CPU config (`text8`:
configs/md4/text8.py:cpu, `owt`: configs/md4/openwebtext.py:cpu, `cifar`:
configs/md4/cifar10.py:cpu) in float32 and compiles two train steps from
the same model, optimizer and `md4.train.make_train_step` (one-device mesh,
state donated, as `train.jit_train_step`):

* **ours**: the step as md4 trains it;
* **reference**: the same network and optimizer with the reference MD4
  implementation's choices, swapped in while tracing (`reference_choices`):
  full [B, L, V] logits (`logits_chunk=0`), the one-hot cross-entropy
  `sum(one_hot(x) * log_softmax(logits))`, plain softmax attention
  (the reference's two einsums around a softmax) differentiated by JAX,
  no chunking, no custom VJPs.

Both start from the same parameters and see the same batch (random tokens,
fixed) and step keys. After one warm-up step each, `--rounds` rounds each
time one step of every variant, alternating which goes first, so that both
see the same machine load. Printed per shape: the median step time of each,
their ratio (reference / ours), the median of the per-round ratios, tokens/s
(pixels x channels for images), the compiled memory of both, and model-FLOP
utilisation = model FLOPs / step time / peak, where the peak is this run's
best 2048^3 float32 matmul rate (`--peak_matmuls` of them, timed before the
first compile and again after each shape; the best is kept, with the load
average at that moment). Model FLOPs: 6 x parameters applied per token x tokens +
attention matmuls for the transformer (analytic); XLA's count of the
reference step for the U-Net.

`--bf16` adds a third variant, our step with `network.dtype="bfloat16"`,
timed in the same rounds, its utilisation also against a best 2048^3
bfloat16 matmul; `--loss_steps=N` then trains our step in float32 and in
bfloat16 for N steps from the same start on the same batches and reports
the loss difference.

No figure from another run enters a ratio. Timings depend on machine load:
the load average is printed beside every figure.
"""

import contextlib
import datetime
import json
import math
import os
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

# Run as `python benchmarks/train_step.py` from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

# pylint: enable=g-import-not-at-top,wrong-import-position

console.hide_native_logs()  # Before md4's modules import TensorFlow.

# pylint: disable=g-import-not-at-top,wrong-import-position
import compiled_step
from compiled_step import loadavg
from compiled_step import machine
from md4 import config_recipes
from md4 import configuration
from md4.diffusion import chunked_logits
from md4.networks import transformer

# pylint: enable=g-import-not-at-top,wrong-import-position

_SHAPES = flags.DEFINE_list(
    "shapes", ["text8", "owt", "cifar"], "Shapes to run: text8, owt, cifar."
)
_ROUNDS = flags.DEFINE_integer(
    "rounds",
    5,
    "Timed rounds per shape (one step of each variant a round,"
    " after one warm-up step each).",
)
_PEAK_MATMULS = flags.DEFINE_integer(
    "peak_matmuls",
    8,
    "2048^3 matmuls timed for the peak (best kept), at the"
    " start and at the end of the run.",
)
_BF16 = flags.DEFINE_bool(
    "bf16", False, "Also time our step with network.dtype='bfloat16'."
)
_LOSS_STEPS = flags.DEFINE_integer(
    "loss_steps",
    0,
    "With --bf16: train float32 and bfloat16 this many steps"
    " and report the loss difference (0: skip).",
)
_JSON = flags.DEFINE_string(
    "json", None, "Also write every figure as JSON to this path."
)

# Shape name -> (config file, variant).
SHAPES = {
    "text8": ("configs/md4/text8.py", "cpu"),
    "owt": ("configs/md4/openwebtext.py", "cpu"),
    "cifar": ("configs/md4/cifar10.py", "cpu"),
}


def make_config(shape: str, dtype: str = "float32"):
  """The shipped CPU config of a shape, with the compute dtype set."""
  path, arg = SHAPES[shape]
  c = config_recipes.load_file(os.path.join(ROOT, path), arg)
  c.network.dtype = dtype
  configuration.validate(c)
  return c


# ------------------------------------------- the reference's choices ------


def one_hot_target_log_prob(logits, x, where=None):
  """The reference's cross-entropy: one-hot x times log_softmax, summed.

  Every position's logits are formed; `where` (md4's skip of unread rows)
  only zeroes the unread results afterwards, as the reference's mask does.

  Args:
    logits: [..., V] float logits.
    x: int targets [...].
    where: optional bool [...]: the positions the loss reads.

  Returns:
    float32 [...].
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [..., V]
  one_hot = jax.nn.one_hot(x, logits.shape[-1])  # [..., V]
  picked = jnp.where(one_hot > 0, one_hot * log_p, 0.0)  # [..., V]
  log_p_x = jnp.sum(picked, axis=-1)  # [...]
  return log_p_x if where is None else jnp.where(where, log_p_x, 0.0)


def plain_attention(q, k, v, causal=False):
  """softmax(q k^T / sqrt(H)) v, written as the reference writes it.

  Two einsums around a float32 softmax, differentiated by JAX (no custom
  VJP). On this CPU it is a little faster than
  `jax.nn.dot_product_attention(implementation="xla")` (fwd + bwd of the
  text8 shape's attention: 565 vs 618 ms, load ~7), so the reference step
  gets the faster of the two plain forms.

  Args:
    q: [B, L, N, H] queries.
    k: [B, S, N, H] keys.
    v: [B, S, N, H] values.

  Returns:
    [B, L, N, H] in the dtype of v.
  """
  scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  scores = jnp.einsum("btnh,bsnh->bnts", q, k) * scale  # [B, N, L, S]
  if causal:
    length = q.shape[1]
    allowed = jnp.tril(jnp.ones((length, length), bool))  # [L, S]
    scores = jnp.where(allowed, scores, -jnp.inf)
  probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
  return jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v)


# Every fast path of md4 and what the reference does instead:
# (module, attribute, replacement) while tracing the reference step.
REFERENCE_PATCHES = (
    (chunked_logits, "target_log_prob", one_hot_target_log_prob),
    (transformer, "lean_attention", plain_attention),
)


@contextlib.contextmanager
def reference_choices():
  """Traces md4's model with the reference's cross-entropy and attention."""
  saved = [(m, name, getattr(m, name)) for m, name, _ in REFERENCE_PATCHES]
  try:
    for m, name, replacement in REFERENCE_PATCHES:
      setattr(m, name, replacement)
    yield
  finally:
    for m, name, original in saved:
      setattr(m, name, original)


def reference_config(config):
  """The config of the reference step: full logits (nothing chunked)."""
  config = config.copy_and_resolve_references()
  if config.network.name == "transformer":
    config.network.logits_chunk = 0
  return config


def compile_reference(config, seed: int = 0) -> compiled_step.Compiled:
  """The reference-equivalent step of `config` (same seed: same start)."""
  with reference_choices():
    return compiled_step.compile_step(
        "reference", reference_config(config), seed
    )


# ------------------------------------------------------------- timing -----


def time_alternating(variants: list[compiled_step.Compiled], rounds: int):
  """Per-variant step seconds over `rounds` rounds of one step each.

  One warm-up step each first. Round r runs the variants in order, rotated
  by r, so no variant always runs first.

  Returns:
    (seconds per variant [rounds], load average per round, last loss per
    variant).
  """
  states = [c.state for c in variants]
  losses = [None] * len(variants)
  for i, c in enumerate(variants):
    states[i], _ = c.step(states[i])
  seconds = [[] for _ in variants]
  loads = []
  n = len(variants)
  for r in range(rounds):
    loads.append(loadavg())
    for j in range(n):
      i = (j + r) % n
      start = time.perf_counter()
      states[i], metrics = variants[i].step(states[i])
      seconds[i].append(time.perf_counter() - start)
      losses[i] = float(metrics["loss"])
  for c in variants:
    c.state = None  # donated
  return seconds, loads, losses


# ------------------------------------------------------------ figures -----


def summarise(seconds: list[float]) -> dict[str, Any]:
  return {
      "ms": 1e3 * statistics.median(seconds),
      "ms_min": 1e3 * min(seconds),
      "ms_all": [1e3 * s for s in seconds],
  }


def run_shape(shape: str, rounds: int, bf16: bool) -> dict[str, Any]:
  """Compiles the variants of one shape, times them alternately."""
  config = make_config(shape)
  load_start = loadavg()
  variants = [
      compiled_step.compile_step("ours", config),
      compile_reference(config),
  ]
  if bf16:
    variants.append(
        compiled_step.compile_step("ours_bf16", make_config(shape, "bfloat16"))
    )
  ours, ref = variants[0], variants[1]
  params = ours.state.params
  groups = compiled_step.param_groups(params)
  elements = config.train.batch_size * math.prod(config.data.data_shape)
  flops_reference = compiled_step.compiled_flops(ref.fn)
  if config.network.name == "transformer":
    model_flops = compiled_step.transformer_flops(groups, config)
    flops_source = "analytic 6 N D + attention"
  else:
    model_flops = flops_reference
    flops_source = "XLA cost analysis of the reference step"
  memory = {c.name: compiled_step.memory_figures(c.fn) for c in variants}
  compile_s = {c.name: c.compile_s for c in variants}
  seconds, loads, losses = time_alternating(variants, rounds)
  r: dict[str, Any] = {
      "shape": shape,
      "config": ":".join(SHAPES[shape]),
      "network": config.network.name,
      "batch": config.train.batch_size,
      "data_shape": list(config.data.data_shape),
      "vocab_size": config.data.vocab_size,
      "params": sum(groups.values()),
      "elements_per_step": elements,
      "model_flops": model_flops,
      "flops_source": flops_source,
      "flops_compiled_reference": flops_reference,
      "compile_s": compile_s,
      "memory": memory,
      "loads": loads,
      "load_start": load_start,
      "losses": dict(zip([c.name for c in variants], losses)),
  }
  if config.network.name == "transformer":
    r["logits_chunk"] = transformer.logits_chunk_positions(
        config.network.logits_chunk,
        config.train.batch_size,
        config.data.data_shape[0],
        config.data.vocab_size,
    )
  for c, s in zip(variants, seconds):
    fig = summarise(s)
    fig["elements_per_s"] = elements / (fig["ms"] / 1e3)
    r[c.name] = fig
  for c, s in zip(variants[:1] + variants[2:], [seconds[0]] + seconds[2:]):
    paired = [b / a for a, b in zip(s, seconds[1])]
    r[c.name]["ratio"] = r["reference"]["ms"] / r[c.name]["ms"]
    r[c.name]["ratio_paired_median"] = statistics.median(paired)
  return r


def add_utilisation(r: dict[str, Any], peaks: dict[str, dict]) -> None:
  """MFU of each variant against the float32 (and bf16) peak of the run."""
  for name in ("ours", "reference", "ours_bf16"):
    if name not in r:
      continue
    rate = r["model_flops"] / (r[name]["ms"] / 1e3)
    r[name]["model_gflops_per_s"] = rate / 1e9
    r[name]["mfu_f32_peak"] = rate / (peaks["float32"]["gflops"] * 1e9)
    if "bfloat16" in peaks:
      r[name]["mfu_bf16_peak"] = rate / (peaks["bfloat16"]["gflops"] * 1e9)


# ---------------------------------------------------- bf16 loss drift -----


def loss_drift(shape: str, steps: int) -> dict[str, Any]:
  """Losses of our float32 and bfloat16 steps over `steps` steps.

  Same initial parameters, and at step k the same batch (random tokens
  from `fold_in(key, k)`) and step key for both.
  """
  out = {}
  for dtype in ("float32", "bfloat16"):
    config = make_config(shape, dtype)
    c = compiled_step.compile_step(dtype, config)
    state, losses = c.state, []
    shape_x = tuple(c.batch["x"].shape)
    for k in range(steps):
      x = jax.random.randint(
          jax.random.fold_in(jax.random.key(1), k),
          shape_x,
          0,
          config.data.vocab_size,
          jnp.int32,
      )
      state, metrics = c.step(state, {"x": x})
      losses.append(float(metrics["loss"]))
    out[dtype] = losses
  f32, bf16 = out["float32"], out["bfloat16"]
  return {
      "steps": steps,
      "float32": f32,
      "bfloat16": bf16,
      "last_difference": bf16[-1] - f32[-1],
      "last_relative": (bf16[-1] - f32[-1]) / f32[-1],
      "max_abs_difference": max(abs(a - b) for a, b in zip(f32, bf16)),
  }


# ------------------------------------------------------------- output -----


def _mib(n: int) -> str:
  return f"{n / 2**20:,.0f} MiB"


def print_shape(r: dict[str, Any]) -> None:
  unit = "tokens" if r["network"] == "transformer" else "values"
  print(
      f"\n== {r['shape']} ({r['config']}): {r['network']}, batch "
      f"{r['batch']}, data {tuple(r['data_shape'])}, vocab "
      f"{r['vocab_size']}, {r['params']:,} params"
  )
  if "logits_chunk" in r:
    chunk = r["logits_chunk"]
    print(
        "  ours' loss logits "
        + (f"{chunk} positions at a time" if chunk else "all at once")
    )
  loads = ", ".join(f"{x:.1f}" for x in r["loads"])
  print(f"  load average per round: {loads}")
  for name in ("ours", "reference", "ours_bf16"):
    if name not in r:
      continue
    f = r[name]
    times = ", ".join(f"{x:.0f}" for x in f["ms_all"])
    m = r["memory"][name]
    print(
        f"  {name:10s} {f['ms']:8.0f} ms median ({times}), "
        f"{f['elements_per_s']:9,.0f} {unit}/s, MFU "
        f"{100 * f['mfu_f32_peak']:.1f}% of the f32 peak"
        + (
            f" ({100 * f['mfu_bf16_peak']:.1f}% of the bf16 peak)"
            if "mfu_bf16_peak" in f
            else ""
        )
        + f"; held {_mib(m['held'])} (temp {_mib(m['temp'])}); "
        f"compiled in {r['compile_s'][name]:.0f} s"
    )
    if "ratio" in f:
      print(
          f"  {'':10s} reference / {name} = {f['ratio']:.2f}x (median of "
          f"per-round ratios {f['ratio_paired_median']:.2f}x)"
      )
  losses = ", ".join(f"{k} {v:.6f}" for k, v in r["losses"].items())
  print(
      f"  loss after {len(r['loads']) + 1} steps from the same start: {losses}"
  )
  print(
      f"  model FLOPs/step {r['model_flops'] / 1e9:.1f} GFLOP "
      f"({r['flops_source']}); XLA count of the reference step "
      f"{(r['flops_compiled_reference'] or 0) / 1e9:.1f} GFLOP"
  )
  sys.stdout.flush()


def print_table(results: list[dict[str, Any]], peaks) -> None:
  print(
      "\n| shape | reference ms | ours ms | reference / ours | tokens/s "
      "ours (ref) | MFU ours (ref), f32 peak | held memory ours (ref) | "
      "load |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    o, f = r["ours"], r["reference"]
    loads = f"{min(r['loads']):.1f}-{max(r['loads']):.1f}"
    print(
        f"| `{r['shape']}` | {f['ms']:,.0f} | {o['ms']:,.0f} | "
        f"**{o['ratio']:.2f}x** ({o['ratio_paired_median']:.2f}) | "
        f"{o['elements_per_s']:,.0f} ({f['elements_per_s']:,.0f}) | "
        f"{100 * o['mfu_f32_peak']:.0f}% ({100 * f['mfu_f32_peak']:.0f}%)"
        f" | {_mib(r['memory']['ours']['held'])} "
        f"({_mib(r['memory']['reference']['held'])}) | {loads} |"
    )
    if "ours_bf16" in r:
      b = r["ours_bf16"]
      print(
          f"| `{r['shape']}` bf16 | {f['ms']:,.0f} | {b['ms']:,.0f} | "
          f"**{b['ratio']:.2f}x** ({b['ratio_paired_median']:.2f}) | "
          f"{b['elements_per_s']:,.0f} | "
          f"{100 * b['mfu_f32_peak']:.0f}% of f32, "
          f"{100 * b.get('mfu_bf16_peak', 0):.0f}% of bf16 | "
          f"{_mib(r['memory']['ours_bf16']['held'])} | {loads} |"
      )
  for dtype, p in peaks.items():
    print(
        f"\n{dtype} peak: best of the 2048^3 matmuls "
        f"{p['gflops']:.0f} GFLOP/s (load average {p['load']:.1f} at "
        f"{p['time']}; median of that set {p['median_gflops']:.0f})."
    )


def main(argv):
  del argv
  unknown = [s for s in _SHAPES.value if s not in SHAPES]
  if unknown:
    raise app.UsageError(
        f"--shapes: unknown {unknown}; valid: {', '.join(SHAPES)}."
    )
  if _ROUNDS.value < 1:
    raise app.UsageError("--rounds must be >= 1.")
  when = datetime.datetime.now().isoformat(timespec="minutes")
  print(
      f"md4 train step vs reference-equivalent step, {when}, jax "
      f"{jax.__version__} on {jax.devices()[0].platform}, {machine()}, "
      f"load average {loadavg():.1f}"
  )
  dtypes = [jnp.float32] + ([jnp.bfloat16] if _BF16.value else [])
  peak_runs = {
      jnp.dtype(d).name: [compiled_step.matmul_peak(_PEAK_MATMULS.value, d)]
      for d in dtypes
  }
  results = []
  for name in _SHAPES.value:
    results.append(run_shape(name, _ROUNDS.value, _BF16.value))
    for d in dtypes:  # again after each shape: the best finds a quiet moment
      peak_runs[jnp.dtype(d).name].append(
          compiled_step.matmul_peak(_PEAK_MATMULS.value, d)
      )
  peaks = {
      d: max(runs, key=lambda p: p["gflops"]) for d, runs in peak_runs.items()
  }
  for r in results:
    add_utilisation(r, peaks)
    print_shape(r)
  print_table(results, peaks)
  drift = {}
  if _BF16.value and _LOSS_STEPS.value > 0:
    for name in _SHAPES.value:
      drift[name] = d = loss_drift(name, _LOSS_STEPS.value)
      print(
          f"\n{name}: loss after {d['steps']} steps float32 "
          f"{d['float32'][-1]:.5f}, bfloat16 {d['bfloat16'][-1]:.5f}: "
          f"difference {d['last_difference']:+.5f} "
          f"({100 * d['last_relative']:+.3f}%); largest |difference| "
          f"over the steps {d['max_abs_difference']:.5f}"
      )
  print(f"\nload average at the end: {loadavg():.1f}")
  if _JSON.value:
    payload = {
        "date": when,
        "jax": jax.__version__,
        "machine": machine(),
        "platform": jax.devices()[0].platform,
        "rounds": _ROUNDS.value,
        "peaks": peaks,
        "peak_runs": peak_runs,
        "shapes": results,
        "bf16_loss_drift": drift,
    }
    with open(_JSON.value, "w") as f:
      json.dump(payload, f, indent=2)
    print(f"Wrote {_JSON.value}")


if __name__ == "__main__":
  error_boundary.run_app(main)
