r"""Negative ELBO of a trained run on an evaluation split, with standard errors.

  python -m md4.evaluate --workdir=./expt/digits --split=test \
      --num_time_samples=8
  python -m md4.evaluate --workdir=./expt/text8 --split=valid \
      --num_examples=2000 --batch_size=64

Each example's bound is the mean of K Monte-Carlo estimates (K =
--num_time_samples) at stratified draws u_k = (u + k / K) mod 1 with one
random offset u per example (each process maps them to its times, MD4's
t = 1 - u_k), and fresh masks; the result is the mean over
examples with its standard error (sample standard deviation of the
per-example estimates / sqrt(n)), which covers both the data and the
Monte-Carlo noise. Reported in nats per example and as

* bits/dim = nats / (D ln 2), D = tokens or sub-pixels per example (images);
* bits/char, the same number, for character data (text8, text_chars,
  protein);
* perplexity = exp(nats / D) for token data, its standard error by the delta
  method (perplexity * se(nats) / D).

For a class-conditional model the plain names (`nelbo_nats`,
`bits_per_dim`, ...) are the bound given each example's label, on
-log p(x | y); the same names with `_uncond` are the bound with the "no
label" id, on -log p(x), the figure to set beside unconditional models.
Both use the same times and masks.

EMA parameters; a JSON result file (default
<workdir>/eval_<split>_step<N>.json); a tqdm bar.

With --benchmark, the zero-shot suite instead (`md4.zero_shot`): the run's
perplexity on the field's test sets read from --benchmark_dir, packed or
one example per padded sequence (--packing), written as JSON and a
Markdown table (default <workdir>/zero_shot_<packing>_step<N>.json / .md):

  python -m md4.evaluate --workdir=./expt/owt --benchmark=ptb,wikitext2 \
      --benchmark_dir=/data/zero_shot --packing=padded
"""

import json
import math
import os
import time

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console

console.hide_native_logs()  # Before clu (via the restore) imports TensorFlow.

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from md4 import metrics
from md4 import error_boundary
from md4 import run as run_lib
from md4 import sample_writing
from md4 import zero_shot

# -------------------------------------------------------------- logic -----


def make_bound_fn(model, num_time_samples: int, masked: bool = False):
  """(params, x, label, rng) -> per-example mean bound over K times [B].

  With `masked`, the second argument is instead a boolean [B, L] loss mask
  (positions scored) and there is no label.
  """
  k = num_time_samples

  def bound(params, x, label_or_mask, rng):
    offset_rng, mask_rng = jax.random.split(rng)
    offset = jax.random.uniform(offset_rng, (x.shape[0],))  # [B]
    label, extra = label_or_mask, {}
    if masked:
      label, extra = None, {"loss_mask": label_or_mask}

    def one_time(j):
      t = jnp.mod(offset + j / k, 1.0)  # [B], stratified per example
      terms, _ = model.apply(
          {"params": params},
          x,
          label,
          train=False,
          t=t,
          rngs={"sample": jax.random.fold_in(mask_rng, j)},
          **extra,
      )
      return terms.get("loss_nelbo", terms["loss"])  # [B] nats

    return jax.lax.map(one_time, jnp.arange(k)).mean(0)  # [B]

  return bound


