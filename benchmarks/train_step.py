r"""Times md4's real training step on the CPU-sized shapes of issue #9.

    python benchmarks/train_step.py --shapes=text8,owt,cifar --steps=5 \
        --json=/tmp/train_step.json

For each shape the script builds a config from `default_config()`, the model
with `md4.model.build_model`, the optimizer with `md4.optimizers`, and jits
`md4.train.make_train_step` exactly as `train.train_and_evaluate` does (one
device mesh, logical-axis rules, state donated). It then prints:

* step ms: median of `--steps` timed steps after one warm-up step, each
  ended by `jax.block_until_ready`;
* tokens/s (pixels/s for images: B * H * W * C per second);
* model FLOPs per step, from the compiled executable's cost analysis and,
  for the transformer, an analytic count (6 * per-token parameters * tokens,
  + 6 * per-example parameters * B, + 12 * layers * L * W * tokens for the
  two attention matmuls);
* the dense-matmul rate measured in the same run (2048^3 float32 `jnp.dot`),
  interleaved with the timed steps so both see the same machine load;
* model-FLOPs utilisation = FLOPs per step / step time / matmul rate;
* for `owt`: the compiled step's memory next to a naive variant whose
  cross-entropy builds a [B, L, V] one-hot (benchmark-only; the model and
  step are otherwise the same), and the naive variant's step time;
* the reference figures of issue #9 and our speed-up over them, normalised
  by the matmul rate (see `normalised_speedup`).

Timings depend on machine load: compare ratios within one run.
"""

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

# Run as `python benchmarks/train_step.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from md4 import configuration  # pylint: disable=g-import-not-at-top
from md4 import model as model_lib
from md4 import optimizers
from md4 import sharding
from md4 import train
from md4.diffusion import md4 as md4_diffusion
from md4.networks import transformer

_SHAPES = flags.DEFINE_list("shapes", ["text8", "owt", "cifar"],
                            "Shapes to run: text8, owt, cifar.")
_STEPS = flags.DEFINE_integer("steps", 5,
                              "Timed steps per shape (after one warm-up).")
_JSON = flags.DEFINE_string("json", None,
                            "Also write every figure as JSON to this path.")
_MATMUL_PER_STEP = flags.DEFINE_integer(
    "matmul_per_step", 3,
    "2048^3 matmuls timed after each timed step (the rate is their median).")
_LOGITS_CHUNK = flags.DEFINE_integer(
    "logits_chunk", None,
    "Override network.logits_chunk of the transformer shapes (-1 automatic,"
    " 0 full logits, N positions per chunk); default: the network's own"
    " default (automatic).")
_NAIVE = flags.DEFINE_bool(
    "naive", True,
    "For owt, also compile (memory) and time the one-hot cross-entropy step,"
    " alternating its steps with ours.")

MATMUL_N = 2048
MATMUL_FLOPS = 2 * MATMUL_N ** 3

# Issue #9: the reference implementation's full step (loss, gradients,
# AdamW) on this machine kind, mean of 5 steps after a warm-up, with a
# 2048^3 float32 matmul at 300-317 GFLOP/s.
REFERENCE_MATMUL_GFLOPS = (300.0, 317.0)


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmark shape and its reference figures from issue #9."""
  name: str
  batch: int
  reference_s: tuple[float, float]  # (low, high) step seconds
  reference_mfu: float | None
  target_speedup: float
  target_mfu: float | None


SHAPES = {
    "text8": Shape("text8", 32, (2.5, 2.5), 0.25, 1.5, 0.5),
    "owt": Shape("owt", 8, (8.4, 8.7), 0.14, 5.0, 0.5),
    "cifar": Shape("cifar", 8, (1.6, 1.8), None, 1.5, None),
}


