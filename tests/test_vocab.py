"""Tests for data/vocab.py: vocabulary training, the bundled vocabulary, special ids, size check."""

import gzip
import hashlib
import json
import os

import pytest
import sentencepiece as spm

from data import bundled, vocab

EXPECTED_SPECIAL = {"pad": 0, "eos": 1, "unk": 2, "cls": 3, "sep": 4, "mask": 5}


@pytest.fixture(scope="module")
def tiny_vocabs(tmp_path_factory):
    """The same tiny vocabulary (156 pieces + 100 extras = 256) trained twice on real text."""
    out = tmp_path_factory.mktemp("vocab")
    with gzip.open(bundled.VALIDATION_FILES[0], "rb") as f:
        corpus = b"".join(f.readlines()[:30])  # ~30 real documents keep training ~1 s
    (out / "corpus.txt").write_bytes(corpus)
    infos = [
        vocab.train_vocab(str(out / "corpus.txt"), str(out / name), vocab_size_with_extras=256)
        for name in ("a", "b")
    ]
    return out, infos


def test_training_is_bit_identical(tiny_vocabs):
    out, (info_a, info_b) = tiny_vocabs
    model_a, model_b = (out / "a.model").read_bytes(), (out / "b.model").read_bytes()
    assert model_a == model_b
    assert info_a == info_b == json.loads((out / "a.json").read_text())
    assert info_a["model_sha256"] == hashlib.sha256(model_a).hexdigest()


def test_tiny_vocab_layout_follows_t5_and_electra(tiny_vocabs):
    out, (info, _) = tiny_vocabs
    path = str(out / "a.model")
    sp = spm.SentencePieceProcessor(model_file=path)
    assert sp.get_piece_size() == info["pieces"] == 156
    assert [sp.id_to_piece(i) for i in range(6)] == [
        "<pad>", "</s>", "<unk>", "[CLS]", "[SEP]", "[MASK]"
    ]
    assert sp.bos_id() == -1
    assert vocab.special_ids(path) == info["special_ids"] == EXPECTED_SPECIAL
    # The corpus hash is the hash of the documents fed, one per line: for a clean file of
    # stripped lines that is exactly its bytes.
    corpus = (out / "corpus.txt").read_bytes()
    assert info["corpus_sha256"] == hashlib.sha256(corpus).hexdigest()
    assert info["corpus_documents"] == corpus.count(b"\n") == 30
    assert info["sentencepiece_version"] == spm.__version__

    v = vocab.get_vocabulary(path, extra_ids=100)
    assert v.vocab_size == info["vocab_size"] == 256
    # T5 sentinels count down from the last id; "[MASK]" is one piece even inside text.
    assert v.encode("<extra_id_0>") == [255]
    assert v.encode("<extra_id_99>") == [156]
    ids = v.encode("a [MASK] b")
    assert 5 in ids and ids == sp.encode("a [MASK] b")


def test_bundled_vocabulary_matches_its_record():
    with open(bundled.VOCAB_INFO_PATH) as f:
        info = json.load(f)
    with open(bundled.VOCAB_PATH, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == info["model_sha256"]
    digest = hashlib.sha256()
    for path in bundled.TRAIN_FILES:
        with gzip.open(path, "rb") as f:
            digest.update(f.read())
    assert info["corpus_sha256"] == digest.hexdigest()  # trained on exactly the train split
    assert info["corpus_files"] == [os.path.basename(p) for p in bundled.TRAIN_FILES]
    assert (info["pieces"], info["extra_ids"], info["vocab_size"]) == (8092, 100, 8192)
    assert vocab.special_ids() == info["special_ids"] == EXPECTED_SPECIAL

    v = vocab.get_vocabulary()
    assert v.vocab_size == 8192 and v.vocab_size % 128 == 0
    assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
    assert v.encode("<extra_id_0>") == [8191]
    text = "In the beginning God created the heaven and the earth."
    assert v.decode(v.encode(text)) == text
    # Real-text compression: a common English sentence needs well under one id per character.
    assert len(v.encode(text)) < len(text) / 3


def test_special_ids_rejects_a_non_t5_model(tmp_path):
    prefix = str(tmp_path / "plain")
    text = ["the quick brown fox jumps over the lazy dog"] * 50
    spm.SentencePieceTrainer.train(  # sentencepiece defaults: unk=0, bos=1, eos=2
        sentence_iterator=iter(text), model_prefix=prefix, vocab_size=30, minloglevel=2
    )
    with pytest.raises(ValueError, match=r"plain.model: special ids .*expected"):
        vocab.special_ids(prefix + ".model")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        vocab.special_ids(str(tmp_path / "missing.model"))


def test_check_vocab_fits():
    v = vocab.get_vocabulary()
    with pytest.raises(vocab.VocabSizeError) as err:
        vocab.check_vocab_fits(8000, v)
    message = str(err.value)
    assert "vocab_size=8000" in message and "8192" in message
    assert "8092 pieces + 100 extra ids" in message and "spm_8192.model" in message
    assert vocab.check_vocab_fits(8320, v) == 128  # spare rows are fine
    assert vocab.check_vocab_fits(512, 512) == 0
    with pytest.raises(vocab.VocabSizeError, match="vocab_size=256 .* 512"):
        vocab.check_vocab_fits(256, 512)


def test_train_vocab_rejects_sizes_off_the_128_grid(tmp_path):
    with pytest.raises(ValueError, match="vocab_size_with_extras=8000 must be a multiple of 128"):
        vocab.train_vocab(bundled.VALIDATION_FILES, str(tmp_path / "v"),
                          vocab_size_with_extras=8000)
    with pytest.raises(ValueError, match="leaves 4 pieces"):
        vocab.train_vocab(bundled.VALIDATION_FILES, str(tmp_path / "v"),
                          vocab_size_with_extras=128, extra_ids=124)
    # Too few pieces for the corpus' characters: sentencepiece's error, with our context.
    with pytest.raises(ValueError, match=r"sentencepiece training on .*validation.* failed"):
        vocab.train_vocab(bundled.VALIDATION_FILES, str(tmp_path / "v"),
                          vocab_size_with_extras=128, extra_ids=100)
    assert not os.path.exists(str(tmp_path / "v.model"))
