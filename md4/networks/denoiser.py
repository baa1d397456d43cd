"""The fields every denoiser network shares: the contract `build_network`,
the processes and the samplers rely on.

A network subclasses `Denoiser` and is called as

    logits = net(z, t, label=None, *, train=...)

with z int tokens in [0, vocab_size] (vocab_size is the MASK token), t: [B]
diffusion time (ignored when `time_features` is "none"), label: [B] ints in
[0, num_classes] or None ("no label"), and float32 logits over the
vocab_size clean values at every position out.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Denoiser(nn.Module):
  """Base of every network (its own fields follow these).

  Attributes:
    vocab_size: V, values per position (per channel for images); V is MASK.
    num_classes: labels for class conditioning (0: none); id num_classes is
      "no label".
    time_features: "t" (condition on time) or "none".
    dropout_rate: dropout rate; each network says where it applies.
    dtype: compute dtype; parameters and logits are float32.
    remat: rematerialise each block in the backward pass.
  """

  vocab_size: int
  num_classes: int = 0
  time_features: str = "t"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
