"""Index-addressable examples: ``example(index)`` is a pure function of (corpus, seed, index).

Epoch e = index // N visits the N items (T5: raw chunks of the objective's raw length cut from
the token cache, data/cache.py; ELECTRA: rows of the ExampleBuilder table) in a permutation
seeded by (seed, e); T5's objective draws from ``example_rng(seed, index)``. tasks.py wraps
these same functions in seqio Tasks, and a test checks the two agree bitwise.

``examples(indices)`` returns exactly ``[example(i) for i in indices]`` and is what the input
pipeline calls, one packing group at a time: span corruption then runs once over the group's
[group, raw_length] chunks (``span_corruption_batch``), and every T5 objective gets its
generators without NumPy's per-generator seeding cost.
"""

from __future__ import annotations

import abc
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from data import electra_examples, features
from data.cache import CorpusTokens, tokenize_corpus
from data.vocab import load_sentencepiece
from objectives import span_corruption
from objectives.denoising import SPAN_CORRUPTION, Denoiser
from objectives.span_corruption import example_rng

# Objectives with a batched form over same-length chunks whose row b equals the per-chunk call.
_BATCHED_OBJECTIVES: dict[Callable[..., dict], Callable[..., dict]] = {
    span_corruption.span_corruption: span_corruption.span_corruption_batch,
}
# A new Philox generator's state (counter 0, empty buffer); only its key differs per example.
_FRESH_PHILOX = np.random.Philox(key=0).state


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n items in ``epoch``: a function of (seed, epoch) only."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), int(epoch), 0x70657270]))).permutation(n)


def example_rngs(seed: int, indices: Sequence[int],
                 pool: list[np.random.Generator]) -> list[np.random.Generator]:
    """[example_rng(seed, i) for i in indices], reusing (and growing) the generators of ``pool``.

    Constructing a Philox generator also seeds a SeedSequence it never uses (most of its cost);
    setting a recycled one's state to a fresh state with the key (seed << 64) | index gives the
    same stream. Out-of-range values go through example_rng, which raises its usual error.
    """
    if not (indices and 0 <= int(seed) < 2**64 and 0 <= min(indices) and max(indices) < 2**64):
        return [example_rng(seed, i) for i in indices]
    while len(pool) < len(indices):
        pool.append(np.random.Generator(np.random.Philox(key=0)))
    for generator, index in zip(pool, indices, strict=False):
        # Philox's 128-bit key as two little-endian 64-bit words: [index, seed].
        generator.bit_generator.state = {
            **_FRESH_PHILOX, "state": {"counter": _FRESH_PHILOX["state"]["counter"],
                                       "key": np.array([index, seed], np.uint64)}}
    return pool[:len(indices)]


