r"""One command for an accelerator: step speed, memory, batch, loss, sampling.

    python benchmarks/accelerator.py --json=accelerator.json   # one GPU, < 8 min
    python benchmarks/accelerator.py --dry_run                 # CPU, tiny shapes

Everything printed is also written as JSON (`--json`, default
`accelerator.json`, or `accelerator_dry_run.json` with `--dry_run`).

1. `owt`: configs/md4/openwebtext.py (small: 12 x 768, L = 1024, GPT-2
   vocabulary) in bfloat16, batch `--owt_batch` per device, once with
   `network.attention_impl="cudnn"` and once with `"xla"` (md4's
   `lean_attention`). Each: compile time, median step time over
   `--owt_steps` steps (the first two excluded), tokens/s, model-FLOP
   utilisation against the device's dense bfloat16 peak (looked up by device
   name in BF16_PEAK_TFLOPS; an unknown device gets no utilisation), the
   compiled step's memory. Both start from the same parameters and see the
   same batches and keys, so their losses after `--owt_steps` steps must
   agree up to bfloat16 rounding; the difference is printed.
2. `batch`: for each attention implementation, the largest per-device batch
   whose compiled step fits the device's memory (`bytes_limit` of the
   allocator, or `--memory_limit_mib`): compile-only memory analysis (nothing
   is allocated), the memory of two batch sizes fit by a line to predict the
   limit, then bisection between a batch that fits and one that does not,
   down to `--batch_resolution`.
3. `text8`: configs/md4/text8.py:cpu (4 x 256, L = 256, B = 32, float32) for
   `--text8_steps` steps on characters of this repository's own source and
   documentation (a-z and space, as text8; no download needed): the loss
   curve and the step time.
4. `sampling`: the cached sampler (and the naive ancestral one, for the
   ratio, when the time budget allows) on the OpenWebText small network in
   bfloat16 with `time_features="none"`, random weights, L = 1024,
   `--sample_steps` steps, `--sample_batch` samples per call: samples/s and
   network calls per sample.

`--budget_s` (default 420) bounds the wall time: a part that would start
after the budget is spent is skipped and says so; the bisection stops early
with its bracket. `--dry_run` runs the same code on CPU at tiny shapes to
check it, not to measure anything: a 1 x 64 transformer with a 2,048-value
vocabulary (chunked loss) at L = 64, 3 steps, attention impls "xla" and None
(cuDNN needs a GPU), a 64 MiB memory limit and one probe per search,
configs/md4/text8.py:tiny for 10 steps, samplers at L = 32 and T = 20, and
XLA's quickest CPU code generation (DRY_RUN_XLA_FLAGS).
"""

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
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

# pylint: enable=g-import-not-at-top,wrong-import-position

console.hide_native_logs()  # Before md4's modules import TensorFlow.

# pylint: disable=g-import-not-at-top,wrong-import-position
import compiled_step
from md4 import config_recipes
from md4 import configuration
from md4 import model as model_lib
from md4.sampling import core
from md4.sampling import drawing

# pylint: enable=g-import-not-at-top,wrong-import-position

_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Run every part on CPU at tiny shapes (a test runs it)."
)
_JSON = flags.DEFINE_string(
    "json",
    None,
    "Where to write the JSON (default "
    "accelerator.json / accelerator_dry_run.json).",
)
_BUDGET_S = flags.DEFINE_float(
    "budget_s", 420.0, "Wall-time budget; later parts are skipped."
)
_OWT_BATCH = flags.DEFINE_integer(
    "owt_batch", 16, "Per-device batch of the timed OWT steps."
)
_OWT_STEPS = flags.DEFINE_integer(
    "owt_steps", 20, "OWT steps per attention implementation."
)
_TEXT8_STEPS = flags.DEFINE_integer(
    "text8_steps", 300, "Steps of the text8-shaped run."
)
_SAMPLE_BATCH = flags.DEFINE_integer(
    "sample_batch", 8, "Samples per sampler call."
)
_SAMPLE_STEPS = flags.DEFINE_integer(
    "sample_steps", 1000, "Sampler time steps T."
)
_MEMORY_LIMIT_MIB = flags.DEFINE_integer(
    "memory_limit_mib",
    0,
    "Memory a step may use for the batch search "
    "(0: the device allocator's bytes_limit).",
)
_BATCH_RESOLUTION = flags.DEFINE_integer(
    "batch_resolution",
    8,
    "The batch search stops when the bracket is this narrow.",
)

