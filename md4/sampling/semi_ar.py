"""Semi-autoregressive sampling: blocks (LLaDA) and strided windows (MDLM).

Any sampler that keeps given tokens (`Sampler.known_tokens`) of an unmasking
process draws one sequence of the model's length L in one call. Here such a
sampler is called several times, each call with more tokens given:

* Blocks (`--blocks=K` or `--block_length=B`, B = L / K; Nie et al., 2025,
  LLaDA's semi-autoregressive schedule): the L positions are cut into K
  blocks of B, generated left to right. Block k is one sampler call whose
  known tokens are the given ones (the prompt), every token of blocks < k
  (already generated), and every other position of blocks > k held masked:
  known, with value mask_id, so the denoiser sees a mask there and the
  sampler leaves it masked. Each block gets `num_steps // K` steps (at least
  1); the remainder of `--steps` is not used (`block_settings`). A block
  with nothing to generate (all of it given) is skipped: no network call.
* Windows (`--length=N` with N > L, `--stride=S`, default L // 2; Sahoo et
  al., 2024, MDLM's semi-autoregressive generation): the first window is
  positions [0, L) of the text, a plain (or blockwise) sample. Window w > 0
  covers [w S, w S + L): its first L - S tokens are the previous window's
  last L - S, given, and its last S are generated (again block by block
  with --blocks). Windows are added until N tokens exist; positions at or
  beyond N are held masked, so the last window generates only the tokens
  still needed (any N is reachable) and --length < L truncates the one
  window to its first N tokens.

Given tokens are laid out on the whole text of N positions (a prompt may be
longer than L: each window takes the given tokens that fall in it, and they
stay visible in every window and block). `--min_length=M` forbids the
end-of-text token at the text's positions < M: its logit is set to -inf in
the denoiser (`forbid_end_before`), so no sampler and no final fill draws
it there; positions are those of the text, so a window's offset w S shifts
them.

The loop over windows and blocks is one `jax.lax.fori_loop` inside the
caller's jit: the sampler is compiled once. Call i = w K + k uses the key
`rng` for i = 0 and `fold_in(rng, i)` after, so one window of one block is
the plain sampler's draw with the same key. Network calls are summed over
the calls.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from md4.sampling import core


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one text of `length` tokens is drawn in windows and blocks.

  Attributes:
    seq_len: L, the model's sequence length (config.data.data_shape[0]).
    num_blocks: K, blocks per window (1 = the whole window in one call).
    length: N, tokens of the final text.
    stride: S, new positions per window after the first.
    min_length: M, positions < M never hold the end-of-text token (0 =
      no rule).
    end_id: the end-of-text id that `min_length` forbids, or None.
  """

  seq_len: int
  num_blocks: int = 1
  length: int | None = None
  stride: int | None = None
  min_length: int = 0
  end_id: int | None = None

  @property
  def text_length(self) -> int:
    """N: the length of the final text."""
    return self.seq_len if self.length is None else self.length

  @property
  def step(self) -> int:
    """S, the stride (L when there is a single window)."""
    return self.stride or self.seq_len

  @property
  def block_length(self) -> int:
    return self.seq_len // self.num_blocks

  @property
  def num_windows(self) -> int:
    """1 + ceil((N - L) / S) windows (1 when N <= L)."""
    extra = max(self.text_length - self.seq_len, 0)
    return 1 + math.ceil(extra / self.step)

  @property
  def buffer_length(self) -> int:
    """Positions the windows cover, L + (windows - 1) S >= N."""
    return self.seq_len + (self.num_windows - 1) * self.step