def make_config(shape: Shape):
  """The config of one shape: float32, continuous time, AdamW, dropout 0."""
  c = configuration.default_config()
  if shape.name in ("text8", "owt"):
    c.data.dataset = "text8" if shape.name == "text8" else "openwebtext"
    c.data.data_shape = (256,)
    c.data.vocab_size = 27 if shape.name == "text8" else 50_257
    # 4 layers x width 256 x 8 heads (head dim 32), GLU MLP, adaLN-zero.
    c.network = configuration.transformer("cpu", dropout_rate=0.0)
    if _LOGITS_CHUNK.value is not None:
      c.network.logits_chunk = _LOGITS_CHUNK.value
  else:
    c.data.dataset = "cifar10"
    c.data.data_shape = (32, 32, 3)
    c.data.vocab_size = 256
    c.network = configuration.unet(ch=64, num_res_blocks=4, dropout_rate=0.0,
                                   ch_mult=(1,), attn_resolutions=())
  c.network.dtype = "float32"
  c.model.process = "md4"
  c.model.num_steps = 0  # continuous time
  c.optimizer.weight_decay = 0.03  # AdamW with decay, as the configs
  c.train.batch_size = c.train.eval_batch_size = shape.batch
  c.train.micro_batches = 1
  configuration.validate(c)
  return c


# ------------------------------------------------------------ the step ----


@dataclasses.dataclass
class Compiled:
  """A compiled train step with what is needed to run it."""
  fn: Any
  state: Any
  batch: dict
  rng: jax.Array
  mesh: jax.sharding.Mesh
  rules: tuple


