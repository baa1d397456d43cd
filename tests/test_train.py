"""End to end: shrunk real configs train, evaluate, sample, checkpoint, resume."""

import logging
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import generated_data
from md4 import checkpointing
from md4 import config_recipes
from md4 import optimizers
from md4 import run as run_lib
from md4 import train

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg):
  return config_recipes.load_file(os.path.join(ROOT, "configs", name), arg)


def final_state(workdir):
  manager = ocp.CheckpointManager(
      checkpointing.checkpoint_dir(workdir), item_names=("state", "data")
  )
  step = manager.latest_step()
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
  )
  return step, restored.state


# Resume after SIGKILL/SIGTERM, bitwise, is tested in test_faults.py.


def test_digits_run_writes_eval_samples_and_checkpoints(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  config = load("md4/digits.py", "tiny")
  result = train.train_and_evaluate(config, str(tmp_path))
  report = [
      r.getMessage()
      for r in caplog.records
      if r.getMessage().startswith("Per device:")
  ]
  assert len(report) == 1 and "activations and temporaries" in report[0]
  assert result["step"] == config.train.num_steps
  assert np.isfinite(result["eval"]["test/bits_per_dim"])
  assert 0 < result["eval"]["test/bits_per_dim"] < 10
  # The raw parameters' bound beside the EMA's; no labels, no _uncond.
  assert np.isfinite(result["eval"]["test/bits_per_dim_raw"])
  assert not any(k.endswith("_uncond") for k in result["eval"])
  assert result["samples"].endswith(".png") and os.path.exists(
      result["samples"]
  )
  steps = ocp.utils.checkpoint_steps(checkpointing.checkpoint_dir(tmp_path))
  assert sorted(steps) == [3, 6]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))