class IndexedExamples(abc.ABC):
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

    def _item(self, index: int) -> int:
        epoch, position = divmod(int(index), self.num_items)
        self.calls += 1
        return int(self._permutation(epoch)[position])

    def example(self, index: int) -> dict[str, np.ndarray]:
        return self._make(self._item(index), int(index))

    def examples(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """[self.example(i) for i in indices]; subclasses make them faster together."""
        return [self.example(i) for i in indices]

    def features(self, group: Sequence[Mapping[str, np.ndarray]], pack: bool
                 ) -> dict[str, np.ndarray]:
        """The model's batch rows of ``group`` (consecutive examples of one stream): packed in
        seqio's groups or one per row, then named as seqio's feature converters name them."""
        if pack:
            rows = features.pack_group(group, self.task_lengths)
        else:
            rows = features.pad_examples(group, self.task_lengths)
        convert = features.encdec_features if self.kind == "encdec" else features.encoder_features
        return convert(rows, pack)

    @abc.abstractmethod
    def _make(self, item: int, index: int) -> dict[str, np.ndarray]:
        """The example of corpus item ``item`` at stream position ``index``."""


def _call_batched(fn: Callable[..., dict], params: Mapping[str, Any], tokens: np.ndarray,
                  rngs: Any, vocab_size: int) -> dict:
    return fn(tokens, rngs, vocab_size, **params)


class T5Examples(IndexedExamples):
    """T5 chunking + a T5 objective.

    Objectives that concatenate documents (span corruption and most others): item i =
    tokens[i * raw : (i + 1) * raw] of the whole corpus laid end to end (T5 concatenated 128
    documents at a time; the few chunks that would straddle its groups are the only
    difference), the incomplete tail dropped. The others (prefix_lm, deshuffle): every document
    cut into raw-length pieces, the last piece of a document kept if it has >= 2 tokens.
    """

    kind = "encdec"

    def __init__(self, corpus: CorpusTokens, denoiser: Denoiser, inputs_length: int,
                 vocab_size: int, seed: int, **params: Any):
        self.fn, raw_length, targets_length = denoiser.bind(inputs_length, **params)
        self.corpus, self.raw_length, self.vocab_size = corpus, raw_length, vocab_size
        self.denoiser, self.params = denoiser, params
        self.task_lengths = {"inputs": int(inputs_length), "targets": int(targets_length)}
        # fn(tokens [batch, raw_length], rngs, vocab_size): only when every chunk has raw_length.
        self.batch_fn: Callable[..., dict] | None = None
        if denoiser.concatenate_documents and denoiser.fn in _BATCHED_OBJECTIVES:
            self.batch_fn = functools.partial(_call_batched, _BATCHED_OBJECTIVES[denoiser.fn],
                                              denoiser.params(**params))
        self._rng_pools: list[list[np.random.Generator]] = []
        if denoiser.concatenate_documents:
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

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_rng_pools": []}

    def chunk(self, item: int) -> np.ndarray:
        if self.starts is None:
            start, end = item * self.raw_length, (item + 1) * self.raw_length
        else:
            start, end = self.starts[item], self.ends[item]
        # A plain-ndarray view: slicing the np.memmap itself costs ~10x more (its Python hooks).
        return np.asarray(np.asarray(self.corpus.tokens)[start:end], np.int32)

    def chunks(self, items: Sequence[int]) -> np.ndarray:
        """[len(items), raw_length] int32, row b = chunk(items[b]) (concatenated chunking)."""
        if self.starts is not None:
            raise ValueError(f"objective {self.denoiser.name!r} cuts documents into pieces of "
                             "different lengths; use chunk(item) one at a time")
        # [batch, 1] + [raw_length] -> [batch, raw_length] positions in the flat token cache
        where = np.asarray(items, np.int64)[:, None] * self.raw_length + np.arange(self.raw_length)
        return np.asarray(np.asarray(self.corpus.tokens)[where], np.int32)

    def _finish(self, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = {}
        for key, length in self.task_lengths.items():
            value = np.asarray(out[key], np.int32)
            if value.size > length:
                # seqio's append_eos_after_trim: keep length - 1 tokens, then EOS again.
                value = np.append(value[:length - 1], value[-1])
            result[key] = value
        return result

    def _make(self, item: int, index: int) -> dict[str, np.ndarray]:
        return self._finish(self.fn(self.chunk(item), example_rng(self.seed, index),
                                    self.vocab_size))

    def examples(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Bitwise [self.example(i) for i in indices] (a test checks it), several times faster."""
        indices = [int(i) for i in indices]
        items = [self._item(i) for i in indices]
        try:  # a pool of generators per concurrent caller (list.pop/append are atomic)
            pool = self._rng_pools.pop()
        except IndexError:
            pool = []
        try:
            rngs = example_rngs(self.seed, indices, pool)
            if self.batch_fn is not None and indices:
                # [batch, raw_length] -> inputs [batch, inputs_length], targets [batch, targets]
                out = self.batch_fn(self.chunks(items), rngs, self.vocab_size)
                rows = [{k: v[b] for k, v in out.items()} for b in range(len(indices))]
            else:
                rows = [self.fn(self.chunk(item), rng, self.vocab_size)
                        for item, rng in zip(items, rngs, strict=True)]
        finally:
            self._rng_pools.append(pool)
        return [self._finish(row) for row in rows]


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


def t5_examples(files: str | Sequence[str], vocab_path: str, *,
                denoiser: Denoiser = SPAN_CORRUPTION,
                inputs_length: int = 512, seed: int = 0, cache_dir: str | None = None,
                fmt: str = "auto", field: str = "text", extra_ids: int = 100,
                **params: Any) -> T5Examples:
    """T5 examples of ``files``; ``params`` override the denoiser's defaults.

    The vocabulary size (sentinels count down from its last id) is seqio's: the sentencepiece
    pieces plus ``extra_ids``.
    """
    corpus = tokenize_corpus(files, vocab_path, fmt=fmt, field=field, cache_dir=cache_dir)
    vocab_size = load_sentencepiece(vocab_path).get_piece_size() + extra_ids
    return T5Examples(corpus, denoiser, inputs_length, vocab_size, seed, **params)


def electra_examples_from_files(files: str | Sequence[str], vocab_path: str, *,
                                max_length: int = 128, seed: int = 0,
                                cache_dir: str | None = None, fmt: str = "auto",
                                field: str = "text") -> ElectraExamples:
    from data import vocab as vocab_lib

    corpus = tokenize_corpus(files, vocab_path, mode="sentences", fmt=fmt, field=field,
                             cache_dir=cache_dir)
    ids = vocab_lib.special_ids(vocab_path)
    return ElectraExamples(corpus, max_length, ids["cls"], ids["sep"], seed)
