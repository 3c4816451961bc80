"""Paths of the bundled real-text corpus and its sentencepiece vocabulary.

Every path is resolved relative to this file, so it works from a source checkout and from an
installed package alike (setup.cfg ships ``corpus/*`` as package data of ``data``). Rebuild
with ``python -m data.build_corpus`` and ``python -m data.vocab`` (see corpus/README.md).

Corpus format: gzip-compressed UTF-8 text, ONE DOCUMENT PER LINE (no empty lines), read with
``sources.read_documents(TRAIN_FILES)`` (fmt "auto" -> "lines" for ``.txt.gz``).
"""

import os

CORPUS_DIR: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# Train is split into a few shards so file-level sharding (sources.shard_files) has something
# to split across hosts; validation is one file (~2% of the documents).
NUM_TRAIN_SHARDS: int = 4
TRAIN_FILES: list[str] = [
    os.path.join(CORPUS_DIR, f"train-{i:05d}-of-{NUM_TRAIN_SHARDS:05d}.txt.gz")
    for i in range(NUM_TRAIN_SHARDS)
]
TRAIN_PATTERN: str = os.path.join(CORPUS_DIR, f"train-*-of-{NUM_TRAIN_SHARDS:05d}.txt.gz")
VALIDATION_FILES: list[str] = [os.path.join(CORPUS_DIR, "validation-00000-of-00001.txt.gz")]

# Default vocabulary: 8092 sentencepiece pieces + 100 extra ids = 8192, trained on TRAIN_FILES.
VOCAB_PATH: str = os.path.join(CORPUS_DIR, "spm_8192.model")
VOCAB_INFO_PATH: str = os.path.join(CORPUS_DIR, "spm_8192.json")
EXTRA_IDS: int = 100
# Package versions, documents per source and file, and the sha256 of each file's text.
MANIFEST_PATH: str = os.path.join(CORPUS_DIR, "MANIFEST.json")

