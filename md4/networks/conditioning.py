"""Conditioning vector shared by every denoiser: diffusion time and class label.

`Conditioning` turns `t: [B]` and an optional `label: [B]` into one vector per
example, `c: [B, cond_width]`, as the reference MD4 code does:

    c = Dense(cond_width)(silu(Dense(4 * cond_width)(
            concat[sinusoidal(1000 * t), label_embedding(label)])))

(the label part only for class-conditional networks; without time features
the label embedding is `c` itself).

The label table has `num_classes + 1` rows; row `num_classes` is the reserved
"no label" id that classifier-free guidance trains and samples with. A missing
label (`label=None`) means "no label" for every example.

When there is nothing to condition on (`time_features == "none"` and
`num_classes == 0`) the module returns None and each network decides what an
unconditional block looks like.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from md4.sharding import COND
from md4.sharding import COND_IN

TIME_FEATURES = ("t", "none")

# Diffusion time lives in [0, 1]; sinusoidal features were designed for integer
# timesteps in [0, 1000], so t is stretched to that range first.
TIME_SCALE = 1000.0
# Hidden width of the conditioning MLP, in multiples of cond_width.
HIDDEN_MULT = 4


def sinusoidal_features(
    t: jnp.ndarray, dim: int, max_period: float = 10_000.0
) -> jnp.ndarray:
  """Transformer-style sinusoidal features of a batch of scalars.

  Args:
    t: [B] float values (already scaled, e.g. 1000 * diffusion time).
    dim: number of features; must be even (half cosines, half sines).
    max_period: the longest wavelength.

  Returns:
    [B, dim] float32 features `[sin(t * f_i), cos(t * f_i)]` with frequencies
    `f_i` spaced geometrically from 1 down to exactly 1 / max_period (the
    DDPM / reference MD4 convention: `f_i = max_period ** (-i / (dim/2 - 1))`).
  """
  if dim % 2 or dim < 4:
    raise ValueError(
        f"sinusoidal feature dim must be even and >= 4, got {dim}."
    )
  half = dim // 2
  freqs = np.exp(-np.log(max_period) * np.arange(half) / (half - 1))  # [D/2]
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, dim/2]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)  # [B, dim]


def check_time_features(time_features: str) -> None:
  """Raises a ValueError unless `time_features` is one of TIME_FEATURES."""
  if time_features not in TIME_FEATURES:
    raise ValueError(
        f"time_features must be one of {TIME_FEATURES}, got {time_features!r}."
    )


class Conditioning(nn.Module):
  """Time and label embedding: `(t [B], label [B] | None) -> c [B, cond_width]`.

  Attributes:
    cond_width: width of the conditioning vector; also the number of
      sinusoidal time features (so it must be even).
    num_classes: number of class labels; 0 means unconditional on labels.
    time_features: "t" to condition on diffusion time, "none" to ignore it.
    dtype: compute dtype; parameters are float32.
  """

  cond_width: int
  num_classes: int = 0
  time_features: str = "t"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, t: jnp.ndarray | None, label: jnp.ndarray | None, batch_size: int
  ) -> jnp.ndarray | None:
    """Returns `c: [B, cond_width]`, or None when there is nothing to embed.

    Args:
      t: [B] (or a scalar, broadcast to [B]) diffusion time in [0, 1]; ignored
        when `time_features == "none"`.
      label: [B] int class ids in [0, num_classes], or None for "no label".
      batch_size: B, needed when only a missing label is embedded.
    """
    check_time_features(self.time_features)
    if self.num_classes < 0:
      raise ValueError(f"num_classes must be >= 0, got {self.num_classes}.")
    if label is not None and self.num_classes == 0:
      raise ValueError(
          "a label was passed but num_classes == 0; set num_classes > 0 for a "
          "class-conditional network or pass label=None."
      )

    label_emb = None
    if self.num_classes > 0:
      no_label = self.num_classes  # the reserved "no label" id
      if label is None:
        label = jnp.full((batch_size,), no_label, jnp.int32)
      label = jnp.asarray(label)
      if label.shape != (batch_size,):
        raise ValueError(
            f"label must have shape [B]=({batch_size},), got {label.shape}."
        )
      label_emb = nn.Embed(
          self.num_classes + 1,
          self.cond_width,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          embedding_init=nn.with_logical_partitioning(
              nn.initializers.normal(stddev=1.0), (None, COND)
          ),
          name="label_embedding",
      )(
          label
      )  # [B, Dc]

    if self.time_features == "none":
      return label_emb  # [B, Dc] or None
    if t is None:
      raise ValueError('t is None but time_features == "t"; pass t: [B].')
    t = jnp.asarray(t, jnp.float32)
    if t.ndim > 1:
      raise ValueError(f"t must have shape [B], got {t.shape}.")
    t = jnp.broadcast_to(t, (batch_size,))  # t: [B]
    feats = sinusoidal_features(TIME_SCALE * t, self.cond_width)  # [B, Dc]
    if label_emb is not None:
      feats = jnp.concatenate(
          [feats, label_emb.astype(feats.dtype)], axis=-1
      )  # [B, 2 Dc]
    c = self._dense(HIDDEN_MULT * self.cond_width, "time_mlp_0")(feats)
    return self._dense(self.cond_width, "time_mlp_1")(nn.silu(c))  # [B, Dc]

  def _dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (COND_IN, COND)
        ),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros_init(), (COND,)
        ),
        name=name,
    )
