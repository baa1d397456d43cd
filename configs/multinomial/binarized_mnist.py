"""Multinomial diffusion (Hoogeboom et al., 2021) on binarized MNIST.

Multinomial diffusion is uniform-noise D3PM with Hoogeboom et al.'s cosine
schedule, their reverse step and the plain variational loss
(tests/test_d3pm.py checks the reverse step against their closed-form
posterior), so it is configured as exactly that. What each value follows:

- transition "uniform", schedule "cosine" (abar_t = cos(...) / cos(...),
  the square root of the Gaussian cos^2 curve), parameterization
  "soft_x0" (theta_post with the network's x0 prediction): Hoogeboom et
  al.'s code. Our last beta is 1 (their last alpha is sqrt(0.001)), so x_T
  is exactly uniform.
- hybrid_coeff 0: Hoogeboom et al. train on the bound alone.
- num_steps T = 1000 (200 for `cpu` and `digits`): this project's choice;
  binarized MNIST is not one of their data sets.
- Network, optimizer and data: `configs/d3pm/binarized_mnist.py`, hence
  `configs/md4/binarized_mnist.py`.

Variants: `default`, `cpu`, `digits`.
"""

from md4 import config_recipes


def get_config(arg=None):
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "../d3pm/binarized_mnist.py"), arg
  )
  c.model.d3pm.hybrid_coeff = 0.0  # The bound alone.
  c.model.d3pm.parameterization = "soft_x0"  # Their posterior form.
  c.model.d3pm.num_steps = 1000 if arg in (None, "default") else 200
  return c
