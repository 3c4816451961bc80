"""objectives/losses.py against hand computations, a pure-Python T5X reference and PyTorch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

from objectives import losses


def _t5x_token_loss(logits, target, z_loss=0.0, ls=0.0):
    """Pure-Python T5X per-token loss: smoothed one-hot CE - normalizing constant + z-term."""
    vocab = len(logits)
    top = max(logits)
    log_z = top + math.log(sum(math.exp(x - top) for x in logits))
    conf, low = 1.0 - ls, ls / (vocab - 1)
    soft = [conf if v == target else low for v in range(vocab)]
    ce = -sum(q * (x - log_z) for q, x in zip(soft, logits, strict=True))
    const = -(conf * math.log(conf) + (vocab - 1) * low * math.log(low + 1e-20))
    return ce - const + z_loss * log_z**2, z_loss * log_z**2


# The 2 x 4 example, vocabulary 3; row 1 ends in two padding tokens (weight 0).
LOGITS = np.array([
    [[0.0, math.log(2), 0.0], [1.0, 2.0, 3.0], [0.5, -0.5, 0.0], [2.0, 2.0, 2.0]],
    [[-1.0, 0.0, 1.0], [3.0, 0.0, -3.0], [9.0, 9.0, 9.0], [0.0, 0.0, 0.0]],
], np.float32)
TARGETS = np.array([[1, 2, 0, 1], [2, 0, 0, 0]], np.int32)
WEIGHTS = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)


def test_hand_value_without_smoothing():
    # Token (0, 0): p = [1/4, 2/4, 1/4], target 1 -> ln 2; log Z = ln 4.
    loss, z = losses.token_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(TARGETS), z_loss=1e-4)
    assert float(loss[0, 0]) == pytest.approx(math.log(2) + 1e-4 * math.log(4) ** 2, rel=1e-6)
    assert float(z[0, 0]) == pytest.approx(1e-4 * math.log(4) ** 2, rel=1e-6)
    # Token (0, 3): uniform over 3 -> ln 3.
    assert float(loss[0, 3]) == pytest.approx(math.log(3) + 1e-4 * (2 + math.log(3)) ** 2, rel=1e-6)


@pytest.mark.parametrize("z_loss,ls", [(0.0, 0.0), (1e-4, 0.0), (0.0, 0.1), (1e-2, 0.3)])
def test_weighted_sums_match_python_reference(z_loss, ls):
    out = losses.cross_entropy(jnp.asarray(LOGITS), jnp.asarray(TARGETS), jnp.asarray(WEIGHTS),
                               z_loss=z_loss, label_smoothing=ls)
    want_loss = want_z = 0.0
    for b in range(2):
        for t in range(4):
            if WEIGHTS[b, t]:
                loss, z = _t5x_token_loss(LOGITS[b, t].tolist(), TARGETS[b, t], z_loss, ls)
                want_loss += loss
                want_z += z
    assert float(out.loss_sum) == pytest.approx(want_loss, rel=1e-5)
    assert float(out.z_loss_sum) == pytest.approx(want_z, rel=1e-5, abs=1e-12)
    assert float(out.weight_sum) == 6.0
    assert float(out.mean) == pytest.approx(want_loss / 6, rel=1e-5)


def test_perfect_smoothed_prediction_scores_zero():
    vocab, ls = 5, 0.2
    target = np.array([3])
    smoothed = np.full(vocab, ls / (vocab - 1))
    smoothed[3] = 1 - ls
    loss, _ = losses.token_cross_entropy(jnp.log(jnp.asarray(smoothed, jnp.float32))[None],
                                         jnp.asarray(target), label_smoothing=ls)
    assert abs(float(loss[0])) < 1e-6
    # Without smoothing the only perfect prediction is a one-hot, approached by a large margin.
    loss, _ = losses.token_cross_entropy(jnp.array([[0.0, 0.0, 40.0]]), jnp.array([2]))
    assert abs(float(loss[0])) < 1e-6


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25])
def test_parity_with_torch(eps):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 4))
    vocab = logits.shape[-1]
    torch_loss = F.cross_entropy(torch.tensor(logits).reshape(-1, vocab),
                                 torch.tensor(targets).reshape(-1), label_smoothing=eps,
                                 reduction="none").numpy().reshape(2, 4)
    # Same smoothed target when T5X's ls = eps * (V - 1) / V; T5X then subtracts its entropy.
    ls = eps * (vocab - 1) / vocab
    ours, _ = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                         label_smoothing=ls)
    constant = losses.label_smoothing_constant(vocab, ls)
    np.testing.assert_allclose(np.asarray(ours) + constant, torch_loss, rtol=1e-5, atol=1e-6)
    if eps == 0.0:
        assert constant == 0.0
    else:
        assert constant > 0.0


def test_large_logits_are_stable():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], jnp.float32)
    targets = jnp.array([1, 2])
    loss, z = losses.token_cross_entropy(logits, targets, z_loss=1e-4)
    # Token 0: log Z = 1e4 (the other terms underflow), CE = 1e4 - (-1e4) = 2e4, z = 1e-4 * 1e8.
    np.testing.assert_allclose(np.asarray(z), [1e4, 1e-4 * (-1e4 + math.log(3)) ** 2], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(loss), [2e4 + 1e4, math.log(3) + float(z[1])],
                               rtol=1e-5)
    grad = jax.grad(lambda x: losses.cross_entropy(x, targets, jnp.ones(2), z_loss=1e-4,
                                                   label_smoothing=0.1).loss_sum)(logits)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_gradient_matches_closed_form():
    # d/dlogits = softmax - q + 2 z log Z softmax, with q the smoothed one-hot.
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=6)
    z_loss, ls = 1e-2, 0.1
    grad = jax.grad(lambda x: losses.cross_entropy(
        x, jnp.asarray(targets), jnp.ones(6), z_loss=z_loss, label_smoothing=ls).loss_sum)(
        jnp.asarray(logits))
    x = logits.astype(np.float64)
    log_z = np.log(np.exp(x).sum(-1, keepdims=True))
    softmax = np.exp(x - log_z)
    q = np.full_like(x, ls / 6)
    q[np.arange(6), targets] = 1 - ls
    np.testing.assert_allclose(np.asarray(grad), softmax - q + 2 * z_loss * log_z * softmax,
                               rtol=1e-4, atol=1e-6)


def test_check_grads_float64():
    # Central differences vs reverse-mode derivatives of the real functions, in float64.
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        logits = jnp.asarray(rng.normal(size=(3, 5)), jnp.float64)
        targets = jnp.array([0, 4, 2])
        weights = jnp.array([1.0, 0.0, 2.0], jnp.float64)

        def ce(x):
            out = losses.cross_entropy(x, targets, weights, z_loss=1e-2, label_smoothing=0.2)
            assert out.loss_sum.dtype == jnp.float64
            return out.loss_sum

        def bce(x):
            return losses.sigmoid_bce(x[:, 0], jnp.array([1, 0, 1]), weights).loss_sum

        def per_sequence(x):
            token_loss, _ = losses.token_cross_entropy(x.reshape(3, 5, 1) * jnp.ones(2),
                                                       jnp.zeros((3, 5), jnp.int32))
            return losses.normalize(token_loss, jnp.ones((3, 5)).at[1, 3:].set(0.0), "sequence")

        for fn in (ce, bce, per_sequence):
            check_grads(jax.jit(fn), (logits,), order=1, modes=["rev"])
        assert np.all(np.asarray(jax.grad(ce)(logits))[1] == 0.0)  # the zero-weight row


def test_zero_weights_contribute_nothing():
    logits = jnp.asarray(LOGITS)
    weights = jnp.asarray(WEIGHTS)
    # Garbage (even inf) in padded positions must not leak into the sum.
    poisoned = logits.at[1, 2:].set(jnp.array([jnp.inf, -jnp.inf, jnp.nan]))
    clean = losses.cross_entropy(logits, jnp.asarray(TARGETS), weights, z_loss=1e-4)
    dirty = losses.cross_entropy(poisoned, jnp.asarray(TARGETS), weights, z_loss=1e-4)
    assert float(dirty.loss_sum) == float(clean.loss_sum)
    kept = losses.cross_entropy(logits[:, :2].reshape(-1, 3), jnp.asarray(TARGETS[:, :2]).ravel(),
                                jnp.ones(4), z_loss=1e-4)
    row0 = losses.cross_entropy(logits[0, 2:], jnp.asarray(TARGETS[0, 2:]), jnp.ones(2),
                                z_loss=1e-4)
    assert float(clean.loss_sum) == pytest.approx(float(kept.loss_sum + row0.loss_sum), rel=1e-6)
    grad = jax.grad(lambda x: losses.cross_entropy(
        x, jnp.asarray(TARGETS), weights, z_loss=1e-4, label_smoothing=0.1).loss_sum)(logits)
    assert np.all(np.asarray(grad[1, 2:]) == 0.0)
    assert np.all(np.asarray(grad[0]) != 0.0)


def test_normalize_modes_by_hand():
    token_loss = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
    weights = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], jnp.float32)
    assert float(losses.normalize(token_loss, weights, "sum")) == 17.0
    assert float(losses.normalize(token_loss, weights, "token")) == pytest.approx(17 / 5)
    # (6/3 + 11/2) / 2; the empty third row is left out.
    assert float(losses.normalize(token_loss, weights, "sequence")) == pytest.approx(3.75)
    segments = jnp.array([[1, 1, 2, 2], [1, 1, 0, 0], [0, 0, 0, 0]])
    # Segments (1+2)/2, 3/1, (5+6)/2 -> mean over 3 segments.
    got = losses.normalize(token_loss, weights, "sequence", segment_ids=segments)
    assert float(got) == pytest.approx((1.5 + 3.0 + 5.5) / 3)
    assert float(losses.normalize(token_loss, jnp.zeros_like(weights), "token")) == 0.0
    with pytest.raises(ValueError, match="mode='mean'"):
        losses.normalize(token_loss, weights, "mean")


def test_sigmoid_bce_hand_and_torch():
    logits = jnp.array([[0.0, 2.0, -3.0, 1e4], [-1e4, 1e4, 0.5, 7.0]])
    labels = jnp.array([[1, 0, 0, 1], [1, 0, 1, 1]])
    weights = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], jnp.float32)
    out = losses.sigmoid_bce(logits, labels, weights)
    # Hand: ln 2 + ln(1+e^2) + ln(1+e^-3) + 0 + 1e4 + 1e4 + ln(1+e^-0.5)
    want = (math.log(2) + math.log1p(math.exp(2)) + math.log1p(math.exp(-3)) + 2e4
            + math.log1p(math.exp(-0.5)))
    assert float(out.loss_sum) == pytest.approx(want, rel=1e-6)
    assert float(out.weight_sum) == 7.0
    ref = F.binary_cross_entropy_with_logits(
        torch.tensor(np.asarray(logits)), torch.tensor(np.asarray(labels), dtype=torch.float32),
        weight=torch.tensor(np.asarray(weights)), reduction="sum")
    assert float(out.loss_sum) == pytest.approx(float(ref), rel=1e-6)


def test_accuracy_and_precision_recall_by_hand():
    logits = jnp.asarray(LOGITS)
    # argmax: row 0 -> [1, 2, 0, 0], row 1 -> [2, 0, 0, 0]; row 0 token 3 is wrong (target 1).
    assert float(losses.accuracy(logits, jnp.asarray(TARGETS), jnp.asarray(WEIGHTS))) == (
        pytest.approx(5 / 6))
    predictions = jnp.array([1, 1, 1, 0, 0, 1])
    labels = jnp.array([1, 0, 0, 1, 0, 1])
    weights = jnp.array([1, 1, 1, 1, 1, 0])
    precision, recall = losses.binary_precision_recall(predictions, labels, weights)
    assert float(precision) == pytest.approx(1 / 3) and float(recall) == pytest.approx(1 / 2)
    assert float(losses.binary_accuracy(predictions, labels, weights)) == pytest.approx(2 / 5)
    none = jnp.zeros(6, jnp.int32)
    assert [float(v) for v in losses.binary_precision_recall(none, none, weights)] == [0.0, 0.0]


def test_jit_matches_eager_and_bad_input_raises():
    fn = jax.jit(losses.cross_entropy, static_argnames=("z_loss", "label_smoothing"))
    args = (jnp.asarray(LOGITS), jnp.asarray(TARGETS), jnp.asarray(WEIGHTS))
    jitted = fn(*args, z_loss=1e-4, label_smoothing=0.1)
    eager = losses.cross_entropy(*args, z_loss=1e-4, label_smoothing=0.1)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        losses.cross_entropy(*args, label_smoothing=1.0)
    with pytest.raises(ValueError, match="do not match"):
        losses.cross_entropy(args[0], args[1][:, :3], args[2][:, :3])


def test_binary_auc_equals_pairwise_count():
    """AUC = share of (positive, negative) pairs ordered correctly, counted pair by pair."""
    rng = np.random.default_rng(0)
    for trial in range(5):
        scores = rng.normal(size=(4, 33)).astype(np.float32)
        labels = rng.random((4, 33)) < 0.2
        weights = (rng.random((4, 33)) < 0.8).astype(np.float32)
        scores[labels] += trial * 0.5  # from near-chance to well separated
        pos = scores[(weights > 0) & labels]
        neg = scores[(weights > 0) & ~labels]
        expected = np.mean(pos[:, None] > neg[None, :])
        got = float(losses.binary_auc(jnp.asarray(scores), jnp.asarray(labels),
                                      jnp.asarray(weights)))
        assert got == pytest.approx(expected, abs=1e-6), trial


def test_binary_auc_by_hand():
    labels = jnp.asarray([[0, 1, 0, 1]])
    weights = jnp.ones((1, 4))
    assert float(losses.binary_auc(jnp.asarray([[0.1, 0.9, 0.2, 0.8]]), labels, weights)) == 1.0
    assert float(losses.binary_auc(jnp.asarray([[0.9, 0.1, 0.8, 0.2]]), labels, weights)) == 0.0
    # (0.5 vs 0.1: win, 0.5 vs 0.7: loss, 0.3 vs 0.1: win, 0.3 vs 0.7: loss) -> 2 / 4.
    assert float(losses.binary_auc(jnp.asarray([[0.1, 0.5, 0.7, 0.3]]), labels, weights)) == 0.5
    # A masked-out entry changes nothing; a single class gives 0.5.
    masked = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
    assert float(losses.binary_auc(jnp.asarray([[0.1, 0.9, 0.2, -5.0]]), labels, masked)) == 1.0
    assert float(losses.binary_auc(jnp.asarray([[0.1, 0.9]]), jnp.asarray([[1, 1]]),
                                   jnp.ones((1, 2)))) == 0.5