# Dense bfloat16 tensor-core peaks (TFLOP/s, without sparsity), matched in
# order against the device kind (jax's `device_kind`, e.g. "NVIDIA H100 80GB
# HBM3"): the first entry contained in it wins.
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
)


def bf16_peak_tflops(device_kind: str) -> float | None:
  """The dense bf16 peak of a device kind, or None when it is not listed."""
  kind = device_kind.upper()
  for name, tflops in BF16_PEAK_TFLOPS:
    if name.upper() in kind:
      return tflops
  return None


class Budget:
  """Seconds left of the run's wall-time budget."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def left(self) -> float:
    return self.end - time.perf_counter()


def log(text: str) -> None:
  print(text, flush=True)


# ------------------------------------------------------------ configs -----


def owt_config(impl: str | None, dry_run: bool, batch: int):
  """OpenWebText small in bfloat16 with the given attention implementation."""
  c = config_recipes.load_file(
      os.path.join(ROOT, "configs/md4/openwebtext.py"),
      "cpu" if dry_run else "small",
  )
  if dry_run:
    c.network = config_recipes.transformer("tiny", dropout_rate=0.02)
    c.network.num_layers = 1
    c.data.data_shape = (64,)
    c.data.vocab_size = DRY_RUN_VOCAB
  c.network.dtype = "bfloat16"
  c.network.attention_impl = impl
  c.train.batch_size = batch
  configuration.validate(c)
  return c


# Dry run: above the automatic rule's threshold, so the loss is chunked too.
DRY_RUN_VOCAB = 2048
DRY_RUN_OWT = {"batch": 2, "steps": 3}
DRY_RUN_XLA_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
)


def text8_config(dry_run: bool):
  return config_recipes.load_file(
      os.path.join(ROOT, "configs/md4/text8.py"), "tiny" if dry_run else "cpu"
  )


def impls(dry_run: bool) -> tuple[str | None, ...]:
  # cuDNN attention needs a GPU; on CPU None lets JAX choose (XLA).
  return ("xla", None) if dry_run else ("cudnn", "xla")


def random_tokens(step: int, shape, vocab_size: int) -> jax.Array:
  return jax.random.randint(
      jax.random.fold_in(jax.random.key(1), step),
      shape,
      0,
      vocab_size,
      jnp.int32,
  )


# ------------------------------------------------------- 1. owt steps -----


def owt_batch(dry_run: bool) -> int:
  return DRY_RUN_OWT["batch"] if dry_run else _OWT_BATCH.value


def run_owt(dry_run: bool, peak_tflops: float | None) -> dict[str, Any]:
  out = {}
  num_steps = DRY_RUN_OWT["steps"] if dry_run else _OWT_STEPS.value
  first_state = None
  for impl in impls(dry_run):
    config = owt_config(impl, dry_run, owt_batch(dry_run))
    # The same initial state for both (initialised once).
    c = compiled_step.compile_step(
        str(impl),
        config,
        state=first_state and jax.tree.map(jnp.copy, first_state),
    )
    if first_state is None:
      first_state = jax.tree.map(jnp.copy, c.state)
    shape = tuple(c.batch["x"].shape)
    state, losses, seconds = c.state, [], []
    for k in range(num_steps):
      x = random_tokens(k, shape, config.data.vocab_size)
      start = time.perf_counter()
      state, metrics = c.step(state, {"x": x})
      seconds.append(time.perf_counter() - start)
      losses.append(float(metrics["loss"]))
    groups = compiled_step.param_groups(state.params)
    del state
    timed = seconds[2:] or seconds
    step_s = statistics.median(timed)
    tokens = math.prod(shape)
    flops = compiled_step.transformer_flops(groups, config)
    r = {
        "attention_impl": impl,
        "batch": shape[0],
        "length": shape[1],
        "params": sum(groups.values()),
        "compile_s": c.compile_s,
        "step_ms": 1e3 * step_s,
        "step_ms_all": [1e3 * s for s in seconds],
        "tokens_per_s": tokens / step_s,
        "model_flops": flops,
        "memory": compiled_step.memory_figures(c.fn),
        "losses": losses,
    }
    if peak_tflops:
      r["mfu"] = flops / step_s / (peak_tflops * 1e12)
    out[str(impl)] = r
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a (unknown peak)"
    log(
        f"owt {impl}: batch {shape[0]} x {shape[1]}, {r['params']:,} params, "
        f"compiled in {c.compile_s:.0f} s; step {r['step_ms']:.1f} ms, "
        f"{r['tokens_per_s']:,.0f} tokens/s, MFU {mfu}; memory held "
        f"{r['memory']['held'] / 2**20:,.0f} MiB (temp "
        f"{r['memory']['temp'] / 2**20:,.0f} MiB); loss after "
        f"{len(losses)} steps {losses[-1]:.5f}"
    )
  names = list(out)
  a, b = out[names[0]]["losses"], out[names[1]]["losses"]
  del first_state
  out["loss_agreement"] = {
      "steps": len(a),
      "impls": names,
      "last": [a[-1], b[-1]],
      "last_abs_difference": abs(a[-1] - b[-1]),
      "last_relative_difference": abs(a[-1] - b[-1]) / abs(b[-1]),
      "max_relative_difference": max(abs(x - y) / abs(y) for x, y in zip(a, b)),
  }
  agree = out["loss_agreement"]
  log(
      f"owt loss after {agree['steps']} steps: {names[0]} {a[-1]:.5f}, "
      f"{names[1]} {b[-1]:.5f}: relative difference "
      f"{agree['last_relative_difference']:.2e} (largest over the steps "
      f"{agree['max_relative_difference']:.2e})"
  )
  return out


# ------------------------------------------------------- 2. batch size ----


def memory_limit(dry_run: bool) -> tuple[int, str]:
  if _MEMORY_LIMIT_MIB.value:
    return _MEMORY_LIMIT_MIB.value * 2**20, "--memory_limit_mib"
  if dry_run:
    return 64 * 2**20, "dry run"
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    raise ValueError(
        "the device reports no memory limit; pass --memory_limit_mib."
    )
  return int(stats["bytes_limit"]), "device allocator bytes_limit"


def largest_batch(
    config,
    limit: int,
    known: dict[int, int],
    resolution: int,
    budget: Budget,
    per_compile_s: float,
    max_probes: int,
) -> dict[str, Any]:
  """The largest batch whose compiled step's peak memory is <= limit.

  Args:
    config: the step's config (its batch size is ignored).
    limit: bytes.
    known: batch -> peak bytes already measured.
    resolution: stop when the bracket (fits, does not fit) is this narrow.
    budget: stops early (returning the bracket) when time runs out.
    per_compile_s: expected seconds per compile, to stop in time.
    max_probes: compiles at most.

  Returns:
    The largest batch found to fit, the smallest found not to fit (None if
    none), every probe, and whether the search finished.
  """
  probes = dict(known)
  # Autotuning does not change the memory plan much and costs compile time.
  options = {"xla_gpu_autotune_level": "0"}

  def can_probe():
    return (
        budget.left() > per_compile_s and len(probes) - len(known) < max_probes
    )

  def peak(b):
    if b not in probes:
      probes[b] = compiled_step.abstract_memory(config, b, options)["peak"]
    return probes[b]

  def bracket():
    fits = [b for b, m in probes.items() if m <= limit]
    over = [b for b, m in probes.items() if m > limit]
    return max(fits, default=0), min(over, default=None)

  b0 = min(probes)
  b1 = 2 * b0
  if can_probe():
    peak(b1)
    # Memory is about affine in the batch: predict where it meets the limit.
    slope = (probes[b1] - probes[b0]) / (b1 - b0)
    if slope > 0:
      guess = b0 + int((limit - probes[b0]) / slope)
      guess = max(resolution, guess // resolution * resolution)
      for candidate in (guess, guess + resolution):
        if not can_probe():
          break
        peak(candidate)
    while True:
      lo, hi = bracket()
      if (hi is not None and hi - lo <= resolution) or not can_probe():
        break
      # Nothing over the limit yet: double; else bisect the bracket.
      peak(max(2 * lo, resolution) if hi is None else (lo + hi) // 2)
  lo, hi = bracket()
  finished = hi is not None and hi - lo <= resolution
  if finished:
    status = f"bracket within {resolution}"
  elif budget.left() <= per_compile_s:
    status = "stopped by the time budget"
  else:
    status = f"stopped after {max_probes} probes"
  return {
      "largest_fitting": lo,
      "smallest_not_fitting": hi,
      "finished": finished,
      "status": status,
      "limit_bytes": limit,
      "probes": {str(b): m for b, m in sorted(probes.items())},
  }


def run_batch(
    dry_run: bool, owt: dict[str, Any], budget: Budget
) -> dict[str, Any]:
  limit, source = memory_limit(dry_run)
  out = {"limit_bytes": limit, "limit_source": source}
  resolution = 1 if dry_run else _BATCH_RESOLUTION.value
  for impl in impls(dry_run):
    if budget.left() < 60 and not dry_run:
      out[str(impl)] = {"skipped": "time budget spent"}
      continue
    timed = owt.get(str(impl), {})
    known = {}
    if "memory" in timed:
      known[timed["batch"]] = timed["memory"]["peak"]
    else:
      known[owt_batch(dry_run)] = compiled_step.abstract_memory(
          owt_config(impl, dry_run, 1), owt_batch(dry_run)
      )["peak"]
    per_compile = max(timed.get("compile_s", 30.0), 1.0)
    r = largest_batch(
        owt_config(impl, dry_run, 1),
        limit,
        known,
        resolution,
        budget,
        per_compile,
        1 if dry_run else 8,
    )
    out[str(impl)] = r
    log(
        f"batch {impl}: largest per-device batch that fits "
        f"{limit / 2**20:,.0f} MiB ({source}): {r['largest_fitting']} (next "
        f"probe over the limit: {r['smallest_not_fitting']}; "
        f"{r['status']}; "
        "probes batch -> MiB: "
        + ", ".join(f"{b} -> {m / 2**20:,.0f}" for b, m in r["probes"].items())
        + ")"
    )
  return out


# ------------------------------------------------------- 3. text8 run -----

TEXT_SUFFIXES = (".py", ".md")


def repository_characters() -> np.ndarray:
  """This repository's .py and .md text as text8 ids (a-z = 0-25, ' ' = 26).

  Lower-cased; every other character becomes a space and runs of spaces
  collapse to one, as text8's preparation does with Wikipedia.
  """
  chunks = []
  for directory, dirs, files in sorted(os.walk(ROOT)):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(files):
      if name.endswith(TEXT_SUFFIXES):
        with open(os.path.join(directory, name), errors="replace") as f:
          chunks.append(f.read())
  text = " ".join(chunks).lower()
  codes = np.frombuffer(text.encode("ascii", "replace"), np.uint8)
  ids = np.where((codes >= 97) & (codes <= 122), codes - 97, 26)
  keep = np.ones(len(ids), bool)
  keep[1:] = ~((ids[1:] == 26) & (ids[:-1] == 26))
  return ids[keep].astype(np.int32)


def run_text8(dry_run: bool) -> dict[str, Any]:
  config = text8_config(dry_run)
  c = compiled_step.compile_step("text8", config)
  chars = repository_characters()
  batch, length = c.batch["x"].shape
  rng = np.random.default_rng(0)
  state, losses, seconds = c.state, [], []
  for _ in range(_TEXT8_STEPS.value if not dry_run else 10):
    starts = rng.integers(0, len(chars) - length, batch)
    x = jnp.asarray(np.stack([chars[s : s + length] for s in starts]))
    start = time.perf_counter()
    state, metrics = c.step(state, {"x": x})
    seconds.append(time.perf_counter() - start)
    losses.append(float(metrics["bits_per_dim"]))
  del state
  step_s = statistics.median(seconds[2:] or seconds)
  r = {
      "config": "configs/md4/text8.py:" + ("tiny" if dry_run else "cpu"),
      "characters": int(len(chars)),
      "batch": batch,
      "length": length,
      "compile_s": c.compile_s,
      "step_ms": 1e3 * step_s,
      "tokens_per_s": batch * length / step_s,
      "bits_per_char": losses,
  }
  marks = sorted({
      0,
      len(losses) // 4,
      len(losses) // 2,
      3 * len(losses) // 4,
      len(losses) - 1,
  })
  curve = ", ".join(f"{i + 1}: {losses[i]:.3f}" for i in marks)
  log(
      f"text8 ({r['config']}, {len(chars):,} characters of this repository):"
      f" {len(losses)} steps, {r['step_ms']:.1f} ms/step, "
      f"{r['tokens_per_s']:,.0f} tokens/s; training bits/char by step: "
      f"{curve}"
  )
  return r


# ---------------------------------------------------------- 4. sampling ---


def run_sampling(dry_run: bool, budget: Budget) -> dict[str, Any]:
  impl = impls(dry_run)[0]
  config = owt_config(impl, dry_run, 1)
  config.network.time_features = "none"
  if dry_run:
    config.data.data_shape = (32,)
  model = model_lib.build_model(config)
  params = jax.jit(lambda r: model_lib.init_variables(model, r, unbox=True))(
      jax.random.key(0)
  )["params"]
  steps = 20 if dry_run else _SAMPLE_STEPS.value
  settings = core.Settings(num_steps=steps)
  out = {
      "length": config.data.data_shape[0],
      "steps": steps,
      "batch": _SAMPLE_BATCH.value,
      "attention_impl": impl,
      "dtype": "bfloat16",
  }
  spent = None
  for name in ("cached", "ancestral"):
    if spent is not None and budget.left() < 3 * spent and not dry_run:
      out[name] = {"skipped": "time budget spent"}
      log(f"sampling {name}: skipped (time budget)")
      continue
    start = time.perf_counter()
    drawn = drawing.draw(
        model,
        params,
        name,
        settings,
        num_samples=_SAMPLE_BATCH.value,
        batch_size=_SAMPLE_BATCH.value,
        seed=0,
    )
    spent = time.perf_counter() - start
    out[name] = {
        "samples_per_s": drawn.samples_per_second,
        "network_calls": drawn.network_calls,
        "seconds": drawn.seconds,
        "compile_s": drawn.compile_seconds,
    }
    log(
        f"sampling {name}: L = {out['length']}, T = {steps}, batch "
        f"{_SAMPLE_BATCH.value}: {drawn.samples_per_second:.3f} samples/s, "
        f"{drawn.network_calls:.0f} network calls per sample (compiled in "
        f"{drawn.compile_seconds:.0f} s)"
    )
  if "samples_per_s" in out.get("ancestral", {}):
    out["cached_speedup"] = (
        out["cached"]["samples_per_s"] / out["ancestral"]["samples_per_s"]
    )
    log(
        f"sampling: cached / ancestral samples/s = {out['cached_speedup']:.2f}x"
    )
  return out


# --------------------------------------------------------------- main -----


def main(argv):
  del argv
  dry_run = _DRY_RUN.value
  if dry_run:
    # A code check, not a measurement: XLA's quickest CPU code generation
    # (set before the first computation initialises the backend).
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", "")] + list(DRY_RUN_XLA_FLAGS)
    ).strip()
  budget = Budget(_BUDGET_S.value)
  device = jax.devices()[0]
  if not dry_run and device.platform == "cpu":
    raise app.UsageError(
        "no accelerator found (jax.devices() is CPU); run "
        "with --dry_run to check the code on CPU."
    )
  peak = bf16_peak_tflops(device.device_kind)
  result: dict[str, Any] = {
      "date": compiled_step.now(),
      "jax": jax.__version__,
      "machine": compiled_step.machine(),
      "device_kind": device.device_kind,
      "device_count": len(jax.devices()),
      "dry_run": dry_run,
      "bf16_peak_tflops": peak,
      "budget_s": _BUDGET_S.value,
      "load_start": compiled_step.loadavg(),
  }
  log(
      f"md4 accelerator benchmark{' (dry run)' if dry_run else ''}, "
      f"{result['date']}, jax {jax.__version__}, {result['machine']}; dense "
      f"bf16 peak {peak or 'unknown'} TFLOP/s"
  )
  start = time.perf_counter()
  parts = (
      ("owt", lambda: run_owt(dry_run, peak)),
      ("batch", lambda: run_batch(dry_run, result["owt"], budget)),
      ("text8", lambda: run_text8(dry_run)),
      ("sampling", lambda: run_sampling(dry_run, budget)),
  )
  result["part_s"] = {}
  for part, fn in parts:
    if part in ("text8", "sampling") and budget.left() < 30 and not dry_run:
      result[part] = {"skipped": "time budget spent"}
      log(f"{part}: skipped (time budget)")
      continue
    wall, cpu = time.perf_counter(), time.process_time()
    result[part] = fn()
    result["part_s"][part] = {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
    }
  result["wall_s"] = time.perf_counter() - start
  result["load_end"] = compiled_step.loadavg()
  path = _JSON.value or (
      "accelerator_dry_run.json" if dry_run else "accelerator.json"
  )
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  log(
      f"done in {result['wall_s']:.0f} s ("
      + ", ".join(f"{k} {v['wall']:.0f} s" for k, v in result["part_s"].items())
      + f"); load average {result['load_end']:.1f}; wrote {path}"
  )


if __name__ == "__main__":
  error_boundary.run_app(main)
