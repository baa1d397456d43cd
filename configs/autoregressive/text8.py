"""The autoregressive baseline on text8: MD4's text8 network, made causal.

The same data, transformer sizes, optimizer and schedule of steps as
configs/md4/text8.py (variants `small`, 12 x 768; `cpu`, 4 x 256; `tiny`,
2 x 64), so that a run of each compares the two families at one network,
steps and batch. What changes, and why:

- model.process "autoregressive": the exact next-token negative
  log-likelihood (md4/diffusion/autoregressive.py), no time draws.
- network.causal True: position i attends to positions <= i; the input is
  the sequence shifted right with the start token V = 27 in front.
- network.time_features "none": there is no diffusion time. The adaLN
  modulation becomes a learned per-block constant, so the network has the
  MD4 network's parameters less its time-embedding MLP.
- Periodic samples: the left-to-right sampler (train.sample_steps does not
  apply and stays at its default).

Variants: `small`, `cpu`, `tiny`.
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  size = config_recipes.variant(arg, ("small", "cpu", "tiny"))
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "../md4/text8.py"), size
  )
  configuration.switch_process(c, "autoregressive")
  c.network.causal = True
  c.network.time_features = "none"
  return c
