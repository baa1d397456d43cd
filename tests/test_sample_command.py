"""`python -m md4.sample` as a function (`md4.sample.sample_to_files`):
the files it writes, reconstruction, and the flags it rejects."""

import functools
import json
import math
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import trained_digits

from md4 import configuration
from md4 import run as run_lib
from md4 import sample as sample_command
from md4.sampling import known_tokens

pytestmark = pytest.mark.slow


def _sample(tmp_path, **fields):
  """(workdir, output dir, summary) of md4.sample on the shared digits run."""
  workdir, _ = trained_digits.trained_run()
  out = str(tmp_path / "out")
  request = sample_command.Request(workdir=workdir, output_dir=out, **fields)
  return workdir, out, sample_command.sample_to_files(request)


def test_sample_command_writes_inpainted_png_history_gif_and_strip(tmp_path):
  workdir, out, summary = _sample(
      tmp_path,
      num_samples=6,
      batch_size=4,
      steps=12,
      sampler="cached",
      inpaint="left",
      history=True,
      history_frames=5,
  )
  names = sorted(os.listdir(out))
  assert names == [
      "history.gif",
      "history_strip.png",
      "known.png",
      "samples.npy",
      "samples.png",
      "summary.json",
  ]
  samples = np.load(os.path.join(out, "samples.npy"))
  assert samples.shape == (6, 8, 8, 1)
  assert samples.min() >= 0 and samples.max() < 17
  run = run_lib.restore(workdir)
  images = known_tokens.split_examples(run.setup.datasets, "test", 6)
  np.testing.assert_array_equal(samples[:, :, :4], images[:, :, :4])
  with Image.open(os.path.join(out, "history.gif")) as gif:
    assert gif.n_frames == 5
  with open(os.path.join(out, "summary.json")) as f:
    saved = json.load(f)
  assert (
      saved["network_calls_per_sample"]
      == summary["network_calls_per_sample"]
      <= 13
  )
  assert saved["checkpoint_step"] == 6


@pytest.mark.parametrize("t", [0.5, 1e-3])
def test_reconstruct_writes_originals_noised_and_reconstructions(tmp_path, t):
  workdir, out, summary = _sample(
      tmp_path,
      num_samples=32,
      batch_size=16,
      steps=6,
      reconstruct_from="test",
      reconstruct_t=t,
  )
  assert sorted(os.listdir(out)) == [
      f"{name}.{ext}"
      for name in ("noised", "originals", "reconstructions")
      for ext in ("npy", "png")
  ] + ["summary.json"]
  load = lambda name: np.load(os.path.join(out, f"{name}.npy"))
  originals, noised, rebuilt = (
      load("originals"),
      load("noised"),
      load("reconstructions"),
  )
  run = run_lib.restore(workdir)
  np.testing.assert_array_equal(
      originals, known_tokens.split_examples(run.setup.datasets, "test", 32)
  )
  masked = noised == run.setup.model.mask_id  # [32, 8, 8, 1]
  np.testing.assert_array_equal(noised[~masked], originals[~masked])
  np.testing.assert_array_equal(rebuilt[~masked], originals[~masked])
  assert rebuilt.min() >= 0 and rebuilt.max() < 17
  alpha = run.setup.model.process.alpha({})
  p = 1.0 - float(alpha(jnp.float32(t)))
  se = math.sqrt(p * (1 - p) / masked.size)
  assert abs(masked.mean() - p) < 5 * se + 1e-3
  scores = summary["reconstruction"]
  assert scores["num_examples"] == 32 and scores["split"] == "test"
  assert scores["expected_masked_fraction"] == pytest.approx(p, rel=1e-3)
  assert scores["masked_fraction"] == pytest.approx(masked.mean())
  assert scores["equal_fraction"] == pytest.approx(
      (rebuilt == originals).mean()
  )
  assert summary["settings"]["start_time"] == t
  assert summary["request"]["sampler"] == configuration.periodic_sampler(
      run.config
  )
  assert summary["settings"]["grid"] == run.config.train.sampling_grid
  if t < 0.01:  # Nearly nothing is masked: the input comes back.
    assert masked.mean() < 0.01 and scores["equal_fraction"] > 0.99
  else:
    assert 0.3 < masked.mean() < 0.7


def test_reconstruct_rejects_an_unknown_split_and_flags_that_clash(tmp_path):
  workdir, _ = trained_digits.trained_run()
  request = functools.partial(
      sample_command.Request,
      workdir=workdir,
      output_dir=str(tmp_path / "out"),
      reconstruct_from="test",
  )
  with pytest.raises(
      ValueError, match="--inpaint does not apply with --reconstruct_from"
  ):
    sample_command.sample_to_files(request(inpaint="left"))
  with pytest.raises(ValueError, match="--reconstruct_t=1.5 must be in"):
    sample_command.sample_to_files(request(reconstruct_t=1.5))
  with pytest.raises(
      ValueError,
      match="--reconstruct_from='valid' is not a split; valid: train, test",
  ):
    sample_command.sample_to_files(request(reconstruct_from="valid"))
  assert not os.path.exists(tmp_path / "out")
