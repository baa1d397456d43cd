"""DiT-style bidirectional transformer denoiser for text.

    z [B, L] -> token embedding (vocab_size + 1 rows, the last is MASK;
                at the model width, or `embed_dim` wide and projected)
             -> num_layers x TransformerBlock (pre-LN, adaLN-zero)
             -> LayerNorm + adaLN shift/scale -> Dense -> logits [B, L, V]

This is the reference MD4 text network (a LLaMA-style block with adaLN
conditioning): q/k/v/out projections, gated MLP and output head without
biases, RoPE, gated MLP hidden width 2/3 * 4 * width rounded up to a multiple
of 32, a conditioning vector width / num_heads wide. The paper configs build
it with the reference's parameter counts (tests/test_configs.py).

Each block reads a conditioning vector `c` (time and label, see
`conditioning.py`). From `c` a zero-initialised Dense produces a shift, scale
and gate for the attention branch and for the MLP branch:

    x = x + gate_attn * Attention(LN(x) * (1 + scale_attn) + shift_attn)
    x = x + gate_mlp  * MLP(LN(x) * (1 + scale_mlp) + shift_mlp)

so every block starts as the identity ("adaLN-zero", Peebles & Xie 2023). The
LayerNorms have no scale or bias of their own: adaLN supplies them.

With nothing to condition on (`time_features == "none"` and
`num_classes == 0`) the modulation is a learned per-block constant (a
zero-initialised parameter of the same shape as the Dense's output), so the
blocks still start as the identity.

`TransformerBlock` is reused by `uvit.py`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from md4.networks import block_attention
from md4.networks import denoiser
from md4.networks.conditioning import Conditioning
from md4.networks.lean_attention import lean_attention
from md4.sharding import BATCH, COND, EMBED, HEAD_DIM, HEADS, LENGTH, MLP, VOCAB

# The reference's names: "glu" is sigmoid-gated (Dauphin et al.), "geglu"
# GELU-gated, "swiglu" SiLU-gated (no biases); "gelu" is the plain two-layer
# MLP with biases (DiT's).
MLP_TYPES = ("glu", "geglu", "swiglu", "gelu")
GATE_ACTIVATIONS = {"glu": nn.sigmoid, "geglu": nn.gelu, "swiglu": nn.silu}
# adaLN-zero: the modulation Dense starts at zero, so every block starts as
# the identity; adaLN: the Dense has the default (LeCun normal) init.
COND_TYPES = ("adaln_zero", "adaln")
# Gated MLP hidden widths are rounded up to a multiple of this (reference).
MLP_MULTIPLE_OF = 32
ATTENTION_IMPLS = ("xla", "cudnn", None)

# Standard deviation of the normal initialiser of every weight matrix (GPT-2).
INIT_STD = 0.02
# logits_chunk: choose by vocabulary size (see `logits_chunk_positions`).
AUTO_LOGITS_CHUNK = -1
# The automatic rule chunks the loss's logits from this vocabulary size on;
# below it the full [B, L, V] logits are small and one matmul is fastest.
AUTO_CHUNK_MIN_VOCAB = 1024
# ... in chunks of about this many bytes of float32 logits.
AUTO_CHUNK_BYTES = 32 * 2**20
LAYER_NORM_EPS = 1e-6
ROPE_BASE = 10_000.0


def mlp_hidden_width(width: int, mlp_ratio: float, mlp_type: str) -> int:
  """Hidden width of the MLP.

  A plain "gelu" MLP uses `int(mlp_ratio * width)`. The gated MLPs ("glu",
  "geglu", "swiglu") have three weight matrices instead of two, so to keep the
  parameter count of a plain MLP they use `int(2/3 * mlp_ratio * width)`,
  rounded up to a multiple of MLP_MULTIPLE_OF (32, as the reference). For
  width 768 and ratio 4 that is 2048; for width 1024 it is 2752.

  Args:
    width: model width.
    mlp_ratio: hidden width of a plain MLP divided by the model width.
    mlp_type: one of MLP_TYPES.

  Returns:
    The hidden width.
  """
  check_choice("mlp_type", mlp_type, MLP_TYPES)
  if mlp_type == "gelu":
    return int(mlp_ratio * width)
  hidden = int(2 * mlp_ratio * width / 3)
  return -(-hidden // MLP_MULTIPLE_OF) * MLP_MULTIPLE_OF


def check_choice(field: str, value: Any, choices: tuple[Any, ...]) -> None:
  """Raises a ValueError naming `field` unless `value` is in `choices`."""
  if value not in choices:
    raise ValueError(f"{field} must be one of {choices}, got {value!r}.")


def rotary_embedding(x: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
  """Rotates query or key features by position (RoPE, Su et al. 2021).

  The head features are split into two halves that form the real and
  imaginary parts of head_dim / 2 complex numbers; number i is rotated by
  angle `position * ROPE_BASE ** (-2i / head_dim)`.

  Args:
    x: [B, L, N, H] queries or keys, H even.
    positions: [L] integer positions.

  Returns:
    [B, L, N, H] rotated features in the dtype of `x`.
  """
  head_dim = x.shape[-1]
  freqs = ROPE_BASE ** (-np.arange(0, head_dim, 2) / head_dim)  # [H/2]
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [L, H/2]
  sin = jnp.sin(angles)[None, :, None, :]  # [1, L, 1, H/2]
  cos = jnp.cos(angles)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # [B, L, N, H/2] each
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  return rotated.astype(x.dtype)  # [B, L, N, H]


def modulate(
    x: jnp.ndarray, shift: jnp.ndarray, scale: jnp.ndarray
) -> jnp.ndarray:
  """adaLN modulation; `scale` is an offset from 1 so zero means identity."""
  return x * (1 + scale) + shift


def layer_norm(dtype: Any, name: str | None = None) -> nn.LayerNorm:
  """LayerNorm without learned scale or bias (adaLN supplies both)."""
  return nn.LayerNorm(
      epsilon=LAYER_NORM_EPS,
      use_scale=False,
      use_bias=False,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


class ShapedDense(nn.Module):
  """A dense layer whose kernel is created at its full N-d shape.

  flax's DenseGeneral creates a flat kernel and reshapes it, which breaks
  logical-axis annotations under a mesh; this creates
  kernel [*in_dims, *features] directly and contracts the trailing
  `num_in_axes` input dimensions.
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  bias_axes: tuple[str | None, ...]
  kernel_init: Any = nn.initializers.zeros_init()
  num_in_axes: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    in_dims = x.shape[x.ndim - self.num_in_axes :]
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
        tuple(in_dims) + tuple(self.features),
        jnp.float32,
    )
    y = jnp.tensordot(
        x.astype(self.dtype), kernel.astype(self.dtype), axes=self.num_in_axes
    )
    if not self.use_bias:
      return y
    bias = self.param(
        "bias",
        nn.with_logical_partitioning(
            nn.initializers.zeros_init(), self.bias_axes
        ),
        tuple(self.features),
        jnp.float32,
    )
    return y + bias.astype(self.dtype)


