"""SentencePiece vocabularies with T5's conventions plus ELECTRA's special symbols.

Id layout (T5): pad=0, eos=1, unk=2, no bos; then ELECTRA's user-defined symbols "[CLS]",
"[SEP]", "[MASK]" at fixed ids 3, 4, 5; then the learned pieces; then seqio's `extra_ids`
sentinels on top, `<extra_id_0>` being the LAST id. The piece count is chosen so that
pieces + extra_ids is a multiple of 128 (8092 + 100 = 8192 by default). T5 objectives need only
pad/eos/unk (``special_ids(path, T5_SYMBOLS)``), so T5's own vocabularies work too. Models are
read from local paths or, through tf.io.gfile, from any path with a scheme (``gs://...``).

The bundled vocabulary (bundled.VOCAB_PATH) was trained on the bundled train split with

    python -m data.vocab --input='data/corpus/train-*.txt.gz' \\
        --output_prefix=data/corpus/spm_8192 --vocab_size=8192 --extra_ids=100

which reproduces it bit for bit with the same corpus and sentencepiece version (training is
single-threaded and seeded; the .json records both hashes and the version).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sentencepiece as spm

from data import bundled, sources

if TYPE_CHECKING:  # seqio imports TensorFlow: only runs that read seqio tasks pay for it
    import seqio

DEFAULT_SEED = 0
# ELECTRA's user-defined pieces: what its objectives and classifiers need on top of T5_IDS.
SPECIAL_SYMBOLS = {"cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
# T5's objectives need none: sentinels (and BERT/MASS-style masks) are seqio's extra ids.
T5_SYMBOLS: Mapping[str, str] = {}
T5_IDS = {"pad": 0, "eos": 1, "unk": 2}
# sentencepiece skips training lines longer than this (bytes); documents are fed in pieces.
_MAX_SENTENCE_BYTES = 4192
_PIECE_CHARS = 1000
# sentencepiece's unigram trainer indexes the sampled text with int32 (about 20 bytes of memory
# per character while it trains): at most this many characters.
_MAX_TRAINING_CHARS = 2**31 - 1
# The sample the paper-scale hints suggest: 300k pieces, <= 0.3G characters, ~6 GB to train.
PAPER_SAMPLE_PIECES = 300_000


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(f"sentencepiece model {path!r} does not exist")


class VocabSizeError(ValueError):
    """A model's embedding table is smaller than its vocabulary."""


def _training_pieces(documents: Iterator[str], digest: hashlib._Hash) -> Iterator[str]:
    """Documents -> whitespace-aligned pieces of <= _PIECE_CHARS chars; hashes the documents."""
    for doc in documents:
        digest.update(doc.encode("utf-8") + b"\n")
        words, piece, size = doc.split(), [], 0
        for word in words:
            if size + len(word) + 1 > _PIECE_CHARS and piece:
                yield " ".join(piece)
                piece, size = [], 0
            piece.append(word[:_PIECE_CHARS])
            size += len(word) + 1
        if piece:
            yield " ".join(piece)


