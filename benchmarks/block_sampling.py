r"""Block diffusion sampling speed: with and without the KV cache, side by side.

    python benchmarks/block_sampling.py                      # L 256 and 1024
    python benchmarks/block_sampling.py --lengths=256 --block_sizes=4,16 \
        --steps=4 --rounds=3 --json=/tmp/block_sampling.json

For each length in `--lengths` and block size in `--block_sizes`: the
network of `--config` (default the block diffusion OpenWebText `cpu`
config: 4 x 256 DiT, V = 50,257) at that length, random weights (speed
does not depend on training), and md4's `block` sampler with `--steps`
steps per block, once with `kv_cache=True` and once with False. Both are
compiled and drawn once untimed; then `--rounds` rounds each draw one
batch of both, alternating (the order swapped every round), so that load
changes reach both alike; both draw with the same key in a round.
`--warmup=0` skips the untimed draw (compilation is timed apart anyway;
for runs where one uncached sample takes minutes). Reported: samples/s of
each, their ratio (cached over uncached, same run), network calls per
sample, whether the two drew the same samples in every draw (they must:
the cache changes the order of the arithmetic, not the math), the date,
machine and load average.

`--dry_run` runs the same code at tiny shapes (the `tiny` text8 block
diffusion config, L = 16 and 32) for the tests.
"""

import datetime
import json
import os
import sys
import time

from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

console.hide_native_logs()  # Before md4's modules import TensorFlow.

from md4 import config_recipes
from md4 import configuration
from md4 import model as model_lib
from md4 import sampling
from md4.sampling import core

# pylint: enable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = flags.DEFINE_string(
    "config",
    "configs/block_diffusion/openwebtext.py:cpu",
    "Config file[:variant] whose network is timed.",
)
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024"], "Sequence lengths.")
_BLOCK_SIZES = flags.DEFINE_list("block_sizes", ["4", "16"], "Block sizes.")
_STEPS = flags.DEFINE_integer("steps", 4, "Denoising steps per block.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Samples per call.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating timed rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed draws of each first.")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Tiny shapes (text8 tiny config, L = 16, 32)."
)


def model_at(config_arg: str, length: int, block_size: int):
  """The config's model at one length and block size, random parameters."""
  path, _, arg = config_arg.partition(":")
  config = config_recipes.load_file(os.path.join(ROOT, path), arg or None)
  config.data.data_shape = (length,)
  config.model.block_diffusion.block_size = block_size
  configuration.validate(config)
  model = model_lib.build_model(config)
  params = model_lib.init_variables(model, jax.random.key(0), unbox=True)[
      "params"
  ]
  return config, model, params


def compiled(model, params, settings, batch: int):
  """rng -> Result of the block sampler, compiled once."""
  entry = sampling.get("block")

  def one_batch(params, rng):
    reverse = core.from_model(model, {"params": params})
    return entry.draw(reverse, rng, batch, settings)

  fn = jax.jit(one_batch).lower(params, jax.random.key(0)).compile()
  return lambda rng: jax.block_until_ready(fn(params, rng))


def run_one(
    config_arg, length, block_size, steps, batch, rounds, warmup
) -> dict:
  """Cached against uncached at one length and block size (docstring)."""
  config, model, params = model_at(config_arg, length, block_size)
  entry = sampling.get("block")
  runs, compile_s = {}, {}
  for cache in (True, False):
    settings = entry.make_settings(num_steps=steps, kv_cache=cache)
    settings.validate()
    start = time.perf_counter()
    runs[cache] = compiled(model, params, settings, batch)
    compile_s[cache] = time.perf_counter() - start
  same = True
  calls = {}

  def compare(drawn):
    calls.update({c: int(d.network_calls) for c, d in drawn.items()})
    return np.array_equal(
        np.asarray(drawn[True].samples), np.asarray(drawn[False].samples)
    )

  for w in range(warmup):  # untimed
    key = jax.random.fold_in(jax.random.key(1), w)
    same &= compare({cache: runs[cache](key) for cache in runs})
  seconds = {True: 0.0, False: 0.0}
  loads = []
  for r in range(rounds):
    loads.append(os.getloadavg()[0])
    key = jax.random.fold_in(jax.random.key(2), r)
    drawn = {}
    for cache in (True, False) if r % 2 == 0 else (False, True):
      start = time.perf_counter()
      drawn[cache] = runs[cache](key)
      seconds[cache] += time.perf_counter() - start
    same &= compare(drawn)
  same = bool(same)
  rate = {c: batch * rounds / seconds[c] for c in seconds}
  row = {
      "length": length,
      "block_size": block_size,
      "steps_per_block": steps,
      "batch": batch,
      "rounds": rounds,
      "network": (
          f"{config.network.num_layers} x {config.network.width}, "
          f"V = {config.data.vocab_size}"
      ),
      "samples_per_s_cached": rate[True],
      "samples_per_s_uncached": rate[False],
      "speedup": rate[True] / rate[False],
      "calls_cached": calls[True],
      "calls_uncached": calls[False],
      "same_samples": same,
      "compile_s": {"cached": compile_s[True], "uncached": compile_s[False]},
      "load": [min(loads), max(loads)],
  }
  print(
      f"L={length} b={block_size} T={steps}/block: cached "
      f"{rate[True]:.4g} samples/s ({row['calls_cached']} calls), "
      f"uncached {rate[False]:.4g} samples/s ({row['calls_uncached']} "
      f"calls): {row['speedup']:.2f}x; same samples: {same}; load "
      f"{min(loads):.1f}-{max(loads):.1f}",
      flush=True,
  )
  return row


def main(argv):
  del argv
  if _DRY_RUN.value:
    config_arg, lengths, sizes = (
        "configs/block_diffusion/text8.py:tiny",
        [
            16,
            32,
        ],
        [4, 16],
    )
  else:
    config_arg = _CONFIG.value
    lengths = [int(x) for x in _LENGTHS.value]
    sizes = [int(x) for x in _BLOCK_SIZES.value]
  for length in lengths:
    for size in sizes:
      if length % size:
        raise ValueError(
            f"--block_sizes={size} does not divide --lengths={length}; "
            "give block sizes that divide every length."
        )
  result = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": (
          f"{os.cpu_count()} CPU cores; {jax.devices()[0].platform} "
          f"{jax.devices()[0].device_kind}"
      ),
      "load_start": os.getloadavg()[0],
      "config": config_arg,
      "dry_run": _DRY_RUN.value,
      "rows": [],
  }
  print(f"{result['date']}, {result['machine']}, load {result['load_start']}")
  for length in lengths:
    for size in sizes:
      result["rows"].append(
          run_one(
              config_arg,
              length,
              size,
              _STEPS.value,
              _BATCH.value,
              _ROUNDS.value,
              _WARMUP.value,
          )
      )
  result["load_end"] = os.getloadavg()[0]
  print(
      "\n| L | block | steps/block | calls cached / uncached | samples/s "
      "cached | samples/s uncached | cached / uncached | same samples | "
      "load |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for r in result["rows"]:
    print(
        f"| {r['length']} | {r['block_size']} | {r['steps_per_block']} | "
        f"{r['calls_cached']} / {r['calls_uncached']} | "
        f"{r['samples_per_s_cached']:.4g} | "
        f"{r['samples_per_s_uncached']:.4g} | **{r['speedup']:.2f}x** | "
        f"{r['same_samples']} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
    )
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  error_boundary.run_app(main)
