"""Left-to-right sampling of a next-token model, one token per network call.

Position i (in the flattened data order) is drawn from
softmax(logits_i / temperature), restricted to its top-p nucleus, where the
logits come from the network reading [V, x_1, ..., x_{N-1}] (the process's
`inputs`: start token V, then the tokens so far; causal attention makes the
positions after i irrelevant). Known tokens (a prompt, infilling) are kept
as given and never drawn. N network calls, each over the whole sequence
(no key-value cache); temperature 1 and topp 1 draw exactly from the model.
"""

import dataclasses

import jax
import jax.numpy as jnp

from md4.sampling import ancestral
from md4.sampling import core


def _positive(value) -> str | None:
  return "must be > 0" if value <= 0.0 else None


def _mass(value) -> str | None:
  if not 0.0 < value <= 1.0:
    return "must be in (0, 1]; 1 keeps every value"
  return None


@dataclasses.dataclass(frozen=True)
class Settings(core.BaseSettings):
  """The next-token sampler's settings."""

  temperature: float = core.setting(
      1.0,
      "Softmax temperature of the next-token sampler (1 = exact).",
      _positive,
  )
  topp: float = core.setting(1.0, "Nucleus mass kept, in (0, 1].", _mass)


def sample_autoregressive(
    reverse: core.Reverse,
    rng: jax.Array,
    num_samples: int,
    settings: Settings,
    known: core.Known | None = None,
) -> core.Result:
  """Draws [N, *data_shape] samples left to right.

  History frame k shows the tokens drawn by the time a share k / (F - 1) of
  the positions is done (known tokens from the start; the rest as the start
  id V, which `md4.sample_writing` shows as masks).
  """
  process = reverse.process
  shape = (num_samples,) + tuple(reverse.data_shape)
  known = (
      known
      if known is not None
      else core.no_known(num_samples, reverse.data_shape)
  )
  length = 1
  for d in reverse.data_shape:
    length *= d
  flat_known = known.mask.reshape(num_samples, length)
  flat_tokens = known.tokens.reshape(num_samples, length)
  x = jnp.where(flat_known, flat_tokens, process.start_token).astype(
      jnp.int32
  )  # [N, L]
  time = jnp.zeros((num_samples,), jnp.float32)

  def body(i, x):
    logits = reverse.denoise(process.inputs(x.reshape(shape)), time)
    logits = logits.reshape(num_samples, length, -1)[:, i]  # [N, V]
    log_p = jax.nn.log_softmax(
        logits.astype(jnp.float32) / settings.temperature, -1
    )
    log_p = ancestral.nucleus(log_p, settings.topp)
    token = core.categorical(jax.random.fold_in(rng, i), log_p)  # [N]
    token = jnp.where(flat_known[:, i], flat_tokens[:, i], token)
    return x.at[:, i].set(token.astype(jnp.int32))

  x = jax.lax.fori_loop(0, length, body, x)
  samples = x.reshape(shape)
  history = None
  if settings.num_frames:
    done = jnp.round(jnp.linspace(0.0, 1.0, settings.num_frames) * length)
    position = jnp.arange(length)[None, None]  # [1, 1, L]
    drawn = (position < done[:, None, None]) | flat_known[None]  # [F, N, L]
    history = jnp.where(drawn, x[None], process.start_token).reshape(
        (settings.num_frames,) + shape
    )
  return core.Result(samples, jnp.int32(length), history)
