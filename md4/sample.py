r"""Draws samples from a trained run's checkpoint (EMA parameters).

  python -m md4.sample --workdir=./expt/digits --num_samples=64
  python -m md4.sample --workdir=./expt/text8 --sampler=topp --topp=0.9 \
      --steps=1000 --prompt="the history of"
  python -m md4.sample --workdir=./expt/digits --inpaint=left --history
  python -m md4.sample --workdir=./expt/d3pm_digits --history  # D3PM
  python -m md4.sample --workdir=./expt/ar_text8 --temperature=0.9
  python -m md4.sample --workdir=./expt/digits --reconstruct_from=test \
      --reconstruct_t=0.5
  python -m md4.sample --workdir=./expt/owt --blocks=8 --length=2048 \
      --stride=512 --stop_at_eos --min_length=64

Writes into --output_dir (default <workdir>/samples/<sampler>_step<N>_seed<S>,
with e.g. `_blocks8_length1024` appended for the semi-autoregressive flags)
the samples (PNG grid, or .txt and .jsonl; and .npy), `summary.json`
(settings, network calls per sample, samples/s) and, with --history, a GIF
and a strip image of the denoising. --reconstruct_from=SPLIT masks that
split's first examples forward to --reconstruct_t with the model's schedule
and denoises them from there, writing originals, noised inputs and
reconstructions and the share of tokens recovered.

Semi-autoregressive text (`md4.sampling.semi_ar`, unmasking processes and
samplers that keep given tokens): --blocks=K or --block_length=B draws each
window block by block, left to right; --length=N (> L) with --stride=S
draws N tokens in windows of L that each add S. --stop_at_eos cuts each
text at its first end-of-text token (.txt/.jsonl hold the cut texts,
samples.npy the full tokens and samples_lengths.npy the cut lengths);
--min_length=M forbids end-of-text in the first M tokens. These flags read
the data set's facts (tokenizer, end-of-text id) and check them before the
restore.

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
from md4.data import pipelines
from md4.diffusion import process as process_lib
from md4.sampling import known_tokens
from md4.sampling import core
from md4.sampling import drawing
from md4.sampling import reconstruction
from md4.sampling import semi_ar


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
  blocks: int | None = None  # K blocks per window, left to right.
  block_length: int | None = None  # Or B = L / K tokens per block.
  length: int | None = None  # N tokens per text; None = L.
  stride: int | None = None  # New tokens per window; None = L // 2.
  stop_at_eos: bool = False  # Cut texts at their first end-of-text.
  min_length: int = 0  # No end-of-text in the first M tokens.


# -------------------------------------------------------------- logic -----


def _conditions(request: Request) -> dict[str, str]:
  """The given --prompt, --infill, --inpaint (at most one)."""
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
  return given


def text_known_for(
    request: Request, info, dataset: str, length: int, length_flag: str
):
  """Known tokens [B, length] of --prompt/--infill, or None."""
  given = _conditions(request)
  if not given:
    return None
  if info.kind != "text":
    raise ValueError(
        f"--prompt/--infill need a text data set, not {dataset}; use --inpaint."
    )
  ((flag, template),) = given.items()
  known = known_tokens.text_known(
      template,
      known_tokens.encoder(info, dataset),
      length,
      request.num_samples,
      length_flag,
  )
  known_tokens.check_known_tokens(
      known, info.vocab_size, f"--{flag}={template!r}"
  )
  return known


def known_for(request: Request, run: run_lib.RestoredRun):
  """Known tokens from the prompt, infilling template or mask, or None."""
  info = run.setup.datasets.info
  dataset = run.config.data.dataset
  given = _conditions(request)
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
  return text_known_for(
      request, info, dataset, info.data_shape[0], "config.data.data_shape"
  )


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
  plan_of(request, config, entry)
  return entry


# ----------------------------------------- semi-autoregressive text -----

_PLAN_FLAGS = ("blocks", "block_length", "length", "stride", "min_length")


def _given_flags(request: Request, names) -> list[str]:
  """The flags among `names` given (not at their defaults)."""
  defaults = {f.name: f.default for f in dataclasses.fields(Request)}
  return [n for n in names if getattr(request, n) != defaults[n]]


def plan_of(
    request: Request, config, entry: sampling.Sampler
) -> semi_ar.Plan | None:
  """The windows and blocks of the flags, or None; checked from config.json.

  Raises a ValueError naming the flag for image data, a sampler or process
  that cannot keep given (or held-masked) tokens, a block size that does
  not divide L, a stride that cannot reach --length, and flags that clash.
  """
  plan_flags = _given_flags(request, _PLAN_FLAGS)
  text_flags = plan_flags + _given_flags(request, ("stop_at_eos",))
  if not text_flags:
    return None
  flag = text_flags[0]
  shape = tuple(config.data.data_shape)
  if len(shape) != 1:
    raise ValueError(
        f"--{flag} needs text data (sequences of one length), but"
        f" config.data.dataset={config.data.dataset!r} has examples of shape"
        f" {shape}; drop --{flag}."
    )
  if request.reconstruct_from is not None:
    raise ValueError(
        f"--{flag} does not apply with --reconstruct_from, which denoises"
        f" given examples in one call; drop --{flag}."
    )
  if not plan_flags:
    return None
  flag = plan_flags[0]
  process = diffusion.from_config(config)
  if not entry.known_tokens:
    raise ValueError(
        f"--{flag} does not apply to --sampler={entry.name} (config.model."
        f"process={process.name!r}): semi-autoregressive sampling gives each"
        f" call the tokens drawn before, and --sampler={entry.name} cannot"
        f" keep given tokens. Drop --{flag}."
    )
  if process_lib.BLOCKS in process.capabilities:
    # Block diffusion generates block by block already, and its sampler
    # reads the network itself; windows (--length) keep the tokens before.
    for own in ("blocks", "block_length", "min_length"):
      if own in plan_flags:
        raise ValueError(
            f"--{own} does not apply to config.model.process="
            f"{process.name!r}: it generates block by block already "
            f"(config.model.{process.name}.block_size="
            f"{process.block_size}), and its sampler reads the network "
            f"directly. Drop --{own}; --length and --stride apply."
        )
  else:
    reason = process_lib.reason_missing(
        process, process_lib.UNMASKING, f"--{flag}", f"Drop --{flag}."
    )
    if reason:
      raise ValueError(reason)
  if request.history:
    raise ValueError(
        f"--history records one sampler call, but --{flag} draws each text"
        f" in several; drop --history (or --{flag})."
    )
  return semi_ar.plan_for(
      shape[0],
      blocks=request.blocks,
      block_length=request.block_length,
      length=request.length,
      stride=request.stride,
      min_length=request.min_length,
  )


def end_of_text_id(info, dataset: str, flag: str) -> int:
  """The data set's end-of-text id (`DataInfo.separator_id`), or an error."""
  if info.separator_id is None:
    raise ValueError(
        f"{flag} needs an end-of-text token, but the {dataset} data set has"
        " none (DataInfo.separator_id: prepared corpora record GPT-2's"
        f" end-of-text in their metadata.json); drop {flag}."
    )
  return int(info.separator_id)


