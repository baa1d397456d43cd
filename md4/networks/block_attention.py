"""Attention masks and the key/value cache of block diffusion (BD3-LM).

Block diffusion (Arriola et al., 2025) trains on the concatenation
[x_t, x_0] of a noised sequence and its clean copy, 2L positions, with
blocks of `block_size` tokens. Query position q attends to key position k
when (b(.) is the block index within its half):

    both in x_t:   b(q) == b(k)   block diagonal: a noised block sees itself
    q in x_t, k in x_0: b(q) > b(k)   offset block-causal: the clean blocks
                                      before it
    both in x_0:   b(q) >= b(k)   block-causal: the clean stream, so that its
                                  keys and values are those a sampler caches
    q in x_0, k in x_t: never

so one forward pass gives, for every block, the denoiser's output given the
noised block and the clean blocks before it. At sampling time the clean
half is built block by block: its keys and values at every layer are a
cache (`cache_mask`), and each denoising step runs only the current block's
B tokens against it.

The cache holds, for every layer, keys and values [B, L, N, H] of the
positions generated so far; positions >= `start` are not yet valid and are
masked out.
"""

import jax
import jax.numpy as jnp
import numpy as np


def check_block_size(length: int, block_size: int, field: str) -> None:
  """Raises ValueError unless block_size is a positive divisor of length."""
  if (
      not isinstance(block_size, (int, np.integer))
      or block_size < 1
      or length % block_size
  ):
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    shown = ", ".join(map(str, divisors[:12])) + (
        ", ..." if len(divisors) > 12 else ""
    )
    raise ValueError(
        f"{field}={block_size!r} must divide the sequence length {length} "
        f"(config.data.data_shape); valid block sizes: {shown}."
    )


def training_mask(length: int, block_size: int) -> jax.Array:
  """bool [2L, 2L]: the mask over [x_t, x_0] described in the docstring."""
  check_block_size(length, block_size, "block_size")
  index = np.arange(2 * length)
  clean = index >= length
  block = (index % length) // block_size
  q_clean, k_clean = clean[:, None], clean[None, :]
  q_block, k_block = block[:, None], block[None, :]
  diagonal = (q_block == k_block) & (q_clean == k_clean)
  offset_causal = (q_block > k_block) & k_clean & ~q_clean
  causal = (q_block >= k_block) & k_clean & q_clean
  return jnp.asarray(diagonal | offset_causal | causal)


def cache_mask(
    cache_length: int, block_length: int, start: jax.Array
) -> jax.Array:
  """bool [b, P + b]: b queries at positions start.. see the cached keys
  before `start` and every key of their own block."""
  cached = jnp.arange(cache_length) < start  # [P]
  own = jnp.ones((block_length,), bool)
  keys = jnp.concatenate([cached, own])  # [P + b]
  return jnp.broadcast_to(
      keys[None], (block_length, cache_length + block_length)
  )


def empty_cache(
    num_layers: int,
    batch: int,
    length: int,
    num_heads: int,
    head_dim: int,
    dtype=jnp.float32,
) -> dict[str, jax.Array]:
  """Zero keys and values {"k", "v"}: [layers, B, L, N, H] each."""
  shape = (num_layers, batch, length, num_heads, head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def write(
    cache: dict[str, jax.Array], block_kv: dict[str, jax.Array], start
) -> dict[str, jax.Array]:
  """The cache with a block's keys and values [layers, B, b, N, H] written
  at positions start .. start + b."""
  return {
      name: jax.lax.dynamic_update_slice_in_dim(
          cache[name], block_kv[name].astype(cache[name].dtype), start, axis=2
      )
      for name in ("k", "v")
  }
