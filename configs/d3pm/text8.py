"""D3PM with absorbing noise on text8, T = 1000, with the DiT transformer.

Schedule 1/(T - t + 1) (abar_t = 1 - t/T), hybrid loss L_vb + 0.01 CE.
Variants: `small` (12 x 768), `cpu`, `tiny`, `digits` (offline, minutes).
"""

from md4 import configuration


def get_config(arg=None):
  name = configuration.variant(arg, ("small", "cpu", "tiny", "digits"))
  c = configuration.load_file(
      configuration.sibling(__file__, "../md4/text8.py"),
      "small" if name == "digits" else name)
  c.model.process = "d3pm"
  c.model.transition = "absorbing"
  c.model.schedule = "jsd"
  c.model.num_steps = 1000
  c.model.hybrid_coeff = 0.01
  c.train.sample_steps = 1000
  if name in ("cpu", "tiny"):
    c.model.num_steps = c.train.sample_steps = 100 if name == "cpu" else 10
  if name == "digits":
    configuration.use_digits(c)
    c.model.num_steps = c.train.sample_steps = 100
  return c
