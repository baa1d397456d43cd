r"""Data throughput: the prep script's tokens/s and each loader's batches/s.

    python benchmarks/data.py                      # all sources, a few minutes
    python benchmarks/data.py --sources=openwebtext,protein --step_steps=0

1. `prepare_openwebtext_data.py` on real text: the first `--prep_documents`
   .py files of Python's standard library (one document each; no download),
   run once with one tokenizer process and once with one per core. GPT-2 BPE
   comes from ../shared/data/gpt2 when present, else a BPE trained here.
   Prints documents, tokens and tokens/s of each run.
2. For each source, the loader exactly as training builds it
   (`pipelines.build_datasets` with the data fields and batch size of the
   shipped config named in `SOURCES`, CPU variant): batches/s over
   `--batches` batches after two warm-up batches, and examples/s.
3. Beside it, the training step's consumption on this machine for the same
   config (`run_lib.build` + the jitted train step fed from that loader,
   `--step_steps` timed steps after a compile and a warm-up step), and the
   ratio loader / step, which should be at least 10. `mnist_flip` is MNIST
   with `data.random_flip = True`, to show what the flips cost.
4. ImageNet 64x64 preprocessing (`class_cond_imagenet64`): the centre crop +
   area resize of `tfds_images.CentreCropResize` on random images of
   ImageNet's typical and large sizes, in images/s on one core (the TFDS
   reading and JPEG decoding before it need the prepared data set and are
   not measured).

Data come from ../shared/data where present (GPT-2 files, E. coli FASTA,
MNIST IDX files) and are otherwise generated small in a temporary directory
(text8-style zip, FASTA, token arrays, a text file). CIFAR-10 and ImageNet
need prepared TFDS data and are not measured. Timings depend on machine load;
compare figures from one run.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console
from md4 import error_boundary

# pylint: enable=g-import-not-at-top,wrong-import-position

console.hide_native_logs()  # Before md4's modules import TensorFlow.

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4.data import pipelines
from md4.data import text8
from md4.data import tfds_images

# pylint: enable=g-import-not-at-top

SHARED = ROOT.parent / "shared" / "data"
SCRIPT = ROOT / "prepare_openwebtext_data.py"
# source: (config file, variant, extra data fields)
SOURCES = {
    "digits": ("configs/md4/digits.py", None, {}),
    "text8": ("configs/md4/text8.py", "cpu", {}),
    "mnist": ("configs/md4/mnist.py", "cpu", {}),
    "mnist_flip": ("configs/md4/mnist.py", "cpu", {"random_flip": True}),
    "openwebtext": ("configs/md4/openwebtext.py", "cpu", {}),
    "protein": ("configs/md4/protein.py", "cpu", {}),
    # Users' data: the OpenWebText CPU config, pointed at their files.
    "tokens": (
        "configs/md4/openwebtext.py",
        "cpu",
        {"dataset": "tokens", "path": "tokens", "vocab_size": 1000},
    ),
    "text_chars": (
        "configs/md4/openwebtext.py",
        "cpu",
        {"dataset": "text_chars", "path": "text_chars/text.txt"},
    ),
}


def parse_args():
  p = error_boundary.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument(
      "--sources",
      default=",".join(SOURCES),
      help="comma-separated sources to measure.",
  )
  p.add_argument(
      "--prep_documents",
      type=int,
      default=600,
      help="documents for the prep benchmark; 0 skips it.",
  )
  p.add_argument(
      "--batches", type=int, default=50, help="timed loader batches per source."
  )
  p.add_argument(
      "--step_steps",
      type=int,
      default=3,
      help="timed train steps per config; 0 skips the step.",
  )
  p.add_argument(
      "--resize_images",
      type=int,
      default=200,
      help=(
          "images per size for the ImageNet 64x64 crop + resize"
          " benchmark; 0 skips it."
      ),
  )
  return p.parse_args()


def load_config(path, variant):
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("benchmark_config", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


# ----------------------------------------------------------- prep ---------


def stdlib_documents(count):
  """Real text without a download: Python's standard library sources."""
  files = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
  docs = []
  for path in files:
    try:
      docs.append(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OSError):
      continue
    if len(docs) == count:
      break
  return docs


