r"""Draws samples from a trained run's checkpoint (EMA parameters).

  python -m md4.sample --workdir=./expt/digits --num_samples=64
  python -m md4.sample --workdir=./expt/text8 --sampler=topp --topp=0.9 \
      --steps=1000 --prompt="the history of"
  python -m md4.sample --workdir=./expt/digits --inpaint=left --history
  python -m md4.sample --workdir=./expt/d3pm_digits --history  # D3PM
  python -m md4.sample --workdir=./expt/ar_text8 --temperature=0.9
  python -m md4.sample --workdir=./expt/digits --reconstruct_from=test \
      --reconstruct_t=0.5

Writes into --output_dir (default <workdir>/samples/<sampler>_step<N>_seed<S>)
the samples (PNG grid, or .txt and .jsonl; and .npy), `summary.json`
(settings, network calls per sample, samples/s) and, with --history, a GIF
and a strip image of the denoising. --reconstruct_from=SPLIT masks that
split's first examples forward to --reconstruct_t with the model's schedule
and denoises them from there, writing originals, noised inputs and
reconstructions and the share of tokens recovered.

The sampler defaults to config.train.sampler, else the process's own
default (D3PM: its reverse chain; autoregressive: left to right). Each
sampler reads its own settings (`md4.sampling`'s registry): the flags of
every sampler's own settings are defined here from that registry, and a flag
the chosen sampler does not read is rejected, naming the samplers that do.
`sample_to_files(Request(...))` is the command as a function.
"""

import dataclasses
import json
import os
import pathlib
from typing import Any

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console

console.hide_native_logs()  # Before clu (via the restore) imports TensorFlow.

from absl import app
from absl import flags
import flax.linen as nn
import jax

from md4 import configuration
from md4 import diffusion
from md4 import error_boundary
from md4 import judge as judge_lib
from md4 import run as run_lib
from md4 import sample_writing
from md4 import sampling
from md4.diffusion import process as process_lib
from md4.sampling import known_tokens
from md4.sampling import core
from md4.sampling import drawing
from md4.sampling import reconstruction


@dataclasses.dataclass(frozen=True)
class Request:
  """One `md4.sample` invocation; fields mirror its flags.

  `own_settings` holds the samplers' own flags that were given, as
  (flag, value) pairs (`sampling.own_settings()` lists them).
  """

  workdir: str
  step: int | None = None
  overrides: tuple[str, ...] = ()
  output_dir: str | None = None
  num_samples: int = 16
  batch_size: int = 16
  steps: int | None = None  # None: config.train.sample_steps.
  seed: int = 0
  sampler: str | None = None  # None: config.train.sampler, or the process's.
  grid: str | None = None  # None: config.train.sampling_grid.
  own_settings: tuple[tuple[str, Any], ...] = ()
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
  judge: str | None = None  # GPT-2 directory or autoregressive workdir.


# -------------------------------------------------------------- logic -----


def known_for(request: Request, run: run_lib.RestoredRun):
  """Known tokens from the prompt, infilling template or mask, or None."""
  info = run.setup.datasets.info
  dataset = run.config.data.dataset
  given = {
      name: value
      for name, value in (
          ("prompt", request.prompt),
          ("infill", request.infill),
          ("inpaint", request.inpaint),
      )
      if value is not None
  }
  if len(given) > 1:
    raise ValueError(
        "give at most one of --prompt, --infill, --inpaint; "
        f"got {', '.join('--' + k for k in given)}."
    )
  if not given:
    return None
  if "inpaint" in given:
    if info.kind != "image":
      raise ValueError(
          f"--inpaint needs an image data set, not {dataset}; "
          "use --prompt or --infill."
      )
    split = request.inpaint_split or next(iter(run.setup.datasets.eval))
    images = known_tokens.split_examples(
        run.setup.datasets, split, request.num_samples
    )
    known = known_tokens.image_known(request.inpaint, images)
    known_tokens.check_known_tokens(
        known, info.vocab_size, f"--inpaint_split={split!r}"
    )
    return known
  if info.kind != "text":
    raise ValueError(
        f"--prompt/--infill need a text data set, not {dataset}; use --inpaint."
    )
  ((flag, template),) = given.items()
  known = known_tokens.text_known(
      template,
      known_tokens.encoder(info, dataset),
      info.data_shape[0],
      request.num_samples,
  )
  known_tokens.check_known_tokens(
      known, info.vocab_size, f"--{flag}={template!r}"
  )
  return known


