r"""Generative perplexity and unigram entropy of samples under a judge.

  python -m md4.judge --judge=/models/gpt2-large --samples=./expt/owt/samples
  python -m md4.judge --judge=./expt/ar_owt --samples=out/samples.jsonl
  python -m md4.sample --workdir=./expt/owt --num_samples=64 \
      --judge=/models/gpt2-large

The second column of every masked diffusion language model table (MDLM,
SEDD, BD3-LM, ReMDM): how likely an autoregressive judge finds the samples,
beside their unigram entropy, since repetitive, low-entropy samples reach a
"weirdly low" generative perplexity. A judge is

* a GPT-2 of any size in a local Hugging Face directory (config.json,
  model.safetensors, vocab.json + merges.txt), run in JAX (`md4.gpt2`);
* or an autoregressive md4 run's workdir (`model.process =
  "autoregressive"`: its bound is the exact likelihood), so samplers can be
  compared on a user's own data without a downloaded judge.

Each sample's text (`samples.jsonl`'s `text`) is cut at its first
end-of-text (the judge's end-of-text string, `<|endoftext|>` for GPT-2, or
the md4 judge's document separator) and retokenised with the judge's
tokenizer; the tokens before the cut are scored given a leading
end-of-text (GPT-2; MDLM's retokenisation also puts one in front) or the md4
run's start token, in windows of the judge's context, batched under `jit`.
Samples with nothing before the cut are counted in `empty_samples` and left
out. Reported:

* `generative_perplexity`: exp(sum of the samples' negative
  log-likelihoods / their tokens), MDLM's token-weighted figure, with a
  delta-method standard error over samples;
* `entropy`: the mean over samples of each sample's unigram entropy of its
  judge tokens, -sum_v p_v ln p_v with p_v the share of token v in the
  sample (nats; `entropy_bits` the same in bits), with its standard error;
* per sample: tokens, negative log-likelihood, perplexity, entropy.

Written as `judged_<judge>.json` beside each `samples.jsonl` (or
--output).
"""

from collections.abc import Sequence
import json
import math
import os
import pathlib

# pylint: disable=g-import-not-at-top,wrong-import-position
from md4 import console

console.hide_native_logs()

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from md4 import checkpointing
from md4 import error_boundary
from md4 import gpt2
from md4 import metrics
from md4.diffusion import process as process_lib

JudgeError = gpt2.JudgeError
SAMPLES_FILE = "samples.jsonl"


