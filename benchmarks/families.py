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

With `--data=text` the families train instead on a character-level text
corpus (`--corpus`, a UTF-8 file; default the English text of the Python
documentation topics that every Python installation ships in
`pydoc_data.topics`) with `configs/md4/text8.py`'s transformer, optimizer
and batch at `--text_size` (`tiny` 2 x 64 or `cpu` 4 x 256) and
`--seq_len`; the last 5% of the characters are the held-out split, and
the bound is in bits per character. The family `autoregressive`
(`configs/autoregressive/text8.py`'s changes: causal attention, no time
input, the exact next-token likelihood) runs only on text, beside MD4 at
the same network, steps and batch:

    python benchmarks/families.py --data=text --families=md4,autoregressive \
        --train_steps=1000 --T=200 --num_time_samples=4
"""

import json
import os
import pathlib
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

from md4 import config_recipes  # pylint: disable=g-import-not-at-top
from md4 import configuration
from md4 import diffusion
from md4 import evaluate
from md4 import run as run_lib
from md4 import train

_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", 1000, "Optimisation steps per family."
)
_T = flags.DEFINE_integer("T", 200, "Diffusion steps T of every family.")
_FAMILIES = flags.DEFINE_list(
    "families",
    None,
    "Families to train; default md4, d3pm_uniform, d3pm_absorbing and "
    "multinomial on digits, md4 and autoregressive on text.",
)
_DATA = flags.DEFINE_enum(
    "data", "digits", ["digits", "text"], "The bundled digits or a text corpus."
)
_CORPUS = flags.DEFINE_string(
    "corpus",
    None,
    "--data=text: a UTF-8 text file; default the Python documentation "
    "topics (pydoc_data.topics).",
)
_TEXT_SIZE = flags.DEFINE_enum(
    "text_size",
    "tiny",
    ["tiny", "cpu"],
    "--data=text: the configs/md4/text8.py variant whose network, optimizer "
    "and batch every family uses.",
)
_SEQ_LEN = flags.DEFINE_integer(
    "seq_len", 128, "--data=text: characters per sequence."
)
_TIME_SAMPLES = flags.DEFINE_integer(
    "num_time_samples", 16, "Bound estimates (times) per test example."
)
_SEED = flags.DEFINE_integer("seed", 0, "The seed of every family.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows here.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CONFIG = os.path.join(ROOT, "configs", "md4", "digits.py")
TEXT_CONFIG = "configs/md4/text8.py"
DEFAULT_FAMILIES = {
    "digits": ["md4", "d3pm_uniform", "d3pm_absorbing", "multinomial"],
    "text": ["md4", "autoregressive"],
}
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
    # configs/autoregressive/text8.py: the MD4 text config made causal.
    "autoregressive": dict(
        process="autoregressive", config="configs/autoregressive/text8.py"
    ),
}
TEXT_ONLY = ("autoregressive",)


def pydoc_topics_text() -> str:
  """English text every Python ships: the documentation's topic pages."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def text_corpus(data_dir: str, corpus: str | None) -> tuple[str, int]:
  """Copies the corpus into data_dir (text_chars writes its vocab file
  beside it); returns (path, number of distinct characters)."""
  if corpus is None:
    text = pydoc_topics_text()
  else:
    path = pathlib.Path(corpus)
    if not path.is_file():
      raise ValueError(
          f"--corpus={corpus!r} is not a file; give a UTF-8 text file."
      )
    text = path.read_text(encoding="utf-8")
  target = os.path.join(data_dir, "corpus.txt")
  with open(target, "w", encoding="utf-8") as f:
    f.write(text)
  return target, len(set(text))


