"""A denoiser network joined to its diffusion process (MD4 or GenMD4).

The diffusion math lives in `md4.diffusion` as functions of arrays; this
module owns the parameters that math needs (the network's, and GenMD4's
schedule exponents) and the randomness (the `sample` rng stream).

The MD4 loss needs only each target's log-probability. A network that can
hand its output head's factors to the loss (the transformer: a method
`logits_chunk_positions(batch, length)` > 0 and `head_factors=True`) gets
its logits formed in chunks by the cross-entropy (`md4.FactoredLogits`);
`DiffusionModel.denoise`, which samplers call, always returns full logits.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from md4 import sharding
from md4.diffusion import d3pm
from md4.diffusion import genmd4
from md4.diffusion import md4
from md4.diffusion import schedules


class DiffusionModel(nn.Module):
  """Negative ELBO of a batch, and the denoiser and schedule for sampling.

  Attributes:
    network: the denoiser, `logits = network(z, t, label, train=...)`.
    vocab_size: V; the mask token is V.
    data_shape: one example's shape.
    process: "md4", "genmd4" or "d3pm".
    schedule: MD4 masking schedule name, or D3PM beta schedule.
    eps: schedule end-point offset.
    num_steps: 0 for the continuous-time ELBO, else T.
    antithetic: stratified times.
    num_classes: > 0 when the network is class-conditional.
    cond_drop_prob: training-time label dropout (classifier-free guidance).
    power_init: GenMD4 initial exponent.
    t1: GenMD4 start of the diffusion integral.
    transition: D3PM noise, "uniform", "absorbing" or "gaussian".
    hybrid_coeff: D3PM auxiliary cross-entropy weight (lambda).
    d3pm_parameterization: D3PM reverse step, "soft_x0" or
      "posterior_mixture" (`md4.diffusion.d3pm`); the loss and the sampler
      both go through `d3pm_process.log_posterior`, so they always agree.
  """
  network: nn.Module
  vocab_size: int
  data_shape: tuple[int, ...]
  process: str = "md4"
  schedule: str = "linear"
  eps: float = 1e-4
  num_steps: int = 0
  antithetic: bool = True
  num_classes: int = 0
  cond_drop_prob: float = 0.0
  power_init: float = 1.0
  t1: float = 1e-4
  transition: str = "uniform"
  hybrid_coeff: float = 0.0
  d3pm_parameterization: str = "soft_x0"

  @property
  def mask_id(self) -> int:
    return md4.mask_token(self.vocab_size)

  @property
  def num_elements(self) -> int:
    return math.prod(self.data_shape)

  def setup(self):
    if self.process == "genmd4":
      self.power_param = self.param(
          "power_param",
          nn.with_logical_partitioning(
              genmd4.power_param_init(self.power_init), (sharding.VOCAB,)),
          (self.vocab_size,))
    elif self.process == "d3pm":
      self.d3pm_process = d3pm.D3PM(self.transition, self.vocab_size,
                                    self.num_steps, self.schedule,
                                    self.d3pm_parameterization)
    else:
      self.masking = schedules.MaskingSchedule(self.schedule, self.eps)

  def _network_label(self, z, label):
    """The label the network takes: "no label" when none is given."""
    if not self.num_classes:
      return None
    if label is None:
      return jnp.full((z.shape[0],), self.num_classes, jnp.int32)
    return label

  def denoise(self, z, t, label=None, train: bool = False):
    """Logits [B, *data_shape, V] (float32) for tokens z at times t [B]."""
    return self.network(z, t, self._network_label(z, label), train=train)

  def loss_logits_chunk(self, z_shape) -> int:
    """Positions per chunk of the MD4 loss's logits; 0: full logits."""
    chunk_positions = getattr(self.network, "logits_chunk_positions", None)
    if chunk_positions is None or len(z_shape) != 2:
      return 0
    return chunk_positions(*z_shape)

  def loss_denoise(self, z, t, label=None, train: bool = False):
    """What the MD4 loss reads: logits, or `md4.FactoredLogits` to chunk."""
    chunk = self.loss_logits_chunk(z.shape)
    if not chunk:
      return self.denoise(z, t, label, train=train)
    features, kernel, bias = self.network(
        z, t, self._network_label(z, label), train=train, head_factors=True)
    return md4.FactoredLogits(features, kernel, bias, chunk)

  def __call__(self, x, label=None, *, train: bool = False, t=None,
               example_keys=None):
    """Per-example loss terms [B] (nats) and scalar diagnostics.

    Args:
      x: int tokens [B, *data_shape].
      label: optional int [B].
      train: dropout and label dropout on.
      t: optional time draws u [B] in [0, 1), which the process maps to its
        times (MD4: 1 - u); drawn from the `sample` stream when None.
      example_keys: optional per-example keys [B] for the mask draws (makes
        every example's noise independent of how the batch is split).
    """
    rng = example_keys if example_keys is not None else self.make_rng("sample")
    if self.num_classes and train and label is not None:
      label = md4.drop_labels(self.make_rng("sample"), label,
                              self.cond_drop_prob, self.num_classes)
    denoise = lambda z, tt, c: self.denoise(z, tt, c, train=train)
    if self.process == "d3pm":
      return d3pm.nelbo(rng, x, denoise, self.d3pm_process,
                        hybrid_coeff=self.hybrid_coeff, label=label,
                        antithetic=self.antithetic, t=t)
    if self.process == "genmd4":
      return genmd4.nelbo(rng, x, denoise, self.power_param,
                          vocab_size=self.vocab_size, eps=self.eps, t1=self.t1,
                          label=label, antithetic=self.antithetic, t=t)
    loss_denoise = lambda z, tt, c: self.loss_denoise(z, tt, c, train=train)
    terms = md4.nelbo(rng, x, loss_denoise, self.masking,
                      vocab_size=self.vocab_size, label=label,
                      num_steps=self.num_steps, antithetic=self.antithetic,
                      t=t)
    return terms, {}

  def unmask_probability(self, s, t):
    """P(a masked token is revealed with value v between t and s < t).

    MD4: (alpha(s) - alpha(t)) / (1 - alpha(t)), the same for every v,
    shape [B, 1, ..., 1]. GenMD4: one value per v, shape [B, 1, ..., V].
    Multiplied by the denoiser's probabilities it gives the reverse step.
    """
    if self.process == "d3pm":
      raise ValueError("D3PM's reverse step is not an unmasking step; use "
                       "DiffusionModel.reverse_log_probs.")
    expand = (1,) * len(self.data_shape)
    if self.process == "genmd4":
      w = genmd4.powers(self.power_param)  # [V]
      s_b = s.reshape(s.shape + expand + (1,))
      t_b = t.reshape(t.shape + expand + (1,))
      a_s, a_t = genmd4.alpha(w, s_b, self.eps), genmd4.alpha(w, t_b, self.eps)
      return (a_s - a_t) / (1.0 - a_t)  # [B, 1.., V]
    a_s = self.masking.alpha(s).reshape(s.shape + expand + (1,))
    a_t = self.masking.alpha(t).reshape(t.shape + expand + (1,))
    return (a_s - a_t) / (1.0 - a_t)  # [B, 1.., 1]

  def keep_probability(self, x, t):
    """q(z_t = x | x): the chance that token x is still unmasked at t.

    alpha(t) for MD4, alpha_x(t) for GenMD4; [B, ...] for tokens x [B, ...]
    and times t [B].
    """
    if self.process == "d3pm":
      raise ValueError("D3PM does not mask tokens: its forward process "
                       "changes values; use an MD4 or GenMD4 model.")
    t_b = t.reshape(t.shape + (1,) * (x.ndim - 1))  # [B, 1, ...]
    if self.process == "genmd4":
      return genmd4.alpha(genmd4.powers(self.power_param)[x], t_b, self.eps)
    return jnp.broadcast_to(self.masking.alpha(t_b), x.shape)

  def reverse_log_probs(self, z, step, label=None):
    """D3PM: log p(x_{t-1} | x_t = z) over states [B, ..., S] at steps [B]."""
    logits = self.denoise(z, step.astype(jnp.float32) / self.num_steps, label)
    return self.d3pm_process.log_posterior(logits, z, step)