def plan_for(
    seq_len: int,
    *,
    blocks: int | None = None,
    block_length: int | None = None,
    length: int | None = None,
    stride: int | None = None,
    min_length: int = 0,
) -> Plan:
  """The `Plan` of md4.sample's flags, or a ValueError naming the flag.

  Args:
    seq_len: L.
    blocks: --blocks, K dividing L; or None.
    block_length: --block_length, B dividing L; or None (at most one of the
      two).
    length: --length, N >= 1 (N < L truncates); None = L.
    stride: --stride, S in (0, L]; only with N > L. None = L // 2.
    min_length: --min_length, M in [0, N].

  Returns:
    The plan (end_id unset: `dataclasses.replace` it once the data set's
    end-of-text id is known).
  """
  if blocks is not None and block_length is not None:
    raise ValueError(
        f"--blocks={blocks} and --block_length={block_length} say the same"
        " thing twice; give at most one of them."
    )
  num_blocks = 1
  if blocks is not None:
    if blocks < 1 or seq_len % blocks:
      raise ValueError(
          f"--blocks={blocks} must be a positive divisor of the sequence"
          f" length {seq_len} (config.data.data_shape); give one of"
          f" {_divisors(seq_len)}."
      )
    num_blocks = blocks
  if block_length is not None:
    if block_length < 1 or seq_len % block_length:
      raise ValueError(
          f"--block_length={block_length} must be a positive divisor of the"
          f" sequence length {seq_len} (config.data.data_shape); give one"
          f" of {_divisors(seq_len)}."
      )
    num_blocks = seq_len // block_length
  if length is not None and length < 1:
    raise ValueError(
        f"--length={length} must be a positive number of tokens; drop it for"
        f" the model's {seq_len}."
    )
  text_length = seq_len if length is None else length
  if stride is not None:
    if text_length <= seq_len:
      raise ValueError(
          f"--stride={stride} applies only with --length greater than the"
          f" sequence length {seq_len} (one window otherwise); give"
          " --length or drop --stride."
      )
    if not 0 < stride <= seq_len:
      raise ValueError(
          f"--stride={stride} cannot reach --length={length}: each window"
          f" must add between 1 and {seq_len} new tokens (the sequence"
          f" length); give --stride in [1, {seq_len}], e.g. {seq_len // 2}."
      )
  elif text_length > seq_len:
    stride = max(seq_len // 2, 1)
  if not 0 <= min_length <= text_length:
    raise ValueError(
        f"--min_length={min_length} must be in [0, {text_length}] (the"
        " text's length, --length or config.data.data_shape); lower it."
    )
  return Plan(seq_len, num_blocks, length, stride, min_length)


def _divisors(n: int) -> str:
  return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def block_settings(settings: core.BaseSettings, num_blocks: int):
  """The settings of one block's call: num_steps // K steps, at least 1."""
  if num_blocks == 1 or not hasattr(settings, "num_steps"):
    return settings
  steps = max(settings.num_steps // num_blocks, 1)
  return dataclasses.replace(settings, num_steps=steps)


# ---------------------------------------------------------- the masks ----


def block_known(
    base: core.Known, block: jax.Array, block_length: int
) -> core.Known:
  """The known tokens of block `block`'s call within one window.

  Args:
    base: the window's given tokens, mask/tokens [B, L]; `tokens` holds the
      window's current state (blocks before `block` generated, mask_id at
      every position not generated yet).
    block: k, an int (or traced int32 scalar) in [0, K).
    block_length: B.

  Returns:
    Known [B, L]: given positions, positions before block k (their values)
    and positions after it (mask_id, held masked) are known; block k's
    positions that are not given are the sampler's to generate.
  """
  position = jnp.arange(base.mask.shape[-1])  # [L]
  inside = (position >= block * block_length) & (
      position < (block + 1) * block_length
  )  # [L]
  return core.Known(base.mask | ~inside, base.tokens)


def text_known(
    known: core.Known | None, num_samples: int, plan: Plan, mask_id: int
) -> core.Known:
  """The given tokens of the whole text, [B, buffer_length].

  `known` [B, N'] (N' <= buffer_length) is laid from position 0; positions
  at or beyond N are known with value mask_id (held masked, never drawn).
  """
  size = plan.buffer_length
  mask = np.zeros((num_samples, size), bool)
  tokens = np.full((num_samples, size), mask_id, np.int32)
  if known is not None:
    given = np.asarray(known.mask)[:, :size]
    width = given.shape[1]
    mask[:, :width] = given
    tokens[:, :width] = np.where(
        given, np.asarray(known.tokens)[:, :size], mask_id
    )
  mask[:, plan.text_length :] = True
  tokens[:, plan.text_length :] = mask_id
  return core.Known(jnp.asarray(mask), jnp.asarray(tokens))


def forbid_end_before(
    reverse: core.Reverse, end_id: int, min_length: int, offset
) -> core.Reverse:
  """`reverse` whose denoiser gives end_id logit -inf at positions < M.

  Args:
    reverse: a Reverse over sequences [B, L].
    end_id: the end-of-text id.
    min_length: M, in text positions.
    offset: the text position of the window's first token (int or traced).

  Returns:
    The same Reverse with `denoise` wrapped.
  """
  inner = reverse.denoise

  def denoise(z, t):
    logits = inner(z, t)  # [B, L, V]
    early = offset + jnp.arange(z.shape[1]) < min_length  # [L]
    end = jnp.where(early, -jnp.inf, logits[..., end_id])  # [B, L]
    return logits.at[..., end_id].set(end.astype(logits.dtype))

  return dataclasses.replace(reverse, denoise=denoise)


# ------------------------------------------------------------ the loop ---


def generate(
    draw,
    reverse: core.Reverse,
    rng: jax.Array,
    num_samples: int,
    settings: core.BaseSettings,
    plan: Plan,
    known: core.Known,
) -> core.Result:
  """Draws texts window by window and block by block (see the module doc).

  Args:
    draw: the sampler, `(reverse, rng, num_samples, settings, known) ->
      core.Result`, over sequences [B, L].
    reverse: the model over sequences [B, L].
    rng: PRNG key.
    num_samples: B.
    settings: the sampler's settings (its num_steps spread over the blocks,
      `block_settings`).
    plan: the windows and blocks.
    known: the text's given tokens, [B, buffer_length] (`text_known`).

  Returns:
    The `Result`: samples int32 [B, N], network calls summed over the
    calls made, no history.
  """
  seq_len, num_blocks, stride = plan.seq_len, plan.num_blocks, plan.step
  mask_id = reverse.mask_id
  per_block = block_settings(settings, num_blocks)
  text = core.initial_tokens(known, mask_id)  # [B, buffer_length]
  position = jnp.arange(seq_len)  # [L]

  def call(i, carry):
    text, calls = carry
    window, block = i // num_blocks, i % num_blocks
    start = window * stride
    z = jax.lax.dynamic_slice_in_dim(text, start, seq_len, axis=1)  # [B, L]
    given = jax.lax.dynamic_slice_in_dim(known.mask, start, seq_len, axis=1)
    overlap = (window > 0) & (position < seq_len - stride)  # [L]
    base = core.Known(given | overlap, z)
    block_given = block_known(base, block, plan.block_length)
    key = jax.lax.cond(i == 0, lambda: rng, lambda: jax.random.fold_in(rng, i))
    model = reverse
    if plan.min_length and plan.end_id is not None:
      model = forbid_end_before(reverse, plan.end_id, plan.min_length, start)

    def sample(z):
      result = draw(model, key, num_samples, per_block, block_given)
      return result.samples.astype(jnp.int32), result.network_calls

    z, made = jax.lax.cond(
        jnp.any(~block_given.mask),
        sample,
        lambda z: (z, jnp.int32(0)),
        z,
    )
    text = jax.lax.dynamic_update_slice_in_dim(text, z, start, axis=1)
    return text, calls + made.astype(jnp.int32)

  text, calls = jax.lax.fori_loop(
      0, plan.num_windows * num_blocks, call, (text, jnp.int32(0))
  )
  return core.Result(text[:, : plan.text_length], calls)


# --------------------------------------------------- end of text ---------


def end_lengths(
    samples: np.ndarray, end_id: int, given: np.ndarray | None = None
) -> np.ndarray:
  """Tokens before each sample's first end-of-text, int [B] (N if none).

  Args:
    samples: int [B, N].
    end_id: the end-of-text id.
    given: bool [B', N] known positions (B' <= B rows reused cyclically, as
      `md4.sampling.drawing` reuses them), or None; an end-of-text the
      prompt itself holds does not end the sample.
  """
  samples = np.asarray(samples)
  ends = samples == end_id  # [B, N]
  if given is not None:
    given = np.asarray(given)
    rows = np.arange(len(samples)) % given.shape[0]
    ends &= ~given[rows, : samples.shape[1]]
  first = np.argmax(ends, axis=1)
  return np.where(ends.any(axis=1), first, samples.shape[1])


def length_summary(lengths: np.ndarray, full_length: int) -> dict:
  """Min, median, mean, max of the cut lengths, and how many had no end."""
  lengths = np.asarray(lengths)
  return {
      "min": int(lengths.min()),
      "median": float(np.median(lengths)),
      "mean": float(lengths.mean()),
      "max": int(lengths.max()),
      "no_end_of_text": int((lengths == full_length).sum()),
  }
