r"""Zero-shot perplexity of a text run on the field's benchmark test sets.

  python -m md4.evaluate --workdir=./expt/owt \
      --benchmark=ptb,wikitext2,wikitext103,lm1b,lambada,ag_news,pubmed,arxiv \
      --benchmark_dir=/data/zero_shot --packing=packed

The table by which masked diffusion language models trained on OpenWebText
are compared (MDLM, SEDD, BD3-LM, MD4). Each benchmark's test set is read
from its standard released files under `--benchmark_dir` (`BENCHMARKS` lists
where each one goes), or, when none is there and the `datasets` package is
installed on an online machine, fetched by name; detokenised by its rules
(below); tokenised with the run's own tokenizer; and scored with the run's
bound (EMA parameters, K = --num_time_samples stratified time draws per
block, as `md4.evaluate`).

Two conventions, both in the literature, named in every result (`packing`):

* `packed`: every example's tokens followed by the end-of-text id,
  concatenated, cut into blocks of the model's length L (the way md4's
  OpenWebText training data is packed); the last partial block is padded
  with unscored end-of-text ids. MDLM's wrapped batches differ in putting
  a BOS and an EOS token into each block of L - 2 tokens and dropping the
  remainder.
* `padded`: one example per sequence, its tokens and an end-of-text id,
  cut at L (the cut tokens are counted in `truncated_tokens`), padded to L
  with end-of-text ids that the loss mask keeps out of the bound (never
  noised, never scored: `md4.diffusion.masked`); MDLM's unwrapped batches
  (which also score a leading BOS).

Perplexity is exp(nats per scored token), the ratio sum of the blocks' bounds
over sum of their scored tokens; its standard error is by the delta method
for a ratio over blocks (which also covers the Monte-Carlo noise of the
bound). Reading rules, after MDLM's zero-shot data loader (the rules, not its
code):

* WikiText-2 / -103 (`wiki.test.raw`): one example per non-blank line, the
  line's newline kept (MDLM's loader also gives every blank line an
  end-of-text token; blank lines are skipped here); WikiText detokeniser.
* PTB (`ptb.test.txt`): one sentence per line, stripped; PTB detokeniser
  (`<unk>` -> `?`, ` n't`, ` 's`, `N` -> `1`).
* LAMBADA (`lambada_test.jsonl`, the file OpenAI released with GPT-2):
  field `text`; curly quotes -> `"`, the text stripped and preceded by a
  newline.
* LM1B (`news.en.heldout-*-of-00050`, the held-out shards, read in name
  order): one sentence per line; LM1B detokeniser.
* AG News (`test.csv`, the released CSV: class, title, description; a
  header row is skipped): `title + " " + description`, as the Hugging Face
  `ag_news` text; no detokeniser.
* PubMed / arXiv (the `scientific_papers` test sets: `test.jsonl` or
  `test.txt` in the released layout with `article_text` a list of
  sentences joined by newlines, or `article`; `test.parquet` with column
  `article`; or a saved Hugging Face dataset): the article; WikiText then
  LM1B detokeniser.

`--max_examples=N` scores the first N examples of each benchmark (quick
checks; the table says so). The combined result is JSON and a Markdown
table.
"""

from collections.abc import Callable, Iterable, Sequence
import csv
import dataclasses
import json
import math
import os
import pathlib
import re
import time

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from md4 import metrics

PACKINGS = ("packed", "padded")

# ---------------------------------------------------------- detokenisers --

# Each rule is (regular expression, replacement), applied in order; a plain
# string is matched literally.
Rule = tuple[str | re.Pattern, str]


def _apply(rules: Sequence[Rule], text: str) -> str:
  for pattern, replacement in rules:
    if isinstance(pattern, re.Pattern):
      text = pattern.sub(replacement, text)
    else:
      text = text.replace(pattern, replacement)
  return text


def _bracket_rule(open_: str, close: str) -> Rule:
  """Removes the spaces just inside a pair of brackets or quotes."""
  o, c = re.escape(open_), re.escape(close)
  return (re.compile(rf"{o}\s*([^{c}]*?)\s*{c}"), rf"{open_}\1{close}")


