"""Tests for data/vocab.py: vocabulary training, the bundled vocabulary, special ids, size check."""

import gzip
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
import sentencepiece as spm

from configs import electra as electra_configs
from configs import finetune as finetune_configs
from configs import t5 as t5_configs
from data import bundled, cache, hf_tokenizer, vocab
from objectives import registry
from tests.helpers import REPO

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


def test_train_vocab_on_a_seeded_sample_of_the_text(tmp_path):
    """--sample_pieces: a corpus too big to hold trains on a reservoir sample, the same
    one for the same seed (the validation split has 393 pieces of text; 300 are sampled)."""
    models = {}
    for name, sample in (("a", 300), ("b", 300), ("all", 0)):
        info = vocab.train_vocab(bundled.VALIDATION_FILES, str(tmp_path / name),
                                 vocab_size_with_extras=512, sample_pieces=sample)
        assert info["sample_pieces"] == sample
        models[name] = (tmp_path / f"{name}.model").read_bytes()
    assert models["a"] == models["b"]
    assert models["a"] != models["all"]


# ---------------------------------------------------------------------------------------------
# T5's own vocabulary layout (no ELECTRA pieces) and models read through tf.io.gfile.
# ---------------------------------------------------------------------------------------------
# seqio's test model has T5's layout (pad 0, eos 1, unk 2, no bos; 26 pieces) and, like T5's
# cc_all.32000 vocabulary, no [CLS] / [SEP] / [MASK] pieces.
T5_LAYOUT_MODEL = os.path.join(importlib.util.find_spec("seqio").submodule_search_locations[0],
                               "test_data", "sentencepiece", "sentencepiece.model")
T5_PRETRAINING = [n for n, e in registry.OBJECTIVES.items() if e.family == "t5" and not e.finetune]


@pytest.fixture
def ram_dir():
    """A fresh folder of TensorFlow's in-memory filesystem (a stand-in for gs://), removed after."""
    import tensorflow as tf

    path = f"ram://pretrax-vocab-test-{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(path)
    yield path
    tf.io.gfile.rmtree(path)


def _copy_to(src: str, dst: str) -> str:
    import tensorflow as tf

    with open(src, "rb") as f, tf.io.gfile.GFile(dst, "wb") as out:
        out.write(f.read())
    return dst


def test_the_t5_layout_model_has_no_electra_pieces():
    sp = spm.SentencePieceProcessor(model_file=T5_LAYOUT_MODEL)
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert all(sp.piece_to_id(s) == sp.unk_id() for s in vocab.SPECIAL_SYMBOLS.values())
    assert vocab.special_ids(T5_LAYOUT_MODEL, symbols=vocab.T5_SYMBOLS) == vocab.T5_IDS
    with pytest.raises(ValueError, match=r"sentencepiece.model: has no '\[CLS\]' piece"):
        vocab.special_ids(T5_LAYOUT_MODEL)  # ELECTRA's symbols by default


@pytest.mark.parametrize("name", T5_PRETRAINING)
def test_t5_objectives_accept_a_t5_vocabulary_and_electra_refuses_it(name):
    config = t5_configs.get_config("tiny")  # model vocab_size 8192 >= 26 pieces + 100 extra ids
    config.objective.name = name
    config.data.vocab_path = T5_LAYOUT_MODEL
    objective = registry.build(config)
    assert objective.special_ids == vocab.T5_IDS
    batch = objective.synthetic_batch(np.random.default_rng(0))
    tokens, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    assert tokens.shape == (config.data.batch_size, config.data.inputs_length)
    assert (tokens[:, :-1] >= len(vocab.T5_IDS)).all() and (tokens[:, -1] == 1).all()
    assert (tokens < config.model.vocab_size).all() and (targets[:, -1] == 1).all()

    electra = electra_configs.get_config("tiny")
    electra.data.vocab_path = T5_LAYOUT_MODEL
    with pytest.raises(ValueError, match=r"sentencepiece.model: has no '\[CLS\]' piece"):
        registry.build(electra)


