"""The unmasking core that every sampler shares.

A masked-diffusion sampler starts from z_1 (every unknown token masked) and
walks a time grid 1 = t_0 > t_1 > ... > t_T = 0. In one step t -> s a masked
token is revealed with value v with probability unmask(s, t)[v] * mu(z_t, t)[v]
(mu = softmax of the denoiser's logits) and otherwise stays masked; revealed
tokens never change (except under remasking, `remask.py`). After the last step
a final "fill" call at t = 0 draws every token still masked from mu, since
alpha(0) = 1 - eps leaves a few masked by construction. Reconstruction
starts instead from z_t at a time t < 1 (data masked forward to t,
`Settings.start_time`) and walks the same grid scaled to [0, t].

This module holds what samplers have in common:

* `Settings`: what the grid samplers read; each sampler's own settings
  subclass them (`setting` declares a field with its doc, check and flag).
* `Reverse`: what a sampler needs from a model (the denoiser and the
  process, which gives the reveal probabilities), built from a trained
  `DiffusionModel` (with class label and classifier-free guidance) or from
  any denoiser and MD4 schedule (the tests' oracle).
* Exact random draws: `uniform`, `exponential` and `categorical`. Categorical
  draws are an exponential race, argmax_v (log p_v - log E_v) with E_v ~ Exp(1)
  (the Gumbel-max trick with G = -log E), in log space, with E drawn from 56
  random bits below 1/2. Float32 Gumbel-max built on a 23-bit uniform cannot
  produce the large Gumbel values that rare outcomes need, so it under-samples
  probabilities below ~1e-7 and lowers the effective temperature of
  many-step samplers (Zheng et al., 2024); here the first bias appears below
  ~1e-15. `benchmarks/sampling.py` measures it against the alternatives.
* `reveal_log_probs` / `ancestral_reveal`: the reverse step of one token.
* `run`: the step loop (network call, sampler step, known tokens, history
  frames, final fill) that the step-based samplers plug a step function into.
* History frames: snapshots of z at evenly spaced diffusion times, either
  recorded in the loop or rebuilt from the time each token was revealed.
"""

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from md4.diffusion import masked
from md4.diffusion import process as process_lib
from md4.diffusion import schedules

GRIDS = ("uniform", "cosine")
_TINY = float(np.finfo(np.float32).tiny)


# ------------------------------------------------------------ settings ----


def setting(
    default,
    doc: str,
    check: Callable[[object], str | None] | None = None,
    flag: str | None = None,
):
  """A settings field: its default, one-line doc, check and flag name.

  Args:
    default: the default value (its type is the flag's type).
    doc: one line for the flag's help.
    check: `value -> None` when valid, else the rule it breaks ("must be in
      (0, 1]; 1 keeps every value"); the error names the flag.
    flag: the `md4.sample` flag, when it is not the field's name.
  """
  return dataclasses.field(
      default=default, metadata={"doc": doc, "check": check, "flag": flag}
  )


def flag_name(field: dataclasses.Field) -> str:
  return field.metadata.get("flag") or field.name


def _positive_int(value) -> str | None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    return "must be a positive integer"
  return None


def _frames(value) -> str | None:
  if value == 1 or value < 0:
    return "must be at least 2 (the first and the last state)"
  return None


def _start_time(value) -> str | None:
  if not 0.0 < value <= 1.0:
    return (
        "must be in (0, 1]: the time the inputs are masked to and the "
        "reverse process starts from"
    )
  return None


def _grid(value) -> str | None:
  if value not in GRIDS:
    return f"is not a time grid; valid: {', '.join(GRIDS)}"
  return None


@dataclasses.dataclass(frozen=True)
class BaseSettings:
  """What every sampler reads (they belong to sampling, not to the model).

  Each sampler declares its settings as a subclass (`md4.sampling`'s
  registry names the class); `md4.sample` makes a flag of every field that
  is not declared here, and rejects a flag the chosen sampler does not
  read.

  Attributes:
    num_frames: history frames to record (0 = none, else >= 2).
    start_time: the time in (0, 1] the reverse process starts from: 1 from
      z_1 (every unknown token masked); t < 1 from data masked forward to t,
      the unknown tokens being those masked (reconstruction).
  """

  num_frames: int = setting(
      0, "History frames (0 = none).", _frames, flag="history_frames"
  )
  start_time: float = setting(
      1.0,
      "The time the reverse process starts from.",
      _start_time,
      flag="reconstruct_t",
  )

  def validate(self) -> None:
    """Raises ValueError naming the flag, its value and the rule."""
    for field in dataclasses.fields(self):
      check = field.metadata.get("check")
      value = getattr(self, field.name)
      problem = check(value) if check else None
      if problem:
        raise ValueError(f"--{flag_name(field)}={value!r} {problem}.")


