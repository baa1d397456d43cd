"""optimizer.embedding_lr_multiplier scales the embedding tables' updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import configuration
from md4 import optimizers


def _updates(multiplier):
  opt = configuration.default_config().optimizer
  opt.embedding_lr_multiplier = multiplier
  opt.warmup_steps = 0
  tx = optimizers.build_optimizer(opt, num_steps=10)
  rng = np.random.default_rng(0)
  params = {
      "token_embedding": {"embedding": jnp.asarray(rng.normal(size=(5, 3)))},
      "conditioning": {
          "label_embedding": {"embedding": jnp.asarray(rng.normal(size=(4, 3)))}
      },
      "dense": {
          "kernel": jnp.asarray(rng.normal(size=(3, 3))),
          "bias": jnp.asarray(rng.normal(size=(3,))),
      },
  }
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.mark.slow
def test_embedding_updates_are_scaled_and_others_are_not():
  base, scaled = _updates(1.0), _updates(0.25)
  np.testing.assert_allclose(
      scaled["token_embedding"]["embedding"],
      0.25 * base["token_embedding"]["embedding"],
      rtol=1e-6,
  )
  np.testing.assert_allclose(
      scaled["conditioning"]["label_embedding"]["embedding"],
      0.25 * base["conditioning"]["label_embedding"]["embedding"],
      rtol=1e-6,
  )
  np.testing.assert_array_equal(
      scaled["dense"]["kernel"], base["dense"]["kernel"]
  )
  assert float(jnp.abs(base["token_embedding"]["embedding"]).max()) > 0


def test_embedding_mask_marks_only_embed_tables():
  mask = optimizers.embedding_mask(
      {"a": {"embedding": 1.0, "kernel": 2.0}, "embedding_proj": {"bias": 3}}
  )
  assert mask == {
      "a": {"embedding": True, "kernel": False},
      "embedding_proj": {"bias": False},
  }
