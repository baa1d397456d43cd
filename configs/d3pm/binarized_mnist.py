"""D3PM with uniform noise on binarized MNIST, T = 200 (Austin et al., 2021).

Pixels thresholded at 0.5 and padded to 32x32; the reported bits/dim is the
full bound (prior and every step included). Neither Austin et al. nor
Hoogeboom et al. report binarized MNIST; what each value follows:

- transition "uniform" with schedule "cosine": Austin et al.'s code pairs
  uniform noise with the cosine schedule it takes from Hoogeboom et al.
  (abar_t = cos(...) / cos(...), not squared); our last beta is 1 (theirs
  0.999), so x_T is exactly uniform.
- parameterization "soft_x0" (the default): Austin et al. Eq. 4.
- hybrid_coeff 0.01 (L_vb + 0.01 CE): Austin et al.'s lambda for text8
  (their CIFAR-10 models use 0.001).
- num_steps T = 200: this project's choice for a small image set (Austin et
  al. use T = 1000). Samples come from the T-step reverse chain.
- Network, optimizer and data pipeline: `configs/md4/binarized_mnist.py`.

Variants: `default`, `cpu` (shrunk), `digits` (offline, minutes).
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  name = config_recipes.variant(arg, ("default", "cpu", "digits"))
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "../md4/binarized_mnist.py"),
      "cpu" if name == "cpu" else "default",
  )
  configuration.switch_process(c, "d3pm")
  c.model.d3pm.transition = "uniform"
  c.model.d3pm.schedule = "cosine"  # Reaches the uniform prior exactly at T.
  c.model.d3pm.parameterization = "soft_x0"  # Austin et al. Eq. 4.
  c.model.d3pm.num_steps = 200
  c.model.d3pm.hybrid_coeff = 0.01
  if name == "digits":
    config_recipes.use_digits(c)
  return c