def train_vocab(
    input_files: str | Sequence[str],
    output_prefix: str,
    *,
    vocab_size_with_extras: int = 8192,
    extra_ids: int = 100,
    model_type: str = "unigram",
    seed: int = DEFAULT_SEED,
    character_coverage: float = 0.9995,
    max_piece_length: int = 16,
    sample_pieces: int = 0,
) -> dict:
    """Trains `<output_prefix>.model` and writes `<output_prefix>.json`; returns the JSON dict.

    Args:
      input_files: anything `sources.read_documents` accepts (path, glob, directory, list).
      vocab_size_with_extras: pieces + extra_ids; must be a multiple of 128.
      extra_ids: seqio sentinels added on top of the sentencepiece model at load time.
      model_type: "unigram" (T5) or "bpe".
      seed: sentencepiece's random generator seed.
      character_coverage: fraction of characters covered by pieces; the rest map to unk.
      max_piece_length: the longest piece, in characters (sentencepiece's default).
      sample_pieces: 0 trains on every piece of text (the documents cut at whitespace into
        pieces of at most 1,000 characters, all held in memory: fine for the bundled corpus);
        N > 0 trains on a uniform sample of N pieces (sentencepiece's reservoir, seeded by
        ``seed``), which a Wikipedia-sized corpus needs. Memory: the unigram trainer takes
        about 20 bytes per character of the sample, so N pieces cost up to ~20 N KB (e.g.
        ``PAPER_SAMPLE_PIECES`` = 300,000: ~6 GB); N is capped at 2,147,483 (its int32 index).
    """
    if vocab_size_with_extras % 128:
        raise ValueError(
            f"vocab_size_with_extras={vocab_size_with_extras} must be a multiple of 128 "
            "(sharding and TPU-friendly embedding tables)"
        )
    if sample_pieces * _PIECE_CHARS > _MAX_TRAINING_CHARS:
        raise ValueError(
            f"sample_pieces={sample_pieces}: up to {sample_pieces * _PIECE_CHARS:,} characters, "
            f"past the {_MAX_TRAINING_CHARS:,} sentencepiece's trainer can index (and ~20 bytes "
            f"of memory each); use at most {_MAX_TRAINING_CHARS // _PIECE_CHARS:,}, e.g. "
            f"{PAPER_SAMPLE_PIECES:,}")
    pieces = vocab_size_with_extras - extra_ids
    reserved = len(T5_IDS) + len(SPECIAL_SYMBOLS)
    if pieces <= reserved:
        raise ValueError(
            f"vocab_size_with_extras={vocab_size_with_extras} leaves {pieces} pieces after "
            f"{extra_ids} extra ids; expected more than the {reserved} special pieces"
        )
    digest = hashlib.sha256()
    stats = sources.ReadStats()
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_pieces(
                sources.read_documents(input_files, stats=stats), digest
            ),
            model_writer=model,
            vocab_size=pieces,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=T5_IDS["pad"],
            eos_id=T5_IDS["eos"],
            unk_id=T5_IDS["unk"],
            bos_id=-1,
            user_defined_symbols=list(SPECIAL_SYMBOLS.values()),
            max_sentence_length=_MAX_SENTENCE_BYTES,
            max_sentencepiece_length=max_piece_length,
            # 0: every piece (no sampling randomness); N: a seeded reservoir sample of N.
            input_sentence_size=sample_pieces,
            shuffle_input_sentence=sample_pieces > 0,
            num_threads=1,  # bit-identical output
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. fewer pieces than the corpus has distinct characters
        raise ValueError(f"sentencepiece training on {input_files} failed: {e}") from e
    model_bytes = model.getvalue()
    with open(output_prefix + ".model", "wb") as f:
        f.write(model_bytes)
    info = {
        "pieces": pieces,
        "extra_ids": extra_ids,
        "vocab_size": vocab_size_with_extras,
        "special_ids": special_ids(output_prefix + ".model"),
        "model_type": model_type,
        "seed": seed,
        "character_coverage": character_coverage,
        "sample_pieces": sample_pieces,
        "corpus_documents": stats.total().documents,
        "corpus_sha256": digest.hexdigest(),
        "corpus_files": [os.path.basename(p) for p in stats.files],
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "sentencepiece_version": spm.__version__,
    }
    with open(output_prefix + ".json", "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    return info


def get_vocabulary(
    path: str = bundled.VOCAB_PATH, extra_ids: int = bundled.EXTRA_IDS
) -> seqio.SentencePieceVocabulary:
    """The T5-side vocabulary: `<extra_id_0>` is id vocab_size - 1."""
    import seqio  # reads the model through tf.io.gfile itself

    if not model_exists(path):
        raise _missing(path)
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def _has_scheme(path: str) -> bool:
    """``gs://...``, ``ram://...``, ``file://...``: a path for tf.io.gfile, not the OS."""
    return "://" in path


def model_exists(path: str) -> bool:
    """Whether ``path`` is a file: local paths by the OS (no TensorFlow import), paths with a
    scheme (``gs://`` ...) by tf.io.gfile (imported only then: it is slow to import)."""
    if not _has_scheme(path):
        return os.path.isfile(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def read_model(path: str) -> bytes:
    """The bytes of the sentencepiece model ``path``: a local file, or any filesystem
    tf.io.gfile reads (``gs://`` for the T5 paper's vocabulary, ``ram://`` in tests).

    FileNotFoundError names a missing path; other filesystem errors (no credentials, no
    network) raise OSError naming the path and the filesystem's message.
    """
    if not _has_scheme(path):
        if not os.path.isfile(path):
            raise _missing(path)
        with open(path, "rb") as f:
            return f.read()
    import tensorflow as tf

    try:
        if not model_exists(path):
            raise _missing(path)
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError as e:
        raise _missing(path) from e
    except tf.errors.OpError as e:
        raise OSError(f"cannot read sentencepiece model {path!r}: {e.message}") from e


def load_sentencepiece(path: str) -> spm.SentencePieceProcessor:
    """The model seqio's SentencePieceVocabulary wraps (same ids), from any path
    :func:`read_model` reads; TensorFlow is imported only for paths with a scheme."""
    return spm.SentencePieceProcessor(model_proto=read_model(path))


def path_of(config: Any) -> str:
    """A run's sentencepiece model: ``config.data.vocab_path``; else the one in the directory it
    starts from (``config.train.init_from``: an HF model directory with its tokenizer,
    ``spiece.model`` for T5 or ``spm.model`` for ELECTRA, or a ``launch.convert from_hf``
    output); else the bundled vocabulary."""
    if config.data.vocab_path:
        return config.data.vocab_path
    for name in ("spiece.model", "spm.model"):
        path = os.path.join(config.train.init_from, name) if config.train.init_from else ""
        if path and model_exists(path):
            return path
    return bundled.VOCAB_PATH


def vocabulary_size(path: str = bundled.VOCAB_PATH, extra_ids: int = bundled.EXTRA_IDS) -> int:
    """Ids the vocabulary uses: sentencepiece pieces + T5's extra ids (what seqio reports)."""
    return load_sentencepiece(path).get_piece_size() + extra_ids


def special_ids(path: str = bundled.VOCAB_PATH,
                symbols: Mapping[str, str] = SPECIAL_SYMBOLS) -> dict[str, int]:
    """T5's ids {"pad": 0, "eos": 1, "unk": 2} plus the id of each of ``symbols`` (name ->
    piece), which must be pieces of the model.

    The default ``symbols`` are ELECTRA's: {"pad": 0, "eos": 1, "unk": 2, "cls": 3, "sep": 4,
    "mask": 5} for a vocabulary ``python -m data.vocab`` trained. T5 objectives pass
    ``T5_SYMBOLS`` (none), so T5's own vocabularies (pad/eos/unk + pieces; sentinels are the
    extra ids) are accepted. Read from the model itself (not the .json), and checked against
    the T5 layout.
    """
    sp = load_sentencepiece(path)
    ids = {"pad": sp.pad_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    if ids != T5_IDS or sp.bos_id() != -1:
        raise ValueError(
            f"{path}: special ids {ids} (bos={sp.bos_id()}); expected {T5_IDS} and no bos"
        )
    for name, symbol in symbols.items():
        piece_id = sp.piece_to_id(symbol)  # unknown pieces map to unk, whose piece differs
        if sp.id_to_piece(piece_id) != symbol:
            raise ValueError(
                f"{path}: has no {symbol!r} piece; expected the user-defined symbols "
                f"{list(symbols.values())} (python -m data.vocab trains such a vocabulary)")
        ids[name] = piece_id
    return ids


def check_vocab_fits(vocab_size_of_model: int, vocabulary: seqio.Vocabulary | int) -> int:
    """Raises VocabSizeError unless the model's table holds every id; returns the spare rows."""
    needed = vocabulary if isinstance(vocabulary, int) else vocabulary.vocab_size
    if vocab_size_of_model < needed:
        name = getattr(vocabulary, "sentencepiece_model_file", None) or "the vocabulary"
        extra = getattr(vocabulary, "extra_ids", None)
        detail = f" ({needed - extra} pieces + {extra} extra ids)" if extra is not None else ""
        raise VocabSizeError(
            f"model vocab_size={vocab_size_of_model} is smaller than {name}'s size "
            f"{needed}{detail}; ids >= {vocab_size_of_model} would index past the embedding "
            f"table. Set the model's vocab_size to at least {needed} (a multiple of 128)."
        )
    return vocab_size_of_model - needed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a T5/ELECTRA sentencepiece vocabulary.")
    parser.add_argument(
        "--input", action="append", default=None,
        help="file, glob or directory (repeatable); default: the bundled train split",
    )
    parser.add_argument("--output_prefix", required=True)
    parser.add_argument("--vocab_size", type=int, default=8192, help="pieces + extra ids")
    parser.add_argument("--extra_ids", type=int, default=100)
    parser.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--sample_pieces", type=int, default=0,
                        help="train on a seeded sample of this many pieces of text (pieces of "
                             "<= 1,000 characters; training takes ~20 bytes per character, so "
                             "up to ~20 N KB; 0: all; a Wikipedia-sized corpus needs a sample, "
                             f"e.g. {PAPER_SAMPLE_PIECES})")
    parser.add_argument("--character_coverage", type=float, default=0.9995,
                        help="share of the corpus's characters given pieces (1.0: every one; "
                             "the rest map to unk)")
    args = parser.parse_args(argv)
    info = train_vocab(
        args.input or bundled.TRAIN_FILES,
        args.output_prefix,
        vocab_size_with_extras=args.vocab_size,
        extra_ids=args.extra_ids,
        model_type=args.model_type,
        seed=args.seed,
        character_coverage=args.character_coverage,
        sample_pieces=args.sample_pieces,
    )
    print(json.dumps(info, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
