"""The zero-shot suite: readers of the released formats, detokenisers,
packing conventions, the ratio's standard error, and a scored run."""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tokenizers as hf_tokenizers

from md4 import config_recipes
from md4 import metrics
from md4 import run as run_lib
from md4 import train
from md4 import zero_shot

ROOT = pathlib.Path(__file__).resolve().parents[1]

# ------------------------------------------------------ detokenisers -----


def test_wikitext_detokenizer_undoes_the_number_and_punctuation_splits():
  raw = (
      " = = Early life = = \n The 1 @,@ 000 @-@ year war ( 1990 ) cost 3 @.@ 5"
      " m . \n"
  )
  assert zero_shot.detokenize_wikitext(raw) == (
      " == Early life ==\nThe 1,000-year war (1990) cost 3.5 m.\n"
  )
  assert zero_shot.detokenize_wikitext("the boys ' dog") == "the boys' dog"
  assert zero_shot.detokenize_wikitext("it 's a N") == "it's a N"


def test_ptb_detokenizer_joins_contractions_and_replaces_unk_and_n():
  raw = "he did n't see the <unk> 's N shares at $ N each"
  assert (
      zero_shot.detokenize_ptb(raw)
      == "he didn't see the ?'s 1 shares at $1 each"
  )
  # Runs of N need the repeated passes: each match consumes a space.
  assert zero_shot.detokenize_ptb("a N N N b") == "a 1 1 1 b"


def test_lm1b_detokenizer_attaches_punctuation_and_quotes():
  raw = 'He said " hello , world " ( twice ) at http : / / x.org .'
  assert zero_shot.detokenize_lm1b(raw) == (
      'He said "hello, world" (twice) at http://x.org .'
  )
  assert zero_shot.detokenize_lm1b("It costs $ 5 , doesn 't it ?") == (
      "It costs $5, doesn't it?"
  )


def test_lambada_detokenizer_straightens_quotes_and_starts_a_line():
  assert zero_shot.detokenize_lambada(" \u201chi\u201d she said ") == (
      '\n"hi" she said'
  )


# ----------------------------------------------------------- blocks -----


