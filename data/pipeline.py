"""The fast input pipeline: index-addressable examples -> packed batches -> global jax.Arrays.

Layers (each a pure function of (seed, position), so the stream is deterministic and resumable):

1. data/cache.py: every document tokenized ONCE into a memory-mapped token cache.
2. data/examples.py: example sources with ``example(index)`` / ``examples(indices)`` (T5 chunks
   + objective, ELECTRA's ExampleBuilder rows), each epoch in its own seeded permutation.
3. ``InputPipeline`` (here): the global batch's rows are split into ``num_streams`` contiguous
   blocks (default: one per row, so the stream never depends on the mesh). Stream k takes
   epoch positions k, k+K, ..., packs them in seqio's groups (features.py) and fills block k. A
   group's examples are made together (``examples(indices)``: span corruption runs batched
   over the group). A process builds only the blocks its devices hold, so the global batch
   depends neither on the process count nor on the device count, and a checkpoint taken on
   one mesh resumes on any other with the same global batch. State = per stream (next group
   start, rows of that group already used); restoring re-packs at most one group per stream
   (<= group_size objective calls), whatever the position.

The names of data/cache.py and data/examples.py stay importable from here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from data import features
from data.cache import (
    CACHE_VERSION,
    DEFAULT_CACHE_DIR,
    CorpusTokens,
    cache_key,
    load_cache,
    tokenize_corpus,
)
from data.examples import (
    ElectraExamples,
    IndexedExamples,
    T5Examples,
    electra_examples_from_files,
    epoch_permutation,
    example_rngs,
    t5_examples,
)
from data.vocab import load_sentencepiece

__all__ = [
    # Re-exported from data/cache.py, data/examples.py and data/vocab.py: callers import them
    # from here.
    "CACHE_VERSION", "DEFAULT_CACHE_DIR", "CorpusTokens", "cache_key", "load_cache",
    "load_sentencepiece", "tokenize_corpus", "ElectraExamples", "IndexedExamples", "T5Examples",
    "electra_examples_from_files", "epoch_permutation", "example_rngs", "t5_examples",
    # This module.
    "STATE_VERSION", "InputPipeline", "global_state", "make_group", "stream_example_index",
]

# ---------------------------------------------------------------------------------------------
# Streams, state and the global batch.
# ---------------------------------------------------------------------------------------------

# 2: one stream per row of the global batch (1 had one per batch shard of the mesh).
STATE_VERSION = 2


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
    group = examples.examples([stream_example_index(examples.num_items, num_streams, stream, j)
                               for j in range(group_start, group_start + group_size)])
    return examples.features(group, pack)


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
        owned_rows = self._owned_rows()
        self.num_streams = num_streams or global_batch_size
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

    def _owned_rows(self) -> list[int]:
        b = self.global_batch_size
        if self.sharding is None:
            return list(range(b))
        shape = (b, self.lengths["inputs"])
        return sorted({r for idx in self.sharding.addressable_devices_indices_map(shape).values()
                       for r in range(*idx[0].indices(b))})

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
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"the checkpoint's input pipeline state has version {state.get('version')!r}; "
                f"this pretrax reads version {STATE_VERSION} (the data order changed). It "
                "cannot resume that run: start a new workdir, with "
                "--config.train.init_from=OLD_WORKDIR to keep its params")
        expected = {"seed": self.examples.seed,
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
