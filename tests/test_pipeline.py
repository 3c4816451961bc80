"""The fast input pipeline: determinism, epochs, resume without replay, sharding, prefetch."""

import os
import threading

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from data import bundled, cache, examples, features, pipeline
from launch import mesh as mesh_lib
from modeling import axes
from objectives import registry


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def t5(cache_dir):
    def make(seed=0, inputs_length=32, objective="span_corruption"):
        return examples.t5_examples(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                    denoiser=registry.denoiser(objective),
                                    inputs_length=inputs_length, seed=seed,
                                    cache_dir=cache_dir)
    return make


@pytest.fixture(scope="module")
def electra(cache_dir):
    return examples.electra_examples_from_files(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                                max_length=32, seed=0, cache_dir=cache_dir)


def _take(p, n):
    return [{k: np.asarray(v) for k, v in next(p).items()} for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_token_cache_matches_the_vocabulary_and_is_reused(t5, cache_dir):
    from data import sources, vocab

    corpus = cache.tokenize_corpus(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                   cache_dir=cache_dir)
    docs = list(sources.read_documents(bundled.VALIDATION_FILES))
    v = vocab.get_vocabulary(bundled.VOCAB_PATH)
    assert corpus.offsets.size == len(docs) + 1
    for d in (0, 7, len(docs) - 1):
        np.testing.assert_array_equal(corpus.tokens[corpus.offsets[d]:corpus.offsets[d + 1]],
                                      v.encode(docs[d]))
    again = cache.tokenize_corpus(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                  cache_dir=cache_dir)
    assert again.path == corpus.path and again.meta == corpus.meta  # loaded, not rebuilt
    # T5 chunking: documents concatenated without separators, cut at the raw length.
    ex = t5()
    np.testing.assert_array_equal(ex.chunk(3), corpus.tokens[3 * ex.raw_length:4 * ex.raw_length])


_CONCURRENT_BUILDER = """
import os, sys, time
from data import bundled, cache
build, warn = cache._build_cache_locked, cache.log.warning
waiting = os.path.join(sys.argv[3], "waiting")
def slow_build(*args, **kwargs):
    with open(sys.argv[2], "a") as f:
        f.write("built\\n")
    deadline = time.time() + 120  # build only once the other process waits on the lock
    while not os.path.exists(waiting) and time.time() < deadline:
        time.sleep(0.05)
    build(*args, **kwargs)
def noting_warning(*args):
    open(waiting, "w").close()
    warn(*args)
cache._build_cache_locked, cache.log.warning = slow_build, noting_warning
# Both processes enter tokenize_corpus only once both have started (a barrier of two files).
open(os.path.join(sys.argv[3], str(os.getpid())), "w").close()
while len([n for n in os.listdir(sys.argv[3]) if n.isdigit()]) < 2:
    time.sleep(0.05)
corpus = cache.tokenize_corpus(bundled.VALIDATION_FILES, bundled.VOCAB_PATH, cache_dir=sys.argv[1])
print(corpus.path, int(corpus.tokens.sum()), corpus.tokens.size)
"""


def test_concurrent_starts_build_the_token_cache_once(tmp_path):
    """Sweeps start many jobs on one corpus at once: one builds its cache, the others say they
    wait on the lock and map it (before, each tokenised the whole corpus, and losers left their
    temporary folders behind)."""
    import os
    import subprocess
    import sys

    marker, arrived = tmp_path / "builds", tmp_path / "arrived"
    arrived.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_BUILDER, str(tmp_path / "c"),
                               str(marker), str(arrived)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)))
             for _ in range(2)]
    outs, errs = zip(*[p.communicate(timeout=300) for p in procs], strict=True)
    assert [p.returncode for p in procs] == [0, 0], errs
    assert marker.read_text().splitlines() == ["built"]
    assert outs[0].split() == outs[1].split()
    assert sum("waiting for another process to build the token cache" in e for e in errs) == 1
    assert not [n for n in os.listdir(tmp_path / "c") if n.startswith(".tmp-")]


def test_a_failed_build_leaves_nothing_and_a_crashed_ones_folder_is_removed(tmp_path,
                                                                            monkeypatch):
    from data import sources

    key = cache.cache_key(sources.expand_files(bundled.VALIDATION_FILES), bundled.VOCAB_PATH,
                          "documents", "auto", "text")
    import json
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    crashed = tmp_path / f".tmp-{key}-killed"  # as a SIGKILLed builder on this host leaves it
    elsewhere = tmp_path / f".tmp-{key}-live"  # a builder on another node (flock node-local)
    for folder, host, pid in ((crashed, socket.gethostname(), dead), (elsewhere, "node7", 1)):
        folder.mkdir(parents=True)
        (folder / "tokens.npy").write_bytes(b"half")
        (folder / "builder.json").write_text(json.dumps({"host": host, "pid": int(pid)}))
    read = sources.read_documents

    def failing(*args, **kwargs):
        for i, document in enumerate(read(*args, **kwargs)):
            if i == 40:  # after two batches were written
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a bad byte")
            yield document

    monkeypatch.setattr(sources, "read_documents", failing)
    with pytest.raises(UnicodeDecodeError):
        cache.tokenize_corpus(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                              cache_dir=str(tmp_path), batch_documents=16)
    # the failed build left nothing; the dead builder's folder is gone, the live one's is not
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-{key}-live", f"{key}.lock"]
    monkeypatch.setattr(sources, "read_documents", read)
    corpus = cache.tokenize_corpus(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                   cache_dir=str(tmp_path))
    assert corpus.key == key and corpus.tokens.size == corpus.meta["tokens"] > 0
    assert sorted(os.listdir(corpus.path)) == ["meta.json", "offsets.npy", "tokens.npy"]
    # tokens.npy, streamed with its header written last, is what numpy itself writes
    np.save(tmp_path / "numpy.npy", np.asarray(corpus.tokens))
    assert (tmp_path / "numpy.npy").read_bytes() == open(
        os.path.join(corpus.path, "tokens.npy"), "rb").read()


