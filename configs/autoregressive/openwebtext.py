"""The autoregressive baseline on OpenWebText: MD4's network, made causal.

The same data (GPT-2 tokens, length 1024), transformer sizes, optimizer
and schedule of steps as configs/md4/openwebtext.py (variants `small`,
12 x 768; `medium`, 24 x 1024; `cpu`, shrunk), so that a run of each
compares the two families at one network, steps and batch. What changes:
model.process "autoregressive" (exact next-token likelihood, no time
draws); network.causal True (the input is the sequence shifted right with
the start token V = 50257 in front); network.time_features "none" (no
diffusion time: the network has MD4's parameters less its time-embedding
MLP); periodic samples from the left-to-right sampler. Prepare the data
first: python prepare_openwebtext_data.py.
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  size = config_recipes.variant(arg, ("small", "medium", "cpu"))
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "../md4/openwebtext.py"), size
  )
  configuration.switch_process(c, "autoregressive")
  c.network.causal = True
  c.network.time_features = "none"
  return c
