r"""Sampler quality against speed: generative perplexity, entropy, calls, s.

    python benchmarks/sampler_quality.py --workdir=RUN --judge=JUDGE
    python benchmarks/sampler_quality.py --workdir=RUN --judge=gpt2-large \
        --samplers=ancestral,cached --steps=64,256,1024 --num_samples=64 \
        --reference_split=valid --output=quality

For every sampler in `--samplers` (by default those of the issue that
apply to the run's process: ancestral, topp (nucleus mass `--topp`, 0.9),
cached, first_hitting, confidence, remask) and every step count in
`--steps` (32 ... 1024), the script draws `--num_samples` samples of the
text run in `--workdir` (its latest checkpoint, or `--step`) with seed
`--seed`, in batches of `--batch_size` through `md4.sampling.drawing.draw`
(what `md4.sample` runs), and scores them with the judge (`md4.judge`'s
rules: a GPT-2 directory in the Hugging Face layout or an autoregressive
md4 run on the same data; samples cut at the first end-of-text):

* generative perplexity (exp of the judge's nats per token over all
  samples, with its delta-method standard error) and the samples' mean
  unigram entropy (nats, of the judge's tokens; low entropy = repetitive
  text, the usual cause of a suspiciously low perplexity);
* network calls per sample and samples/s (sampling time, compilation
  excluded: `drawing.draw` compiles once, then times the batches).

`first_hitting` has no time grid (it draws one reveal time per token), so
it gives one point, not one per step count. With `--reference_split`, the
first `--num_samples` examples of that split of the run's data are judged
the same way: the perplexity and entropy of real text, drawn as a
horizontal line.

Writes `<output>.json` (every point, the decoded samples, the date, the
machine and its load average before and after) and `<output>.png`: two
panels sharing the x axis (network calls per sample, log scale), the top
one generative perplexity, the bottom one entropy, one line per sampler.
`--output` defaults to `<workdir>/sampler_quality/sampler_quality`. Every
figure is measured in this one run; the load average says how busy the
machine was.
"""

import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

console.hide_native_logs()  # Before md4's modules import TensorFlow.

import flax.linen as nn
import jax

import compiled_step
from md4 import diffusion
from md4 import judge as judge_lib
from md4 import run as run_lib
from md4 import sample as sample_lib
from md4 import sample_writing
from md4 import sampling
from md4.sampling import drawing
from md4.sampling import known_tokens

# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_SAMPLERS = (
    "ancestral",
    "topp",
    "cached",
    "first_hitting",
    "confidence",
    "remask",
)
DEFAULT_STEPS = ("32", "64", "128", "256", "512", "1024")

_WORKDIR = flags.DEFINE_string("workdir", None, "The md4 run to sample.")
_JUDGE = flags.DEFINE_string(
    "judge",
    None,
    "GPT-2 directory (config.json + model.safetensors + vocab.json +"
    " merges.txt) or an autoregressive md4 run's workdir.",
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default latest.")
_SAMPLERS = flags.DEFINE_list(
    "samplers",
    None,
    "Samplers; default those of ancestral, topp, cached, first_hitting,"
    " confidence, remask that apply to the run's process.",
)
_STEPS = flags.DEFINE_list("steps", list(DEFAULT_STEPS), "Step counts T.")
_TOPP = flags.DEFINE_float("topp", 0.9, "Nucleus mass of the topp sampler.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Samples per point.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Samples per batch.")
_JUDGE_BATCH = flags.DEFINE_integer(
    "judge_batch_size", None, "Judge batch; default the judge's own."
)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (the same per point).")
_REFERENCE = flags.DEFINE_string(
    "reference_split", None, "Judge this split's examples too (e.g. valid)."
)
_OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "Output path without suffix; default"
    " <workdir>/sampler_quality/sampler_quality.",
)


@dataclasses.dataclass(frozen=True)
class Point:
  """One (sampler, steps) pair; steps None for a sampler without a grid."""

  sampler: str
  steps: int | None


def parse_steps(values) -> list[int]:
  steps = []
  for text in values:
    try:
      value = int(text)
    except ValueError:
      value = 0
    if value < 1:
      raise app.UsageError(
          f"--steps: {text!r} is not a positive integer; give step counts"
          " such as --steps=32,64,128."
      )
    steps.append(value)
  return steps