def family_config(
    family: str,
    train_steps: int,
    num_steps: int,
    seed: int,
    text: tuple[str, int] | None = None,
):
  """The digits config, or with `text` = (corpus path, characters) the
  text8 config on that corpus, with one family's model fields."""
  if family not in FAMILIES:
    raise ValueError(
        f"--families: {family!r} is not a family; valid: {', '.join(FAMILIES)}."
    )
  if text is None and family in TEXT_ONLY:
    raise ValueError(
        f"--families: {family!r} needs a sequence network; run it with "
        "--data=text."
    )
  fields = dict(FAMILIES[family])
  process = fields.pop("process")
  if text is None:
    c = config_recipes.load_file(DIGITS_CONFIG)
  else:
    config_file = os.path.join(ROOT, fields.pop("config", TEXT_CONFIG))
    c = config_recipes.load_file(config_file, _TEXT_SIZE.value)
    path, characters = text
    c.data.dataset = "text_chars"
    c.data.data_dir = os.path.dirname(path)
    c.data.path = os.path.basename(path)
    c.data.vocab_size = characters
    c.data.data_shape = (_SEQ_LEN.value,)
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, train_steps)
  c.seed = seed
  c.train.num_steps = train_steps
  configuration.switch_process(c, process)
  if "num_steps" in c.model[process]:
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


def run_family(family: str, text: tuple[str, int] | None) -> dict:
  """Trains one family and evaluates its held-out bound."""
  config = family_config(
      family, _TRAIN_STEPS.value, _T.value, _SEED.value, text
  )
  workdir = tempfile.mkdtemp(prefix=f"md4_families_{family}_")
  try:
    print(f"{family}: training {_TRAIN_STEPS.value} steps", flush=True)
    setup, params, seconds = train_family(config, workdir)
    run = run_lib.RestoredRun(
        workdir, config, setup, params, _TRAIN_STEPS.value
    )
    split = "test" if "test" in setup.datasets.eval else "valid"
    result = evaluate.negative_elbo(
        run,
        split,
        num_time_samples=_TIME_SAMPLES.value,
        seed=_SEED.value,
        progress=False,
    )
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  unit = result["headline"]
  exact = not diffusion.from_config(config).uses_time_draws
  row = {
      "family": family,
      "train_steps": _TRAIN_STEPS.value,
      "T": "exact" if exact else _T.value,
      "unit": unit,
      "bound": result[unit]["mean"],
      "se": result[unit]["se"],
      "split": split,
      "train_seconds": seconds,
      "eval_seconds": result["seconds"],
      "num_examples": result["num_examples"],
      "parameters": sum(p.size for p in jax.tree.leaves(params)),
      "model": config.model.to_dict(),
      "network": config.network.to_dict(),
  }
  print(
      f"{family}: {row['bound']:.4f} +- {row['se']:.4f} {unit}, "
      f"trained in {seconds:.0f} s",
      flush=True,
  )
  return row


def table(rows) -> str:
  """The rows as the Markdown table of benchmarks/README.md."""
  lines = [
      (
          f"| family | steps | T | held-out {rows[0]['unit']} | se | parameters"
          " | train s |"
      ),
      "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['family']} | {r['train_steps']} | {r['T']} | "
        f"{r['bound']:.4f} | {r['se']:.4f} | {r['parameters']:,} | "
        f"{r['train_seconds']:.0f} |"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  families = _FAMILIES.value or DEFAULT_FAMILIES[_DATA.value]
  data_dir = tempfile.mkdtemp(prefix="md4_families_data_")
  try:
    text = None
    if _DATA.value == "text":
      text = text_corpus(data_dir, _CORPUS.value)
    for family in families:  # Fail on a bad name before training.
      family_config(family, 1, 1, 0, text)
    rows = [run_family(family, text) for family in families]
    first = family_config(families[0], 1, 1, 0, text)
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)
  if text is None:
    data = "digits (8x8, 17 grey levels)"
  else:
    data = (
        f"{_CORPUS.value or 'pydoc_data.topics'} ({text[1]} characters, "
        f"L = {_SEQ_LEN.value}, transformer {first.network.num_layers} x "
        f"{first.network.width})"
    )
  print(
      f"\n{data}, batch {first.train.batch_size}, seed {_SEED.value}, "
      f"{_TIME_SAMPLES.value} time samples per held-out example, "
      f"{rows[0]['num_examples']} held-out examples ({rows[0]['split']}); "
      f"jax {jax.__version__} on {jax.devices()[0].platform}; load average "
      f"{os.getloadavg()[0]:.2f}\n"
  )
  print(table(rows))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=2, default=str)


if __name__ == "__main__":
  error_boundary.run_app(main)
