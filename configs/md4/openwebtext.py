"""MD4 on OpenWebText (GPT-2 tokens, length 1024), Shi et al. (2024).

Variants: `small` (default, 12 x 768), `medium` (24 x 1024), `cpu` (shrunk).
Prepare the data first: python prepare_openwebtext_data.py.
"""

from md4 import configuration


def get_config(arg=None):
  size = configuration.variant(arg, ("small", "medium", "cpu"))
  c = configuration.default_config()
  c.data.dataset = "openwebtext"
  c.data.data_shape = (1024,)
  c.data.vocab_size = 50257  # GPT-2 BPE.
  c.model.schedule = "linear"
  c.network = configuration.transformer(size, dropout_rate=0.02)
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 2000
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 0.03
  c.optimizer.ema_decay = 0.9999
  c.train.batch_size = 512
  c.train.num_steps = 1_000_000
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 10_000
  c.train.log_every = 500
  c.train.eval_batch_size = 512
  c.train.eval_max_batches = 0
  c.train.num_samples = 8
  c.train.sample_steps = 1000
  if size == "cpu":
    c.data.data_shape = (256,)
    c.network = configuration.transformer("cpu", dropout_rate=0.02)
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.eval_max_batches = 4
    c.train.num_steps = 1000
    c.optimizer.warmup_steps = 100
    c.train.eval_every = c.train.checkpoint_every = 500
    c.train.sample_every = 500
    c.train.sample_steps = 64
    c.train.num_samples = 2
    c.train.log_every = 50
  return c
