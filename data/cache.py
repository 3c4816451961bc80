"""The token cache: every document tokenized ONCE into flat tokens on disk, then memory mapped.

Keyed by (sha256 of the files' bytes, sha256 of the sentencepiece model, mode, reader options).
Cost: one sentencepiece pass (C++, all cores) plus hashing the files; disk = 2 bytes per token
(uint16 when the vocabulary fits) + 8 bytes per document/sentence offset. Later runs memory map
it (no re-reading, no re-tokenizing). One process builds a cache (a lock file beside it: the
many jobs of a sweep that start on one corpus wait and then map it), streaming tokens to disk,
so memory stays at one batch of documents whatever the corpus's size. ``python -m
data.benchmark`` prints the measured times and sizes. data/examples.py cuts examples out of it.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from data import electra_examples, sources
from data.vocab import load_sentencepiece, read_model

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pretrax", "tokens")
_MODES = ("documents", "sentences")


@dataclasses.dataclass(frozen=True)
class CorpusTokens:
    """Flat tokens; unit i (a document, or a sentence in "sentences" mode) is
    tokens[offsets[i]:offsets[i + 1]]; in "sentences" mode document d is units
    doc_offsets[d] .. doc_offsets[d + 1] - 1."""

    tokens: np.ndarray
    offsets: np.ndarray
    doc_offsets: np.ndarray | None
    key: str
    path: str
    meta: dict

    def __reduce__(self):
        # Worker processes re-map the cache instead of receiving a copy of every token.
        return load_cache, (self.path,)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(files: Sequence[str], vocab_path: str, mode: str, fmt: str, field: str) -> str:
    # The model's bytes: a local file or a gs:// path alike (the same hash as the file's).
    vocab_sha256 = hashlib.sha256(read_model(vocab_path)).hexdigest()
    parts = [f"v{CACHE_VERSION}", mode, fmt, field, vocab_sha256]
    parts += [_sha256_file(f) for f in files]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def tokenize_corpus(files: str | Sequence[str], vocab_path: str, *, mode: str = "documents",
                    fmt: str = "auto", field: str = "text", cache_dir: str | None = None,
                    batch_documents: int = 512) -> CorpusTokens:
    """Loads the token cache of ``files`` (globs/dirs allowed), building it on first use."""
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r} must be one of {_MODES}")
    paths = sources.expand_files(files)
    key = cache_key(paths, vocab_path, mode, fmt, field)
    path = os.path.join(cache_dir or os.environ.get("PRETRAX_CACHE_DIR", DEFAULT_CACHE_DIR), key)
    if not os.path.exists(os.path.join(path, "meta.json")):
        _build_cache(paths, vocab_path, mode, fmt, field, path, batch_documents)
    return load_cache(path)


def load_cache(path: str) -> CorpusTokens:
    """Memory-maps a built token cache folder."""
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    sentences = meta["mode"] == "sentences"
    doc_offsets = np.load(os.path.join(path, "doc_offsets.npy")) if sentences else None
    return CorpusTokens(np.load(os.path.join(path, "tokens.npy"), mmap_mode="r"),
                        np.load(os.path.join(path, "offsets.npy")), doc_offsets,
                        os.path.basename(path), path, meta)


def _build_cache(paths: list[str], vocab_path: str, mode: str, fmt: str, field: str,
                 path: str, batch_documents: int) -> None:
    """Builds the cache at ``path`` unless another process has (or is building it: one builder
    per cache, the others wait on a lock and then map its result)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    build = functools.partial(_build_cache_locked, paths, vocab_path, mode, fmt, field, path,
                              batch_documents)
    with open(path + ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on close, or a crash
        except BlockingIOError:
            log.warning("waiting for another process to build the token cache %s (lock %s.lock)",
                        path, path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # e.g. Lustre without -o flock: build unlocked (jobs starting together each build
            # it; the first to finish is kept)
            log.warning("cannot lock %s.lock (%s): building the token cache without a lock",
                        path, error)
            build(locked=False)
            return
        if not os.path.exists(os.path.join(path, "meta.json")):
            build(locked=True)


def _build_cache_locked(paths: list[str], vocab_path: str, mode: str, fmt: str, field: str,
                        path: str, batch_documents: int, locked: bool) -> None:
    """Builds into a temporary folder beside ``path`` and renames it: readers never see half
    a cache, and a failed build leaves nothing behind. ``locked``: this process holds the
    cache's lock; a temporary folder of the same cache left by a builder that died (on this
    host, or a day ago) is removed (a live one elsewhere stays: flock can be node-local)."""
    start = time.perf_counter()
    tokenizer = load_sentencepiece(vocab_path)
    dtype = np.dtype(np.uint16 if tokenizer.get_piece_size() <= np.iinfo(np.uint16).max
                     else np.int32)
    parent, prefix = os.path.dirname(path), f".tmp-{os.path.basename(path)}-"
    if locked:
        for name in os.listdir(parent):
            if name.startswith(prefix) and _abandoned(os.path.join(parent, name)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix)
    try:
        with open(os.path.join(tmp, _BUILDER), "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
        meta = _write_cache(tmp, tokenizer, dtype, paths, vocab_path, mode, fmt, field,
                            batch_documents)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.remove(os.path.join(tmp, _BUILDER))
    meta["build_seconds"] = round(time.perf_counter() - start, 3)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first (without the lock): keep its cache
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(path, "meta.json")):
            raise


_BUILDER = "builder.json"  # in a build's temporary folder: the host and pid building it
_ABANDONED_SECONDS = 24 * 3600


def _abandoned(folder: str) -> bool:
    """Whether a temporary build folder's builder is gone: a dead pid on this host, or no
    change for a day (a builder on another host cannot be asked)."""
    try:
        with open(os.path.join(folder, _BUILDER)) as f:
            builder = json.load(f)
        if builder["host"] == socket.gethostname():
            os.kill(int(builder["pid"]), 0)  # raises if no such process
            return False
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError):
        pass  # no readable record (yet): judge by age
    age = time.time() - os.path.getmtime(folder)
    if age > _ABANDONED_SECONDS:
        return True
    log.warning("leaving %s: another builder may still be writing it", folder)
    return False


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
        "shape": (length,)})
    return header.getvalue()


