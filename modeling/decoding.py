"""Autoregressive decoding for ``EncoderDecoder``: greedy, temperature/top-k sampling, beam search.

The encoder runs once; the decoder then runs one token per step against a KV cache (the core
``Attention``'s decode mode). Every loop is a ``lax.while_loop`` with static shapes, so the
public functions jit with ``model``, ``max_decode_length`` and the integer/float options static
(e.g. ``jax.jit(functools.partial(greedy_decode, model, max_decode_length=32))``).

The loops themselves (``sample_loop``, ``beam_search``) only see a ``step_fn(state, tokens) ->
(logits, state)``, so they are tested on hand-made distributions as well as on the model.

Conventions: the decoder starts from PAD = 0; ``tokens[..., t]`` is the t-th generated token;
after a sequence emits ``eos_id`` every later position is PAD (0). Scores are sums of the
model's log-probabilities of the emitted tokens (EOS included); beam scores are divided by
T5X's length penalty ``((5 + length) / 6) ** alpha``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

Array = jax.Array
StepFn = Callable[[Any, Array], tuple[Array, Any]]

PAD_ID = 0
EOS_ID = 1
# Finite "minus infinity": arithmetic on it (sums, divisions) stays finite and ordered.
NEG_INF = -1.0e7


# ---------------------------------------------------------------------------------------------
# The model side: cache, step function, cache reordering.
# ---------------------------------------------------------------------------------------------
def init_decode_cache(
    model: nn.Module, params: Any, encoded: Array, encoder_input_tokens: Array,
    max_decode_length: int,
) -> Any:
    """Zero KV cache for ``max_decode_length`` steps (shapes via ``eval_shape``: no compute)."""
    batch = encoder_input_tokens.shape[0]
    dummy = jnp.zeros((batch, max_decode_length), jnp.int32)

    def create(p, enc, tokens):
        # A decode=True call on full-length inputs only creates the (zero) cache variables.
        _, variables = model.apply(
            {"params": p}, enc, tokens, dummy, decode=True, mutable=["cache"], method="decode"
        )
        return variables["cache"]

    shapes = jax.eval_shape(create, params, encoded, encoder_input_tokens)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def model_step_fn(
    model: nn.Module, params: Any, encoded: Array, encoder_input_tokens: Array
) -> StepFn:
    """``(cache, tokens [batch]) -> (float32 logits [batch, vocab], cache)`` for one step."""

    def step(cache, tokens):
        # [batch] -> [batch, 1] -> logits [batch, 1, vocab]
        logits, variables = model.apply(
            {"params": params, "cache": cache}, encoded, encoder_input_tokens, tokens[:, None],
            decode=True, mutable=["cache"], method="decode",
        )
        return logits[:, 0], variables["cache"]

    return step


def reorder_cache(cache: Any, indices: Array) -> Any:
    """Gathers the batch rows ``indices`` of every cached key/value (beam reordering).

    Cached keys/values are ``[(layers,) batch, length, heads, kv]`` (a leading layers axis when
    scanned), so the batch axis is ``ndim - 4``; ``cache_index`` has no batch axis.
    """
    flat = traverse_util.flatten_dict(cache)
    out = {}
    for path, leaf in flat.items():
        if path[-1] in ("cached_key", "cached_value"):
            leaf = jnp.take(leaf, indices, axis=leaf.ndim - 4)
        out[path] = leaf
    return traverse_util.unflatten_dict(out)


def _encode(model, params, encoder_input_tokens):
    return model.apply({"params": params}, encoder_input_tokens, method="encode")


# ---------------------------------------------------------------------------------------------
# Greedy and sampling.
# ---------------------------------------------------------------------------------------------
def sample_loop(
    step_fn: StepFn, state: Any, batch_size: int, max_decode_length: int, *,
    eos_id: int = EOS_ID, temperature: float = 0.0, top_k: int = 0,
    rng_key: Array | None = None,
) -> tuple[Array, Array]:
    """Greedy (``temperature == 0``) or sampled decoding; stops each sequence at ``eos_id``.

    Returns tokens ``[batch, max_decode_length]`` and scores ``[batch]`` (log-probs of the
    emitted tokens under the untempered model distribution).
    """
    if temperature > 0.0 and rng_key is None:
        raise ValueError("sampling (temperature > 0) needs rng_key")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key

    def cond(carry):
        i, _, _, _, done, _ = carry
        return jnp.logical_and(i < max_decode_length, jnp.logical_not(jnp.all(done)))

    def body(carry):
        i, state, tokens, last, done, scores = carry
        logits, state = step_fn(state, last)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if temperature > 0.0:
            scaled = logits.astype(jnp.float32) / temperature
            if top_k > 0:
                # Keep the k largest logits: [batch, vocab] -> k-th value [batch, 1].
                kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
                scaled = jnp.where(scaled < kth, NEG_INF, scaled)
            new = jax.random.categorical(jax.random.fold_in(rng_key, i), scaled, axis=-1)
        else:
            new = jnp.argmax(log_probs, axis=-1)
        new = jnp.where(done, PAD_ID, new).astype(jnp.int32)
        # [batch, vocab] -> [batch]
        chosen = jnp.take_along_axis(log_probs, new[:, None], axis=-1)[:, 0]
        scores = scores + jnp.where(done, 0.0, chosen)
        tokens = tokens.at[:, i].set(new)
        done = jnp.logical_or(done, new == eos_id)
        return i + 1, state, tokens, new, done, scores

    carry = (
        jnp.array(0, jnp.int32),
        state,
        jnp.zeros((batch_size, max_decode_length), jnp.int32),
        jnp.full((batch_size,), PAD_ID, jnp.int32),
        jnp.zeros((batch_size,), bool),
        jnp.zeros((batch_size,), jnp.float32),
    )
    _, _, tokens, _, _, scores = jax.lax.while_loop(cond, body, carry)
    return tokens, scores


def greedy_decode(
    model: nn.Module, params: Any, encoder_input_tokens: Array, max_decode_length: int,
    eos_id: int = EOS_ID,
) -> tuple[Array, Array]:
    """Argmax decoding: tokens ``[batch, max_decode_length]``, scores ``[batch]``."""
    return sample_decode(model, params, encoder_input_tokens, max_decode_length,
                         eos_id=eos_id, temperature=0.0)


def sample_decode(
    model: nn.Module, params: Any, encoder_input_tokens: Array, max_decode_length: int, *,
    rng_key: Array | None = None, temperature: float = 1.0, top_k: int = 0,
    eos_id: int = EOS_ID,
) -> tuple[Array, Array]:
    """Temperature / top-k sampling (``temperature=0`` is greedy); see ``sample_loop``."""
    encoded = _encode(model, params, encoder_input_tokens)
    cache = init_decode_cache(model, params, encoded, encoder_input_tokens, max_decode_length)
    step = model_step_fn(model, params, encoded, encoder_input_tokens)
    return sample_loop(step, cache, encoder_input_tokens.shape[0], max_decode_length,
                       eos_id=eos_id, temperature=temperature, top_k=top_k, rng_key=rng_key)


# ---------------------------------------------------------------------------------------------
# Beam search.
# ---------------------------------------------------------------------------------------------
def length_penalty(length: Array | int, alpha: float) -> Array:
    """T5X's brevity penalty ``((5 + length) / 6) ** alpha``."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def beam_search(
    step_fn: StepFn, state: Any, reorder_fn: Callable[[Any, Array], Any], batch_size: int,
    beam_size: int, max_decode_length: int, *, alpha: float = 0.6, eos_id: int = EOS_ID,
) -> tuple[Array, Array]:
    """Beam search over a flat ``[batch * beam]`` state; returns the beams best first.

    Each step extends every alive beam by every token, keeps the 2k best candidates, moves the
    ones ending in EOS to the finished set (score = log-prob / length penalty) and keeps the k
    best others alive. It stops when no alive beam can beat the worst finished one (alive
    log-probs only fall, and the penalty is largest at ``max_decode_length``). Finished beams
    are returned first, best first; slots with no finished beam are filled with the best alive
    beams (cut at ``max_decode_length``, penalised at that length), as T5X falls back to them.

    Returns tokens ``[batch, beam, max_decode_length]`` and scores ``[batch, beam]``.
    """
    k, n = beam_size, max_decode_length
    if k < 1:
        raise ValueError(f"beam_size must be >= 1, got {k}")

    def flat(x):  # [batch, beam, ...] -> [batch * beam, ...]
        return x.reshape((batch_size * k,) + x.shape[2:])

    def cond(carry):
        i, _, _, alive_lp, _, fin_scores, fin_flags = carry
        best_alive = alive_lp[:, 0] / length_penalty(n, alpha)
        worst_finished = jnp.where(fin_flags, fin_scores, NEG_INF).min(axis=1)
        # Until a row has k finished beams, it can still improve.
        can_improve = jnp.logical_or(
            jnp.logical_not(jnp.all(fin_flags, axis=1)), best_alive > worst_finished
        )
        return jnp.logical_and(i < n, jnp.any(can_improve))

    def body(carry):
        i, state, alive_seqs, alive_lp, fin_seqs, fin_scores, fin_flags = carry
        # [batch, beam, n + 1] -> last tokens [batch * beam]
        last = flat(jax.lax.dynamic_index_in_dim(alive_seqs, i, axis=2, keepdims=False))
        logits, state = step_fn(state, last)
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        # [batch * beam, vocab] -> [batch, beam * vocab] candidate totals
        cand_lp = (alive_lp[:, :, None] + log_probs.reshape(batch_size, k, vocab)).reshape(
            batch_size, k * vocab
        )
        top_lp, top_idx = jax.lax.top_k(cand_lp, 2 * k)
        top_beam, top_token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        # [batch, beam, n + 1] -> [batch, 2k, n + 1], then write the new token at i + 1.
        top_seqs = jnp.take_along_axis(alive_seqs, top_beam[:, :, None], axis=1)
        top_seqs = top_seqs.at[:, :, i + 1].set(top_token)
        is_eos = top_token == eos_id

        # Finished: merge the EOS candidates into the finished set, keep the k best.
        new_scores = jnp.where(is_eos, top_lp / length_penalty(i + 1, alpha), NEG_INF)
        all_seqs = jnp.concatenate([fin_seqs, top_seqs], axis=1)
        all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
        all_flags = jnp.concatenate([fin_flags, is_eos], axis=1)
        fin_scores, keep = jax.lax.top_k(jnp.where(all_flags, all_scores, NEG_INF), k)
        fin_seqs = jnp.take_along_axis(all_seqs, keep[:, :, None], axis=1)
        fin_flags = jnp.take_along_axis(all_flags, keep, axis=1)

        # Alive: the k best non-EOS candidates; their cache rows follow their parent beams.
        alive_lp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), k)
        alive_seqs = jnp.take_along_axis(top_seqs, keep[:, :, None], axis=1)
        parent = jnp.take_along_axis(top_beam, keep, axis=1)
        # [batch, beam] -> flat rows of the [batch * beam] state
        rows = (jnp.arange(batch_size)[:, None] * k + parent).reshape(-1)
        state = reorder_fn(state, rows)
        return i + 1, state, alive_seqs, alive_lp, fin_seqs, fin_scores, fin_flags

    # Only beam 0 is alive at the start, so the first step does not pick k copies of one token.
    alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch_size, 1))
    seqs = jnp.full((batch_size, k, n + 1), PAD_ID, jnp.int32)
    carry = (
        jnp.array(0, jnp.int32), state, seqs, alive_lp,
        seqs, jnp.full((batch_size, k), NEG_INF, jnp.float32), jnp.zeros((batch_size, k), bool),
    )
    _, _, alive_seqs, alive_lp, fin_seqs, fin_scores, fin_flags = jax.lax.while_loop(
        cond, body, carry
    )
    # Finished beams come first (sorted); empty slots are filled with the best alive beams,
    # penalised at full length. fin_* is sorted, so its empty slots are the trailing ones.
    num_finished = jnp.sum(fin_flags, axis=1, keepdims=True)
    # [batch, beam]: slot j takes alive beam j - num_finished.
    alive_pick = jnp.clip(jnp.arange(k)[None, :] - num_finished, 0, k - 1)
    fill_seqs = jnp.take_along_axis(alive_seqs, alive_pick[:, :, None], axis=1)
    fill_scores = jnp.take_along_axis(alive_lp, alive_pick, axis=1) / length_penalty(n, alpha)
    tokens = jnp.where(fin_flags[:, :, None], fin_seqs, fill_seqs)[:, :, 1:]
    scores = jnp.where(fin_flags, fin_scores, fill_scores)
    return tokens, scores


def beam_search_decode(
    model: nn.Module, params: Any, encoder_input_tokens: Array, max_decode_length: int, *,
    beam_size: int = 4, alpha: float = 0.6, eos_id: int = EOS_ID,
) -> tuple[Array, Array]:
    """Beam search with the model: tokens ``[batch, beam, max_len]``, scores ``[batch, beam]``."""
    batch = encoder_input_tokens.shape[0]
    # Every beam is a row of its own: [batch, len] -> [batch * beam, len].
    enc_tokens = jnp.repeat(encoder_input_tokens, beam_size, axis=0)
    encoded = jnp.repeat(_encode(model, params, encoder_input_tokens), beam_size, axis=0)
    cache = init_decode_cache(model, params, encoded, enc_tokens, max_decode_length)
    step = model_step_fn(model, params, encoded, enc_tokens)
    return beam_search(step, cache, reorder_cache, batch, beam_size, max_decode_length,
                       alpha=alpha, eos_id=eos_id)
