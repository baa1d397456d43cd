"""The output head and the cross-entropy, formed a chunk of positions at a time.

A denoiser whose last layer is a dense projection to V values can return a
`FactoredLogits` (the head's input and weights) instead of its logits
[B, *data_shape, V]; `target_log_prob` then forms B x chunk rows of logits
at a time, in the forward pass and again in the backward pass (a custom
VJP), so neither the full logits nor their gradient is live at once. The
math is that of the dense layer followed by a float32 log-softmax.

Given `where` (the positions the loss reads: MD4's masked tokens), only
those rows are formed: they are packed to the front within each group of
examples and the chunks past them are skipped, in both passes. At MD4's
average masking rate of one half that halves the head's work; at the
OpenWebText vocabulary the head is most of the train step.
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
def _chunked_log_prob(features, kernel, bias, x, num_live):
  """log softmax(features @ kernel + bias)[x] chunk by chunk.

  Args:
    features: [C, R, D], C chunks of R rows.
    kernel: [D, V].
    bias: [V].
    x: int32 targets [C, R].
    num_live: int32 scalar: only the first `num_live` chunks are formed;
      the others' outputs are 0 and their rows get no gradient (the loss
      does not read them).

  Returns:
    float32 [C, R].
  """
  return _chunked_log_prob_fwd(features, kernel, bias, x, num_live)[0]


def _chunked_log_prob_fwd(features, kernel, bias, x, num_live):
  # A while loop over the live chunks: the loop carries the kernel without
  # copying it (a lax.cond per chunk would pass it into its branch).
  def body(state):
    k, logp, lse = state
    logp_k, lse_k = _chunk_forward(kernel, bias, features[k], x[k])
    return k + 1, logp.at[k].set(logp_k), lse.at[k].set(lse_k)

  zeros = jnp.zeros(x.shape, jnp.float32)  # [C, R]
  _, logp, lse = jax.lax.while_loop(
      lambda state: state[0] < num_live, body, (jnp.int32(0), zeros, zeros)
  )
  return logp, (features, kernel, bias, x, num_live, lse)


def _chunked_log_prob_bwd(residuals, g):
  """Re-forms each live chunk's logits; d logp[x] / d logits = onehot(x) - p."""
  features, kernel, bias, x, num_live, lse = residuals
  vocab = kernel.shape[-1]

  # Operands laid out for the matmuls in the loop (one copy each per step):
  # XLA's CPU dot is slow on a transposed operand inside the loop.
  kernel_t = kernel.T  # [V, D]
  features_t = features.swapaxes(1, 2)  # [C, D, R]
  ones = jnp.ones((features.shape[1],), features.dtype)  # [R]

  def body(state):
    k, d_kernel, d_bias, d_features = state
    f, xc, lse_c, g_c = features[k], x[k], lse[k], g[k]  # [R, D], [R] x 3
    logits = _dense_logits(f, kernel, bias)  # [R, V]
    p = jnp.exp(logits - lse_c[:, None])  # [R, V]
    target = jnp.arange(vocab)[None, :] == xc[:, None]  # [R, V]
    d_logits = (g_c[:, None] * (target.astype(jnp.float32) - p)).astype(
        f.dtype
    )  # [R, V]
    d_f = jnp.dot(d_logits, kernel_t)  # [R, D]
    d_kernel += jnp.dot(
        features_t[k], d_logits, preferred_element_type=jnp.float32
    )
    # The column sum as a matmul: XLA's CPU reduce over rows is slow here.
    d_bias += jnp.dot(ones, d_logits, preferred_element_type=jnp.float32)
    return k + 1, d_kernel, d_bias, d_features.at[k].set(d_f)

  init = (
      jnp.int32(0),
      jnp.zeros(kernel.shape, jnp.float32),
      jnp.zeros(bias.shape, jnp.float32),
      jnp.zeros_like(features),
  )
  _, d_kernel, d_bias, d_features = jax.lax.while_loop(
      lambda state: state[0] < num_live, body, init
  )  # d_features: [C, R, D]
  return (
      d_features,
      d_kernel.astype(kernel.dtype),
      d_bias.astype(bias.dtype),
      None,
      None,
  )


_chunked_log_prob.defvjp(_chunked_log_prob_fwd, _chunked_log_prob_bwd)


