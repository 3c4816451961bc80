"""Exported Hugging Face directories carry a tokenizer that transformers loads, and its ids are
pretrax's ids (data/hf_tokenizer.py)."""

import itertools

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from configs import electra as electra_configs
from configs import t5 as t5_configs
from data import bundled, hf_tokenizer, sources
from data import vocab as vocab_lib

SP = spm.SentencePieceProcessor(model_file=bundled.VOCAB_PATH)
# Real held-out text (reST with ``literals``, quotes, accents) plus hand-made edge cases.
TEXTS = [doc[:300] for doc in itertools.islice(
    sources.read_documents(bundled.VALIDATION_FILES), 40)] + [
    "café naïve — “quotes” and  double  spaces", "  leading space", "Q is rare: ``x``"]


@pytest.mark.parametrize("fast", [False, True])
def test_t5_tokenizer_gives_pretrax_ids(tmp_path, fast):
    hf_tokenizer.write_t5_tokenizer(bundled.VOCAB_PATH, str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path), use_fast=fast)
    assert len(tok) == vocab_lib.vocabulary_size() == 8192
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 8191  # seqio's sentinel layout
    assert tok.convert_tokens_to_ids("<extra_id_99>") == 8092
    for text in TEXTS:
        assert tok(text)["input_ids"] == SP.encode(text) + [1], text  # + EOS


@pytest.mark.parametrize("fast", [False, True])
def test_electra_tokenizer_frames_pairs_with_token_types(tmp_path, fast):
    hf_tokenizer.write_electra_tokenizer(bundled.VOCAB_PATH, str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path), use_fast=fast)
    ids = vocab_lib.special_ids()
    for a, b in zip(TEXTS, TEXTS[1:], strict=False):
        enc = tok(a, b)
        pa, pb = SP.encode(a), SP.encode(b)
        assert enc["input_ids"] == [ids["cls"], *pa, ids["sep"], *pb, ids["sep"]], (a, b)
        assert enc["token_type_ids"] == [0] * (len(pa) + 2) + [1] * (len(pb) + 1)
    assert tok.mask_token_id == ids["mask"] and tok.pad_token_id == ids["pad"]


def test_a_run_takes_its_vocabulary_from_the_directory_it_starts_from(tmp_path):
    config = t5_configs.get_config("tiny")
    assert vocab_lib.path_of(config) == bundled.VOCAB_PATH
    hf_tokenizer.write_t5_tokenizer(bundled.VOCAB_PATH, str(tmp_path / "t5"))
    config.train.init_from = str(tmp_path / "t5")
    assert vocab_lib.path_of(config) == str(tmp_path / "t5" / "spiece.model")
    config.data.vocab_path = bundled.VOCAB_PATH  # a configured vocabulary wins
    assert vocab_lib.path_of(config) == bundled.VOCAB_PATH
    electra = electra_configs.get_config("tiny")
    hf_tokenizer.write_electra_tokenizer(bundled.VOCAB_PATH, str(tmp_path / "el"))
    electra.train.init_from = str(tmp_path / "el")
    assert vocab_lib.path_of(electra) == str(tmp_path / "el" / "spm.model")
