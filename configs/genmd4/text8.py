"""GenMD4 on text8: per-character learnable polynomial schedules.

Same data and transformer as configs/md4/text8.py; the schedule exponents
start at power_init = 1 (the linear schedule) and are learned with the
leave-one-out REINFORCE gradient. Variants: `small`, `cpu`, `tiny`.
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "../md4/text8.py"), arg
  )
  configuration.switch_process(c, "genmd4")
  c.model.genmd4.power_init = (
      1.0  # softplus(param) starts here for every value.
  )
  c.model.genmd4.t1 = 1e-4  # Start of the diffusion integral.
  return c