def _bucket(length: int, limit: int) -> int:
  """A padded length: the next multiple of 64 (fewer recompilations)."""
  return min(limit, -(-length // 64) * 64)


class GPT2Judge:
  """A Hugging Face GPT-2 directory, scored in JAX."""

  def __init__(self, directory: str | os.PathLike[str], batch_size: int = 8):
    from md4.data import tokenizers  # pylint: disable=g-import-not-at-top

    self.directory = pathlib.Path(directory)
    self.name = self.directory.name
    self.config, self.weights = gpt2.load(self.directory)
    try:
      self.tokenizer = tokenizers.GPT2Tokenizer(self.directory)
    except (FileNotFoundError, ValueError) as e:
      raise JudgeError(f"judge {self.directory}: {e}") from None
    if self.tokenizer.vocab_size != self.config.vocab_size:
      raise JudgeError(
          f"judge {self.directory}: its tokenizer has"
          f" {self.tokenizer.vocab_size} tokens but {gpt2.CONFIG_FILE} a"
          f" vocabulary of {self.config.vocab_size}: another vocabulary. Put"
          " the tokenizer files of that model beside its weights."
      )
    self.batch_size = batch_size
    self.start = self.tokenizer.special_ids["eot"]
    self.end_of_text = tokenizers.GPT2_END_OF_TEXT
    self._window = self.config.context - 1  # tokens scored per window
    config = self.config
    self._nll = jax.jit(
        lambda w, x, m: _window_nll(gpt2.logits(w, x, config), x, m)
    )

  def tokenize(self, text: str) -> np.ndarray:
    return self.tokenizer.encode(text)

  def score(
      self, token_lists: Sequence[np.ndarray], progress: bool = False
  ) -> np.ndarray:
    """Negative log-likelihood (nats) of each token list, [n]."""
    windows, owner = [], []
    for i, ids in enumerate(token_lists):
      for start in range(0, len(ids), self._window):
        windows.append(
            np.concatenate([[self.start], ids[start : start + self._window]])
        )
        owner.append(i)
    nll = np.zeros(len(token_lists))
    order = np.argsort([len(w) for w in windows], kind="stable")
    bar = tqdm.tqdm(total=len(windows), disable=not progress, desc=self.name)
    for first in range(0, len(order), self.batch_size):
      chosen = order[first : first + self.batch_size]
      length = _bucket(
          max(len(windows[j]) for j in chosen), self.config.context
      )
      x = np.zeros((self.batch_size, length), np.int32)
      m = np.zeros((self.batch_size, length), bool)
      for row, j in enumerate(chosen):
        x[row, : len(windows[j])] = windows[j]
        m[row, 1 : len(windows[j])] = True  # the first is the context
      values = np.asarray(self._nll(self.weights, x, m), np.float64)
      for row, j in enumerate(chosen):
        nll[owner[j]] += values[row]
      bar.update(len(chosen))
    bar.close()
    return nll


def _window_nll(logits, x, scored):
  """sum over scored positions i >= 1 of -log p(x_i | x_<i), [B]."""
  log_p = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
  target = jnp.take_along_axis(log_p, x[:, 1:, None], -1)[..., 0]
  return -jnp.where(scored[:, 1:], target, 0.0).sum(-1)


class RunJudge:
  """An autoregressive md4 run: its exact likelihood as the judge."""

  def __init__(self, workdir: str, batch_size: int | None = None):
    from md4 import run as run_lib  # pylint: disable=g-import-not-at-top
    from md4.sampling import known_tokens  # pylint: disable=g-import-not-at-top

    overrides = [f"train.eval_batch_size={batch_size}"] if batch_size else []
    self.run = run_lib.restore(workdir, None, overrides)
    self.name = pathlib.Path(workdir).resolve().name
    process = self.run.setup.model.process
    if process_lib.NEXT_TOKEN not in process.capabilities:
      raise JudgeError(
          f"judge {workdir}: its config.model.process={process.name!r} gives"
          " a bound, not a likelihood; a judge run must be autoregressive"
          " (configs/autoregressive/), or give a GPT-2 directory."
      )
    info = self.run.setup.datasets.info
    self.tokenize_fn = known_tokens.encoder(info, self.run.config.data.dataset)
    self.end_of_text = (
        info.decode(np.array([info.separator_id]))
        if info.separator_id is not None and info.decode is not None
        else None
    )
    self.length = self.run.setup.model.data_shape[0]
    self.batch = self.run.config.train.eval_batch_size
    model = self.run.setup.model

    def nll(params, x, scored):
      terms, _ = model.apply(
          {"params": params},
          x,
          None,
          train=False,
          loss_mask=scored,
          rngs={"sample": jax.random.key(0)},
      )
      return terms["loss"]

    self._nll = jax.jit(nll)

  def tokenize(self, text: str) -> np.ndarray:
    return self.tokenize_fn(text)

  def score(
      self, token_lists: Sequence[np.ndarray], progress: bool = False
  ) -> np.ndarray:
    from md4 import zero_shot  # pylint: disable=g-import-not-at-top

    setup = self.run.setup
    windows, owner = [], []
    for i, ids in enumerate(token_lists):
      for start in range(0, len(ids), self.length):
        windows.append(np.asarray(ids[start : start + self.length]))
        owner.append(i)
    x = np.zeros((len(windows), self.length), np.int32)
    m = np.zeros((len(windows), self.length), bool)
    for row, window in enumerate(windows):
      x[row, : len(window)] = window
      m[row, : len(window)] = True
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
      values = zero_shot.score_rows(
          self.run,
          lambda x, m, i: self._nll(self.run.params, x, m),
          x,
          m,
          batch_size=self.batch,
          desc=self.name,
          progress=progress,
      )
    nll = np.zeros(len(token_lists))
    np.add.at(nll, owner, values)
    return nll


def load_judge(path: str, batch_size: int | None = None):
  """A `RunJudge` for an md4 workdir, else a `GPT2Judge`."""
  if not os.path.isdir(path):
    raise JudgeError(
        f"--judge={path!r} is not a directory; give a GPT-2 directory in the"
        " Hugging Face layout or an autoregressive md4 run's workdir."
    )
  if os.path.isdir(checkpointing.checkpoint_dir(path)):
    return RunJudge(path, batch_size)
  return GPT2Judge(path, batch_size or 8)


def unigram_entropy(ids: np.ndarray) -> float:
  """-sum_v p_v ln p_v of the token shares in one sample (nats)."""
  _, counts = np.unique(np.asarray(ids), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


def _mean_se(values: np.ndarray) -> dict[str, float]:
  n = len(values)
  se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
  return {"mean": float(values.mean()), "se": se}


def judge_texts(judge, texts: Sequence[str], progress: bool = True) -> dict:
  """Generative perplexity and entropy of sample texts (module docstring)."""
  token_lists, kept = [], []
  for i, text in enumerate(texts):
    if judge.end_of_text:
      text = text.split(judge.end_of_text, 1)[0]
    try:
      ids = np.asarray(judge.tokenize(text), np.int64)
    except ValueError as e:
      raise JudgeError(
          f"sample {i} cannot be tokenized by the judge {judge.name} ({e});"
          " judge samples with a judge trained on the same kind of data."
      ) from None
    if len(ids):
      token_lists.append(ids)
      kept.append(i)
  if not token_lists:
    raise JudgeError(
        f"none of the {len(texts)} samples has text before its first"
        " end-of-text; there is nothing to judge."
    )
  nll = judge.score(token_lists, progress=progress)
  counts = np.array([len(t) for t in token_lists], np.float64)
  entropy = np.array([unigram_entropy(t) for t in token_lists])
  per_token, se = metrics.ratio_with_se(nll, counts)
  m = len(nll)
  perplexity = math.exp(per_token)
  entropy_stats = _mean_se(entropy)
  return {
      "judge": judge.name,
      "generative_perplexity": {"mean": perplexity, "se": perplexity * se},
      "nats_per_token": {"mean": per_token, "se": se},
      "entropy": entropy_stats,
      "entropy_bits": {k: v / math.log(2.0) for k, v in entropy_stats.items()},
      "samples": m,
      "empty_samples": len(texts) - m,
      "tokens": int(counts.sum()),
      "per_sample": [
          {
              "index": i,
              "tokens": int(c),
              "nll": float(n),
              "perplexity": math.exp(n / c),
              "entropy": float(e),
          }
          for i, c, n, e in zip(kept, counts, nll, entropy)
      ],
  }


def read_samples(path: pathlib.Path) -> list[str]:
  """The `text` of each line of a samples.jsonl."""
  texts = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        texts.append(str(record["text"]))
      except (json.JSONDecodeError, KeyError, TypeError):
        raise JudgeError(
            f"{path}:{number} is not a sample record (a JSON object with"
            " 'text', as md4.sample writes); give md4.sample's"
            f" {SAMPLES_FILE}."
        ) from None
  return texts


def sample_files(path: str) -> list[pathlib.Path]:
  """A samples.jsonl, or every samples.jsonl under a directory."""
  p = pathlib.Path(path)
  if p.is_file():
    return [p]
  found = sorted(p.rglob(SAMPLES_FILE)) if p.is_dir() else []
  if not found:
    raise JudgeError(
        f"--samples={path!r}: no {SAMPLES_FILE} there; give md4.sample's"
        " output directory (or the file itself)."
    )
  return found


def output_path(samples_path: pathlib.Path, judge_name: str) -> pathlib.Path:
  return samples_path.parent / f"judged_{judge_name}.json"


def summary_line(result: dict) -> str:
  g, e = result["generative_perplexity"], result["entropy"]
  return (
      f"generative perplexity {g['mean']:.2f} +- {g['se']:.2f} under"
      f" {result['judge']}, entropy {e['mean']:.3f} +- {e['se']:.3f} nats"
      f" ({result['samples']} samples, {result['tokens']} tokens,"
      f" {result['empty_samples']} empty)"
  )


# ---------------------------------------------------------------- CLI -----


def define_flags() -> None:
  flags.DEFINE_string(
      "judge", None, "GPT-2 Hugging Face directory or autoregressive workdir."
  )
  flags.DEFINE_string(
      "samples", None, f"A {SAMPLES_FILE}, or a directory searched for them."
  )
  flags.DEFINE_integer("batch_size", None, "Windows per judge call.")
  flags.DEFINE_string(
      "output",
      None,
      "JSON path (one samples file only); default judged_<judge>.json beside"
      " it.",
  )
  flags.mark_flags_as_required(["judge", "samples"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  console.setup(f.verbosity)
  files = sample_files(f.samples)
  if f.output and len(files) > 1:
    raise ValueError(
        f"--output names one file but --samples={f.samples!r} holds"
        f" {len(files)} {SAMPLES_FILE}; drop --output to write each result"
        " beside its samples."
    )
  texts = {path: read_samples(path) for path in files}  # all checked first
  judge = load_judge(f.judge, f.batch_size)
  for path, samples in texts.items():
    result = judge_texts(judge, samples)
    result["samples_file"] = str(path)
    out = pathlib.Path(f.output) if f.output else output_path(path, judge.name)
    if jax.process_index() == 0:
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(json.dumps(result, indent=2))
      print(f"{path}: {summary_line(result)}; written to {out}")


def cli() -> None:
  """The `md4-judge` command (and `python -m md4.judge`)."""
  define_flags()
  error_boundary.run_app(main)


if __name__ == "__main__":
  cli()
