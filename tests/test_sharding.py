"""The same loop on a device mesh matches one device (8 fake CPU devices)."""

import json
import os
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import generated_data
import tree_tolerance
from md4 import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2))
RTOL = tree_tolerance.RTOL

# Runs train_and_evaluate once per mesh in one process (one interpreter start
# and one data set for all of them) and prints what the parent compares.
RUN = r"""
import importlib.util, json, sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from clu import metric_writers
from md4 import checkpointing, train
from md4 import run as run_lib
# float32 matmuls at full precision (TF32 / bf16 passes would dominate the
# mesh-to-mesh differences on accelerators; CPU already computes in float32).
jax.config.update("jax_default_matmul_precision", "highest")
train_metrics = {{}}
create_writer = metric_writers.create_default_writer

def recording_writer(*args, **kwargs):
  # The real writer, whose train scalars are also kept at full precision
  # (the log prints 6 digits).
  writer = create_writer(*args, **kwargs)
  write_scalars = writer.write_scalars
  def write(step, scalars):
    train_metrics.setdefault(step, {{}}).update(
        {{k: v for k, v in scalars.items() if k.startswith("train/")}})
    write_scalars(step, scalars)
  writer.write_scalars = write
  return writer

metric_writers.create_default_writer = recording_writer
spec = importlib.util.spec_from_file_location("c", {config!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)

def leaves(tree):
  return [np.asarray(x).tolist() for x in jax.tree.leaves(tree)]

for mesh in {meshes!r}:
  c = m.get_config("tiny")
  c.data.data_dir = {data!r}
  c.train.num_steps = 3
  c.train.eval_every = c.train.checkpoint_every = c.train.sample_every = 3
  c.train.log_every = 1
  c.train.eval_max_batches = 2
  c.train.sample_steps = 2
  c.sharding.mesh = mesh
  workdir = {workdir!r} + "_" + "x".join(map(str, mesh))
  train_metrics.clear()
  result = train.train_and_evaluate(c, workdir)
  setup = run_lib.build(c, workdir)
  manager = checkpointing.make_manager(workdir, 3, 0)
  state = checkpointing.restore(manager, setup.abstract_state,
                                iter(setup.datasets.train))
  net = state.params["network"]
  shards = {{name: [list(s.data.shape) for s in x.addressable_shards]
            for name, x in (
                ("embedding", net["embedding_projection"]["kernel"]),
                ("mlp", net["block_0"]["mlp"]["wi_gate"]["kernel"]),
                ("query", net["block_0"]["attention"]["query"]["kernel"]))}}
  print("RESULT" + json.dumps(dict(
      mesh=mesh, devices=jax.device_count(), eval=result["eval"],
      train=[train_metrics[s] for s in sorted(train_metrics)], shards=shards,
      params=leaves(state.params), ema=leaves(state.ema_params),
      opt_state=leaves(state.opt_state))))
"""


