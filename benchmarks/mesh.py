r"""Memory per device over mesh shapes, and step time on 8 fake devices vs 1.

    python benchmarks/mesh.py                 # both parts
    python benchmarks/mesh.py --part=memory   # the table only (seconds)

Memory: the OpenWebText `small` and `medium` configs' train state
(parameters, AdamW moments + step counters, EMA) is built abstractly with
`jax.eval_shape`; each leaf's logical axes go through the default rule table
to a PartitionSpec, and its per-device shape is the global shape divided by
the mesh axes it is split on (which must divide it, as jit requires). No
devices are needed, so 64- and 256-device meshes are planned on this machine. The 8-device
meshes are checked against real NamedShardings in the step-time part.

Step time: the CPU-sized text8 step of `benchmarks/train_step.py` (4 layers x
width 256, batch 32, length 256, float32) is run in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (or 1) on each mesh; the
median of `--steps` steps after a warm-up step, with the compiled step's
memory report (`md4.sharding.memory_report`). Fake CPU devices share the
host's cores, so this measures the partitioning's overhead, not a speed-up.
"""

import json
import math
import os
import subprocess
import sys

from absl import flags
import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

# pylint: enable=g-import-not-at-top,wrong-import-position

console.hide_native_logs()  # Before md4's modules import TensorFlow.

from md4 import config_recipes  # pylint: disable=g-import-not-at-top
from md4 import model as model_lib
from md4 import optimizers
from md4 import run as run_lib
from md4 import sharding

_PART = flags.DEFINE_enum(
    "part", "all", ["all", "memory", "time"], "Which part to run."
)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per mesh.")

CONFIG = os.path.join(ROOT, "configs/md4/openwebtext.py")
SIZES = ("small", "medium")
MEMORY_MESHES = (
    (1, 1, 1),
    (8, 1, 1),
    (1, 8, 1),
    (2, 4, 1),
    (2, 2, 2),
    (1, 4, 2),
    (8, 8, 1),
    (1, 64, 1),
    (4, 8, 2),
    (32, 8, 1),
    (8, 32, 1),
    (16, 8, 2),
)
TIME_MESHES = (((1, 1, 1), 1), ((8, 1, 1), 8), ((1, 8, 1), 8), ((2, 2, 2), 8))
GIB = 2**30
MIB = 2**20


# ------------------------------------------------------------- memory -----


def boxed_state(config):
  """The abstract, logically boxed train state of a config (no devices)."""
  model = model_lib.build_model(config)
  optimizer = optimizers.build_optimizer(
      config.optimizer, config.train.num_steps
  )
  return jax.eval_shape(
      lambda r: run_lib.init_state(model, optimizer, r),  # pylint: disable=protected-access
      jax.random.key(0),
  )


def memory_rows(size: str) -> list[dict]:
  """Per-device GiB of parameters, optimizer state and EMA on each mesh."""
  config = config_recipes.load_file(CONFIG, size)
  rules = sharding.rules_from_config(config.sharding.rules)
  boxed = boxed_state(config)
  num_params = sum(x.size for x in jax.tree.leaves(boxed.params))
  rows = []
  for mesh in MEMORY_MESHES:
    shape = dict(zip(sharding.MESH_AXES, mesh))
    parts = {
        name: sharding.planned_bytes_per_device(
            getattr(boxed, name), rules, shape
        )
        for name in ("params", "opt_state", "ema_params")
    }
    rows.append(
        dict(
            size=size,
            mesh=mesh,
            devices=math.prod(mesh),
            num_params=num_params,
            **parts,
        )
    )
  return rows


def print_memory(rows: list[dict]) -> None:
  print(
      "\nTrain state per device (GiB, float32; optimizer = AdamW mu + nu; "
      "rules: batch->(data,fsdp), embed->fsdp, mlp/heads->tensor, vocab "
      "replicated)"
  )
  print(
      f"{'config':8} {'params':>7} {'mesh (d,f,t)':>13} {'devices':>7} "
      f"{'params':>7} {'optim':>7} {'EMA':>7} {'total':>7}"
  )
  for r in rows:
    total = r["params"] + r["opt_state"] + r["ema_params"]
    print(
        f"{r['size']:8} {r['num_params'] / 1e6:6.0f}M "
        f"{str(r['mesh']):>13} {r['devices']:7d} "
        f"{r['params'] / GIB:7.3f} {r['opt_state'] / GIB:7.3f} "
        f"{r['ema_params'] / GIB:7.3f} {total / GIB:7.3f}"
    )


# ---------------------------------------------------------- step time -----

STEP_SCRIPT = r"""
import json, statistics, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import jax
from md4 import sharding
import train_step as ts
config = ts.make_config(ts.SHAPES["text8"])
config.sharding.mesh = {mesh!r}
c = ts.compile_step(config)
state, times = c.state, []
for i in range({steps} + 1):
  start = time.perf_counter()
  state, metrics = c.fn(state, c.batch, c.rng)
  jax.block_until_ready((state, metrics))
  if i:
    times.append(time.perf_counter() - start)
report = sharding.memory_report(c.fn, state)
boxed = jax.eval_shape(
    lambda r: ts.run_lib.init_state(ts.model_lib.build_model(config),
                                   ts.optimizers.build_optimizer(
                                       config.optimizer, 1), r),
    jax.random.key(0))
planned = sharding.planned_bytes_per_device(
    boxed.params, c.rules, dict(zip(sharding.MESH_AXES, {mesh!r})))
print("RESULT" + json.dumps(dict(
    step_s=statistics.median(times), report=report, planned=planned,
    params=sharding.bytes_per_device(state.params))))
"""


def time_mesh(mesh, devices: int, steps: int) -> dict:
  """Runs the text8 CPU step on `mesh` in a process with `devices` devices."""
  code = STEP_SCRIPT.format(
      root=ROOT,
      bench=os.path.join(ROOT, "benchmarks"),
      mesh=tuple(mesh),
      steps=steps,
  )
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="3",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  out = subprocess.run(
      [sys.executable, "-c", code],
      env=env,
      capture_output=True,
      text=True,
      timeout=1800,
  )
  if out.returncode:
    raise RuntimeError(f"mesh {mesh} failed:\n{out.stderr[-3000:]}")
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT") :])


def print_times(steps: int) -> None:
  print(
      "\ntext8 CPU step (4 x 256, batch 32, length 256), median of "
      f"{steps} steps; 8 fake devices share this host's "
      f"{os.cpu_count()} cores"
  )
  base = None
  for mesh, devices in TIME_MESHES:
    r = time_mesh(mesh, devices, steps)
    base = base or r["step_s"]
    check = (
        "=" if r["planned"] == r["params"] else (f"!= planned {r['planned']}")
    )
    print(
        f"mesh {str(mesh):10} devices {devices}: {r['step_s'] * 1e3:7.1f} ms"
        f" ({r['step_s'] / base:4.2f}x one device); params "
        f"{r['params'] / MIB:.2f} MiB/device ({check} planned)\n"
        f"    {r['report']}"
    )


def main(argv):
  del argv
  print(
      f"md4 mesh benchmark, jax {jax.__version__}, {os.cpu_count()} CPU cores"
  )
  if _PART.value in ("all", "memory"):
    print_memory([r for size in SIZES for r in memory_rows(size)])
  if _PART.value in ("all", "time"):
    print_times(_STEPS.value)


if __name__ == "__main__":
  error_boundary.run_app(main)