def logits_chunk_positions(
    logits_chunk: int, batch: int, length: int, vocab_size: int
) -> int:
  """Positions per chunk in which the loss forms the logits; 0: all at once.

  Args:
    logits_chunk: the `Transformer.logits_chunk` field: AUTO_LOGITS_CHUNK
      (-1) for the automatic rule, 0 for full logits, N > 0 for N positions
      (B x N rows of logits) per chunk.
    batch: B.
    length: L.
    vocab_size: V.

  Returns:
    0, or the positions per chunk (at most L). The automatic rule chunks from
    AUTO_CHUNK_MIN_VOCAB values on, about AUTO_CHUNK_BYTES of logits a chunk.
  """
  if logits_chunk < AUTO_LOGITS_CHUNK:
    raise ValueError(
        "network.logits_chunk must be -1 (automatic), 0 (full logits) or "
        f"a number of positions per chunk > 0, got {logits_chunk}."
    )
  if logits_chunk == AUTO_LOGITS_CHUNK:
    if vocab_size < AUTO_CHUNK_MIN_VOCAB:
      return 0
    rows = AUTO_CHUNK_BYTES // (4 * vocab_size)  # float32 logits
    logits_chunk = max(1, rows // batch)
  return min(logits_chunk, length)


class OutputHead(nn.Module):
  """Dense projection to the vocabulary, or its factors for a chunked loss.

  Its parameters are those of `nn.Dense(vocab_size, use_bias=use_bias)`
  (kernel [W, V], zero-initialised as in the reference, and bias [V]), so
  checkpoints do not depend on which form is used.

  Attributes:
    vocab_size: V.
    use_bias: learn a bias; without one the factors' bias is a zero constant.
    dtype: compute dtype.
  """

  vocab_size: int
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, factors: bool = False):
    """float32 logits [B, L, V] of x [B, L, W], or (x, kernel, bias).

    With `factors`, returns the compute-dtype x [B, L, W], kernel [W, V] and
    bias [V], whose `(x @ kernel + bias)` cast to float32 are the logits.
    """
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (EMBED, VOCAB)
        ),
        (x.shape[-1], self.vocab_size),
        jnp.float32,
    ).astype(self.dtype)
    if self.use_bias:
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(nn.initializers.zeros_init(), (VOCAB,)),
          (self.vocab_size,),
          jnp.float32,
      ).astype(self.dtype)
    else:
      bias = jnp.zeros((self.vocab_size,), self.dtype)
    x = x.astype(self.dtype)
    if factors:
      return x, kernel, bias
    logits = jnp.dot(x, kernel) + bias  # [B, L, V]
    logits = nn.with_logical_constraint(logits, (BATCH, LENGTH, VOCAB))
    return logits.astype(jnp.float32)


