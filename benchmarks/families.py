r"""Held-out bits/dim of MD4, D3PM-uniform, D3PM-absorbing and multinomial.

    python benchmarks/families.py --train_steps=1000 --T=200 \
        --num_time_samples=16 --json=/tmp/families.json

Every family trains on the bundled scikit-learn digits (8x8, 17 grey levels,
1,497 training and 300 test images; `configs/md4/digits.py`'s data, network
and optimizer) with the same U-Net, the same number of steps, the same batch
and the same seed; only `config.model` differs:

| family | process | transition | schedule | hybrid lambda |
|---|---|---|---|---|
| md4 | md4 | (mask) | linear, T-step ELBO | - |
| d3pm_uniform | d3pm | uniform | cosine | 0.01 |
| d3pm_absorbing | d3pm | absorbing | jsd, 1/(T-t+1) | 0.01 |
| multinomial | d3pm | uniform | cosine | 0 |
| d3pm_gaussian (not run by default) | d3pm | gaussian | linear | 0.01 |

The step is `md4.train.make_train_step`, jitted as `train.train_and_evaluate`
jits it. The bound is `md4.evaluate.negative_elbo` on the test split with the
EMA parameters: each example's negative ELBO (prior and every step included,
so a true upper bound on -log p) averaged over `--num_time_samples`
stratified times, then the mean over examples with its standard error, in
bits per dimension (64 pixels). Train time is the wall time of the steps
after compilation. Timings depend on the machine's load.
"""

import json
import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax

# Run as `python benchmarks/families.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

# pylint: enable=g-import-not-at-top,wrong-import-position

console.hide_native_logs()  # Before md4's modules import TensorFlow.

from md4 import configuration  # pylint: disable=g-import-not-at-top
from md4 import evaluate
from md4 import run as run_lib
from md4 import train

_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", 1000, "Optimisation steps per family."
)
_T = flags.DEFINE_integer("T", 200, "Diffusion steps T of every family.")
_FAMILIES = flags.DEFINE_list(
    "families",
    ["md4", "d3pm_uniform", "d3pm_absorbing", "multinomial"],
    "Families to train.",
)
_TIME_SAMPLES = flags.DEFINE_integer(
    "num_time_samples", 16, "Bound estimates (times) per test example."
)
_SEED = flags.DEFINE_integer("seed", 0, "The seed of every family.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows here.")

DIGITS_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "md4",
    "digits.py",
)
EVAL_SPLIT = "test"
HYBRID_COEFF = 0.01  # Austin et al.'s lambda for the D3PM families.

# family -> (process, its config.model.<process> fields); num_steps is set
# from --T.
FAMILIES = {
    "md4": dict(process="md4", schedule="linear"),
    "d3pm_uniform": dict(
        process="d3pm",
        transition="uniform",
        schedule="cosine",
        hybrid_coeff=HYBRID_COEFF,
    ),
    "d3pm_absorbing": dict(
        process="d3pm",
        transition="absorbing",
        schedule="jsd",
        hybrid_coeff=HYBRID_COEFF,
    ),
    "multinomial": dict(
        process="d3pm",
        transition="uniform",
        schedule="cosine",
        hybrid_coeff=0.0,
    ),
    "d3pm_gaussian": dict(
        process="d3pm",
        transition="gaussian",
        schedule="linear",
        hybrid_coeff=HYBRID_COEFF,
    ),
}


def family_config(family: str, train_steps: int, num_steps: int, seed: int):
  """The digits config with one family's model fields."""
  if family not in FAMILIES:
    raise ValueError(
        f"--families: {family!r} is not a family; valid: {', '.join(FAMILIES)}."
    )
  c = configuration.load_file(DIGITS_CONFIG)
  c.seed = seed
  c.train.num_steps = train_steps
  fields = dict(FAMILIES[family])
  process = fields.pop("process")
  configuration.switch_process(c, process)
  c.model[process].num_steps = num_steps
  for key, value in fields.items():
    c.model[process][key] = value
  configuration.validate(c)
  return c


def train_family(config, workdir: str):
  """Trains with the real step; returns (setup, EMA params, train seconds)."""
  global_batch = train._global_batch  # pylint: disable=protected-access
  setup = run_lib.build(config, workdir)
  rng = jax.random.key(config.seed)
  init_rng, train_rng, _ = jax.random.split(rng, 3)  # As train.py splits.
  state = run_lib.create_state(setup, init_rng)
  train_iter = iter(setup.datasets.train)
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    step_fn = train.jit_train_step(setup)
    first = global_batch(setup, next(train_iter))
    compiled = step_fn.lower(state, first, train_rng).compile()
    start = time.perf_counter()
    state, metrics = compiled(state, first, train_rng)
    for step in range(1, config.train.num_steps):
      batch = global_batch(setup, next(train_iter))
      state, metrics = compiled(state, batch, train_rng)
      if (step + 1) % max(config.train.num_steps // 5, 1) == 0:
        print(
            f"  step {step + 1}: train loss {float(metrics['loss']):.4f}",
            flush=True,
        )
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
  return setup, state.ema_params, seconds


def run_family(family: str) -> dict:
  config = family_config(family, _TRAIN_STEPS.value, _T.value, _SEED.value)
  workdir = tempfile.mkdtemp(prefix=f"md4_families_{family}_")
  try:
    print(f"{family}: training {_TRAIN_STEPS.value} steps", flush=True)
    setup, params, seconds = train_family(config, workdir)
    run = run_lib.RestoredRun(
        workdir, config, setup, params, _TRAIN_STEPS.value
    )
    result = evaluate.negative_elbo(
        run,
        EVAL_SPLIT,
        num_time_samples=_TIME_SAMPLES.value,
        seed=_SEED.value,
        progress=False,
    )
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  row = {
      "family": family,
      "train_steps": _TRAIN_STEPS.value,
      "T": _T.value,
      "bits_per_dim": result["bits_per_dim"]["mean"],
      "se": result["bits_per_dim"]["se"],
      "train_seconds": seconds,
      "eval_seconds": result["seconds"],
      "num_examples": result["num_examples"],
      "model": config.model.to_dict(),
  }
  print(
      f"{family}: {row['bits_per_dim']:.4f} +- {row['se']:.4f} bits/dim, "
      f"trained in {seconds:.0f} s",
      flush=True,
  )
  return row


def table(rows) -> str:
  lines = [
      "| family | steps | T | test bits/dim | se | train s |",
      "|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['family']} | {r['train_steps']} | {r['T']} | "
        f"{r['bits_per_dim']:.4f} | {r['se']:.4f} | "
        f"{r['train_seconds']:.0f} |"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for family in _FAMILIES.value:
    family_config(family, 1, 1, 0)  # Fail on a bad name before training.
  rows = [run_family(family) for family in _FAMILIES.value]
  print(
      "\ndigits (8x8, 17 grey levels), batch "
      f"{family_config('md4', 1, 1, 0).train.batch_size}, seed "
      f"{_SEED.value}, {_TIME_SAMPLES.value} time samples per test example, "
      f"{rows[0]['num_examples']} test examples; jax {jax.__version__} on "
      f"{jax.devices()[0].platform}\n"
  )
  print(table(rows))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=2, default=str)


if __name__ == "__main__":
  error_boundary.run_app(main)
