"""Hugging Face model directories carry their tokenizer: the sentencepiece model and its config.

``launch.convert to_hf`` writes, next to the weights, the run's sentencepiece model (byte for
byte) and a ``tokenizer_config.json`` + ``special_tokens_map.json`` that
``transformers.AutoTokenizer.from_pretrained(DIR)`` understands, so an exported directory works
as any hub model does:

- T5: ``T5Tokenizer`` with 100 extra ids (``<extra_id_0>`` is the last id, as seqio lays them
  out), pad ``<pad>`` 0, eos ``</s>`` 1, unk ``<unk>`` 2;
- ELECTRA: ``DebertaV2Tokenizer`` (file ``spm.model``), transformers' sentencepiece tokenizer
  that frames pairs as ``[CLS] A [SEP] B [SEP]`` with token types 0/1 and leaves the text as
  sentencepiece gets it (ELECTRA's own tokenizer is WordPiece, which a sentencepiece vocabulary
  cannot be; ALBERT's rewrites quotes and accents, BigBird's gives no token types). Its ids
  equal pretrax's for any text, except that a literal "[MASK]" in the text is read as the
  mask token, as users of a masked LM expect.

The other way, ``data.vocab.path_of(config)`` takes a run's vocabulary from the
sentencepiece model of the directory it starts from (``config.train.init_from``: an HF directory
or a ``launch.convert from_hf`` output) when ``config.data.vocab_path`` is not set.
"""

from __future__ import annotations

import json
import os
from typing import Any

from data import bundled
from data import vocab as vocab_lib

SPIECE = "spiece.model"  # T5Tokenizer's file name
SPM = "spm.model"  # DebertaV2Tokenizer's
T5_SPECIAL = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
ELECTRA_SPECIAL = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "<unk>",
                   "sep_token": "[SEP]", "pad_token": "<pad>", "cls_token": "[CLS]",
                   "mask_token": "[MASK]"}


def _write(out: str, vocab: str, file: str, config: dict[str, Any],
           special: dict[str, str]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, file), "wb") as f:  # the model's bytes, from gs:// too
        f.write(vocab_lib.read_model(vocab))
    for name, content in (("tokenizer_config.json", {**config, **special}),
                          ("special_tokens_map.json", special)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(content, f, indent=2, sort_keys=True)
            f.write("\n")


def write_t5_tokenizer(vocab: str, out: str, *, max_length: int = 512,
                       extra_ids: int = bundled.EXTRA_IDS) -> None:
    """``out/spiece.model`` + a T5Tokenizer config (extra ids on top, as seqio)."""
    _write(out, vocab, SPIECE, {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids,
                        "model_max_length": max_length, "legacy": True}, T5_SPECIAL)


def write_electra_tokenizer(vocab: str, out: str, *, max_length: int = 512) -> None:
    """``out/spm.model`` + a DebertaV2Tokenizer config: [CLS] A [SEP] B [SEP], token types."""
    _write(out, vocab, SPM, {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False,
                             "split_by_punct": False, "model_max_length": max_length},
           ELECTRA_SPECIAL)
