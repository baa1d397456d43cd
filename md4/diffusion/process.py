"""The interface of a diffusion process, as the model, training and samplers
see it.

A process is a frozen dataclass built from its own config section
`model.<name>` (`from_config`), registered by name in `md4.diffusion`. It
owns the math of one family: the negative ELBO of a batch given a denoiser,
its learnable parameters if any (GenMD4's schedule exponents), and what its
samplers need. `md4.model.DiffusionModel` is a network plus a process; no
library code compares process names, it asks the process:

* `capabilities`: what the process offers samplers. UNMASKING: its reverse
  step reveals masked tokens, so `unmask_probability` and
  `keep_probability` exist (md4's unmasking samplers apply);
  VALUE_INDEPENDENT: its alpha(t) is the same for every token value
  (`alpha`); TRANSITION_CHAIN: a T-step chain of value changes
  (`num_steps`, `prior_sample`, `log_posterior`); NEXT_TOKEN: left-to-right
  generation, one token per network call; BLOCKS: block diffusion, each
  block masked-diffused given the clean blocks before it (`block_size`,
  `masking`; the denoiser takes `clean`/`cache` network inputs).
* `default_sampler`: the sampler that periodic samples and `md4.sample` use
  when none is named.
* `uses_time_draws`: the bound draws times (it reads `model.antithetic`).
* `check_network(network_config)`: what the process needs of the network
  (the autoregressive process: causal attention, no time input).
* `train_dependent`: its `nelbo` takes `train` (block diffusion's clipped
  noise-rate schedule is a training objective; evaluation gets the bound).
* `supports_loss_mask`: its `nelbo` takes `loss_mask` [B, *data_shape]
  (True: scored; the others never noised nor scored), for evaluation of
  padded examples (`md4.zero_shot`).

Denoisers are callables `logits = denoise(z, t, label)`; the loss may ask
for `denoise(z, t, label, factored=True)`, which returns a
`chunked_logits.FactoredLogits` when the network can factor its head.
"""

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any, ClassVar

import jax
import ml_collections

from md4 import fields

UNMASKING = "unmasking"
VALUE_INDEPENDENT = "value_independent"
TRANSITION_CHAIN = "transition_chain"
NEXT_TOKEN = "next_token"
BLOCKS = "blocks"

Params = Mapping[str, jax.Array]
Terms = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """A learnable parameter of a process.

  Attributes:
    init: a flax initializer, `init(rng, shape, dtype)`.
    shape: its shape.
    axes: its logical axis names (`md4.sharding`), one per dimension.
  """

  init: Callable[..., jax.Array]
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class Process:
  """Base class; subclasses are frozen dataclasses adding their fields.

  Attributes:
    vocab_size: V; the mask token (or start token) is V.
    data_shape: one example's shape.
  """

  vocab_size: int
  data_shape: tuple[int, ...]

  name: ClassVar[str] = ""
  summary: ClassVar[str] = ""
  # The section model.<name>: declared with full dotted names.
  FIELDS: ClassVar[tuple[fields.Field, ...]] = ()
  capabilities: ClassVar[frozenset[str]] = frozenset()
  default_sampler: ClassVar[str] = ""
  uses_time_draws: ClassVar[bool] = True
  train_dependent: ClassVar[bool] = False
  supports_loss_mask: ClassVar[bool] = False

  @classmethod
  def from_config(
      cls,
      section: ml_collections.ConfigDict,
      vocab_size: int,
      data_shape: tuple[int, ...],
  ) -> "Process":
    """The process a config section describes; ValueError naming the field.

    The default builds the dataclass from the section's fields of the same
    names; `__post_init__` checks their combinations.
    """
    own = {f.name.rsplit(".", 1)[-1] for f in cls.FIELDS}
    return cls(
        vocab_size=vocab_size,
        data_shape=tuple(data_shape),
        **{k: section[k] for k in own},
    )

  @classmethod
  def legacy_names(cls) -> dict[str, str]:
    """Old flat `model.<key>` names of this section's fields (config.json
    files of runs from before the process sections) -> today's key."""
    own = [f.name.rsplit(".", 1)[-1] for f in cls.FIELDS]
    return {key: key for key in own}

  @classmethod
  def check_network(cls, network_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when the network cannot serve this process."""
    del network_config

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  def param_specs(self) -> dict[str, ParamSpec]:
    """Learnable parameters of the process (none by default)."""
    return {}

  def nelbo(
      self,
      params: Params,
      rng: jax.Array,
      x: jax.Array,
      denoise: Callable[..., Any],
      *,
      label: jax.Array | None,
      antithetic: bool,
      t: jax.Array | None,
  ) -> tuple[Terms, Terms]:
    """One Monte-Carlo sample of the negative ELBO of each example.

    Args:
      params: the process's parameters (`param_specs`), by name.
      rng: a PRNG key, or one key per example [B] (then t is given).
      x: int tokens [B, *data_shape].
      denoise: the denoiser (see the module docstring).
      label: optional int [B], passed to the denoiser.
      antithetic: stratify the time draws within the batch.
      t: optional draws u [B] in [0, 1) that the process maps to its times.
      Processes with `supports_loss_mask` also take `loss_mask` (bool
      [B, *data_shape], True where scored; default all).

    Returns:
      (terms, scalars): per-example nats [B] with `loss` the training
      objective (and `loss_nelbo` the bound when they differ), and scalar
      diagnostics.
    """
    raise NotImplementedError

  # ------------------------------------------------ UNMASKING processes --

  def unmask_probability(
      self, params: Params, s: jax.Array, t: jax.Array
  ) -> jax.Array:
    """P(a token masked at t is revealed with value v by s < t), per unit
    of the denoiser's mu[v]: [B, 1, ..., 1] or [B, 1, ..., V]."""
    raise ValueError(self._cannot("reveal masked tokens"))

  def keep_probability(
      self, params: Params, x: jax.Array, t: jax.Array
  ) -> jax.Array:
    """q(z_t = x | x) for tokens x [B, ...] at times t [B]: [B, ...]."""
    raise ValueError(self._cannot("mask tokens in its forward process"))

  def alpha(self, params: Params) -> Callable[[jax.Array], jax.Array] | None:
    """alpha(t) when it does not depend on the token's value, else None."""
    del params
    return None

  def _cannot(self, what: str) -> str:
    return (
        f"config.model.process={self.name!r} does not {what}; this "
        f"needs a process with {UNMASKING!r} among its capabilities."
    )


def reason_missing(
    process: Process, capability: str, who: str, fix: str
) -> str | None:
  """None when process has the capability, else a sentence saying so."""
  if capability in process.capabilities:
    return None
  return (
      f"{who} needs a process with the {capability!r} capability; "
      f"config.model.process={process.name!r} has "
      f"{', '.join(sorted(process.capabilities)) or 'none'}. {fix}"
  )