def gpt2_dir(work):
  """The shared GPT-2 files, else a byte-level BPE trained on stdlib text."""
  if (SHARED / "gpt2" / "vocab.json").is_file():
    return SHARED / "gpt2", "GPT-2 (shared files)"
  import tokenizers  # pylint: disable=g-import-not-at-top

  directory = work / "bpe"
  directory.mkdir()
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
      stdlib_documents(200),
      vocab_size=2000,
      special_tokens=["<|endoftext|>"],
      show_progress=False,
  )
  bpe.save_model(str(directory))
  return directory, "a 2,000-piece BPE trained here (no shared GPT-2)"


def bench_prep(work, num_documents):
  """Runs the prep script with 1 and with all cores; returns the data dir."""
  corpus = work / "corpus"
  corpus.mkdir()
  with open(corpus / "stdlib.jsonl", "w") as f:
    for doc in stdlib_documents(num_documents):
      f.write(json.dumps({"text": doc}) + "\n")
  tokenizer_dir, tokenizer_name = gpt2_dir(work)
  print(
      f"\n== prepare_openwebtext_data.py: {num_documents} stdlib files,"
      f" {tokenizer_name}, seq_len 1024"
  )
  data_dir = None
  for num_proc in sorted({1, os.cpu_count() or 1}):
    data_dir = work / f"prep-{num_proc}"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"--input={corpus}",
            f"--data_dir={data_dir}",
            f"--tokenizer_dir={tokenizer_dir}",
            f"--num_proc={num_proc}",
            "--shard_documents=1000",
            "--batch_documents=8",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    metadata = json.loads((data_dir / "openwebtext/metadata.json").read_text())
    tokens = metadata["totals"]["tokens"]
    print(
        f"  num_proc={num_proc:2d}: {metadata['totals']['documents']} docs,"
        f" {tokens:,} tokens in {seconds:.1f} s (whole command, start-up"
        f" included) = {tokens / seconds:,.0f} tokens/s"
    )
  return data_dir, metadata["vocab_size"]


# ---------------------------------------------------------- data ----------


def make_data(work, prepared, vocab_size):
  """A data_dir per source: shared files where present, else generated."""
  rng = np.random.default_rng(0)
  generated = work / "generated"
  text = "".join(rng.choice(list(text8.ALPHABET), 5_000_000))
  (generated / "text8").mkdir(parents=True)
  with zipfile.ZipFile(generated / "text8" / "text8.zip", "w") as archive:
    archive.writestr("text8", text)
  (generated / "tokens").mkdir()
  for name, rows in (("train", 4000), ("valid", 100)):
    np.save(
        generated / "tokens" / f"{name}.npy",
        rng.integers(0, 1000, (rows, 1024), dtype=np.uint16),
    )
  (generated / "text_chars").mkdir()
  (generated / "text_chars" / "text.txt").write_text(text[:2_000_000])
  (generated / "protein").mkdir()
  if not (SHARED / "protein").is_dir():
    with open(generated / "protein" / "proteins.fasta", "w") as f:
      for i in range(4000):
        residues = rng.choice(
            list("ACDEFGHIKLMNPQRSTVWY"), rng.integers(50, 800)
        )
        f.write(f">p{i}\n{''.join(residues)}\n")
  dirs = {name: generated for name in SOURCES}
  dirs["protein"] = SHARED if (SHARED / "protein").is_dir() else generated
  dirs["mnist"] = SHARED if (SHARED / "mnist").is_dir() else None
  dirs["mnist_flip"] = dirs["mnist"]
  dirs["openwebtext"] = prepared
  overrides = {"openwebtext": {"vocab_size": vocab_size} if prepared else {}}
  return dirs, overrides


def source_config(name, data_dir, overrides):
  path, variant, extra = SOURCES[name]
  config = load_config(path, variant)
  config.data.data_dir = str(data_dir)
  for key, value in {**extra, **overrides.get(name, {})}.items():
    config.data[key] = value
  if name == "text_chars":
    config.data.vocab_size = len(text8.ALPHABET)
  return config