def plan(config, samplers, steps: list[int]) -> list[Point]:
  """Every point of the sweep, each sampler checked against the run."""
  process = diffusion.from_config(config)
  if samplers is None:
    samplers = [s for s in DEFAULT_SAMPLERS if s in sampling.names_for(process)]
    if not samplers:
      raise ValueError(
          f"none of {', '.join(DEFAULT_SAMPLERS)} applies to the run's"
          f" process {process.name!r}; give --samplers from:"
          f" {', '.join(sampling.names_for(process))}."
      )
  points = []
  for name in samplers:
    try:
      entry = sampling.get(name)
    except ValueError as e:
      raise ValueError(f"--samplers={name}: {e}") from None
    reason = entry.reason_not_applicable(process)
    if reason:
      raise ValueError(reason)
    if "num_steps" in entry.setting_names:
      points += [Point(name, s) for s in steps]
    else:
      points.append(Point(name, None))
  return points


def settings_of(point: Point, config):
  own = (("topp", _TOPP.value),) if point.sampler == "topp" else ()
  request = sample_lib.Request(
      workdir=_WORKDIR.value,
      sampler=point.sampler,
      steps=point.steps,
      own_settings=own,
  )
  entry = sample_lib.sampler_of(request, config)
  return sample_lib.settings_for(request, entry, config)


def judged(judge, texts) -> dict:
  scores = judge_lib.judge_texts(judge, texts, progress=False)
  return {
      k: scores[k]
      for k in (
          "generative_perplexity",
          "nats_per_token",
          "entropy",
          "samples",
          "empty_samples",
          "tokens",
      )
  }


def sweep(run, judge, planned) -> list[dict]:
  """Draws and judges every (point, settings); one line printed per point."""
  info = run.setup.datasets.info
  results = []
  print(
      f"{'sampler':>14s} {'steps':>6s} {'calls':>8s} {'samples/s':>10s}"
      f" {'gen ppl':>16s} {'entropy':>8s}"
  )
  for point, settings in planned:
    with jax.set_mesh(run.setup.mesh), nn.logical_axis_rules(run.setup.rules):
      drawn = drawing.draw(
          run.setup.model,
          run.params,
          point.sampler,
          settings,
          num_samples=_NUM_SAMPLES.value,
          batch_size=_BATCH_SIZE.value,
          seed=_SEED.value,
      )
    texts = sample_writing.decode_all(drawn.samples, info)
    scores = judged(judge, texts)
    results.append({
        "sampler": point.sampler,
        "steps": point.steps,
        "settings": dataclasses.asdict(settings),
        "network_calls_per_sample": drawn.network_calls,
        "samples_per_second": drawn.samples_per_second,
        "seconds": drawn.seconds,
        "compile_seconds": drawn.compile_seconds,
        **scores,
        "texts": texts,
    })
    ppl = scores["generative_perplexity"]
    print(
        f"{point.sampler:>14s} {point.steps or '-'!s:>6s}"
        f" {drawn.network_calls:8.1f} {drawn.samples_per_second:10.3f}"
        f" {ppl['mean']:9.1f} +- {ppl['se']:<5.1f}"
        f" {scores['entropy']['mean']:8.3f}",
        flush=True,
    )
  return results


def reference(run, judge, split: str) -> dict:
  """The judge's scores of the split's first examples (real text)."""
  info = run.setup.datasets.info
  examples = known_tokens.split_examples(
      run.setup.datasets, split, _NUM_SAMPLES.value
  )
  texts = sample_writing.decode_all(examples, info)
  return {"split": split, **judged(judge, texts), "texts": texts}


