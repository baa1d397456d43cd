"""MD4 on CIFAR-10 (32x32x3, 256 values per channel), Shi et al. (2024).

Variants: `default` (continuous time), `discrete` (T = 256 steps), `cpu`.

`default` builds the reference implementation's CIFAR-10 U-Net
(google-deepmind/md4 `configs/md4/cifar10.py`, after VDM): 128 channels,
32 ResBlocks down and 33 up at 32x32, attention in the middle, each
channel's value embedded 128 wide, a 128-wide conditioning vector added
(bias-free) inside every ResBlock: 28,427,520 parameters, the paper's ~28M.

Every value follows the reference config: linear schedule, continuous time,
dropout 0.1, learning rate 2e-4 with 100 warm-up steps and cosine decay,
b2 0.99, weight decay 0.01, EMA 0.9999, batch 256, 2M steps, no gradient
clipping. `discrete` is the paper's T = 256 variant. `cpu` is the reference
network at 64 channels, 4 ResBlocks (embedding and conditioning 64 wide, as
the reference's `feature_dim` sets all three).

Deviations, with their reasons: the EMA warms up (optimizer.ema_warmup, see
configs/md4/text8.py); weight decay skips 1-D parameters; the middle
attention's output projection starts at zero (the reference's U-Net uses
flax's default init there; same parameter count).
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  name = config_recipes.variant(arg, ("default", "discrete", "cpu"))
  c = configuration.default_config()
  c.data.dataset = "cifar10"
  c.data.data_shape = (32, 32, 3)
  c.data.vocab_size = 256
  c.model.md4.schedule = "linear"
  c.model.md4.num_steps = 256 if name == "discrete" else 0
  c.network = config_recipes.unet(
      ch=128,
      num_res_blocks=32,
      dropout_rate=0.1,
      ch_mult=(1,),
      attn_resolutions=(),
      embed_dim=128,
      cond_width=128,
  )
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 0.0  # Reference: clip = 0.0.
  c.optimizer.ema_decay = 0.9999
  c.train.batch_size = 256
  c.train.num_steps = 2_000_000
  c.train.eval_batch_size = 256
  c.train.eval_every = 20_000
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 20_000
  c.train.log_every = 500
  c.train.num_samples = 64
  c.train.sample_steps = 256
  if name == "cpu":
    c.network = config_recipes.unet(
        ch=64, num_res_blocks=4, dropout_rate=0.0, embed_dim=64, cond_width=64
    )
    c.train.batch_size = c.train.eval_batch_size = 8
    c.train.eval_max_batches = 4
    c.train.num_steps = 1000
    c.train.eval_every = c.train.checkpoint_every = 500
    c.train.sample_every = 500
    c.train.log_every = 50
    c.train.num_samples = 4
    c.train.sample_steps = 32
  return c
