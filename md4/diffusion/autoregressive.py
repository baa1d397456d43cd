"""The autoregressive baseline: exact next-token likelihood, no diffusion.

A causal network reads the sequence shifted right by one, with the start
token V (the id that is the mask token for the diffusion processes) in
front, and predicts each token from those before it:

  -log p(x) = - sum_{i=1}^{N} log p(x_i | x_{<i}),
  p(. | x_{<i}) = softmax(network([V, x_1, ..., x_{N-1}])_i).

The loss is this negative log-likelihood itself (exact: no time draws, no
Monte-Carlo estimate), in nats per example, so the same `bits_per_dim`,
perplexity and `md4.evaluate` apply. Positions are the flattened data
positions in order; the network must attend causally and take no time
(`check_network`). Samples are drawn left to right, one token per network
call (`md4.sampling.autoregressive`).
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from md4.diffusion import chunked_logits
from md4.diffusion import process as process_lib


@dataclasses.dataclass(frozen=True)
class Autoregressive(process_lib.Process):
  """Next-token prediction with a causal transformer (this module)."""

  name: ClassVar[str] = "autoregressive"
  summary: ClassVar[str] = (
      "next-token baseline: exact likelihood, causal transformer"
  )
  capabilities: ClassVar[frozenset[str]] = frozenset({process_lib.NEXT_TOKEN})
  default_sampler: ClassVar[str] = "autoregressive"
  uses_time_draws: ClassVar[bool] = False
  supports_loss_mask: ClassVar[bool] = True

  @classmethod
  def check_network(cls, network_config: ml_collections.ConfigDict) -> None:
    name = network_config.get("name")
    if not network_config.get("causal", False):
      raise ValueError(
          "config.model.process='autoregressive' needs a causal network, "
          f"got config.network.name={name!r} with causal attention off; "
          "set config.network.name='transformer' and "
          "config.network.causal=True."
      )
    if network_config.get("time_features", "t") != "none":
      raise ValueError(
          "config.model.process='autoregressive' has no diffusion time; set "
          "config.network.time_features='none'."
      )

  @property
  def start_token(self) -> int:
    return self.vocab_size

  def inputs(self, x: jax.Array) -> jax.Array:
    """The network's input: x shifted right by one, start token first."""
    flat = x.reshape(x.shape[0], -1)  # [B, N]
    start = jnp.full((x.shape[0], 1), self.start_token, x.dtype)
    return jnp.concatenate([start, flat[:, :-1]], 1).reshape(x.shape)

  def nelbo(
      self, params, rng, x, denoise, *, label, antithetic, t, loss_mask=None
  ):
    """The exact negative log-likelihood; rng, antithetic and t unused.

    With `loss_mask` (True: scored) only the scored tokens' terms count:
    for a scored prefix followed by padding, the exact -log p(prefix).
    """
    del params, rng, antithetic, t
    time = jnp.zeros((x.shape[0],), jnp.float32)
    logits = denoise(self.inputs(x), time, label, factored=True)
    log_p = chunked_logits.target_log_prob(logits, x)  # [B, ...]
    if loss_mask is not None:
      log_p = jnp.where(loss_mask, log_p, 0.0)
    nll = -log_p.reshape(x.shape[0], -1).sum(-1)  # [B]
    return {"loss": nll}, {}
