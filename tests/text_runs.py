"""Shared by the text-family tests (autoregressive, block diffusion): random
model variables, and a tiny text8 run trained by md4's own loop."""

import generated_data
import jax

from md4 import config_recipes
from md4 import model as model_lib
from md4 import train


def random_variables(model, seed: int = 0):
  """The model's variables with every leaf random (no zero-initialised
  gates: a zero gate would hide what attention does)."""
  variables = model_lib.init_variables(
      model, jax.random.key(seed), batch_size=2, unbox=True
  )
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [
      0.3 * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)
  ]
  return jax.tree.unflatten(tree, leaves)


def train_tiny_text8(root, config_path: str, arg: str, steps: int = 6):
  """(workdir, result) of `steps` steps of a config on generated text8 data,
  evaluated, sampled and checkpointed at the last step."""
  data_dir = str(root / "data")
  generated_data.write_text8(data_dir)
  config = config_recipes.load_file(config_path, arg)
  config.data.data_dir = data_dir
  config.train.num_steps = steps
  config.train.eval_every = config.train.checkpoint_every = steps
  config.train.sample_every = steps
  config.train.eval_max_batches = 1
  workdir = str(root / "run")
  return workdir, train.train_and_evaluate(config, workdir)