def test_restore_from_initialises_params_from_another_run(tmp_path):
  config = load("md4/digits.py", "tiny")
  train.train_and_evaluate(config, str(tmp_path / "first"))
  config.train.num_steps = 1
  config.optimizer.learning_rate = 0.0  # The copied params must survive.
  config.optimizer.ema_decay = 0.0
  config.restore_from = str(tmp_path / "first")
  train.train_and_evaluate(config, str(tmp_path / "second"))
  _, first = final_state(str(tmp_path / "first"))
  _, second = final_state(str(tmp_path / "second"))
  for a, b in zip(
      jax.tree.leaves(first["params"]), jax.tree.leaves(second["params"])
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


@pytest.mark.parametrize("config_name", ["md4/text8.py", "genmd4/text8.py"])
def test_text8_run_writes_text_samples_and_bits_per_char(tmp_path, config_name):
  generated_data.write_text8(str(tmp_path / "data"))
  config = load(config_name, "tiny")
  config.data.data_dir = str(tmp_path / "data")
  config.train.num_steps = 4
  config.train.eval_every = config.train.checkpoint_every = 4
  config.train.sample_every = 4
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  # text8 reports bits/char (DataInfo.unit), the same number as bits/dim;
  # perplexity is for token data.
  assert {
      "valid/bits_per_dim",
      "test/bits_per_dim",
      "test/bits_per_char",
  } <= set(result["eval"])
  assert "test/perplexity" not in result["eval"]
  assert (
      result["eval"]["test/bits_per_char"]
      == result["eval"]["test/bits_per_dim"]
  )
  with open(result["samples"]) as f:
    text = f.read()
  assert set(text) <= set(" abcdefghijklmnopqrstuvwxyz\n")
  assert len(text.split("\n\n")) == config.train.num_samples


def test_learning_rate_at_end_of_warmup_midway_and_end():
  config = load("md4/openwebtext.py", "small")
  lr = optimizers.learning_rate_schedule(config.optimizer, 1_000_000)
  assert float(lr(0)) == 0.0
  assert float(lr(1000)) == pytest.approx(1.5e-4, rel=1e-5)
  assert float(lr(2000)) == pytest.approx(3e-4, rel=1e-5)
  midway = 2000 + (1_000_000 - 2000) // 2
  assert float(lr(midway)) == pytest.approx(1.5e-4, rel=1e-3)
  assert float(lr(1_000_000)) == pytest.approx(0.0, abs=1e-9)
  config.optimizer.lr_schedule = "constant"
  flat = optimizers.learning_rate_schedule(config.optimizer, 1_000_000)
  assert float(flat(500_000)) == pytest.approx(3e-4)


def test_ema_is_decay_times_ema_plus_rest_times_params():
  ema = {"w": jnp.array([1.0, 2.0])}
  params = {"w": jnp.array([3.0, -2.0])}
  out = optimizers.ema_update(ema, params, 0.9)
  np.testing.assert_allclose(out["w"], [1.2, 1.6], rtol=1e-6)


@pytest.mark.parametrize("decay", [0.995, 0.999, 0.9999])
def test_ema_decay_at_step_k_is_min_of_decay_and_1_plus_k_over_10_plus_k(decay):
  steps = np.array([0, 1, 2, 9, 100, 1799, 1800, 1801, 8990, 89_990, 10**6])
  expected = np.minimum(decay, (1.0 + steps) / (10.0 + steps))
  got = jax.vmap(lambda k: optimizers.ema_decay_at(k, decay, True))(
      jnp.asarray(steps, jnp.int32)
  )
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert float(got[0]) == pytest.approx(0.1)
  assert float(got[-1]) == pytest.approx(decay)
  assert optimizers.ema_decay_at(jnp.int32(5), decay, False) == decay


def test_warmed_up_ema_keeps_a_vanishing_share_of_the_initial_params():
  # ema_0 = 1, params 0 from then on: ema_n is the initial values' share,
  # prod_k decay_k = prod (1 + k) / (10 + k) = 1 / C(n + 9, 9) with warm-up.
  n, decay = 20, 0.9999
  ema = {"w": jnp.ones(())}
  plain = {"w": jnp.ones(())}
  zero = {"w": jnp.zeros(())}
  for k in range(n):
    ema = optimizers.ema_update(
        ema, zero, optimizers.ema_decay_at(jnp.int32(k), decay, True)
    )
    plain = optimizers.ema_update(
        plain, zero, optimizers.ema_decay_at(jnp.int32(k), decay, False)
    )
  assert float(ema["w"]) == pytest.approx(1 / math.comb(n + 9, 9), rel=1e-4)
  assert float(plain["w"]) == pytest.approx(decay**n, rel=1e-5)


@pytest.mark.parametrize("warmup", [True, False])
def test_train_step_ema_is_close_to_the_params_after_a_few_steps_with_warmup(
    tmp_path, warmup
):
  config = load("md4/digits.py", "tiny")
  config.optimizer.ema_decay = 0.9999
  config.optimizer.ema_warmup = warmup
  setup = run_lib.build(config, str(tmp_path))
  state = run_lib.create_state(setup, jax.random.key(0))
  initial = state.params
  step = jax.jit(train.make_train_step(setup.model, setup.optimizer, config))
  batches = iter(setup.datasets.train)
  for k in range(12):
    batch = {key: jnp.asarray(v) for key, v in next(batches).items()}
    state, metrics = step(state, batch, jax.random.key(1))
    expected_decay = min(0.9999, (1 + k) / (10 + k)) if warmup else 0.9999
    assert float(metrics["ema_decay"]) == pytest.approx(
        expected_decay, rel=1e-6
    )

  def distance(a, b):
    return float(optimizers.global_norm(jax.tree.map(jnp.subtract, a, b)))

  moved = distance(state.params, initial)
  lag = distance(state.ema_params, state.params)
  assert moved > 0
  if warmup:  # decay_k: 0.1, 0.18, ..., 0.57: the EMA is near the params.
    assert lag < 0.25 * moved, (lag, moved)
  else:  # 0.9999^12: the EMA is still almost the initial params.
    assert lag > 0.99 * moved, (lag, moved)


def _perturbed(params, scale, seed):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      tree,
      [
          p + scale * jax.random.normal(k, p.shape, p.dtype)
          for p, k in zip(leaves, keys)
      ],
  )


def test_class_conditional_eval_reports_bounds_with_and_without_labels(
    tmp_path,
):
  config = load("md4/digits.py", "tiny")
  config.model.class_conditional = True
  setup = run_lib.build(config, str(tmp_path))
  num_classes = setup.model.num_classes
  assert num_classes == 10
  # Random weights everywhere, so that the label changes the logits.
  params = _perturbed(
      run_lib.create_state(setup, jax.random.key(0)).params, 0.05, 1
  )
  raw = _perturbed(params, 0.05, 2)
  eval_step = jax.jit(train.make_eval_step(setup.model))
  with jax.set_mesh(setup.mesh):
    result = train.evaluate(setup, eval_step, params, 0, raw_params=raw)
    same = train.evaluate(setup, eval_step, params, 0, raw_params=params)
    # The same bound with the "no label" id written into the batch.
    totals = {"loss": 0.0, "weight": 0.0}
    for i, local in enumerate(setup.datasets.eval["test"]()):
      if i >= config.train.eval_max_batches:
        break
      local = dict(local, label=np.full_like(local["label"], num_classes))
      rng = jax.random.fold_in(jax.random.key(config.seed + 1), i)
      sums = eval_step(params, train._global_batch(setup, local), rng)
      for k in totals:
        totals[k] += float(sums[k])
  uncond = totals["loss"] / totals["weight"] / (64 * math.log(2))
  assert result["test/bits_per_dim_uncond"] == pytest.approx(uncond, rel=1e-6)
  assert result["test/bits_per_dim"] != pytest.approx(uncond, rel=1e-4)
  assert result["test/bits_per_dim_raw"] != pytest.approx(
      result["test/bits_per_dim"], rel=1e-4
  )
  assert same["test/bits_per_dim_raw"] == same["test/bits_per_dim"]
  assert same["test/bits_per_dim"] == result["test/bits_per_dim"]


