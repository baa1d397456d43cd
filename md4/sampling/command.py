"""What `python -m md4.sample` does, as an importable function.

`sample_to_files(Request(...))` restores a run (EMA parameters), builds the
known tokens of a prompt, infilling template or inpainting mask, draws the
samples, and writes them (see `md4.sample_writing`) with `summary.json`.
With `reconstruct_from` it instead masks examples of that split forward to
`reconstruct_t` and denoises them (`md4.sampling.reconstruction`), writing
the originals, the noised inputs and the reconstructions. The sampler and
grid default to the run's config.train.sampler and train.sampling_grid.
A D3PM run (config.model.process="d3pm") samples with its own T-step
reverse chain (`md4.sampling.d3pm_reverse`) instead of the unmasking
samplers; `check_d3pm_request` names the flags that do not apply to it.
"""

import dataclasses
import json
import os

import flax.linen as nn
import jax

from md4 import sample_writing
from md4.sampling import conditioning
from md4.sampling import core
from md4.sampling import d3pm_reverse
from md4.sampling import drawing
from md4.sampling import reconstruction
from md4.sampling import restored_run


@dataclasses.dataclass(frozen=True)
class Request:
  """One `md4.sample` invocation; fields mirror its flags."""
  workdir: str
  step: int | None = None
  overrides: tuple[str, ...] = ()
  output_dir: str | None = None
  num_samples: int = 16
  batch_size: int = 16
  steps: int | None = None  # None: config.train.sample_steps.
  seed: int = 0
  sampler: str | None = None  # None: config.train.sampler.
  grid: str | None = None  # None: config.train.sampling_grid.
  topp: float = 0.9
  remask_strength: float = 0.05
  choice_temperature: float = 1.0
  label: int | None = None
  guidance: float = 0.0
  prompt: str | None = None
  infill: str | None = None
  inpaint: str | None = None
  inpaint_split: str | None = None
  history: bool = False
  history_frames: int = 32
  reconstruct_from: str | None = None  # A split: reconstruct its examples.
  reconstruct_t: float = 0.5  # The time they are masked to.


def known_tokens(request: Request, run: restored_run.RestoredRun):
  """Known tokens from the prompt, infilling template or mask, or None."""
  info = run.setup.datasets.info
  dataset = run.config.data.dataset
  given = {name: value for name, value in (
      ("prompt", request.prompt), ("infill", request.infill),
      ("inpaint", request.inpaint)) if value is not None}
  if len(given) > 1:
    raise ValueError(f"give at most one of --prompt, --infill, --inpaint; "
                     f"got {', '.join('--' + k for k in given)}.")
  if not given:
    return None
  if "inpaint" in given:
    if info.kind != "image":
      raise ValueError(f"--inpaint needs an image data set, not {dataset}; "
                       "use --prompt or --infill.")
    split = request.inpaint_split or next(iter(run.setup.datasets.eval))
    images = conditioning.split_examples(run.setup.datasets, split,
                                         request.num_samples)
    known = conditioning.image_known(request.inpaint, images)
    conditioning.check_known_tokens(
        known, info.vocab_size, f"--inpaint_split={split!r}")
    return known
  if info.kind != "text":
    raise ValueError(f"--prompt/--infill need a text data set, not "
                     f"{dataset}; use --inpaint.")
  (flag, template), = given.items()
  known = conditioning.text_known(template, conditioning.encoder(info, dataset),
                                  info.data_shape[0], request.num_samples)
  conditioning.check_known_tokens(known, info.vocab_size,
                                  f"--{flag}={template!r}")
  return known


D3PM_SAMPLER = "ancestral"  # The D3PM reverse chain.