def compile_step(config, seed: int = 0) -> Compiled:
  """Builds model, optimizer, sharded state and the jitted step, as train.py.

  This mirrors `train.build` / `train.train_and_evaluate` without a data
  pipeline: the batch is random tokens of the configured shape.
  """
  mesh = sharding.make_mesh(config.sharding.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  model = model_lib.build_model(config)
  optimizer = optimizers.build_optimizer(config.optimizer,
                                         config.train.num_steps)
  boxed = jax.eval_shape(
      lambda r: train._init_state(model, optimizer, r),  # pylint: disable=protected-access
      jax.random.key(0))
  state_shardings = sharding.tree_shardings(mesh, rules, boxed)
  batch_sharding = sharding.logical_sharding(mesh, rules, (sharding.BATCH,))
  setup = train.Setup(config, mesh, rules, model, optimizer, datasets=None,
                      state_shardings=state_shardings, abstract_state=None,
                      batch_sharding=batch_sharding)
  rng = jax.random.key(seed)
  init_rng, data_rng, step_rng = jax.random.split(rng, 3)
  state = train.create_state(setup, init_rng)
  x = jax.random.randint(
      data_rng, (config.train.batch_size,) + tuple(config.data.data_shape), 0,
      config.data.vocab_size, jnp.int32)
  batch = {"x": jax.device_put(x, batch_sharding)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step = jax.jit(
        train.make_train_step(model, optimizer, config),
        in_shardings=(state_shardings, batch_sharding, None),
        out_shardings=(state_shardings, None), donate_argnums=(0,))
    compiled = step.lower(state, batch, step_rng).compile()
  return Compiled(compiled, state, batch, step_rng, mesh, rules)


def naive_config(config):
  """The same config with full logits (the one-hot swap needs them)."""
  config = config.copy_and_resolve_references()
  config.network.logits_chunk = 0
  return config


def _one_hot_target_log_prob(logits, x):
  """Naive log softmax(logits)[x]: a [..., V] one-hot times log-softmax."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [..., V]
  one_hot = jax.nn.one_hot(x, logits.shape[-1], dtype=jnp.float32)  # [..., V]
  return jnp.sum(one_hot * logp, axis=-1)  # [...]


@contextlib.contextmanager
def naive_cross_entropy():
  """Traces md4's loss with the one-hot cross-entropy (benchmark only)."""
  original = md4_diffusion.target_log_prob
  md4_diffusion.target_log_prob = _one_hot_target_log_prob
  try:
    yield
  finally:
    md4_diffusion.target_log_prob = original


# ------------------------------------------------------------- timing -----


def make_matmul():
  """A jitted 2048^3 float32 matmul and its operands, compiled and warm."""
  ka, kb = jax.random.split(jax.random.key(42))
  a = jax.random.normal(ka, (MATMUL_N, MATMUL_N), jnp.float32)
  b = jax.random.normal(kb, (MATMUL_N, MATMUL_N), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  return lambda: jax.block_until_ready(dot(a, b))


def time_call(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def time_steps(variants: list[Compiled], steps: int, matmul,
               matmul_per_step: int):
  """Times each variant's step; one warm-up step each first.

  Rounds alternate between the variants (ours, then the naive one for
  `owt`) and each round ends with `matmul_per_step` timed matmuls, so that
  every figure compared within a shape saw the same machine load.

  Returns:
    (step seconds per variant, matmul seconds, last metrics of variant 0).
  """
  states = [c.state for c in variants]
  step_s = [[] for _ in variants]
  matmul_s, metrics = [], {}
  with jax.set_mesh(variants[0].mesh), nn.logical_axis_rules(
      variants[0].rules):
    for i, c in enumerate(variants):  # warm-up
      states[i], metrics = c.fn(states[i], c.batch, c.rng)
      jax.block_until_ready((states[i], metrics))
    for _ in range(steps):
      for i, c in enumerate(variants):
        start = time.perf_counter()
        states[i], out = c.fn(states[i], c.batch, c.rng)
        jax.block_until_ready((states[i], out))
        step_s[i].append(time.perf_counter() - start)
        if i == 0:
          metrics = out
      matmul_s.extend(time_call(matmul) for _ in range(matmul_per_step))
  for c in variants:
    c.state = None  # donated
  return step_s, matmul_s, {k: float(v) for k, v in metrics.items()}


# ------------------------------------------------------------ figures -----


def compiled_flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def memory_figures(compiled) -> dict[str, int]:
  """The compiled step's memory; `peak` = temp + argument + output.

  `live` subtracts the outputs that reuse donated argument buffers (the
  state), which is what the process actually holds at the step's peak.
  """
  m = compiled.memory_analysis()
  out = {
      "temp": int(m.temp_size_in_bytes),
      "argument": int(m.argument_size_in_bytes),
      "output": int(m.output_size_in_bytes),
      "alias": int(m.alias_size_in_bytes),
  }
  out["peak"] = out["temp"] + out["argument"] + out["output"]
  # Outputs that alias donated arguments share their buffers.
  out["live"] = out["peak"] - out["alias"]
  return out


def param_groups(params) -> dict[str, int]:
  """Transformer parameters split by how often each is applied per step.

  `token`: matmul weights applied at every position (blocks, logits);
  `example`: applied once per example (time conditioning, adaLN);
  `embedding`: the input token table (a gather, no FLOPs).
  """
  groups = {"token": 0, "example": 0, "embedding": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(k, "key", str(k)) for k in path]
    if "token_embedding" in names or "position_embedding" in names:
      groups["embedding"] += leaf.size
    elif any(n in ("conditioning", "adaln", "final_adaln") for n in names):
      groups["example"] += leaf.size
    else:
      groups["token"] += leaf.size
  return groups


def analytic_transformer_flops(groups, config) -> dict[str, float]:
  """6 N D for the matmuls (forward + backward) plus attention scores.

  Each attention layer does two [L, L] x W matmuls per example (scores and
  the weighted sum), 4 L^2 W FLOPs forward, 12 L^2 W with the backward.
  """
  batch = config.train.batch_size
  length = config.data.data_shape[0]
  tokens = batch * length
  dense = 6.0 * groups["token"] * tokens + 6.0 * groups["example"] * batch
  attention = (12.0 * config.network.num_layers * length
               * config.network.width * tokens)
  return {"dense": dense, "attention": attention, "total": dense + attention}


def normalised_speedup(ref_s: float, ref_gflops: float, ours_s: float,
                       our_gflops: float) -> float:
  """Reference step time scaled to this machine's matmul rate, / ours.

  The reference ran on a machine with matmul rate R_ref; on this run's
  machine (rate R_here) it would take t_ref * R_ref / R_here, if it slows
  down as much as a dense matmul does. Equivalently we compare step time *
  matmul rate (the step's cost in "matmul FLOPs") of the two runs.
  """
  return (ref_s * ref_gflops) / (ours_s * our_gflops)


def run_shape(shape: Shape, steps: int, matmul,
              naive: bool = False) -> dict[str, Any]:
  """Compiles, measures and returns every figure of one shape.

  With `naive`, the one-hot cross-entropy variant is compiled too and timed
  in alternation with ours; its memory and step time land under "naive".
  """
  config = make_config(shape)
  t0 = time.perf_counter()
  c = compile_step(config)
  compile_s = time.perf_counter() - t0
  flops_compiled = compiled_flops(c.fn)
  groups = param_groups(c.state.params)
  num_params = sum(groups.values())
  variants = [c]
  if naive:
    with naive_cross_entropy():
      variants.append(compile_step(naive_config(config)))
  all_step_s, matmul_s, metrics = time_steps(variants, steps, matmul,
                                             _MATMUL_PER_STEP.value)
  step_s = all_step_s[0]
  step = statistics.median(step_s)
  rate = MATMUL_FLOPS / statistics.median(matmul_s)  # FLOP/s
  elements = shape.batch * math.prod(config.data.data_shape)
  r: dict[str, Any] = {
      "shape": shape.name,
      "batch": shape.batch,
      "data_shape": list(config.data.data_shape),
      "vocab_size": config.data.vocab_size,
      "network": config.network.name,
      "params": num_params,
      "compile_s": compile_s,
      "step_s_all": step_s,
      "step_ms": 1e3 * step,
      "step_ms_min": 1e3 * min(step_s),
      "elements_per_step": elements,
      "elements_per_s": elements / step,
      "matmul_gflops": rate / 1e9,
      "matmul_s_all": matmul_s,
      "flops_compiled": flops_compiled,
      "loss": metrics.get("loss"),
  }
  if config.network.name == "transformer":
    r["logits_chunk"] = transformer.logits_chunk_positions(
        config.network.get("logits_chunk", transformer.AUTO_LOGITS_CHUNK),
        shape.batch, config.data.data_shape[0], config.data.vocab_size)
    analytic = analytic_transformer_flops(groups, config)
    r["param_groups"] = groups
    r["flops_analytic"] = analytic
    r["flops_used"] = analytic["total"]
    r["flops_source"] = "analytic"
  else:
    r["flops_used"] = flops_compiled
    r["flops_source"] = "compiled"
  if r["flops_used"]:
    r["mfu"] = r["flops_used"] / step / rate
  if flops_compiled:
    r["mfu_compiled"] = flops_compiled / step / rate
  r["memory"] = memory_figures(c.fn)
  if naive:
    naive_s = all_step_s[1]
    r["naive"] = {"memory": memory_figures(variants[1].fn),
                  "step_s_all": naive_s,
                  "step_ms": 1e3 * statistics.median(naive_s),
                  "step_ms_min": 1e3 * min(naive_s),
                  "flops_compiled": compiled_flops(variants[1].fn)}
    if r.get("logits_chunk") and r["naive"]["flops_compiled"]:
      # XLA counts our chunk loop's body once; the full-logits count instead.
      r["mfu_compiled"] = r["naive"]["flops_compiled"] / step / rate
  ref_mid = sum(shape.reference_s) / 2
  ref_rate_mid = sum(REFERENCE_MATMUL_GFLOPS) / 2
  ours_gflops = rate / 1e9
  r["reference"] = {
      "step_s": list(shape.reference_s),
      "mfu": shape.reference_mfu,
      "matmul_gflops": list(REFERENCE_MATMUL_GFLOPS),
      "raw_speedup": ref_mid / step,
      "speedup": normalised_speedup(ref_mid, ref_rate_mid, step, ours_gflops),
      "speedup_low": normalised_speedup(
          shape.reference_s[0], REFERENCE_MATMUL_GFLOPS[0], step, ours_gflops),
      "speedup_high": normalised_speedup(
          shape.reference_s[1], REFERENCE_MATMUL_GFLOPS[1], step, ours_gflops),
      "target_speedup": shape.target_speedup,
      "target_mfu": shape.target_mfu,
  }
  return r


# ------------------------------------------------------------- output -----


def _mib(n: int) -> str:
  return f"{n / 2**20:,.0f} MiB"


def print_shape(r: dict[str, Any]) -> None:
  print(f"\n== {r['shape']}: {r['network']}, batch {r['batch']}, data "
        f"{tuple(r['data_shape'])}, vocab {r['vocab_size']}, "
        f"{r['params']:,} params (compiled in {r['compile_s']:.1f} s)")
  if "logits_chunk" in r:
    chunk = r["logits_chunk"]
    print("  loss logits     " + (
        f"formed {chunk} positions ({r['batch'] * chunk} rows) at a time"
        if chunk else "formed all at once"))
  unit = "tokens" if r["network"] == "transformer" else "pixels"
  steps_ms = ", ".join(f"{1e3 * s:.0f}" for s in r["step_s_all"])
  print(f"  step            {r['step_ms']:9.1f} ms  (median of: {steps_ms};"
        f" min {r['step_ms_min']:.0f})")
  print(f"  {unit}/s        {r['elements_per_s']:11,.0f}")
  print(f"  matmul rate     {r['matmul_gflops']:9.1f} GFLOP/s "
        f"(2048^3 f32 jnp.dot, median of {len(r['matmul_s_all'])}, "
        "interleaved with the steps)")
  if r["flops_compiled"]:
    loop_note = (" (counts the loss's chunk loop body once, not once per"
                 " chunk)" if r.get("logits_chunk") else "")
    print(f"  FLOPs/step (compiled cost analysis) {r['flops_compiled']/1e9:8.1f}"
          f" GFLOP{loop_note}")
  if r.get("naive", {}).get("flops_compiled"):
    print(f"  FLOPs/step (compiled, full-logits naive variant) "
          f"{r['naive']['flops_compiled'] / 1e9:8.1f} GFLOP")
  if "flops_analytic" in r:
    a, g = r["flops_analytic"], r["param_groups"]
    print(f"  FLOPs/step (analytic)               {a['total']/1e9:8.1f} GFLOP"
          f" = 6 x {g['token']:,} per-token params x tokens"
          f" + 6 x {g['example']:,} per-example params x B"
          f" ({a['dense']/1e9:.1f}) + attention {a['attention']/1e9:.1f};"
          f" {g['embedding']:,} embedding params excluded")
  if "mfu" in r:
    print(f"  utilisation     {100 * r['mfu']:9.1f} %  (FLOPs: {r['flops_source']}"
          f"; with compiled FLOPs {100 * r.get('mfu_compiled', 0):.1f} %)")
  m = r["memory"]
  print(f"  memory          peak {_mib(m['peak'])} = temp {_mib(m['temp'])} + "
        f"arguments {_mib(m['argument'])} + outputs {_mib(m['output'])} "
        f"({_mib(m['alias'])} of outputs alias donated arguments)")
  ref = r["reference"]
  lo, hi = ref["step_s"]
  ref_s = f"{lo:.1f}" if lo == hi else f"{lo:.1f}-{hi:.1f}"
  ref_mfu = (f", its utilisation ~{100 * ref['mfu']:.0f}%" if ref["mfu"]
             else "")
  print(f"  reference       {ref_s} s at 300-317 GFLOP/s matmul{ref_mfu}: "
        "speed-up "
        f"{ref['speedup']:.2f}x normalised ({ref['speedup_low']:.2f}-"
        f"{ref['speedup_high']:.2f}x), {ref['raw_speedup']:.2f}x raw")
  if "naive" in r:
    n = r["naive"]
    print(f"  naive one-hot   peak {_mib(n['memory']['peak'])} (temp "
          f"{_mib(n['memory']['temp'])}) vs ours {_mib(m['peak'])} (temp "
          f"{_mib(m['temp'])}): ours / naive = "
          f"{m['peak'] / n['memory']['peak']:.2f} (temp "
          f"{m['temp'] / n['memory']['temp']:.2f}, live "
          f"{m['live'] / n['memory']['live']:.2f}); naive step "
          f"{n['step_ms']:.0f} ms (min {n['step_ms_min']:.0f}) vs ours "
          f"{r['step_ms']:.0f} ms (min {r['step_ms_min']:.0f}), timed "
          f"alternately: naive / ours = {n['step_ms'] / r['step_ms']:.2f}")
  sys.stdout.flush()


def print_table(results: list[dict[str, Any]], overall_gflops: float) -> None:
  print("\n## Summary (compare ratios within one run)\n")
  print("| shape | step ms, median (min) | tokens/s or pixels/s | GFLOP/step (compiled / "
        "analytic) | matmul GFLOP/s | utilisation | reference step | "
        "speed-up vs reference (normalised) | issue #9 target | met |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    ref = r["reference"]
    lo, hi = ref["step_s"]
    ref_s = f"{lo:.1f} s" if lo == hi else f"{lo:.1f}-{hi:.1f} s"
    analytic = (f"{r['flops_analytic']['total'] / 1e9:.1f}"
                if "flops_analytic" in r else "—")
    compiled = (f"{r['flops_compiled'] / 1e9:.1f}" if r["flops_compiled"]
                else "—")
    if r.get("logits_chunk") and r.get("naive", {}).get("flops_compiled"):
      # The chunk loop's body is counted once: show the full-logits count.
      compiled = (f"{r['naive']['flops_compiled'] / 1e9:.1f} (full-logits "
                  "variant)")
    mfu = (f"{100 * r['mfu']:.0f}% ({r['flops_source']})" if "mfu" in r
           else "—")
    target = f">= {ref['target_speedup']:g}x"
    met = ["yes" if ref["speedup"] >= ref["target_speedup"] else "no"]
    if ref["target_mfu"]:
      target += f", >= {100 * ref['target_mfu']:.0f}% util."
      met.append("yes" if r.get("mfu", 0) >= ref["target_mfu"] else "no")
    print(f"| `{r['shape']}` | {r['step_ms']:.0f} ({r['step_ms_min']:.0f}) | "
          f"{r['elements_per_s']:,.0f} | {compiled} / {analytic} | "
          f"{r['matmul_gflops']:.0f} | {mfu} | {ref_s} | "
          f"{ref['speedup']:.2f}x ({ref['speedup_low']:.2f}-"
          f"{ref['speedup_high']:.2f}) | {target} | {', '.join(met)} |")
  for r in results:
    if "naive" in r:
      m, n = r["memory"], r["naive"]["memory"]
      print(f"\n`{r['shape']}` compiled step memory: ours {_mib(m['peak'])} "
            f"vs naive one-hot cross-entropy {_mib(n['peak'])} "
            f"(temp + arguments + outputs), ratio {m['peak'] / n['peak']:.2f};"
            f" temporaries alone {_mib(m['temp'])} vs {_mib(n['temp'])}, "
            f"ratio {m['temp'] / n['temp']:.2f}; without double-counting the"
            f" donated state (temp + arguments) {_mib(m['live'])} vs "
            f"{_mib(n['live'])}, ratio {m['live'] / n['live']:.2f}. Naive step"
            f" {r['naive']['step_ms']:.0f} ms vs ours {r['step_ms']:.0f} ms "
            f"(timed alternately), naive / ours "
            f"{r['naive']['step_ms'] / r['step_ms']:.2f}.")
  print(f"\nMatmul rate over the whole run: {overall_gflops:.0f} GFLOP/s. "
        "Normalised speed-up = (reference step s x reference matmul GFLOP/s) "
        "/ (our step s x our matmul GFLOP/s): the reference's time moved to "
        "this machine's speed, assuming a step slows down as much as a dense "
        "matmul does under load. Central value: mid-points of the reference "
        "ranges; range: their low and high ends.")


def main(argv):
  del argv
  unknown = [s for s in _SHAPES.value if s not in SHAPES]
  if unknown:
    raise app.UsageError(f"--shapes: unknown {unknown}; valid: "
                         f"{', '.join(SHAPES)}.")
  if _STEPS.value < 1:
    raise app.UsageError("--steps must be >= 1.")
  print(f"md4 train-step benchmark, {datetime.date.today()}, jax "
        f"{jax.__version__} on {jax.devices()[0].platform} "
        f"({jax.devices()[0].device_kind}), {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}")
  matmul = make_matmul()
  results = []
  for name in _SHAPES.value:
    shape = SHAPES[name]
    r = run_shape(shape, _STEPS.value, matmul,
                  naive=name == "owt" and _NAIVE.value)
    print_shape(r)
    results.append(r)
  all_matmul = [s for r in results for s in r["matmul_s_all"]]
  overall = MATMUL_FLOPS / statistics.median(all_matmul) / 1e9
  print_table(results, overall)
  if _JSON.value:
    payload = {
        "date": str(datetime.date.today()),
        "jax": jax.__version__,
        "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(),
        "steps": _STEPS.value,
        "matmul_gflops_overall": overall,
        "reference_matmul_gflops": list(REFERENCE_MATMUL_GFLOPS),
        "shapes": results,
    }
    with open(_JSON.value, "w") as f:
      json.dump(payload, f, indent=2)
    print(f"\nWrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
