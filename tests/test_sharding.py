"""The same loop on a device mesh matches one device (8 fake CPU devices)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import generated_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUN = r"""
import importlib.util, json, sys
sys.path.insert(0, {root!r})
import jax, numpy as np
import orbax.checkpoint as ocp
from md4 import checkpointing, train
spec = importlib.util.spec_from_file_location("c", {config!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
c = m.get_config("tiny")
c.data.data_dir = {data!r}
c.train.num_steps = 3
c.train.eval_every = c.train.checkpoint_every = c.train.sample_every = 3
c.train.log_every = 1
c.sharding.mesh = {mesh!r}
result = train.train_and_evaluate(c, {workdir!r})
setup = train.build(c, {workdir!r})
manager = checkpointing.make_manager({workdir!r}, 3, 0)
state = checkpointing.restore(manager, setup.abstract_state,
                              iter(setup.datasets.train))
emb = state.params["network"]["token_embedding"]["embedding"]
shards = [list(s.data.shape) for s in emb.addressable_shards]
leaves = [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)]
print("RESULT" + json.dumps(dict(eval=result["eval"], shards=shards,
                                 devices=jax.device_count(), params=leaves)))
"""



def _run(tmp_path, mesh, devices):
  workdir = str(tmp_path / f"run_{'x'.join(map(str, mesh))}")
  code = RUN.format(root=ROOT, config=os.path.join(ROOT, "configs/md4/text8.py"),
                    data=str(tmp_path / "data"), mesh=tuple(mesh),
                    workdir=workdir)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  out = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def test_mesh_runs_match_one_device_after_three_steps_and_fsdp_shards(
    tmp_path):
  generated_data.write_text8(str(tmp_path / "data"))
  single = _run(tmp_path, (1, 1, 1), devices=1)
  for mesh in [(2, 2, 2), (1, 4, 2)]:
    sharded = _run(tmp_path, mesh, devices=8)
    assert sharded["devices"] == 8
    for a, b in zip(single["params"], sharded["params"]):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4,
                                 atol=1e-6)
    for key, value in single["eval"].items():
      assert sharded["eval"][key] == pytest.approx(value, rel=1e-5), key
    # FSDP shards the embedding's width: each device holds 1/fsdp of it.
    fsdp = mesh[1]
    assert all(s == [28, 64 // fsdp] for s in sharded["shards"]), mesh