def build_model(config: ml_collections.ConfigDict,
                num_classes: int = 0) -> DiffusionModel:
  """The model a config describes; num_classes comes from the data set."""
  from md4 import networks  # pylint: disable=g-import-not-at-top
  conditional = config.model.class_conditional
  if conditional and num_classes <= 0:
    raise ValueError(
        "config.model.class_conditional=True but the data set "
        f"{config.data.dataset!r} has no labels; set it to False.")
  classes = num_classes if conditional else 0
  network_fields = {k: v for k, v in config.network.items()
                    if k not in ("name", "dtype")}
  network = networks.build_network(
      config.network.name, vocab_size=config.data.vocab_size,
      data_shape=tuple(config.data.data_shape), num_classes=classes,
      dtype=config.network.dtype, **network_fields)
  if config.model.process == "md4":
    schedules.MaskingSchedule(config.model.schedule, config.model.eps)
  if config.model.process == "d3pm":
    d3pm.D3PM(config.model.transition, config.data.vocab_size,
              config.model.num_steps, config.model.schedule,
              config.model.d3pm_parameterization)
  return DiffusionModel(
      network=network, vocab_size=config.data.vocab_size,
      data_shape=tuple(config.data.data_shape), process=config.model.process,
      schedule=config.model.schedule, eps=config.model.eps,
      num_steps=config.model.num_steps, antithetic=config.model.antithetic,
      num_classes=classes, cond_drop_prob=config.model.cond_drop_prob,
      power_init=config.model.power_init, t1=config.model.t1,
      transition=config.model.transition,
      hybrid_coeff=config.model.hybrid_coeff,
      d3pm_parameterization=config.model.d3pm_parameterization)


def init_variables(model: DiffusionModel, rng: jax.Array, batch_size: int = 1,
                   unbox: bool = False):
  """Initial variables from dummy data, compiled (eager init is slow on CPU).

  Args:
    model: the model.
    rng: PRNG key.
    batch_size: of the dummy batch.
    unbox: return plain arrays instead of logically partitioned boxes.
  """

  def init(rng):
    x = jnp.zeros((batch_size,) + tuple(model.data_shape), jnp.int32)
    label = (jnp.zeros((batch_size,), jnp.int32) if model.num_classes
             else None)
    params_rng, sample_rng, dropout_rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "sample": sample_rng,
                            "dropout": dropout_rng}, x, label, train=False)
    return nn.meta.unbox(variables) if unbox else variables

  return jax.jit(init)(rng)