_WIKITEXT_RULES: tuple[Rule, ...] = (
    ("s '", "s'"),  # plural possessive
    (re.compile(r"/' [0-9]/"), r"/'[0-9]/"),
    # The tokenised number separators: 1 @,@ 000 -> 1,000.
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    # Punctuation attached to the word before it.
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
    _bracket_rule("(", ")"),
    _bracket_rule("[", "]"),
    _bracket_rule("{", "}"),
    _bracket_rule('"', '"'),
    _bracket_rule("'", "'"),
    # Section headings = = Title = = -> == Title ==.
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
)

_PTB_RULES: tuple[Rule, ...] = (
    (" 's", "'s"),
    ("s ' ", "s' "),
    (" n't", "n't"),
    (" \n ", "\n"),
    ("\\/", "/"),
    # " N N " needs repeated passes: each match consumes its spaces.
    *((" N ", " 1 "),) * 10,
    ("$ 1", "$1"),
    ("# 1", "#1"),
    ("<unk>", "?"),
)

_LM1B_RULES: tuple[Rule, ...] = (
    ("http : / / ", "http://"),
    ("https : / / ", "https://"),
    (re.compile(r" '(\w+)"), r"'\1"),
    (re.compile(r" (\w+) \. "), r" \1. "),
    (re.compile(r" (\w+) \.$"), r" \1."),
    (" ? ", "? "),
    (re.compile(r" \?$"), "?"),
    (" ! ", "! "),
    (re.compile(r" !$"), "!"),
    (" , ", ", "),
    (" : ", ": "),
    (" ; ", "; "),
    (" / ", "/"),
    (re.compile(r'" ([^"]+) "'), r'"\1"'),
    (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^()]+) \)"), r"(\1)"),
    (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    ("$ ", "$"),
    ("\N{POUND SIGN} ", "\N{POUND SIGN}"),
)


def detokenize_wikitext(text: str) -> str:
  return _apply(_WIKITEXT_RULES, text)


def detokenize_ptb(text: str) -> str:
  return _apply(_PTB_RULES, text)


def detokenize_lm1b(text: str) -> str:
  return _apply(_LM1B_RULES, text)


def detokenize_lambada(text: str) -> str:
  text = text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"')
  text = text.replace("\N{RIGHT DOUBLE QUOTATION MARK}", '"')
  return "\n" + text.strip()


def detokenize_scientific_papers(text: str) -> str:
  return detokenize_lm1b(detokenize_wikitext(text))


# --------------------------------------------------------------- readers --


class BenchmarkFileError(ValueError):
  """A benchmark file that is missing or not in its released format."""


def _read_lines(path: pathlib.Path, strip: bool) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.readlines()
  except UnicodeDecodeError as e:
    raise BenchmarkFileError(
        f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); use the"
        " released plain-text test file."
    ) from None
  if strip:
    return [line.strip() for line in lines if line.strip()]
  return [line for line in lines if line.strip()]


def _read_jsonl(path: pathlib.Path, fields: Sequence[str]) -> list[str]:
  """One text per line: the first of `fields` each JSON object has."""
  texts = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise BenchmarkFileError(
            f"{path}:{number} is not a JSON object ({e.msg}); the file must"
            f" hold one JSON object per line with a field {fields[0]!r}."
        ) from None
      found = [k for k in fields if isinstance(record, dict) and k in record]
      if not found:
        raise BenchmarkFileError(
            f"{path}:{number} has no field {' or '.join(map(repr, fields))}"
            f" (it has {sorted(record) if isinstance(record, dict) else []})"
            "; use the released file, or a JSON-lines file with that field."
        )
      value = record[found[0]]
      if isinstance(value, list):  # scientific_papers: a list of sentences
        value = "\n".join(value)
      texts.append(str(value))
  return texts


def _read_parquet(path: pathlib.Path, column: str) -> list[str]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  try:
    table = pq.read_table(path)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise BenchmarkFileError(
        f"{path} could not be read as Parquet ({e}); use the released file."
    ) from None
  if column not in table.column_names:
    raise BenchmarkFileError(
        f"{path} has no column {column!r} (it has {table.column_names});"
        " write the test set with that column."
    )
  return [str(v) for v in table.column(column).to_pylist()]