class AdaLNModulation(nn.Module):
  """`c -> num_chunks` vectors of the model width: Dense(silu(c)).

  Attributes:
    num_chunks: how many shift/scale/gate vectors to produce.
    cond_type: "adaln_zero" (the Dense starts at zero) or "adaln" (LeCun
      normal kernel, zero bias).
    dtype: compute dtype.
  """

  num_chunks: int
  cond_type: str = "adaln_zero"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, c: jnp.ndarray | None, width: int) -> list[jnp.ndarray]:
    """Returns num_chunks arrays [B, 1, width] ([1, 1, width] if c is None)."""
    check_choice("cond_type", self.cond_type, COND_TYPES)
    zeros = nn.initializers.zeros_init()
    if c is None:
      # No conditioning: learned constants, zero so that blocks start as the
      # identity.
      mod = self.param(
          "constant",
          nn.with_logical_partitioning(zeros, (None, EMBED)),
          (self.num_chunks, width),
          jnp.float32,
      )
      mod = mod.astype(self.dtype)[None]  # [1, n, W]
    else:
      kernel_init = (
          zeros
          if self.cond_type == "adaln_zero"
          else nn.initializers.lecun_normal()
      )
      mod = ShapedDense(
          (self.num_chunks, width),
          (COND, None, EMBED),
          (None, EMBED),
          kernel_init=kernel_init,
          dtype=self.dtype,
          name="dense",
      )(
          nn.silu(c)
      )  # mod: [B, n, W]
    return [mod[:, None, i, :] for i in range(self.num_chunks)]


