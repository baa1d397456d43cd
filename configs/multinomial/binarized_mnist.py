"""Multinomial diffusion (Hoogeboom et al., 2021) on binarized MNIST.

Multinomial diffusion is uniform-noise D3PM with the cosine schedule and
the plain variational loss (tests/test_d3pm.py shows the posteriors agree),
so it is configured as exactly that. Variants: `default`, `cpu`, `digits`.
"""

from md4 import configuration


def get_config(arg=None):
  c = configuration.load_file(
      configuration.sibling(__file__, "../d3pm/binarized_mnist.py"), arg)
  c.model.hybrid_coeff = 0.0
  c.model.num_steps = 1000 if arg in (None, "default") else 200
  c.train.sample_steps = c.model.num_steps
  return c
