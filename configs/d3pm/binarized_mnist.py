"""D3PM with uniform noise on binarized MNIST, T = 200 (Austin et al., 2021).

Pixels thresholded at 0.5 and padded to 32x32; hybrid loss L_vb + 0.01 CE;
the reported bits/dim is the full bound (prior and every step included).
Variants: `default`, `cpu` (shrunk), `digits` (offline, minutes).
"""

from md4 import configuration


def get_config(arg=None):
  name = configuration.variant(arg, ("default", "cpu", "digits"))
  c = configuration.load_file(
      configuration.sibling(__file__, "../md4/binarized_mnist.py"),
      "cpu" if name == "cpu" else "default")
  c.model.process = "d3pm"
  c.model.transition = "uniform"
  c.model.schedule = "cosine"  # Reaches the uniform prior exactly at T.
  c.model.num_steps = 200
  c.model.hybrid_coeff = 0.01
  c.train.sample_steps = 200  # D3PM samples with all T steps.
  if name == "digits":
    configuration.use_digits(c)
  return c
