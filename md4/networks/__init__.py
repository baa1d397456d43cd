"""Denoiser networks: tokens (+ time, + label) -> logits over clean tokens.

Every network is a Linen module called as

    logits = net(z, t, label=None, *, train=...)

with z: [B, L] (text) or [B, H, W, C] (images) int tokens in [0, vocab_size]
(vocab_size is the MASK token), t: [B] diffusion time, label: [B] or None, and
float32 logits [..., vocab_size] out; each subclasses `denoiser.Denoiser`,
which declares the fields they share. `build_network` constructs one by name
from a config's `network` fields.
"""

from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from md4 import fields as md4_fields
from md4.networks.transformer import Transformer
from md4.networks.unet import UNet
from md4.networks.uvit import UViT

NETWORKS: dict[str, type[nn.Module]] = {
    "transformer": Transformer,
    "unet": UNet,
    "uvit": UViT,
}

# What data_shape (one example, no batch axis) each network takes.
_DATA_SHAPES = {
    "transformer": ("(length,)", 1),
    "unet": ("(height, width, channels)", 3),
    "uvit": ("(height, width, channels)", 3),
}

COMPUTE_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}

# Fields that build_network sets from its own arguments.
_SET_BY_BUILDER = ("vocab_size", "num_classes", "dtype")


def compute_dtype(dtype: Any) -> Any:
  """Converts "float32"/"bfloat16"/"float16" (or a dtype) to a jnp dtype."""
  name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  if name not in COMPUTE_DTYPES:
    raise ValueError(
        f"dtype must be one of {tuple(COMPUTE_DTYPES)}, got {dtype!r}."
    )
  return COMPUTE_DTYPES[name]


def network_fields(name: str) -> tuple[str, ...]:
  """The fields of network `name` that a config may set as keyword args."""
  return tuple(
      f.name
      for f in dataclasses.fields(NETWORKS[name])
      if f.name not in ("parent", "name") + _SET_BY_BUILDER
  )


def build_network(
    name: str,
    *,
    vocab_size: int,
    data_shape: Sequence[int],
    num_classes: int = 0,
    dtype: Any = "float32",
    **kwargs,
) -> nn.Module:
  """Constructs the denoiser `name` after checking its arguments.

  Args:
    name: one of NETWORKS.
    vocab_size: number of real token values (MASK = vocab_size).
    data_shape: shape of one example: (L,) for "transformer", (H, W, C) for
      "unet" and "uvit".
    num_classes: number of labels for class conditioning (0: none).
    dtype: compute dtype, a name in COMPUTE_DTYPES or a dtype.
    **kwargs: other fields of the network (e.g. num_layers=12).

  Returns:
    The unbound module.

  Raises:
    ValueError: on an unknown name, a data_shape of the wrong rank, or a
      keyword that is not a field of the network.
  """
  if name not in NETWORKS:
    raise ValueError(
        f"network name {name!r} is unknown; valid names: {sorted(NETWORKS)}."
    )
  data_shape = tuple(data_shape)
  shape_doc, rank = _DATA_SHAPES[name]
  if len(data_shape) != rank or any(d <= 0 for d in data_shape):
    raise ValueError(
        f"data_shape={data_shape} does not fit network {name!r}, which needs "
        f"data_shape={shape_doc} ({rank} positive sizes)."
    )
  fields = network_fields(name)
  for key in kwargs:
    if key not in fields:
      hint = md4_fields.did_you_mean(key, fields)
      raise ValueError(
          f"{key!r} is not a field of network {name!r}.{hint} Valid fields: "
          f"{', '.join(fields)}."
      )
  for key in ("ch_mult", "attn_resolutions"):
    if key in kwargs:  # configs give lists; module fields must be hashable
      kwargs[key] = tuple(kwargs[key])
  if name == "transformer" and not kwargs.get("use_rope", True):
    kwargs.setdefault("max_length", data_shape[0])
  return NETWORKS[name](
      vocab_size=vocab_size,
      num_classes=num_classes,
      dtype=compute_dtype(dtype),
      **kwargs,
  )


def count_params(params: Any) -> int:
  """Number of scalars in a (possibly boxed or abstract) parameter tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params)))
