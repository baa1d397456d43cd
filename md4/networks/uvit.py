"""U-ViT denoiser for larger images (ImageNet 64x64): convolutions where the
feature maps are large, a transformer where they are small (Hoogeboom et al.
2023, "simple diffusion").

    z [B, H, W, C] -> PixelEmbedding -> UNetEncoder (conv in, ResBlocks,
      downsampling; skips kept)                      -> [B, h, w, Cl]
      -> flatten, Dense to transformer_width, + learned position embedding
      -> num_transformer_layers x TransformerBlock (adaLN-zero, from
         transformer.py)
      -> LayerNorm, Dense back to Cl, unflatten       -> [B, h, w, Cl]
      -> UNetDecoder (ResBlocks reading the skips, upsampling)
      -> PixelLogits                                  -> [B, H, W, C, V]

With the defaults, 64x64 inputs are downsampled twice (ch_mult has three
levels) to a 16x16 grid, i.e. 256 transformer tokens. The encoder and decoder
have no self-attention: the transformer provides the global mixing.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from md4.networks.conditioning import Conditioning
from md4.networks.transformer import ATTENTION_IMPLS
from md4.networks.transformer import INIT_STD
from md4.networks.transformer import MLP_TYPES
from md4.networks.transformer import block_class
from md4.networks.transformer import check_choice
from md4.networks.transformer import depth_scaled_std
from md4.networks.transformer import layer_norm
from md4.networks.unet import FEATURE_AXES
from md4.networks.unet import PixelEmbedding
from md4.networks.unet import PixelLogits
from md4.networks.unet import UNetDecoder
from md4.networks.unet import UNetEncoder
from md4.networks.unet import check_image_shape
from md4.networks.unet import check_unet_fields
from md4.sharding import BATCH, CONV_IN, CONV_OUT, EMBED, LENGTH


class UViT(nn.Module):
  """Image denoiser: `logits [B, H, W, C, V] = net(z [B, H, W, C], t, label)`.

  Attributes:
    vocab_size: V, values per channel (256 for 8-bit images); V is MASK.
    num_classes: labels for class conditioning (0: none); id num_classes is
      "no label".
    time_features: "t" (condition on time) or "none".
    dropout_rate: dropout in ResBlocks and transformer blocks.
    dtype: compute dtype; parameters and logits are float32.
    remat: rematerialise each ResBlock and transformer block.
    embed_dim: embedding width of one channel's token.
    ch: base channels of the convolutional part; level i has ch * ch_mult[i].
    ch_mult: channel multiplier per resolution level; the transformer runs at
      resolution H / 2**(len(ch_mult) - 1).
    num_res_blocks: ResBlocks per level in the encoder (and num_res_blocks + 1
      per level in the decoder), as in `UNet`.
    num_transformer_layers: transformer blocks at the lowest resolution.
    transformer_width: width of the transformer blocks.
    num_heads: attention heads of the transformer; must divide its width.
    mlp_type: MLP of the transformer blocks: "glu", "swiglu" or "gelu".
    mlp_ratio: see `transformer.mlp_hidden_width`.
    cond_width: width of the time/label conditioning vector.
    depth_scaled_init: init transformer branch outputs with
      INIT_STD / sqrt(2 * num_transformer_layers).
    attention_impl: "xla", "cudnn" or None (JAX chooses).
  """
  vocab_size: int
  num_classes: int = 0
  time_features: str = "t"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  embed_dim: int = 32
  ch: int = 256
  ch_mult: tuple[int, ...] = (1, 1, 2)
  num_res_blocks: int = 8
  num_transformer_layers: int = 20
  transformer_width: int = 768
  num_heads: int = 12
  mlp_type: str = "glu"
  mlp_ratio: float = 4.0
  cond_width: int = 256
  depth_scaled_init: bool = True
  attention_impl: str | None = "xla"

  @nn.compact
  def __call__(self, z: jnp.ndarray, t: jnp.ndarray | None,
               label: jnp.ndarray | None = None, *,
               train: bool) -> jnp.ndarray:
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
    c = Conditioning(self.cond_width, self.num_classes, self.time_features,
                     dtype=self.dtype, name="conditioning")(
                         t, label, z.shape[0])  # c: [B, Dc] or None
    x = PixelEmbedding(self.vocab_size, self.embed_dim, self.dtype,
                       name="embedding")(z)  # [B, H, W, C*E]

    path = dict(ch=self.ch, ch_mult=tuple(self.ch_mult),
                num_res_blocks=self.num_res_blocks, attn_resolutions=(),
                dropout_rate=self.dropout_rate, dtype=self.dtype,
                remat=self.remat)
    h, skips = UNetEncoder(**path, name="encoder")(x, c, train)
    h = self._transformer(h, c, train)
    h = UNetDecoder(**path, name="decoder")(h, skips, c, train)
    return PixelLogits(self.vocab_size, z.shape[-1], self.dtype,
                       name="output")(h)  # [B, H, W, C, V]

  def _transformer(self, h: jnp.ndarray, c: jnp.ndarray | None,
                   train: bool) -> jnp.ndarray:
    """Transformer over the low-resolution map: [B, h, w, Cl] -> same."""
    batch, height, width, channels = h.shape
    axes = (BATCH, LENGTH, EMBED)
    x = h.reshape(batch, height * width, channels)  # [B, h*w, Cl]
    x = nn.Dense(
        self.transformer_width, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (CONV_IN, EMBED)),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (EMBED,)),
        name="transformer_in")(x)  # [B, h*w, Wt]
    pos = self.param(
        "position_embedding",
        nn.with_logical_partitioning(
            nn.initializers.normal(INIT_STD), (LENGTH, EMBED)),
        (height * width, self.transformer_width), jnp.float32)
    x = nn.with_logical_constraint(x + pos[None].astype(self.dtype), axes)

    block = block_class(self.remat)
    out_std = depth_scaled_std(self.num_transformer_layers,
                               self.depth_scaled_init)
    for i in range(self.num_transformer_layers):
      x = block(self.num_heads, mlp_type=self.mlp_type,
                mlp_ratio=self.mlp_ratio, use_rope=False,
                attention_impl=self.attention_impl,
                dropout_rate=self.dropout_rate, out_std=out_std,
                dtype=self.dtype, name=f"transformer_block_{i}")(x, c, train)

    x = layer_norm(self.dtype, "transformer_norm")(x)
    x = nn.Dense(
        channels, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (EMBED, CONV_OUT)),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (CONV_OUT,)),
        name="transformer_out")(x)  # [B, h*w, Cl]
    h = x.reshape(batch, height, width, channels)
    return nn.with_logical_constraint(h, FEATURE_AXES)