@dataclasses.dataclass(frozen=True)
class TextPlan:
  """What the semi-autoregressive and end-of-text flags settled.

  Attributes:
    plan: the windows and blocks, with the end-of-text id; None when only
      --stop_at_eos was given.
    end_id: the end-of-text id, or None.
    known: given tokens laid out on --length positions, or None (then
      `known_for` lays them out after the restore).
  """

  plan: semi_ar.Plan | None
  end_id: int | None
  known: core.Known | None


def text_plan(request: Request, config, entry) -> TextPlan | None:
  """The data facts the new flags need, read and checked before the restore.

  Loads only the data set's `DataInfo` (`pipelines.load_info`): the
  tokenizer lays a prompt out on --length positions (so a prompt longer
  than --length fails here) and gives the end-of-text id.
  """
  plan = plan_of(request, config, entry)
  if plan is None and not request.stop_at_eos:
    return None
  if not (request.stop_at_eos or request.min_length or request.length):
    return TextPlan(plan, None, None)  # --blocks alone: no data facts.
  info = pipelines.load_info(config.data)
  dataset = config.data.dataset
  end_id = None
  for flag, wanted in (
      ("--stop_at_eos", request.stop_at_eos),
      (f"--min_length={request.min_length}", request.min_length > 0),
  ):
    if wanted:
      end_id = end_of_text_id(info, dataset, flag)
  known = None
  if plan is not None:
    plan = dataclasses.replace(plan, end_id=end_id)
    if request.length is not None:
      known = text_known_for(
          request, info, dataset, plan.text_length, "--length"
      )
  return TextPlan(plan, end_id, known)


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
  # Semi-autoregressive and end-of-text samples do not overwrite plain ones.
  for flag in _given_flags(request, _PLAN_FLAGS + ("stop_at_eos",)):
    value = getattr(request, flag)
    name += f"_{flag}" if value is True else f"_{flag}{value}"
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
  texts = text_plan(request, config, entry)
  plan = texts.plan if texts else None
  if (
      texts is not None
      and texts.end_id is not None
      and "stop_token" in entry.setting_names
      and "stop_token" not in dict(request.own_settings)
  ):  # The block sampler stops once every sample has ended.
    settings = dataclasses.replace(settings, stop_token=texts.end_id)
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
  if texts is not None and texts.known is not None:
    known = texts.known
  elif request.reconstruct_from is None:
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
          plan=plan,
      )
  lengths = None
  if request.stop_at_eos:
    lengths = semi_ar.end_lengths(
        drawn.samples, texts.end_id, None if known is None else known.mask
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
  if plan is not None:
    summary["semi_autoregressive"] = {
        "blocks": plan.num_blocks,
        "block_length": plan.block_length,
        "steps_per_block": getattr(
            semi_ar.block_settings(settings, plan.num_blocks), "num_steps", None
        ),
        "length": plan.text_length,
        "stride": plan.stride,
        "windows": plan.num_windows,
        "min_length": plan.min_length,
    }
  if lengths is not None:
    summary["lengths"] = {
        "end_of_text_id": texts.end_id,
        **semi_ar.length_summary(lengths, drawn.samples.shape[1]),
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
        lengths=lengths,
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
  flags.DEFINE_integer(
      "blocks",
      None,
      "Semi-autoregressive: draw each window in K blocks left to right (K "
      "divides the sequence length; --steps // K steps each).",
  )
  flags.DEFINE_integer(
      "block_length",
      None,
      "Or give the tokens per block B (dividing the sequence length).",
  )
  flags.DEFINE_integer(
      "length",
      None,
      "Tokens per text; more than the sequence length L draws windows of L "
      "that each add --stride tokens; fewer truncates.",
  )
  flags.DEFINE_integer(
      "stride",
      None,
      "New tokens per window with --length > L, in [1, L]; default L // 2.",
  )
  flags.DEFINE_bool(
      "stop_at_eos",
      False,
      "Cut each text at its first end-of-text token (the data set's "
      "separator); summary.json gets the length distribution.",
  )
  flags.DEFINE_integer(
      "min_length",
      0,
      "No end-of-text token in the first N tokens of each text.",
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
      blocks=f.blocks,
      block_length=f.block_length,
      length=f.length,
      stride=f.stride,
      stop_at_eos=f.stop_at_eos,
      min_length=f.min_length,
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
  if "lengths" in summary:
    n = summary["lengths"]
    print(
        f"Cut at the first end-of-text: lengths {n['min']} to {n['max']} "
        f"(median {n['median']:g}, mean {n['mean']:.1f}); "
        f"{n['no_end_of_text']} without one."
    )
  if "judged" in summary:
    print(judge_lib.summary_line(summary["judged"]))


def cli() -> None:
  """The `md4-sample` command (and `python -m md4.sample`)."""
  define_flags()
  error_boundary.run_app(main)


if __name__ == "__main__":
  cli()
