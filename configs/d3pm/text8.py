"""D3PM with absorbing noise on text8, T = 1000, with the DiT transformer.

What each value follows:

- transition "absorbing", T = 1000 and hybrid_coeff 0.01 (L_vb + 0.01 CE):
  Austin et al. (2021)'s text8 model.
- schedule "jsd" (beta_t = 1/(T - t + 1), so abar_t = 1 - t/T and every
  token is masked at T): the schedule Austin et al.'s code gives absorbing
  noise (a schedule with abar_T > 0, e.g. "linear", is rejected).
- parameterization "soft_x0" (the default): Austin et al. Eq. 4; with
  absorbing noise "posterior_mixture" gives the same reverse step.
- Network (MD4's 12 x 768 DiT), optimizer and data: `configs/md4/text8.py`,
  so that D3PM and MD4 compare on one network; Austin et al.'s own
  transformer differs.
- `cpu`/`tiny`/`digits` shrink T to 100/10/100 for speed.

Variants: `small` (12 x 768), `cpu`, `tiny`, `digits` (offline, minutes).
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  name = config_recipes.variant(arg, ("small", "cpu", "tiny", "digits"))
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "../md4/text8.py"),
      "small" if name == "digits" else name,
  )
  configuration.switch_process(c, "d3pm")
  c.model.d3pm.transition = "absorbing"
  c.model.d3pm.schedule = "jsd"
  c.model.d3pm.parameterization = "soft_x0"  # Austin et al. Eq. 4.
  c.model.d3pm.num_steps = 1000
  c.model.d3pm.hybrid_coeff = 0.01
  if name in ("cpu", "tiny"):
    c.model.d3pm.num_steps = 100 if name == "cpu" else 10
  if name == "digits":
    config_recipes.use_digits(c)
    c.model.d3pm.num_steps = 100
  return c