@dataclasses.dataclass(frozen=True)
class Settings(BaseSettings):
  """The settings of the samplers that walk a time grid.

  Attributes:
    num_steps: T, steps of the time grid.
    grid: "uniform" or "cosine" time grid (`grid_times`).
  """

  num_steps: int = setting(100, "Time steps T.", _positive_int, flag="steps")
  grid: str = setting("uniform", "Time grid.", _grid)


class Known(NamedTuple):
  """Tokens given in advance (prompts, infilling, inpainting).

  Attributes:
    mask: bool [B, *data_shape], True where the token is given.
    tokens: int32 [B, *data_shape], the given values (ignored elsewhere).
  """

  mask: jax.Array
  tokens: jax.Array


class Result(NamedTuple):
  """What every sampler returns.

  Attributes:
    samples: int32 [B, *data_shape], no mask tokens left.
    network_calls: int32 scalar, denoiser calls made for this batch; every
      call evaluates every sample of the batch, so it is also the number of
      network evaluations per sample.
    history: int32 [F, B, *data_shape] frames at times 1 - k / (F - 1), mask
      tokens included, or None when no frames were asked for.
  """

  samples: jax.Array
  network_calls: jax.Array
  history: jax.Array | None = None


# ------------------------------------------------------------ the model ---


@dataclasses.dataclass(frozen=True)
class Reverse:
  """What a sampler needs from a model: its denoiser and its process.

  Attributes:
    denoise: `logits = denoise(z, t)`, z int [B, *data_shape] (mask or start
      id V), t float [B]; logits [B, *data_shape, V].
    process: the `md4.diffusion.process.Process`; samplers ask it for the
      reverse step they need (the registry in `md4.sampling` checks its
      capabilities first).
    process_params: the process's own parameters (GenMD4's exponents).
    network: `network(z, t, **inputs)`, the model's denoiser taking network
      inputs (block diffusion's `clean`/`block_size` or `cache`/`start`,
      `md4.networks.transformer.Transformer`); None when the Reverse is not
      a trained model's or uses guidance.
  """

  denoise: Callable[[jax.Array, jax.Array], jax.Array]
  process: process_lib.Process
  process_params: Mapping[str, jax.Array] = dataclasses.field(
      default_factory=dict
  )
  network: Callable[..., Any] | None = None

  @property
  def vocab_size(self) -> int:
    return self.process.vocab_size

  @property
  def data_shape(self) -> tuple[int, ...]:
    return tuple(self.process.data_shape)

  @property
  def mask_id(self) -> int:
    return self.process.mask_id

  def unmask_probability(self, s: jax.Array, t: jax.Array) -> jax.Array:
    """P(a token masked at t is revealed with value v by s < t), per unit
    of mu[v]; [B, 1, ..., 1] (MD4) or [B, 1, ..., V] (GenMD4)."""
    return self.process.unmask_probability(self.process_params, s, t)

  def keep_probability(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """q(z_t = x | x): token x [B, ...] still unmasked at t [B]; [B, ...]."""
    return self.process.keep_probability(self.process_params, x, t)

  @property
  def alpha(self) -> Callable[[jax.Array], jax.Array] | None:
    """alpha(t) when it does not depend on the token's value, else None."""
    return self.process.alpha(self.process_params)

  def log_probs(self, z: jax.Array, t: jax.Array) -> jax.Array:
    """log mu(z, t) in float32, [B, *data_shape, V]."""
    return jax.nn.log_softmax(self.denoise(z, t).astype(jnp.float32), -1)

  def masked_fraction(self, t: jax.Array, start: float = 1.0) -> jax.Array:
    """Expected share of tokens masked at t among those masked at start, [B].

    (1 - alpha(t)) / (1 - alpha(start)) for MD4; GenMD4 averages it over
    values.
    """
    p = self.unmask_probability(t, jnp.full_like(t, start))  # [B, 1.., 1|V]
    return 1.0 - p.reshape(p.shape[0], -1).mean(-1)

  def require_alpha(self, sampler: str) -> Callable[[jax.Array], jax.Array]:
    alpha = self.alpha
    if alpha is None:
      raise ValueError(
          process_lib.reason_missing(
              self.process,
              process_lib.VALUE_INDEPENDENT,
              f"--sampler={sampler}",
              "Use --sampler=ancestral, mean, topp or confidence.",
          )
      )
    return alpha


def from_model(
    model, variables, *, label=None, guidance: float = 0.0
) -> Reverse:
  """The `Reverse` of a trained `md4.model.DiffusionModel`.

  Args:
    model: the DiffusionModel (its `denoise` and its process).
    variables: its variables, e.g. {"params": ema_params}.
    label: for class-conditional models, a class id for every sample, or
      one per sample (int [B]); None = no label.
    guidance: classifier-free guidance scale w >= 0: log mu = (1 + w)
      log mu(. | label) - w log mu(. | no label), renormalised. Needs a label;
      doubles the batch of every network call.

  Returns:
    The Reverse.
  """
  num_classes = model.num_classes
  if label is not None and not num_classes:
    raise ValueError(
        f"--label={label} but the model is not class-conditional "
        "(config.model.class_conditional=False); drop --label."
    )
  if isinstance(label, (int, np.integer)) and not 0 <= label < num_classes:
    raise ValueError(f"--label must be in [0, {num_classes}), got {label}.")
  if guidance < 0.0:
    raise ValueError(f"--guidance must be >= 0, got {guidance}.")
  if guidance > 0.0 and label is None:
    raise ValueError(
        f"--guidance={guidance} needs --label: guidance pushes "
        "samples towards a class."
    )

  def labels(batch: int, value):
    if value is None:
      return None
    return jnp.broadcast_to(jnp.asarray(value, jnp.int32), (batch,))

  def denoise(z, t):
    batch = z.shape[0]
    if guidance == 0.0:
      return model.apply(
          variables, z, t, labels(batch, label), method=model.denoise
      )
    both = model.apply(
        variables,
        jnp.concatenate([z, z]),
        jnp.concatenate([t, t]),
        jnp.concatenate([labels(batch, label), labels(batch, num_classes)]),
        method=model.denoise,
    ).astype(
        jnp.float32
    )  # [2B, ..., V]
    cond = jax.nn.log_softmax(both[:batch], -1)
    uncond = jax.nn.log_softmax(both[batch:], -1)
    return (1.0 + guidance) * cond - guidance * uncond

  def network(z, t, **inputs):
    return model.apply(
        variables,
        z,
        t,
        labels(z.shape[0], label),
        method=model.denoise,
        **inputs,
    )

  params = (variables or {}).get("params", {})
  process_params = {name: params[name] for name in model.process.param_specs()}
  return Reverse(
      denoise,
      model.process,
      process_params,
      network if guidance == 0.0 else None,
  )


def from_schedule(
    denoise: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: schedules.MaskingSchedule,
    vocab_size: int,
    data_shape: tuple[int, ...],
) -> Reverse:
  """The `Reverse` of any denoiser under an MD4 schedule (e.g. an oracle)."""
  process = masked.MD4(
      vocab_size=vocab_size,
      data_shape=tuple(data_shape),
      schedule=schedule.name,
      eps=schedule.eps,
  )
  return Reverse(denoise, process)


# ------------------------------------------------------- random draws -----


def grid_times(num_steps: int, grid: str = "uniform") -> np.ndarray:
  """Times 1 = t_0 > ... > t_T = 0, numpy float32 [num_steps + 1].

  "cosine" is the reference's grid, t = sin(pi u / 2) on a uniform u: its
  steps are finest near t = 1, where the first tokens are revealed
  (MaskGIT's cosine order); T = 8 gives [1, .981, .924, .832, .707, .556,
  .383, .195, 0].
  """
  u = np.linspace(1.0, 0.0, num_steps + 1)
  if grid == "uniform":
    return u.astype(np.float32)
  if grid == "cosine":
    return np.sin(0.5 * np.pi * u).astype(np.float32)
  raise ValueError(
      f"--grid={grid!r} is not a time grid; valid: {', '.join(GRIDS)}."
  )


def time_grid(num_steps: int, grid: str = "uniform") -> jax.Array:
  """`grid_times` as a jax array, [num_steps + 1]."""
  return jnp.asarray(grid_times(num_steps, grid))


def sampler_times(settings: Settings) -> np.ndarray:
  """The settings' grid from start_time down to 0, float32 [T + 1]."""
  times = grid_times(settings.num_steps, settings.grid)
  return (np.float32(settings.start_time) * times).astype(np.float32)


def uniform_from_bits(high: jax.Array, low: jax.Array) -> jax.Array:
  """U[0, 1) from two uint32 words, with 56-bit resolution below 1/2.

  The top 24 bits of `high` give k / 2**24 exactly; below 1/2 the 32 bits of
  `low` refine it at 2**-56, so small values (which decide rare outcomes in
  `categorical`) are not rounded to a multiple of 2**-24. Adding them only
  below 1/2 keeps the result < 1.
  """
  coarse = (high >> 8).astype(jnp.float32) * (2.0**-24)
  fine = low.astype(jnp.float32) * (2.0**-56)
  return jnp.where(coarse < 0.5, coarse + fine, coarse)


def uniform(rng: jax.Array, shape) -> jax.Array:
  """U[0, 1) float32 draws of `shape` (see `uniform_from_bits`)."""
  high, low = jax.random.bits(rng, (2,) + tuple(shape), jnp.uint32)
  return uniform_from_bits(high, low)


def exponential(rng: jax.Array, shape) -> jax.Array:
  """Exp(1) draws whose small values keep full relative precision."""
  return -jnp.log1p(-uniform(rng, shape))


def categorical(rng: jax.Array, log_probs: jax.Array) -> jax.Array:
  """Exact draws from log-probabilities [..., K] (unnormalised is fine).

  The exponential race: argmax_k (log p_k - log E_k), E_k ~ Exp(1); -inf
  entries are never drawn. Returns int32 [...].
  """
  e = jnp.maximum(exponential(rng, log_probs.shape), _TINY)  # [..., K]
  return jnp.argmax(log_probs - jnp.log(e), axis=-1).astype(jnp.int32)


def bernoulli(rng: jax.Array, p: jax.Array, shape) -> jax.Array:
  """True with probability p (broadcast to shape), resolved to 2**-56."""
  return uniform(rng, shape) < p


# --------------------------------------------------- the reverse step -----


def reveal_log_probs(log_mu: jax.Array, unmask: jax.Array) -> jax.Array:
  """Log-probabilities [..., V + 1] of a masked token's next state.

  Args:
    log_mu: denoiser log-probabilities [B, ..., V].
    unmask: reveal probabilities [B, 1.., 1 | V] (see `Reverse`).

  Returns:
    [..., V] = log(unmask_v mu_v), then log(1 - sum_v unmask_v mu_v) for
    "stay masked", written as logsumexp(log(1 - unmask_v) + log mu_v) so no
    cancellation happens when the reveal probability is tiny.
  """
  unmask = jnp.broadcast_to(unmask, log_mu.shape[:-1] + unmask.shape[-1:])
  log_reveal = jnp.log(unmask) + log_mu  # [B, ..., V]
  log_stay = jax.nn.logsumexp(
      jnp.log1p(-unmask) + log_mu, axis=-1, keepdims=True
  )  # [B, ..., 1]
  return jnp.concatenate([log_reveal, log_stay], axis=-1)


def ancestral_reveal(
    rng: jax.Array,
    z: jax.Array,
    log_mu: jax.Array,
    unmask: jax.Array,
    mask_id: int,
) -> jax.Array:
  """One exact reverse step for every masked token of z; [B, ...] -> [B, ...].

  One categorical draw over V + 1 outcomes per token; outcome V ("stay
  masked") is exactly mask_id.
  """
  choice = categorical(rng, reveal_log_probs(log_mu, unmask))  # [B, ...]
  return jnp.where(z == mask_id, choice, z).astype(z.dtype)


def fill(
    rng: jax.Array, z: jax.Array, log_mu: jax.Array, mask_id: int
) -> jax.Array:
  """Draws every still-masked token of z from mu (the final t = 0 call)."""
  return jnp.where(z == mask_id, categorical(rng, log_mu), z).astype(z.dtype)


# -------------------------------------------------------- known tokens ----


def no_known(num_samples: int, data_shape) -> Known:
  shape = (num_samples,) + tuple(data_shape)
  return Known(jnp.zeros(shape, bool), jnp.zeros(shape, jnp.int32))


def initial_tokens(known: Known, mask_id: int) -> jax.Array:
  """z_1: the known tokens, mask everywhere else; int32 [B, ...]."""
  return jnp.where(known.mask, known.tokens, mask_id).astype(jnp.int32)


def keep_known(z: jax.Array, known: Known) -> jax.Array:
  return jnp.where(known.mask, known.tokens, z).astype(z.dtype)


# ------------------------------------------------------------ history -----


def frame_times(num_frames: int) -> np.ndarray:
  """The F frame times 1 = tau_0 > ... > tau_{F-1} = 0."""
  return np.linspace(1.0, 0.0, num_frames)


def frames_from_reveal_times(
    samples: jax.Array, reveal_time: jax.Array, num_frames: int, mask_id: int
) -> jax.Array:
  """Frames [F, B, ...] of a sampler whose revealed tokens never change.

  Frame k shows the tokens revealed at a time >= tau_k (known tokens have
  reveal time > 1), the same rule `run` uses for the frames it records.
  """
  taus = jnp.asarray(frame_times(num_frames), jnp.float32)
  taus = taus.reshape((-1,) + (1,) * samples.ndim)  # [F, 1, ...]
  return jnp.where(reveal_time[None] >= taus, samples[None], mask_id)


def _frame_writes(times: np.ndarray, num_frames: int) -> np.ndarray:
  """bool [T, F]: after step i (ending at times[i + 1]) write frame k.

  Frame k is the state after the last step whose end time is >= tau_k;
  frames that no step reaches keep the initial state.
  """
  taus = frame_times(num_frames)
  ends = times[1:]  # [T], decreasing
  last_step = np.array(
      [np.nonzero(ends >= tau - 1e-7)[0].max(initial=-1) for tau in taus]
  )  # [F]
  return np.arange(len(ends))[:, None] == last_step[None, :]


# --------------------------------------------------------------- loop -----


class Step(NamedTuple):
  """What a step function sees at step i (t -> s).

  Attributes:
    rng: this step's key.
    index: i, a traced int32 in [0, T).
    num_steps: T.
    z: int32 [B, ...] tokens at t.
    log_mu: float32 [B, ..., V] denoiser log-probabilities at (z, t).
    t: float32 [B] current time.
    s: float32 [B] next time (< t).
    known: the given tokens.
  """

  rng: jax.Array
  index: jax.Array
  num_steps: int
  z: jax.Array
  log_mu: jax.Array
  t: jax.Array
  s: jax.Array
  known: Known


StepFn = Callable[[Reverse, Step], jax.Array]


def run(
    reverse: Reverse,
    rng: jax.Array,
    num_samples: int,
    settings: Settings,
    step_fn: StepFn,
    known: Known | None = None,
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> Result:
  """The step loop: T network calls and sampler steps, then the fill call.

  Args:
    reverse: the model.
    rng: PRNG key.
    num_samples: B.
    settings: num_steps, grid, start_time and num_frames are read here.
    step_fn: `z_s = step_fn(reverse, step)`, the sampler's variation.
    known: given tokens, kept fixed throughout; None = nothing given.
    transform: optional map of log mu before each step and the fill (e.g.
      the nucleus filter).

  Returns:
    The `Result`, with T + 1 network calls.
  """
  num_steps = settings.num_steps
  times = jnp.asarray(sampler_times(settings))  # [T + 1]
  mask_id = reverse.mask_id
  known = (
      known if known is not None else no_known(num_samples, reverse.data_shape)
  )
  transform = transform or (lambda log_mu: log_mu)
  ones = jnp.ones((num_samples,), jnp.float32)
  z = initial_tokens(known, mask_id)
  num_frames = settings.num_frames
  writes = history = None
  if num_frames:
    writes = jnp.asarray(
        _frame_writes(sampler_times(settings), num_frames)
    )  # [T, F]
    history = jnp.broadcast_to(z, (num_frames,) + z.shape)  # [F, B, ...]

  def body(i, carry):
    z, history = carry
    t, s = times[i] * ones, times[i + 1] * ones  # [B], [B]
    log_mu = transform(reverse.log_probs(z, t))  # [B, ..., V]
    step = Step(
        jax.random.fold_in(rng, i), i, num_steps, z, log_mu, t, s, known
    )
    z = keep_known(step_fn(reverse, step), known)
    if history is not None:
      write = writes[i].reshape((-1,) + (1,) * z.ndim)  # [F, 1, ...]
      history = jnp.where(write, z[None], history)
    return z, history

  z, history = jax.lax.fori_loop(0, num_steps, body, (z, history))
  # ------------------------------------------- final fill at t = 0 --
  log_mu = transform(reverse.log_probs(z, 0.0 * ones))
  z = keep_known(
      fill(jax.random.fold_in(rng, num_steps), z, log_mu, mask_id), known
  )
  if history is not None:
    history = history.at[-1].set(z)
  return Result(z, jnp.int32(num_steps + 1), history)


def flat_positions(x: jax.Array, data_rank: int) -> jax.Array:
  """[B, *data_shape, ...] -> [B, N, ...] (N = prod(data_shape))."""
  return x.reshape((x.shape[0], -1) + x.shape[1 + data_rank :])
