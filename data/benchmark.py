r"""Input pipeline speed: pretrax's fast path vs the reference seqio + T5 pipeline, side by side.

    python -m data.benchmark                      # bundled corpus, 512/114 and ELECTRA 128
    python -m data.benchmark --examples=4000 --repeats=5 --skip_reference

T5: packed span-corrupted 512/114 examples per second from raw text (the bundled corpus).
  reference = gzip text lines -> seqio.preprocessors.tokenize (TF sentencepiece) -> the original
  ``t5.data.preprocessors.span_corruption`` (PyPI t5==0.9.4, loaded from its file so its
  evaluation dependencies are not needed) -> append_eos_after_trim ->
  seqio.EncDecFeatureConverter(pack=True). Ours = InputPipeline over T5Examples, no prefetch
  thread (the rate is what one thread produces).
  Tokenisation: the reference streams it (every epoch re-tokenizes); ours is CACHED: the cache is
  built once (timed here from scratch in a temporary folder, size on disk reported) and memory
  mapped afterwards. The "first epoch" rate charges the whole build to the first epoch.
ELECTRA: [CLS] A [SEP] B [SEP] examples of 128 tokens per second (no reference pipeline: the
  original writes TFRecords offline), unpacked and packed.

Rates: min / median / max over --repeats timed runs after a warm-up; the ratio uses medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

from data import bundled, cache, pipeline
from data import examples as examples_lib


def _rate(make_iter: Callable[[], Iterator[int]], examples: int, repeats: int,
          warmup: int) -> list[float]:
    """Examples/s of ``repeats`` runs; the iterator yields how many examples each step made."""
    rates = []
    for _ in range(repeats):
        it = make_iter()
        done = 0
        while done < warmup:
            done += next(it)
        done, start = 0, time.perf_counter()
        while done < examples:
            done += next(it)
        rates.append(done / (time.perf_counter() - start))
    return rates


def _fmt(rates: list[float]) -> str:
    return (f"median {statistics.median(rates):8.0f} ex/s  (min {min(rates):.0f}, "
            f"max {max(rates):.0f}, {len(rates)} runs)")


def _fast_iter(source: examples_lib.IndexedExamples, batch: int, pack: bool,
               workers: int) -> Iterator[int]:
    p = pipeline.InputPipeline(source, batch, pack=pack, prefetch=0, num_workers=workers)
    try:
        while True:
            # Examples in this batch: segments per row (a packed row may hold several).
            yield int(np.asarray(next(p)["encoder_segment_ids"]).max(axis=1).sum())
    finally:
        p.close()


def _reference_iter(lengths: dict[str, int]) -> Iterator[int]:
    import seqio
    import tensorflow as tf

    original = _original_t5_preprocessors()
    vocab = seqio.SentencePieceVocabulary(bundled.VOCAB_PATH, extra_ids=bundled.EXTRA_IDS)
    output_features = {"inputs": seqio.Feature(vocab, add_eos=True, required=False),
                       "targets": seqio.Feature(vocab, add_eos=True)}
    ds = tf.data.TextLineDataset(bundled.TRAIN_FILES, compression_type="GZIP").repeat()
    ds = ds.map(lambda text: {"targets": text})  # rekey(inputs=None, targets=text)
    ds = seqio.preprocessors.tokenize(ds, output_features)
    ds = original.span_corruption(ds, sequence_length=lengths, output_features=output_features)
    ds = seqio.preprocessors.append_eos_after_trim(ds, output_features, lengths)
    ds = seqio.EncDecFeatureConverter(pack=True)(ds, lengths)
    for row in ds.as_numpy_iterator():
        yield int(row["encoder_segment_ids"].max())  # examples packed into this row


def _original_t5_preprocessors():
    name = "t5_original_preprocessors"
    if name not in sys.modules:  # gin refuses to register the same configurables twice
        spec = importlib.util.find_spec("t5")
        if spec is None:
            raise SystemExit("the reference needs `pip install --no-deps t5==0.9.4` "
                             "(plus babel and gin-config); or pass --skip_reference")
        path = pathlib.Path(spec.submodule_search_locations[0]) / "data" / "preprocessors.py"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _build_cache(cache_dir: str, mode: str) -> cache.CorpusTokens:
    start = time.perf_counter()
    corpus = cache.tokenize_corpus(bundled.TRAIN_FILES, bundled.VOCAB_PATH, mode=mode,
                                   cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    print(f"  token cache ({mode}): {corpus.meta['tokens']:,} tokens in {corpus.meta['units']:,} "
          f"{'sentences' if mode == 'sentences' else 'documents'}, built in {seconds:.1f} s "
          f"(tokenize {corpus.meta['build_seconds']:.1f} s), "
          f"{corpus.meta['bytes'] / 2**20:.1f} MB on disk")
    return corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=3000, help="examples per timed run")
    parser.add_argument("--reference_examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--skip_reference", action="store_true")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes for the pooled run (0: one per CPU)")
    args = parser.parse_args(argv)
    lengths = {"inputs": 512, "targets": 114}
    cache_dir = tempfile.mkdtemp(prefix="pretrax-bench-")
    try:
        print(f"corpus: {len(bundled.TRAIN_FILES)} train files, "
              f"{sum(os.path.getsize(f) for f in bundled.TRAIN_FILES) / 2**20:.1f} MB gzip; "
              f"vocab {os.path.basename(bundled.VOCAB_PATH)}; {os.cpu_count()} CPUs")
        print("\nT5 span corruption, packed 512/114")
        corpus = _build_cache(cache_dir, "documents")
        import sentencepiece as spm

        vocab_size = spm.SentencePieceProcessor(
            model_file=bundled.VOCAB_PATH).get_piece_size() + bundled.EXTRA_IDS
        t5 = examples_lib.T5Examples(corpus, examples_lib.SPAN_CORRUPTION, 512, vocab_size,
                                     seed=0)
        ours = _rate(lambda: _fast_iter(t5, args.batch, True, 0), args.examples,
                     args.repeats, warmup=args.batch)
        print(f"  pretrax fast path, in-process : {_fmt(ours)}")
        workers = args.workers or os.cpu_count() or 1
        ours_pool = _rate(lambda: _fast_iter(t5, args.batch, True, workers), args.examples,
                          args.repeats, warmup=args.batch)
        print(f"  pretrax fast path, {workers} worker processes: {_fmt(ours_pool)}")
        build = corpus.meta["build_seconds"]
        epoch = t5.num_items
        first_epoch = epoch / (build + epoch / statistics.median(ours))
        print(f"  first epoch incl. building the cache: {first_epoch:.0f} ex/s "
              f"({epoch:,} examples per epoch)")
        if not args.skip_reference:
            ref = _rate(lambda: _reference_iter(lengths), args.reference_examples, args.repeats,
                        warmup=50)
            print(f"  reference (seqio + t5 span_corruption + packing): {_fmt(ref)}")
            med = statistics.median(ref)
            print(f"  ratio pretrax / reference: in-process {statistics.median(ours) / med:.1f}x"
                  f", {workers} workers {statistics.median(ours_pool) / med:.1f}x, first epoch "
                  f"incl. cache (in-process) {first_epoch / med:.1f}x")

        print("\nELECTRA, 128 tokens")
        sentences = _build_cache(cache_dir, "sentences")
        from data import vocab as vocab_lib

        ids = vocab_lib.special_ids(bundled.VOCAB_PATH)
        start = time.perf_counter()
        electra = examples_lib.ElectraExamples(sentences, 128, ids["cls"], ids["sep"], seed=0)
        print(f"  example table: {len(electra.table):,} examples, built in "
              f"{time.perf_counter() - start:.1f} s (saved next to the token cache, "
              f"{electra.table.ids.size * 2 / 2**20:.1f} MB as uint16)")
        for pack in (False, True):
            rates = _rate(lambda pack=pack: _fast_iter(electra, args.batch, pack, 0),
                          args.examples, args.repeats, warmup=args.batch)
            print(f"  pretrax fast path, {'packed' if pack else 'padded'}: {_fmt(rates)}")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