def plot(result: dict, path: pathlib.Path) -> None:
  """Perplexity and entropy against network calls, a line per sampler."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (top, bottom) = plt.subplots(
      2, 1, figsize=(7, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
  )
  names = list(dict.fromkeys(p["sampler"] for p in result["points"]))
  for name in names:
    points = sorted(
        (p for p in result["points"] if p["sampler"] == name),
        key=lambda p: p["network_calls_per_sample"],
    )
    calls = [p["network_calls_per_sample"] for p in points]
    ppl = [p["generative_perplexity"]["mean"] for p in points]
    se = [p["generative_perplexity"]["se"] for p in points]
    entropy = [p["entropy"]["mean"] for p in points]
    style = dict(marker="o", markersize=4, label=name)
    line = top.errorbar(calls, ppl, yerr=se, capsize=2, **style)
    bottom.plot(calls, entropy, color=line[0].get_color(), **style)
  ref = result.get("reference")
  if ref:
    label = f"data ({ref['split']})"
    top.axhline(
        ref["generative_perplexity"]["mean"], color="k", ls="--", label=label
    )
    bottom.axhline(ref["entropy"]["mean"], color="k", ls="--", label=label)
  top.set_xscale("log")
  top.set_yscale("log")
  top.set_ylabel(f"generative perplexity ({result['judge']})")
  bottom.set_ylabel("unigram entropy (nats)")
  bottom.set_xlabel("network calls per sample")
  top.legend(fontsize=8)
  top.set_title(
      f"{result['workdir_name']} step {result['checkpoint_step']}:"
      f" {result['num_samples']} samples per point",
      fontsize=10,
  )
  for axis in (top, bottom):
    axis.grid(True, which="both", alpha=0.3)
  fig.text(
      0.01,
      0.005,
      f"{result['date']}; {result['machine']}; load"
      f" {result['load_start']:.2f} -> {result['load_end']:.2f}",
      fontsize=6,
  )
  fig.tight_layout(rect=(0, 0.02, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def check_inputs():
  """Every flag checked before the slow restore; ((point, settings)s, out)."""
  for name, flag in (("workdir", _WORKDIR), ("judge", _JUDGE)):
    if not flag.value:
      raise app.UsageError(f"--{name} is required.")
  if not os.path.isdir(_JUDGE.value):
    raise ValueError(
        f"--judge={_JUDGE.value!r} is not a directory; give a GPT-2"
        " directory in the Hugging Face layout or an autoregressive md4"
        " run's workdir."
    )
  for name, flag in (
      ("num_samples", _NUM_SAMPLES),
      ("batch_size", _BATCH_SIZE),
  ):
    if flag.value < 1:
      raise app.UsageError(f"--{name} must be a positive integer.")
  steps = parse_steps(_STEPS.value)
  config = run_lib.load_config(_WORKDIR.value)
  points = plan(config, _SAMPLERS.value, steps)
  # sampler_of (in settings_of) checks each sampler's settings.
  planned = [(point, settings_of(point, config)) for point in points]
  out = pathlib.Path(
      _OUTPUT.value
      or os.path.join(_WORKDIR.value, "sampler_quality", "sampler_quality")
  )
  sample_writing.check_output_dir(str(out.parent), "--output")
  return planned, out


def main(argv):
  del argv
  planned, out = check_inputs()
  run = run_lib.restore(_WORKDIR.value, _STEP.value)
  info = run.setup.datasets.info
  if info.kind != "text":
    raise ValueError(
        f"{run.config.data.dataset!r} is {info.kind} data; the judges score"
        " text. Give a text run's --workdir."
    )
  judge = judge_lib.load_judge(_JUDGE.value, _JUDGE_BATCH.value)
  print(f"{compiled_step.machine()}; jax {jax.__version__}")
  result = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": compiled_step.machine(),
      "load_start": compiled_step.loadavg(),
      "workdir": os.path.abspath(_WORKDIR.value),
      "workdir_name": os.path.basename(os.path.abspath(_WORKDIR.value)),
      "checkpoint_step": run.step,
      "judge": judge.name,
      "num_samples": _NUM_SAMPLES.value,
      "batch_size": _BATCH_SIZE.value,
      "seed": _SEED.value,
  }
  start = time.perf_counter()
  if _REFERENCE.value:
    result["reference"] = reference(run, judge, _REFERENCE.value)
    ref = result["reference"]
    print(
        f"data ({_REFERENCE.value}): gen ppl"
        f" {ref['generative_perplexity']['mean']:.1f}, entropy"
        f" {ref['entropy']['mean']:.3f}"
    )
  result["points"] = sweep(run, judge, planned)
  result["load_end"] = compiled_step.loadavg()
  result["wall_seconds"] = time.perf_counter() - start
  out.parent.mkdir(parents=True, exist_ok=True)
  json_path = out.with_name(out.name + ".json")
  png_path = out.with_name(out.name + ".png")
  json_path.write_text(json.dumps(result, indent=2))
  plot(result, png_path)
  print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
  error_boundary.run_app(main)