def sampler_of(request: Request, config) -> sampling.Sampler:
  """The chosen sampler, checked against the run's process and the flags.

  Everything here is decided from config.json, before the slow restore.
  """
  process = diffusion.from_config(config)
  name = request.sampler or configuration.periodic_sampler(config)
  entry = sampling.get(name)
  reason = entry.reason_not_applicable(process)
  if reason:
    raise ValueError(reason)
  names = entry.setting_names
  for flag, given, setting in (
      ("steps", request.steps, "num_steps"),
      ("grid", request.grid, "grid"),
  ):
    if given is not None and setting not in names:
      raise ValueError(
          f"--{flag}={given} does not apply to --sampler={name}: it has no "
          f"time grid. Drop --{flag}."
      )
  own = sampling.own_settings()
  for flag, _ in request.own_settings:
    if flag not in own:
      raise ValueError(
          f"--{flag} is not a sampler setting; valid: {', '.join(own)}."
      )
    if own[flag].name not in names:
      readers = [
          s.name
          for s in sampling.SAMPLERS.values()
          if own[flag].name in s.setting_names
      ]
      raise ValueError(
          f"--{flag} does not apply to --sampler={name}; it is a setting of "
          f"--sampler={' or '.join(readers)}. Drop --{flag}."
      )
  if not entry.known_tokens:
    for flag in ("prompt", "infill", "inpaint"):
      if getattr(request, flag) is not None:
        raise ValueError(
            f"--{flag} does not apply to --sampler={name} (config.model."
            f"process={process.name!r}): it cannot keep given tokens. Drop "
            f"--{flag}."
        )
  if request.reconstruct_from is not None:
    reason = process_lib.reason_missing(
        process,
        process_lib.UNMASKING,
        "--reconstruct_from",
        "Drop --reconstruct_from.",
    )
    if reason:
      raise ValueError(reason)
    for flag in ("prompt", "infill", "inpaint", "label"):
      if getattr(request, flag) is not None:
        raise ValueError(
            f"--{flag} does not apply with --reconstruct_from: the given "
            "tokens are the unmasked ones of each example, and a "
            "class-conditional model takes each example's own label. Drop "
            f"--{flag}."
        )
  settings_for(request, entry, config).validate()
  return entry


def settings_for(
    request: Request, entry: sampling.Sampler, config
) -> core.BaseSettings:
  """The sampler's settings from the flags and the run's config."""
  values = dict(request.own_settings)
  given = {
      "num_steps": request.steps or config.train.sample_steps,
      "grid": request.grid or config.train.sampling_grid,
      "num_frames": request.history_frames if request.history else 0,
      "start_time": (
          request.reconstruct_t if request.reconstruct_from is not None else 1.0
      ),
  }
  own = sampling.own_settings()
  given.update({own[flag].name: value for flag, value in values.items()})
  return entry.make_settings(**given)


def _reconstruct(
    request: Request,
    run: run_lib.RestoredRun,
    entry: sampling.Sampler,
    settings: core.BaseSettings,
):
  """The `Reconstruction` of the examples of --reconstruct_from."""
  rows = known_tokens.split_rows(
      run.setup.datasets,
      request.reconstruct_from,
      request.num_samples,
      flag="--reconstruct_from",
  )
  model = run.setup.model
  labels = rows.get("label") if model.num_classes else None
  return reconstruction.reconstruct(
      model,
      run.params,
      rows["x"],
      entry.name,
      settings,
      batch_size=request.batch_size,
      seed=request.seed,
      labels=labels,
      guidance=request.guidance,
  )


def _output_dir(request: Request, run: run_lib.RestoredRun) -> str:
  if request.output_dir:
    return request.output_dir
  name = f"{request.sampler}_step{run.step}_seed{request.seed}"
  if request.reconstruct_from is not None:
    name = (
        f"reconstruct_{request.reconstruct_from}_t"
        f"{request.reconstruct_t:g}_{name}"
    )
  return os.path.join(run.workdir, sample_writing.SAMPLE_DIR, name)


