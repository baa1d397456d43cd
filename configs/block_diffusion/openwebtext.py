"""Block diffusion (BD3-LM, Arriola et al., ICLR 2025) on OpenWebText.

GPT-2 tokens, length 1024. Variants `small` (default, 12 x 768) and `cpu`
(4 x 256, length 256), each with a block size after a comma: the paper's 4
(default), 8 or 16, e.g. `--config=configs/block_diffusion/openwebtext.py:cpu,16`.
Other block sizes (any divisor of the length; L is MD4, 1 is
autoregressive): `--config.model.block_diffusion.block_size=N`.
Prepare the data first: python prepare_openwebtext_data.py.

From BD3-LM (paper and its code, `configs/algo/bd3lm.yaml`,
`scripts/train/train_owt_bd3lm.sh`): continuous time, the linear
(log-linear) schedule, no time conditioning (network.time_features "none"),
batch 512, length 1024, learning rate 3e-4, the [x_t, x_0] training pass
with the block-causal mask, and its clipped noise-rate schedule as an
option (model.block_diffusion.clip_min / clip_max; off by default).

Deviations, with their reasons:
- The network is MD4's OpenWebText DiT (configs/md4/openwebtext.py:
  sigmoid-gated MLP, no norm or head biases, 64-wide conditioning), not
  MDLM's DiT that BD3-LM trains (GELU MLP with biases, LayerNorm weights, a
  128-wide conditioning MLP), so that MD4, block diffusion and the
  autoregressive baseline compare at one network; the parameter count
  differs from BD3-LM's by those parts.
- BD3-LM pre-trains 850K steps at block size L and fine-tunes 150K steps
  at the target block size, and searches the clipping interval during
  training (`clip_search_widths`); here a run trains at its block size from
  the start for the MD4 config's 1M steps, with a fixed interval.
- BD3-LM keeps the first (BOS) token unmasked (`ignore_bos`); md4's token
  streams have no BOS, so every token is diffused.
- Optimizer and schedule of steps are MD4's OpenWebText config's
  (warm-up 2000 then cosine decay, weight decay 0.03, no gradient
  clipping); BD3-LM's `configs/config.yaml` has the same learning rate
  3e-4, b2 0.999 and EMA 0.9999 but weight decay 0, gradient clipping at
  1.0 and a constant rate after warm-up (`constant_warmup`), kept MD4's so
  that the families compare under one optimizer.
- Times: MD4's schedule, alpha in [eps, 1 - eps] with eps = 1e-4 and t in
  (0, 1]; BD3-LM's log-linear schedule draws masking rates in [1e-3, 1]
  (`sampling_eps_min`).
"""

from md4 import config_recipes
from md4 import configuration

BLOCK_SIZES = (4, 8, 16)


def variant_and_block_size(
    arg: str | None, sizes: tuple[str, ...]
) -> tuple[str, int]:
  """`size[,block_size]` -> (size, block size); the paper's sizes only."""
  size, _, block = (arg or "").partition(",")
  size = config_recipes.variant(size or None, sizes)
  block_size = int(block) if block.isdigit() else BLOCK_SIZES[0]
  if block and (not block.isdigit() or block_size not in BLOCK_SIZES):
    raise ValueError(
        f"config variant {arg!r}: the block size after the comma must be "
        f"one of the paper's {BLOCK_SIZES}; for another, set "
        "--config.model.block_diffusion.block_size."
    )
  return size, block_size


def block_diffusion(c, block_size: int):
  """Makes an MD4 text config a block diffusion config (module docstring)."""
  schedule = c.model.md4.schedule
  configuration.switch_process(c, "block_diffusion")
  c.model.block_diffusion.block_size = block_size
  c.model.block_diffusion.schedule = schedule
  c.network.time_features = "none"
  return c


def get_config(arg=None):
  size, block_size = variant_and_block_size(arg, ("small", "cpu"))
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "../md4/openwebtext.py"), size
  )
  return block_diffusion(c, block_size)
