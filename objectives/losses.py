"""Losses and metrics shared by every objective (float32, jittable, padding-safe).

Cross-entropy follows T5X's semantics (facts in shared/reference/T5.md):

- label smoothing ``ls`` puts ``1 - ls`` on the target and spreads ``ls`` over the OTHER ``V - 1``
  classes, then subtracts the entropy of that smoothed target (the "normalizing constant"), so a
  prediction equal to the smoothed target scores exactly 0;
- z-loss adds ``z_loss * logsumexp(logits)**2`` per token and is INCLUDED in the returned loss (it
  is also returned on its own for logging);
- the default reduction is a plain weighted sum (no normalisation).

How this differs from ``torch.nn.functional.cross_entropy(label_smoothing=eps)``: torch spreads
``eps`` over all ``V`` classes (target gets ``1 - eps + eps / V``) and subtracts nothing. The two
smoothed targets coincide when ``ls = eps * (V - 1) / V``; even then T5X's value is lower by the
normalizing constant. With ``ls = 0`` and ``z_loss = 0`` they are identical.

Weights of 0 (padding, gaps between packed segments) contribute exactly 0 to every sum (even if
the loss there is inf/nan) and exactly 0 to the gradient (for finite logits).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

NORMALIZE_MODES = ("sum", "token", "sequence")


class LossSums(NamedTuple):
    """Weighted sums; ``loss_sum`` already includes ``z_loss_sum`` (as in T5X)."""

    loss_sum: jax.Array
    z_loss_sum: jax.Array
    weight_sum: jax.Array

    @property
    def mean(self) -> jax.Array:
        """``loss_sum / weight_sum`` (0 when every weight is 0)."""
        return safe_divide(self.loss_sum, self.weight_sum)


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator`` with 0 (and a zero gradient) where the denominator is 0."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def _masked(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``values * weights`` that is exactly 0 wherever the weight is 0 (even for inf/nan values)."""
    weights = weights.astype(jnp.float32)
    return jnp.where(weights != 0, values * weights, 0.0)


def label_smoothing_constant(vocab_size: int, label_smoothing: float) -> float:
    """Entropy of T5X's smoothed one-hot target: what is subtracted so a perfect match gives 0."""
    if label_smoothing == 0.0:
        return 0.0
    confidence = 1.0 - label_smoothing
    low_confidence = label_smoothing / (vocab_size - 1)
    constant = -(vocab_size - 1) * low_confidence * math.log(low_confidence)
    if confidence > 0.0:
        constant -= confidence * math.log(confidence)
    return constant


