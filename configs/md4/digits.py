"""MD4 on scikit-learn's handwritten digits: the offline default job.

1,797 real 8x8 images with 17 grey levels ship inside scikit-learn, so this
trains anywhere with no download. On 2 CPU cores the default finishes in a
few minutes and its samples look like digits. Variant `tiny` is for tests.
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  size = config_recipes.variant(arg, ("default", "tiny"))
  c = configuration.default_config()
  config_recipes.use_digits(c)
  c.model.md4.schedule = "linear"
  c.train.sample_steps = 64
  if size == "tiny":
    c.network = config_recipes.unet(
        ch=16,
        num_res_blocks=1,
        dropout_rate=0.0,
        attn_resolutions=(),
        embed_dim=8,
    )
    c.train.batch_size = 16
    c.train.eval_batch_size = 100
    c.train.eval_max_batches = 1
    c.train.num_steps = 6
    c.optimizer.warmup_steps = 2
    c.train.log_every = 2
    c.train.eval_every = c.train.checkpoint_every = 3
    c.train.sample_every = 3
    c.train.num_samples = 4
    c.train.sample_steps = 4
  return c