def test_t5_fine_tuning_accepts_a_t5_vocabulary_and_electra_classify_refuses_it(ram_dir):
    path = _copy_to(T5_LAYOUT_MODEL, f"{ram_dir}/t5.model")
    config = finetune_configs.get_config("t5_tiny")
    config.data.vocab_path = path
    objective = registry.build(config)
    assert objective.special_ids == vocab.T5_IDS
    examples = objective.task_examples("validation", path, 0)
    sp = spm.SentencePieceProcessor(model_file=T5_LAYOUT_MODEL)
    record, row = examples.records[0], examples.rows[0]
    want = sp.encode(objective.task.t5_input(record))[:config.data.inputs_length - 1] + [1]
    assert row["inputs"].tolist() == want
    assert objective.decode_predictions(row["targets"][None]) == [
        sp.decode(row["targets"][:-1].tolist())]

    classify = finetune_configs.get_config("electra_tiny")
    classify.data.vocab_path = path
    with pytest.raises(ValueError, match=r"t5.model: has no '\[CLS\]' piece"):
        registry.build(classify)


def test_models_are_read_through_gfile(ram_dir, tmp_path):
    path = _copy_to(bundled.VOCAB_PATH, f"{ram_dir}/spm.model")
    assert vocab.vocabulary_size(path) == vocab.vocabulary_size() == 8192
    assert vocab.special_ids(path) == EXPECTED_SPECIAL
    v = vocab.get_vocabulary(path)
    text = "In the beginning God created the heaven and the earth."
    assert v.vocab_size == 8192 and v.encode(text) == vocab.get_vocabulary().encode(text)
    # launch.convert to_hf copies a gfile vocabulary into the HF directory ...
    hf_tokenizer.write_t5_tokenizer(path, str(tmp_path / "hf"))
    with open(bundled.VOCAB_PATH, "rb") as f:
        assert (tmp_path / "hf" / "spiece.model").read_bytes() == f.read()
    # ... and a run starting from a gfile directory with a tokenizer reads that.
    _copy_to(bundled.VOCAB_PATH, f"{ram_dir}/spiece.model")
    config = t5_configs.get_config("tiny")
    config.train.init_from = ram_dir
    assert vocab.path_of(config) == f"{ram_dir}/spiece.model"

    for missing in (f"{ram_dir}/missing.model", f"file://{tmp_path}/missing.model", ram_dir):
        for read in (vocab.get_vocabulary, vocab.vocabulary_size, vocab.special_ids,
                     vocab.load_sentencepiece):
            with pytest.raises(FileNotFoundError,
                               match=re.escape(f"sentencepiece model '{missing}' does not "
                                               "exist")):
                read(missing)
    # Other filesystem failures (on gs://: no credentials or network) name the path too.
    with pytest.raises(OSError, match=r"cannot read sentencepiece model 'nosuchfs://b/m': "
                                      r".*nosuchfs") as err:
        vocab.special_ids("nosuchfs://b/m")
    assert not isinstance(err.value, FileNotFoundError)


def test_the_trainer_input_path_reads_a_gfile_vocabulary(ram_dir, tmp_path, monkeypatch):
    """The whole input path of a T5 run on text files: the token cache keys and tokenizes with
    the model read through gfile (the hash is the same as the local file's)."""
    from launch import inputs

    monkeypatch.setenv("PRETRAX_CACHE_DIR", str(tmp_path / "cache"))
    path = _copy_to(T5_LAYOUT_MODEL, f"{ram_dir}/t5.model")
    config = t5_configs.get_config("tiny")
    config.data.vocab_path = path
    objective = registry.build(config)
    examples = inputs.make_examples(config, objective, "validation")
    assert examples.num_items > 0 and examples.kind == "encdec"
    assert cache.cache_key(bundled.VALIDATION_FILES, path, "documents", "auto", "text") == \
        cache.cache_key(bundled.VALIDATION_FILES, T5_LAYOUT_MODEL, "documents", "auto", "text")
    example = examples.example(0)
    assert example["inputs"].max() < 26 + 100 and example["inputs"][-1] == 1


def test_local_vocabularies_do_not_import_tensorflow():
    code = ("import sys; from data import bundled, cache, vocab; "
            "vocab.special_ids(); vocab.vocabulary_size(); vocab.load_sentencepiece("
            "bundled.VOCAB_PATH); vocab.model_exists(bundled.VOCAB_PATH); "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": REPO})


def test_a_sample_past_sentencepieces_index_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"sample_pieces=3000000: up to 3,000,000,000 "
                                         r"characters, past the 2,147,483,647"):
        vocab.train_vocab(bundled.VALIDATION_FILES, str(tmp_path / "v"), sample_pieces=3_000_000)
    assert not list(tmp_path.iterdir())
