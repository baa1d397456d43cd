"""Benchmarks run as users run them, at tiny shapes: accelerator.py --dry_run
(every part on CPU) and families.py --data=text.

The script is run as a user runs it (a subprocess from the repository root);
its JSON must hold every figure the GPU run reports. No timing is asserted:
speed is the benchmark's business, not the test's.
"""

import json
import math
import os
import subprocess
import sys
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_dry_run_writes_every_figure(tmp_path):
  out = tmp_path / "accelerator.json"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [
          sys.executable,
          "benchmarks/accelerator.py",
          "--dry_run",
          f"--json={out}",
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["dry_run"] is True

  impls = [name for name in r["owt"] if name != "loss_agreement"]
  assert len(impls) == 2
  for name in impls:
    o = r["owt"][name]
    assert o["step_ms"] > 0 and o["tokens_per_s"] > 0
    assert o["memory"]["held"] > 0 and o["model_flops"] > 0
    assert all(math.isfinite(x) for x in o["losses"])
  # Same parameters, batches and keys; on CPU both impls are XLA's math.
  assert r["owt"]["loss_agreement"]["last_relative_difference"] < 1e-3

  assert r["batch"]["limit_bytes"] > 0
  for name in impls:
    b = r["batch"][name]
    assert b["largest_fitting"] >= 1
    assert len(b["probes"]) >= 2  # the timed batch and at least one probe

  t = r["text8"]
  assert len(t["bits_per_char"]) == 10
  assert all(math.isfinite(x) for x in t["bits_per_char"])

  s = r["sampling"]
  for name in ("cached", "ancestral"):
    assert s[name]["samples_per_s"] > 0
    assert 1 <= s[name]["network_calls"] <= s["steps"] + 1
  assert s["cached_speedup"] > 0


def test_families_text_puts_autoregressive_beside_md4_at_one_network(tmp_path):
  """benchmarks/families.py --data=text: both families train on the same
  corpus, network, steps and batch, and each row's bound is finite."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
  out = tmp_path / "families.json"
  proc = subprocess.run(
      [
          sys.executable,
          "benchmarks/families.py",
          "--data=text",
          f"--corpus={corpus}",
          "--families=md4,autoregressive",
          "--train_steps=3",
          "--T=4",
          "--num_time_samples=1",
          "--seq_len=16",
          f"--json={out}",
      ],
      cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  md4_row, ar_row = json.loads(out.read_text())
  assert (md4_row["family"], ar_row["family"]) == ("md4", "autoregressive")
  assert ar_row["T"] == "exact" and md4_row["T"] == 4
  # One network but for causal attention and the time input.
  same = lambda net: {
      k: v for k, v in net.items() if k not in ("causal", "time_features")
  }
  assert same(md4_row["network"]) == same(ar_row["network"])
  assert ar_row["network"]["causal"] and not md4_row["network"]["causal"]
  # The autoregressive network lacks only the time-embedding MLP.
  assert 0 < ar_row["parameters"] < md4_row["parameters"]
  for row in (md4_row, ar_row):
    assert row["unit"] == "bits_per_char" and row["split"] == "valid"
    assert math.isfinite(row["bound"]) and row["bound"] > 0
  assert "| autoregressive | 3 | exact |" in proc.stdout


def test_step_profile_books_each_op_to_its_module_and_direction():
  """benchmarks/step_profile.py's op-name map on a real compiled gradient."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import step_profile  # pylint: disable=g-import-not-at-top

  class Block(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = x + nn.Dense(64, name="attention")(x)
      return x + nn.Dense(64, name="mlp")(jnp.tanh(x))

  class DiffusionModel(nn.Module):  # The name stack md4's model has.

    @nn.compact
    def __call__(self, x):
      return Block(name="network")(x)

  model = DiffusionModel()
  x = jnp.ones((8, 64))
  params = model.init(jax.random.key(0), x)

  def step(params):
    grads = jax.grad(lambda p: (model.apply(p, x) ** 2).sum())(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

  names = step_profile.op_names(jax.jit(step).lower(params).compile().as_text())
  dots = {n: op for n, op in names.items() if "dot" in op or "dot" in n}
  parts = {
      (step_profile.part_of(o), step_profile.is_backward(o))
      for o in dots.values()
  }
  assert ("attention", False) in parts and ("attention", True) in parts
  assert ("mlp / convolutions", False) in parts
  assert ("mlp / convolutions", True) in parts
  # The update p - 0.1 g is outside the model's scope.
  assert any(
      step_profile.part_of(o) == step_profile.OPTIMIZER for o in names.values()
  )
  assert step_profile.part_of("") == step_profile.OTHER
  # A dtype conversion is not a convolution.
  assert (
      step_profile.part_of(
          "jit(train_step)/jvp(DiffusionModel)/network/convert_element_type"
      )
      == step_profile.OTHER
  )


def test_block_sampling_dry_run_draws_the_same_samples_with_and_without_cache(
    tmp_path,
):
  out = tmp_path / "block_sampling.json"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [
          sys.executable,
          "benchmarks/block_sampling.py",
          "--dry_run",
          "--rounds=1",
          f"--json={out}",
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["dry_run"] is True and r["date"] and r["machine"]
  assert {(row["length"], row["block_size"]) for row in r["rows"]} == {
      (16, 4),
      (16, 16),
      (32, 4),
      (32, 16),
  }
  for row in r["rows"]:
    assert row["same_samples"] is True
    blocks = row["length"] // row["block_size"]
    assert row["calls_uncached"] == blocks * (row["steps_per_block"] + 1)
    assert row["calls_cached"] == row["calls_uncached"] + blocks
    assert row["samples_per_s_cached"] > 0 and row["samples_per_s_uncached"] > 0