class Attention(nn.Module):
  """Multi-head self-attention: [B, L, W] -> [B, L, W].

  Attributes:
    num_heads: number of heads; must divide the input width.
    use_rope: apply rotary position embeddings to queries and keys.
    attention_impl: "xla": `lean_attention` (XLA's math with a VJP that
      saves only the probabilities); "cudnn" or None: that `implementation`
      of `jax.nn.dot_product_attention` (None: JAX chooses).
    out_std: init std of the output projection (0 gives a zero init).
    qkv_bias: biases on the query, key and value projections.
    out_bias: a bias on the output projection.
    causal: position i attends to positions <= i only (False:
      bidirectional, the denoisers').
    dtype: compute dtype.
  """

  num_heads: int
  use_rope: bool = True
  attention_impl: str | None = "xla"
  out_std: float = INIT_STD
  qkv_bias: bool = False
  out_bias: bool = False
  causal: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jnp.ndarray,
      positions: jnp.ndarray | None = None,
      mask: jnp.ndarray | None = None,
      prefix: tuple[jnp.ndarray, jnp.ndarray] | None = None,
  ):
    """[B, L, W] -> [B, L, W]; with a mask, also this input's keys and values.

    Args:
      x: [B, L, W] inputs.
      positions: [L] int positions for RoPE (default 0..L-1).
      mask: optional bool [L, P + L], True where query i may attend to key
        j; the first P keys are `prefix`'s. With a mask the call returns
        (out, (k, v)), k and v [B, L, N, H] of x (after RoPE), so that a
        caller can keep them as a cache (`md4.networks.block_attention`).
      prefix: optional (k, v) [B, P, N, H] attended to before x's own keys.
    """
    check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    width = x.shape[-1]
    if self.num_heads <= 0 or width % self.num_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must divide the width {width}."
      )
    head_dim = width // self.num_heads
    if self.use_rope and head_dim % 2:
      raise ValueError(
          "rotary embeddings need an even head dim, got "
          f"width {width} / num_heads {self.num_heads} = "
          f"{head_dim}."
      )

    def project(name):
      return ShapedDense(
          (self.num_heads, head_dim),
          (EMBED, HEADS, HEAD_DIM),
          (HEADS, HEAD_DIM),
          kernel_init=nn.initializers.normal(INIT_STD),
          use_bias=self.qkv_bias,
          dtype=self.dtype,
          name=name,
      )(
          x
      )  # [B, L, N, H]

    axes = (BATCH, LENGTH, HEADS, HEAD_DIM)
    q = nn.with_logical_constraint(project("query"), axes)
    k = nn.with_logical_constraint(project("key"), axes)
    v = nn.with_logical_constraint(project("value"), axes)
    if positions is None:
      positions = jnp.arange(x.shape[1])  # [L]
    if self.use_rope:
      q = rotary_embedding(q, positions)
      k = rotary_embedding(k, positions)
    own_kv = (k, v)
    if mask is not None:
      if prefix is not None:
        k = jnp.concatenate([prefix[0].astype(k.dtype), k], axis=1)
        v = jnp.concatenate([prefix[1].astype(v.dtype), v], axis=1)
      out = jax.nn.dot_product_attention(
          q,
          k,
          v,
          mask=mask[None, None],
          implementation=(
              "xla" if self.attention_impl == "xla" else self.attention_impl
          ),
      )  # [B, L, N, H]
    elif self.attention_impl == "xla":
      out = lean_attention(q, k, v, self.causal)  # [B, L, N, H]
    else:
      out = jax.nn.dot_product_attention(
          q, k, v, is_causal=self.causal, implementation=self.attention_impl
      )  # [B, L, N, H]
    out = nn.with_logical_constraint(out, axes)
    out = ShapedDense(
        (width,),
        (HEADS, HEAD_DIM, EMBED),
        (EMBED,),
        kernel_init=nn.initializers.normal(self.out_std),
        num_in_axes=2,
        use_bias=self.out_bias,
        dtype=self.dtype,
        name="out",
    )(
        out
    )  # [B, L, W]
    return out if mask is None else (out, own_kv)


class Mlp(nn.Module):
  """Position-wise MLP: [B, L, W] -> [B, L, W].

  The gated MLPs are `wo(act(wi_gate x) * wi_up x)` without biases; the plain
  "gelu" one is `wo(gelu(wi x))` with biases.

  Attributes:
    hidden: hidden width (see `mlp_hidden_width`).
    mlp_type: one of MLP_TYPES: "glu" (sigmoid-gated), "geglu" (GELU-gated),
      "swiglu" (SiLU-gated) or "gelu" (plain).
    out_std: init std of the output projection.
    dtype: compute dtype.
  """

  hidden: int
  mlp_type: str = "glu"
  out_std: float = INIT_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    check_choice("mlp_type", self.mlp_type, MLP_TYPES)

    use_bias = self.mlp_type == "gelu"

    def dense(features, axes, std, name):
      return nn.Dense(
          features,
          use_bias=use_bias,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(std), axes
          ),
          bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros_init(), axes[-1:]
          ),
          name=name,
      )

    if self.mlp_type == "gelu":
      h = nn.gelu(dense(self.hidden, (EMBED, MLP), INIT_STD, "wi")(x))
    else:
      act = GATE_ACTIVATIONS[self.mlp_type]
      gate = dense(self.hidden, (EMBED, MLP), INIT_STD, "wi_gate")(x)
      up = dense(self.hidden, (EMBED, MLP), INIT_STD, "wi_up")(x)
      h = act(gate) * up
    h = nn.with_logical_constraint(h, (BATCH, LENGTH, MLP))  # [B, L, M]
    return dense(x.shape[-1], (MLP, EMBED), self.out_std, "wo")(h)  # [B, L, W]