def token_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Unweighted per-token loss (CE + z-term) and the z-term alone, both shaped like targets.

    Targets must lie in ``[0, V)``; an out-of-range id silently gives a wrong loss under jit (it
    cannot be checked on traced values), so validate ids where they are made.
    """
    vocab_size = logits.shape[-1]
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"losses.token_cross_entropy: label_smoothing={label_smoothing}, "
                         "expected a value in [0, 1)")
    if label_smoothing > 0.0 and vocab_size < 2:
        raise ValueError(f"losses.token_cross_entropy: label smoothing needs a vocabulary of at "
                         f"least 2 classes, got logits shape {logits.shape}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"losses.token_cross_entropy: logits {logits.shape} do not match "
                         f"targets {targets.shape} (expected logits = targets.shape + (vocab,))")
    # float32 at least (bf16 -> f32); float64 stays float64 so gradients can be checked in x64.
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    # Max-shifted logsumexp: stable for logits of any magnitude representable in float32.
    # [..., vocab] -> [...]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    # [..., vocab] -> [...]: log p(target)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
    log_p_target = target_logit[..., 0] - log_z
    if label_smoothing == 0.0:
        loss = -log_p_target
    else:
        confidence = 1.0 - label_smoothing
        low_confidence = label_smoothing / (vocab_size - 1)
        # sum_v q_v log p_v with q = low everywhere plus (confidence - low) on the target.
        # [..., vocab] -> [...]
        sum_log_p = jnp.sum(logits, axis=-1) - vocab_size * log_z
        loss = -(confidence - low_confidence) * log_p_target - low_confidence * sum_log_p
        loss = loss - label_smoothing_constant(vocab_size, label_smoothing)
    z_term = z_loss * jnp.square(log_z)
    return loss + z_term, z_term


def cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> LossSums:
    """T5X weighted cross-entropy: ``(loss_sum, z_loss_sum, weight_sum)`` over all tokens.

    logits [..., V] (computed in float32, or float64 if given), targets int [...],
    weights [...] (0 = ignore).
    """
    loss, z_term = token_cross_entropy(
        logits, targets, z_loss=z_loss, label_smoothing=label_smoothing)
    weights = jnp.broadcast_to(weights, targets.shape).astype(jnp.float32)
    return LossSums(
        loss_sum=jnp.sum(_masked(loss, weights)),
        z_loss_sum=jnp.sum(_masked(z_term, weights)),
        weight_sum=jnp.sum(weights),
    )


def normalize(
    token_loss: jax.Array,
    weights: jax.Array,
    mode: str,
    *,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Reduce an UNWEIGHTED per-token loss [..., length] to a scalar.

    - "sum": sum of weighted losses (T5X's default, no normalisation);
    - "token": weighted mean per token;
    - "sequence": mean over sequences of each sequence's weighted mean; sequences whose weights
      are all 0 are left out of the mean (T5X's AVERAGE_PER_SEQUENCE). With ``segment_ids``
      [..., length] (packed rows; 0 = padding) every packed segment counts as one sequence.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"losses.normalize: mode={mode!r}, expected one of {NORMALIZE_MODES}")
    weights = jnp.broadcast_to(weights, token_loss.shape).astype(jnp.float32)
    weighted = _masked(token_loss, weights)
    if mode == "sum":
        return jnp.sum(weighted)
    if mode == "token":
        return safe_divide(jnp.sum(weighted), jnp.sum(weights))
    if token_loss.ndim < 1:
        raise ValueError("losses.normalize: mode='sequence' needs a [..., length] loss, "
                         "got a scalar")
    length = token_loss.shape[-1]
    # [..., length] -> [rows, length]
    weighted = weighted.reshape(-1, length)
    weights = weights.reshape(-1, length)
    if segment_ids is None:
        # [rows, length] -> [rows]
        seq_loss, seq_weight = jnp.sum(weighted, axis=-1), jnp.sum(weights, axis=-1)
    else:
        # One bucket per (row, segment id); segment ids lie in [0, length].
        num_rows = weighted.shape[0]
        # [rows, length] -> [rows * length]
        bucket = (jnp.arange(num_rows)[:, None] * (length + 1)
                  + segment_ids.reshape(num_rows, length).astype(jnp.int32)).reshape(-1)
        num_buckets = num_rows * (length + 1)
        # [rows * length] -> [rows * (length + 1)]
        seq_loss = jax.ops.segment_sum(weighted.reshape(-1), bucket, num_segments=num_buckets)
        seq_weight = jax.ops.segment_sum(weights.reshape(-1), bucket, num_segments=num_buckets)
    present = (seq_weight != 0).astype(jnp.float32)
    return safe_divide(jnp.sum(safe_divide(seq_loss, seq_weight)), jnp.sum(present))


def sigmoid_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> LossSums:
    """Weighted binary cross-entropy with logits (optax's, stable via log-sigmoid).

    ``-[y log sigmoid(x) + (1 - y) log sigmoid(-x)]``; labels may be bool/int/float in [0, 1].
    """
    if logits.shape != labels.shape:
        raise ValueError(f"losses.sigmoid_bce: logits {logits.shape} and labels {labels.shape} "
                         "must have the same shape")
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    labels = labels.astype(logits.dtype)
    loss = optax.sigmoid_binary_cross_entropy(logits, labels)
    weights = jnp.broadcast_to(weights, logits.shape).astype(jnp.float32)
    return LossSums(jnp.sum(_masked(loss, weights)), jnp.zeros((), jnp.float32),
                    jnp.sum(weights))


def accuracy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted fraction of positions where ``argmax(logits, -1) == targets`` (0 if no weight)."""
    # [..., vocab] -> [...]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    weights = jnp.broadcast_to(weights, targets.shape).astype(jnp.float32)
    return safe_divide(jnp.sum(_masked(correct, weights)), jnp.sum(weights))


def binary_accuracy(predictions: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted fraction of positions where the boolean prediction equals the label."""
    correct = (predictions.astype(bool) == labels.astype(bool)).astype(jnp.float32)
    weights = jnp.broadcast_to(weights, labels.shape).astype(jnp.float32)
    return safe_divide(jnp.sum(_masked(correct, weights)), jnp.sum(weights))


def binary_precision_recall(
    predictions: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Weighted precision TP/(TP+FP) and recall TP/(TP+FN) of the positive class.

    A ratio with an empty denominator is reported as 0 (scikit-learn's ``zero_division=0``).
    """
    predictions = predictions.astype(bool)
    labels = labels.astype(bool)
    weights = jnp.broadcast_to(weights, labels.shape).astype(jnp.float32)
    true_pos = jnp.sum(_masked((predictions & labels).astype(jnp.float32), weights))
    pred_pos = jnp.sum(_masked(predictions.astype(jnp.float32), weights))
    label_pos = jnp.sum(_masked(labels.astype(jnp.float32), weights))
    return safe_divide(true_pos, pred_pos), safe_divide(true_pos, label_pos)


def binary_auc(scores: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """ROC AUC of ``scores`` for the positive class over entries with weight > 0 (0.5 = chance).

    The Mann-Whitney statistic from one sort: the probability that a random positive scores
    above a random negative. Ties are broken by position, not averaged (float logits rarely
    tie); weights only select entries. 0.5 when either class is empty.
    """
    valid = jnp.broadcast_to(weights, labels.shape).reshape(-1) > 0
    scores = scores.astype(jnp.float32).reshape(-1)
    labels = labels.astype(bool).reshape(-1)
    # Invalid entries sort below every valid one, so valid ranks start at n_invalid.
    order = jnp.argsort(jnp.where(valid, scores, -jnp.inf))
    ranks = jnp.zeros(scores.shape, jnp.float32).at[order].set(
        jnp.arange(scores.size, dtype=jnp.float32))
    ranks = ranks - jnp.sum(~valid)  # 0-based rank among valid entries
    pos = jnp.sum(valid & labels).astype(jnp.float32)
    neg = jnp.sum(valid & ~labels).astype(jnp.float32)
    # sum of positive ranks minus the ranks positives take among themselves = (pos, neg) wins.
    wins = jnp.sum(jnp.where(valid & labels, ranks, 0.0)) - pos * (pos - 1.0) / 2.0
    return jnp.where((pos > 0) & (neg > 0), wins / jnp.maximum(pos * neg, 1.0), 0.5)
