"""Block diffusion sampling: block by block, with a KV cache (BD3-LM).

Blocks of b tokens are generated left to right. Block k starts fully
masked (known tokens, e.g. a prompt, kept) and is denoised with MD4's
ancestral step on the time grid (`--steps` steps per block, then the fill
call at t = 0), the denoiser seeing the block and the clean blocks before
it. With `kv_cache` (the default) the clean blocks' keys and values of
every layer are kept: each denoising step runs the network on the b tokens
of the block only, and a finished block is run once more, clean, to append
its keys and values (`md4.networks.block_attention`). Without it every step
runs the training pass over [x_t, x_0] (2L positions) and reads the
block's outputs: the same numbers, computed in a different order, hence the
same samples up to float rounding (tested sample for sample).

`stop_token` >= 0 stops once every sample of the batch holds that token in
a generated position (variable-length generation: `md4.sample
--stop_at_eos`); blocks never generated stay masked, after the stop.

Network calls per batch: (T + 1) per block, plus one per block for the
cache. A block whose every token is given (a prompt's, or a window's
overlap in `--length` generation) takes no denoising steps: only its cache
call.
"""

import dataclasses

import jax
import jax.numpy as jnp

from md4.diffusion import common
from md4.networks import block_attention
from md4.sampling import core


def _stop_token(value) -> str | None:
  if not isinstance(value, int) or value < -1:
    return "must be a token id >= 0, or -1 (never stop early)"
  return None


@dataclasses.dataclass(frozen=True)
class BlockSettings(core.Settings):
  """Block sampling settings: `num_steps` is the steps of each block.

  Attributes:
    kv_cache: keep the finished blocks' keys and values.
    stop_token: stop once every sample holds this token (-1: never).
  """

  kv_cache: bool = core.setting(
      True,
      "Keep the finished blocks' keys and values (False: recompute the "
      "whole [x_t, x_0] pass at every step).",
  )
  stop_token: int = core.setting(
      -1,
      "Stop generating blocks once every sample holds this token (-1: "
      "never; --stop_at_eos sets the end-of-text id).",
      _stop_token,
  )

  def validate(self) -> None:
    super().validate()
    if self.num_frames:
      raise ValueError(
          "--history is not available with --sampler=block (blocks are "
          "generated one after another, not on one time grid); drop "
          "--history."
      )
    if self.start_time != 1.0:
      raise ValueError(
          "--reconstruct_t does not apply to --sampler=block; drop it."
      )


def sample_block(
    reverse: core.Reverse,
    rng: jax.Array,
    num_samples: int,
    settings: BlockSettings,
    known: core.Known | None = None,
) -> core.Result:
  """Samples [B, L] of a block diffusion model (module docstring)."""
  if reverse.network is None:
    raise ValueError(
        "--sampler=block needs a trained block diffusion model's network "
        "(and no --guidance)."
    )
  process = reverse.process
  length = process.data_shape[0]
  size = process.block_size
  num_blocks = length // size
  mask_id = reverse.mask_id
  num_steps = settings.num_steps
  known = known if known is not None else core.no_known(num_samples, (length,))
  times = jnp.asarray(core.sampler_times(settings))  # [T + 1]
  alpha = process.masking.alpha
  ones = jnp.ones((num_samples,), jnp.float32)
  z = core.initial_tokens(known, mask_id)  # [B, L]

  cache = {}
  if settings.kv_cache:
    shapes = jax.eval_shape(
        lambda: reverse.network(z[:, :size], ones, cache={}, start=0)[1]
    )  # [layers, B, b, N, H] each
    layers, batch, _, heads, head_dim = shapes["k"].shape
    cache = block_attention.empty_cache(
        layers, batch, length, heads, head_dim, shapes["k"].dtype
    )

  def block_log_mu(z, block, start, cache, t):
    if settings.kv_cache:
      logits, _ = reverse.network(block, t, cache=cache, start=start)
    else:
      current = jax.lax.dynamic_update_slice_in_dim(z, block, start, axis=1)
      full = reverse.network(current, t, clean=current, block_size=size)
      logits = jax.lax.dynamic_slice_in_dim(full, start, size, axis=1)
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1)  # [B, b, V]

  def one_block(carry):
    index, z, cache, calls = carry
    start = index * size
    block_rng = jax.random.fold_in(rng, index)
    block_known = core.Known(
        jax.lax.dynamic_slice_in_dim(known.mask, start, size, axis=1),
        jax.lax.dynamic_slice_in_dim(known.tokens, start, size, axis=1),
    )
    block = jax.lax.dynamic_slice_in_dim(z, start, size, axis=1)  # [B, b]

    def step(i, block):
      t, s = times[i] * ones, times[i + 1] * ones
      log_mu = block_log_mu(z, block, start, cache, t)
      unmask = common.reveal_probability(alpha(s), alpha(t))[:, None, None]
      block = core.ancestral_reveal(
          jax.random.fold_in(block_rng, i), block, log_mu, unmask, mask_id
      )
      return core.keep_known(block, block_known)

    def denoise_block(block):
      block = jax.lax.fori_loop(0, num_steps, step, block)
      log_mu = block_log_mu(z, block, start, cache, 0.0 * ones)
      return core.keep_known(
          core.fill(
              jax.random.fold_in(block_rng, num_steps), block, log_mu, mask_id
          ),
          block_known,
      )

    given = jnp.all(block_known.mask)  # e.g. a prompt's blocks: no steps
    block = jax.lax.cond(given, lambda b: b, denoise_block, block)
    z = jax.lax.dynamic_update_slice_in_dim(z, block, start, axis=1)
    calls = calls + jnp.where(given, 0, num_steps + 1)
    if settings.kv_cache:
      _, block_kv = reverse.network(block, 0.0 * ones, cache=cache, start=start)
      cache = block_attention.write(cache, block_kv, start)
      calls = calls + 1
    return index + 1, z, cache, calls

  def going(carry):
    index, z, _, _ = carry
    more = index < num_blocks
    if settings.stop_token >= 0:
      generated = (jnp.arange(length) < index * size)[None] & ~known.mask
      stopped = jnp.any(generated & (z == settings.stop_token), axis=1)
      more = more & ~jnp.all(stopped)
    return more

  _, z, _, calls = jax.lax.while_loop(
      going, one_block, (jnp.int32(0), z, cache, jnp.int32(0))
  )
  return core.Result(z, calls)