def check_d3pm_request(request: Request, num_steps: int) -> None:
  """Rejects, naming the flag, what the D3PM reverse chain cannot do.

  Args:
    request: the command's flags.
    num_steps: the run's config.model.num_steps (T).
  """
  process = f"config.model.process='d3pm' (run {request.workdir!r})"
  if request.sampler not in (None, D3PM_SAMPLER):
    raise ValueError(
        f"--sampler={request.sampler} does not apply to D3PM, {process}: "
        "its reverse chain changes every token at every step instead of "
        f"revealing masked ones. Use --sampler={D3PM_SAMPLER} (the D3PM "
        "reverse chain, one network call per step).")
  if request.steps is not None and request.steps != num_steps:
    raise ValueError(
        f"--steps={request.steps} does not apply to D3PM, {process}: it "
        f"samples with its T = config.model.num_steps = {num_steps} steps. "
        "Drop --steps.")
  if request.grid not in (None, "uniform"):
    raise ValueError(f"--grid={request.grid} does not apply to D3PM, "
                     f"{process}: its steps are t = T..1. Drop --grid.")
  for flag in ("prompt", "infill", "inpaint"):
    if getattr(request, flag) is not None:
      raise ValueError(f"--{flag} does not apply to D3PM, {process}: its "
                       "reverse chain has no conditioning on known tokens. "
                       f"Drop --{flag}, or sample an MD4 run.")
  if request.reconstruct_from is not None:
    raise ValueError(f"--reconstruct_from does not apply to D3PM, {process}:"
                     " its noise changes token values instead of masking "
                     "them. Drop --reconstruct_from, or use an MD4 run.")
  if request.guidance != 0.0:
    raise ValueError(f"--guidance={request.guidance} does not apply to D3PM,"
                     f" {process}. Drop --guidance.")


def check_reconstruct_request(request: Request) -> None:
  """Rejects, naming the flag, what does not combine with reconstruction."""
  if request.reconstruct_from is None:
    return
  for flag in ("prompt", "infill", "inpaint", "label"):
    if getattr(request, flag) is not None:
      raise ValueError(
          f"--{flag} does not apply with --reconstruct_from: the given "
          "tokens are the unmasked ones of each example, and a "
          "class-conditional model takes each example's own label. Drop "
          f"--{flag}.")
  core.Settings(start_time=request.reconstruct_t).validate()


def with_config_defaults(request: Request, config) -> Request:
  """The request with the sampler and grid left unset taken from config."""
  if config.model.process == "d3pm":
    return dataclasses.replace(request,
                               sampler=request.sampler or D3PM_SAMPLER)
  return dataclasses.replace(
      request, sampler=request.sampler or config.train.sampler,
      grid=request.grid or config.train.sampling_grid)


def _settings(request: Request, run: restored_run.RestoredRun,
              start_time: float = 1.0) -> core.Settings:
  """The unmasking samplers' settings from the flags."""
  return core.Settings(
      num_steps=request.steps or run.config.train.sample_steps,
      grid=request.grid, topp=request.topp,
      remask_strength=request.remask_strength,
      choice_temperature=request.choice_temperature,
      num_frames=request.history_frames if request.history else 0,
      start_time=start_time)


def _reconstruct(request: Request, run: restored_run.RestoredRun):
  """(settings, `Reconstruction`) of the examples of --reconstruct_from."""
  rows = conditioning.split_rows(run.setup.datasets, request.reconstruct_from,
                                 request.num_samples,
                                 flag="--reconstruct_from")
  model = run.setup.model
  labels = rows.get("label") if model.num_classes else None
  settings = _settings(request, run, start_time=request.reconstruct_t)
  return settings, reconstruction.reconstruct(
      model, run.params, rows["x"], request.sampler, settings,
      batch_size=request.batch_size, seed=request.seed, labels=labels,
      guidance=request.guidance)


