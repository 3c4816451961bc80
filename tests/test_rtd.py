"""objectives/masking.py and objectives/rtd.py against hand-built cases and NumPy computations.

Toy "models" are lookup tables, so every logit, sample and loss can be recomputed in NumPy: the
generator's table gives the id perm(t) a margin of 100 over the rest, so its Gumbel-max sample is
known (Gumbel noise on float32 uniforms stays within about [-3, 17]).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from objectives import masking, rtd

PAD, CLS, SEP, MASK = 0, 1, 2, 3
VOCAB = 32
LENGTH = 32


def _key(seed: int) -> jax.Array:
    # rbg keys compile several times faster than threefry on XLA:CPU; the objectives only split
    # and draw from keys, so they are agnostic to the implementation. The jit test below runs
    # the default (threefry) implementation in test_determinism_and_errors.
    return jax.random.key(seed, impl="rbg")


def _five_sigma(p: float, n: int) -> float:
    return 5.0 * np.sqrt(p * (1 - p) / n)


def _batch() -> np.ndarray:
    """4 x 32: real lengths 32, 20, 9 and an all-padding row; normal ids in [4, 32)."""
    rng = np.random.default_rng(0)
    tokens = np.zeros((4, LENGTH), np.int32)
    for row, real in enumerate([32, 20, 9]):
        tokens[row, :real] = rng.integers(4, VOCAB, size=real)
        tokens[row, 0], tokens[row, real - 1] = CLS, SEP
    return tokens


def _perm() -> np.ndarray:
    """Even ids map to themselves (sample == original -> label 0), odd ids to the next one."""
    perm = np.array([t if t % 2 == 0 else (t + 1) % VOCAB for t in range(VOCAB)])
    perm[perm < 4] = 4
    perm[MASK] = 10
    return perm


def _params(seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    gen = 100.0 * np.eye(VOCAB)[_perm()] + 0.5 * rng.normal(size=(VOCAB, VOCAB))
    return {
        "gen": jnp.asarray(gen, jnp.float32),
        "disc": jnp.asarray(rng.normal(size=VOCAB), jnp.float32),
        "disc_pos": jnp.asarray(rng.normal(size=LENGTH), jnp.float32),
        "main": jnp.asarray(rng.normal(size=(VOCAB, VOCAB)) * 2, jnp.float32),
        "copy": jnp.asarray(rng.normal(size=VOCAB) * 2, jnp.float32),
    }


def _models(params, seen=None):
    """generator_fn / discriminator_fn / main MLM fns over the lookup tables (optional log)."""
    seen = {} if seen is None else seen

    def generator_fn(masked, positions):
        seen["masked"], seen["positions"] = masked, positions
        return params["gen"][jnp.take_along_axis(masked, positions, axis=1)]

    def discriminator_fn(corrupted):
        seen["corrupted"] = corrupted
        return params["disc"][corrupted] + params["disc_pos"][None, :]

    def main_slots_fn(corrupted, positions):
        seen["corrupted"] = corrupted
        return params["main"][jnp.take_along_axis(corrupted, positions, axis=1)]

    def main_all_fn(corrupted):
        seen["corrupted"] = corrupted
        return params["main"][corrupted], params["copy"][corrupted]

    return generator_fn, discriminator_fn, main_slots_fn, main_all_fn


CFG = rtd.RTDConfig(mask_id=MASK, cls_id=CLS, sep_id=SEP)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(
        -1, keepdims=True)


def _bce(logits, labels):
    x = np.asarray(logits, np.float64)
    return np.logaddexp(0, -x) * labels + np.logaddexp(0, x) * (1 - labels)


def _reference_generator_side(tokens, seen, params):
    """NumPy: slot weights, MLM loss, known samples, corrupted tokens and labels."""
    positions = np.asarray(seen["positions"])
    masked = np.asarray(seen["masked"])
    weights = (positions != 0).astype(np.float64)  # every real row starts with [CLS]
    rows = np.arange(tokens.shape[0])[:, None]
    ids = tokens[rows, positions]
    inputs = masked[rows, positions]
    gen_logits = np.asarray(params["gen"], np.float64)[inputs]
    ce = -np.take_along_axis(_log_softmax(gen_logits), ids[..., None], -1)[..., 0]
    mlm = (ce * weights).sum() / weights.sum()
    gen_acc = ((gen_logits.argmax(-1) == ids) * weights).sum() / weights.sum()
    samples = _perm()[inputs]
    corrupted = tokens.copy()
    for b, s in zip(*np.nonzero(weights), strict=True):
        corrupted[b, positions[b, s]] = samples[b, s]
    labels = (corrupted != tokens).astype(np.float64)
    return positions, weights, ids, mlm, gen_acc, corrupted, labels


# ----------------------------------------------------------------------------------------------
# Masking.
# ----------------------------------------------------------------------------------------------


def test_budget_numbers():
    assert masking.prediction_budget(128, 0.15) == 19
    assert masking.prediction_budget(512, 0.15) == 79
    assert masking.prediction_budget(512, 0.25) == 130
    # Static output shapes, traced only (the 128 case also runs in the 85/15 statistics test).
    for length, slots in [(128, 19), (512, 79)]:
        shapes = jax.eval_shape(functools.partial(
            masking.mask_tokens, mask_prob=0.15, mask_id=MASK, special_ids=(CLS, SEP)),
            _key(0), jnp.zeros((2, length), jnp.int32))
        assert shapes.positions.shape == shapes.ids.shape == shapes.weights.shape == (2, slots)
        assert shapes.masked_tokens.shape == (2, length)


def _count_rows() -> tuple[np.ndarray, list[int]]:
    """Rows whose counts at p = 0.25, L = 32 (N = 8) are worked out by hand."""
    tokens = np.zeros((6, 32), np.int32)
    tokens[0] = 5 + np.arange(32) % 20  # 32 real -> round(8) = 8
    tokens[1, :10] = 9  # 10 real -> round(2.5) = 2 (half to even, like tf.round)
    tokens[2, :14] = 11  # 14 real -> round(3.5) = 4
    tokens[3, :3] = [CLS, 12, SEP]  # 3 real -> max(1, round(0.75)) = 1: only position 1
    # row 4: all padding -> no candidate -> 0
    tokens[5, :20] = [CLS] + [MASK] * 8 + [13, 14] + [SEP] * 9  # wants 5, has 2 candidates
    tokens[[0, 1, 2], 0] = CLS
    tokens[[0, 1, 2], [31, 9, 13]] = SEP
    return tokens, [8, 2, 4, 1, 0, 2]


def test_counts_candidates_and_layout_over_many_keys():
    tokens, counts = _count_rows()
    fn = jax.jit(jax.vmap(functools.partial(
        masking.mask_tokens, tokens=jnp.asarray(tokens), mask_prob=0.25, mask_id=MASK,
        special_ids=(CLS, SEP))))
    out = jax.tree.map(np.asarray, fn(jax.random.split(_key(3), 64)))
    assert out.positions.shape == (64, 6, 8)
    np.testing.assert_array_equal(out.weights.sum(-1), np.tile(counts, (64, 1)))
    candidate = (tokens != PAD) & (tokens != CLS) & (tokens != SEP) & (tokens != MASK)
    for k in range(64):
        for b in range(6):
            used = out.weights[k, b] > 0
            chosen = out.positions[k, b, used]
            assert np.all(candidate[b, chosen])  # never pad or a special
            assert np.all(np.diff(chosen) > 0)  # distinct (without replacement), ascending
            assert np.all(out.positions[k, b, ~used] == 0) and np.all(out.ids[k, b, ~used] == 0)
            np.testing.assert_array_equal(out.ids[k, b, used], tokens[b, chosen])
            new = out.masked_tokens[k, b]
            assert np.all((new[chosen] == MASK) | (new[chosen] == tokens[b, chosen]))
            untouched = np.ones(32, bool)
            untouched[chosen] = False
            np.testing.assert_array_equal(new[untouched], tokens[b, untouched])
    assert np.all(out.positions[:, 3, 0] == 1)
    assert np.all(out.positions[:, 5, :2] == [9, 10])


def test_mask_keep_split_statistics():
    # 20 keys x 64 rows x 19 slots = 24,320 chosen positions; mask fraction ~ Binomial / n.
    tokens = jnp.asarray(np.random.default_rng(5).integers(4, VOCAB, size=(64, 128)))
    fn = jax.jit(jax.vmap(functools.partial(
        masking.mask_tokens, tokens=tokens, mask_prob=0.15, mask_id=MASK, special_ids=(CLS, SEP))))
    out = fn(jax.random.split(_key(7), 20))
    # 128 real tokens -> round(19.2) = 19: every one of the 19 slots used in every row.
    assert float(out.weights.sum()) == 20 * 64 * 19
    rows = jnp.arange(64)[None, :, None]
    at_slots = out.masked_tokens[jnp.arange(20)[:, None, None], rows, out.positions]
    n = 20 * 64 * 19
    frac_mask = float(jnp.mean(at_slots == MASK))
    assert abs(frac_mask - 0.85) < _five_sigma(0.85, n)
    assert float(jnp.mean((at_slots == MASK) | (at_slots == out.ids))) == 1.0


def test_bert_80_10_10_option_statistics():
    tokens = jnp.asarray(np.random.default_rng(6).integers(4, VOCAB, size=(64, 128)))
    fn = jax.jit(jax.vmap(functools.partial(
        masking.mask_tokens, tokens=tokens, mask_prob=0.15, mask_id=MASK, special_ids=(CLS, SEP),
        mask_replace_prob=0.8, random_token_prob=0.1, vocab_size=VOCAB)))
    out = fn(jax.random.split(_key(8), 20))
    at_slots = out.masked_tokens[jnp.arange(20)[:, None, None], jnp.arange(64)[None, :, None],
                                 out.positions]
    n = 20 * 64 * 19
    # A random draw is uniform over [0, V): it lands on [MASK] or the original w.p. 1/V each.
    p_mask = 0.8 + 0.1 / VOCAB
    p_other = 0.1 * (VOCAB - 2) / VOCAB
    assert abs(float(jnp.mean(at_slots == MASK)) - p_mask) < _five_sigma(p_mask, n)
    other = (at_slots != MASK) & (at_slots != out.ids)
    assert abs(float(jnp.mean(other)) - p_other) < _five_sigma(p_other, n)


def test_positions_are_uniform_among_candidates():
    # [CLS] + 14 candidates + [SEP]: 4 of the 14 chosen per row, each w.p. 4/14.
    rows = 4000
    tokens = jnp.tile(jnp.asarray([CLS] + list(range(4, 18)) + [SEP]), (rows, 1))
    out = masking.mask_tokens(_key(11), tokens, mask_prob=0.25, mask_id=MASK,
                              special_ids=(CLS, SEP))
    hits = np.bincount(np.asarray(out.positions).ravel(), minlength=16)
    assert hits[0] == 0 and hits[15] == 0
    p = 4 / 14
    assert np.all(np.abs(hits[1:15] / rows - p) < _five_sigma(p, rows))


def test_determinism_and_errors():
    tokens = jnp.asarray(_batch())
    kwargs = dict(mask_prob=0.15, mask_id=MASK, special_ids=(CLS, SEP))
    # The default (threefry) key implementation, jitted.
    fn = jax.jit(functools.partial(masking.mask_tokens, **kwargs))
    a = fn(jax.random.key(1), tokens)
    b = fn(jax.random.key(1), tokens)
    c = fn(jax.random.key(2), tokens)
    assert np.asarray(a.weights.sum(-1)).tolist() == [4.0, 3.0, 1.0, 0.0]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a.positions), np.asarray(c.positions))
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="mask_prob"):
            masking.mask_tokens(_key(0), tokens, mask_prob=bad, mask_id=MASK)
    with pytest.raises(ValueError, match="N=0"):  # int(0.105 * 4) = 0
        masking.mask_tokens(_key(0), tokens[:, :4], mask_prob=0.1, mask_id=MASK)
    with pytest.raises(ValueError, match="N=0"):
        masking.mask_tokens(_key(0), tokens, max_predictions=0, **kwargs)
    with pytest.raises(ValueError, match="vocab_size"):
        masking.mask_tokens(_key(0), tokens, random_token_prob=0.1, **kwargs)


# ----------------------------------------------------------------------------------------------
# Sampling and corruption.
# ----------------------------------------------------------------------------------------------


def test_sample_follows_crafted_logits():
    want = np.random.default_rng(2).integers(0, VOCAB, size=(3, 5))
    logits = 100.0 * jax.nn.one_hot(want, VOCAB)
    for seed in range(5):
        got = masking.sample_replacements(_key(seed), logits)
        np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("temperature,p_one", [(1.0, 0.75), (2.0, np.sqrt(3) / (1 + np.sqrt(3)))])
def test_gumbel_max_matches_softmax(temperature, p_one):
    # softmax([0, log 3] / T): p(1) = 3^(1/T) / (1 + 3^(1/T)).
    logits = jnp.tile(jnp.array([0.0, np.log(3.0)]), (200, 100, 1))
    got = masking.sample_replacements(_key(4), logits, temperature=temperature)
    assert abs(float(jnp.mean(got == 1)) - p_one) < _five_sigma(p_one, 20000)


@pytest.mark.parametrize("vocab", [37, 64])  # 6 blocks of 7 (5 padding slots); 8 blocks of 8
def test_two_stage_sampling_matches_softmax_over_many_blocks(vocab):
    rng = np.random.default_rng(vocab)
    row = rng.normal(size=vocab) * 1.5
    block = math.isqrt(vocab - 1) + 1
    row[block:2 * block] = -np.inf  # a whole block removed from the support
    row[3] = -np.inf  # and one token of another
    n = (400, 100)
    original = jnp.full(n, 20, jnp.int32)
    got = np.asarray(masking.sample_replacements(
        _key(8), jnp.tile(jnp.asarray(row, jnp.float32), n + (1,)), temperature=2.0,
        disallow_correct=True, original_ids=original))
    allowed = np.isfinite(row) & (np.arange(vocab) != 20)
    want = np.where(allowed, np.exp(row / 2.0 - np.max(row[allowed] / 2.0)), 0.0)
    want /= want.sum()
    counts = np.bincount(got.ravel(), minlength=vocab)
    assert counts.shape == (vocab,) and counts[~allowed].sum() == 0
    for token in np.flatnonzero(allowed):
        p = want[token]
        assert abs(counts[token] / got.size - p) < _five_sigma(p, got.size), token


def test_disallow_correct_and_uniform():
    n = (200, 100)
    original = jnp.zeros(n, jnp.int32)
    logits = jnp.tile(jnp.array([100.0, 0.0, np.log(2.0), np.log(3.0)]), n + (1,))
    got = masking.sample_replacements(_key(5), logits, disallow_correct=True,
                                      original_ids=original)
    assert not bool(jnp.any(got == 0))
    # The remaining mass renormalises to [1, 2, 3] / 6.
    for token, p in [(1, 1 / 6), (2, 2 / 6), (3, 3 / 6)]:
        assert abs(float(jnp.mean(got == token)) - p) < _five_sigma(p, 20000)
    got = masking.sample_replacements(_key(6), logits, uniform=True)
    for token in range(4):
        assert abs(float(jnp.mean(got == token)) - 0.25) < _five_sigma(0.25, 20000)
    got = masking.sample_replacements(_key(7), logits, uniform=True,
                                      disallow_correct=True, original_ids=original)
    assert not bool(jnp.any(got == 0))
    with pytest.raises(ValueError, match="original_ids"):
        masking.sample_replacements(_key(0), logits, disallow_correct=True)
    with pytest.raises(ValueError, match="temperature"):
        masking.sample_replacements(_key(0), logits, temperature=0.0)


def test_corrupt_by_hand():
    tokens = jnp.array([[CLS, 5, 6, 7, SEP, PAD]])
    positions = jnp.array([[1, 3, 0]])
    weights = jnp.array([[1.0, 1.0, 0.0]])
    samples = jnp.array([[9, 7, 55]])  # 7 == original -> label 0; the unused slot writes nothing
    corrupted, labels = masking.corrupt(tokens, positions, weights, samples)
    assert np.asarray(corrupted).tolist() == [[CLS, 9, 6, 7, SEP, PAD]]
    assert np.asarray(labels).tolist() == [[0, 1, 0, 0, 0, 0]]
    spread = masking.slots_to_length(positions, weights, 6)
    assert np.asarray(spread).tolist() == [[0, 1, 0, 1, 0, 0]]


# ----------------------------------------------------------------------------------------------
# Objectives.
# ----------------------------------------------------------------------------------------------


DISALLOW_CFG = rtd.RTDConfig(mask_id=MASK, cls_id=CLS, sep_id=SEP, disallow_correct=True)
# The objectives of Table 5 by the loss each uses (objectives/registry.py names them).
LOSSES = {"electra": rtd.rtd_loss, "electra_15": rtd.electra_15_loss, "mlm": rtd.mlm_loss,
          "replace_mlm": rtd.replace_mlm_loss, "all_tokens_mlm": rtd.all_tokens_mlm_loss}


@functools.cache
def _jitted_runs() -> dict:
    """Every objective (and ELECTRA with disallow_correct) in ONE jitted program, key 9.

    The dict of what each callable saw is filled with tracers during tracing and returned as
    outputs of the same program, so the NumPy references can use the chosen positions.
    """
    batch = {"encoder_input_tokens": jnp.asarray(_batch())}

    def run_all(params, key):
        out = {}
        runs = [(name, LOSSES[name], CFG) for name in LOSSES]
        runs.append(("electra_disallow", rtd.rtd_loss, DISALLOW_CFG))
        for name, objective, cfg in runs:
            seen = {}
            gen_fn, disc_fn, main_slots, main_all = _models(params, seen)
            second = {"replace_mlm": main_slots, "all_tokens_mlm": main_all}.get(name, disc_fn)
            if name == "mlm":
                second = None
            loss, metrics = objective(key, batch, gen_fn, second, cfg)
            out[name] = (loss, metrics, seen)
        return out

    return jax.tree.map(np.asarray, jax.jit(run_all)(_params(), _key(9)))


def _disc_logits(params, corrupted):
    return (np.asarray(params["disc"], np.float64)[corrupted]
            + np.asarray(params["disc_pos"], np.float64)[None])


def test_every_loss_runs_jitted():
    for name, (loss, metrics, _) in _jitted_runs().items():
        assert np.isfinite(loss) and float(metrics["loss"]) == float(loss), name


def test_rtd_loss_matches_numpy():
    tokens, params = _batch(), _params()
    loss, metrics, seen = _jitted_runs()["electra"]
    positions, weights, ids, mlm, gen_acc, corrupted, labels = _reference_generator_side(
        tokens, seen, params)
    # int(0.155 * 32) = 4 slots; rows want min(4, round(4.8)), round(3.0), round(1.35), 0.
    np.testing.assert_array_equal(weights.sum(-1), [4, 3, 1, 0])
    np.testing.assert_array_equal(seen["corrupted"], corrupted)
    real = (tokens != PAD).astype(np.float64)
    disc_logits = _disc_logits(params, corrupted)
    disc = (_bce(disc_logits, labels) * real).sum() / real.sum()
    assert float(metrics["mlm_loss"]) == pytest.approx(mlm, rel=1e-5)
    assert float(metrics["disc_loss"]) == pytest.approx(disc, rel=1e-5)
    assert float(loss) == pytest.approx(mlm + 50.0 * disc, rel=1e-5)
    pred = disc_logits > 0
    tp = (pred * labels * real).sum()
    assert float(metrics["disc_accuracy"]) == pytest.approx(((pred == labels) * real).sum()
                                                            / real.sum(), rel=1e-6)
    assert float(metrics["disc_precision"]) == pytest.approx(tp / (pred * real).sum(), rel=1e-6)
    assert float(metrics["disc_recall"]) == pytest.approx(tp / labels.sum(), rel=1e-6)
    assert float(metrics["replaced_fraction"]) == pytest.approx(labels.sum() / real.sum())
    assert float(metrics["gen_accuracy"]) == pytest.approx(gen_acc, rel=1e-6)
    assert float(metrics["masked_count"]) == 8.0
    assert 0 < labels.sum() < 8  # the table makes both replaced and "sampled the original" occur


def test_disallow_correct_replaces_every_chosen_position():
    tokens = _batch()
    _, metrics, seen = _jitted_runs()["electra_disallow"]
    positions = seen["positions"]
    chosen = positions != 0
    rows = np.arange(4)[:, None]
    assert np.all(seen["corrupted"][rows, positions][chosen] != tokens[rows, positions][chosen])
    # 8 chosen positions, all replaced, among 61 real tokens.
    assert float(metrics["replaced_fraction"]) == pytest.approx(8 / 61)
    assert float(metrics["disc_recall"]) <= 1.0


def test_generator_gets_no_gradient_from_discriminator():
    batch = {"encoder_input_tokens": jnp.asarray(_batch())}

    def loss_of(p, cfg):
        gen_fn, disc_fn, _, _ = _models(p)
        return rtd.rtd_loss(_key(3), batch, gen_fn, disc_fn, cfg)[0]

    def grads(p):
        cfgs = [CFG, dataclasses.replace(CFG, gen_weight=0.0),
                dataclasses.replace(CFG, disc_weight=0.0)]
        return [jax.grad(loss_of)(p, cfg) for cfg in cfgs]

    both, disc_only, gen_only = jax.tree.map(np.asarray, jax.jit(grads)(_params()))
    assert np.all(disc_only["gen"] == 0.0)
    assert np.any(disc_only["disc"] != 0.0)
    assert np.any(both["gen"] != 0.0)
    np.testing.assert_array_equal(both["gen"], gen_only["gen"])
    assert np.all(gen_only["disc"] == 0.0)


def test_electra_15_scores_only_chosen_positions():
    tokens, params = _batch(), _params()
    loss, metrics, seen = _jitted_runs()["electra_15"]
    positions, weights, _, mlm, _, corrupted, labels = _reference_generator_side(
        tokens, seen, params)
    chosen = np.zeros(tokens.shape)
    for b, s in zip(*np.nonzero(weights), strict=True):
        chosen[b, positions[b, s]] = 1.0
    disc = (_bce(_disc_logits(params, corrupted), labels) * chosen).sum() / chosen.sum()
    assert float(metrics["disc_loss"]) == pytest.approx(disc, rel=1e-5)
    assert float(loss) == pytest.approx(mlm + 50.0 * disc, rel=1e-5)


def test_mlm_baseline():
    tokens, params = _batch(), _params()
    loss, metrics, seen = _jitted_runs()["mlm"]
    _, _, _, mlm, gen_acc, _, _ = _reference_generator_side(tokens, seen, params)
    assert float(loss) == pytest.approx(mlm, rel=1e-5)
    assert float(metrics["gen_accuracy"]) == pytest.approx(gen_acc, rel=1e-6)
    assert "disc_loss" not in metrics and "corrupted" not in seen


def test_replace_mlm_feeds_samples_not_mask():
    tokens, params = _batch(), _params()
    loss, metrics, seen = _jitted_runs()["replace_mlm"]
    positions, weights, ids, mlm, _, corrupted, _ = _reference_generator_side(
        tokens, seen, params)
    np.testing.assert_array_equal(seen["corrupted"], corrupted)
    assert not np.any(corrupted == MASK)
    inputs = corrupted[np.arange(4)[:, None], positions]
    main_logits = np.asarray(params["main"], np.float64)[inputs]
    ce = -np.take_along_axis(_log_softmax(main_logits), ids[..., None], -1)[..., 0]
    main = (ce * weights).sum() / weights.sum()
    assert float(metrics["main_mlm_loss"]) == pytest.approx(main, rel=1e-5)
    assert float(loss) == pytest.approx(mlm + main, rel=1e-5)


def test_copy_mechanism_log_prob_is_stable():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 6, 5)) * 3
    gates = np.array([[-60.0, -2.0, 0.0, 1.5, 60.0, 60.0], [60.0, -60.0, 3.0, -0.5, 0.2, 9.0]])
    inputs = np.array([[1, 2, 3, 4, 0, 1], [2, 2, 0, 1, 4, 3]])
    targets = np.array([[1, 0, 3, 1, 0, 2], [2, 1, 0, 1, 3, 3]])
    got = rtd.copy_mechanism_log_prob(jnp.asarray(logits, jnp.float32),
                                      jnp.asarray(gates, jnp.float32), jnp.asarray(inputs),
                                      jnp.asarray(targets))
    # D and 1 - D each computed directly, so neither rounds to 0 in float64 at |gate| = 60.
    d, one_minus_d = 1 / (1 + np.exp(-gates)), 1 / (1 + np.exp(gates))
    q = np.exp(np.take_along_axis(_log_softmax(logits), targets[..., None], -1)[..., 0])
    want = np.log(d * (inputs == targets) + one_minus_d * q)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    assert float(got[0, 5]) < -50  # saturated copy gate, target not in the input


def test_all_tokens_mlm_matches_numpy():
    tokens, params = _batch(), _params()
    loss, metrics, seen = _jitted_runs()["all_tokens_mlm"]
    _, _, _, mlm, _, corrupted, _ = _reference_generator_side(tokens, seen, params)
    np.testing.assert_array_equal(seen["corrupted"], corrupted)
    real = (tokens != PAD).astype(np.float64)
    gates = np.asarray(params["copy"], np.float64)[corrupted]
    log_q = np.take_along_axis(_log_softmax(np.asarray(params["main"], np.float64)[corrupted]),
                               tokens[..., None], -1)[..., 0]
    p = (corrupted == tokens) / (1 + np.exp(-gates)) + np.exp(log_q) / (1 + np.exp(gates))
    main = (-np.log(p) * real).sum() / real.sum()
    assert float(metrics["main_mlm_loss"]) == pytest.approx(main, rel=1e-5)
    assert float(loss) == pytest.approx(mlm + main, rel=1e-5)
    # Accuracy of the mixture's argmax, over real tokens.
    mixture = (np.exp(_log_softmax(np.asarray(params["main"], np.float64)[corrupted]))
               / (1 + np.exp(gates))[..., None]
               + np.eye(VOCAB)[corrupted] / (1 + np.exp(-gates))[..., None])
    acc = ((mixture.argmax(-1) == tokens) * real).sum() / real.sum()
    assert float(metrics["main_accuracy"]) == pytest.approx(acc, rel=1e-6)


def test_config_and_batch_errors():
    with pytest.raises(ValueError, match="mask_prob=0.0"):
        rtd.RTDConfig(mask_id=MASK, cls_id=CLS, sep_id=SEP, mask_prob=0.0)
    with pytest.raises(ValueError, match="temperature"):
        rtd.RTDConfig(mask_id=MASK, cls_id=CLS, sep_id=SEP, temperature=0.0)
    gen_fn, disc_fn, _, _ = _models(_params())
    with pytest.raises(KeyError, match="encoder_input_tokens"):
        rtd.rtd_loss(_key(0), {"inputs": jnp.zeros((2, 8), jnp.int32)}, gen_fn, disc_fn, CFG)


def test_identity_scores_by_hand_and_what_their_auc_separates():
    # Row 0 is scored from row 1's counts and vice versa, smoothed by one occurrence at the
    # other row's replaced rate. Row 1: ids 5 5 7 7 with labels 1 0 0 0 (rate 1/4);
    # row 0: ids 5 7 9 9 with labels 1 1 0 1 (rate 3/4).
    ids = jnp.array([[5, 7, 9, 9], [5, 5, 7, 7]])
    labels = jnp.array([[1, 1, 0, 1], [1, 0, 0, 0]])
    weights = jnp.ones((2, 4))
    scores = np.asarray(rtd.identity_scores(ids, labels, weights, vocab_size=10))
    np.testing.assert_allclose(scores[0], [1.25 / 3, 0.25 / 3, 0.25, 0.25], rtol=1e-6)
    np.testing.assert_allclose(scores[1], [1.75 / 2, 1.75 / 2, 1.75 / 2, 1.75 / 2], rtol=1e-6)
    # A weight-0 entry is neither counted nor lets its label in (row 0's id 7 drops out).
    masked = np.asarray(rtd.identity_scores(ids, labels, weights.at[0, 1].set(0.0), 10))
    np.testing.assert_allclose(masked[1, 2], (2 / 3) / 1.0, rtol=1e-6)
    # Replacements always of id 3: identity alone finds them. Labels independent of the id:
    # chance, with no leave-one-out bias below it.
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 200, (8, 256))
    chosen = rng.random(tokens.shape) < 0.15
    tokens = np.where(chosen, 3, tokens)
    w = jnp.ones(tokens.shape)
    auc = jax.jit(rtd.losses.binary_auc)
    found = rtd.identity_scores(jnp.asarray(tokens), jnp.asarray(chosen), w, vocab_size=200)
    assert float(auc(found, jnp.asarray(chosen), w)) > 0.99
    chances = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        labels = jnp.asarray(rng.random((8, 256)) < 0.15)
        tokens = jnp.asarray(rng.zipf(1.3, (8, 256)) % 200)
        chances.append(float(auc(rtd.identity_scores(tokens, labels, w, 200), labels, w)))
    assert abs(np.mean(chances) - 0.5) < 0.01, chances


def test_order_probe_leaves_a_context_free_discriminator_alone():
    # A discriminator that scores each token by its id alone ranks the same tokens the same way
    # in any order; one that reads its left neighbour does not.
    params = _params()
    tokens = jnp.asarray(np.tile(_batch()[:1], (8, 1)))
    gen_fn = _models(params)[0]
    cfg = dataclasses.replace(CFG, eval_probes=True, vocab_size=VOCAB)

    def by_id(corrupted):
        return params["disc"][corrupted] * 1.0

    def by_neighbour(corrupted):
        left = jnp.roll(corrupted, 1, axis=1)
        return params["disc"][corrupted] * 0.0 + jnp.sin(3.0 * left + corrupted)

    for fn, same in ((by_id, True), (by_neighbour, False)):
        _, metrics = jax.jit(lambda k, fn=fn: rtd.rtd_loss(
            k, {"encoder_input_tokens": tokens}, gen_fn, fn, cfg))(_key(3))
        gap = abs(float(metrics["disc_auc_shuffled"]) - float(metrics["disc_auc"]))
        assert (gap < 1e-6) if same else (gap > 0.02), (fn.__name__, gap)
        assert "identity_auc" in metrics
    # The train step (probes off) pays for neither.
    _, metrics = jax.jit(lambda k: rtd.rtd_loss(
        k, {"encoder_input_tokens": tokens}, gen_fn, by_id, CFG))(_key(3))
    assert "identity_auc" not in metrics and "disc_auc_shuffled" not in metrics


def test_unigram_generator_samples_the_batch_unigram_distribution():
    # Real non-special tokens: id 5 three times as often as id 6; [CLS]/[SEP]/padding never
    # drawn. Many keys: the sampled shares match 3/4 and 1/4.
    row = np.array([CLS] + [5, 5, 5, 6] * 7 + [SEP, 0, 0], np.int32)
    tokens = jnp.asarray(np.tile(row, (4, 1)))
    cfg = dataclasses.replace(CFG, unigram_generator=True)
    gen_fn = _models(_params())[0]

    def samples(key):
        _, masked, corrupted, _, _, _ = rtd.generator_step(
            key, {"encoder_input_tokens": tokens}, gen_fn, cfg)
        chosen = masking.slots_to_length(masked.positions, masked.weights, tokens.shape[1]) > 0
        return jnp.where(chosen, corrupted, -1)

    drawn = np.asarray(jax.jit(jax.vmap(samples))(jax.random.split(_key(5), 400)))
    drawn = drawn[drawn >= 0]
    assert set(np.unique(drawn)) == {5, 6}
    share = np.mean(drawn == 5)
    assert abs(share - 0.75) < _five_sigma(0.75, drawn.size), share
    with pytest.raises(ValueError, match="exclusive"):
        dataclasses.replace(CFG, unigram_generator=True, uniform_generator=True)
