"""Device mesh, logical axis names and the rules that map them onto the mesh.

Every parameter and large activation in `md4.networks` is annotated with the
logical axis names below (never with mesh axes). The rule table decides where
each logical axis lives on the physical mesh `(data, fsdp, tensor)`:

* `data`   - pure data parallelism: the batch is split, parameters replicated.
* `fsdp`   - the batch is split *and* the large axis of each weight is sharded.
* `tensor` - attention heads and MLP width are split (tensor parallelism).

One device is a 1x1x1 mesh; the same jitted code runs everywhere.
"""

from collections.abc import Sequence
import math

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import numpy as np

# Mesh axis names, outermost first.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Logical axis names used by the networks.
BATCH = "batch"  # examples
LENGTH = "length"  # sequence positions / flattened pixels
EMBED = "embed"  # model width (residual stream)
MLP = "mlp"  # MLP hidden width
HEADS = "heads"  # attention heads
HEAD_DIM = "head_dim"  # per-head width
VOCAB = "vocab"  # token values (embedding rows, output logits)
COND = "cond"  # conditioning vector width (time / label embedding)
COND_IN = "cond_in"  # input side of a cond -> cond projection
CONV_IN = "conv_in"  # convolution input channels
CONV_OUT = "conv_out"  # convolution output channels
HEIGHT = "height"
WIDTH = "width"
KERNEL = "kernel"  # convolution window rows
KERNEL_W = "kernel_w"  # convolution window columns
NORM = "norm"  # scale/bias of normalisation layers

# The default rule table: logical axis -> mesh axis (or a tuple of them, or
# None for replicated). A config can override it with `config.sharding.rules`.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, (DATA, FSDP)),
    (LENGTH, None),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (HEADS, TENSOR),
    (HEAD_DIM, None),
    (VOCAB, None),  # V and V+1 rarely divide evenly; see issue #7.
    (COND, None),
    (COND_IN, None),
    (CONV_IN, None),
    (CONV_OUT, FSDP),
    (HEIGHT, None),
    (WIDTH, None),
    (KERNEL, None),
    (KERNEL_W, None),
    (NORM, None),
)


def make_mesh(shape: Sequence[int], devices=None) -> jax.sharding.Mesh:
  """Builds a `(data, fsdp, tensor)` mesh.

  Args:
    shape: three sizes; at most one may be -1, meaning "all remaining
      devices".
    devices: defaults to `jax.devices()` (every device of every process).

  Returns:
    The mesh.

  Raises:
    ValueError: when the sizes do not multiply to the device count.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(
        f"config.sharding.mesh must have {len(MESH_AXES)} entries "
        f"{MESH_AXES}, got {tuple(shape)}.")
  if shape.count(-1) > 1:
    raise ValueError(
        f"config.sharding.mesh may contain at most one -1, got {tuple(shape)}.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if known <= 0 or len(devices) % known:
      raise ValueError(
          f"config.sharding.mesh={tuple(shape)} cannot be completed for "
          f"{len(devices)} devices: the fixed sizes must divide the count.")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
        f"config.sharding.mesh={tuple(shape)} uses {math.prod(shape)} devices "
        f"but {len(devices)} are available; use -1 for one axis to take the "
        "rest.")
  try:
    device_array = mesh_utils.create_device_mesh(
        shape, devices=devices)
  except Exception:  # pylint: disable=broad-except
    # Fake CPU devices and odd shapes have no topology to optimise for.
    device_array = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(device_array, MESH_AXES)


def rules_from_config(rules) -> tuple[tuple[str, object], ...]:
  """Returns the rule table: the config's if given, otherwise the default."""
  if not rules:
    return DEFAULT_RULES
  table = []
  for entry in rules:
    logical, mesh_axes = entry
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    table.append((logical, mesh_axes))
  return tuple(table)


def data_parallel_size(mesh: jax.sharding.Mesh, rules) -> int:
  """Number of ways the batch axis is split on this mesh."""
  mesh_axes = dict(rules).get(BATCH)
  if mesh_axes is None:
    return 1
  if isinstance(mesh_axes, str):
    mesh_axes = (mesh_axes,)
  return math.prod(mesh.shape[a] for a in mesh_axes)


def logical_sharding(mesh, rules, logical_axes) -> jax.sharding.NamedSharding:
  """NamedSharding for an array annotated with logical axis names."""
  spec = nn.logical_to_mesh_axes(logical_axes, rules)
  return jax.sharding.NamedSharding(mesh, spec)


def tree_shardings(mesh, rules, abstract_tree):
  """NamedShardings for every leaf of a tree of (possibly boxed) arrays.

  Leaves boxed in `nn.LogicallyPartitioned` get their logical sharding; every
  other leaf (step counters, optimizer scalars) is replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def bytes_per_device(abstract_tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding else (
        leaf.shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total