def _draw(request: Request, run: restored_run.RestoredRun,
          known: core.Known | None):
  """(settings, drawn samples) of the run's process."""
  model = run.setup.model
  num_frames = request.history_frames if request.history else 0
  if model.process == "d3pm":
    if request.label is not None and not 0 <= request.label < (
        model.num_classes):
      raise ValueError(
          f"--label={request.label}: the model has {model.num_classes} "
          "classes (config.model.class_conditional); give a label in range "
          "or drop --label.")
    settings = core.Settings(num_steps=model.num_steps, num_frames=num_frames)
    settings.validate()
    return settings, d3pm_reverse.draw(
        model, run.params, num_samples=request.num_samples,
        batch_size=request.batch_size, seed=request.seed,
        label=request.label, num_frames=num_frames)
  settings = _settings(request, run)
  return settings, drawing.draw(
      model, run.params, request.sampler, settings,
      num_samples=request.num_samples, batch_size=request.batch_size,
      seed=request.seed, known=known, label=request.label,
      guidance=request.guidance)


def _output_dir(request: Request, run: restored_run.RestoredRun) -> str:
  if request.output_dir:
    return request.output_dir
  name = f"{request.sampler}_step{run.step}_seed{request.seed}"
  if request.reconstruct_from is not None:
    name = (f"reconstruct_{request.reconstruct_from}_t"
            f"{request.reconstruct_t:g}_{name}")
  return os.path.join(run.workdir, sample_writing.SAMPLE_DIR, name)


def sample_to_files(request: Request) -> dict:
  """Draws and writes the samples; returns the summary (also saved)."""
  if request.steps is not None and request.steps < 1:
    raise ValueError(f"--steps={request.steps}: give at least 1 time step, "
                     "or drop --steps for config.train.sample_steps.")
  config = restored_run.load_config(request.workdir, request.overrides)
  if config.model.process == "d3pm":  # Checked before the slow restore.
    check_d3pm_request(request, config.model.num_steps)
  check_reconstruct_request(request)
  request = with_config_defaults(request, config)
  if jax.process_index() == 0:
    sample_writing.check_output_dir(
        request.output_dir or os.path.join(request.workdir,
                                           sample_writing.SAMPLE_DIR),
        "--output_dir")
  run = restored_run.restore(request.workdir, request.step, request.overrides)
  info = run.setup.datasets.info
  rebuilt = known = None
  if request.reconstruct_from is None and config.model.process != "d3pm":
    known = known_tokens(request, run)
  with jax.set_mesh(run.setup.mesh), nn.logical_axis_rules(run.setup.rules):
    if request.reconstruct_from is not None:
      settings, rebuilt = _reconstruct(request, run)
      drawn = rebuilt.drawn
    else:
      settings, drawn = _draw(request, run, known)
  summary = {
      "request": dataclasses.asdict(request), "checkpoint_step": run.step,
      "settings": dataclasses.asdict(settings),
      "network_calls_per_sample": drawn.network_calls,
      "samples_per_second": drawn.samples_per_second,
      "seconds": drawn.seconds, "compile_seconds": drawn.compile_seconds,
  }
  if rebuilt is not None:
    summary["reconstruction"] = {
        "split": request.reconstruct_from, "t": request.reconstruct_t,
        "num_examples": len(rebuilt.originals),
        **rebuilt.scores(run.setup.model.mask_id)}
  if jax.process_index() > 0:
    return summary
  # ------------------------------------------------------- outputs --
  out = _output_dir(request, run)
  if rebuilt is not None:
    paths = []
    for name, tokens in (("originals", rebuilt.originals),
                         ("noised", rebuilt.noised),
                         ("reconstructions", drawn.samples)):
      paths += sample_writing.write_sample_files(out, tokens, info, name=name)
  else:
    paths = sample_writing.write_sample_files(
        out, drawn.samples, info, known=known,
        prompt=request.prompt or request.infill or "")
  if drawn.history is not None:
    paths += sample_writing.write_history(out, drawn.history, info)
  paths.append(os.path.join(out, "summary.json"))
  summary["files"] = paths
  with open(paths[-1], "w") as f:
    json.dump(summary, f, indent=2)
  return summary
