"""Block diffusion (BD3-LM, Arriola et al., 2025) on text8.

MD4's text8 config (configs/md4/text8.py: 27 characters, length 256, the
reference's text8 network, optimizer and steps) with the block diffusion
process. Variants `small` (default, 12 x 768), `cpu` (4 x 256) and `tiny`
(2 x 64), each with a block size after a comma: 4 (default), 8 or 16,
e.g. `--config=configs/block_diffusion/text8.py:cpu,8`.

BD3-LM reports no text8 experiment: what comes from BD3-LM is the process
(the [x_t, x_0] pass with the block-causal mask, per-block times, no time
conditioning, optional clipped schedule); the rest is MD4's text8 config,
so that MD4, block diffusion and the autoregressive baseline
(configs/autoregressive/text8.py) compare at one network, steps and batch.
The deviations of configs/block_diffusion/openwebtext.py about the network
and the training schedule apply.
"""

from md4 import config_recipes


def get_config(arg=None):
  owt = config_recipes.load_module(
      config_recipes.sibling(__file__, "openwebtext.py")
  )
  size, block_size = owt.variant_and_block_size(arg, ("small", "cpu", "tiny"))
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "../md4/text8.py"), size
  )
  return owt.block_diffusion(c, block_size)