def _write_cache(tmp: str, tokenizer: Any, dtype: np.dtype, paths: list[str], vocab_path: str,
                 mode: str, fmt: str, field: str, batch_documents: int) -> dict[str, Any]:
    """Writes tokens.npy, offsets.npy (and doc_offsets.npy) into ``tmp``; returns the meta.

    Tokens stream into tokens.npy as they are made (memory stays at one batch of documents
    whatever the corpus): a 1-D array's .npy header has the same size for any length, so it
    is written once the length is known."""
    header_size = len(_npy_header(dtype, 0))
    lengths: list[np.ndarray] = []  # one int64 array per batch
    doc_units: list[int] = []
    batch: list[str] = []
    with open(os.path.join(tmp, "tokens.npy"), "wb") as out:
        out.write(b"\0" * header_size)

        def flush() -> None:
            if not batch:
                return
            ids = tokenizer.encode(batch, num_threads=os.cpu_count() or 1)
            lengths.append(np.fromiter((len(x) for x in ids), np.int64, len(ids)))
            out.write(np.concatenate([np.asarray(x, dtype) for x in ids]).tobytes())
            batch.clear()

        stats = sources.ReadStats()
        for document in sources.read_documents(paths, fmt=fmt, field=field, stats=stats):
            units = (electra_examples.split_sentences(document) if mode == "sentences"
                     else [document])
            doc_units.append(len(units))
            batch.extend(units)
            if len(batch) >= batch_documents:
                flush()
        flush()
        unit_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        total = int(unit_lengths.sum())
        header = _npy_header(dtype, total)
        if len(header) != header_size:  # numpy pads 1-D headers to one size; never seen
            raise RuntimeError(f"token cache: .npy header of {total} tokens is {len(header)} "
                               f"bytes, {header_size} were reserved")
        out.seek(0)
        out.write(header)
    offsets = np.zeros(len(unit_lengths) + 1, np.int64)
    np.cumsum(unit_lengths, out=offsets[1:])
    np.save(os.path.join(tmp, "offsets.npy"), offsets)
    if mode == "sentences":
        doc_offsets = np.zeros(len(doc_units) + 1, np.int64)
        np.cumsum(doc_units, out=doc_offsets[1:])
        np.save(os.path.join(tmp, "doc_offsets.npy"), doc_offsets)
    return {"files": paths, "vocab_path": vocab_path, "mode": mode, "tokens": total,
            "units": len(unit_lengths), "documents": len(doc_units), "dtype": dtype.name,
            "build_seconds": None,
            "bytes": sum(os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp)
                         if n != _BUILDER)}