def test_a_filesystem_without_locks_still_builds(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING"):
        corpus = cache.tokenize_corpus(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                       cache_dir=str(tmp_path))
    assert "building the token cache without a lock" in caplog.text
    reference = cache.tokenize_corpus(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                      cache_dir=str(tmp_path / "locked"))
    for name in ("tokens.npy", "offsets.npy"):  # the same bytes either way
        assert (open(os.path.join(corpus.path, name), "rb").read()
                == open(os.path.join(reference.path, name), "rb").read())


def test_same_seed_same_stream_other_seed_other_stream(t5):
    a = _take(pipeline.InputPipeline(t5(seed=1), 8, prefetch=0), 3)
    b = _take(pipeline.InputPipeline(t5(seed=1), 8, prefetch=2), 3)
    c = _take(pipeline.InputPipeline(t5(seed=2), 8, prefetch=0), 1)
    _assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["encoder_input_tokens"], c[0]["encoder_input_tokens"])
    assert a[0]["encoder_input_tokens"].dtype == np.int32
    assert set(a[0]) == set(features.ENCDEC_KEYS)
    assert a[0]["encoder_input_tokens"].shape == (8, 32)


def test_epochs_visit_everything_once_in_a_new_order(electra):
    n = electra.num_items
    rows = {}
    for epoch in (0, 1):
        seen = [tuple(electra.example(epoch * n + i)["inputs"]) for i in range(n)]
        table = {tuple(electra.table.example(r)["inputs"]) for r in range(n)}
        assert set(seen) == table and len(seen) == n
        rows[epoch] = seen
    assert rows[0] != rows[1]
    np.testing.assert_array_equal(examples.epoch_permutation(0, 1, n),
                                  examples.epoch_permutation(0, 1, n))


class _Short(examples.IndexedExamples):
    """Random short examples (a function of (seed, index)): rows pack several of them."""

    kind = "encdec"
    task_lengths = {"inputs": 16, "targets": 8}

    def _make(self, item, index):
        rng = np.random.default_rng([self.seed, index])
        return {"inputs": np.append(rng.integers(5, 99, rng.integers(0, 9)), 1) + item * 0,
                "targets": np.append(rng.integers(5, 99, rng.integers(0, 4)), 1)}


@pytest.mark.parametrize("kind", ["t5_prefix_lm", "electra", "short_packed"])
def test_resume_continues_bitwise_without_replay(t5, cache_dir, kind):
    def make_source():
        if kind == "t5_prefix_lm":
            return t5(seed=3, inputs_length=48, objective="prefix_lm")
        if kind == "short_packed":
            return _Short(1000, 3)
        return examples.electra_examples_from_files(
            bundled.VALIDATION_FILES, bundled.VOCAB_PATH, max_length=32, seed=3,
            cache_dir=cache_dir)

    source = make_source()
    first = pipeline.InputPipeline(source, 8, prefetch=0)
    _take(first, 60)
    state = first.state()
    consumed = source.calls
    expected = _take(first, 3)
    continuing = source.calls - consumed  # what the uninterrupted run spends on these batches
    assert state["batches"] == 60
    assert any(rows_done > 0 for _, rows_done in state["streams"].values())  # mid-group
    fresh_source = make_source()
    resumed = pipeline.InputPipeline(fresh_source, 8, state=state, prefetch=0)
    assert fresh_source.calls == 0  # constructing from a state reads nothing
    got = _take(resumed, 3)
    _assert_batches_equal(got, expected)
    # Restoring re-makes at most the one open packing group of each stream (one per row),
    # however far the streams had gone.
    group = features.group_size(source.task_lengths)
    assert resumed.num_streams == 8
    assert fresh_source.calls <= continuing + resumed.num_streams * group
    assert consumed >= 2 * resumed.num_streams * group  # a replay would have cost this much
    # With prefetch the thread runs ahead, but state() still describes what was handed out.
    ahead = pipeline.InputPipeline(make_source(), 8, prefetch=3)
    _take(ahead, 60)
    assert ahead.state() == state
    ahead.close()
    if kind == "short_packed":  # rows that hold several examples carry across the restore
        assert max(b["encoder_segment_ids"].max() for b in got) > 1


