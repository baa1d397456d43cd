"""MD4 on ImageNet 64x64 with a U-ViT, Shi et al. (2024).

Variants: `default` (unconditional, TFDS `downsampled_imagenet/64x64`),
`cond` (class-conditional on ImageNet 2012's 1000 labels: TFDS
`imagenet2012` centre-cropped and area-resized to 64x64, with label dropout
for classifier-free guidance), `cpu` (shrunk, unconditional).

`default` builds the reference implementation's U-ViT
(google-deepmind/md4 `configs/md4/imagenet64.py`): each channel's value
embedded 256 wide, 8 ResBlocks of 256 channels at 64x64 whose GroupNorms the
256-wide conditioning vector modulates, a DiT of 20 blocks (width 768, 12
heads, plain GELU MLP) over 2x2 patches, 9 ResBlocks up: 204,595,712
parameters.

Every value of `default` follows the reference config: linear schedule,
continuous time, dropout 0.1, learning rate 2e-4 with 100 warm-up steps and
cosine decay, b2 0.99, weight decay 0.01, EMA 0.9999, batch 512, 2M steps,
no gradient clipping. (The reference notes that its best likelihood used 24
ResBlocks and 12 DiT blocks: `--config.network.num_res_blocks=24
--config.network.num_transformer_layers=12`.) `cond` adds the 1000-class
label embedding (1001 rows with the null label) and label dropout 0.1 for
classifier-free guidance; the reference's conditional run also switched to
the cosine schedule, which `cond` follows.

Deviations, with their reasons: the EMA warms up (optimizer.ema_warmup, see
configs/md4/text8.py); weight decay skips 1-D parameters; no dropout on the
DiT's attention probabilities or inside its MLP (the residual-branch dropout
is kept).
"""

import ml_collections

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  name = config_recipes.variant(arg, ("default", "cond", "cpu"))
  c = configuration.default_config()
  # The downsampled TFDS set has no labels; the labelled one is made from
  # imagenet2012 (see md4/data/tfds_images.py).
  c.data.dataset = "class_cond_imagenet64" if name == "cond" else "imagenet64"
  c.data.data_shape = (64, 64, 3)
  c.data.vocab_size = 256
  c.model.md4.schedule = "cosine" if name == "cond" else "linear"
  c.model.class_conditional = name == "cond"
  c.model.cond_drop_prob = 0.1
  c.network = ml_collections.ConfigDict(
      dict(
          name="uvit",
          dtype="float32",
          embed_dim=256,  # Per-channel token embedding width.
          ch=256,  # U-Net base channels.
          ch_mult=(
              1,
          ),  # One level: the DiT reads the 64x64 map in 2x2 patches.
          num_res_blocks=8,  # U-Net residual blocks (see md4/networks/uvit.py).
          num_transformer_layers=20,  # DiT blocks.
          transformer_width=768,
          num_heads=12,
          mlp_type="gelu",  # DiT's plain MLP with biases.
          patch_size=2,
          cond_width=256,  # Time/label conditioning vector width.
          dropout_rate=0.1,
          time_features="t",
          remat=False,
      )
  )
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 0.0  # Reference: clip = 0.0.
  c.train.batch_size = 512
  c.train.num_steps = 2_000_000
  c.train.eval_batch_size = 512
  c.train.eval_every = 20_000
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 20_000
  c.train.log_every = 500
  c.train.num_samples = 16
  c.train.sample_steps = 256
  if name == "cpu":
    c.network.ch, c.network.num_res_blocks = 32, 1
    c.network.embed_dim = c.network.cond_width = 32
    c.network.num_transformer_layers, c.network.transformer_width = 2, 64
    c.network.num_heads = 4
    c.train.batch_size = c.train.eval_batch_size = 4
    c.train.eval_max_batches = 2
    c.train.num_steps = 200
    c.train.eval_every = c.train.checkpoint_every = 100
    c.train.sample_every = 100
    c.train.log_every = 10
    c.train.num_samples = 4
    c.train.sample_steps = 16
  return c
