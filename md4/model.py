"""A denoiser network joined to a diffusion process (`md4.diffusion`).

The math lives in the process (a frozen dataclass of arrays and formulas);
this module owns the parameters (the network's, and the process's own, such
as GenMD4's schedule exponents) and the randomness (the `sample` rng
stream). Nothing here depends on which process it is.

A loss that only needs each target's log-probability asks the denoiser for
`factored=True`: a network that can hand its output head's factors to the
loss (the transformer: a method `logits_chunk_positions(batch, length)` > 0
and `head_factors=True`) gets its logits formed in chunks by the
cross-entropy (`chunked_logits.FactoredLogits`); `DiffusionModel.denoise`,
which samplers call, always returns full logits.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from md4 import diffusion
from md4.diffusion import chunked_logits
from md4.diffusion import common
from md4.diffusion import process as process_lib


class DiffusionModel(nn.Module):
  """Negative ELBO of a batch, and the denoiser and process for sampling.

  Attributes:
    network: the denoiser, `logits = network(z, t, label, train=...)`.
    process: the diffusion process (`md4.diffusion.process.Process`).
    num_classes: > 0 when the network is class-conditional.
    cond_drop_prob: training-time label dropout (classifier-free guidance).
    antithetic: stratified time draws (processes that draw times).
  """

  network: nn.Module
  process: process_lib.Process
  num_classes: int = 0
  cond_drop_prob: float = 0.0
  antithetic: bool = True

  @property
  def vocab_size(self) -> int:
    return self.process.vocab_size

  @property
  def data_shape(self) -> tuple[int, ...]:
    return tuple(self.process.data_shape)

  @property
  def mask_id(self) -> int:
    return self.process.mask_id

  @property
  def num_elements(self) -> int:
    return math.prod(self.data_shape)

  def setup(self):
    self.process_params = {
        name: self.param(
            name, nn.with_logical_partitioning(spec.init, spec.axes), spec.shape
        )
        for name, spec in self.process.param_specs().items()
    }

  def _network_label(self, z, label):
    """The label the network takes: "no label" when none is given."""
    if not self.num_classes:
      return None
    if label is None:
      return jnp.full((z.shape[0],), self.num_classes, jnp.int32)
    return label

  def denoise(
      self,
      z,
      t,
      label=None,
      train: bool = False,
      factored: bool = False,
      **inputs,
  ):
    """Logits [B, *data_shape, V] (float32) for tokens z at times t [B].

    With `factored`, a `chunked_logits.FactoredLogits` where the network
    can factor its output head for this input (else the logits). `inputs`
    go to the network as they are (block diffusion's `clean`, `block_size`,
    `cache`, `start`: `md4.networks.transformer.Transformer`).
    """
    chunk = self.loss_logits_chunk(z.shape) if factored else 0
    label = self._network_label(z, label)
    if not chunk:
      return self.network(z, t, label, train=train, **inputs)
    features, kernel, bias = self.network(
        z, t, label, train=train, head_factors=True, **inputs
    )
    return chunked_logits.FactoredLogits(features, kernel, bias, chunk)

  def loss_logits_chunk(self, z_shape) -> int:
    """Positions per chunk of the loss's logits; 0: full logits."""
    chunk_positions = getattr(self.network, "logits_chunk_positions", None)
    if chunk_positions is None or len(z_shape) != 2:
      return 0
    return chunk_positions(*z_shape)

  def __call__(
      self,
      x,
      label=None,
      *,
      train: bool = False,
      t=None,
      example_keys=None,
      loss_mask=None,
  ):
    """Per-example loss terms [B] (nats) and scalar diagnostics.

    Args:
      x: int tokens [B, *data_shape].
      label: optional int [B].
      train: dropout and label dropout on.
      t: optional time draws u [B] in [0, 1), which the process maps to its
        times (MD4: 1 - u); drawn from the `sample` stream when None.
      example_keys: optional per-example keys [B] for the noise draws
        (makes every example's noise independent of how the batch is split).
      loss_mask: optional bool [B, *data_shape], True where a token is
        scored; the others are never noised nor scored (processes with
        `supports_loss_mask`).
    """
    rng = example_keys if example_keys is not None else self.make_rng("sample")
    if self.num_classes and train and label is not None:
      label = common.drop_labels(
          self.make_rng("sample"), label, self.cond_drop_prob, self.num_classes
      )

    def denoise(z, tt, c, factored=False, **inputs):
      return self.denoise(z, tt, c, train=train, factored=factored, **inputs)

    extra = {"train": train} if self.process.train_dependent else {}
    if loss_mask is not None:
      if not self.process.supports_loss_mask:
        raise ValueError(
            f"config.model.process={self.process.name!r} has no loss mask "
            "(padded positions excluded from the bound); evaluate padded "
            "examples with an md4 model, or pack them (--packing=packed)."
        )
      extra["loss_mask"] = loss_mask
    return self.process.nelbo(
        self.process_params,
        rng,
        x,
        denoise,
        label=label,
        antithetic=self.antithetic,
        t=t,
        **extra,
    )

  def unmask_probability(self, s, t):
    """The process's reveal probability (UNMASKING processes)."""
    return self.process.unmask_probability(self.process_params, s, t)

  def keep_probability(self, x, t):
    """q(z_t = x | x) under the process (UNMASKING processes)."""
    return self.process.keep_probability(self.process_params, x, t)


def process_params(model: DiffusionModel, params) -> dict[str, jax.Array]:
  """The process's own parameters out of the model's params tree."""
  return {name: params[name] for name in model.process.param_specs()}


def build_model(
    config: ml_collections.ConfigDict, num_classes: int = 0
) -> DiffusionModel:
  """The model a config describes; num_classes comes from the data set."""
  from md4 import networks  # pylint: disable=g-import-not-at-top

  conditional = config.model.class_conditional
  if conditional and num_classes <= 0:
    raise ValueError(
        "config.model.class_conditional=True but the data set "
        f"{config.data.dataset!r} has no labels; set it to False."
    )
  classes = num_classes if conditional else 0
  process = diffusion.from_config(config)
  process.check_network(config.network)
  network_fields = {
      k: v for k, v in config.network.items() if k not in ("name", "dtype")
  }
  network = networks.build_network(
      config.network.name,
      vocab_size=config.data.vocab_size,
      data_shape=tuple(config.data.data_shape),
      num_classes=classes,
      dtype=config.network.dtype,
      **network_fields,
  )
  return DiffusionModel(
      network=network,
      process=process,
      num_classes=classes,
      cond_drop_prob=config.model.cond_drop_prob,
      antithetic=config.model.antithetic,
  )


def init_variables(
    model: DiffusionModel,
    rng: jax.Array,
    batch_size: int = 1,
    unbox: bool = False,
):
  """Initial variables from dummy data, compiled (eager init is slow on CPU).

  Args:
    model: the model.
    rng: PRNG key.
    batch_size: of the dummy batch.
    unbox: return plain arrays instead of logically partitioned boxes.
  """

  def init(rng):
    x = jnp.zeros((batch_size,) + tuple(model.data_shape), jnp.int32)
    label = jnp.zeros((batch_size,), jnp.int32) if model.num_classes else None
    params_rng, sample_rng, dropout_rng = jax.random.split(rng, 3)
    variables = model.init(
        {"params": params_rng, "sample": sample_rng, "dropout": dropout_rng},
        x,
        label,
        train=False,
    )
    return nn.meta.unbox(variables) if unbox else variables

  return jax.jit(init)(rng)
