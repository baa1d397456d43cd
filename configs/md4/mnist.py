"""MD4 on MNIST (28x28x1, 256 grey levels). Variant `cpu` is shrunk."""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  name = config_recipes.variant(arg, ("default", "cpu"))
  c = configuration.default_config()
  c.data.dataset = "mnist"
  c.data.data_shape = (28, 28, 1)
  c.data.vocab_size = 256
  c.model.md4.schedule = "linear"
  c.network = config_recipes.unet(
      ch=64,
      num_res_blocks=2,
      dropout_rate=0.1,
      ch_mult=(1, 2),
      attn_resolutions=(14,),
  )
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.01
  c.optimizer.ema_decay = 0.999
  c.train.batch_size = 128
  c.train.num_steps = 100_000
  c.train.eval_batch_size = 500
  c.train.eval_every = 5000
  c.train.checkpoint_every = 5000
  c.train.sample_every = 5000
  c.train.num_samples = 64
  c.train.sample_steps = 256
  if name == "cpu":
    config_recipes.use_cpu_unet(c)
    c.train.sample_steps = 32
  return c
