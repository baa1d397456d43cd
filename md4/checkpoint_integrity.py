"""Checksums of a saved train state, verified when it is restored.

Orbax notices a truncated or garbled file, but not changed bytes that still
decode (a flipped bit on disk, a bad copy): those restore silently. So every
checkpoint step directory also holds `md4_digests.json`, one checksum per
array of the saved state, written after the save, and a restore compares
the restored arrays against it.

The checksum is computed on the devices, from the global (possibly sharded)
arrays, so it costs one small jitted reduction and no host copy, and it
does not depend on the mesh or the number of processes. Per array, with
`w_i` the array's elements as unsigned words (row-major index i):

    h1 = sum_i w_i * a_i            a_i = (i * 0x9E3779B1) | 1
    h2 = sum_i (w_i ^ (w_i >> 15)) * b_i   b_i = ((i ^ 0x85EBCA6B) * 0xC2B2AE35) | 1

both mod 2**32. The multipliers are odd, so any change of a single element
changes h1; other changes collide with probability about 2**-64. It is an
error-detecting code, not a defence against deliberate tampering.

The same pass tells which floating-point arrays hold NaN or Inf, so a
checkpoint is never written from a non-finite state.
"""

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DIGEST_FILE = "md4_digests.json"
ALGORITHM = "md4-checksum-v1"


class IntegrityError(ValueError):
  """A restored checkpoint's arrays differ from the digests saved with it."""


@dataclasses.dataclass(frozen=True)
class Summary:
  """What `summarize` returns.

  Attributes:
    digests: array name ("params/network/.../kernel") -> checksum (hex).
    nonfinite: names of floating-point arrays holding NaN or Inf.
  """

  digests: dict[str, str]
  nonfinite: tuple[str, ...]


def _key_name(key) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def leaf_names(tree) -> list[str]:
  """'a/b/c' for every leaf, the same for a dataclass and its saved dict."""
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return ["/".join(_key_name(k) for k in path) for path, _ in paths]


def _words(x: jax.Array) -> jax.Array:
  """The elements as uint32 words, same shape (8-byte: a trailing axis 2)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
  """uint32 [2]: (h1, h2) of the module docstring."""
  w = _words(x)
  # The row-major index, built per axis so that no reshape of a sharded
  # array is needed.
  index = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(w.ndim)):
    index += jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(
        stride % 2**32
    )
    stride *= w.shape[axis]
  a = (index * jnp.uint32(0x9E3779B1)) | jnp.uint32(1)
  b = (index ^ jnp.uint32(0x85EBCA6B)) * jnp.uint32(0xC2B2AE35) | jnp.uint32(1)
  h1 = jnp.sum(w * a, dtype=jnp.uint32)
  h2 = jnp.sum((w ^ (w >> jnp.uint32(15))) * b, dtype=jnp.uint32)
  return jnp.stack([h1, h2])


def _finite(x: jax.Array) -> jax.Array:
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.all(jnp.isfinite(x))
  return jnp.array(True)


def _replicated(tree):
  """A replicated sharding on the state's mesh, so every process can read."""
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return jax.sharding.NamedSharding(
          sharding.mesh, jax.sharding.PartitionSpec()
      )
  return None


def _summarize_leaves(leaves):
  return [_checksum(x) for x in leaves], [_finite(x) for x in leaves]


@functools.lru_cache(maxsize=None)
def _jitted(out_sharding):
  return jax.jit(_summarize_leaves, out_shardings=out_sharding)


def summarize(state: Any) -> Summary:
  """Checksums and non-finite arrays of a state (collective: every process).

  Args:
    state: a pytree of (possibly sharded) arrays.

  Returns:
    The `Summary`.
  """
  names = leaf_names(state)
  leaves = jax.tree.leaves(state)
  sums, finite = _jitted(_replicated(leaves))(leaves)
  sums, finite = jax.device_get((sums, finite))
  digests = {
      name: "%08x%08x" % tuple(int(v) for v in np.asarray(s))
      for name, s in zip(names, sums)
  }
  nonfinite = tuple(n for n, ok in zip(names, finite) if not bool(ok))
  return Summary(digests, nonfinite)


def write(step_dir: str, summary: Summary) -> str:
  """Writes the digests into a saved step's directory; returns the path."""
  path = os.path.join(step_dir, DIGEST_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(
        {"algorithm": ALGORITHM, "arrays": summary.digests},
        f,
        indent=1,
        sort_keys=True,
    )
  os.replace(path + ".tmp", path)
  return path


def read(step_dir: str) -> dict[str, str] | None:
  """The saved digests of a step, or None when it has none (older runs).

  Raises:
    IntegrityError: if the digest file exists but cannot be read.
  """
  path = os.path.join(step_dir, DIGEST_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
    if saved.get("algorithm") != ALGORITHM:
      return None  # Written by a later md4: not ours to judge.
    return dict(saved["arrays"])
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise IntegrityError(f"{path} cannot be read ({e})") from e


def verify(step_dir: str, state: Any, partial: bool = False) -> bool:
  """Checks a restored state against its step's digests.

  With `partial`, `state` holds some of the saved fields (a dict of them);
  the digests of the arrays it holds are checked, and the rest not missed.

  Returns:
    True when verified, False when the step has no digests to check.

  Raises:
    IntegrityError: naming the arrays whose checksums differ.
  """
  # Computed first, on every process, whatever the file says: the pass is
  # collective, so no process may skip it.
  current = summarize(state).digests
  saved = read(step_dir)
  if saved is None:
    return False
  differ = sorted(n for n in current if n in saved and saved[n] != current[n])
  missing = [] if partial else sorted(set(saved) - set(current))
  if differ or missing:
    listed = ", ".join((differ + missing)[:3])
    more = len(differ) + len(missing) - 3
    raise IntegrityError(
        f"{step_dir} fails its integrity check: {listed}"
        f"{f' and {more} more' if more > 0 else ''} "
        f"{'differ from' if differ else 'are missing against'} the "
        f"checksums in {DIGEST_FILE} written when it was saved (the files "
        "were changed on disk)"
    )
  return True
