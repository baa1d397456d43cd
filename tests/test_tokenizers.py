"""Tests of md4.data.tokenizers: characters, GPT-2 BPE, sentencepiece.

GPT-2 tests read the real tokenizer files in ../shared/data/gpt2 and skip
when that folder is absent; the rest build their tokenizers here.
"""

import json
import pathlib

import numpy as np
import pytest
import tokenizers as hf_tokenizers

from md4.data import protein
from md4.data import text8
from md4.data import tokenizers

SHARED_GPT2 = pathlib.Path(__file__).resolve().parents[2] / "shared/data/gpt2"
TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\nand new lines\n\n",
    "Ünïcödé — naïve café, 日本語のテキスト, emoji 🙂🚀",
    "numbers 1234567 and 3.14159, code: x = f(y) + 2*z;",
    "it's they're we've I'm you'll he'd",
    "a literal <|endoftext|> inside a document",
    "",
]

needs_gpt2 = pytest.mark.skipif(
    not SHARED_GPT2.is_dir(),
    reason=f"GPT-2 tokenizer files not found in {SHARED_GPT2}",
)


def build_bpe(directory, texts, vocab_size=300):
  """A small GPT-2-format byte-level BPE (vocab.json + merges.txt)."""
  bpe = hf_tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
      texts,
      vocab_size=vocab_size,
      min_frequency=2,
      special_tokens=[tokenizers.GPT2_END_OF_TEXT],
      show_progress=False,
  )
  directory.mkdir(parents=True, exist_ok=True)
  bpe.save_model(str(directory))
  return directory


# --- characters --------------------------------------------------------------


def test_text8_tokenizer_is_a_char_tokenizer_over_the_text8_alphabet():
  tokenizer = text8.Tokenizer()
  assert isinstance(tokenizer, tokenizers.CharTokenizer)
  assert tokenizer.vocab_size == 27 and tokenizer.special_ids == {}
  assert tokenizer.encode_bytes(b"ab z").dtype == np.uint8


def test_char_tokenizer_round_trips_unicode_and_shows_unknown_ids():
  tokenizer = tokenizers.CharTokenizer("aé日 \n", special=("pad",))
  ids = tokenizer.encode("日a é\n")
  assert ids.dtype == np.int32 and ids.tolist() == [2, 0, 3, 1, 4]
  assert tokenizer.decode(ids) == "日a é\n"
  assert tokenizer.vocab_size == 6 and tokenizer.special_ids == {"pad": 5}
  assert tokenizer.decode([0, 5, 6, 1]) == "a__é"  # pad and mask: unknown


def test_char_tokenizer_error_names_the_characters_outside_the_alphabet():
  tokenizer = tokenizers.CharTokenizer("abc", name="letters")
  with pytest.raises(ValueError, match=r"letters data contains 2 .*'z'"):
    tokenizer.encode("abzcz")


def test_char_tokenizer_rejects_an_alphabet_with_repeated_characters():
  with pytest.raises(ValueError, match="each character once"):
    tokenizers.CharTokenizer("abca")


def test_protein_tokenizer_maps_amino_acids_and_drops_trailing_pads():
  tokenizer = protein.Tokenizer()
  assert tokenizer.vocab_size == protein.VOCAB_SIZE == 26
  ids = tokenizer.encode("ACDY" + "XBZUO")
  assert ids.tolist() == [0, 1, 2, 19, 20, 21, 22, 23, 24]
  padded = np.concatenate([ids, [protein.PAD] * 3])
  assert tokenizer.decode(padded) == "ACDYXBZUO"
  assert tokenizer.decode([0, protein.PAD, 1, 26, protein.PAD]) == "A-C_"


# --- GPT-2 BPE ---------------------------------------------------------------


@needs_gpt2
def test_gpt2_tokenizer_gives_the_reference_gpt2_ids():
  tokenizer = tokenizers.GPT2Tokenizer(SHARED_GPT2)
  assert tokenizer.vocab_size == 50257
  assert tokenizer.special_ids == {"eot": 50256}
  # Ids published with GPT-2 (the same under tiktoken's "gpt2" encoding).
  assert tokenizer.encode("Hello world").tolist() == [15496, 995]
  assert tokenizer.encode(" the").tolist() == [262]


@needs_gpt2
def test_gpt2_ids_equal_those_of_the_tokenizers_library_from_the_same_files():
  ours = tokenizers.GPT2Tokenizer(SHARED_GPT2)
  reference = hf_tokenizers.ByteLevelBPETokenizer(
      str(SHARED_GPT2 / "vocab.json"), str(SHARED_GPT2 / "merges.txt")
  )
  for text in TEXTS:
    assert ours.encode(text).tolist() == reference.encode(text).ids, text
  assert ours.encode_batch(TEXTS) == [reference.encode(t).ids for t in TEXTS]


@needs_gpt2
def test_gpt2_encodes_a_literal_end_of_text_string_as_ordinary_text():
  ids = tokenizers.GPT2Tokenizer(SHARED_GPT2).encode("a <|endoftext|> b")
  assert 50256 not in ids.tolist()


@needs_gpt2
def test_gpt2_decode_round_trips_and_shows_the_mask_id_as_unknown():
  tokenizer = tokenizers.GPT2Tokenizer(SHARED_GPT2)
  for text in TEXTS:
    assert tokenizer.decode(tokenizer.encode(text)) == text
  ids = tokenizer.encode("Hello world").tolist()
  assert tokenizer.decode([ids[0], 50257, ids[1]]) == "Hello_ world"


def test_gpt2_tokenizer_loads_a_bpe_built_in_the_test(tmp_path):
  directory = build_bpe(tmp_path / "bpe", TEXTS * 20)
  tokenizer = tokenizers.load("gpt2", directory)
  with open(directory / "vocab.json") as f:
    vocab = json.load(f)
  assert tokenizer.vocab_size == len(vocab)
  assert tokenizer.special_ids == {"eot": vocab["<|endoftext|>"]}
  for text in TEXTS:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_gpt2_tokenizer_without_files_says_which_files_it_needs(tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab.json and merges.txt"):
    tokenizers.GPT2Tokenizer(tmp_path)


# --- sentencepiece -----------------------------------------------------------


def test_sentencepiece_trained_on_a_corpus_round_trips_and_loads_by_path(
    tmp_path,
):
  rng = np.random.default_rng(0)
  corpus = [
      "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 60)) for _ in range(300)
  ]
  model = tokenizers.train_sentencepiece(
      corpus, tmp_path / "spm" / "protein", vocab_size=60
  )
  assert model == tmp_path / "spm" / "protein.model" and model.is_file()
  by_file = tokenizers.load("sentencepiece", model)
  by_dir = tokenizers.load("sentencepiece", tmp_path / "spm")
  assert by_file.vocab_size == by_dir.vocab_size == 60
  assert by_file.special_ids == {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
  ids = by_file.encode(corpus[0])
  assert ids.dtype == np.int32 and len(ids) < 60  # pieces merge residues
  assert by_dir.encode(corpus[0]).tolist() == ids.tolist()
  assert by_file.decode(ids) == corpus[0]


def test_unknown_tokenizer_kind_lists_the_valid_kinds():
  with pytest.raises(ValueError, match="chars, gpt2, sentencepiece"):
    tokenizers.load("wordpiece", "/nonexistent")
