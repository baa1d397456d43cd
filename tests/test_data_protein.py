"""Tests of the protein loader on generated FASTA and the E. coli proteome."""

import gzip

import numpy as np
import pytest

from data_setup import SHARED_DATA, SHARED_PROTEIN, assert_restore_continues
from data_setup import build, make_config
from md4.data import protein

needs_proteome = pytest.mark.skipif(
    not SHARED_PROTEIN.is_dir(),
    reason=f"the E. coli proteome FASTA not found in {SHARED_PROTEIN}",
)
PROTEINS = {
    "sp|P1|SHORT": "MKTAYIAK",
    "sp|P2|LONG": "ACDEFGHIKLMNPQRSTVWY" * 3 + "XBZUO",  # 65 residues
    "sp|P3|STOP": "mkvlaa*",  # lower case and a stop: MKVLAA
}


def write_fasta(path, proteins, width=10):
  lines = []
  for header, sequence in proteins.items():
    lines.append(f">{header} some description")
    lines += [sequence[i : i + width] for i in range(0, len(sequence), width)]
  text = "\n".join(lines) + "\n"
  if path.name.endswith(".gz"):
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


def protein_config(data_dir, **overrides):
  fields = dict(data_dir=str(data_dir), data_shape=(32,), vocab_size=26)
  fields.update(overrides)
  return make_config("protein", **fields)


def test_fasta_records_become_amino_acid_tokens_of_plain_and_gzipped_files(
    tmp_path,
):
  (tmp_path / "protein").mkdir()
  items = list(PROTEINS.items())
  write_fasta(tmp_path / "protein/a.fasta", dict(items[:2]))
  write_fasta(tmp_path / "protein/b.fa.gz", dict(items[2:]))
  files = protein.fasta_files(protein_config(tmp_path))
  tokens, offsets = protein.read_proteins(files)
  assert np.diff(offsets).tolist() == [8, 65, 6]
  tokenizer = protein.Tokenizer()
  assert tokenizer.decode(tokens[offsets[2] :]) == "MKVLAA"
  assert tokens[offsets[1] : offsets[2]][-5:].tolist() == [20, 21, 22, 23, 24]


def test_protein_training_examples_are_random_crops_or_padded_proteins(
    tmp_path,
):
  (tmp_path / "protein").mkdir()
  write_fasta(tmp_path / "protein/p.fasta", PROTEINS)
  config = protein_config(tmp_path, eval_fraction=0.3)
  loaded = protein.load(config)
  assert len(loaded.train) == 2 and len(loaded.eval["valid"]) == 1
  crop = protein.RandomCropOrPad(32)
  long = protein.Tokenizer().encode(PROTEINS["sp|P2|LONG"])
  starts = set()
  for seed in range(20):
    x = crop.random_map(long, np.random.default_rng(seed))["x"]
    assert x.shape == (32,) and x.dtype == np.int32
    start = [i for i in range(len(long) - 31) if (long[i : i + 32] == x).all()]
    starts.add(start[0])
  assert len(starts) > 5
  short = crop.random_map(long[:8], np.random.default_rng(0))["x"]
  assert short[:8].tolist() == long[:8].tolist()
  assert (short[8:] == protein.PAD).all()


def test_protein_eval_examples_are_the_first_residues_then_padding(tmp_path):
  (tmp_path / "protein").mkdir()
  write_fasta(tmp_path / "protein/p.fasta", PROTEINS)
  datasets = build(
      protein_config(tmp_path, eval_fraction=0.3), batch=2, eval_batch=2
  )
  (batch,) = list(datasets.eval["valid"]())
  text = datasets.info.decode(batch["x"][0])
  assert text in {s.upper().rstrip("*")[:32] for s in PROTEINS.values()}


def test_protein_character_outside_the_alphabet_names_file_and_protein(
    tmp_path,
):
  (tmp_path / "protein").mkdir()
  write_fasta(tmp_path / "protein/p.fasta", {"gappy": "MKV-LA"})
  with pytest.raises(ValueError, match=r"p.fasta, protein 'gappy.*'-'"):
    build(protein_config(tmp_path))


def test_missing_protein_fasta_says_where_to_put_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "protein")):
    build(protein_config(tmp_path))


@needs_proteome
def test_ecoli_proteome_loads_with_a_seeded_split_of_its_4363_proteins():
  config = protein_config(SHARED_DATA, data_shape=(128,))
  loaded = protein.load(config)
  assert len(loaded.train) + len(loaded.eval["valid"]) == 4363
  assert len(loaded.eval["valid"]) == round(4363 * 0.05)
  again = protein.load(config)
  valid = [loaded.eval["valid"][i]["x"] for i in range(5)]
  for i, x in enumerate(valid):
    np.testing.assert_array_equal(again.eval["valid"][i]["x"], x)
  batch = next(iter(build(config, batch=16).train))
  assert batch["x"].shape == (16, 128)
  assert 0 <= batch["x"].min() and batch["x"].max() <= protein.PAD
  assert (batch["x"][:, 0] != protein.PAD).all()


@needs_proteome
def test_ecoli_proteome_restored_iterator_redraws_the_same_crops():
  config = protein_config(SHARED_DATA, data_shape=(64,))
  assert_restore_continues(lambda: build(config, batch=8).train, skip=2)


def test_protein_info_encode_inverts_decode(tmp_path):
  (tmp_path / "protein").mkdir()
  write_fasta(tmp_path / "protein/p.fasta", PROTEINS)
  info = build(
      protein_config(tmp_path, eval_fraction=0.3), batch=2, eval_batch=2
  ).info
  residues = PROTEINS["sp|P2|LONG"]
  ids = info.encode(residues)
  assert ids.dtype == np.int32 and len(ids) == len(residues)
  assert info.decode(ids) == residues
  assert info.decode(np.append(ids, [protein.PAD] * 4)) == residues
  with pytest.raises(ValueError, match="outside the vocabulary"):
    info.encode("MKV-LA")
