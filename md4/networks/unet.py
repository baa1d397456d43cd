"""Convolutional U-Net denoiser for images (DDPM / VDM style).

    z [B, H, W, C] -> PixelEmbedding: each channel's token embedded
                      (vocab_size + 1 rows, the last is MASK), concatenated
                      -> [B, H, W, C * embed_dim]
      -> UNetEncoder: conv in, per level `num_res_blocks` ResBlocks (+ self-
         attention at `attn_resolutions`), a strided-conv downsample between
         levels; every output is kept as a skip connection
      -> middle: ResBlock, AttentionBlock, ResBlock
      -> UNetDecoder: per level `num_res_blocks + 1` ResBlocks, each reading one
         skip (concatenated on channels), nearest upsample + conv between
         levels
      -> PixelLogits: GroupNorm, SiLU, conv to C * vocab_size
         -> logits [B, H, W, C, vocab_size]

With the defaults (`ch=128`, `ch_mult=(1,)`, `num_res_blocks=32`,
`embed_dim=128`, `cond_width=128`, no attention except in the middle) this is
the no-downsampling CIFAR-10 U-Net of VDM that MD4 uses, with the reference's
28,427,520 parameters. The time/label vector `c` enters every ResBlock as
in the reference (`cond_type`): "add", a bias-free zero-initialised
projection added to the first convolution's output, before the second
GroupNorm (the U-Net); or "norm", a per-channel scale and shift of every
GroupNorm in place of its learned affine (the U-ViT's convolutional part).

The encoder, decoder, embedding and output head are reused by `uvit.py`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from md4.networks import denoiser
from md4.networks.conditioning import Conditioning
from md4.networks.transformer import ATTENTION_IMPLS
from md4.networks.transformer import Attention
from md4.networks.transformer import check_choice
from md4.sharding import BATCH, COND, CONV_IN, CONV_OUT, EMBED, HEIGHT
from md4.sharding import KERNEL, KERNEL_W, NORM, VOCAB, WIDTH

MAX_GROUPS = 32
GROUP_NORM_EPS = 1e-6
# Logical axes of an image feature map.
FEATURE_AXES = (BATCH, HEIGHT, WIDTH, EMBED)


# Fewest channels per GroupNorm group below 128 channels.
MIN_GROUP_SIZE = 4


def num_groups(channels: int) -> int:
  """Largest divisor of `channels` that is at most
  min(MAX_GROUPS, channels // MIN_GROUP_SIZE) (at least 1).

  From 128 channels on this is flax's default of 32 groups, as the
  reference. Narrower maps keep at least 4 channels per group: with one
  channel per group a GroupNorm removes any per-channel constant, and with
  it the conditioning that the U-Net adds before its second GroupNorm.
  """
  most = max(1, min(MAX_GROUPS, channels // MIN_GROUP_SIZE))
  return max(g for g in range(1, most + 1) if channels % g == 0)


def group_norm(channels: int, dtype: Any, name: str | None = None):
  """GroupNorm with learned scale and bias, for `channels` input channels."""
  return nn.GroupNorm(
      num_groups=num_groups(channels),
      epsilon=GROUP_NORM_EPS,
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(
          nn.initializers.ones_init(), (NORM,)
      ),
      bias_init=nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (NORM,)
      ),
      name=name,
  )


# How c enters a ResBlock (see the module docstring).
RES_COND_TYPES = ("add", "norm")


class CondGroupNorm(nn.Module):
  """GroupNorm; with `modulated` and c given, c sets its scale and shift.

  `modulated`: GroupNorm without affine, then `* (1 + scale) + shift` with
  (scale, shift) a zero-initialised Dense of c (the reference U-ViT's
  CondGroupNorm). Otherwise (or with c None) a GroupNorm with learned affine.
  """

  modulated: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, c: jnp.ndarray | None) -> jnp.ndarray:
    channels = x.shape[-1]
    if not self.modulated or c is None:
      return group_norm(channels, self.dtype, "norm")(x)
    h = nn.GroupNorm(
        num_groups=num_groups(channels),
        epsilon=GROUP_NORM_EPS,
        use_bias=False,
        use_scale=False,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="norm",
    )(x)
    scale_shift = nn.Dense(
        2 * channels,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (COND, EMBED)
        ),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (EMBED,)
        ),
        name="cond",
    )(
        c
    )  # [B, 2 C]
    scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
    return h * (1 + scale) + shift


def conv(
    features: int,
    dtype: Any,
    *,
    kernel_size: int = 3,
    strides: int = 1,
    zero_init: bool = False,
    out_axis: str = CONV_OUT,
    name: str | None = None,
) -> nn.Conv:
  """Same-padded square convolution; `zero_init` zeroes kernel and bias."""
  kernel_init = (
      nn.initializers.zeros_init()
      if zero_init
      else nn.initializers.lecun_normal()
  )
  return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(strides, strides),
      padding="SAME",
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(
          kernel_init, (KERNEL, KERNEL_W, CONV_IN, out_axis)
      ),
      bias_init=nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (out_axis,)
      ),
      name=name,
  )


class ResBlock(nn.Module):
  """Residual block `(x [B, H, W, Cin], c [B, Dc] | None, train)` -> Cout.

  GroupNorm, SiLU, conv, [+ Dense(c)], GroupNorm, SiLU, dropout, conv
  (zero-initialised, so the block starts as its skip path); a 1x1 conv on
  the skip path when the channel count changes. With `cond_type="add"` c
  enters as a bias-free, zero-initialised projection added before the second
  GroupNorm (the reference U-Net); with "norm" it sets the scale and shift of
  both GroupNorms (`CondGroupNorm`, the reference U-ViT).

  Attributes:
    out_ch: output channels.
    dropout_rate: dropout before the second convolution.
    cond_type: one of RES_COND_TYPES.
    dtype: compute dtype.
  """

  out_ch: int
  dropout_rate: float = 0.0
  cond_type: str = "add"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x: jnp.ndarray, c: jnp.ndarray | None, train: bool
  ) -> jnp.ndarray:
    check_choice("cond_type", self.cond_type, RES_COND_TYPES)
    modulated = self.cond_type == "norm"
    h = nn.silu(CondGroupNorm(modulated, self.dtype, name="norm_0")(x, c))
    h = conv(self.out_ch, self.dtype, name="conv_0")(h)  # [B, H, W, Cout]
    if c is not None and not modulated:
      h = (
          h
          + nn.Dense(
              self.out_ch,
              use_bias=False,
              dtype=self.dtype,
              param_dtype=jnp.float32,
              kernel_init=nn.with_logical_partitioning(
                  nn.initializers.zeros_init(), (COND, EMBED)
              ),
              name="cond",
          )(c)[:, None, None, :]
      )  # [B, 1, 1, Cout]
    h = CondGroupNorm(modulated, self.dtype, name="norm_1")(h, c)
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.silu(h))
    h = conv(self.out_ch, self.dtype, zero_init=True, name="conv_1")(h)
    if x.shape[-1] != self.out_ch:
      x = conv(self.out_ch, self.dtype, kernel_size=1, name="skip")(x)
    return nn.with_logical_constraint(x + h, FEATURE_AXES)


class AttentionBlock(nn.Module):
  """Residual self-attention over all pixels: [B, H, W, C] -> [B, H, W, C].

  Projections with biases (flax's MultiHeadDotProductAttention, as the
  reference); the output projection is zero-initialised, so the block starts
  as the identity.

  Attributes:
    num_heads: attention heads; must divide the channels.
    attention_impl: see `transformer.Attention`.
    modulated_norm: c sets the GroupNorm's scale and shift (`CondGroupNorm`).
    dtype: compute dtype.
  """

  num_heads: int = 1
  attention_impl: str | None = "xla"
  modulated_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, c: jnp.ndarray | None) -> jnp.ndarray:
    batch, height, width, channels = x.shape
    h = CondGroupNorm(self.modulated_norm, self.dtype, name="norm")(x, c)
    h = h.reshape(batch, height * width, channels)  # [B, H*W, C]
    h = Attention(
        self.num_heads,
        use_rope=False,
        attention_impl=self.attention_impl,
        out_std=0.0,
        qkv_bias=True,
        out_bias=True,
        dtype=self.dtype,
        name="attention",
    )(h)
    h = h.reshape(batch, height, width, channels)  # [B, H, W, C]
    return nn.with_logical_constraint(x + h, FEATURE_AXES)


def _res_block_class(remat: bool) -> type[ResBlock]:
  # static_argnums counts self as 0: (self, x, c, train).
  return nn.remat(ResBlock, static_argnums=(3,)) if remat else ResBlock


def _attention_block_class(remat: bool) -> type[AttentionBlock]:
  return nn.remat(AttentionBlock) if remat else AttentionBlock


def check_unet_fields(
    ch_mult: Sequence[int], num_res_blocks: int, attention_impl: str | None
) -> None:
  """Validates the fields shared by UNet and UViT."""
  if not ch_mult or any(m <= 0 for m in ch_mult):
    raise ValueError(
        f"ch_mult must be a non-empty tuple of positive ints, got {ch_mult!r}."
    )
  if num_res_blocks < 0:
    raise ValueError(f"num_res_blocks must be >= 0, got {num_res_blocks}.")
  check_choice("attention_impl", attention_impl, ATTENTION_IMPLS)


def check_image_shape(z: jnp.ndarray, num_levels: int, network: str) -> None:
  """Checks z: [B, H, W, C] with H, W divisible by 2**(num_levels - 1)."""
  if z.ndim != 4:
    raise ValueError(
        f"{network} takes image tokens z: [B, H, W, C], got shape "
        f"{z.shape}; use 'transformer' for text."
    )
  factor = 2 ** (num_levels - 1)
  if z.shape[1] % factor or z.shape[2] % factor:
    raise ValueError(
        f"{network} with len(ch_mult)={num_levels} downsamples by {factor}; "
        f"height and width {z.shape[1:3]} must be divisible by it. Use a "
        "shorter ch_mult."
    )


class PixelEmbedding(nn.Module):
  """[B, H, W, C] tokens -> [B, H, W, C * embed_dim] features.

  One table (vocab_size + 1 rows, the last is MASK) is shared by all
  channels; concatenating keeps which channel a token came from.
  """

  vocab_size: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
    x = nn.Embed(
        self.vocab_size + 1,
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (VOCAB, EMBED)
        ),
        name="token_embedding",
    )(
        z
    )  # [B, H, W, C, E]
    return x.reshape(*z.shape[:3], -1)  # [B, H, W, C*E]


class PixelLogits(nn.Module):
  """[B, H, W, F] features -> [B, H, W, C, vocab_size] float32 logits.

  GroupNorm (modulated by c when `modulated_norm`), SiLU and a
  zero-initialised 3x3 conv, as the reference.
  """

  vocab_size: int
  num_channels: int
  modulated_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray, c: jnp.ndarray | None) -> jnp.ndarray:
    h = nn.silu(
        CondGroupNorm(self.modulated_norm, self.dtype, name="norm")(h, c)
    )
    logits = conv(
        self.num_channels * self.vocab_size,
        self.dtype,
        zero_init=True,
        out_axis=VOCAB,
        name="conv",
    )(
        h
    )  # [B, H, W, C*V]
    logits = logits.reshape(*h.shape[:3], self.num_channels, self.vocab_size)
    return logits.astype(jnp.float32)  # [B, H, W, C, V]


class UNetEncoder(nn.Module):
  """Conv in and the downsampling path: returns (h, skips).

  Level i has `ch * ch_mult[i]` channels and `num_res_blocks` ResBlocks; a
  stride-2 conv halves the resolution between levels. `skips` holds the conv-in
  output, every ResBlock output and every downsample output, which is what
  `UNetDecoder` with the same fields consumes.
  """

  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  attn_resolutions: tuple[int, ...] = ()
  num_heads: int = 1
  attention_impl: str | None = "xla"
  dropout_rate: float = 0.0
  cond_type: str = "add"
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(
      self, x: jnp.ndarray, c: jnp.ndarray | None, train: bool
  ) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
    res_block = _res_block_class(self.remat)
    attention_block = _attention_block_class(self.remat)
    h = conv(self.ch, self.dtype, name="conv_in")(x)  # [B, H, W, ch]
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res_block(
            self.ch * mult,
            self.dropout_rate,
            self.cond_type,
            self.dtype,
            name=f"down_{level}_res_{i}",
        )(h, c, train)
        if h.shape[1] in self.attn_resolutions:
          h = attention_block(
              self.num_heads,
              self.attention_impl,
              self.cond_type == "norm",
              self.dtype,
              name=f"down_{level}_attn_{i}",
          )(h, c)
        skips.append(h)
      if level != len(self.ch_mult) - 1:
        h = conv(
            h.shape[-1], self.dtype, strides=2, name=f"down_{level}_downsample"
        )(
            h
        )  # [B, H/2, W/2, *]
        skips.append(h)
    return h, skips


class UNetDecoder(nn.Module):
  """The upsampling path: consumes the skips of a `UNetEncoder`.

  Level i (coarsest first) has `num_res_blocks + 1` ResBlocks, each reading
  one skip; nearest-neighbour upsampling and a conv double the resolution
  between levels.
  """

  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  attn_resolutions: tuple[int, ...] = ()
  num_heads: int = 1
  attention_impl: str | None = "xla"
  dropout_rate: float = 0.0
  cond_type: str = "add"
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(
      self,
      h: jnp.ndarray,
      skips: list[jnp.ndarray],
      c: jnp.ndarray | None,
      train: bool,
  ) -> jnp.ndarray:
    res_block = _res_block_class(self.remat)
    attention_block = _attention_block_class(self.remat)
    skips = list(skips)
    for level in reversed(range(len(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)  # [B, H, W, C + Cskip]
        h = res_block(
            self.ch * self.ch_mult[level],
            self.dropout_rate,
            self.cond_type,
            self.dtype,
            name=f"up_{level}_res_{i}",
        )(h, c, train)
        if h.shape[1] in self.attn_resolutions:
          h = attention_block(
              self.num_heads,
              self.attention_impl,
              self.cond_type == "norm",
              self.dtype,
              name=f"up_{level}_attn_{i}",
          )(h, c)
      if level != 0:
        h = h.repeat(2, axis=1).repeat(2, axis=2)  # [B, 2H, 2W, C]
        h = conv(h.shape[-1], self.dtype, name=f"up_{level}_upsample")(h)
    if skips:
      raise ValueError(
          f"UNetDecoder left {len(skips)} skips unused; encoder "
          "and decoder fields differ."
      )
    return h


class UNet(denoiser.Denoiser):
  """Image denoiser: `logits [B, H, W, C, V] = net(z [B, H, W, C], t, label)`.

  Attributes (`Denoiser`'s fields, here with where dropout and remat apply):
    dropout_rate: dropout inside the ResBlocks.
    remat: rematerialise each ResBlock / AttentionBlock in the backward pass.
    embed_dim: embedding width of one channel's token.
    ch: base channels; level i has ch * ch_mult[i].
    ch_mult: channel multiplier per resolution level; len(ch_mult) - 1
      downsamplings, so H and W must be divisible by 2**(len(ch_mult) - 1).
    num_res_blocks: ResBlocks per level on the way down (num_res_blocks + 1 on
      the way up).
    attn_resolutions: feature-map heights at which each ResBlock is followed by
      self-attention (the middle block always has it).
    num_heads: heads of every self-attention; must divide its channels.
    cond_width: width of the time/label conditioning vector.
    attention_impl: "xla", "cudnn" or None (JAX chooses).
  """

  embed_dim: int = 128
  ch: int = 128
  ch_mult: tuple[int, ...] = (1,)
  num_res_blocks: int = 32
  attn_resolutions: tuple[int, ...] = ()
  num_heads: int = 1
  cond_width: int = 128
  attention_impl: str | None = "xla"

  @nn.compact
  def __call__(
      self,
      z: jnp.ndarray,
      t: jnp.ndarray | None,
      label: jnp.ndarray | None = None,
      *,
      train: bool,
  ) -> jnp.ndarray:
    """Logits of the clean pixels.

    Args:
      z: [B, H, W, C] int tokens in [0, vocab_size]; vocab_size is MASK.
      t: [B] diffusion time in [0, 1] (ignored if time_features == "none").
      label: [B] int labels in [0, num_classes] or None ("no label").
      train: enables dropout (rng stream "dropout").

    Returns:
      [B, H, W, C, vocab_size] float32 logits.
    """
    check_unet_fields(self.ch_mult, self.num_res_blocks, self.attention_impl)
    check_image_shape(z, len(self.ch_mult), "UNet")
    c = Conditioning(
        self.cond_width,
        self.num_classes,
        self.time_features,
        dtype=self.dtype,
        name="conditioning",
    )(
        t, label, z.shape[0]
    )  # c: [B, Dc] or None
    x = PixelEmbedding(
        self.vocab_size, self.embed_dim, self.dtype, name="embedding"
    )(
        z
    )  # [B, H, W, C*E]

    path = dict(
        ch=self.ch,
        ch_mult=tuple(self.ch_mult),
        num_res_blocks=self.num_res_blocks,
        attn_resolutions=tuple(self.attn_resolutions),
        num_heads=self.num_heads,
        attention_impl=self.attention_impl,
        dropout_rate=self.dropout_rate,
        dtype=self.dtype,
        remat=self.remat,
    )
    h, skips = UNetEncoder(**path, name="encoder")(x, c, train)

    res_block = _res_block_class(self.remat)
    mid_ch = h.shape[-1]
    h = res_block(
        mid_ch, self.dropout_rate, "add", self.dtype, name="mid_res_0"
    )(h, c, train)
    h = _attention_block_class(self.remat)(
        self.num_heads, self.attention_impl, False, self.dtype, name="mid_attn"
    )(h, c)
    h = res_block(
        mid_ch, self.dropout_rate, "add", self.dtype, name="mid_res_1"
    )(h, c, train)

    h = UNetDecoder(**path, name="decoder")(h, skips, c, train)
    return PixelLogits(
        self.vocab_size, z.shape[-1], False, self.dtype, name="output"
    )(
        h, c
    )  # [B, H, W, C, V]
