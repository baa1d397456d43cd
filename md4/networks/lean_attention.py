"""Softmax attention whose gradient keeps only the attention probabilities.

`lean_attention(q, k, v, causal)` is the math of
`jax.nn.dot_product_attention(implementation="xla", is_causal=causal)`
without other masks or bias (float32 softmax), with a hand-written VJP whose only saved [B, N, L, L]
value is the float32 probabilities (autodiff of the XLA version keeps three
such arrays per layer). It computes with the heads before the positions
([B, N, L, H]) and forms the softmax backward's row sum from the output
(`_lean_attention_bwd`), which saves XLA's layout copies and one pass over
the scores. The transformer, U-Net and U-ViT attention use it
with `attention_impl="xla"`.
"""

import functools

import jax
import jax.numpy as jnp


def _heads_first(x):
  """[B, L, N, H] -> [B, N, L, H]: the batched matmuls below then have their
  batch dimensions leading, the layout XLA's dot wants without copies of
  the [B, N, L, S] operands."""
  return jnp.swapaxes(x, 1, 2)


def _attention_logits(q, k, scale):
  """Scaled scores [B, N, L, S] of q [B, N, L, H], k [B, N, S, H], float32+."""
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
  logits = jnp.einsum(
      "bnth,bnsh->bnts", q, k, preferred_element_type=logits_dtype
  )
  return logits * jnp.asarray(scale, logits_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lean_attention(
    q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, causal: bool = False
) -> jnp.ndarray:
  """softmax(q k^T / sqrt(H)) v, keeping one [B, N, L, L] array for backward.

  The math of `jax.nn.dot_product_attention(implementation="xla")` without
  masks or bias (float32 softmax), with a hand-written VJP whose only saved
  [B, N, L, L] value is the float32 probabilities (autodiff of the XLA
  version keeps three such arrays per layer).

  Args:
    q: [B, L, N, H] queries.
    k: [B, S, N, H] keys.
    v: [B, S, N, H] values.
    causal: query i attends to keys j <= i only (masked scores are -inf,
      so their probabilities and gradients are exactly 0).

  Returns:
    [B, L, N, H] in the dtype of v.
  """
  return _lean_attention_fwd(q, k, v, causal)[0]


def _lean_attention_fwd(q, k, v, causal):
  scale = q.shape[-1] ** -0.5
  q, k, v = _heads_first(q), _heads_first(k), _heads_first(v)
  logits = _attention_logits(q, k, scale).astype(jnp.float32)
  if causal:
    length, keys = logits.shape[-2:]
    allowed = jnp.tril(jnp.ones((length, keys), bool))  # [L, S]
    logits = jnp.where(allowed, logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bnts,bnsh->bnth", probs.astype(k.dtype), v)
  return _heads_first(out), (q, k, v, probs, out)


def _lean_attention_bwd(causal, residuals, d_out):
  del causal  # Masked probabilities are 0, so are their gradients.
  q, k, v, probs, out = residuals  # [B, N, *, H]; probs [B, N, L, S] f32
  scale = q.shape[-1] ** -0.5
  d_out = _heads_first(d_out)
  d_v = jnp.einsum("bnts,bnth->bnsh", probs.astype(k.dtype), d_out)
  d_probs = jnp.einsum(
      "bnth,bnsh->bnts", d_out, v, preferred_element_type=jnp.float32
  )
  # Softmax backward: p * (dp - sum_s dp p). The row sum equals
  # sum_h d_out * out (as out = p v and dp = d_out v^T), an [B, N, L, H]
  # product instead of a second pass over the [B, N, L, S] arrays.
  row = jnp.sum(
      d_out.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True
  )
  d_logits = (probs * (d_probs - row) * scale).astype(q.dtype)
  d_q = jnp.einsum("bnts,bnsh->bnth", d_logits, k)
  d_k = jnp.einsum("bnts,bnth->bnsh", d_logits, q)
  return (
      _heads_first(d_q).astype(q.dtype),
      _heads_first(d_k).astype(k.dtype),
      _heads_first(d_v).astype(v.dtype),
  )


lean_attention.defvjp(_lean_attention_fwd, _lean_attention_bwd)
