"""Draws many samples from a trained model in batches, with one compiled call.

`draw` compiles the chosen sampler once for `batch_size` samples (the last
batch is padded and trimmed), runs it batch after batch with keys
`fold_in(key(seed), batch)`, and reports network calls per sample and the
sampling time without compilation. With a `semi_ar.Plan` each batch is drawn
in windows and blocks (`md4.sampling.semi_ar`), still one compiled call.
"""

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from md4 import sampling
from md4.sampling import core
from md4.sampling import semi_ar


@dataclasses.dataclass
class Drawn:
  """What `draw` returns.

  Attributes:
    samples: int [N, *data_shape].
    history: int [F, b, *data_shape] frames of the first batch, or None.
    network_calls: network calls per sample, averaged over batches.
    seconds: sampling time, compilation excluded.
    compile_seconds: time to compile the sampler.
  """

  samples: np.ndarray
  history: np.ndarray | None
  network_calls: float
  seconds: float
  compile_seconds: float

  @property
  def samples_per_second(self) -> float:
    return len(self.samples) / max(self.seconds, 1e-9)


def _rows(array, start: int, size: int) -> np.ndarray:
  """Rows [start, start + size) of an array, wrapping around."""
  array = np.asarray(array)
  return array[np.arange(start, start + size) % array.shape[0]]


def _batch_of(known: core.Known, start: int, size: int) -> core.Known:
  """Rows [start, start + size) of known tokens, wrapping around."""
  return core.Known(
      _rows(known.mask, start, size),
      _rows(known.tokens, start, size).astype(np.int32),
  )


def batch_size_for(num_samples: int, batch_size: int) -> int:
  """The batch size actually compiled; both flags must be positive."""
  for name, value in (
      ("--num_samples", num_samples),
      ("--batch_size", batch_size),
  ):
    if value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value}.")
  return min(batch_size, num_samples)


def run_batches(
    one_batch,
    params,
    *,
    num_samples: int,
    batch_size: int,
    seed: int,
    per_batch=lambda start: (),
) -> Drawn:
  """Compiles `one_batch` once and runs it until num_samples are drawn.

  Args:
    one_batch: (params, rng, *per_batch(start)) -> `core.Result` of
      batch_size samples.
    params: the (EMA) parameters.
    num_samples: N; the last batch is trimmed.
    batch_size: samples per call (from `batch_size_for`).
    seed: batch b uses the key fold_in(key(seed), b).
    per_batch: start row -> the extra arguments of that batch.

  Returns:
    The `Drawn` samples, the first batch's history and the statistics.
  """
  key = jax.random.key(seed)
  start = time.perf_counter()
  compiled = jax.jit(one_batch).lower(params, key, *per_batch(0)).compile()
  compile_seconds = time.perf_counter() - start

  samples, calls, history = [], [], None
  start = time.perf_counter()
  # A bar on interactive terminals only (disable=None), on process 0.
  bar = tqdm.tqdm(
      total=num_samples,
      unit="sample",
      desc="sampling",
      disable=None if jax.process_index() == 0 else True,
  )
  for b in range(math.ceil(num_samples / batch_size)):
    result = compiled(
        params, jax.random.fold_in(key, b), *per_batch(b * batch_size)
    )
    samples.append(np.asarray(result.samples))
    calls.append(int(result.network_calls))
    if b == 0 and result.history is not None:
      history = np.asarray(result.history)
    bar.update(min(batch_size, num_samples - b * batch_size))
  bar.close()
  seconds = time.perf_counter() - start
  return Drawn(
      np.concatenate(samples)[:num_samples],
      history,
      float(np.mean(calls)),
      seconds,
      compile_seconds,
  )


def cycled_labels(num_samples: int, num_classes: int) -> jax.Array | None:
  """Class i mod num_classes for sample i, int32 [N]; None if unconditional.

  The training-time samples of a class-conditional model: every class in
  turn, so the cells of a sample grid read class by class.
  """
  if not num_classes:
    return None
  return jnp.arange(num_samples, dtype=jnp.int32) % num_classes


def sample_batch(
    model,
    variables,
    rng: jax.Array,
    sampler: str,
    settings: core.Settings,
    num_samples: int,
    label=None,
) -> jax.Array:
  """One batch [N, *data_shape] of the named sampler (e.g. under jit).

  Args:
    model: the `DiffusionModel` (MD4 or GenMD4).
    variables: its variables, e.g. {"params": ema_params}.
    rng: PRNG key.
    sampler: a name in `md4.sampling.SAMPLERS`.
    settings: the sampler's settings (validated here).
    num_samples: N.
    label: a class id, one per sample (int [N]), or None.

  Returns:
    The samples, as `sampling.get(sampler).draw` draws them with this key.
  """
  settings.validate()
  reverse = core.from_model(model, variables, label=label)
  return sampling.get(sampler).draw(reverse, rng, num_samples, settings).samples


def draw(
    model,
    params,
    sampler: str,
    settings: core.Settings,
    *,
    num_samples: int,
    batch_size: int,
    seed: int,
    known: core.Known | None = None,
    label=None,
    guidance: float = 0.0,
    plan: semi_ar.Plan | None = None,
) -> Drawn:
  """Draws num_samples samples with the named sampler.

  Args:
    model: the `DiffusionModel`.
    params: its (EMA) parameters.
    sampler: a name in `md4.sampling.SAMPLERS`.
    settings: the sampler's settings (validated here).
    num_samples: N.
    batch_size: samples per compiled call.
    seed: the sampling seed.
    known: given tokens for all N samples (or fewer, reused cyclically).
    label: class id for class-conditional models, or one per sample (int
      [N], reused cyclically like `known`).
    guidance: classifier-free guidance scale.
    plan: semi-autoregressive windows and blocks (text data, a sampler
      that keeps given tokens); `known` then covers the text's first
      positions (up to plan.length) and samples are [N, plan.length].

  Returns:
    The `Drawn` samples and statistics.
  """
  settings.validate()
  sample_fn = sampling.get(sampler).draw
  batch_size = batch_size_for(num_samples, batch_size)
  given = known is not None
  if plan is not None:
    rows = 1 if known is None else np.asarray(known.mask).shape[0]
    known = semi_ar.text_known(known, rows, plan, model.mask_id)
    given = True
  elif known is None:
    known = core.no_known(1, model.data_shape)

  per_sample = label is not None and np.ndim(label) > 0

  def one_batch(params, rng, known, labels):
    reverse = core.from_model(
        model,
        {"params": params},
        label=labels if per_sample else label,
        guidance=guidance,
    )
    if plan is not None:
      return semi_ar.generate(
          sample_fn, reverse, rng, batch_size, settings, plan, known
      )
    return sample_fn(
        reverse, rng, batch_size, settings, known if given else None
    )

  def per_batch(start):
    labels = (
        _rows(label, start, batch_size).astype(np.int32) if per_sample else None
    )
    return _batch_of(known, start, batch_size), labels

  return run_batches(
      one_batch,
      params,
      num_samples=num_samples,
      batch_size=batch_size,
      seed=seed,
      per_batch=per_batch,
  )
