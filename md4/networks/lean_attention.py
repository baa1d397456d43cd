"""Softmax attention whose gradient keeps only the attention probabilities.

`lean_attention(q, k, v, causal)` is the math of
`jax.nn.dot_product_attention(implementation="xla", is_causal=causal)`
without other masks or bias (float32 softmax), with a hand-written VJP whose only saved [B, N, L, L]
value is the float32 probabilities (autodiff of the XLA version keeps three
such arrays per layer). The transformer, U-Net and U-ViT attention use it
with `attention_impl="xla"`.
"""

import functools

import jax
import jax.numpy as jnp


def _attention_logits(q, k, scale):
  """Scaled scores [B, N, L, S] of q [B, L, N, H], k [B, S, N, H], float32+."""
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
  logits = jnp.einsum(
      "btnh,bsnh->bnts", q, k, preferred_element_type=logits_dtype
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
  logits = _attention_logits(q, k, scale).astype(jnp.float32)
  if causal:
    length, keys = logits.shape[-2:]
    allowed = jnp.tril(jnp.ones((length, keys), bool))  # [L, S]
    logits = jnp.where(allowed, logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bnts,bsnh->btnh", probs.astype(k.dtype), v)
  return out, (q, k, v, probs)


def _lean_attention_bwd(causal, residuals, d_out):
  del causal  # Masked probabilities are 0, so are their gradients.
  q, k, v, probs = residuals  # probs: [B, N, L, S] float32
  scale = q.shape[-1] ** -0.5
  d_v = jnp.einsum("bnts,btnh->bsnh", probs.astype(k.dtype), d_out)
  d_probs = jnp.einsum("btnh,bsnh->bnts", d_out, v).astype(jnp.float32)
  # Softmax backward: p * (dp - sum(dp * p)).
  d_logits = probs * (d_probs - jnp.sum(d_probs * probs, -1, keepdims=True))
  d_logits = (d_logits * scale).astype(q.dtype)  # [B, N, L, S]
  d_q = jnp.einsum("bnts,bsnh->btnh", d_logits, k)
  d_k = jnp.einsum("bnts,btnh->bsnh", d_logits, q)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


lean_attention.defvjp(_lean_attention_fwd, _lean_attention_bwd)
