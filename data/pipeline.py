"""The fast input pipeline: index-addressable examples -> packed batches -> global jax.Arrays.

Layers (each a pure function of (seed, position), so the stream is deterministic and resumable):

1. ``tokenize_corpus``: every document tokenized ONCE into a flat token cache on disk, keyed by
   (sha256 of the files' bytes, sha256 of the sentencepiece model, mode, reader options). Cost:
   one sentencepiece pass (C++, all cores) plus hashing the files; disk = 2 bytes per token
   (uint16 when the vocabulary fits) + 8 bytes per document/sentence offset. Later runs memory
   map it (no re-reading, no re-tokenizing). ELECTRA's ExampleBuilder table is saved next to
   the tokens after its first build (2 bytes per token slot). ``python -m data.benchmark``
   prints the measured times and sizes.
2. Example sources with ``example(index)``: epoch e = index // N visits the N items (T5: raw
   chunks of the objective's raw length cut from the concatenated documents, no separators;
   ELECTRA: rows of the ExampleBuilder table) in a permutation seeded by (seed, e); T5's
   objective draws from ``example_rng(seed, index)``. tasks.py wraps these same functions in
   seqio Tasks, and a test checks the two agree bitwise.
3. ``InputPipeline``: the global batch's rows are split into ``num_streams`` contiguous blocks
   (default: one per batch shard of the sharding). Stream k takes epoch positions k, k+K, ...,
   packs them in seqio's groups (features.py) and fills block k. A process builds only the
   blocks its devices hold, so the global batch does not depend on the process count.
   State = per stream (next group start, rows of that group already used); restoring re-packs
   at most one group per stream (<= group_size objective calls), whatever the position.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import sentencepiece as spm

from data import electra_examples, features, sources
from objectives.denoising import T5_OBJECTIVES
from objectives.span_corruption import example_rng

CACHE_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pretrax", "tokens")
_MODES = ("documents", "sentences")


# ---------------------------------------------------------------------------------------------
# Token cache.
# ---------------------------------------------------------------------------------------------


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
    parts = [f"v{CACHE_VERSION}", mode, fmt, field, _sha256_file(vocab_path)]
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
    start = time.perf_counter()
    tokenizer = _sentencepiece(vocab_path)
    dtype = np.uint16 if tokenizer.get_piece_size() <= np.iinfo(np.uint16).max else np.int32
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    doc_units: list[int] = []
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer.encode(batch, num_threads=os.cpu_count() or 1):
            chunks.append(np.asarray(ids, dtype))
            lengths.append(len(ids))
        batch.clear()

    stats = sources.ReadStats()
    for document in sources.read_documents(paths, fmt=fmt, field=field, stats=stats):
        units = electra_examples.split_sentences(document) if mode == "sentences" else [document]
        doc_units.append(len(units))
        batch.extend(units)
        if len(batch) >= batch_documents:
            flush()
    flush()
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Write to a temporary folder and rename: concurrent builders never see half a cache.
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    np.save(os.path.join(tmp, "tokens.npy"), tokens)
    np.save(os.path.join(tmp, "offsets.npy"), offsets)
    if mode == "sentences":
        doc_offsets = np.zeros(len(doc_units) + 1, np.int64)
        np.cumsum(doc_units, out=doc_offsets[1:])
        np.save(os.path.join(tmp, "doc_offsets.npy"), doc_offsets)
    meta = {"files": paths, "vocab_path": vocab_path, "mode": mode, "tokens": int(tokens.size),
            "units": len(lengths), "documents": len(doc_units), "dtype": np.dtype(dtype).name,
            "build_seconds": round(time.perf_counter() - start, 3),
            "bytes": sum(os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp))}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first: keep its cache
        if not os.path.exists(os.path.join(path, "meta.json")):
            raise


# ---------------------------------------------------------------------------------------------
# Index-addressable examples.
# ---------------------------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n items in ``epoch``: a function of (seed, epoch) only."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), int(epoch), 0x70657270]))).permutation(n)


class IndexedExamples:
    """Base: example(index) = make(item perm(seed, epoch)[pos], index), epoch, pos = divmod."""

    kind: str  # "encdec" (T5 feature names) or "encoder" (ELECTRA)
    task_lengths: dict[str, int]

    def __init__(self, num_items: int, seed: int):
        if num_items < 1:
            raise ValueError("the corpus is too small: it yields no complete example")
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.calls = 0  # examples made so far (tests use it to bound the work of a restore)
        self._permutations: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        # Worker processes get the recipe, not the caches.
        return {**self.__dict__, "_permutations": {}, "calls": 0}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 2:  # streams straddle at most two epochs at a time
                self._permutations.pop(min(self._permutations))
            self._permutations[epoch] = epoch_permutation(self.seed, epoch, self.num_items)
        return self._permutations[epoch]

    def example(self, index: int) -> dict[str, np.ndarray]:
        epoch, position = divmod(int(index), self.num_items)
        self.calls += 1
        return self._make(int(self._permutation(epoch)[position]), int(index))

    def _make(self, item: int, index: int) -> dict[str, np.ndarray]:
        raise NotImplementedError  # every subclass defines it


def resolve_objective(name: str, inputs_length: int, params: Mapping[str, Any],
                      ) -> tuple[Callable[..., dict], int, int]:
    """(fn(tokens, rng, vocab_size) -> dict(inputs, targets), raw length, targets length)."""
    if name not in T5_OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(T5_OBJECTIVES)}")
    spec = T5_OBJECTIVES[name]
    merged = spec.params(**params)
    raw_length, targets_length = spec.lengths(inputs_length, **merged)
    return functools.partial(_call_objective, spec.fn, merged), raw_length, targets_length


def _call_objective(fn: Callable[..., dict], params: Mapping[str, Any], tokens: np.ndarray,
                    rng: np.random.Generator, vocab_size: int) -> dict:
    return fn(tokens, rng, vocab_size, **params)


class T5Examples(IndexedExamples):
    """T5 chunking + a T5 objective.

    Objectives that concatenate documents (span corruption and most others): item i =
    tokens[i * raw : (i + 1) * raw] of the whole corpus laid end to end (T5 concatenated 128
    documents at a time; the few chunks that would straddle its groups are the only
    difference), the incomplete tail dropped. The others (prefix_lm, deshuffle): every document
    cut into raw-length pieces, the last piece of a document kept if it has >= 2 tokens.
    """

    kind = "encdec"

    def __init__(self, corpus: CorpusTokens, objective: str, inputs_length: int,
                 vocab_size: int, seed: int, **params: Any):
        self.fn, raw_length, targets_length = resolve_objective(objective, inputs_length, params)
        self.corpus, self.raw_length, self.vocab_size = corpus, raw_length, vocab_size
        self.objective, self.params = objective, params
        self.task_lengths = {"inputs": int(inputs_length), "targets": int(targets_length)}
        if T5_OBJECTIVES[objective].concatenate_documents:
            self.starts = self.ends = None
            num_items = corpus.tokens.size // raw_length
        else:
            doc_lengths = np.diff(corpus.offsets)
            pieces = -(-doc_lengths // raw_length)  # ceil
            # [pieces]: the document of each piece and its index inside the document
            doc = np.repeat(np.arange(doc_lengths.size), pieces)
            within = np.arange(doc.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
            self.starts = corpus.offsets[doc] + within * raw_length
            self.ends = np.minimum(self.starts + raw_length, corpus.offsets[doc + 1])
            keep = self.ends - self.starts >= 2
            self.starts, self.ends = self.starts[keep], self.ends[keep]
            num_items = self.starts.size
        super().__init__(num_items, seed)

    def chunk(self, item: int) -> np.ndarray:
        if self.starts is None:
            start, end = item * self.raw_length, (item + 1) * self.raw_length
        else:
            start, end = self.starts[item], self.ends[item]
        return np.asarray(self.corpus.tokens[start:end], np.int32)

    def _make(self, item: int, index: int) -> dict[str, np.ndarray]:
        out = self.fn(self.chunk(item), example_rng(self.seed, index), self.vocab_size)
        result = {}
        for key, length in self.task_lengths.items():
            value = np.asarray(out[key], np.int32)
            if value.size > length:
                # seqio's append_eos_after_trim: keep length - 1 tokens, then EOS again.
                value = np.append(value[:length - 1], value[-1])
            result[key] = value
        return result


class ElectraExamples(IndexedExamples):
    """Rows of the ExampleBuilder table (built on first use, then loaded from the cache)."""

    kind = "encoder"

    def __init__(self, corpus: CorpusTokens, max_length: int, cls_id: int, sep_id: int,
                 seed: int):
        if corpus.doc_offsets is None:
            raise ValueError("ELECTRA needs a corpus tokenized with mode='sentences'")
        self.table = _electra_table(corpus, max_length, cls_id, sep_id, seed)
        self.task_lengths = {"inputs": int(max_length)}
        super().__init__(len(self.table), seed)

    def _make(self, item: int, index: int) -> dict[str, np.ndarray]:
        return self.table.example(item)


def _sentencepiece(vocab_path: str) -> spm.SentencePieceProcessor:
    """The model seqio's SentencePieceVocabulary wraps (same ids: tests compare the two).

    Loaded directly so the trainer's input path never imports TensorFlow.
    """
    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(f"sentencepiece model {vocab_path!r} does not exist")
    return spm.SentencePieceProcessor(model_file=vocab_path)


def _electra_table(corpus: CorpusTokens, max_length: int, cls_id: int, sep_id: int,
                   seed: int) -> electra_examples.ElectraExampleTable:
    """The ExampleBuilder table, saved next to the token cache after its first build."""
    path = os.path.join(corpus.path, f"electra-L{max_length}-seed{seed}-{cls_id}-{sep_id}.npz")
    if os.path.exists(path):
        with np.load(path) as saved:
            return electra_examples.ElectraExampleTable(saved["ids"], saved["segment_lengths"])
    table = electra_examples.build_table(corpus.tokens, corpus.offsets, corpus.doc_offsets,
                                         max_length, cls_id, sep_id, seed)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, ids=table.ids.astype(corpus.tokens.dtype), segment_lengths=table.segment_lengths)
    os.replace(tmp, path)
    return table


def t5_examples(files: str | Sequence[str], vocab_path: str, *, objective: str = "span_corruption",
                inputs_length: int = 512, seed: int = 0, cache_dir: str | None = None,
                fmt: str = "auto", field: str = "text", extra_ids: int = 100,
                **params: Any) -> T5Examples:
    """T5 examples of ``files``; ``params`` override the objective's defaults (T5_OBJECTIVES).

    The vocabulary size (sentinels count down from its last id) is seqio's: the sentencepiece
    pieces plus ``extra_ids``.
    """
    corpus = tokenize_corpus(files, vocab_path, fmt=fmt, field=field, cache_dir=cache_dir)
    vocab_size = _sentencepiece(vocab_path).get_piece_size() + extra_ids
    return T5Examples(corpus, objective, inputs_length, vocab_size, seed, **params)


def electra_examples_from_files(files: str | Sequence[str], vocab_path: str, *,
                                max_length: int = 128, seed: int = 0,
                                cache_dir: str | None = None, fmt: str = "auto",
                                field: str = "text") -> ElectraExamples:
    from data import vocab as vocab_lib

    corpus = tokenize_corpus(files, vocab_path, mode="sentences", fmt=fmt, field=field,
                             cache_dir=cache_dir)
    ids = vocab_lib.special_ids(vocab_path)
    return ElectraExamples(corpus, max_length, ids["cls"], ids["sep"], seed)


# ---------------------------------------------------------------------------------------------
# Streams, state and the global batch.
# ---------------------------------------------------------------------------------------------

STATE_VERSION = 1


@dataclasses.dataclass
class _Stream:
    index: int  # k: this stream takes epoch positions k, k + K, k + 2K, ...
    group_start: int = 0  # the stream's example counter where the open group starts
    rows_done: int = 0  # rows of that group already handed out
    rows: dict[str, np.ndarray] | None = None  # the open group's feature rows (not state)


def stream_example_index(num_items: int, num_streams: int, stream: int, j: int) -> int:
    """Global example index of the j-th example of ``stream``: epoch positions k, k + K, ..."""
    per_epoch = (num_items - stream + num_streams - 1) // num_streams
    epoch, i = divmod(j, per_epoch)
    return epoch * num_items + stream + i * num_streams


def make_group(examples: IndexedExamples, stream: int, num_streams: int, group_start: int,
               group_size: int, pack: bool) -> dict[str, np.ndarray]:
    """The feature rows of one packing group of one stream: a pure function of its arguments."""
    group = [examples.example(stream_example_index(examples.num_items, num_streams, stream, j))
             for j in range(group_start, group_start + group_size)]
    if pack:
        rows = features.pack_group(group, examples.task_lengths)
    else:
        rows = features.pad_examples(group, examples.task_lengths)
    convert = features.encdec_features if examples.kind == "encdec" else features.encoder_features
    return convert(rows, pack)


_WORKER_EXAMPLES: IndexedExamples | None = None


def _init_worker(examples: IndexedExamples) -> None:
    global _WORKER_EXAMPLES
    _WORKER_EXAMPLES = examples


def _worker_group(*args: Any) -> dict[str, np.ndarray]:
    return make_group(_WORKER_EXAMPLES, *args)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class InputPipeline:
    """Global batches of packed (or padded) features, sharded over the mesh, with prefetch.

    Iterate it: each item is {key: array [global_batch, length]} -- ``jax.Array``s laid out by
    ``sharding`` when one is given, NumPy arrays otherwise. ``state()`` describes the position
    after the last batch handed out; pass it back as ``state=`` to continue from there.
    """

    def __init__(self, examples: IndexedExamples, global_batch_size: int, *,
                 sharding: jax.sharding.Sharding | None = None, pack: bool = True,
                 num_streams: int | None = None, state: Mapping[str, Any] | None = None,
                 prefetch: int = 2, num_workers: int = 0):
        self.examples, self.global_batch_size, self.sharding = examples, global_batch_size, sharding
        self.pack, self.prefetch = pack, prefetch
        self.lengths = dict(examples.task_lengths)
        self.group_size = features.group_size(self.lengths)
        owned_rows, default_streams = self._owned_rows()
        self.num_streams = num_streams or default_streams
        if global_batch_size % self.num_streams:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"num_streams={self.num_streams}")
        if examples.num_items < self.num_streams:
            raise ValueError(f"{examples.num_items} items per epoch cannot feed "
                             f"{self.num_streams} streams")
        self.rows_per_stream = global_batch_size // self.num_streams
        owned = sorted({r // self.rows_per_stream for r in owned_rows})
        self._streams = {k: _Stream(k) for k in owned}
        # Global row -> row of this process's block (-1: another process builds it).
        self._local_row = np.full(global_batch_size, -1, np.int64)
        for i, k in enumerate(owned):
            block = slice(k * self.rows_per_stream, (k + 1) * self.rows_per_stream)
            self._local_row[block] = np.arange(self.rows_per_stream) + i * self.rows_per_stream
        self._batches = 0
        if state is not None:
            self._restore(state)
        self._state = self._snapshot()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._pending: dict[tuple[int, int], concurrent.futures.Future] = {}
        if num_workers > 0:
            # spawn, not fork: forking a process that runs JAX's threads can deadlock.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                num_workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(examples,))
            self._lookahead = 1 + -(-num_workers // len(self._streams))
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if prefetch > 0:
            self._thread = threading.Thread(target=self._produce_forever, daemon=True,
                                            name="pretrax-input")
            self._thread.start()

    # -- which rows this process builds ------------------------------------------------------

    def _owned_rows(self) -> tuple[list[int], int]:
        b = self.global_batch_size
        if self.sharding is None:
            return list(range(b)), 1
        shape = (b, self.lengths["inputs"])
        batch_slices = {idx[0].indices(b) for idx in self.sharding.devices_indices_map(shape)
                        .values()}
        rows = sorted({r for idx in self.sharding.addressable_devices_indices_map(shape).values()
                       for r in range(*idx[0].indices(b))})
        return rows, len(batch_slices)

    # -- the row stream of one stream ----------------------------------------------------------

    def _group_rows(self, stream: _Stream) -> dict[str, np.ndarray]:
        if stream.rows is not None:
            return stream.rows
        args = (stream.index, self.num_streams, stream.group_start, self.group_size, self.pack)
        if self._pool is None:
            stream.rows = make_group(self.examples, *args)
            return stream.rows
        # Keep the next groups of this stream in flight on the worker processes.
        for ahead in range(self._lookahead):
            start = stream.group_start + ahead * self.group_size
            key = (stream.index, start)
            if key not in self._pending:
                self._pending[key] = self._pool.submit(_worker_group, stream.index,
                                                       self.num_streams, start, self.group_size,
                                                       self.pack)
        stream.rows = self._pending.pop((stream.index, stream.group_start)).result()
        return stream.rows

    def _take(self, stream: _Stream, n: int) -> dict[str, np.ndarray]:
        pieces = []
        while n:
            rows = self._group_rows(stream)
            total = next(iter(rows.values())).shape[0]
            t = min(n, total - stream.rows_done)
            pieces.append({k: v[stream.rows_done:stream.rows_done + t] for k, v in rows.items()})
            stream.rows_done += t
            n -= t
            if stream.rows_done == total:
                stream.group_start += self.group_size
                stream.rows_done, stream.rows = 0, None
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    # -- batches -------------------------------------------------------------------------------

    def _next_local(self) -> dict[str, np.ndarray]:
        blocks = [self._take(self._streams[k], self.rows_per_stream) for k in sorted(self._streams)]
        # [owned streams x rows_per_stream, length]
        return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}

    def _to_global(self, local: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.sharding is None:
            return local
        out = {}
        for key, array in local.items():
            def fetch(index, array=array):
                rows = self._local_row[index[0]]
                if (rows < 0).any():
                    raise RuntimeError("a device of this process needs rows another process "
                                       "builds; the sharding and num_streams disagree")
                return array[rows][(slice(None),) + tuple(index[1:])]

            shape = (self.global_batch_size,) + array.shape[1:]
            out[key] = jax.make_array_from_callback(shape, self.sharding, fetch)
        return out

    def _produce(self) -> tuple[dict[str, Any], dict[str, Any]]:
        batch = self._to_global(self._next_local())
        self._batches += 1
        return batch, self._snapshot()

    def _produce_forever(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._produce()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer
            self._put_failure(error)

    def _put_failure(self, error: BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(_Failure(error), timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._thread is None:
            batch, self._state = self._produce()
            return batch
        if self._stop.is_set():
            raise RuntimeError("the input pipeline is closed")
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        batch, self._state = item
        return batch

    def close(self) -> None:
        """Stops the prefetch thread (idempotent); pending batches are dropped."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> InputPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "seed": self.examples.seed,
                "global_batch_size": self.global_batch_size, "num_streams": self.num_streams,
                "pack": self.pack, "batches": self._batches,
                "streams": {str(k): [s.group_start, s.rows_done]
                            for k, s in sorted(self._streams.items())}}

    def state(self) -> dict[str, Any]:
        """Position after the last batch handed out (this process's streams); JSON-able."""
        return json.loads(json.dumps(self._state))

    def _restore(self, state: Mapping[str, Any]) -> None:
        expected = {"version": STATE_VERSION, "seed": self.examples.seed,
                    "global_batch_size": self.global_batch_size,
                    "num_streams": self.num_streams, "pack": self.pack}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(f"input pipeline state has {key}={state.get(key)!r} but this "
                                 f"pipeline has {key}={value!r}")
        for k, stream in self._streams.items():
            if str(k) not in state["streams"]:
                raise ValueError(f"input pipeline state has no entry for stream {k}; it has "
                                 f"{sorted(state['streams'])} (save global_state() on multi-host)")
            stream.group_start, stream.rows_done = (int(v) for v in state["streams"][str(k)])
        self._batches = int(state["batches"])


