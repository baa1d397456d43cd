"""Block diffusion (BD3-LM, Arriola et al., 2025) at LM1B's shapes.

BD3-LM's LM1B runs: length 128, batch 512, block sizes 4, 8, 16, 12 x 768
network. md4 has no LM1B loader, so this trains on prepared GPT-2 token
files (`python prepare_openwebtext_data.py --input=...`, data set
"openwebtext") at those shapes: LM1B-shaped, not LM1B. Variants `small`
(default, 12 x 768) and `cpu` (4 x 256, batch 8), each with a block size
after a comma: 4 (default), 8 or 16, e.g. `:cpu,16`.

Deviations from BD3-LM's LM1B runs: the data (GPT-2 tokens of whatever
corpus was prepared, V = 50,257, against LM1B tokenized with
bert-base-uncased, V = 30,522, and its sentence packing), so its numbers
are not comparable to the paper's LM1B table; and those of
configs/block_diffusion/openwebtext.py (network, training schedule, no BOS
handling).
"""

from md4 import config_recipes


def get_config(arg=None):
  owt = config_recipes.load_module(
      config_recipes.sibling(__file__, "openwebtext.py")
  )
  size, block_size = owt.variant_and_block_size(arg, ("small", "cpu"))
  c = owt.get_config(f"{size},{block_size}")
  c.data.data_shape = (128,)
  return c
