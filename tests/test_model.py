"""The model wrapper: config -> network + diffusion, numerics and bad input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import config_recipes
from md4 import model as model_lib

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg):
  return config_recipes.load_file(os.path.join(ROOT, "configs", name), arg)


def _loss_and_logits(config, x):
  model = model_lib.build_model(config)
  variables = model_lib.init_variables(model, jax.random.key(0), unbox=True)
  terms, _ = jax.jit(
      lambda v, x: model.apply(v, x, rngs={"sample": jax.random.key(1)})
  )(variables, x)
  z = jnp.full_like(x, model.mask_id)
  logits = jax.jit(
      lambda v, z: model.apply(
          v, z, jnp.full((z.shape[0],), 0.5), None, method=model.denoise
      )
  )(variables, z)
  return terms, logits


@pytest.mark.parametrize("process", ["md4", "genmd4"])
def test_bfloat16_compute_gives_a_finite_loss_and_float32_logits(process):
  config = load("md4/text8.py", "tiny")
  config.network.dtype = "bfloat16"
  config.model.process = process
  x = jax.random.randint(jax.random.key(2), (4, 32), 0, 27)
  terms, logits = _loss_and_logits(config, x)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(terms["loss"])))
  # The bfloat16 loss is close to the float32 one at the same parameters.
  config.network.dtype = "float32"
  terms32, _ = _loss_and_logits(config, x)
  np.testing.assert_allclose(terms["loss"], terms32["loss"], rtol=0.05)


def test_image_model_takes_batches_of_height_width_channels():
  config = load("md4/digits.py", "tiny")
  x = jax.random.randint(jax.random.key(3), (2, 8, 8, 1), 0, 17)
  terms, logits = _loss_and_logits(config, x)
  assert logits.shape == (2, 8, 8, 1, 17)
  assert terms["loss"].shape == (2,)


def test_mismatched_data_shape_and_network_is_rejected_with_the_field():
  config = load("md4/text8.py", "tiny")
  config.data.data_shape = (8, 8, 1)
  with pytest.raises(ValueError, match="data_shape"):
    model_lib.build_model(config)


def test_unknown_network_name_lists_the_valid_ones():
  config = load("md4/digits.py", "tiny")
  config.network.name = "resnet"
  with pytest.raises(ValueError, match="transformer"):
    model_lib.build_model(config)


def test_unknown_schedule_is_rejected_when_the_model_is_built():
  config = load("md4/digits.py", "tiny")
  config.model.md4.schedule = "cosin"
  with pytest.raises(ValueError, match="linear, cosine, polyK"):
    model_lib.build_model(config)


def test_class_conditioning_on_unlabelled_data_is_rejected():
  config = load("md4/text8.py", "tiny")
  config.model.class_conditional = True
  with pytest.raises(ValueError, match="class_conditional"):
    model_lib.build_model(config, num_classes=0)


def test_class_conditional_model_changes_its_output_with_the_label():
  config = load("md4/digits.py", "tiny")
  config.model.class_conditional = True
  model = model_lib.build_model(config, num_classes=10)
  variables = model_lib.init_variables(model, jax.random.key(0), unbox=True)
  # Perturb the zero-initialised layers so conditioning can show.
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  leaves = [
      l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)
  ]
  variables = jax.tree.unflatten(tree, leaves)
  z = jnp.full((2, 8, 8, 1), model.mask_id)
  t = jnp.full((2,), 0.5)
  denoise = jax.jit(
      lambda label: model.apply(variables, z, t, label, method=model.denoise)
  )
  a = denoise(jnp.array([1, 1]))
  b = denoise(jnp.array([7, 7]))
  c = jax.jit(
      lambda: model.apply(variables, z, t, None, method=model.denoise)
  )()  # no label
  assert not np.allclose(a, b)
  assert not np.allclose(a, c)
