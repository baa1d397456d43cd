"""MD4 on protein sequences (amino-acid tokens, length 512).

The vocabulary (26) is the 20 standard amino acids, the ambiguity codes X, B,
Z, U, O and a padding token, which also marks where a protein ends (see
md4/data/protein.py). Data: FASTA files (plain or .gz) in
`<data_dir>/protein/`; 5% of the proteins are held out. Variant `cpu` is
shrunk.
"""

from md4 import config_recipes
from md4 import configuration


def get_config(arg=None):
  size = config_recipes.variant(arg, ("small", "cpu"))
  c = configuration.default_config()
  c.data.dataset = "protein"
  c.data.data_shape = (512,)
  c.data.vocab_size = 26
  c.model.md4.schedule = "linear"
  c.network = config_recipes.transformer(size, dropout_rate=0.05)
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 2000
  c.optimizer.weight_decay = 0.03
  c.train.batch_size = 256
  c.train.num_steps = 500_000
  c.train.eval_batch_size = 256
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 10_000
  c.train.num_samples = 8
  c.train.sample_steps = 512
  if size == "cpu":
    c.data.data_shape = (128,)
    c.train.batch_size = c.train.eval_batch_size = 16
    c.train.eval_max_batches = 4
    c.train.num_steps = 1000
    c.optimizer.warmup_steps = 100
    c.train.eval_every = c.train.checkpoint_every = 500
    c.train.sample_every = 500
    c.train.sample_steps = 64
  return c