def test_micro_batches_give_the_same_update_as_one_full_batch(tmp_path):
  config = load("md4/digits.py", "tiny")
  setup = run_lib.build(config, str(tmp_path))
  # Plain SGD: the update is linear in the gradient, so equal updates mean
  # equal gradients (Adam's first step is sign(g) and hides the comparison).
  sgd = optax.sgd(1.0)
  state = run_lib.create_state(setup, jax.random.key(0))
  state = state.replace(opt_state=sgd.init(state.params))
  batch = next(iter(setup.datasets.train))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  updated = []
  for k in (1, 4):
    config.train.micro_batches = k
    step = jax.jit(train.make_train_step(setup.model, sgd, config))
    new_state, metrics = step(state, batch, jax.random.key(1))
    updated.append((new_state, metrics))
  (a, ma), (b, mb) = updated
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(
        np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6
    )
  assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)
  changed = [
      not np.allclose(np.asarray(x), np.asarray(y))
      for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(state.params))
  ]
  assert any(changed)


def test_unwritable_workdir_is_reported_before_compiling(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="not writable"):
    run_lib.build(load("md4/digits.py", "tiny"), str(blocker / "run"))


def test_batch_not_divisible_by_data_parallel_size_is_reported_early(tmp_path):
  code = (
      "import importlib.util, sys; sys.path.insert(0, %r);"
      "from md4 import run as run_lib;"
      "spec = importlib.util.spec_from_file_location('c', %r);"
      "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
      "c = m.get_config('tiny'); c.train.batch_size = 6;"
      "c.train.eval_batch_size = 8;"
      "run_lib.build(c, %r)"
  ) % (ROOT, os.path.join(ROOT, "configs/md4/digits.py"), str(tmp_path))
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=4",
      JAX_PLATFORMS="cpu",
  )
  out = subprocess.run(
      [sys.executable, "-c", code],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode != 0
  assert (
      "config.train.batch_size=6 must be divisible by the data-parallel size 4"
      in out.stderr
  )


@pytest.mark.parametrize(
    "config_name", ["d3pm/binarized_mnist.py", "d3pm/text8.py"]
)
def test_d3pm_digits_variants_train_evaluate_and_sample(tmp_path, config_name):
  config = load(config_name, "digits")
  config.network = load("md4/digits.py", "tiny").network
  config.model.d3pm.num_steps = 10
  config.train.num_steps = 2
  config.train.eval_max_batches = 1
  config.train.num_samples = 4
  result = train.train_and_evaluate(config, str(tmp_path))
  bpd = result["eval"]["test/bits_per_dim"]
  # An untrained D3PM's bound can exceed log2(17) = 4.1 (T KL terms).
  assert np.isfinite(bpd) and 0 < bpd < 100
  assert result["eval"]["test/loss_prior"] < 0.1  # The chain reaches p(x_T).
  assert os.path.exists(result["samples"])


def test_saved_config_check_ignores_runtime_fields_and_fields_added_later(
    tmp_path,
):
  config = load("md4/digits.py", "tiny")
  saved = config.copy_and_resolve_references()
  del saved.network["dropout_rate"]  # As if saved before the field existed.
  run_lib.save_config(saved, str(tmp_path))
  resumed = config.copy_and_resolve_references()
  resumed.network.dtype = "bfloat16"  # Compute dtype: parameters unchanged.
  run_lib.check_saved_config(resumed, str(tmp_path))
  resumed.network.ch = config.network.ch * 2
  with pytest.raises(ValueError, match=r"config\.network\.ch: saved"):
    run_lib.check_saved_config(resumed, str(tmp_path))
  resumed.allow_config_change = True
  run_lib.check_saved_config(resumed, str(tmp_path))