def global_state(pipeline: InputPipeline) -> dict[str, Any]:
    """The state of every stream, gathered from all processes (a collective: call everywhere)."""
    state = pipeline.state()
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils

    table = np.full((pipeline.num_streams, 2), -1, np.int64)
    for k, value in state["streams"].items():
        table[int(k)] = value
    # [processes, streams, 2] -> [streams, 2]: each stream is owned by one process (others -1).
    gathered = np.asarray(multihost_utils.process_allgather(table)).max(axis=0)
    state["streams"] = {str(k): [int(a), int(b)] for k, (a, b) in enumerate(gathered)
                        if a >= 0}
    return state


# ---------------------------------------------------------------------------------------------
# What the trainer calls.
# ---------------------------------------------------------------------------------------------


def t5_pipeline(files: str | Sequence[str], vocab_path: str, *, global_batch_size: int,
                inputs_length: int = 512, objective: str = "span_corruption", seed: int = 0,
                sharding: jax.sharding.Sharding | None = None, pack: bool = True,
                state: Mapping[str, Any] | None = None, prefetch: int = 2,
                num_workers: int = 0, cache_dir: str | None = None, fmt: str = "auto",
                field: str = "text", **objective_params: Any) -> InputPipeline:
    """Batches of EncDecFeatureConverter features for a T5 objective (int32, [batch, length]):
    encoder_* [global_batch_size, inputs_length], decoder_* [global_batch_size, targets
    length] (114 for span corruption at 512)."""
    examples = t5_examples(files, vocab_path, objective=objective, inputs_length=inputs_length,
                           seed=seed, cache_dir=cache_dir, fmt=fmt, field=field,
                           **objective_params)
    return InputPipeline(examples, global_batch_size, sharding=sharding, pack=pack,
                         state=state, prefetch=prefetch, num_workers=num_workers)


def electra_pipeline(files: str | Sequence[str], vocab_path: str, *, global_batch_size: int,
                     max_length: int = 128, seed: int = 0,
                     sharding: jax.sharding.Sharding | None = None, pack: bool = False,
                     state: Mapping[str, Any] | None = None, prefetch: int = 2,
                     num_workers: int = 0, cache_dir: str | None = None, fmt: str = "auto",
                     field: str = "text") -> InputPipeline:
    """Batches of encoder features (int32, [global_batch_size, max_length]). Unpacked by
    default, as ELECTRA trains: one [CLS] A [SEP] B [SEP] example per row, zero padded."""
    examples = electra_examples_from_files(files, vocab_path, max_length=max_length, seed=seed,
                                           cache_dir=cache_dir, fmt=fmt, field=field)
    return InputPipeline(examples, global_batch_size, sharding=sharding, pack=pack,
                         state=state, prefetch=prefetch, num_workers=num_workers)