class TransformerBlock(nn.Module):
  """Pre-LN transformer block with adaLN-zero conditioning.

  Call as `block(x, c, train)` with x: [B, L, W] and c: [B, Dc] or None;
  returns [B, L, W]. At initialisation it is the identity.

  Attributes:
    num_heads: attention heads.
    mlp_type: see `Mlp`.
    mlp_ratio: see `mlp_hidden_width`.
    use_rope: rotary position embeddings in attention.
    attention_impl: see `Attention`.
    dropout_rate: dropout on the attention and MLP branches before gating,
      one mask per example and channel shared by all positions (the
      reference's `Dropout1d`).
    out_std: init std of the attention and MLP output projections.
    causal: causal attention (see `Attention`).
    cond_type: see `AdaLNModulation`.
    qkv_bias: see `Attention`.
    dtype: compute dtype.
  """

  num_heads: int
  mlp_type: str = "glu"
  mlp_ratio: float = 4.0
  use_rope: bool = True
  attention_impl: str | None = "xla"
  dropout_rate: float = 0.0
  out_std: float = INIT_STD
  cond_type: str = "adaln_zero"
  qkv_bias: bool = False
  causal: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jnp.ndarray,
      c: jnp.ndarray | None,
      train: bool,
      positions: jnp.ndarray | None = None,
      mask: jnp.ndarray | None = None,
      prefix: tuple[jnp.ndarray, jnp.ndarray] | None = None,
  ):
    """x [B, L, W] -> [B, L, W]; with a mask, (x, (k, v)) (see `Attention`)."""
    axes = (BATCH, LENGTH, EMBED)
    x = nn.with_logical_constraint(x, axes)  # [B, L, W]
    width = x.shape[-1]
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = (
        AdaLNModulation(6, self.cond_type, dtype=self.dtype, name="adaln")(
            c, width
        )
    )
    # One mask per (example, channel), shared by every position.
    dropout = nn.Dropout(
        self.dropout_rate, broadcast_dims=(1,), deterministic=not train
    )

    h = modulate(layer_norm(self.dtype, "norm_attn")(x), shift_attn, scale_attn)
    h = Attention(
        self.num_heads,
        use_rope=self.use_rope,
        attention_impl=self.attention_impl,
        out_std=self.out_std,
        qkv_bias=self.qkv_bias,
        causal=self.causal,
        dtype=self.dtype,
        name="attention",
    )(h, positions, mask, prefix)
    kv = None
    if mask is not None:
      h, kv = h
    h = dropout(h)
    x = nn.with_logical_constraint(x + gate_attn * h, axes)

    h = modulate(layer_norm(self.dtype, "norm_mlp")(x), shift_mlp, scale_mlp)
    h = Mlp(
        mlp_hidden_width(width, self.mlp_ratio, self.mlp_type),
        mlp_type=self.mlp_type,
        out_std=self.out_std,
        dtype=self.dtype,
        name="mlp",
    )(h)
    h = dropout(h)
    x = nn.with_logical_constraint(x + gate_mlp * h, axes)  # [B, L, W]
    return x if mask is None else (x, kv)


def block_class(remat: bool) -> type[TransformerBlock]:
  """TransformerBlock, rematerialised (`train` static) when `remat`."""
  if remat:
    # static_argnums counts self as 0: (self, x, c, train).
    return nn.remat(TransformerBlock, static_argnums=(3,))
  return TransformerBlock


def depth_scaled_std(num_layers: int, depth_scaled_init: bool) -> float:
  """Init std of residual-branch outputs: INIT_STD / sqrt(2 * num_layers).

  Each layer adds two branches to the residual stream; scaling their output
  projections keeps the stream's variance independent of depth (GPT-2).
  """
  if depth_scaled_init:
    return INIT_STD / np.sqrt(2 * num_layers)
  return INIT_STD