def _in_chunks(v, chunk_rows):
  """[G, N, ...] -> [C, G * chunk_rows, ...], zero-padded to C chunks."""
  groups, n = v.shape[:2]
  num_chunks = -(-n // chunk_rows)
  pad = [(0, 0), (0, num_chunks * chunk_rows - n)] + [(0, 0)] * (v.ndim - 2)
  v = jnp.pad(v, pad).reshape((groups, num_chunks, chunk_rows) + v.shape[2:])
  return v.swapaxes(0, 1).reshape(
      (num_chunks, groups * chunk_rows) + v.shape[3:]
  )


def _from_chunks(v, groups, n):
  """[C, G * chunk_rows] -> [G, N]: the inverse of `_in_chunks`."""
  num_chunks = v.shape[0]
  v = v.reshape(num_chunks, groups, -1).swapaxes(0, 1)
  return v.reshape(groups, -1)[:, :n]


def sort_groups(batch: int) -> int:
  """Groups of examples whose scored rows `factored_target_log_prob` packs
  together: gcd(B, devices), so that no group spans two devices of a
  batch-sharded mesh and the packing needs no communication."""
  return math.gcd(batch, jax.device_count())


def factored_target_log_prob(
    logits: FactoredLogits,
    x: jax.Array,
    where: jax.Array | None = None,
) -> jax.Array:
  """log softmax(logits)[x] in float32, forming B x chunk rows at a time.

  With `where`, only the rows the caller reads are formed: within each
  group of examples (`sort_groups`) the rows with `where` True are moved to
  the front (a stable sort), and the chunks past the largest group's count
  of them are skipped in the forward and in the backward pass. For MD4's
  loss (`where` = masked) that forms half of the logits on average. The
  values read are those of the full computation: each row's logits depend
  on its own features only.

  Args:
    logits: the factors; features [B, *data_shape, D].
    x: int targets [B, *data_shape].
    where: optional bool [B, *data_shape], True where the caller reads the
      result; elsewhere the result is 0.

  Returns:
    float32 [B, *data_shape].
  """
  f = logits.features
  batch, dim = f.shape[0], f.shape[-1]
  num_positions = math.prod(f.shape[1:-1])
  chunk = min(logits.chunk, num_positions)
  f = f.reshape(batch, num_positions, dim)
  targets = x.reshape(batch, num_positions).astype(jnp.int32)
  if where is None:
    # Every example is a group: chunk k holds positions [k c, (k + 1) c) of
    # every example, so a batch-sharded mesh stays sharded.
    groups, rows_per_chunk = batch, chunk
  else:
    groups = sort_groups(batch)
    rows_per_chunk = (batch // groups) * chunk  # B x chunk rows a chunk
    read = jnp.broadcast_to(where, x.shape).reshape(groups, -1)  # [G, N]
    order = jnp.argsort(~read, axis=1, stable=True)  # read rows first
    f = jnp.take_along_axis(
        f.reshape(groups, -1, dim), order[..., None], axis=1
    )  # [G, N, D]
    targets = jnp.take_along_axis(targets.reshape(groups, -1), order, axis=1)
  rows = f.shape[1]  # per group
  # Rows up to the largest group's count of read rows are formed.
  most = rows if where is None else read.sum(axis=1).max().astype(jnp.int32)
  num_live = -(-jnp.int32(most) // rows_per_chunk)  # chunks formed
  logp = _chunked_log_prob(
      _in_chunks(f, rows_per_chunk),  # [C, B * chunk, D]
      logits.kernel,
      logits.bias,
      _in_chunks(targets, rows_per_chunk),
      num_live,
  )  # [C, B * chunk]
  logp = _from_chunks(logp, groups, rows)  # [G, N]
  if where is not None:
    logp = jnp.take_along_axis(logp, jnp.argsort(order, axis=1), axis=1)
    logp = jnp.where(read, logp, 0.0)
  return logp.reshape(x.shape)  # [B, *data_shape]


def target_log_prob(
    logits: jax.Array | FactoredLogits,
    x: jax.Array,
    where: jax.Array | None = None,
) -> jax.Array:
  """log softmax(logits)[x] in float32, without a [..., V] one-hot.

  Args:
    logits: [..., V] any float dtype, or `FactoredLogits` (formed in chunks).
    x: int targets [...], values in [0, V).
    where: optional bool [...]: the positions the caller reads; elsewhere
      the result is 0 (factored logits then skip those rows' logits).

  Returns:
    float32 [...].
  """
  if isinstance(logits, FactoredLogits):
    return factored_target_log_prob(logits, x, where)
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [...]
  picked = jnp.take_along_axis(logits, x[..., None].astype(jnp.int32), axis=-1)[
      ..., 0
  ]  # [...]
  logp = picked - lse
  return logp if where is None else jnp.where(where, logp, 0.0)
