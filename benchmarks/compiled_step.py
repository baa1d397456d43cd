"""A compiled md4 train step for the benchmarks, and what it costs.

`compile_step` builds model, optimizer, state and the jitted step exactly as
`train.train_and_evaluate` does (mesh, logical-axis rules, donated state via
`train.jit_train_step`), with a random batch instead of a data pipeline;
`abstract_memory` compiles the same step for a batch size from shapes only
(no state allocated), for memory planning. The rest reads figures off a
compiled step: memory, XLA's FLOP count, the analytic transformer FLOPs.
"""

import dataclasses
import datetime
import os
import platform
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from md4 import model as model_lib
from md4 import optimizers
from md4 import run as run_lib
from md4 import sharding
from md4 import train


@dataclasses.dataclass
class Compiled:
  """A compiled train step with its state, batch and key."""

  name: str
  fn: Any
  state: Any
  batch: dict
  rng: jax.Array
  mesh: jax.sharding.Mesh
  rules: tuple
  compile_s: float = 0.0

  def step(self, state, batch=None):
    """One step (blocked until done): returns (state, metrics)."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      state, metrics = self.fn(
          state, self.batch if batch is None else batch, self.rng
      )
      jax.block_until_ready((state, metrics))
    return state, metrics


def make_setup(config) -> run_lib.Setup:
  """`run_lib.build` without data: mesh, rules, model, optimizer, shardings."""
  mesh = sharding.make_mesh(config.sharding.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  model = model_lib.build_model(config)
  optimizer = optimizers.build_optimizer(
      config.optimizer, config.train.num_steps
  )
  boxed = jax.eval_shape(
      lambda r: run_lib.init_state(model, optimizer, r),  # pylint: disable=protected-access
      jax.random.key(0),
  )
  state_shardings = sharding.tree_shardings(mesh, rules, boxed)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.meta.unbox(boxed),
      state_shardings,
  )
  batch_sharding = sharding.logical_sharding(mesh, rules, (sharding.BATCH,))
  return run_lib.Setup(
      config,
      mesh,
      rules,
      model,
      optimizer,
      datasets=None,
      state_shardings=state_shardings,
      abstract_state=abstract_state,
      batch_sharding=batch_sharding,
  )


def compile_step(name: str, config, seed: int = 0, state=None) -> Compiled:
  """The jitted, compiled step of `config`, its initial state and a batch.

  Parameters come from `seed`, the batch is random tokens from `seed`: every
  step built with the same seed and shapes starts from the same parameters
  and sees the same batch. `state`: a copy of this initial state to use
  instead of initialising again (it is donated to the first step).
  """
  t0 = time.perf_counter()
  setup = make_setup(config)
  init_rng, data_rng, step_rng = jax.random.split(jax.random.key(seed), 3)
  if state is None:
    state = run_lib.create_state(setup, init_rng)
  x = jax.random.randint(
      data_rng,
      (config.train.batch_size,) + tuple(config.data.data_shape),
      0,
      config.data.vocab_size,
      jnp.int32,
  )
  batch = {"x": jax.device_put(x, setup.batch_sharding)}
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    fn = train.jit_train_step(setup).lower(state, batch, step_rng).compile()
  return Compiled(
      name,
      fn,
      state,
      batch,
      step_rng,
      setup.mesh,
      setup.rules,
      time.perf_counter() - t0,
  )


def abstract_memory(
    config, batch_size: int, compiler_options: dict | None = None
) -> dict[str, int]:
  """Memory of the step compiled for `batch_size` from shapes only.

  Nothing is allocated: state and batch are ShapeDtypeStructs. The config's
  own batch size is ignored.
  """
  setup = make_setup(config)
  x = jax.ShapeDtypeStruct(
      (batch_size,) + tuple(config.data.data_shape),
      jnp.int32,
      sharding=setup.batch_sharding,
  )
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    lowered = train.jit_train_step(setup).lower(
        setup.abstract_state, {"x": x}, jax.random.key(0)
    )
    if compiler_options:
      try:
        return memory_figures(lowered.compile(compiler_options))
      except Exception:  # pylint: disable=broad-except
        pass  # an option this backend does not know: compile plainly
    return memory_figures(lowered.compile())


# ------------------------------------------------------------ figures -----


def compiled_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled executable (a loop body counts once)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def memory_figures(compiled) -> dict[str, int]:
  """The compiled step's memory; `held` = temp + arguments.

  The outputs (the new state) reuse the donated argument buffers, so the
  step holds temp + arguments (+ any outputs that do not alias) at its peak:
  `peak` counts those.
  """
  m = compiled.memory_analysis()
  out = {
      "temp": int(m.temp_size_in_bytes),
      "argument": int(m.argument_size_in_bytes),
      "output": int(m.output_size_in_bytes),
      "alias": int(m.alias_size_in_bytes),
  }
  out["held"] = out["temp"] + out["argument"]
  out["peak"] = out["held"] + out["output"] - out["alias"]
  return out


def param_groups(params) -> dict[str, int]:
  """Transformer parameters split by how often each is applied per step.

  `token`: matmul weights applied at every position (blocks, embedding
  projection, logits); `example`: applied once per example (conditioning,
  adaLN); `embedding`: the input token table (a gather, no FLOPs).
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


def transformer_flops(
    groups, config, batch_size: int | None = None, backward: bool = True
) -> float:
  """Model FLOPs of a transformer step: 6 N D for the matmuls + attention.

  Forward only (`backward=False`): 2 N D. Each attention layer does two
  [L, L] x W matmuls per example (scores and weighted sum): 4 L^2 W FLOPs
  forward, 12 L^2 W with the backward.
  """
  batch = batch_size or config.train.batch_size
  length = config.data.data_shape[0]
  tokens = batch * length
  factor = 6.0 if backward else 2.0
  dense = factor * (groups["token"] * tokens + groups["example"] * batch)
  attention = (
      2
      * factor
      * config.network.num_layers
      * length
      * config.network.width
      * tokens
  )
  return dense + attention


# ------------------------------------------------------------ machine -----


def loadavg() -> float:
  """The 1-minute load average."""
  return os.getloadavg()[0]


def now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def machine() -> str:
  """CPU cores and model, and the first device's kind."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  device = jax.devices()[0]
  return (
      f"{os.cpu_count()} CPU cores ({model}); {len(jax.devices())} x "
      f"{device.platform} {device.device_kind}"
  )


MATMUL_N = 2048


def matmul_peak(count: int, dtype, n: int = MATMUL_N) -> dict[str, Any]:
  """Best rate of `count` n^3 matmuls in `dtype`, with the load average.

  A best-of (not a median) approximates the machine's dense peak when some
  of the calls find the cores free.
  """
  ka, kb = jax.random.split(jax.random.key(42))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  dot = jax.jit(jnp.dot).lower(a, b).compile()
  jax.block_until_ready(dot(a, b))
  load = loadavg()
  times = []
  for _ in range(count):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    times.append(time.perf_counter() - start)
  flops = 2 * n**3
  return {
      "gflops": flops / min(times) / 1e9,
      "median_gflops": flops / sorted(times)[len(times) // 2] / 1e9,
      "load": load,
      "dtype": jnp.dtype(dtype).name,
      "time": now(),
      "n": n,
      "count": count,
  }
