"""Block diffusion (BD3-LM; Arriola et al., ICLR 2025).

A sequence of L tokens is cut into L / b blocks x^1, ..., x^K of b tokens.
The model is autoregressive over blocks and a masked diffusion within each:

  -log p(x) <= sum_k NELBO_MD4(x^k | x^{<k}),

each block masked with its own time t_k (one draw per block) and denoised
given the clean blocks before it. With the MD4 schedule alpha(t) the bound
of block k is MD4's (`md4.diffusion.masked`):

  int_0^1 alpha'(t) / (1 - alpha(t)) E_q [ sum_{i in block k, z_t^i = MASK}
      log mu_theta(z_t^k, x^{<k}, t)_i[x_i] ] dt
  + b alpha(1) log V + b (1 - alpha(0)) log V,

so block size L is MD4's bound, and block size 1 with eps = 0 is the exact
autoregressive negative log-likelihood (one token, masked with probability
1 - alpha(t) and weighted by -alpha'/(1 - alpha): the integral of -alpha'
is 1).

Training runs every block in one network pass over [x_t, x_0] (2L
positions) with the block-causal mask of `md4.networks.block_attention`:
noised block k sees itself and the clean blocks before it. Time draws are
one per (example, block), stratified over the batch's B x K blocks as
BD3-LM does (antithetic); given draws u [B] (evaluation with fixed times)
become u_k = (u + k / K) mod 1, stratified within the example. With one
block both are MD4's draws, so block size L gives MD4's loss draw for draw.

The clipped noise-rate schedule (BD3-LM Sec. 5) trains on times drawn in
[clip_min, clip_max] instead of [0, 1] (with the linear schedule the time
is the masking rate 1 - alpha), which lowers the gradient variance; it is
a training objective, not a bound, so it applies only with `train=True`:
evaluation (`md4.evaluate`) always gets the unclipped bound.

The network must be a bidirectional transformer without time input
(BD3-LM's `time_conditioning: False`): each block has its own time, and
the network's adaLN takes one per example (`check_network`).
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from md4 import fields
from md4.diffusion import chunked_logits
from md4.diffusion import common
from md4.diffusion import masked
from md4.diffusion import process as process_lib
from md4.diffusion import schedules
from md4.networks import block_attention


def block_draws(
    rng: jax.Array | None,
    t: jax.Array | None,
    batch_size: int,
    num_blocks: int,
    antithetic: bool,
) -> jax.Array:
  """Draws u [B, K] in [0, 1): one per block (see the module docstring)."""
  if t is not None:
    offsets = jnp.arange(num_blocks, dtype=jnp.float32) / num_blocks
    return jnp.mod(t[:, None] + offsets[None], 1.0)
  u = common.sample_times(rng, batch_size * num_blocks, antithetic)
  return u.reshape(batch_size, num_blocks)


def per_token(v: jax.Array, block_size: int) -> jax.Array:
  """[B, K] per-block values -> [B, K * b], each repeated over its block."""
  return jnp.repeat(v, block_size, axis=1)


@dataclasses.dataclass(frozen=True)
class BlockDiffusion(process_lib.Process):
  """Block diffusion with MD4 within blocks (this module).

  Attributes:
    block_size: b, tokens per block; divides L.
    schedule: the MD4 masking schedule within a block.
    eps: alpha stays in [eps, 1 - eps].
    clip_min: training times are drawn in [clip_min, clip_max] (the clipped
      schedule; 0 and 1: unclipped).
    clip_max: see clip_min.
  """

  block_size: int = 16
  schedule: str = "linear"
  eps: float = 1e-4
  clip_min: float = 0.0
  clip_max: float = 1.0

  name: ClassVar[str] = "block_diffusion"
  summary: ClassVar[str] = (
      "block diffusion: MD4 within blocks, autoregressive over blocks, KV"
      " cache (BD3-LM, Arriola et al., 2025)"
  )
  FIELDS: ClassVar[tuple[fields.Field, ...]] = (
      fields.Field(
          "model.block_diffusion.block_size",
          16,
          "Tokens per block; divides the sequence length (L: MD4, 1: "
          "autoregressive).",
          low=1,
      ),
      fields.Field(
          "model.block_diffusion.schedule",
          "linear",
          "Masking schedule within a block: linear, cosine or polyK.",
      ),
      fields.Field(
          "model.block_diffusion.eps",
          1e-4,
          "alpha(t) stays in [eps, 1 - eps].",
          low=0.0,
          high=0.5,
          high_open=True,
      ),
      fields.Field(
          "model.block_diffusion.clip_min",
          0.0,
          "Training times are drawn in [clip_min, clip_max] (BD3-LM's "
          "clipped schedule; evaluation is unclipped).",
          low=0.0,
          high=1.0,
      ),
      fields.Field(
          "model.block_diffusion.clip_max",
          1.0,
          "Upper end of the training times (see clip_min).",
          low=0.0,
          high=1.0,
          low_open=True,
      ),
  )
  capabilities: ClassVar[frozenset[str]] = frozenset({process_lib.BLOCKS})
  default_sampler: ClassVar[str] = "block"
  train_dependent: ClassVar[bool] = True

  def __post_init__(self):
    if len(self.data_shape) != 1:
      raise ValueError(
          "config.model.process='block_diffusion' takes text sequences "
          f"(config.data.data_shape of one length), got {self.data_shape}."
      )
    block_attention.check_block_size(
        self.data_shape[0],
        self.block_size,
        "config.model.block_diffusion.block_size",
    )
    if not 0.0 <= self.clip_min < self.clip_max <= 1.0:
      raise ValueError(
          "config.model.block_diffusion.clip_min and clip_max must satisfy "
          f"0 <= clip_min < clip_max <= 1, got {self.clip_min} and "
          f"{self.clip_max}."
      )
    schedules.checked(self.schedule, self.eps, self.name)

  @classmethod
  def check_network(cls, network_config: ml_collections.ConfigDict) -> None:
    name = network_config.get("name")
    if name != "transformer" or network_config.get("causal", False):
      raise ValueError(
          "config.model.process='block_diffusion' needs the bidirectional "
          f"transformer, got config.network.name={name!r} (causal="
          f"{network_config.get('causal', False)}); set "
          "config.network.name='transformer' and config.network.causal=False."
      )
    if network_config.get("time_features", "t") != "none":
      raise ValueError(
          "config.model.process='block_diffusion' gives every block its own "
          "time and the network takes one per example; set "
          "config.network.time_features='none' (BD3-LM's networks are not "
          "time-conditioned either)."
      )

  @property
  def masking(self) -> schedules.MaskingSchedule:
    return schedules.MaskingSchedule(self.schedule, self.eps)

  @property
  def num_blocks(self) -> int:
    return self.data_shape[0] // self.block_size

  def times(self, u: jax.Array, train: bool) -> jax.Array:
    """Times [B, K] in (0, 1] of draws u; clipped when training."""
    tau = common.time_of_draw(u)
    if train and (self.clip_min, self.clip_max) != (0.0, 1.0):
      tau = self.clip_min + (self.clip_max - self.clip_min) * tau
    return tau

  def nelbo(
      self, params, rng, x, denoise, *, label, antithetic, t, train=False
  ):
    del params
    t_rng, z_rng = common.time_and_mask_rngs(rng, t)
    u = block_draws(t_rng, t, x.shape[0], self.num_blocks, antithetic)
    return self.nelbo_of_draws(z_rng, x, u, denoise, label=label, train=train)

  def nelbo_of_draws(self, rng, x, u, denoise, *, label=None, train=False):
    """`nelbo` at given per-block draws u [B, K] in [0, 1); rng (one key,
    or one per example) draws the masks."""
    batch, length = x.shape
    schedule = self.masking
    z_rng = rng
    tau = self.times(u, train)  # [B, K]
    weight = per_token(-schedule.loss_weight(tau), self.block_size)  # [B, L]
    alpha = per_token(schedule.alpha(tau), self.block_size)  # [B, L]
    z_t = common.forward_sample(z_rng, x, alpha, self.mask_id)  # [B, L]
    logits = denoise(
        z_t,
        tau.mean(-1),
        label,
        factored=True,
        clean=x,
        block_size=self.block_size,
    )  # [B, L, V] or FactoredLogits
    is_masked = z_t == self.mask_id  # [B, L]
    logp = chunked_logits.target_log_prob(logits, x, is_masked)  # [B, L]
    ce = jnp.where(is_masked, -logp, 0.0)  # [B, L]
    loss_diff = (weight * ce).sum(-1)  # [B]
    ones = jnp.ones((batch,), jnp.float32)
    loss_prior = masked.prior_loss(schedule, length, self.vocab_size) * ones
    loss_recon = masked.recon_loss(schedule, length, self.vocab_size) * ones
    terms = {
        "loss": loss_diff + loss_recon + loss_prior,
        "loss_diff": loss_diff,
        "loss_recon": loss_recon,
        "loss_prior": loss_prior,
    }
    return terms, {}

  def unmask_probability(self, params, s, t):
    """Within a block: (alpha(s) - alpha(t)) / (1 - alpha(t)), [B, 1]."""
    del params
    a_s, a_t = self.masking.alpha(s), self.masking.alpha(t)
    return common.reveal_probability(a_s, a_t)[:, None]

  def alpha(self, params):
    del params
    return self.masking.alpha
