"""objectives/span_corruption.py against the original T5 preprocessors (PyPI ``t5==0.9.4``).

TF's random ops differ from NumPy's, so the comparisons are: length bookkeeping exactly, the
transforms on identical masks bitwise, and the masks' counts exactly and span-length
distributions statistically (against the exact composition law and against the original's).
The reference is loaded from t5/data/preprocessors.py directly: importing the ``t5`` package
would pull in its evaluation metrics' dependencies, which the preprocessors do not need.
"""

import math

import numpy as np
import pytest
import seqio
import tensorflow as tf

from objectives import span_corruption as sc
from tests.helpers import original_t5_preprocessors

T5 = original_t5_preprocessors()
T5_VOCAB_SIZE = 32100  # 32000 sentencepiece pieces + 100 extra ids (seqio vocab_size).


def original_helper(inputs_length, noise_density, mean_noise_span_length):
    return T5.random_spans_helper(
        inputs_length=inputs_length, noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1)


def span_lengths(mask):
    """(noise span lengths, non-noise span lengths) of a 1-D bool mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[-1], mask.astype(int), [-1]])) != 0)
    lengths = np.diff(edges)
    kinds = mask[edges[:-1]]
    return lengths[kinds], lengths[~kinds]


# ---------------------------------------------------------------------------------------------
# (a) length bookkeeping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs_length, expected", [
    (128, (141, 29)), (256, (284, 58)), (512, (568, 114)), (1024, (1137, 229))])
def test_raw_length_known_values(inputs_length, expected):
    assert sc.raw_length(inputs_length) == expected
    assert original_helper(inputs_length, 0.15, 3.0) == expected


def test_raw_length_equals_original_for_many_lengths_and_densities():
    compared = raised = 0
    for noise_density in (0.05, 0.1, 0.15, 0.25, 0.3, 0.5, 0.8):
        for mean in (1.0, 2.0, 3.0, 5.0, 10.0):
            for inputs_length in [*range(2, 200, 3), *range(200, 1300, 37), 512, 1024, 2048]:
                tokens_length, targets_length = original_helper(inputs_length, noise_density, mean)
                num_spans = round(round(tokens_length * noise_density) / mean)
                if num_spans == 0 and not noise_density == 0.5:
                    # Ours refuses chunks whose bookkeeping has no whole noise span.
                    with pytest.raises(ValueError, match=f"inputs_length={inputs_length} "):
                        sc.raw_length(inputs_length, noise_density, mean)
                    raised += 1
                    continue
                if num_spans == 0:
                    continue
                assert sc.raw_length(inputs_length, noise_density, mean) == (
                    tokens_length, targets_length), (inputs_length, noise_density, mean)
                compared += 1
    assert compared > 2500 and 0 < raised < compared / 5


# ---------------------------------------------------------------------------------------------
# (b) identical outputs for identical masks
# ---------------------------------------------------------------------------------------------


def original_corruption(tokens, mask, vocab_size):
    vocabulary = seqio.PassThroughVocabulary(size=vocab_size)
    inputs = T5.noise_span_to_unique_sentinel(tf.constant(tokens), tf.constant(mask), vocabulary,
                                              seeds=None)
    targets = T5.nonnoise_span_to_unique_sentinel(tf.constant(tokens), tf.constant(mask),
                                                  vocabulary, seeds=None)
    return inputs.numpy(), targets.numpy()


def test_transform_equals_original_on_identical_masks():
    data_rng = np.random.default_rng(1234)
    for case in range(120):
        length = int(data_rng.integers(1, 300))
        vocab_size = int(data_rng.choice([256, 512, 32100, 32128]))
        tokens = data_rng.integers(3, 200, length).astype(np.int32)
        kind = case % 3
        if kind == 0:  # ours, so runs alternate from non-noise
            density = float(data_rng.uniform(0.05, 0.6))
            mask = sc.random_spans_noise_mask(length, density, float(data_rng.uniform(1, 8)),
                                              sc.example_rng(7, case))
        elif kind == 1:  # i.i.d., may start (and end) with noise
            mask = data_rng.random(length) < data_rng.uniform(0.05, 0.95)
        else:  # long runs of either kind
            mask = np.repeat(data_rng.random(length) < 0.5, data_rng.integers(1, 9, length))
            mask = mask[:length]
        inputs, targets = sc.span_corruption_from_mask(tokens, mask, vocab_size,
                                                       max_sentinels=None)
        expected_inputs, expected_targets = original_corruption(tokens, mask, vocab_size)
        assert inputs.dtype == tokens.dtype and targets.dtype == tokens.dtype
        np.testing.assert_array_equal(inputs[:-1], expected_inputs)
        np.testing.assert_array_equal(targets[:-1], expected_targets)
        assert inputs[-1] == sc.EOS_ID and targets[-1] == sc.EOS_ID


def test_hand_computed_example():
    tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], dtype=np.int32)
    mask = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    inputs, targets = sc.span_corruption_from_mask(tokens, mask, vocab_size=32100)
    assert inputs.tolist() == [10, 11, 32099, 14, 15, 16, 32098, 18, 19, 1]
    assert targets.tolist() == [32099, 12, 13, 32098, 17, 32097, 1]


# ---------------------------------------------------------------------------------------------
# (c) mask counts exactly, span-length distributions statistically
# ---------------------------------------------------------------------------------------------


def original_masks(length, noise_density, mean, num_masks):
    """[num_masks, length] masks from the original, one graph call for all of them."""
    @tf.function
    def masks(seeds):  # [num_masks, 2, 2]
        return tf.map_fn(lambda s: T5.random_spans_noise_mask(length, noise_density, s, mean),
                         seeds, fn_output_signature=tf.TensorSpec([length], tf.bool))
    seeds = tf.reshape(tf.range(4 * num_masks), [num_masks, 2, 2])
    return masks(seeds).numpy()


def batch_span_lengths(masks):
    """[batch, length] masks of k alternating runs each, non-noise first -> two [batch, k]."""
    change = masks[:, 1:] != masks[:, :-1]
    num_runs = change.sum(1) + 1
    assert (num_runs == num_runs[0]).all() and num_runs[0] % 2 == 0 and not masks[:, 0].any()
    rows, cols = np.nonzero(change)
    bounds = np.zeros((len(masks), num_runs[0] + 1), dtype=int)
    bounds[:, 1:-1] = (cols + 1).reshape(len(masks), -1)
    bounds[:, -1] = masks.shape[1]
    runs = np.diff(bounds, axis=1)
    return runs[:, 1::2], runs[:, 0::2]


def test_mask_counts_equal_original():
    # Lengths where float32 and float64 rounding could differ are included by sheer number.
    check_rng = np.random.default_rng(5)
    failures = 0
    for length in [*range(0, 16), 20, 33, 57, 99, 141, 284, 568, 1137]:
        for noise_density, mean in ((0.15, 3.0), (0.5, 1.0), (0.3, 7.5), (0.05, 2.0)):
            rng = sc.example_rng(3, int(check_rng.integers(1000)))
            try:
                expected = T5.random_spans_noise_mask(length, noise_density,
                                                      tf.constant([[1, 2], [3, 4]]), mean).numpy()
            except tf.errors.InvalidArgumentError:
                # More spans than tokens of one kind: the original fails, ours says why.
                with pytest.raises(ValueError, match=f"length={length} .* needs"):
                    sc.random_spans_noise_mask(length, noise_density, mean, rng)
                failures += 1
                continue
            ours = sc.random_spans_noise_mask(length, noise_density, mean, rng)
            assert ours.dtype == np.bool_ and ours.shape == (length,)
            assert ours.sum() == expected.sum(), (length, noise_density, mean)
            for ours_spans, expected_spans in zip(span_lengths(ours), span_lengths(expected),
                                                  strict=True):
                assert len(ours_spans) == len(expected_spans), (length, noise_density, mean)
            if length >= 2:
                assert not ours[0] and ours[-1]  # starts with non-noise, ends with noise
    assert 0 < failures < 20


def composition_part_pmf(num_items, num_parts):
    """Exact law of one part of a uniformly random composition (all parts exchangeable)."""
    total = math.comb(num_items - 1, num_parts - 1)
    return np.array([math.comb(num_items - j - 1, num_parts - 2) / total
                     for j in range(1, num_items - num_parts + 2)])


def chi_square_p_value(counts, pmf):
    """Pearson chi-square goodness of fit, pooling the tail into bins of expected count >= 5."""
    from scipy import stats

    expected = pmf * counts.sum()
    cut = int(np.sum(expected >= 5))  # the pmf decreases, so these are the leading bins
    observed = np.append(counts[:cut], counts[cut:].sum()).astype(float)
    expected = np.append(expected[:cut], expected[cut:].sum())
    if expected[-1] < 5:
        observed = np.append(observed[:-2], observed[-2:].sum())
        expected = np.append(expected[:-2], expected[-2:].sum())
    return stats.chisquare(observed, expected).pvalue


@pytest.mark.parametrize("length, mean", [(568, 3.0), (141, 3.0), (300, 10.0)])
def test_span_length_distribution_matches_original(length, mean):
    num_noise, num_spans = sc.num_noise_tokens_and_spans(length, 0.15, mean)
    theirs = original_masks(length, 0.15, mean, 300)
    ours = sc.random_spans_noise_masks(length, 0.15, mean,
                                       [sc.example_rng(11, i) for i in range(3000)])
    for masks in (theirs, ours):
        assert (masks.sum(1) == num_noise).all()
    # Each implementation against the exact law of a uniformly random composition: the p-value
    # of a correct sampler is uniform, so 1e-4 fails a correct one in 1 of 10^4 seeds (and the
    # seeds are fixed); a wrong law (e.g. off-by-one cut points) gives p ~ 0 at these sizes.
    # Pooling the spans of one mask is conservative: parts with a fixed sum are negatively
    # correlated, which shrinks the statistic.
    for masks in (theirs, ours):
        noise, nonnoise = batch_span_lengths(masks)
        assert noise.shape == nonnoise.shape == (len(masks), num_spans)
        for values, items in ((noise, num_noise), (nonnoise, length - num_noise)):
            pmf = composition_part_pmf(items, num_spans)
            counts = np.bincount(values.ravel() - 1, minlength=pmf.size)
            assert chi_square_p_value(counts, pmf) > 1e-4
            # Parts of a uniform composition are exchangeable: the j-th span has mean length
            # items / num_spans for every j (a sampler biased along the chunk fails this).
            z = (values.mean(0) - items / num_spans) / (values.std(0) / np.sqrt(len(masks)))
            assert (np.abs(z) < 5).all(), z
    # Directly ours vs theirs: where noise falls along the chunk (8 bins), mean per bin, with a
    # 5-sigma bound from the per-mask spread of each sample.
    bins = np.array_split(np.arange(length), 8)
    ours_bins = np.stack([ours[:, b].mean(1) for b in bins], 1)
    theirs_bins = np.stack([theirs[:, b].mean(1) for b in bins], 1)
    sigma = np.sqrt(ours_bins.var(0) / len(ours_bins) + theirs_bins.var(0) / len(theirs_bins))
    assert (np.abs(ours_bins.mean(0) - theirs_bins.mean(0)) < 5 * sigma + 1e-9).all()
    # Longest noise span: a tail statistic sensitive to the law's shape; means within 5 sigma.
    ours_max = batch_span_lengths(ours)[0].max(1).astype(float)
    theirs_max = batch_span_lengths(theirs)[0].max(1).astype(float)
    sigma = math.sqrt(ours_max.var() / ours_max.size + theirs_max.var() / theirs_max.size)
    assert abs(ours_max.mean() - theirs_max.mean()) < 5 * sigma


# ---------------------------------------------------------------------------------------------
# (d) the 568-token case
# ---------------------------------------------------------------------------------------------


def test_568_tokens_give_512_inputs_and_114_targets():
    tokens = np.random.default_rng(0).integers(3, 32000, 568).astype(np.int32)
    for index in range(20):
        out = sc.span_corruption(tokens, sc.example_rng(42, index), T5_VOCAB_SIZE)
        inputs, targets = out["inputs"], out["targets"]
        assert inputs.shape == (512,) and targets.shape == (114,)
        sentinels = np.arange(T5_VOCAB_SIZE - 1, T5_VOCAB_SIZE - 29, -1)
        assert inputs[-2] == T5_VOCAB_SIZE - 28 and inputs[-1] == sc.EOS_ID
        np.testing.assert_array_equal(inputs[inputs >= 32000], sentinels)
        np.testing.assert_array_equal(targets[targets >= 32000], sentinels)
        assert targets[0] == T5_VOCAB_SIZE - 1 and targets[-2] < 32000 and targets[-1] == 1
        # Filling each sentinel of the inputs with its span from the targets restores the text.
        pieces = np.split(targets[:-1], np.flatnonzero(targets[:-1] >= 32000))[1:]
        spans = {int(p[0]): p[1:] for p in pieces}
        restored = np.concatenate([spans[t] if t >= 32000 else [t] for t in inputs[:-1]])
        np.testing.assert_array_equal(restored, tokens)


# ---------------------------------------------------------------------------------------------
# Randomness, batching, errors
# ---------------------------------------------------------------------------------------------


def test_example_rng_depends_only_on_seed_and_index():
    np.random.seed(0)
    first = sc.random_spans_noise_mask(568, 0.15, 3.0, sc.example_rng(5, 17))
    np.random.seed(1)
    sc.random_spans_noise_mask(568, 0.15, 3.0, sc.example_rng(5, 16))  # other work in between
    again = sc.random_spans_noise_mask(568, 0.15, 3.0, sc.example_rng(5, 17))
    np.testing.assert_array_equal(first, again)
    others = [sc.random_spans_noise_mask(568, 0.15, 3.0, sc.example_rng(s, i))
              for s, i in ((5, 18), (6, 17), (17, 5))]
    assert all((first != other).any() for other in others)
    for seed, index in ((-1, 0), (0, 2**64), (1.5, 0), (0, "3")):
        with pytest.raises(ValueError, match="example_rng"):
            sc.example_rng(seed, index)


def test_batch_equals_single():
    tokens = np.random.default_rng(3).integers(3, 32000, (16, 141)).astype(np.int32)
    batch = sc.span_corruption_batch(tokens, [sc.example_rng(9, i) for i in range(16)],
                                     T5_VOCAB_SIZE)
    assert batch["inputs"].shape == (16, 128) and batch["targets"].shape == (16, 29)
    for i in range(16):
        single = sc.span_corruption(tokens[i], sc.example_rng(9, i), T5_VOCAB_SIZE)
        np.testing.assert_array_equal(batch["inputs"][i], single["inputs"])
        np.testing.assert_array_equal(batch["targets"][i], single["targets"])


def test_invalid_parameters_raise():
    rng = sc.example_rng(0, 0)
    tokens = np.arange(568, dtype=np.int32) + 3
    for density in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="noise_density"):
            sc.span_corruption(tokens, rng, T5_VOCAB_SIZE, noise_density=density)
        with pytest.raises(ValueError, match="noise_density"):
            sc.raw_length(512, density)
    for mean in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mean_noise_span_length"):
            sc.random_spans_noise_mask(568, 0.15, mean, rng)
    with pytest.raises(ValueError, match="inputs_length=5 is too short"):
        sc.raw_length(5)
    with pytest.raises(ValueError, match="max_sentinels=20"):  # 28 spans, 20 extra ids
        sc.span_corruption(tokens, rng, T5_VOCAB_SIZE, max_sentinels=20)
    with pytest.raises(ValueError, match="vocab_size=30 has no room"):
        sc.span_corruption(tokens, rng, 30)
    with pytest.raises(ValueError, match="noise_mask"):
        sc.span_corruption_from_mask(tokens, np.zeros(5, bool), T5_VOCAB_SIZE)
    with pytest.raises(ValueError, match="tokens"):
        sc.span_corruption_from_mask(tokens.astype(float), np.zeros(568, bool), T5_VOCAB_SIZE)


@pytest.mark.parametrize("mask", [
    [0, 0, 1, 1, 0, 1, 0, 0, 1, 1],  # noise runs in the middle and at the end
    [1, 1, 0, 0, 0, 1, 1, 1, 0, 1],  # noise at the start, adjacent runs of both kinds
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no noise at all
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # all noise
    [1, 0, 1, 0, 1, 0, 1, 0, 1, 0],  # alternating: five runs each
])
def test_unique_sentinel_transforms_match_the_originals(mask):
    """The public mirrors of T5's ``noise_span_to_unique_sentinel`` and
    ``nonnoise_span_to_unique_sentinel``, bitwise on hand-made masks."""
    tokens = np.arange(10, 20, dtype=np.int32)
    noise = np.asarray(mask, bool)
    vocabulary = seqio.PassThroughVocabulary(size=T5_VOCAB_SIZE)
    for ours, theirs in ((sc.noise_span_to_unique_sentinel, T5.noise_span_to_unique_sentinel),
                         (sc.nonnoise_span_to_unique_sentinel,
                          T5.nonnoise_span_to_unique_sentinel)):
        want = theirs(tf.constant(tokens), tf.constant(noise), vocabulary, seeds=None).numpy()
        got = ours(tokens, noise, T5_VOCAB_SIZE)
        assert got.dtype.kind == want.dtype.kind
        np.testing.assert_array_equal(got, want)