def _run(tmp_path, meshes, devices):
  """One process with `devices` CPU devices; a result per mesh."""
  code = RUN.format(
      root=ROOT,
      config=os.path.join(ROOT, "configs/md4/text8.py"),
      data=str(tmp_path / "data"),
      meshes=tuple(meshes),
      workdir=str(tmp_path / "run"),
  )
  # Backend optimisation level 0 skips LLVM's code optimisation, which is
  # most of the CPU compile time (4 train steps, eval steps and samplers);
  # the SPMD partitioning under test runs all the same.
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="3",
      XLA_FLAGS=(
          f"--xla_force_host_platform_device_count={devices} "
          "--xla_backend_optimization_level=0"
      ),
  )
  out = subprocess.run(
      [sys.executable, "-c", code],
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
  return [json.loads(l[len("RESULT") :]) for l in lines]


@pytest.mark.multiprocess
def test_mesh_runs_match_one_device_after_three_steps_and_shard_weights(
    tmp_path,
):
  generated_data.write_text8(str(tmp_path / "data"))
  [single] = _run(tmp_path, [(1, 1, 1)], devices=1)
  results = _run(tmp_path, MESHES, devices=8)
  assert [tuple(r["mesh"]) for r in results] == list(MESHES)
  for sharded in results:
    mesh = tuple(sharded["mesh"])
    assert sharded["devices"] == 8
    # Loss and gradient norm of every step, and every eval metric.
    assert len(sharded["train"]) == len(single["train"]) == 3
    for got, want in zip(sharded["train"], single["train"]):
      for key in ("train/loss", "train/grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=RTOL), (mesh, key)
    for key, value in single["eval"].items():
      assert sharded["eval"][key] == pytest.approx(value, rel=RTOL), key
    # Tolerances and why: see tree_tolerance.
    for key in ("params", "ema"):
      tree_tolerance.assert_leaves_close(
          (mesh, key), sharded[key], single[key], tree_tolerance.PARAM_FLOOR
      )
    tree_tolerance.assert_leaves_close(
        (mesh, "opt_state"),
        sharded["opt_state"],
        single["opt_state"],
        tree_tolerance.MOMENT_FLOOR,
    )
    # FSDP splits the model width, tensor parallelism the MLP and the heads:
    # text8's embedding projection [E, W] (its 16-wide table stays whole),
    # MLP kernel [W, M], query kernel [W, N, H].
    _, fsdp, tensor = mesh
    shards = sharded["shards"]
    assert all(s == [16, 64 // fsdp] for s in shards["embedding"]), mesh
    assert all(s == [64 // fsdp, 192 // tensor] for s in shards["mlp"]), mesh
    assert all(
        s == [64 // fsdp, 4 // tensor, 16] for s in shards["query"]
    ), mesh


def test_leaf_error_is_relative_to_the_larger_of_the_leaf_and_the_floor():
  leaf_error = tree_tolerance.leaf_error
  b = np.array([0.0, 2e-4, -1e-4])
  assert leaf_error(b + [0, 2e-9, 0], b, floor=0.0) == pytest.approx(1e-5)
  assert leaf_error(b + [0, 2e-9, 0], b, floor=0.02) == pytest.approx(1e-7)
  assert leaf_error(np.zeros(3), np.zeros(3), floor=1e-30) == 0.0


# ------------------------------------------------------- planning -----


def test_planned_bytes_match_real_shardings_and_split_by_the_rules():
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  boxed = {
      "w": _boxed((8, 12), (sharding.EMBED, sharding.MLP)),
      "b": _boxed((12,), (sharding.MLP,)),
      "step": jax.ShapeDtypeStruct((), jnp.int32),
  }
  real = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      _unbox(boxed),
      sharding.tree_shardings(mesh, sharding.DEFAULT_RULES, boxed),
  )
  one = {"data": 1, "fsdp": 1, "tensor": 1}
  assert (
      sharding.planned_bytes_per_device(boxed, sharding.DEFAULT_RULES, one)
      == sharding.bytes_per_device(real)
      == (8 * 12 + 12 + 1) * 4
  )
  # fsdp 4 splits the width (8 -> 2), tensor 3 the MLP (12 -> 4); data
  # replicates; the scalar step stays whole.
  planned = sharding.planned_bytes_per_device(
      boxed, sharding.DEFAULT_RULES, {"data": 16, "fsdp": 4, "tensor": 3}
  )
  assert planned == (2 * 4 + 4 + 1) * 4
  with pytest.raises(ValueError, match=r"splits a dimension of 12 .* 8 ways"):
    sharding.planned_bytes_per_device(
        boxed, sharding.DEFAULT_RULES, {"data": 1, "fsdp": 1, "tensor": 8}
    )


def _boxed(shape, names):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  return nn.LogicallyPartitioned(
      jax.ShapeDtypeStruct(shape, jnp.float32), names
  )


def _unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  return nn.meta.unbox(tree)


@flax.struct.dataclass
class _TrainState:
  """The fields of `md4.run_lib.TrainState` (importing train costs seconds)."""

  step: jax.Array
  params: dict
  opt_state: tuple
  ema_params: dict


def test_memory_report_gives_state_bytes_and_the_compiled_temporaries():
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  w = jax.ShapeDtypeStruct((512, 512), jnp.float32, sharding=replicated)
  state = _TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params={"w": w},
      opt_state=(w, w),
      ema_params={"w": w},
  )
  x = jax.ShapeDtypeStruct((512, 512), jnp.float32, sharding=replicated)

  def step(state, x):
    h = jnp.tanh(x @ state.params["w"]) @ state.params["w"].T  # [512, 512]
    return state.replace(params={"w": state.params["w"] - h})

  compiled = jax.jit(step).lower(state, x).compile()
  report = sharding.memory_report(compiled, state)
  mib = {
      name.strip(): float(value)
      for name, value in re.findall(r"([A-Za-z ()+]+?) ([\d.]+) MiB", report)
  }
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp > 0
  assert mib == {
      "parameters": 1.0,
      "optimizer state": 2.0,
      "EMA": 1.0,
      "activations and temporaries": round(temp / 2**20, 1),
      "step arguments (state + batch)": 5.0,
      "estimated peak": pytest.approx(
          (
              5 * 2**20
              + 4
              + temp
              + compiled.memory_analysis().output_size_in_bytes
          )
          / 2**20,
          abs=0.05,
      ),
  }, report
