r"""Where the train step's time goes: op time by part of the model.

    python benchmarks/step_profile.py --shapes=text8,owt,cifar --steps=2 \
        --reference --json=/tmp/step_profile.json

For each shape (the shipped CPU configs of `benchmarks/train_step.py`) the
script compiles md4's train step (and with `--reference` the
reference-equivalent step of that script), runs one warm-up step, then
traces `--steps` steps with `jax.profiler` (its Perfetto trace). Every XLA
op the trace records carries its HLO instruction name; the compiled HLO
text gives that instruction's `op_name` (JAX's name stack: the flax module
path, with `transpose(jvp(...))` for the backward pass), and the op's time
is booked to the first part whose pattern the path matches:

| part | what |
|---|---|
| attention | the attention sublayers (q, k, v, out projections and the scores) |
| mlp / convolutions | the MLP sublayers; the U-Net's ResBlocks and convolutions |
| conditioning | time/label embedding and adaLN / FiLM modulation |
| head + loss | the output projection, logits, cross-entropy, the bound (the chunked head's `lax.map` included) |
| norms | layer and group norms |
| embedding | token embeddings |
| optimizer + step | AdamW, clipping, EMA, the time and mask draws: ops of the step outside the model's name stack |
| other | the rest in the model (residual adds, dropout) and ops without an op_name (copies, layout changes) |

Printed per shape: summed op time per part (ms per step), its share, and
forward/backward split; the sum of op times can exceed the wall time when
the two cores run ops in parallel. Timings depend on load: the load
average is printed beside each figure.
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

console.hide_native_logs()  # Before md4's modules import TensorFlow.

import compiled_step
import train_step  # Its flags --shapes and --json are this script's too.

# pylint: enable=g-import-not-at-top,wrong-import-position

_STEPS = flags.DEFINE_integer("steps", 2, "Traced steps per variant.")
_REFERENCE = flags.DEFINE_bool(
    "reference", False, "Also profile the reference-equivalent step."
)

# (part, pattern on the op_name path); the first match wins.
PARTS = (
    ("conditioning", r"conditioning|adaln|AdaLN|film|time_embed|modulation"),
    ("attention", r"[Aa]ttention|attn"),
    ("mlp / convolutions", r"[Mm]lp|MLP|ResBlock|res_block|[Cc]onv(?!ert)"),
    ("norms", r"[Nn]orm"),
    ("embedding", r"embedding|[Ee]mbed"),
    # The chunked head runs inside a lax.map: its ops sit under while/body.
    (
        "head + loss",
        r"output|logits|head|target_log_prob|log_softmax|nelbo|loss|"
        r"while|closed_call",
    ),
)
OPTIMIZER = "optimizer + step"  # In the step, outside the model's scope.
OTHER = "other"
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name=\"([^\"]*)\""
)


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its op_name metadata (the JAX name stack)."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      out.setdefault(m.group(1), m.group(2))
  return out


def part_of(op_name: str) -> str:
  """The part of the model an op_name path belongs to."""
  if op_name and "DiffusionModel" not in op_name:
    return OPTIMIZER
  for part, pattern in PARTS:
    if re.search(pattern, op_name):
      return part
  return OTHER


def is_backward(op_name: str) -> bool:
  return "transpose(" in op_name


def trace_op_times(run_steps, directory: str) -> dict[str, float]:
  """Summed seconds per HLO op over the traced steps."""
  jax.profiler.start_trace(directory, create_perfetto_trace=True)
  try:
    run_steps()
  finally:
    jax.profiler.stop_trace()
  paths = glob.glob(
      os.path.join(directory, "**", "*perfetto_trace.json.gz"), recursive=True
  )
  if not paths:
    raise RuntimeError(f"jax.profiler wrote no Perfetto trace in {directory}.")
  with gzip.open(paths[0]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  times = collections.defaultdict(float)
  for e in events:
    op = e.get("args", {}).get("hlo_op")
    if e.get("ph") == "X" and op and "dur" in e:
      times[op] += e["dur"] * 1e-6
  return times


def profile(c: compiled_step.Compiled, steps: int) -> dict:
  """Op time per part (seconds per step) of one compiled step."""
  names = op_names(c.fn.as_text())
  state = c.state
  state, _ = c.step(state)  # Warm-up.
  jax.block_until_ready(state)

  def run_steps():
    nonlocal state
    for _ in range(steps):
      state, metrics = c.step(state)
    jax.block_until_ready(metrics)

  load = compiled_step.loadavg()
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="md4_profile_") as directory:
    times = trace_op_times(run_steps, directory)
  wall = (time.perf_counter() - start) / steps
  c.state = None  # donated
  parts = collections.defaultdict(lambda: [0.0, 0.0])  # [forward, backward]
  unmatched = collections.Counter()
  for op, seconds in times.items():
    name = names.get(op, "")
    part = part_of(name)
    if part == OTHER:
      unmatched[name or op] += seconds
    parts[part][1 if is_backward(name) else 0] += seconds / steps
  total = sum(f + b for f, b in parts.values())
  return {
      "variant": c.name,
      "load": load,
      "wall_ms_traced": 1e3 * wall,
      "op_ms": 1e3 * total,
      "parts": {
          p: {"forward_ms": 1e3 * f, "backward_ms": 1e3 * b}
          for p, (f, b) in sorted(parts.items(), key=lambda kv: -sum(kv[1]))
      },
      "largest_other": [
          [n[:120], 1e3 * s / steps] for n, s in unmatched.most_common(5)
      ],
  }


def print_profile(shape: str, r: dict) -> None:
  print(
      f"\n== {shape}, {r['variant']}: {r['op_ms']:.0f} ms of op time per "
      f"step (traced wall {r['wall_ms_traced']:.0f} ms per step), load "
      f"{r['load']:.1f}"
  )
  print(
      f"  {'part':14s} {'ms':>8s} {'share':>7s} {'fwd ms':>8s} {'bwd ms':>8s}"
  )
  for part, v in r["parts"].items():
    ms = v["forward_ms"] + v["backward_ms"]
    print(
        f"  {part:14s} {ms:8.0f} {ms / r['op_ms']:7.1%} "
        f"{v['forward_ms']:8.0f} {v['backward_ms']:8.0f}"
    )
  if r["largest_other"]:
    print("  largest ops booked to 'other':")
    for name, ms in r["largest_other"]:
      print(f"    {ms:7.1f} ms  {name or '(no op_name)'}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  shapes = train_step._SHAPES.value  # pylint: disable=protected-access
  unknown = [s for s in shapes if s not in train_step.SHAPES]
  if unknown:
    raise app.UsageError(
        f"--shapes: unknown {unknown}; valid: {', '.join(train_step.SHAPES)}."
    )
  if _STEPS.value < 1:
    raise app.UsageError("--steps must be at least 1.")
  print(
      f"md4 train-step profile, {compiled_step.now()}, jax {jax.__version__}, "
      f"{compiled_step.machine()}",
      flush=True,
  )
  results = {}
  for shape in shapes:
    config = train_step.make_config(shape)
    variants = [compiled_step.compile_step("ours", config)]
    if _REFERENCE.value:
      variants.append(train_step.compile_reference(config))
    results[shape] = []
    for c in variants:
      with jax.set_mesh(c.mesh), nn.logical_axis_rules(c.rules):
        r = profile(c, _STEPS.value)
      print_profile(shape, r)
      results[shape].append(r)
  json_path = train_step._JSON.value  # pylint: disable=protected-access
  if json_path:
    with open(json_path, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  error_boundary.run_app(main)
