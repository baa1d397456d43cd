"""The one train/eval loop: a jitted step over a device mesh, for 1 to N devices.

State is created already sharded (abstract shapes -> logical partition specs
-> `jax.jit(out_shardings=...)`); batches are global arrays split over the
mesh's batch axes; a single CPU is just a 1x1x1 mesh.
"""

import math
import os
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from md4 import checkpointing
from md4 import configuration
from md4 import console
from md4 import metrics as metrics_lib
from md4 import optimizers
from md4 import preemption
from md4 import profiling
from md4 import run
from md4 import sample_writing
from md4 import sampling
from md4 import sharding
from md4 import workdir_lock
from md4.diffusion import common
from md4.sampling import drawing

# -------------------------------------------------------------- steps -----


def _split_micro(tree, k: int):
  """[B, ...] leaves -> [k, B / k, ...]."""
  return jax.tree.map(
      lambda a: a.reshape((k, a.shape[0] // k) + a.shape[1:]), tree
  )


FINITE = "all_finite"  # The metric train_step adds with check_nans.


class NonFiniteError(FloatingPointError):
  """Training produced NaN/Inf beyond config.train.max_bad_steps."""


def make_train_step(model, optimizer, config):
  """The jitted-to-be step: (state, batch, rng) -> (state, metrics).

  With `config.train.check_nans`, metrics[FINITE] says whether every metric
  (loss terms, gradient norm) was finite; if not, the update is discarded.
  Time draws are made for the whole global batch and the mask noise comes
  from one key per example, so splitting the batch into micro-batches
  changes nothing but memory.
  """
  num_elements = model.num_elements
  k = config.train.micro_batches
  ema_decay = config.optimizer.ema_decay
  ema_warmup = config.optimizer.ema_warmup
  check_nans = config.train.check_nans
  lr_fn = optimizers.learning_rate_schedule(
      config.optimizer, config.train.num_steps
  )

  def loss_fn(params, mb, rng):
    sample_rng, dropout_rng = jax.random.split(rng)
    terms, scalars = model.apply(
        {"params": params},
        mb["x"],
        mb.get("label"),
        train=True,
        t=mb["t"],
        example_keys=mb["keys"],
        rngs={"sample": sample_rng, "dropout": dropout_rng},
    )
    return terms["loss"].mean() / num_elements, (terms, scalars)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    t_rng, key_rng, micro_rng = jax.random.split(rng, 3)
    batch_size = batch["x"].shape[0]
    batch = dict(batch)
    batch["t"] = common.sample_times(t_rng, batch_size, model.antithetic)
    batch["keys"] = jax.random.split(key_rng, batch_size)
    if k == 1:
      (_, (terms, scalars)), grads = grad_fn(state.params, batch, micro_rng)
    else:

      def body(acc, inputs):
        mb, i = inputs
        (_, aux), g = grad_fn(
            state.params, mb, jax.random.fold_in(micro_rng, i)
        )
        return jax.tree.map(lambda a, b: a + b / k, acc, g), aux

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      grads, (terms, scalars) = jax.lax.scan(
          body, zeros, (_split_micro(batch, k), jnp.arange(k))
      )
      terms = jax.tree.map(lambda a: a.reshape(-1), terms)
      scalars = jax.tree.map(lambda a: a[-1], scalars)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = common.summarize(terms, num_elements)
    metrics.update(scalars)
    if ema_decay > 0:
      decay = optimizers.ema_decay_at(state.step, ema_decay, ema_warmup)
      ema = optimizers.ema_update(state.ema_params, params, decay)
      metrics["ema_decay"] = jnp.asarray(decay, jnp.float32)
    else:
      ema = params
    metrics["grad_norm"] = optimizers.global_norm(grads)
    metrics["learning_rate"] = lr_fn(state.step)
    new_state = run.TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema
    )
    if check_nans:
      # A non-finite step keeps the old parameters, optimizer state and EMA
      # (the step counter still moves on, to the next batch and rng).
      finite = jnp.all(
          jnp.stack(
              [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]
          )
      )
      new_state = jax.tree.map(
          lambda new, old: jnp.where(finite, new, old),
          new_state,
          state.replace(step=new_state.step),
      )
      metrics[FINITE] = finite
    return new_state, metrics

  return train_step


def jit_train_step(setup: run.Setup):
  """`make_train_step` jitted over the mesh: sharded state, donated.

  Call it inside `jax.set_mesh(setup.mesh)` and the logical-axis rules.
  """
  return jax.jit(
      make_train_step(setup.model, setup.optimizer, setup.config),
      in_shardings=(setup.state_shardings, setup.batch_sharding, None),
      out_shardings=(setup.state_shardings, None),
      donate_argnums=(0,),
  )


def make_eval_step(model):
  """(params, batch, rng) -> weighted sums of every per-example term."""

  def eval_step(params, batch, rng):
    terms, _ = model.apply(
        {"params": params},
        batch["x"],
        batch.get("label"),
        train=False,
        rngs={"sample": rng},
    )
    weight = batch["weight"]
    sums = {k: (v * weight).sum() for k, v in terms.items()}
    sums["weight"] = weight.sum()
    return sums

  return eval_step


# ---------------------------------------------------------- the loop ------


def _global_batch(setup: run.Setup, local: dict) -> dict:
  """Assembles this process's numpy shard into global sharded arrays."""
  return {
      k: jax.make_array_from_process_local_data(setup.batch_sharding, v)
      for k, v in local.items()
  }


def _bound_units(
    means: dict[str, float], info, suffix: str = ""
) -> dict[str, float]:
  """bits_per_dim, and the data set's own unit (`DataInfo.unit`), of the
  bound in `means`."""
  bound = means.get("loss_nelbo", means["loss"])
  units = metrics_lib.in_units(
      bound, 0.0, math.prod(info.data_shape), info.unit
  )
  return {
      f"{k}{suffix}": v["mean"] for k, v in units.items() if k != "nelbo_nats"
  }


def evaluate(
    setup: run.Setup, eval_step, params, step: int, raw_params=None
) -> dict[str, float]:
  """Negative ELBO on every eval split, in one pass over each split's data.

  Every variant below sees the same batches, times and masks, so their
  differences carry no Monte-Carlo noise of their own.

  Args:
    setup: the run.
    eval_step: `make_eval_step(model)`, jitted.
    params: the parameters evaluated under the plain names (the EMA's).
    step: for the log line.
    raw_params: when given (the raw, non-EMA parameters), their bound too.

  Returns:
    For each split S: `S/<term>` (every loss term, mean nats per example),
    `S/bits_per_dim` and the data set's unit (`S/perplexity` or
    `S/bits_per_char`), all of `params` with the
    batch's labels: for a class-conditional model a bound on -log p(x | y).
    Class-conditional models also get `S/bits_per_dim_uncond` (and
    `S/perplexity_uncond`): `params` with the "no label" id, a bound on
    -log p(x). With `raw_params`: `S/bits_per_dim_raw` (and
    `S/perplexity_raw`), labels as for `S/bits_per_dim`.
  """
  results = {}
  info = setup.datasets.info
  max_batches = setup.config.train.eval_max_batches
  for split, make_iter in setup.datasets.eval.items():
    totals = {}  # suffix -> term -> weighted sum
    for i, local in enumerate(make_iter()):
      if max_batches and i >= max_batches:
        break
      rng = jax.random.fold_in(jax.random.key(setup.config.seed + 1), i)
      batch = _global_batch(setup, local)
      variants = {"": (params, batch)}
      if setup.model.num_classes and "label" in batch:
        no_label = {k: v for k, v in batch.items() if k != "label"}
        variants["_uncond"] = (params, no_label)
      if raw_params is not None:
        variants["_raw"] = (raw_params, batch)
      for suffix, (p, b) in variants.items():
        sums = eval_step(p, b, rng)
        sink = totals.setdefault(suffix, {})
        for k, v in sums.items():
          sink[k] = sink.get(k, 0.0) + float(v)
    for suffix, sums in totals.items():
      count = max(sums.pop("weight", 0.0), 1.0)
      means = {k: v / count for k, v in sums.items()}
      if not suffix:
        results.update({f"{split}/{k}": v for k, v in means.items()})
      results.update({
          f"{split}/{k}": v
          for k, v in _bound_units(means, info, suffix).items()
      })
  logging.debug("step %d eval: %s", step, results)
  return results


def _check_finite(
    metrics, step: int, bad_steps: int, max_bad_steps: int, manager
) -> int:
  """Counts a non-finite step; raises NonFiniteError past max_bad_steps.

  Returns:
    The updated count of non-finite steps.
  """
  if bool(metrics[FINITE]):
    return bad_steps
  values = jax.device_get(metrics)
  bad = sorted(
      k for k, v in values.items() if k != FINITE and not np.all(np.isfinite(v))
  )
  bad_steps += 1
  logging.warning(
      "Step %d: non-finite %s; the update was discarded (%d "
      "non-finite steps, config.train.max_bad_steps=%d).",
      step,
      ", ".join(f"train/{k}" for k in bad),
      bad_steps,
      max_bad_steps,
  )
  if bad_steps > max_bad_steps:
    latest = manager.latest_step()
    good = (
        "none (no checkpoint was saved yet)"
        if latest is None
        else os.path.join(str(manager.directory), str(latest))
    )
    raise NonFiniteError(
        f"training diverged: step {step} has non-finite "
        f"{', '.join(f'train/{k}' for k in bad)} ({bad_steps} non-finite "
        f"steps > config.train.max_bad_steps={max_bad_steps}). Last good "
        f"checkpoint: {good}. Lower config.optimizer.learning_rate or check "
        "the data, then rerun (it resumes from that checkpoint)."
    )
  return bad_steps


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains, evaluates, samples and checkpoints; resumes from the workdir.

  Returns:
    The last evaluation's metrics and the paths of the outputs, with
    `trained_steps` (0 when the checkpoint was already at num_steps),
    `bad_steps` (non-finite steps discarded) and `set_aside` (checkpoints
    moved to unreadable_checkpoints/ at start-up, one line each).
  """
  created = not os.path.exists(workdir)
  try:
    setup = run.build(config, workdir)
    run.preflight(setup, workdir)
  except BaseException:
    # A refused start leaves no empty workdir behind.
    if created and os.path.isdir(workdir) and not os.listdir(workdir):
      os.rmdir(workdir)
    raise
  # Nothing was written to the workdir before this point; from here on the
  # run holds the workdir's lock (md4.workdir_lock) until it ends.
  with workdir_lock.held(workdir, jax.process_index()):
    return _train_holding_lock(setup, workdir)


def _train_holding_lock(setup: run.Setup, workdir: str) -> dict[str, Any]:
  """`train_and_evaluate` once the workdir is locked."""
  config = setup.config
  if jax.process_index() == 0:
    checkpointing.remove_partial_saves(workdir)
    run.log_startup_summary(setup, workdir)
  info = setup.datasets.info
  manager = checkpointing.make_manager(
      workdir, config.train.keep_checkpoints, config.train.keep_period
  )
  train_iter = iter(setup.datasets.train)
  rng = jax.random.key(config.seed)
  init_rng, train_rng, sample_rng = jax.random.split(rng, 3)

  # ------------------------------------------------ state: resume/init --
  set_aside = []
  if manager.latest_step() is not None:
    state = checkpointing.restore(
        manager, setup.abstract_state, train_iter, moved=set_aside
    )
    logging.info(
        "Resumed from %s at step %d.", manager.directory, int(state.step)
    )
  else:
    state = run.create_state(setup, init_rng)
    if config.restore_from:
      loaded = checkpointing.restore_params(
          config.restore_from, setup.abstract_state
      )
      state = state.replace(
          params=loaded["params"], ema_params=loaded["ema_params"]
      )
      logging.info("Initialised parameters from %s.", config.restore_from)
  outputs: dict[str, Any] = {
      "tensorboard": workdir,
      "checkpoints": checkpointing.checkpoint_dir(workdir),
      "set_aside": set_aside,
      "bad_steps": 0,
  }
  num_steps = config.train.num_steps
  if int(state.step) >= num_steps:
    logging.warning(
        "Nothing to train: the checkpoint is at step %d and "
        "config.train.num_steps=%d.",
        int(state.step),
        num_steps,
    )
    manager.close()
    return {
        "eval": {},
        "step": int(state.step),
        "preempted": False,
        "trained_steps": 0,
        **outputs,
    }
  if jax.process_index() == 0:
    # Only now: a config that cannot resume leaves the saved one intact.
    run.save_config(config, workdir)
    run.write_parameter_table(state.params, workdir)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0
  )
  writer.write_hparams({k: str(v) for k, v in _flatten(config).items()})

  # ---------------------------------------------------- compiled steps --
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    train_step = jit_train_step(setup)
    eval_step = jax.jit(make_eval_step(setup.model))
    sample_fn = jax.jit(
        lambda params, r: _draw_samples(setup.model, params, r, config)
    )

  report = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer
  )
  step = first_step = int(state.step)
  unit = info.unit
  progress = console.Progress(num_steps, unit)
  talk = jax.process_index() == 0  # Only process 0 writes console lines.
  eval_metrics: dict[str, float] = {}
  preempted = False
  bad_steps = 0
  with (
      jax.set_mesh(setup.mesh),
      nn.logical_axis_rules(setup.rules),
      preemption.PreemptionGuard() as guard,
      profiling.PeriodicTrace(
          workdir,
          config.train.profile_every,
          config.train.profile_steps,
          num_steps,
          enabled=jax.process_index() == 0,
      ) as trace,
  ):
    while step < num_steps:
      # ------------------------------------------------------ one step --
      local = next(train_iter)
      common.check_tokens(local["x"], info.vocab_size, info.data_shape)
      batch = _global_batch(setup, local)
      if step == first_step:  # jit reuses this executable: no 2nd compile.
        memory = sharding.memory_report(
            train_step.lower(state, batch, train_rng).compile(),
            setup.abstract_state,
        )
        if jax.process_index() == 0:
          logging.info("%s Mesh %s.", memory, dict(setup.mesh.shape))
      with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
        state, metrics = train_step(state, batch, train_rng)
      step += 1
      if step == first_step + 1:  # Rates are measured from after compiling.
        progress.start(step)
      if config.train.check_nans:
        bad_steps = _check_finite(
            metrics, step, bad_steps, config.train.max_bad_steps, manager
        )
        metrics = {k: v for k, v in metrics.items() if k != FINITE}
      report(step)
      last = step == num_steps
      # ------------------------------------------------ periodic work --
      if step % config.train.log_every == 0 or last:
        scalars = {k: float(v) for k, v in metrics.items()}
        writer.write_scalars(
            step, {f"train/{k}": v for k, v in scalars.items()}
        )
        if talk:
          logging.info("%s", progress.line(step, scalars))
      if step % config.train.eval_every == 0 or last:
        eval_metrics = evaluate(
            setup,
            eval_step,
            state.ema_params,
            step,
            raw_params=state.params if config.optimizer.ema_decay else None,
        )
        writer.write_scalars(step, eval_metrics)
        if talk:
          logging.info("%s", console.eval_line(step, eval_metrics, unit))
      if step % config.train.sample_every == 0 or last:
        samples = np.asarray(
            jax.device_get(
                sample_fn(
                    state.ema_params, jax.random.fold_in(sample_rng, step)
                )
            )
        )
        if jax.process_index() == 0:
          outputs["samples"] = sample_writing.write_samples(
              workdir, step, samples, info, writer
          )
          logging.info("step %d samples: %s", step, outputs["samples"])
      if step % config.train.checkpoint_every == 0 or last:
        checkpointing.save(manager, step, state, train_iter)
        if talk:
          logging.info(
              "step %d checkpoint: %s",
              step,
              os.path.join(outputs["checkpoints"], str(step)),
          )
      trace.after_step(step, state)
      if guard.requested:
        checkpointing.save(manager, step, state, train_iter)
        logging.warning(
            "Stop requested by a signal: saved step %d to %s; "
            "rerun with the same --workdir to resume.",
            step,
            manager.directory,
        )
        preempted = True
        break
  writer.flush()
  manager.close()
  outputs["bad_steps"] = bad_steps
  return {
      "eval": eval_metrics,
      "step": step,
      "preempted": preempted,
      "trained_steps": step - first_step,
      **outputs,
  }


def _draw_samples(model, params, rng, config):
  """The periodic samples: config.train.sampler (else the process's default)
  with its default settings, on config.train.sample_steps and
  train.sampling_grid where it walks a time grid.

  Class-conditional models label sample i with class i mod num_classes.
  """
  num_samples = config.train.num_samples
  labels = drawing.cycled_labels(num_samples, model.num_classes)
  name = configuration.periodic_sampler(config)
  settings = sampling.get(name).make_settings(
      num_steps=config.train.sample_steps, grid=config.train.sampling_grid
  )
  return drawing.sample_batch(
      model, {"params": params}, rng, name, settings, num_samples, labels
  )


def _flatten(config, prefix=""):
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
