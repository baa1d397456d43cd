"""MD4 on text8 (27 characters, length 256), Shi et al. (2024).

Variants: `small` (default, 12 x 768), `cpu` (4 x 256, laptop-sized),
`tiny` (2 x 64, tests and smoke runs).
"""

from md4 import configuration


def get_config(arg=None):
  size = configuration.variant(arg, ("small", "cpu", "tiny"))
  c = configuration.default_config()
  c.data.dataset = "text8"
  c.data.data_shape = (256,)
  c.data.vocab_size = 27  # a-z and space.
  c.model.schedule = "linear"
  c.network = configuration.transformer(size, dropout_rate=0.05)
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 2000
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.03
  c.optimizer.ema_decay = 0.9999
  c.train.batch_size = 512
  c.train.num_steps = 1_000_000
  c.train.eval_batch_size = 512
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 10_000
  c.train.log_every = 500
  c.train.num_samples = 8
  c.train.sample_steps = 256
  if size in ("cpu", "tiny"):
    c.train.batch_size = 32 if size == "cpu" else 8
    c.train.eval_batch_size = c.train.batch_size
    c.train.eval_max_batches = 4
    c.train.num_steps = 2000 if size == "cpu" else 20
    c.optimizer.warmup_steps = 100 if size == "cpu" else 5
    c.optimizer.ema_decay = 0.999
    c.train.log_every = 50 if size == "cpu" else 5
    c.train.eval_every = c.train.checkpoint_every = c.train.num_steps // 2
    c.train.sample_every = c.train.num_steps // 2
    c.train.sample_steps = 32 if size == "cpu" else 8
    c.train.num_samples = 2
  if size == "tiny":
    c.data.data_shape = (32,)
  return c