class Transformer(denoiser.Denoiser):
  """Text denoiser: `logits [B, L, V] = net(z [B, L], t [B], label, train=)`.

  Attributes (`Denoiser`'s fields, here with where dropout and remat apply):
    dropout_rate: dropout on attention and MLP branches (see
      `TransformerBlock`) and, when `embed_dim` is 0, on the token
      embeddings (as the reference).
    remat: rematerialise each block in the backward pass.
    num_layers: number of blocks.
    width: model width W.
    num_heads: attention heads; must divide width.
    mlp_type: one of MLP_TYPES (see `Mlp`).
    mlp_ratio: MLP hidden size relative to width (see `mlp_hidden_width`).
    cond_width: width of the time/label conditioning vector (the reference
      uses width / num_heads).
    cond_type: "adaln_zero" or "adaln" (see `AdaLNModulation`).
    embed_dim: 0 embeds tokens at the model width; E > 0 embeds them E wide
      and projects to the width with a Dense layer (the reference's
      `outside_embed`, used for text8).
    depth_scaled_init: init branch output projections with
      INIT_STD / sqrt(2 * num_layers).
    use_rope: rotary position embeddings; if False, learned absolute position
      embeddings of `max_length` rows are added to the token embeddings.
    max_length: longest sequence; required when use_rope is False.
    attention_impl: "xla", "cudnn" or None (JAX chooses).
    causal: causal attention, each position seeing only those before it
      and itself (the autoregressive baseline); False for denoisers.
    logits_chunk: how the training loss forms the logits (`denoise` always
      returns them whole): -1 chooses by vocabulary size (chunks from 1,024
      values on), 0 forms all [B, L, V] at once, N > 0 forms B x N rows at a
      time from the output head's factors (`head_factors=True`), in the
      forward and again in the backward pass, saving the memory of the full
      logits and their gradient for one extra output-head matmul. See
      `logits_chunk_positions`.
  """

  num_layers: int = 12
  width: int = 768
  num_heads: int = 12
  mlp_type: str = "glu"
  mlp_ratio: float = 4.0
  cond_width: int = 64
  cond_type: str = "adaln_zero"
  embed_dim: int = 0
  depth_scaled_init: bool = True
  use_rope: bool = True
  max_length: int | None = None
  attention_impl: str | None = "xla"
  logits_chunk: int = AUTO_LOGITS_CHUNK
  causal: bool = False

  def logits_chunk_positions(self, batch: int, length: int) -> int:
    """Positions per chunk of the loss's logits for [B, L] input; 0: none."""
    return logits_chunk_positions(
        self.logits_chunk, batch, length, self.vocab_size
    )

  @nn.compact
  def __call__(
      self,
      z: jnp.ndarray,
      t: jnp.ndarray | None,
      label: jnp.ndarray | None = None,
      *,
      train: bool,
      head_factors: bool = False,
      clean: jnp.ndarray | None = None,
      block_size: int | None = None,
      cache: dict[str, jnp.ndarray] | None = None,
      start: jnp.ndarray | None = None,
  ):
    """Logits of the clean tokens.

    Args:
      z: [B, L] int tokens in [0, vocab_size]; vocab_size is MASK.
      t: [B] diffusion time in [0, 1] (ignored if time_features == "none").
      label: [B] int labels in [0, num_classes] or None ("no label").
      train: enables dropout (rng stream "dropout").
      head_factors: return the output head's factors instead of the logits.
      clean: block diffusion's training input: the clean tokens x_0 [B, L];
        the network runs on [z, clean] (2L positions, each half at
        positions 0..L-1) under `block_attention.training_mask` and returns
        the outputs of z's positions.
      block_size: the blocks of `clean` mode.
      cache: block diffusion's sampling input: keys and values {"k", "v"}
        [layers, B, P, N, H] of the clean positions before `start`
        (`block_attention`; {} when nothing is cached); z [B, b] is then
        the block at positions start .. start + b.
      start: int32 scalar, the first position of z in `cache` mode.

    Returns:
      [B, L, vocab_size] float32 logits; with `head_factors`, the tuple
      (features [B, L, W], kernel [W, V], bias [V]) in the compute dtype,
      whose `features @ kernel + bias` cast to float32 are those logits.
      In `cache` mode, (logits [B, b, V], z's keys and values {"k", "v"}
      [layers, B, b, N, H]).
    """
    if z.ndim != 2:
      raise ValueError(
          "Transformer takes text tokens z: [B, L], got shape "
          f"{z.shape}; use 'unet' or 'uvit' for images."
      )
    check_choice("mlp_type", self.mlp_type, MLP_TYPES)
    check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    check_choice("cond_type", self.cond_type, COND_TYPES)
    batch, length = z.shape
    self.logits_chunk_positions(batch, length)  # rejects a bad logits_chunk
    positions = mask = None
    if clean is not None:
      if clean.shape != z.shape or block_size is None:
        raise ValueError(
            "clean mode needs clean tokens of z's shape and a block_size, "
            f"got {clean.shape} for z {z.shape} and block_size={block_size}."
        )
      mask = block_attention.training_mask(length, block_size)  # [2L, 2L]
      positions = jnp.tile(jnp.arange(length), 2)  # [2L]
      z = jnp.concatenate([z, clean], axis=1)  # [B, 2L]
    elif cache is not None:  # {}: nothing cached yet
      positions = start + jnp.arange(length)  # [b]
      cached = cache["k"].shape[2] if cache else 0
      mask = block_attention.cache_mask(cached, length, start)

    c = Conditioning(
        self.cond_width,
        self.num_classes,
        self.time_features,
        dtype=self.dtype,
        name="conditioning",
    )(t, label, batch)

    if self.embed_dim < 0:
      raise ValueError(
          "embed_dim must be 0 (embed at the width) or > 0, got "
          f"{self.embed_dim}."
      )
    x = nn.Embed(
        self.vocab_size + 1,
        self.embed_dim or self.width,  # +1: MASK
        dtype=self.dtype,
        param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(INIT_STD),
            (VOCAB, None if self.embed_dim else EMBED),
        ),
        name="token_embedding",
    )(
        z
    )  # x: [B, L, E or W]
    if self.embed_dim:
      x = nn.Dense(
          self.width,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.lecun_normal(), (None, EMBED)
          ),
          bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros_init(), (EMBED,)
          ),
          name="embedding_projection",
      )(
          x
      )  # x: [B, L, W]
    else:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if not self.use_rope:
      if self.max_length is None or length > self.max_length:
        raise ValueError(
            f"use_rope=False needs max_length >= sequence length {length}, "
            f"got max_length={self.max_length}."
        )
      pos = self.param(
          "position_embedding",
          nn.with_logical_partitioning(
              nn.initializers.normal(INIT_STD), (LENGTH, EMBED)
          ),
          (self.max_length, self.width),
          jnp.float32,
      )
      if positions is None:
        x = x + pos[None, :length].astype(self.dtype)
      else:
        x = x + pos[positions][None].astype(self.dtype)
    x = nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))

    block = block_class(self.remat)
    out_std = depth_scaled_std(self.num_layers, self.depth_scaled_init)
    block_kv = []
    for i in range(self.num_layers):
      layer = block(
          self.num_heads,
          mlp_type=self.mlp_type,
          mlp_ratio=self.mlp_ratio,
          use_rope=self.use_rope,
          attention_impl=self.attention_impl,
          dropout_rate=self.dropout_rate,
          out_std=out_std,
          cond_type=self.cond_type,
          causal=self.causal,
          dtype=self.dtype,
          name=f"block_{i}",
      )
      if mask is None:
        x = layer(x, c, train)
      else:
        prefix = (cache["k"][i], cache["v"][i]) if cache else None
        x, kv = layer(x, c, train, positions, mask, prefix)
        block_kv.append(kv)
    if clean is not None:
      x = x[:, :length]  # the outputs of z's positions

    shift, scale = AdaLNModulation(
        2, self.cond_type, dtype=self.dtype, name="final_adaln"
    )(c, self.width)
    x = modulate(layer_norm(self.dtype, "final_norm")(x), shift, scale)
    out = OutputHead(self.vocab_size, dtype=self.dtype, name="logits")(
        x, factors=head_factors
    )  # [B, L, V] or (x, kernel, bias)
    if cache is None:
      return out
    return out, {
        "k": jnp.stack([k for k, _ in block_kv]),
        "v": jnp.stack([v for _, v in block_kv]),
    }
