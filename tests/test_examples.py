"""Index-addressable examples: the batched path (one packing group at a time) equals the
per-example path bitwise, and the cheap generators equal ``example_rng``."""

import numpy as np
import pytest

from data import bundled, cache, examples, features, pipeline
from objectives import registry, span_corruption


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tokens"))


def _make(cache_dir, objective, inputs_length, seed=5):
    return examples.t5_examples(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                denoiser=registry.denoiser(objective),
                                inputs_length=inputs_length, seed=seed,
                                cache_dir=cache_dir)


def _assert_same(got, want, where):
    assert got.keys() == want.keys(), where
    for key in want:
        assert got[key].dtype == want[key].dtype == np.int32, (where, key)
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{where} {key}")


@pytest.mark.parametrize("objective,inputs_length", [("span_corruption", 64),
                                                     ("span_corruption", 128),
                                                     ("iid_replace_spans", 48),
                                                     ("prefix_lm", 40)])
def test_batched_examples_equal_one_at_a_time(cache_dir, objective, inputs_length):
    batched = _make(cache_dir, objective, inputs_length)
    single = _make(cache_dir, objective, inputs_length)
    # Only span corruption has a batched objective; the others still share cheap generators.
    assert (batched.batch_fn is not None) == (objective == "span_corruption")
    n = batched.num_items
    # 300 indices straddling an epoch boundary, in a shuffled order, then again in two calls
    # (the generators are recycled between calls) -- every row equals example(index).
    indices = np.random.default_rng(0).permutation(np.arange(n - 150, n + 150)).tolist()
    got = batched.examples(indices)
    again = batched.examples(indices[:100]) + batched.examples(indices[100:])
    assert len(got) == len(again) == len(indices)
    for index, row, row_again in zip(indices, got, again, strict=True):
        want = single.example(index)
        _assert_same(row, want, f"{objective} index {index}")
        _assert_same(row_again, want, f"{objective} index {index} (2nd call)")
    assert batched.calls == 2 * len(indices) and single.calls == len(indices)
    if objective == "span_corruption":
        raw, targets = span_corruption.raw_length(inputs_length)
        assert {(r["inputs"].size, r["targets"].size) for r in got} == {(inputs_length, targets)}
    assert batched.examples([]) == []


def test_packing_group_equals_packing_single_examples(cache_dir):
    source = _make(cache_dir, "span_corruption", 64, seed=9)
    reference = _make(cache_dir, "span_corruption", 64, seed=9)
    size = features.group_size(source.task_lengths)
    got = pipeline.make_group(source, 1, 3, 2 * size, size, True)
    indices = [pipeline.stream_example_index(reference.num_items, 3, 1, j)
               for j in range(2 * size, 3 * size)]
    rows = features.pack_group([reference.example(i) for i in indices], reference.task_lengths)
    want = features.encdec_features(rows, True)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("seed,indices", [(0, [0, 1, 2]), (7, [5, 2**40 + 3, 5]),
                                          (2**64 - 1, [2**64 - 1, 0, 2**63])])
def test_example_rngs_equal_example_rng(seed, indices):
    pool = [np.random.Generator(np.random.Philox(key=123))]
    pool[0].random(5)  # a used generator: its counter and buffer must be reset too
    pool[0].integers(0, 10)
    rngs = examples.example_rngs(seed, indices, pool)
    assert len(rngs) == len(indices) and len(pool) == len(indices)
    for rng, index in zip(rngs, indices, strict=True):
        want = span_corruption.example_rng(seed, index)
        np.testing.assert_array_equal(rng.random(7), want.random(7))
        np.testing.assert_array_equal(rng.integers(0, 2**31, 5), want.integers(0, 2**31, 5))
        np.testing.assert_array_equal(rng.permutation(9), want.permutation(9))


def test_example_rngs_reject_out_of_range_like_example_rng():
    with pytest.raises(ValueError, match="index=-1 must be in"):
        examples.example_rngs(0, [3, -1], [])
    with pytest.raises(ValueError, match=r"seed=18446744073709551616 must be in"):
        examples.example_rngs(2**64, [3], [])


def test_pickled_examples_drop_their_caches(cache_dir):
    import pickle

    source = _make(cache_dir, "span_corruption", 64)
    source.examples(range(10))
    copy = pickle.loads(pickle.dumps(source))
    assert copy.calls == 0 and copy._rng_pools == [] and copy._permutations == {}
    _assert_same(copy.examples([3])[0], source.example(3), "after pickling")


def test_pipeline_reexports_the_moved_names():
    for module, names in ((cache, ("CorpusTokens", "tokenize_corpus", "load_cache", "cache_key")),
                          (examples, ("IndexedExamples", "T5Examples", "ElectraExamples",
                                      "t5_examples", "electra_examples_from_files",
                                      "epoch_permutation"))):
        for name in names:
            assert getattr(pipeline, name) is getattr(module, name), name


def test_chunks_gather_the_token_cache(cache_dir):
    source = _make(cache_dir, "span_corruption", 64)
    tokens = np.asarray(source.corpus.tokens)
    raw = source.raw_length
    items = [0, source.num_items - 1, 17, 17]
    got = source.chunks(items)
    assert got.dtype == np.int32 and got.shape == (4, raw)
    for row, item in zip(got, items, strict=True):
        np.testing.assert_array_equal(row, tokens[item * raw:(item + 1) * raw])
        np.testing.assert_array_equal(row, source.chunk(item))
    with pytest.raises(ValueError, match="'prefix_lm' cuts documents"):
        _make(cache_dir, "prefix_lm", 40).chunks([0])