def sample_to_files(request: Request) -> dict:
  """Draws and writes the samples; returns the summary (also saved)."""
  if request.steps is not None and request.steps < 1:
    raise ValueError(
        f"--steps={request.steps}: give at least 1 time step, "
        "or drop --steps for config.train.sample_steps."
    )
  config = run_lib.load_config(request.workdir, request.overrides)
  entry = sampler_of(request, config)  # Checked before the slow restore.
  settings = settings_for(request, entry, config)
  request = dataclasses.replace(request, sampler=entry.name)
  if jax.process_index() == 0:
    sample_writing.check_output_dir(
        request.output_dir
        or os.path.join(request.workdir, sample_writing.SAMPLE_DIR),
        "--output_dir",
    )
  if request.judge is not None and not os.path.isdir(request.judge):
    raise ValueError(
        f"--judge={request.judge!r} is not a directory; give a GPT-2 "
        "directory in the Hugging Face layout or an autoregressive md4 "
        "run's workdir."
    )
  run = run_lib.restore(request.workdir, request.step, request.overrides)
  info = run.setup.datasets.info
  judge = None
  if request.judge is not None:  # Loaded (and checked) before sampling.
    if info.kind != "text" or request.reconstruct_from is not None:
      raise ValueError(
          f"--judge scores generated text, but {run.config.data.dataset!r} "
          f"is {info.kind} data"
          + (" and --reconstruct_from" if info.kind == "text" else "")
          + "; drop --judge."
      )
    judge = judge_lib.load_judge(request.judge)
  rebuilt = known = None
  if request.reconstruct_from is None:
    known = known_for(request, run)
  with jax.set_mesh(run.setup.mesh), nn.logical_axis_rules(run.setup.rules):
    if request.reconstruct_from is not None:
      rebuilt = _reconstruct(request, run, entry, settings)
      drawn = rebuilt.drawn
    else:
      drawn = drawing.draw(
          run.setup.model,
          run.params,
          entry.name,
          settings,
          num_samples=request.num_samples,
          batch_size=request.batch_size,
          seed=request.seed,
          known=known,
          label=request.label,
          guidance=request.guidance,
      )
  summary = {
      "request": dataclasses.asdict(request),
      "checkpoint_step": run.step,
      "settings": dataclasses.asdict(settings),
      "network_calls_per_sample": drawn.network_calls,
      "samples_per_second": drawn.samples_per_second,
      "seconds": drawn.seconds,
      "compile_seconds": drawn.compile_seconds,
  }
  if rebuilt is not None:
    summary["reconstruction"] = {
        "split": request.reconstruct_from,
        "t": request.reconstruct_t,
        "num_examples": len(rebuilt.originals),
        **rebuilt.scores(run.setup.model.mask_id),
    }
  if jax.process_index() > 0:
    return summary
  # ------------------------------------------------------- outputs --
  out = _output_dir(request, run)
  if rebuilt is not None:
    paths = []
    for name, tokens in (
        ("originals", rebuilt.originals),
        ("noised", rebuilt.noised),
        ("reconstructions", drawn.samples),
    ):
      paths += sample_writing.write_sample_files(out, tokens, info, name=name)
  else:
    paths = sample_writing.write_sample_files(
        out,
        drawn.samples,
        info,
        known=known,
        prompt=request.prompt or request.infill or "",
    )
  if drawn.history is not None:
    paths += sample_writing.write_history(out, drawn.history, info)
  if judge is not None:
    samples_file = next(p for p in paths if p.endswith(judge_lib.SAMPLES_FILE))
    judged = judge_lib.judge_texts(
        judge, judge_lib.read_samples(pathlib.Path(samples_file))
    )
    judged_path = judge_lib.output_path(pathlib.Path(samples_file), judge.name)
    judged_path.write_text(json.dumps(judged, indent=2))
    paths.append(str(judged_path))
    summary["judged"] = {
        k: judged[k]
        for k in (
            "judge",
            "generative_perplexity",
            "entropy",
            "samples",
            "empty_samples",
            "tokens",
        )
    }
  paths.append(os.path.join(out, "summary.json"))
  summary["files"] = paths
  with open(paths[-1], "w") as f:
    json.dump(summary, f, indent=2)
  return summary


# ---------------------------------------------------------------- CLI -----


