"""MD4 on binarized MNIST: pixels > 0.5 -> 1, padded to 32x32, tokens {0, 1}.

Three token values in the network (0, 1 and the mask) with a 32-wide token
embedding, as in the PyTorch setups researchers port from. Variants:
`default`, `cpu` (shrunk), `digits` (offline, minutes).
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  name = config_recipes.variant(arg, ("default", "cpu", "digits"))
  c = configuration.default_config()
  c.data.dataset = "binarized_mnist"
  c.data.data_shape = (32, 32, 1)
  c.data.vocab_size = 2
  c.data.pad_to = 32
  c.model.md4.schedule = "cosine"
  c.network = config_recipes.unet(
      ch=64,
      num_res_blocks=2,
      dropout_rate=0.1,
      ch_mult=(1, 2, 2),
      attn_resolutions=(16,),
      embed_dim=32,
  )
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.01
  c.optimizer.ema_decay = 0.999
  c.train.batch_size = 128
  c.train.num_steps = 50_000
  c.train.eval_batch_size = 500
  c.train.eval_every = 5000
  c.train.checkpoint_every = 5000
  c.train.sample_every = 5000
  c.train.num_samples = 64
  c.train.sample_steps = 200
  if name == "cpu":
    config_recipes.use_cpu_unet(c)
    c.train.sample_steps = 32
  if name == "digits":
    config_recipes.use_digits(c)
  return c
