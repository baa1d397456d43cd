"""U-ViT denoiser for larger images (ImageNet 64x64): convolutions where the
feature maps are large, a DiT transformer on patches in the middle (the
reference MD4 U-ViT, after Hoogeboom et al. 2023 and Peebles & Xie 2023).

    z [B, H, W, C] -> PixelEmbedding                  -> [B, H, W, C * E]
      -> UNetEncoder (conv in, ResBlocks whose GroupNorms c modulates,
         downsampling between levels; skips kept)      -> [B, h, w, Cl]
      -> DiT: p x p patches (a stride-p conv) + a learned position
         embedding (2-D sine-cosine init), num_transformer_layers x
         TransformerBlock (adaLN-zero, plain GELU MLP, q/k/v biases, no
         RoPE), a final adaLN-zero LayerNorm and Dense back to p x p x Cl,
         un-patchified                                 -> [B, h, w, Cl]
      -> UNetDecoder (ResBlocks reading the skips, upsampling)
      -> PixelLogits (modulated GroupNorm, SiLU, conv) -> [B, H, W, C, V]

The paper's ImageNet 64x64 model (`configs/md4/imagenet64.py`) has one
resolution level (`ch_mult=(1,)`): 8 ResBlocks of 256 channels, a DiT of 20
blocks 768 wide over 32 x 32 = 1024 patches of 2 x 2, 9 ResBlocks up;
204,595,712 parameters, the reference's count.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from md4.networks import denoiser
from md4.networks.conditioning import Conditioning
from md4.networks.transformer import ATTENTION_IMPLS
from md4.networks.transformer import MLP_TYPES
from md4.networks.transformer import AdaLNModulation
from md4.networks.transformer import block_class
from md4.networks.transformer import check_choice
from md4.networks.transformer import depth_scaled_std
from md4.networks.transformer import layer_norm
from md4.networks.transformer import modulate
from md4.networks.unet import FEATURE_AXES
from md4.networks.unet import PixelEmbedding
from md4.networks.unet import PixelLogits
from md4.networks.unet import UNetDecoder
from md4.networks.unet import UNetEncoder
from md4.networks.unet import check_image_shape
from md4.networks.unet import check_unet_fields
from md4.sharding import BATCH, CONV_IN, CONV_OUT, EMBED, KERNEL, KERNEL_W
from md4.sharding import LENGTH


def sincos_position_embedding(grid: int, dim: int) -> np.ndarray:
  """[grid * grid, dim] 2-D sine-cosine embedding of a square patch grid.

  The first half of the features encode the patch's row, the second half its
  column; each half is `[sin(p * w_i), cos(p * w_i)]` with frequencies
  `w_i = 10000 ** (-i / (dim / 4))` (the MAE / DiT initialisation).
  """
  if dim % 4:
    raise ValueError(
        "transformer_width must be divisible by 4 for the 2-D "
        f"position embedding, got {dim}."
    )
  freqs = 10_000.0 ** (-np.arange(dim // 4) / (dim // 4))  # [D/4]
  rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

  def encode(pos):  # pos: [grid * grid] -> [grid * grid, D/2]
    angles = pos[:, None] * freqs[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate(
      [encode(rows.reshape(-1)), encode(cols.reshape(-1))], axis=1
  ).astype(
      np.float32
  )  # [grid^2, D]


class UViT(denoiser.Denoiser):
  """Image denoiser: `logits [B, H, W, C, V] = net(z [B, H, W, C], t, label)`.

  Attributes (`Denoiser`'s fields, here with where dropout and remat apply):
    dropout_rate: dropout in ResBlocks and transformer blocks.
    remat: rematerialise each ResBlock and transformer block.
    embed_dim: embedding width of one channel's token.
    ch: base channels of the convolutional part; level i has ch * ch_mult[i].
    ch_mult: channel multiplier per resolution level; the transformer runs at
      resolution H / 2**(len(ch_mult) - 1).
    num_res_blocks: ResBlocks per level in the encoder (and num_res_blocks + 1
      per level in the decoder), as in `UNet`.
    num_transformer_layers: DiT blocks.
    transformer_width: width of the DiT blocks.
    num_heads: attention heads of the DiT; must divide its width.
    mlp_type: MLP of the DiT blocks (see `transformer.Mlp`); the reference's
      is "gelu", the plain MLP with biases.
    mlp_ratio: see `transformer.mlp_hidden_width`.
    patch_size: side of the square patches the DiT reads; must divide the
      transformer's resolution.
    cond_width: width of the time/label conditioning vector.
    depth_scaled_init: init DiT branch outputs with
      INIT_STD / sqrt(2 * num_transformer_layers).
    attention_impl: "xla", "cudnn" or None (JAX chooses).
  """

  embed_dim: int = 256
  ch: int = 256
  ch_mult: tuple[int, ...] = (1,)
  num_res_blocks: int = 8
  num_transformer_layers: int = 20
  transformer_width: int = 768
  num_heads: int = 12
  mlp_type: str = "gelu"
  mlp_ratio: float = 4.0
  patch_size: int = 2
  cond_width: int = 256
  depth_scaled_init: bool = False
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
    check_choice("mlp_type", self.mlp_type, MLP_TYPES)
    check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    check_image_shape(z, len(self.ch_mult), "UViT")
    low = z.shape[1] // 2 ** (len(self.ch_mult) - 1)
    if self.patch_size < 1 or low % self.patch_size or z.shape[1] != z.shape[2]:
      raise ValueError(
          f"UViT needs square images whose transformer resolution {low} is "
          f"divisible by patch_size={self.patch_size}; got image "
          f"{z.shape[1:3]}. Change network.patch_size or network.ch_mult."
      )
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
        attn_resolutions=(),
        dropout_rate=self.dropout_rate,
        cond_type="norm",
        dtype=self.dtype,
        remat=self.remat,
    )
    h, skips = UNetEncoder(**path, name="encoder")(x, c, train)
    h = self._dit(h, c, train)
    h = UNetDecoder(**path, name="decoder")(h, skips, c, train)
    return PixelLogits(
        self.vocab_size, z.shape[-1], True, self.dtype, name="output"
    )(
        h, c
    )  # [B, H, W, C, V]

  def _dit(
      self, h: jnp.ndarray, c: jnp.ndarray | None, train: bool
  ) -> jnp.ndarray:
    """DiT over p x p patches of the low-resolution map: [B, h, w, Cl]."""
    batch, height, _, channels = h.shape
    p = self.patch_size
    grid = height // p
    axes = (BATCH, LENGTH, EMBED)
    x = nn.Conv(
        self.transformer_width,
        (p, p),
        strides=(p, p),
        padding="VALID",
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (KERNEL, KERNEL_W, CONV_IN, EMBED)
        ),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (EMBED,)
        ),
        name="patch_embedding",
    )(
        h
    )  # [B, grid, grid, Wt]
    x = x.reshape(batch, grid * grid, self.transformer_width)  # [B, T, Wt]
    pos = self.param(
        "position_embedding",
        nn.with_logical_partitioning(
            lambda *_: jnp.asarray(
                sincos_position_embedding(grid, self.transformer_width)
            ),
            (LENGTH, EMBED),
        ),
        (grid * grid, self.transformer_width),
        jnp.float32,
    )
    x = nn.with_logical_constraint(x + pos[None].astype(self.dtype), axes)

    block = block_class(self.remat)
    out_std = depth_scaled_std(
        self.num_transformer_layers, self.depth_scaled_init
    )
    for i in range(self.num_transformer_layers):
      x = block(
          self.num_heads,
          mlp_type=self.mlp_type,
          mlp_ratio=self.mlp_ratio,
          use_rope=False,
          attention_impl=self.attention_impl,
          dropout_rate=self.dropout_rate,
          out_std=out_std,
          qkv_bias=True,
          dtype=self.dtype,
          name=f"transformer_block_{i}",
      )(x, c, train)

    shift, scale = AdaLNModulation(2, dtype=self.dtype, name="final_adaln")(
        c, self.transformer_width
    )
    x = modulate(layer_norm(self.dtype, "transformer_norm")(x), shift, scale)
    x = nn.Dense(
        p * p * channels,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (EMBED, CONV_OUT)
        ),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (CONV_OUT,)
        ),
        name="transformer_out",
    )(
        x
    )  # [B, T, p*p*Cl]
    x = x.reshape(batch, grid, grid, p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, grid, p, grid, p, Cl]
    h = x.reshape(batch, height, height, channels)
    return nn.with_logical_constraint(h, FEATURE_AXES)