def summarize(
    per_example: np.ndarray, num_elements: int, unit: str
) -> dict[str, dict[str, float]]:
  """Mean and standard error of the bound in each unit that applies."""
  n = len(per_example)
  nats = float(per_example.mean())
  se = float(per_example.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
  return metrics.in_units(nats, se, num_elements, unit)


def negative_elbo(
    run: run_lib.RestoredRun,
    split: str,
    *,
    num_examples: int = 0,
    num_time_samples: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict:
  """Evaluates the bound of a restored run on a split.

  Args:
    run: the restored run (its EMA parameters are used).
    split: an evaluation split of its data set.
    num_examples: the first n examples; 0 = the whole split.
    num_time_samples: K estimates per example.
    seed: seeds the times and masks.
    progress: show a tqdm bar.

  Returns:
    A JSON-ready dict: the bound in each unit (mean, se), counts, settings;
    `class_conditional`, and for class-conditional models the bound with
    the "no label" id under the same names with `_uncond`.
  """
  setup = run.setup
  info = setup.datasets.info
  dataset = run.config.data.dataset
  if split not in setup.datasets.eval:
    raise ValueError(
        f"--split={split!r} is not an evaluation split of "
        f"{dataset}; valid: {', '.join(setup.datasets.eval)}."
    )
  if num_time_samples < 1 or num_examples < 0:
    raise ValueError(
        f"got --num_time_samples={num_time_samples} and --num_examples="
        f"{num_examples}; give --num_time_samples >= 1 and --num_examples "
        ">= 0."
    )
  conditional = bool(setup.model.num_classes)
  per_example, per_example_uncond = [], []
  start = time.perf_counter()
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    bound = jax.jit(make_bound_fn(setup.model, num_time_samples))
    bar = tqdm.tqdm(
        total=num_examples or None,
        unit="ex",
        disable=not progress,
        desc=f"{split} nelbo",
    )
    for i, local in enumerate(setup.datasets.eval[split]()):
      batch = {
          k: jax.make_array_from_process_local_data(setup.batch_sharding, v)
          for k, v in local.items()
      }
      rng = jax.random.fold_in(jax.random.key(seed), i)
      values = bound(run.params, batch["x"], batch.get("label"), rng)
      real = np.asarray(local["weight"]) > 0
      per_example.extend(np.asarray(values)[real].tolist())
      if conditional:  # label=None: the "no label" id; same times, masks.
        values = bound(run.params, batch["x"], None, rng)
        per_example_uncond.extend(np.asarray(values)[real].tolist())
      bar.update(int(real.sum()))
      if num_examples and len(per_example) >= num_examples:
        break
    bar.close()
  per_example = np.asarray(per_example[: num_examples or None], np.float64)
  if not len(per_example):
    raise ValueError(f"the {split} split of {dataset} yielded no examples.")
  result = {
      "workdir": run.workdir,
      "checkpoint_step": run.step,
      "split": split,
      "num_examples": len(per_example),
      "num_time_samples": num_time_samples,
      "seed": seed,
      "headline": info.unit,
      "class_conditional": conditional,
      "seconds": time.perf_counter() - start,
  }
  num_elements = math.prod(info.data_shape)
  result.update(summarize(per_example, num_elements, info.unit))
  if conditional:
    uncond = np.asarray(per_example_uncond[: len(per_example)], np.float64)
    result.update({
        f"{k}_uncond": v
        for k, v in summarize(uncond, num_elements, info.unit).items()
    })
  return result


# ---------------------------------------------------------------- CLI -----


def define_flags() -> None:
  """The command-line flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "A training run's workdir.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default latest.")
  flags.DEFINE_string("split", None, "Evaluation split; default the first.")
  flags.DEFINE_integer("num_examples", 0, "First n examples; 0 = all.")
  flags.DEFINE_integer(
      "num_time_samples", 1, "K estimates (times and masks) per example."
  )
  flags.DEFINE_integer(
      "batch_size",
      None,
      "Examples per batch; default config.train.eval_batch_size.",
  )
  flags.DEFINE_integer("seed", 0, "Seeds times and masks.")
  flags.DEFINE_multi_string(
      "override", [], "section.field=value changes to the saved config."
  )
  flags.DEFINE_string(
      "output",
      None,
      "JSON result path; default <workdir>/eval_<split>_step<N>.json "
      "(--benchmark: <workdir>/zero_shot_<packing>_step<N>.json, and the "
      "Markdown table beside it as .md).",
  )
  flags.DEFINE_string(
      "benchmark",
      None,
      "Zero-shot suite instead of --split: comma-separated names of "
      f"{', '.join(zero_shot.BENCHMARKS)}.",
  )
  flags.DEFINE_string(
      "benchmark_dir",
      None,
      "Directory of the benchmarks' released test files (md4/zero_shot.py "
      "lists where each goes).",
  )
  flags.DEFINE_enum(
      "packing",
      "packed",
      list(zero_shot.PACKINGS),
      "packed: examples + end-of-text cut into blocks of L; padded: one "
      "example per sequence, padding kept out of the bound.",
  )
  flags.DEFINE_integer(
      "max_examples", 0, "--benchmark: first n examples of each; 0 = all."
  )
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  console.setup(f.verbosity)
  overrides = list(f.override)
  if f.batch_size:
    overrides.append(f"train.eval_batch_size={f.batch_size}")
  names = None
  if f.benchmark is not None:  # Before the slow restore.
    names = zero_shot.parse_names(f.benchmark)
    if not f.benchmark_dir or not os.path.isdir(f.benchmark_dir):
      raise ValueError(
          f"--benchmark_dir={f.benchmark_dir!r} is not a directory; give the"
          " directory holding the benchmarks' test files (md4/zero_shot.py "
          "lists where each goes)."
      )
  elif f.benchmark_dir:
    raise ValueError(
        "--benchmark_dir is given without --benchmark; name the benchmarks, "
        f"e.g. --benchmark={','.join(zero_shot.BENCHMARKS)}."
    )
  if jax.process_index() == 0:  # Before the slow restore.
    sample_writing.check_output_dir(
        os.path.dirname(os.path.abspath(f.output)) if f.output else f.workdir,
        "--output",
    )
  run = run_lib.restore(f.workdir, f.step, overrides)
  if names is not None:
    _zero_shot(run, names)
    return
  split = f.split or next(iter(run.setup.datasets.eval))
  result = negative_elbo(
      run,
      split,
      num_examples=f.num_examples,
      num_time_samples=f.num_time_samples,
      seed=f.seed,
  )
  if jax.process_index() > 0:
    return
  path = f.output or os.path.join(
      run.workdir, f"eval_{split}_step{run.step}.json"
  )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as out:
    json.dump(result, out, indent=2)
  key = result["headline"]
  keys = [key, f"{key}_uncond"] if result["class_conditional"] else [key]
  values = ", ".join(
      f"{k} = {result[k]['mean']:.4f} +- {result[k]['se']:.4f}" for k in keys
  )
  given = " (given the label; _uncond: no label)" if len(keys) > 1 else ""
  print(
      f"{split}: {values}{given} (se; {result['num_examples']} examples, "
      f"K={result['num_time_samples']}); written to {path}"
  )


def _zero_shot(run: run_lib.RestoredRun, names: list[str]) -> None:
  f = flags.FLAGS
  result = zero_shot.evaluate_suite(
      run,
      names,
      f.benchmark_dir,
      packing=f.packing,
      num_time_samples=f.num_time_samples,
      max_examples=f.max_examples,
      seed=f.seed,
  )
  if jax.process_index() > 0:
    return
  path = f.output or os.path.join(
      run.workdir, f"zero_shot_{f.packing}_step{run.step}.json"
  )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as out:
    json.dump(result, out, indent=2)
  table = zero_shot.markdown_table(result)
  with open(os.path.splitext(path)[0] + ".md", "w") as out:
    out.write(table)
  print(table + f"Written to {path} and {os.path.splitext(path)[0]}.md")


def cli() -> None:
  """The `md4-evaluate` command (and `python -m md4.evaluate`)."""
  define_flags()
  error_boundary.run_app(main)


if __name__ == "__main__":
  cli()
