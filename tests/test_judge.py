"""The judges of generative perplexity: GPT-2 in JAX against an independent
float64 NumPy forward, the scoring rules, entropy, and bad judge input."""

import json
import math
import pathlib

import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy
import tokenizers as hf_tokenizers

from md4 import gpt2
from md4 import judge as judge_lib
from md4.data import tokenizers

SHARED_GPT2 = pathlib.Path(__file__).resolve().parents[2] / "shared/data/gpt2"
WORDS = "the cat sat on a mat and then it ran off to see the dog".split()


def random_gpt2(rng, vocab, width=16, heads=2, layers=2, context=24):
  """Random weights under Hugging Face GPT-2 names (Conv1D: [in, out])."""
  n = lambda *shape: (0.5 * rng.standard_normal(shape)).astype(np.float32)
  weights = {"wte.weight": n(vocab, width), "wpe.weight": n(context, width)}
  for i in range(layers):
    p = f"h.{i}."
    weights.update({
        p + "ln_1.weight": 1 + n(width),
        p + "ln_1.bias": n(width),
        p + "attn.c_attn.weight": n(width, 3 * width),
        p + "attn.c_attn.bias": n(3 * width),
        p + "attn.c_proj.weight": n(width, width),
        p + "attn.c_proj.bias": n(width),
        p + "ln_2.weight": 1 + n(width),
        p + "ln_2.bias": n(width),
        p + "mlp.c_fc.weight": n(width, 4 * width),
        p + "mlp.c_fc.bias": n(4 * width),
        p + "mlp.c_proj.weight": n(4 * width, width),
        p + "mlp.c_proj.bias": n(width),
        # The causal-mask buffer older checkpoints carry: not a weight.
        p + "attn.bias": np.tril(np.ones((1, 1, context, context), np.float32)),
    })
  weights["ln_f.weight"] = 1 + n(width)
  weights["ln_f.bias"] = n(width)
  config = dict(
      model_type="gpt2",
      n_embd=width,
      n_head=heads,
      n_layer=layers,
      n_positions=context,
      vocab_size=vocab,
      layer_norm_epsilon=1e-5,
      activation_function="gelu_new",
  )
  return config, weights


def write_judge(directory, config, weights, tokenizer_dir, prefix=""):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config))
  safetensors_numpy.save_file(
      {prefix + k: v for k, v in weights.items()},
      str(directory / "model.safetensors"),
  )
  for name in ("vocab.json", "merges.txt"):
    (directory / name).write_bytes((tokenizer_dir / name).read_bytes())
  return directory