def test_state_rejects_a_different_pipeline(t5):
    state = pipeline.InputPipeline(t5(seed=0), 8, prefetch=0).state()
    with pytest.raises(ValueError, match="global_batch_size=8"):
        pipeline.InputPipeline(t5(seed=0), 16, state=state, prefetch=0)
    with pytest.raises(ValueError, match="seed"):
        pipeline.InputPipeline(t5(seed=1), 8, state=state, prefetch=0)


def test_sharded_global_batch_equals_host_batch(t5, cache_dir):
    mesh = mesh_lib.make_mesh(data=2, fsdp=4, model=1)
    sharding = NamedSharding(mesh, PartitionSpec((axes.DATA, axes.FSDP)))
    sharded = pipeline.InputPipeline(t5(seed=4), 16, sharding=sharding, prefetch=1)
    assert sharded.num_streams == 16  # one per row, whatever the mesh
    host = pipeline.InputPipeline(t5(seed=4), 16, prefetch=0)
    for _ in range(2):
        batch, want = next(sharded), next(host)
        for key, array in batch.items():
            assert isinstance(array, jax.Array) and array.sharding == sharding
            np.testing.assert_array_equal(np.asarray(array), want[key], err_msg=key)
            for shard in array.addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data), want[key][shard.index])
    sharded.close()


def test_electra_batches_unpacked(electra):
    batch = next(pipeline.InputPipeline(electra, 4, pack=False, prefetch=0))
    assert set(batch) == set(features.ENCODER_KEYS)
    tokens = batch["encoder_input_tokens"]
    assert (tokens[:, 0] == 3).all()  # [CLS]
    np.testing.assert_array_equal(batch["encoder_segment_ids"], (tokens != 0).astype(np.int32))
    for r in range(4):
        n = int((tokens[r] != 0).sum())
        np.testing.assert_array_equal(batch["encoder_positions"][r, :n], np.arange(n))
        assert tokens[r, n - 1] == 4  # [SEP]
        want = electra.example(r)
        np.testing.assert_array_equal(tokens[r, :n], want["inputs"])
        np.testing.assert_array_equal(batch["encoder_token_type_ids"][r, :n],
                                      want["token_type_ids"])


class _Exploding(examples.IndexedExamples):
    kind = "encdec"
    task_lengths = {"inputs": 4, "targets": 4}

    def _make(self, item, index):
        if index >= 10:
            raise OSError(f"disk gone at example {index}")
        return {"inputs": np.array([5, 1]), "targets": np.array([6, 1])}


def test_prefetch_errors_reach_the_consumer_and_close_stops_the_thread():
    before = threading.active_count()
    p = pipeline.InputPipeline(_Exploding(100, 0), 2, prefetch=2)
    with pytest.raises(OSError, match="disk gone at example 10"):
        for _ in range(50):
            next(p)
    p.close()
    assert threading.active_count() == before
    q = pipeline.InputPipeline(_Exploding(100, 0), 1, prefetch=3)
    q.close()  # closing while the producer is blocked on a full queue returns promptly
    assert not q._thread.is_alive()


def test_worker_processes_make_the_same_batches(t5):
    want = _take(pipeline.InputPipeline(t5(seed=6), 8, num_streams=2, prefetch=0), 5)
    with pipeline.InputPipeline(t5(seed=6), 8, num_streams=2, num_workers=2) as p:
        got = _take(p, 5)
        state = p.state()
    _assert_batches_equal(got, want)
    assert state["batches"] == 5


@pytest.mark.parametrize("kind", ["t5", "electra"])
def test_position_carries_over_to_another_mesh(t5, electra, kind):
    """Batches 1-2 on a (2, 4) mesh, then the state resumes on 4 devices and on the host:
    batches 3-4 are the very batches an uninterrupted pipeline gives."""
    examples = t5(seed=7) if kind == "t5" else electra
    pack = kind == "t5"

    def sharding(data, fsdp):
        mesh = mesh_lib.make_mesh(data=data, fsdp=fsdp, model=1)
        return NamedSharding(mesh, PartitionSpec((axes.DATA, axes.FSDP)))

    want = _take(pipeline.InputPipeline(examples, 8, pack=pack, prefetch=0), 4)
    first = pipeline.InputPipeline(examples, 8, pack=pack, sharding=sharding(2, 4), prefetch=0)
    _take(first, 2)
    state = first.state()
    for target in (sharding(1, 4), None):
        resumed = pipeline.InputPipeline(examples, 8, pack=pack, sharding=target, state=state,
                                         prefetch=0)
        got = _take(resumed, 2)
        for g, w in zip(got, want[2:], strict=True):
            for key in w:
                np.testing.assert_array_equal(np.asarray(g[key]), w[key], err_msg=key)


def test_old_state_version_is_refused_with_a_sentence(t5):
    state = pipeline.InputPipeline(t5(seed=0), 8, prefetch=0).state()
    state["version"] = 1
    with pytest.raises(ValueError, match="has version 1; this pretrax reads version 2 .* "
                                         "start a new workdir"):
        pipeline.InputPipeline(t5(seed=0), 8, state=state, prefetch=0)
