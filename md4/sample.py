r"""Draws samples from a trained run's checkpoint (EMA parameters).

  python -m md4.sample --workdir=./expt/digits --num_samples=64
  python -m md4.sample --workdir=./expt/text8 --sampler=topp --topp=0.9 \
      --steps=1000 --prompt="the history of"
  python -m md4.sample --workdir=./expt/digits --inpaint=left --history
  python -m md4.sample --workdir=./expt/d3pm_digits --history  # D3PM
  python -m md4.sample --workdir=./expt/digits --reconstruct_from=test \
      --reconstruct_t=0.5

Writes into --output_dir (default <workdir>/samples/<sampler>_step<N>_seed<S>)
the samples (PNG grid, or .txt and .jsonl; and .npy), `summary.json`
(settings, network calls per sample, samples/s) and, with --history, a GIF
and a strip image of the denoising. --reconstruct_from=SPLIT masks that
split's first examples forward to --reconstruct_t with the model's schedule
and denoises them from there, writing originals, noised inputs and
reconstructions and the share of tokens recovered. The logic is
`md4.sampling.command.sample_to_files`; README.md, "Sampling and
evaluation", lists the samplers. A D3PM run (config.model.process="d3pm")
samples with its T-step reverse chain (`--sampler=ancestral`, one network
call per step); flags of the unmasking samplers are rejected for it.
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console

console.hide_native_logs()  # Before clu (via the restore) imports TensorFlow.

from absl import app
from absl import flags

from md4 import error_boundary
from md4 import sampling
from md4.sampling import command
from md4.sampling import conditioning
from md4.sampling import core

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default latest.")
_OVERRIDE = flags.DEFINE_multi_string(
    "override", [], "section.field=value changes to the saved config, e.g. "
    "data.data_dir=/data.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Samples to draw.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Samples per call.")
_STEPS = flags.DEFINE_integer(
    "steps", None, "Time steps T; default config.train.sample_steps "
    "(D3PM: always its config.model.num_steps).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_SAMPLER = flags.DEFINE_enum("sampler", None, list(sampling.NAMES),
                             "Sampler; default config.train.sampler.")
_GRID = flags.DEFINE_enum("grid", None, list(core.GRIDS),
                          "Time grid; default config.train.sampling_grid.")
_TOPP = flags.DEFINE_float("topp", 0.9, "Nucleus mass (--sampler=topp).")
_REMASK = flags.DEFINE_float(
    "remask_strength", 0.05, "ReMDM eta in [0, 1] (--sampler=remask).")
_CHOICE = flags.DEFINE_float(
    "choice_temperature", 1.0, "Confidence noise (--sampler=confidence).")
_LABEL = flags.DEFINE_integer("label", None, "Class id (class-conditional).")
_GUIDANCE = flags.DEFINE_float(
    "guidance", 0.0, "Classifier-free guidance scale (needs --label).")
_PROMPT = flags.DEFINE_string("prompt", None, "Text prefix to continue.")
_INFILL = flags.DEFINE_string(
    "infill", None, "Text template: [N] = N generated tokens, [*] = as many "
    "as fill the sequence, e.g. 'once upon a time[*]the end'.")
_INPAINT = flags.DEFINE_string(
    "inpaint", None, f"Known region ({', '.join(conditioning.REGIONS)}) or a "
    "PNG whose white pixels are known.")
_INPAINT_SPLIT = flags.DEFINE_string(
    "inpaint_split", None, "Split whose first examples give the known "
    "pixels; default the first evaluation split.")
_HISTORY = flags.DEFINE_bool("history", False, "Write a GIF and a strip.")
_HISTORY_FRAMES = flags.DEFINE_integer("history_frames", 32, "GIF frames.")
_RECONSTRUCT_FROM = flags.DEFINE_string(
    "reconstruct_from", None, "A split (an evaluation split or train): mask "
    "its first --num_samples examples forward to --reconstruct_t and "
    "reconstruct them.")
_RECONSTRUCT_T = flags.DEFINE_float(
    "reconstruct_t", 0.5, "Time in (0, 1] the examples are masked to "
    "(each token kept with probability alpha(t)).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup(flags.FLAGS.verbosity)
  summary = command.sample_to_files(command.Request(
      workdir=_WORKDIR.value, step=_STEP.value,
      overrides=tuple(_OVERRIDE.value), output_dir=_OUTPUT_DIR.value,
      num_samples=_NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value,
      steps=_STEPS.value, seed=_SEED.value, sampler=_SAMPLER.value,
      grid=_GRID.value, topp=_TOPP.value, remask_strength=_REMASK.value,
      choice_temperature=_CHOICE.value, label=_LABEL.value,
      guidance=_GUIDANCE.value, prompt=_PROMPT.value, infill=_INFILL.value,
      inpaint=_INPAINT.value, inpaint_split=_INPAINT_SPLIT.value,
      history=_HISTORY.value, history_frames=_HISTORY_FRAMES.value,
      reconstruct_from=_RECONSTRUCT_FROM.value,
      reconstruct_t=_RECONSTRUCT_T.value))
  sampler = summary["request"]["sampler"]
  if "reconstruction" in summary:
    r = summary["reconstruction"]
    masked_equal = ("n/a" if r["masked_equal_fraction"] is None
                    else f"{r['masked_equal_fraction']:.1%}")
    print(f"{r['num_examples']} examples of {r['split']} masked to t = "
          f"{r['t']:g} ({r['masked_fraction']:.1%} of tokens masked, "
          f"{r['expected_masked_fraction']:.1%} expected) and reconstructed "
          f"with {sampler}: {r['equal_fraction']:.1%} of all tokens and "
          f"{masked_equal} of the masked ones equal the original. Written "
          "to:")
  else:
    print(f"{summary['request']['num_samples']} samples ({sampler}, "
          f"{summary['network_calls_per_sample']:.1f} network calls per "
          f"sample, {summary['samples_per_second']:.2f} samples/s) written "
          "to:")
  print("\n".join(f"  {p}" for p in summary.get("files", [])))


def cli() -> None:
  """The `md4-sample` command (and `python -m md4.sample`)."""
  error_boundary.run_app(main)


if __name__ == "__main__":
  cli()