def numpy_forward(config, weights, tokens):
  """GPT-2 logits [T, V] of one sequence, float64, position by position."""
  w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
  d, heads = config["n_embd"], config["n_head"]
  hd = d // heads

  def norm(x, g, b):
    mu = x.mean()
    return (x - mu) / math.sqrt(((x - mu) ** 2).mean() + 1e-5) * g + b

  def gelu(x):
    return (
        0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    )

  hidden = [
      w["wte.weight"][t] + w["wpe.weight"][i] for i, t in enumerate(tokens)
  ]
  for layer in range(config["n_layer"]):
    p = f"h.{layer}."
    qkv = [
        norm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        @ w[p + "attn.c_attn.weight"]
        + w[p + "attn.c_attn.bias"]
        for h in hidden
    ]
    out = []
    for i in range(len(hidden)):
      heads_out = []
      for head in range(heads):
        q = qkv[i][head * hd : (head + 1) * hd]
        keys = [
            qkv[j][d + head * hd : d + (head + 1) * hd] for j in range(i + 1)
        ]
        values = [
            qkv[j][2 * d + head * hd : 2 * d + (head + 1) * hd]
            for j in range(i + 1)
        ]
        s = np.array([q @ k / math.sqrt(hd) for k in keys])
        a = np.exp(s - s.max())
        a /= a.sum()
        heads_out.append(sum(aj * v for aj, v in zip(a, values)))
      attended = np.concatenate(heads_out)
      x = (
          hidden[i]
          + attended @ w[p + "attn.c_proj.weight"]
          + w[p + "attn.c_proj.bias"]
      )
      m = norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
      m = gelu(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
      out.append(x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"])
    hidden = out
  return np.stack([
      norm(h, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte.weight"].T
      for h in hidden
  ])


def numpy_nll(config, weights, start, ids):
  """-sum log p(ids | start, earlier ids) under the NumPy forward."""
  tokens = [start] + list(ids)
  logits = numpy_forward(config, weights, tokens)
  log_p = (
      logits
      - np.log(
          np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
      )
      - logits.max(-1, keepdims=True)
  )
  return -sum(log_p[i, tokens[i + 1]] for i in range(len(ids)))


@pytest.fixture(scope="module")
def small_bpe(tmp_path_factory):
  directory = tmp_path_factory.mktemp("judge_bpe")
  rng = np.random.default_rng(0)
  corpus = [" ".join(rng.choice(WORDS, 12)) for _ in range(200)]
  bpe = hf_tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
      corpus,
      vocab_size=280,
      min_frequency=2,
      special_tokens=["<|endoftext|>"],
      show_progress=False,
  )
  bpe.save_model(str(directory))
  return directory


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory, small_bpe):
  vocab = tokenizers.GPT2Tokenizer(small_bpe).vocab_size
  config, weights = random_gpt2(np.random.default_rng(1), vocab)
  directory = tmp_path_factory.mktemp("judge") / "tiny-gpt2"
  write_judge(directory, config, weights, small_bpe, prefix="transformer.")
  return directory, config, weights


def test_jax_gpt2_logits_equal_an_independent_float64_forward(tiny_judge):
  directory, config, weights = tiny_judge
  cfg, loaded = gpt2.load(directory)
  assert (cfg.num_layers, cfg.width, cfg.context) == (2, 16, 24)
  tokens = np.random.default_rng(2).integers(0, config["vocab_size"], (2, 11))
  got = np.asarray(gpt2.logits(loaded, tokens, cfg))
  for row in range(2):
    expected = numpy_forward(config, weights, tokens[row])
    np.testing.assert_allclose(got[row], expected, rtol=2e-4, atol=2e-4)


def test_judge_scores_the_text_before_the_first_end_of_text(tiny_judge):
  directory, config, weights = tiny_judge
  judge = judge_lib.GPT2Judge(directory, batch_size=2)
  bpe = tokenizers.GPT2Tokenizer(directory)
  eot = bpe.special_ids["eot"]
  texts = [
      "the cat sat on a mat<|endoftext|>and then it ran",
      "the dog ran off",
      "<|endoftext|>nothing before the cut",
      # Longer than the 24-token context: scored in windows of 23.
      " ".join(WORDS * 3),
  ]
  result = judge_lib.judge_texts(judge, texts, progress=False)
  assert result["samples"] == 3 and result["empty_samples"] == 1
  kept = ["the cat sat on a mat", "the dog ran off", " ".join(WORDS * 3)]
  expected_nll, expected_tokens = [], []
  for text in kept:
    ids = bpe.encode(text).tolist()
    windows = [ids[i : i + 23] for i in range(0, len(ids), 23)]
    expected_nll.append(
        sum(numpy_nll(config, weights, eot, w) for w in windows)
    )
    expected_tokens.append(len(ids))
  per_sample = result["per_sample"]
  assert [s["index"] for s in per_sample] == [0, 1, 3]
  assert [s["tokens"] for s in per_sample] == expected_tokens
  assert expected_tokens[2] > 23  # the window case is exercised
  np.testing.assert_allclose(
      [s["nll"] for s in per_sample], expected_nll, rtol=1e-4
  )
  total = sum(expected_nll) / sum(expected_tokens)
  assert result["generative_perplexity"]["mean"] == pytest.approx(
      math.exp(total), rel=1e-4
  )


def test_unigram_entropy_is_the_entropy_of_the_token_shares():
  # Shares 1/2, 1/4, 1/4: entropy 1.5 bits.
  assert judge_lib.unigram_entropy(np.array([7, 7, 3, 9])) == pytest.approx(
      1.5 * math.log(2)
  )
  assert judge_lib.unigram_entropy(np.array([5, 5, 5])) == 0.0


@pytest.mark.skipif(
    not SHARED_GPT2.is_dir(),
    reason=f"GPT-2 tokenizer files not in {SHARED_GPT2}",
)
def test_a_gpt2_sized_judge_reads_the_real_tokenizer_and_round_trips(tmp_path):
  text = "Masked diffusion models, in 2024, reached GPT-2's perplexity? Café."
  real = tokenizers.GPT2Tokenizer(SHARED_GPT2)
  ids = real.encode(text)
  assert real.decode(ids) == text
  config, weights = random_gpt2(np.random.default_rng(3), 50257, width=8)
  directory = write_judge(tmp_path / "gpt2", config, weights, SHARED_GPT2)
  judge = judge_lib.GPT2Judge(directory)
  assert judge.start == 50256
  np.testing.assert_array_equal(judge.tokenize(text), ids)
  # The same weights declared with another vocabulary size: refused.
  config["vocab_size"] = 50000
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(gpt2.JudgeError, match="another vocabulary|wte.weight"):
    judge_lib.GPT2Judge(directory)


def test_a_judge_directory_without_weights_or_with_wrong_ones_is_named(
    tmp_path, tiny_judge, small_bpe
):
  _, config, weights = tiny_judge
  directory = write_judge(tmp_path / "j", config, weights, small_bpe)
  (directory / "model.safetensors").unlink()
  (directory / "pytorch_model.bin").write_bytes(b"x")
  with pytest.raises(
      gpt2.JudgeError,
      match=r"model.safetensors does not exist.*pytorch_model.bin.*safetensors",
  ):
    judge_lib.load_judge(str(directory))
  partial = {k: v for k, v in weights.items() if not k.startswith("h.1.")}
  safetensors_numpy.save_file(partial, str(directory / "model.safetensors"))
  with pytest.raises(
      gpt2.JudgeError, match=r"lacks 12 GPT-2 weights.*'h.1.ln_1.weight'"
  ):
    judge_lib.load_judge(str(directory))
  (directory / "config.json").unlink()
  with pytest.raises(gpt2.JudgeError, match="config.json does not exist"):
    judge_lib.load_judge(str(directory))
  with pytest.raises(gpt2.JudgeError, match="is not a directory"):
    judge_lib.load_judge(str(tmp_path / "absent"))


def test_samples_that_are_not_sample_records_are_named(tmp_path):
  path = tmp_path / "samples.jsonl"
  path.write_text('{"text": "fine"}\n{"tokens": [1]}\n')
  with pytest.raises(
      gpt2.JudgeError, match=r"samples.jsonl:2 is not a sample record"
  ):
    judge_lib.read_samples(path)
  with pytest.raises(gpt2.JudgeError, match="no samples.jsonl there"):
    judge_lib.sample_files(str(tmp_path / "empty"))
