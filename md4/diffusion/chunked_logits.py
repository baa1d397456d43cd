"""The output head and the cross-entropy, formed a chunk of positions at a time.

A denoiser whose last layer is a dense projection to V values can return a
`FactoredLogits` (the head's input and weights) instead of its logits
[B, *data_shape, V]; `target_log_prob` then forms B x chunk rows of logits
at a time, in the forward pass and again in the backward pass (a custom
VJP), so neither the full logits nor their gradient is live at once. The
math is that of the dense layer followed by a float32 log-softmax.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class FactoredLogits:
  """Logits not yet formed: (features @ kernel + bias) cast to float32.

  A denoiser whose last layer is a dense projection to V values can return
  this instead of its logits [B, *data_shape, V]; `target_log_prob` then
  forms the logits of `chunk` positions (B x chunk rows) at a time, in the
  forward and again in the backward pass, so that neither the full logits
  nor their gradient is live at once. The math is that of the dense layer
  followed by a float32 log-softmax.

  Attributes:
    features: [B, *data_shape, D], the output layer's input (compute dtype).
    kernel: [D, V] in the compute dtype.
    bias: [V] in the compute dtype.
    chunk: positions per chunk (> 0); the last chunk is padded.
  """

  features: jax.Array
  kernel: jax.Array
  bias: jax.Array
  chunk: int

  def __post_init__(self):
    if self.chunk <= 0:
      raise ValueError(f"FactoredLogits.chunk must be > 0, got {self.chunk}.")


def _dense_logits(features, kernel, bias):
  """features [..., D] @ kernel [D, V] + bias, as a dense layer, in float32."""
  return (jnp.dot(features, kernel) + bias).astype(jnp.float32)  # [..., V]


def _chunk_forward(kernel, bias, f, x):
  """One chunk's log softmax[x] and logsumexp: f [R, D], x [R] -> [R], [R]."""
  logits = _dense_logits(f, kernel, bias)  # [R, V]
  lse = jax.nn.logsumexp(logits, axis=-1)  # [R]
  picked = jnp.take_along_axis(logits, x[:, None], axis=-1)[:, 0]  # [R]
  return picked - lse, lse


@jax.custom_vjp
def _chunked_log_prob(features, kernel, bias, x):
  """log softmax(features @ kernel + bias)[x] chunk by chunk.

  Args:
    features: [C, R, D], C chunks of R rows.
    kernel: [D, V].
    bias: [V].
    x: int32 targets [C, R].

  Returns:
    float32 [C, R].
  """
  return _chunked_log_prob_fwd(features, kernel, bias, x)[0]


def _chunked_log_prob_fwd(features, kernel, bias, x):
  logp, lse = jax.lax.map(
      lambda fx: _chunk_forward(kernel, bias, *fx), (features, x)
  )  # [C, R]
  return logp, (features, kernel, bias, x, lse)


def _chunked_log_prob_bwd(residuals, g):
  """Re-forms each chunk's logits; d logp[x] / d logits = onehot(x) - p."""
  features, kernel, bias, x, lse = residuals
  vocab = kernel.shape[-1]

  def chunk_grads(acc, inputs):
    f, xc, lse_c, g_c = inputs  # [R, D], [R], [R], [R]
    logits = _dense_logits(f, kernel, bias)  # [R, V]
    p = jnp.exp(logits - lse_c[:, None])  # [R, V]
    target = jnp.arange(vocab)[None, :] == xc[:, None]  # [R, V]
    d_logits = (g_c[:, None] * (target.astype(jnp.float32) - p)).astype(
        f.dtype
    )  # [R, V]
    d_f = jnp.dot(d_logits, kernel.T)  # [R, D]
    d_kernel, d_bias = acc
    d_kernel += jnp.dot(f.T, d_logits, preferred_element_type=jnp.float32)
    d_bias += d_logits.astype(jnp.float32).sum(axis=0)
    return (d_kernel, d_bias), d_f

  zeros = (
      jnp.zeros(kernel.shape, jnp.float32),
      jnp.zeros(bias.shape, jnp.float32),
  )
  (d_kernel, d_bias), d_features = jax.lax.scan(
      chunk_grads, zeros, (features, x, lse, g)
  )  # d_features: [C, R, D]
  return (
      d_features,
      d_kernel.astype(kernel.dtype),
      d_bias.astype(bias.dtype),
      None,
  )


_chunked_log_prob.defvjp(_chunked_log_prob_fwd, _chunked_log_prob_bwd)


def factored_target_log_prob(
    logits: FactoredLogits,
    x: jax.Array,
) -> jax.Array:
  """log softmax(logits)[x] in float32, forming B x chunk rows at a time.

  Args:
    logits: the factors; features [B, *data_shape, D].
    x: int targets [B, *data_shape].

  Returns:
    float32 [B, *data_shape].
  """
  f = logits.features
  batch, dim = f.shape[0], f.shape[-1]
  num_positions = math.prod(f.shape[1:-1])
  chunk = min(logits.chunk, num_positions)
  num_chunks = -(-num_positions // chunk)
  pad = num_chunks * chunk - num_positions
  # Chunks run along the positions, so a batch-sharded mesh stays sharded.
  f = jnp.pad(f.reshape(batch, num_positions, dim), ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(
      x.reshape(batch, num_positions).astype(jnp.int32), ((0, 0), (0, pad))
  )
  f = f.reshape(batch, num_chunks, chunk, dim).swapaxes(0, 1)  # [C, B, c, D]
  targets = targets.reshape(batch, num_chunks, chunk).swapaxes(0, 1)
  logp = _chunked_log_prob(
      f.reshape(num_chunks, batch * chunk, dim),
      logits.kernel,
      logits.bias,
      targets.reshape(num_chunks, batch * chunk),
  )  # [C, B * c]
  logp = logp.reshape(num_chunks, batch, chunk).swapaxes(0, 1)  # [B, C, c]
  logp = logp.reshape(batch, num_chunks * chunk)[:, :num_positions]
  return logp.reshape(x.shape)  # [B, *data_shape]


def target_log_prob(
    logits: jax.Array | FactoredLogits,
    x: jax.Array,
) -> jax.Array:
  """log softmax(logits)[x] in float32, without a [..., V] one-hot.

  Args:
    logits: [..., V] any float dtype, or `FactoredLogits` (formed in chunks).
    x: int targets [...], values in [0, V).

  Returns:
    float32 [...].
  """
  if isinstance(logits, FactoredLogits):
    return factored_target_log_prob(logits, x)
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [...]
  picked = jnp.take_along_axis(logits, x[..., None].astype(jnp.int32), axis=-1)[
      ..., 0
  ]  # [...]
  return picked - lse
