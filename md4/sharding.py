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
    # Replicated: jit needs even splits, and vocabularies rarely have them
    # (GPT-2: V = 50257 = 29 x 1733; text8: 27); sharding VOCAB on TENSOR
    # needs the logits layer padded to a multiple of the tensor size.
    (VOCAB, None),
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
        f"{MESH_AXES}, got {tuple(shape)}."
    )
  if shape.count(-1) > 1:
    raise ValueError(
        f"config.sharding.mesh may contain at most one -1, got {tuple(shape)}."
    )
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if known <= 0 or len(devices) % known:
      raise ValueError(
          f"config.sharding.mesh={tuple(shape)} cannot be completed for "
          f"{len(devices)} devices: the fixed sizes must divide the count."
      )
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
        f"config.sharding.mesh={tuple(shape)} uses {math.prod(shape)} devices "
        f"but {len(devices)} are available; use -1 for one axis to take the "
        "rest."
    )
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
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
    shape = (
        leaf.sharding.shard_shape(leaf.shape) if leaf.sharding else (leaf.shape)
    )
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def _mesh_axes_size(mesh_shape, axes) -> int:
  """Devices along `axes` (None, one mesh axis name or a tuple of them)."""
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh_shape[a] for a in axes)


def planned_shard_shape(shape, spec, mesh_shape) -> tuple[int, ...]:
  """Shape one device holds of an array with PartitionSpec `spec`.

  Needs no devices, so meshes larger than this machine can be planned.

  Args:
    shape: the global shape.
    spec: a `jax.sharding.PartitionSpec` (or None: replicated).
    mesh_shape: mesh axis name -> size, e.g. `{"data": 8, "fsdp": 4, ...}`.

  Returns:
    The per-device shape.

  Raises:
    ValueError: when a mesh axis does not divide the dimension it splits
      (jit rejects such a sharding too).
  """
  spec = tuple(spec or ())
  spec = spec + (None,) * (len(shape) - len(spec))
  sizes = [_mesh_axes_size(mesh_shape, axes) for axes in spec]
  for dim, axes, size in zip(shape, spec, sizes):
    if dim % size:
      raise ValueError(
          f"mesh {dict(mesh_shape)} splits a dimension of {dim} (array "
          f"shape {tuple(shape)}) {size} ways along {axes}; choose sizes "
          "that divide it or map its logical axis to None in "
          "config.sharding.rules."
      )
  return tuple(dim // size for dim, size in zip(shape, sizes))


def planned_bytes_per_device(boxed_tree, rules, mesh_shape) -> int:
  """Bytes one device would hold of a boxed abstract tree on a planned mesh.

  Args:
    boxed_tree: output of `jax.eval_shape` on a function returning
      `nn.LogicallyPartitioned` leaves (unboxed leaves count as replicated).
    rules: the logical-axis rule table.
    mesh_shape: mesh axis name -> size; need not match the local devices.

  Returns:
    Total bytes per device.
  """
  logical_specs = nn.get_partition_spec(boxed_tree)
  mesh_specs = jax.tree.map(
      lambda s: nn.logical_to_mesh_axes(s, rules),
      logical_specs,
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
  )
  leaves = jax.tree.leaves(nn.meta.unbox(boxed_tree))
  specs = jax.tree.leaves(
      mesh_specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  if len(leaves) != len(specs):
    raise ValueError(f"{len(leaves)} arrays but {len(specs)} partition specs.")
  return sum(
      math.prod(planned_shard_shape(leaf.shape, spec, mesh_shape))
      * np.dtype(leaf.dtype).itemsize
      for leaf, spec in zip(leaves, specs)
  )


MIB = 2**20


def memory_report(compiled_step, abstract_state) -> str:
  """One line: per-device MiB of the train state and of XLA's temporaries.

  Parameters, optimizer state and EMA come from the state's shardings;
  "activations and temporaries" is the compiled step's `temp_size_in_bytes`
  (the buffers XLA allocates besides inputs and outputs: activations kept
  for the backward pass, gradients, workspace). With donation the state's
  outputs alias its inputs, so a device's peak is about
  arguments + temporaries + the outputs that do not alias.

  Args:
    compiled_step: `jax.jit(step).lower(...).compile()`; jit reuses this
      executable, so producing it costs no second compilation.
    abstract_state: a `TrainState` of ShapeDtypeStructs with shardings
      (fields params, opt_state, ema_params).

  Returns:
    The report.
  """
  parts = [
      ("parameters", bytes_per_device(abstract_state.params)),
      ("optimizer state", bytes_per_device(abstract_state.opt_state)),
      ("EMA", bytes_per_device(abstract_state.ema_params)),
  ]
  stats = compiled_step.memory_analysis()
  if stats is None:
    parts_text = ", ".join(f"{n} {b / MIB:.1f} MiB" for n, b in parts)
    return (
        f"Per device: {parts_text}; activations and temporaries: not "
        "reported by this backend."
    )
  peak = (
      stats.argument_size_in_bytes
      + stats.temp_size_in_bytes
      + stats.output_size_in_bytes
      - stats.alias_size_in_bytes
  )
  parts += [
      ("activations and temporaries", stats.temp_size_in_bytes),
      ("step arguments (state + batch)", stats.argument_size_in_bytes),
      ("estimated peak", peak),
  ]
  return (
      "Per device: "
      + ", ".join(f"{n} {b / MIB:.1f} MiB" for n, b in parts)
      + "."
  )