def _read_ag_news(path: pathlib.Path) -> list[str]:
  texts = []
  with open(path, encoding="utf-8", newline="") as f:
    for number, row in enumerate(csv.reader(f), 1):
      if number == 1 and row and not row[0].strip().isdigit():
        continue  # a header row ("Class Index,Title,Description")
      if len(row) != 3 or not row[0].strip().isdigit():
        raise BenchmarkFileError(
            f"{path}:{number} is not a row of AG News's test.csv (class"
            " index, title, description; got"
            f" {len(row)} fields); use the released ag_news_csv/test.csv."
        )
      texts.append(row[1] + " " + row[2])
  return texts


def _read_lm1b(directory: pathlib.Path) -> list[str]:
  texts = []
  for path in sorted(directory.glob("news.en.heldout-*-of-*")):
    texts.extend(_read_lines(path, strip=True))
  return texts


def _read_scientific(path: pathlib.Path) -> list[str]:
  if path.suffix == ".parquet":
    return _read_parquet(path, "article")
  return _read_jsonl(path, ("article", "article_text"))


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One zero-shot test set.

  Attributes:
    name: the --benchmark name.
    title: how tables show it.
    files: where under --benchmark_dir it may be, in order of preference
      (relative paths; a glob for LM1B's shards).
    read: path -> the examples' raw texts.
    detokenize: raw text -> text for the tokenizer.
    release: what to download and where it comes from (for the errors).
    hub: (`datasets.load_dataset` args, split, text field), or None.
  """

  name: str
  title: str
  files: tuple[str, ...]
  read: Callable[[pathlib.Path], list[str]]
  detokenize: Callable[[str], str] | None
  release: str
  hub: tuple[tuple[str, ...], str, str] | None


def _wikitext(name, title, size):
  return Benchmark(
      name=name,
      title=title,
      files=(
          f"{name}/wiki.test.raw",
          f"wikitext-{size}-raw/wiki.test.raw",
          f"wikitext-{size}-raw-v1/wiki.test.raw",
      ),
      read=lambda p: _read_lines(p, strip=False),
      detokenize=detokenize_wikitext,
      release=f"wiki.test.raw of wikitext-{size}-raw-v1.zip",
      hub=(("wikitext", f"wikitext-{size}-raw-v1"), "test", "text"),
  )


def _scientific(name, title):
  return Benchmark(
      name=name,
      title=title,
      files=(
          f"{name}/test.jsonl",
          f"{name}/test.txt",
          f"{name}/test.parquet",
      ),
      read=_read_scientific,
      detokenize=detokenize_scientific_papers,
      release=(
          f"the {name} test set of scientific_papers (test.txt of"
          f" {name}-dataset, or an export with an 'article' field)"
      ),
      hub=(("scientific_papers", name), "test", "article"),
  )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _wikitext("wikitext2", "WikiText-2", "2"),
        _wikitext("wikitext103", "WikiText-103", "103"),
        Benchmark(
            name="ptb",
            title="PTB",
            files=("ptb/ptb.test.txt", "ptb.test.txt"),
            read=lambda p: _read_lines(p, strip=True),
            detokenize=detokenize_ptb,
            release=(
                "ptb.test.txt of the Penn Treebank (Mikolov's simple-examples)"
            ),
            hub=(("ptb_text_only",), "test", "sentence"),
        ),
        Benchmark(
            name="lambada",
            title="LAMBADA",
            files=("lambada/lambada_test.jsonl", "lambada_test.jsonl"),
            read=lambda p: _read_jsonl(p, ("text",)),
            detokenize=detokenize_lambada,
            release=(
                "lambada_test.jsonl, the LAMBADA test file released with GPT-2"
            ),
            hub=None,
        ),
        Benchmark(
            name="lm1b",
            title="LM1B",
            files=(
                "lm1b/heldout-monolingual.tokenized.shuffled",
                "lm1b",
                "heldout-monolingual.tokenized.shuffled",
            ),
            read=_read_lm1b,
            detokenize=detokenize_lm1b,
            release=(
                "the held-out shards news.en.heldout-*-of-00050 of"
                " 1-billion-word-language-modeling-benchmark-r13output"
            ),
            hub=(("lm1b",), "test", "text"),
        ),
        Benchmark(
            name="ag_news",
            title="AG News",
            files=("ag_news/test.csv", "ag_news_csv/test.csv"),
            read=_read_ag_news,
            detokenize=None,
            release="test.csv of ag_news_csv",
            hub=(("ag_news",), "test", "text"),
        ),
        _scientific("pubmed", "PubMed"),
        _scientific("arxiv", "arXiv"),
    )
}


def parse_names(text: str) -> list[str]:
  """`ptb,wikitext2` -> the names; ValueError naming an unknown one."""
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in BENCHMARKS]
  if unknown or not names:
    raise ValueError(
        f"--benchmark={text!r}: unknown benchmark {unknown[0]!r}; valid:"
        f" {', '.join(BENCHMARKS)} (comma-separated)."
        if unknown
        else (
            "--benchmark is empty; name one or more of "
            f"{', '.join(BENCHMARKS)}."
        )
    )
  return names


def _found(benchmark: Benchmark, root: pathlib.Path) -> pathlib.Path | None:
  for relative in benchmark.files:
    path = root / relative
    if benchmark.name == "lm1b":
      if path.is_dir() and any(path.glob("news.en.heldout-*-of-*")):
        return path
    elif path.is_file():
      return path
  return None


def _saved_dataset(benchmark: Benchmark, root: pathlib.Path):
  """A Hugging Face dataset saved with save_to_disk at <root>/<name>."""
  directory = root / benchmark.name
  if not (
      (directory / "dataset_dict.json").is_file()
      or (directory / "state.json").is_file()
  ):
    return None
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise BenchmarkFileError(
        f"{directory} is a saved Hugging Face dataset; reading it needs the"
        " `datasets` package (pip install datasets), or put the released"
        f" file there instead: {benchmark.files[0]}."
    ) from None
  data = datasets.load_from_disk(str(directory))
  return data["test"] if "test" in data else data


def read_texts(benchmark: Benchmark, root: str | os.PathLike[str]) -> list[str]:
  """The benchmark's raw test texts, from files under root, else the hub."""
  root = pathlib.Path(root)
  path = _found(benchmark, root)
  if path is not None:
    texts = benchmark.read(path)
    if not texts:
      raise BenchmarkFileError(
          f"{path} holds no examples; use the released {benchmark.release}."
      )
    return texts
  field = benchmark.hub[2] if benchmark.hub else "text"
  saved = _saved_dataset(benchmark, root)
  if saved is not None:
    return _column(saved, field, root / benchmark.name)
  where = ", ".join(str(root / f) for f in benchmark.files)
  hint = f"put {benchmark.release} at {root / benchmark.files[0]}" + (
      "" if benchmark.name != "lm1b" else " (the directory of shards)"
  )
  if benchmark.hub is None:
    raise BenchmarkFileError(
        f"{benchmark.title}: not found at {where}; {hint}."
    )
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise BenchmarkFileError(
        f"{benchmark.title}: not found at {where}; {hint}, or install"
        " `datasets` on an online machine to fetch it by name."
    ) from None
  args, split, _ = benchmark.hub
  try:
    data = datasets.load_dataset(*args, split=split, trust_remote_code=True)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise BenchmarkFileError(
        f"{benchmark.title}: not found at {where}, and fetching "
        f"{'/'.join(args)} failed ({type(e).__name__}: {e}); {hint}."
    ) from None
  return _column(data, field, "/".join(args))


def _column(data, field: str, where) -> list[str]:
  if field not in data.column_names:
    raise BenchmarkFileError(
        f"{where} has no column {field!r} (it has {data.column_names})."
    )
  return [str(v) for v in data[field]]


# ---------------------------------------------------------------- blocks --


@dataclasses.dataclass
class Blocks:
  """A benchmark's token blocks for the bound.

  Attributes:
    tokens: int32 [n, L].
    scored: bool [n, L], True where a token enters the bound.
    num_examples: examples read.
    truncated_tokens: tokens cut off by the padded convention.
  """

  tokens: np.ndarray
  scored: np.ndarray
  num_examples: int
  truncated_tokens: int = 0


def make_blocks(
    token_lists: Iterable[np.ndarray],
    length: int,
    separator: int,
    packing: str,
) -> Blocks:
  """Blocks of `length` tokens from tokenised examples (module docstring)."""
  if packing not in PACKINGS:
    raise ValueError(f"--packing={packing!r}; valid: {', '.join(PACKINGS)}.")
  sep = np.array([separator], np.int32)
  examples = [
      np.concatenate([np.asarray(t, np.int32), sep]) for t in token_lists
  ]
  if packing == "packed":
    stream = np.concatenate(examples) if examples else sep[:0]
    n = -(-len(stream) // length)
    tokens = np.full((n * length,), separator, np.int32)
    tokens[: len(stream)] = stream
    scored = np.zeros((n * length,), bool)
    scored[: len(stream)] = True
    return Blocks(
        tokens.reshape(n, length), scored.reshape(n, length), len(examples)
    )
  tokens = np.full((len(examples), length), separator, np.int32)
  scored = np.zeros((len(examples), length), bool)
  truncated = 0
  for i, example in enumerate(examples):
    kept = example[:length]
    truncated += len(example) - len(kept)
    tokens[i, : len(kept)] = kept
    scored[i, : len(kept)] = True
  return Blocks(tokens, scored, len(examples), truncated)


# ---------------------------------------------------------------- scoring --


def make_masked_bound_fn(model, num_time_samples: int):
  """(params, x, scored, rng) -> per-block mean bound over K times [B]."""
  from md4 import evaluate  # pylint: disable=g-import-not-at-top

  return evaluate.make_bound_fn(model, num_time_samples, masked=True)


def check_run(run) -> tuple[Callable[[str], np.ndarray], int]:
  """(encode, separator id) of a run that can be scored; else ValueError."""
  from md4.data import token_files  # pylint: disable=g-import-not-at-top

  info = run.setup.datasets.info
  dataset = run.config.data.dataset
  if info.kind != "text" or info.encode is None:
    raise ValueError(
        f"--benchmark scores text, but the run's data set {dataset!r} is"
        f" {info.kind} data without a tokenizer; give a run trained on"
        " token data (e.g. configs/md4/openwebtext.py)."
    )
  if info.encode is token_files.text_as_ids or info.separator_id is None:
    raise ValueError(
        "--benchmark needs the run's tokenizer and document separator, but"
        f" its data ({dataset!r} in {run.config.data.data_dir}) records none"
        " (a prepared corpus has tokenizer/ and a metadata.json naming its"
        " separator_id); prepare the data with prepare_openwebtext_data.py."
    )
  if not run.setup.model.process.supports_loss_mask:
    raise ValueError(
        f"config.model.process={run.setup.model.process.name!r} has no loss"
        " mask, which the zero-shot bound needs for padding; evaluate an md4"
        " run."
    )
  return info.encode, int(info.separator_id)


def score_blocks(
    run,
    blocks: Blocks,
    *,
    num_time_samples: int,
    seed: int,
    desc: str,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Per-block bound (nats) and scored-token counts, for real blocks."""
  setup = run.setup
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    bound = jax.jit(make_masked_bound_fn(setup.model, num_time_samples))
    nats = score_rows(
        run,
        lambda x, scored, i: bound(
            run.params, x, scored, jax.random.fold_in(jax.random.key(seed), i)
        ),
        blocks.tokens,
        blocks.scored,
        batch_size=run.config.train.eval_batch_size,
        desc=desc,
        progress=progress,
    )
  return nats, blocks.scored.sum(1).astype(np.float64)


def score_rows(
    run,
    fn: Callable[[jax.Array, jax.Array, int], jax.Array],
    tokens: np.ndarray,
    scored: np.ndarray,
    *,
    batch_size: int,
    desc: str,
    progress: bool = True,
) -> np.ndarray:
  """fn(x, scored, batch index) -> [batch] over the rows of tokens/scored.

  Rows are cut into global batches of `batch_size` (the last padded with
  unscored rows), each process feeding its share to the run's batch
  sharding; the values of the real rows come back, float64 [N]. Call it
  under the run's mesh and axis rules; every process must call it.
  """
  setup = run.setup
  local = batch_size // jax.process_count()
  first = jax.process_index() * local
  length = tokens.shape[1]
  out = []
  bar = tqdm.tqdm(
      total=len(tokens), unit="row", disable=not progress, desc=desc
  )
  for i, start in enumerate(range(0, len(tokens), batch_size)):
    x = np.zeros((batch_size, length), np.int32)
    m = np.zeros((batch_size, length), bool)
    n = len(tokens[start : start + batch_size])
    x[:n] = tokens[start : start + batch_size]
    m[:n] = scored[start : start + batch_size]
    arrays = [
        jax.make_array_from_process_local_data(
            setup.batch_sharding, a[first : first + local]
        )
        for a in (x, m)
    ]
    values = multihost_utils.process_allgather(fn(*arrays, i), tiled=True)
    out.extend(np.asarray(values, np.float64)[:n].tolist())
    bar.update(n)
  bar.close()
  return np.asarray(out, np.float64)


def evaluate_benchmark(
    run,
    benchmark: Benchmark,
    texts: Sequence[str],
    *,
    packing: str = "packed",
    num_time_samples: int = 1,
    max_examples: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
  """One benchmark's perplexity (JSON-ready), from its raw test texts."""
  encode, separator = check_run(run)
  total_examples = len(texts)
  if max_examples:
    texts = texts[:max_examples]
  if benchmark.detokenize is not None:
    texts = [benchmark.detokenize(t) for t in texts]
  token_lists = [encode(t) for t in texts]
  length = run.setup.model.data_shape[0]
  blocks = make_blocks(token_lists, length, separator, packing)
  start = time.perf_counter()
  nats, counts = score_blocks(
      run,
      blocks,
      num_time_samples=num_time_samples,
      seed=seed,
      desc=f"{benchmark.name} ({packing})",
      progress=progress,
  )
  per_token, se = metrics.ratio_with_se(nats, counts)
  perplexity = math.exp(per_token)
  return {
      "benchmark": benchmark.name,
      "title": benchmark.title,
      "packing": packing,
      "perplexity": {"mean": perplexity, "se": perplexity * se},
      "nats_per_token": {"mean": per_token, "se": se},
      "tokens": int(counts.sum()),
      "blocks": len(blocks.tokens),
      "examples": blocks.num_examples,
      "examples_in_test_set": total_examples,
      "truncated_tokens": blocks.truncated_tokens,
      "num_time_samples": num_time_samples,
      "seq_len": length,
      "seconds": time.perf_counter() - start,
  }


def markdown_table(result: dict) -> str:
  """The combined result as a Markdown table."""
  lines = [
      f"Zero-shot perplexity (upper bound), {result['workdir']} step"
      f" {result['checkpoint_step']}, packing = {result['packing']}, K ="
      f" {result['num_time_samples']} time samples per block"
      + (
          f", first {result['max_examples']} examples of each"
          if result["max_examples"]
          else ""
      )
      + ".",
      "",
      "| benchmark | perplexity | +- se | tokens | blocks | examples |",
      "|---|---:|---:|---:|---:|---:|",
  ]
  for r in result["benchmarks"]:
    lines.append(
        f"| {r['title']} | {r['perplexity']['mean']:.2f} |"
        f" {r['perplexity']['se']:.2f} | {r['tokens']:,} | {r['blocks']:,} |"
        f" {r['examples']:,} |"
    )
  return "\n".join(lines) + "\n"


def evaluate_suite(
    run,
    names: Sequence[str],
    benchmark_dir: str,
    *,
    packing: str = "packed",
    num_time_samples: int = 1,
    max_examples: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
  """Every named benchmark; checks the run and every file before scoring."""
  check_run(run)
  if packing not in PACKINGS:
    raise ValueError(f"--packing={packing!r}; valid: {', '.join(PACKINGS)}.")
  # Every file found (or fetched) and read before the slow part.
  texts = {name: read_texts(BENCHMARKS[name], benchmark_dir) for name in names}
  results = [
      evaluate_benchmark(
          run,
          BENCHMARKS[name],
          texts[name],
          packing=packing,
          num_time_samples=num_time_samples,
          max_examples=max_examples,
          seed=seed,
          progress=progress,
      )
      for name in names
  ]
  return {
      "workdir": run.workdir,
      "checkpoint_step": run.step,
      "benchmark_dir": str(benchmark_dir),
      "packing": packing,
      "num_time_samples": num_time_samples,
      "max_examples": max_examples,
      "seed": seed,
      "benchmarks": results,
  }