def bench_loader(config, num_batches):
  datasets = pipelines.build_datasets(
      config.data,
      global_batch_size=config.train.batch_size,
      eval_batch_size=config.train.eval_batch_size,
      seed=config.seed,
      process_index=0,
      process_count=1,
  )
  iterator = iter(datasets.train)
  for _ in range(2):
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return num_batches / (time.perf_counter() - start)


def bench_step(config, num_steps):
  """Steps/s of the real jitted train step fed by the real loader."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from md4 import run as run_lib  # pylint: disable=g-import-not-at-top
  from md4 import train  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as workdir:
    setup = run_lib.build(config, workdir)
  state = run_lib.create_state(setup, jax.random.key(0))
  iterator = iter(setup.datasets.train)
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    step = train.jit_train_step(setup)
    rng = jax.random.key(1)
    batches = [
        train._global_batch(setup, next(iterator))  # pylint: disable=protected-access
        for _ in range(num_steps + 2)
    ]
    for batch in batches[:2]:  # compile, then one warm step
      state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in batches[2:]:
      state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
  return num_steps / (time.perf_counter() - start)


# ImageNet image sizes (height, width): the most common one, and a large one.
IMAGENET_SIZES = ((375, 500), (1200, 1600))


def bench_imagenet_resize(num_images):
  """Images/s of the class_cond_imagenet64 centre crop + area resize."""
  print(
      "\n== class_cond_imagenet64 preprocessing: centre crop + area resize"
      f" to 64x64, {num_images} random images per size, this process"
  )
  transform = tfds_images.CentreCropResize(tfds_images.IMAGENET64_SIZE)
  rng = np.random.default_rng(0)
  for height, width in IMAGENET_SIZES:
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    transform(image)  # warm-up
    start = time.perf_counter()
    for _ in range(num_images):
      transform(image)
    seconds = (time.perf_counter() - start) / num_images
    print(
        f"  {height}x{width}: {seconds * 1e3:.2f} ms per image ="
        f" {1 / seconds:,.0f} images/s"
    )


def main():
  args = parse_args()
  names = [n for n in args.sources.split(",") if n]
  unknown = sorted(set(names) - set(SOURCES))
  if unknown:
    raise SystemExit(
        f"--sources: unknown {unknown}; valid: "
        f"{', '.join(SOURCES)}; give a comma-separated subset."
    )
  print(f"machine: {os.cpu_count()} CPU cores; python {sys.version.split()[0]}")
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    prepared, vocab_size = (None, None)
    if args.prep_documents and "openwebtext" in names:
      prepared, vocab_size = bench_prep(work, args.prep_documents)
    dirs, overrides = make_data(work, prepared, vocab_size)
    print(
        f"\n== loaders: batches/s over {args.batches} batches (batch and"
        " shape of the config); train step on this machine"
    )
    print(
        f"  {'source':12s} {'config':28s} {'batch':>13s} {'loader b/s':>10s}"
        f" {'ex/s':>9s} {'step b/s':>9s} {'ratio':>7s}"
    )
    for name in names:
      if dirs[name] is None:
        print(f"  {name:12s} skipped: no data in {SHARED}")
        continue
      path, variant, _ = SOURCES[name]
      label = (
          f"{path.removeprefix('configs/')}{':' + variant if variant else ''}"
      )
      try:
        config = source_config(name, dirs[name], overrides)
        shape = (config.train.batch_size, *config.data.data_shape)
        loader = bench_loader(config, args.batches)
        step = (
            bench_step(config, args.step_steps) if args.step_steps else math.nan
        )
      except Exception as e:  # pylint: disable=broad-exception-caught
        # One broken config or missing file must not hide the other figures.
        print(f"  {name:12s} {label:28s} failed: {type(e).__name__}: {e}")
        continue
      print(
          f"  {name:12s} {label:28s} {'x'.join(map(str, shape)):>13s}"
          f" {loader:10.1f} {loader * shape[0]:9.0f} {step:9.2f}"
          f" {loader / step:7.0f}",
          flush=True,
      )
  if args.resize_images:
    bench_imagenet_resize(args.resize_images)


if __name__ == "__main__":
  with error_boundary.reported():
    main()