def define_flags() -> None:
  """The command-line flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default latest.")
  flags.DEFINE_multi_string(
      "override",
      [],
      "section.field=value changes to the saved config, e.g. "
      "data.data_dir=/data.",
  )
  flags.DEFINE_string("output_dir", None, "Where to write.")
  flags.DEFINE_integer("num_samples", 16, "Samples to draw.")
  flags.DEFINE_integer("batch_size", 16, "Samples per call.")
  flags.DEFINE_integer(
      "steps",
      None,
      "Time steps T of the grid samplers; default config.train.sample_steps.",
  )
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_enum(
      "sampler",
      None,
      list(sampling.NAMES),
      "Sampler; default config.train.sampler, or the process's default.",
  )
  flags.DEFINE_enum(
      "grid",
      None,
      list(core.GRIDS),
      "Time grid; default config.train.sampling_grid.",
  )
  for flag, field in sampling.own_settings().items():
    readers = [
        s.name
        for s in sampling.SAMPLERS.values()
        if field.name in s.setting_names
    ]
    help_text = (
        f"{field.metadata['doc']} (--sampler={', '.join(readers)};"
        f" default {field.default})"
    )
    define = {
        int: flags.DEFINE_integer,
        float: flags.DEFINE_float,
        bool: flags.DEFINE_bool,
        str: flags.DEFINE_string,
    }[type(field.default)]
    define(flag, None, help_text)
  flags.DEFINE_integer("label", None, "Class id (class-conditional).")
  flags.DEFINE_float(
      "guidance", 0.0, "Classifier-free guidance scale (needs --label)."
  )
  flags.DEFINE_string("prompt", None, "Text prefix to continue.")
  flags.DEFINE_string(
      "infill",
      None,
      "Text template: [N] = N generated tokens, [*] = as "
      "many as fill the sequence, e.g. 'once upon a time[*]the end'.",
  )
  flags.DEFINE_string(
      "inpaint",
      None,
      f"Known region ({', '.join(known_tokens.REGIONS)}) or "
      "a PNG whose white pixels are known.",
  )
  flags.DEFINE_string(
      "inpaint_split",
      None,
      "Split whose first examples give the known "
      "pixels; default the first evaluation split.",
  )
  flags.DEFINE_bool("history", False, "Write a GIF and a strip.")
  flags.DEFINE_integer("history_frames", 32, "GIF frames.")
  flags.DEFINE_string(
      "reconstruct_from",
      None,
      "A split (an evaluation split or train): "
      "mask its first --num_samples examples forward to --reconstruct_t and "
      "reconstruct them.",
  )
  flags.DEFINE_float(
      "reconstruct_t",
      0.5,
      "Time in (0, 1] the examples are masked to "
      "(each token kept with probability alpha(t)).",
  )
  flags.DEFINE_string(
      "judge",
      None,
      "Score the text samples: generative perplexity under a GPT-2 Hugging "
      "Face directory or an autoregressive md4 workdir, and unigram entropy "
      "(md4.judge); written as judged_<judge>.json.",
  )
  flags.mark_flags_as_required(["workdir"])


def request_from_flags() -> Request:
  f = flags.FLAGS
  own = tuple(
      (flag, f[flag].value)
      for flag in sampling.own_settings()
      if f[flag].value is not None
  )
  return Request(
      workdir=f.workdir,
      step=f.step,
      overrides=tuple(f.override),
      output_dir=f.output_dir,
      num_samples=f.num_samples,
      batch_size=f.batch_size,
      steps=f.steps,
      seed=f.seed,
      sampler=f.sampler,
      grid=f.grid,
      own_settings=own,
      label=f.label,
      guidance=f.guidance,
      prompt=f.prompt,
      infill=f.infill,
      inpaint=f.inpaint,
      inpaint_split=f.inpaint_split,
      history=f.history,
      history_frames=f.history_frames,
      reconstruct_from=f.reconstruct_from,
      reconstruct_t=f.reconstruct_t,
      judge=f.judge,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup(flags.FLAGS.verbosity)
  summary = sample_to_files(request_from_flags())
  sampler = summary["request"]["sampler"]
  if "reconstruction" in summary:
    r = summary["reconstruction"]
    masked_equal = (
        "n/a"
        if r["masked_equal_fraction"] is None
        else f"{r['masked_equal_fraction']:.1%}"
    )
    print(
        f"{r['num_examples']} examples of {r['split']} masked to t = "
        f"{r['t']:g} ({r['masked_fraction']:.1%} of tokens masked, "
        f"{r['expected_masked_fraction']:.1%} expected) and reconstructed "
        f"with {sampler}: {r['equal_fraction']:.1%} of all tokens and "
        f"{masked_equal} of the masked ones equal the original. Written "
        "to:"
    )
  else:
    print(
        f"{summary['request']['num_samples']} samples ({sampler}, "
        f"{summary['network_calls_per_sample']:.1f} network calls per "
        f"sample, {summary['samples_per_second']:.2f} samples/s) written "
        "to:"
    )
  print("\n".join(f"  {p}" for p in summary.get("files", [])))
  if "judged" in summary:
    print(judge_lib.summary_line(summary["judged"]))


def cli() -> None:
  """The `md4-sample` command (and `python -m md4.sample`)."""
  define_flags()
  error_boundary.run_app(main)


if __name__ == "__main__":
  cli()
