"""Device-side token masking, generator sampling and corruption for ELECTRA-family objectives.

Facts (shared/reference/ELECTRA.md): candidates are real tokens other than [CLS]/[SEP]/[MASK];
the slot budget N = int((mask_prob + 0.005) * length) keeps shapes static (19 at 128, 79 at 512);
each example predicts max(1, min(N, round(num_real_tokens * mask_prob))) positions; 85% of them
become [MASK] and 15% keep their token. We sample positions WITHOUT replacement (the reference
samples with replacement and de-duplicates; ELECTRA.md allows the cleaner variant).

Everything here is jittable; randomness comes only from the explicit ``key`` arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class MaskedInputs(NamedTuple):
    """Output of :func:`mask_tokens`. Unused slots have position 0, id 0 and weight 0."""

    masked_tokens: jax.Array  # [batch, length] int32: input for the generator / MLM model
    positions: jax.Array  # [batch, num_slots] int32: chosen positions, ascending, then unused
    ids: jax.Array  # [batch, num_slots] int32: ORIGINAL tokens at those positions
    weights: jax.Array  # [batch, num_slots] float32: 1 for a chosen position, 0 for an unused slot


def prediction_budget(length: int, mask_prob: float) -> int:
    """The static slot count N = int((mask_prob + 0.005) * length) of the reference code."""
    return int((mask_prob + 0.005) * length)


def _scatter_slots(tokens: jax.Array, positions: jax.Array, weights: jax.Array,
                   values: jax.Array) -> jax.Array:
    """Write ``values`` [B, N] into ``tokens`` [B, L] at weighted ``positions`` only."""
    length = tokens.shape[1]
    # Unused slots point past the end and are dropped, so they cannot clobber position 0.
    # [batch, slots]
    target = jnp.where(weights > 0, positions, length)
    rows = jnp.arange(tokens.shape[0])[:, None]
    return tokens.at[rows, target].set(values.astype(tokens.dtype), mode="drop")


def candidates(tokens: jax.Array, special_ids: Sequence[int], pad_id: int = 0) -> jax.Array:
    """[B, L] bool: real tokens that are none of ``special_ids`` (what may be masked)."""
    keep = tokens != pad_id
    for special in special_ids:
        keep &= tokens != special
    return keep


def mask_tokens(
    key: jax.Array,
    tokens: jax.Array,
    *,
    mask_prob: float,
    mask_id: int,
    special_ids: Sequence[int] = (),
    pad_id: int = 0,
    max_predictions: int | None = None,
    mask_replace_prob: float = 0.85,
    random_token_prob: float = 0.0,
    vocab_size: int | None = None,
) -> MaskedInputs:
    """Choose positions to predict and build the masked input.

    tokens [B, L] int (``pad_id`` = padding). Candidates are real tokens whose id is not
    ``mask_id`` and not in ``special_ids`` (pass [CLS] and [SEP] here). Of the chosen positions a
    fraction ``mask_replace_prob`` becomes ``mask_id``, ``random_token_prob`` becomes a token drawn
    uniformly from ``[0, vocab_size)`` (BERT's 80/10/10 is 0.8/0.1), the rest keep their token.
    Examples with fewer candidates than their count get every candidate and spare zero-weight slots.
    """
    if tokens.ndim != 2:
        raise ValueError(f"masking.mask_tokens: tokens must be [batch, length], got {tokens.shape}")
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"masking.mask_tokens: mask_prob={mask_prob}, expected 0 < p < 1")
    length = tokens.shape[1]
    num_slots = (prediction_budget(length, mask_prob) if max_predictions is None
                 else max_predictions)
    if not 0 < num_slots <= length:
        raise ValueError(f"masking.mask_tokens: prediction budget N={num_slots} (max_predictions="
                         f"{max_predictions}, mask_prob={mask_prob}, length={length}); expected "
                         "0 < N <= length")
    if mask_replace_prob < 0 or random_token_prob < 0 or mask_replace_prob + random_token_prob > 1:
        raise ValueError(f"masking.mask_tokens: mask_replace_prob={mask_replace_prob} and "
                         f"random_token_prob={random_token_prob} must be >= 0 and sum to <= 1")
    if random_token_prob > 0 and (vocab_size is None or vocab_size < 1):
        raise ValueError(f"masking.mask_tokens: random_token_prob={random_token_prob} needs a "
                         f"positive vocab_size, got {vocab_size}")
    tokens = tokens.astype(jnp.int32)
    position_key, action_key, random_key = jax.random.split(key, 3)

    # [batch, length]
    real = tokens != pad_id
    candidate = candidates(tokens, (mask_id, *special_ids), pad_id)
    # Per-example count, rounded half-to-even like the reference's tf.round.
    # [batch, length] -> [batch]
    wanted = jnp.round(jnp.sum(real, axis=-1) * mask_prob).astype(jnp.int32)
    wanted = jnp.maximum(1, jnp.minimum(num_slots, wanted))
    count = jnp.minimum(wanted, jnp.sum(candidate, axis=-1))

    # Top-k of iid uniform scores over the candidates = a uniform subset without replacement;
    # non-candidates score -1 so they only fill slots beyond the candidate count.
    # [batch, length] -> [batch, slots]
    scores = jnp.where(candidate, jax.random.uniform(position_key, tokens.shape), -1.0)
    _, top = jax.lax.top_k(scores, num_slots)
    used = jnp.arange(num_slots)[None, :] < count[:, None]
    # Ascending positions (unused slots sorted to the end), then unused -> position 0.
    positions = jnp.sort(jnp.where(used, top, length), axis=-1)
    used = positions < length
    positions = jnp.where(used, positions, 0).astype(jnp.int32)
    weights = used.astype(jnp.float32)
    # [batch, length] -> [batch, slots]
    ids = jnp.where(used, jnp.take_along_axis(tokens, positions, axis=-1), 0)

    # One uniform draw per slot decides mask / random token / keep.
    # [batch, slots]
    action = jax.random.uniform(action_key, positions.shape)
    new_ids = jnp.where(action < mask_replace_prob, mask_id, ids)
    if random_token_prob > 0:
        random_ids = jax.random.randint(random_key, positions.shape, 0, vocab_size, jnp.int32)
        is_random = (action >= mask_replace_prob) & (action < mask_replace_prob + random_token_prob)
        new_ids = jnp.where(is_random, random_ids, new_ids)
    masked_tokens = _scatter_slots(tokens, positions, weights, new_ids)
    return MaskedInputs(masked_tokens, positions, ids.astype(jnp.int32), weights)


def sample_replacements(
    key: jax.Array,
    gen_logits: jax.Array,
    *,
    temperature: float = 1.0,
    disallow_correct: bool = False,
    original_ids: jax.Array | None = None,
    uniform: bool = False,
) -> jax.Array:
    """Gumbel-max samples [B, N] int32 from generator logits [B, N, V], with no gradient.

    ``argmax(logits / temperature + gumbel)`` in float32, drawn in two exact stages: the
    vocabulary is cut into ~sqrt(V) blocks; a Gumbel-max over the blocks' logsumexps picks a
    block (with probability its share of the softmax mass), a Gumbel-max inside it picks the
    token. Same distribution as one Gumbel per token, with ~2 sqrt(V) random numbers per slot
    instead of V (threefry bits for [slots, V] were ~10% of an ELECTRA small++ step on CPU).
    ``uniform=True`` ignores the logits and samples uniformly over the vocabulary (the paper's
    uniform-generator ablation). ``disallow_correct=True`` removes ``original_ids`` [B, N] from
    the support first.
    """
    if temperature <= 0:
        raise ValueError(f"masking.sample_replacements: temperature={temperature}, expected > 0")
    vocab_size = gen_logits.shape[-1]
    if disallow_correct:
        if original_ids is None:
            raise ValueError("masking.sample_replacements: disallow_correct=True needs "
                             "original_ids [batch, slots]")
        if original_ids.shape != gen_logits.shape[:-1]:
            raise ValueError(f"masking.sample_replacements: original_ids {original_ids.shape} "
                             f"must match gen_logits {gen_logits.shape} without the vocab axis")
        if vocab_size < 2:
            raise ValueError("masking.sample_replacements: disallow_correct needs vocab >= 2")
    logits = jax.lax.stop_gradient(gen_logits).astype(jnp.float32)
    # [batch, slots, vocab]
    logits = jnp.zeros_like(logits) if uniform else logits / temperature
    if disallow_correct:
        # [batch, slots] -> [batch, slots, vocab]
        is_original = jax.nn.one_hot(original_ids, vocab_size, dtype=jnp.bool_)
        logits = jnp.where(is_original, -jnp.inf, logits)
    block = math.isqrt(vocab_size - 1) + 1  # ceil(sqrt(V))
    num_blocks = -(-vocab_size // block)
    lead = logits.shape[:-1]
    # [batch, slots, vocab] -> [batch, slots, blocks, block]; padding can never be drawn
    padded = jnp.pad(logits, [(0, 0)] * len(lead) + [(0, num_blocks * block - vocab_size)],
                     constant_values=-jnp.inf).reshape(lead + (num_blocks, block))
    block_key, token_key = jax.random.split(key)
    # [batch, slots, blocks]: each block's share of the mass, in log space
    block_logits = jax.nn.logsumexp(padded, axis=-1)
    # [batch, slots]
    chosen = jnp.argmax(block_logits + jax.random.gumbel(block_key, block_logits.shape), axis=-1)
    # [batch, slots, block]
    within = jnp.take_along_axis(padded, chosen[..., None, None], axis=-2)[..., 0, :]
    offset = jnp.argmax(within + jax.random.gumbel(token_key, within.shape), axis=-1)
    return (chosen * block + offset).astype(jnp.int32)


def corrupt(
    tokens: jax.Array, positions: jax.Array, weights: jax.Array, samples: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Write ``samples`` [B, N] at the weighted ``positions`` of ``tokens`` [B, L].

    Returns (corrupted [B, L] int32, labels [B, L] int32) with label 1 where the token changed; a
    sample equal to the original token is labelled 0 ("original"), as in the paper.
    """
    tokens = tokens.astype(jnp.int32)
    corrupted = _scatter_slots(tokens, positions, weights, jax.lax.stop_gradient(samples))
    return corrupted, (corrupted != tokens).astype(jnp.int32)


def slots_to_length(positions: jax.Array, weights: jax.Array, length: int) -> jax.Array:
    """Spread slot weights [B, N] back over the sequence: [B, N] -> [B, L] float32."""
    zeros = jnp.zeros((positions.shape[0], length), jnp.float32)
    return _scatter_slots(zeros, positions, weights, weights)