def test_packed_blocks_concatenate_examples_with_separators_and_mask_the_tail():
  blocks = zero_shot.make_blocks(
      [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])], 4, 9, "packed"
  )
  np.testing.assert_array_equal(
      blocks.tokens, [[1, 2, 3, 9], [4, 9, 5, 6], [9, 9, 9, 9]]
  )
  np.testing.assert_array_equal(
      blocks.scored, [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
  )
  assert blocks.num_examples == 3 and blocks.truncated_tokens == 0


def test_padded_blocks_hold_one_example_each_cut_at_the_length():
  blocks = zero_shot.make_blocks(
      [np.array([1, 2, 3, 4, 5]), np.array([6])], 4, 9, "padded"
  )
  np.testing.assert_array_equal(blocks.tokens, [[1, 2, 3, 4], [6, 9, 9, 9]])
  np.testing.assert_array_equal(blocks.scored, [[1, 1, 1, 1], [1, 1, 0, 0]])
  assert blocks.truncated_tokens == 2  # the 5 and its separator
  with pytest.raises(ValueError, match="--packing='wrapped'.*packed, padded"):
    zero_shot.make_blocks([np.array([1])], 4, 9, "wrapped")


def test_ratio_standard_error_is_the_per_token_standard_error_for_full_blocks():
  rng = np.random.default_rng(0)
  per_token = rng.gamma(3.0, 1.0, 50)
  r, se = metrics.ratio_with_se(per_token * 8, np.full(50, 8.0))
  assert r == pytest.approx(per_token.mean())
  assert se == pytest.approx(per_token.std(ddof=1) / math.sqrt(50))
  # Unequal blocks: the ratio of sums, not the mean of ratios.
  r, _ = metrics.ratio_with_se(np.array([2.0, 30.0]), np.array([1.0, 10.0]))
  assert r == pytest.approx(32.0 / 11.0)


def test_benchmark_names_are_checked_with_the_valid_ones():
  assert zero_shot.parse_names("ptb, lambada") == ["ptb", "lambada"]
  with pytest.raises(ValueError, match="unknown benchmark 'wt2'.*wikitext2"):
    zero_shot.parse_names("ptb,wt2")


# ---------------------------------------------------------- readers -----

WIKI = [
    " \n",
    " = Robert = \n",
    " \n",
    " Robert is an actor . He was born in 1 @,@ 970 . \n",
]


def write_benchmarks(root: pathlib.Path) -> dict[str, list[str]]:
  """Every benchmark's test file in its released format; the raw texts."""
  expected = {}
  for name in ("wikitext2", "wikitext103"):
    (root / name).mkdir(parents=True)
    (root / name / "wiki.test.raw").write_text("".join(WIKI))
    expected[name] = [WIKI[1], WIKI[3]]
  ptb = [" no it was n't black monday \n", " the <unk> fell N % \n"]
  (root / "ptb").mkdir()
  (root / "ptb" / "ptb.test.txt").write_text("".join(ptb))
  expected["ptb"] = [s.strip() for s in ptb]
  lambada = ["\u201cYes,\u201d he said to his dad", "she ran to the door"]
  (root / "lambada").mkdir()
  (root / "lambada" / "lambada_test.jsonl").write_text(
      "".join(json.dumps({"text": t}) + "\n" for t in lambada)
  )
  expected["lambada"] = lambada
  shards = root / "lm1b" / "heldout-monolingual.tokenized.shuffled"
  shards.mkdir(parents=True)
  (shards / "news.en.heldout-00001-of-00050").write_text("Second shard .\n")
  (shards / "news.en.heldout-00000-of-00050").write_text(
      "The cat sat .\nIt 's raining , he said .\n"
  )
  expected["lm1b"] = [
      "The cat sat .",
      "It 's raining , he said .",
      "Second shard .",
  ]
  (root / "ag_news").mkdir()
  with open(root / "ag_news" / "test.csv", "w", newline="") as f:
    writer = csv.writer(f, quoting=csv.QUOTE_ALL)
    writer.writerow(["3", "Fears for pension", "Unions say, today."])
    writer.writerow(["4", "New chip", 'A "fast" one.'])
  expected["ag_news"] = [
      "Fears for pension Unions say, today.",
      'New chip A "fast" one.',
  ]
  (root / "pubmed").mkdir()
  papers = [["we study mice .", "results follow ."], ["a second paper ."]]
  (root / "pubmed" / "test.txt").write_text(
      "".join(
          json.dumps(
              {"article_id": str(i), "article_text": p, "abstract_text": []}
          )
          + "\n"
          for i, p in enumerate(papers)
      )
  )
  expected["pubmed"] = ["\n".join(p) for p in papers]
  (root / "arxiv").mkdir()
  articles = ["we prove a theorem ( see below ) .", "another one ."]
  pq.write_table(
      pa.table({"article": articles, "abstract": ["", ""]}),
      root / "arxiv" / "test.parquet",
  )
  expected["arxiv"] = articles
  return expected


def test_every_benchmark_is_read_from_its_released_format(tmp_path):
  expected = write_benchmarks(tmp_path)
  assert set(expected) == set(zero_shot.BENCHMARKS)
  for name, texts in expected.items():
    assert zero_shot.read_texts(zero_shot.BENCHMARKS[name], tmp_path) == texts


def test_ag_news_reader_skips_a_header_row(tmp_path):
  (tmp_path / "ag_news").mkdir()
  (tmp_path / "ag_news" / "test.csv").write_text(
      'Class Index,Title,Description\n"1","T","D"\n'
  )
  assert zero_shot.read_texts(zero_shot.BENCHMARKS["ag_news"], tmp_path) == [
      "T D"
  ]


def test_a_missing_benchmark_names_the_file_and_where_it_goes(tmp_path):
  with pytest.raises(zero_shot.BenchmarkFileError) as e:
    zero_shot.read_texts(zero_shot.BENCHMARKS["wikitext103"], tmp_path)
  message = str(e.value)
  assert str(tmp_path / "wikitext103" / "wiki.test.raw") in message
  assert "wikitext-103-raw-v1" in message
  assert "datasets" in message
  with pytest.raises(zero_shot.BenchmarkFileError, match="lambada_test.jsonl"):
    zero_shot.read_texts(zero_shot.BENCHMARKS["lambada"], tmp_path)


@pytest.mark.parametrize(
    "name,relative,content,match",
    [
        (
            "lambada",
            "lambada/lambada_test.jsonl",
            '{"text": "fine"}\nnot json\n',
            r"lambada_test.jsonl:2 is not a JSON object",
        ),
        (
            "lambada",
            "lambada/lambada_test.jsonl",
            '{"sentence": "x"}\n',
            r"lambada_test.jsonl:1 has no field 'text'.*\['sentence'\]",
        ),
        (
            "ag_news",
            "ag_news/test.csv",
            '"1","only a title"\n',
            r"test.csv:1 is not a row of AG News.*got 2 fields",
        ),
        (
            "arxiv",
            "arxiv/test.parquet",
            "not parquet at all",
            r"test.parquet could not be read as Parquet",
        ),
        ("ptb", "ptb/ptb.test.txt", "\n\n", r"ptb.test.txt holds no examples"),
    ],
)
def test_a_benchmark_file_in_the_wrong_format_is_named(
    tmp_path, name, relative, content, match
):
  path = tmp_path / relative
  path.parent.mkdir(parents=True)
  path.write_text(content)
  before = path.read_bytes()
  with pytest.raises(zero_shot.BenchmarkFileError, match=match):
    zero_shot.read_texts(zero_shot.BENCHMARKS[name], tmp_path)
  assert path.read_bytes() == before


# --------------------------------------------------- a scored run -----

CORPUS_WORDS = (
    "the cat sat on a mat . he said it 's raining , robert was born in 1,970"
    " ( see below ) we study mice results follow"
).split()


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
  """A 2-step md4 run on a corpus prepared with a small GPT-2-format BPE."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  base = tmp_path_factory.mktemp("zero_shot_run")
  rng = np.random.default_rng(0)
  corpus = [
      " ".join(rng.choice(CORPUS_WORDS, rng.integers(5, 40)))
      for _ in range(300)
  ]
  (base / "corpus").mkdir()
  (base / "corpus" / "docs.jsonl").write_text(
      "".join(json.dumps({"text": t}) + "\n" for t in corpus)
  )
  bpe = hf_tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
      corpus,
      vocab_size=300,
      min_frequency=2,
      special_tokens=["<|endoftext|>"],
      show_progress=False,
  )
  (base / "bpe").mkdir()
  bpe.save_model(str(base / "bpe"))
  spec = importlib.util.spec_from_file_location(
      "prepare_openwebtext_data", ROOT / "prepare_openwebtext_data.py"
  )
  prepare = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(prepare)
  prepare.main([
      f"--input={base / 'corpus'}",
      f"--data_dir={base / 'data'}",
      f"--tokenizer_dir={base / 'bpe'}",
      "--seq_len=32",
      "--num_proc=1",
      "--eval_fraction=0.1",
  ])
  config = config_recipes.load_file(
      str(ROOT / "configs" / "md4" / "openwebtext.py"), "cpu"
  )
  config.data.data_dir = str(base / "data")
  config.data.data_shape = (32,)
  config.data.vocab_size = 300
  config.data.num_workers = 0
  config.network.num_layers = 1
  config.network.width = 32
  config.network.num_heads = 2
  config.network.cond_width = 16
  config.train.batch_size = 4
  config.train.eval_batch_size = 4
  config.train.num_steps = 2
  config.train.eval_every = config.train.checkpoint_every = 2
  config.train.sample_every = 2
  config.train.sample_steps = 4
  config.train.log_every = 1
  workdir = str(base / "run")
  train.train_and_evaluate(config, workdir)
  return workdir, base / "bpe"


@pytest.mark.slow
def test_the_suite_scores_every_benchmark_and_counts_its_tokens(
    token_run, tmp_path
):
  workdir, bpe_dir = token_run
  texts = write_benchmarks(tmp_path)
  run = run_lib.restore(workdir)
  names = list(texts)
  bpe = hf_tokenizers.ByteLevelBPETokenizer(
      str(bpe_dir / "vocab.json"), str(bpe_dir / "merges.txt")
  )
  results = {}
  for packing in zero_shot.PACKINGS:
    result = zero_shot.evaluate_suite(
        run,
        names,
        tmp_path,
        packing=packing,
        num_time_samples=2,
        progress=False,
    )
    assert result["packing"] == packing
    results[packing] = {r["benchmark"]: r for r in result["benchmarks"]}
  for name in names:
    detok = zero_shot.BENCHMARKS[name].detokenize or (lambda t: t)
    # Independently: every example's BPE tokens plus one end-of-text.
    tokens = sum(len(bpe.encode(detok(t)).ids) + 1 for t in texts[name])
    packed, padded = results["packed"][name], results["padded"][name]
    assert packed["tokens"] == tokens
    assert packed["blocks"] == -(-tokens // 32)
    assert padded["blocks"] == len(texts[name])
    assert padded["tokens"] + padded["truncated_tokens"] == tokens
    for r in (packed, padded):
      ppl = r["perplexity"]
      # An untrained model over 300 values: about the vocabulary size.
      assert 30 < ppl["mean"] < 3000, (name, r)
      assert ppl["mean"] == pytest.approx(math.exp(r["nats_per_token"]["mean"]))
  table = zero_shot.markdown_table(result)
  assert "| WikiText-103 |" in table and "packing = padded" in table


@pytest.mark.slow
def test_the_evaluate_command_writes_the_json_and_the_table(
    token_run, tmp_path
):
  workdir, _ = token_run
  write_benchmarks(tmp_path / "bench")
  out = tmp_path / "out" / "zs.json"
  command = [
      sys.executable,
      "-m",
      "md4.evaluate",
      f"--workdir={workdir}",
      "--benchmark=ptb,lambada",
      f"--benchmark_dir={tmp_path / 'bench'}",
      "--packing=padded",
      f"--output={out}",
  ]
  done = subprocess.run(
      command, capture_output=True, text=True, cwd=ROOT, check=False
  )
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  assert [r["benchmark"] for r in result["benchmarks"]] == ["ptb", "lambada"]
  assert (tmp_path / "out" / "zs.md").read_text() in done.stdout
  # A benchmark that is not there: one error naming the file, nothing written.
  done = subprocess.run(
      command[:-3] + ["--benchmark=wikitext2", f"--benchmark_dir={tmp_path}"],
      capture_output=True,
      text=True,
      cwd=ROOT,
      check=False,
  )
  assert done.returncode != 0
  assert str(tmp_path / "wikitext2" / "wiki.test.raw") in done.stderr
  assert "Traceback" not in done.stderr
  assert not list(pathlib.Path(workdir).glob("zero_shot_*"))


@pytest.mark.slow
def test_a_run_without_a_tokenizer_is_refused_before_scoring():
  import trained_digits  # pylint: disable=g-import-not-at-top

  run = run_lib.restore(trained_digits.trained_run()[0])
  with pytest.raises(ValueError, match="--benchmark scores text.*digits"):
    zero_shot.evaluate_suite(run, ["ptb"], os.devnull)


@pytest.mark.slow
def test_sampler_quality_scores_every_point_as_an_independent_judge_does(
    token_run, tmp_path
):
  import test_judge  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  workdir, bpe_dir = token_run
  bpe = hf_tokenizers.ByteLevelBPETokenizer(
      str(bpe_dir / "vocab.json"), str(bpe_dir / "merges.txt")
  )
  eot = bpe.token_to_id("<|endoftext|>")
  config, weights = test_judge.random_gpt2(
      np.random.default_rng(3), bpe.get_vocab_size(), context=128
  )
  judge_dir = test_judge.write_judge(
      tmp_path / "judge", config, weights, bpe_dir
  )
  out = tmp_path / "quality" / "q"
  proc = subprocess.run(
      [
          sys.executable,
          "benchmarks/sampler_quality.py",
          f"--workdir={workdir}",
          f"--judge={judge_dir}",
          "--samplers=ancestral,topp,first_hitting",
          "--steps=2,5",
          "--num_samples=3",
          "--batch_size=2",
          "--reference_split=valid",
          f"--output={out}",
      ],
      cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
      capture_output=True,
      text=True,
      timeout=900,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.with_name("q.json").read_text())
  assert [(p["sampler"], p["steps"]) for p in result["points"]] == [
      ("ancestral", 2),
      ("ancestral", 5),
      ("topp", 2),
      ("topp", 5),
      ("first_hitting", None),  # no time grid: one point
  ]
  assert result["points"][2]["settings"]["topp"] == 0.9
  assert result["machine"] and result["date"] and "load_end" in result
  for point in result["points"] + [result["reference"]]:
    texts = point["texts"]
    assert len(texts) == 3
    nll, tokens, entropies = 0.0, 0, []
    for text in texts:
      ids = bpe.encode(text.split("<|endoftext|>", 1)[0]).ids
      if not ids:
        continue
      assert len(ids) < 128  # one window: the context is longer
      nll += test_judge.numpy_nll(config, weights, eot, ids)
      tokens += len(ids)
      _, counts = np.unique(ids, return_counts=True)
      shares = counts / counts.sum()
      entropies.append(-(shares * np.log(shares)).sum())
    assert point["tokens"] == tokens
    assert point["generative_perplexity"]["mean"] == pytest.approx(
        math.exp(nll / tokens), rel=1e-4
    )
    assert point["entropy"]["mean"] == pytest.approx(np.mean(entropies))
  for point in result["points"]:
    calls = point["network_calls_per_sample"]
    # T steps and the fill call; first-hitting at most one per position.
    assert 0 < calls <= (point["steps"] + 1 if point["steps"] else 32)
    assert point["samples_per_second"] > 0
  # The reference is the split's own text, not samples.
  assert result["reference"]["split"] == "valid"
  image = Image.open(out.with_name("q.png"))
  assert image.format == "PNG" and image.size[0] > 400
