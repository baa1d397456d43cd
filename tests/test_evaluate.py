"""md4.evaluate: a trained checkpoint's negative ELBO with standard errors."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import trained_digits

from md4 import evaluate
from md4 import run as run_lib
from md4 import train

pytestmark = pytest.mark.slow


def test_evaluate_matches_the_training_time_eval_within_its_standard_error():
  workdir, result = trained_digits.trained_run()
  run = run_lib.restore(workdir)
  setup = run.setup
  # Training evaluates the first eval batch (100 test examples) once, with
  # the rng fold_in(key(seed + 1), 0): the same eval step gives its value.
  local = next(iter(setup.datasets.eval["test"]()))
  batch = {k: jax.numpy.asarray(v) for k, v in local.items()}
  eval_step = jax.jit(train.make_eval_step(setup.model))
  to_bits = 1 / (64 * math.log(2))

  def bits(rng):
    sums = eval_step(run.params, batch, rng)
    return (
        float(sums.get("loss_nelbo", sums["loss"]))
        / float(sums["weight"])
        * to_bits
    )

  loop_rng = jax.random.fold_in(jax.random.key(setup.config.seed + 1), 0)
  assert bits(loop_rng) == pytest.approx(
      result["eval"]["test/bits_per_dim"], rel=1e-5
  )
  # One training-time evaluation is a single noisy draw (its sd here is
  # about 0.1 bits/dim); its mean over many draws is what md4.evaluate
  # estimates with many time samples per example.
  draws = np.array([bits(jax.random.key(1000 + i)) for i in range(24)])
  repeated = evaluate.negative_elbo(
      run, "test", num_examples=100, num_time_samples=8, progress=False
  )
  single = evaluate.negative_elbo(
      run, "test", num_examples=100, num_time_samples=1, seed=1, progress=False
  )
  mean, se = (repeated["bits_per_dim"]["mean"], repeated["bits_per_dim"]["se"])
  se_draws = draws.std(ddof=1) / math.sqrt(len(draws))
  assert abs(mean - draws.mean()) < 3 * math.hypot(se, se_draws)
  assert 0 < se < single["bits_per_dim"]["se"]
  assert repeated["num_examples"] == 100 and repeated["checkpoint_step"] == 6


def test_bound_is_reported_per_unit_with_standard_errors():
  per_example = np.array([100.0, 110.0, 90.0, 104.0])
  n, se = 4, np.std(per_example, ddof=1) / 2
  to_bits = 1 / (64 * math.log(2))
  image = evaluate.summarize(per_example, 64, "bits_per_dim")
  assert image["nelbo_nats"]["mean"] == pytest.approx(101.0)
  assert image["bits_per_dim"]["mean"] == pytest.approx(101.0 * to_bits)
  assert image["bits_per_dim"]["se"] == pytest.approx(se * to_bits)
  assert "perplexity" not in image and n == 4
  chars = evaluate.summarize(per_example, 64, "bits_per_char")
  assert chars["bits_per_char"] == chars["bits_per_dim"]
  tokens = evaluate.summarize(per_example, 64, "perplexity")
  ppl = math.exp(101.0 / 64)
  assert tokens["perplexity"]["mean"] == pytest.approx(ppl)
  assert tokens["perplexity"]["se"] == pytest.approx(ppl * se / 64)
  with pytest.raises(ValueError, match="unit must be one of"):
    evaluate.summarize(per_example, 64, "bits")


def test_evaluate_command_writes_json_for_a_subset(tmp_path):
  workdir, _ = trained_digits.trained_run()
  output = str(tmp_path / "eval.json")
  root = os.path.dirname(trained_digits.ROOT + "/")
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "md4.evaluate",
          f"--workdir={workdir}",
          "--num_examples=30",
          "--num_time_samples=2",
          "--batch_size=20",
          f"--output={output}",
      ],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  with open(output) as f:
    result = json.load(f)
  assert result["num_examples"] == 30 and result["num_time_samples"] == 2
  assert result["split"] == "test" and result["headline"] == "bits_per_dim"
  assert 0 < result["bits_per_dim"]["se"] < result["bits_per_dim"]["mean"]
  assert "bits_per_dim =" in out.stdout


def test_unknown_split_is_rejected_with_the_valid_ones():
  workdir, _ = trained_digits.trained_run()
  run = run_lib.restore(workdir)
  with pytest.raises(ValueError, match="valid: test"):
    evaluate.negative_elbo(run, "valid", progress=False)


def test_class_conditional_run_reports_the_bound_given_and_without_labels(
    tmp_path,
):
  config = trained_digits.digits_config()
  config.model.class_conditional = True
  # Four steps: the output conv starts at zero (as the reference's) and the
  # first step's learning rate is 0, so the label's path to the logits gets
  # its first gradient at step 2.
  config.train.num_steps = 4
  config.train.eval_every = config.train.checkpoint_every = 4
  config.train.sample_every = 4
  workdir = str(tmp_path / "cond")
  trained = train.train_and_evaluate(config, workdir)["eval"]
  assert {
      "test/bits_per_dim",
      "test/bits_per_dim_uncond",
      "test/bits_per_dim_raw",
  } <= set(trained)
  run = run_lib.restore(workdir)
  result = evaluate.negative_elbo(
      run, "test", num_examples=20, num_time_samples=2, progress=False
  )
  assert result["class_conditional"] and result["num_examples"] == 20
  for key in ("nelbo_nats", "bits_per_dim"):
    assert set(result[f"{key}_uncond"]) == {"mean", "se"}
    assert np.isfinite(result[f"{key}_uncond"]["mean"])
  assert result["bits_per_dim_uncond"]["mean"] != result["bits_per_dim"]["mean"]
  plain = evaluate.negative_elbo(
      run_lib.restore(trained_digits.trained_run()[0]),
      "test",
      num_examples=20,
      progress=False,
  )
  assert not plain["class_conditional"]
  assert not any(k.endswith("_uncond") for k in plain)
