"""Decoding: cached steps == full recomputation, greedy/sampling/beam search, EOS, jit."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling import decoding, t5
from tests.test_t5 import _init

MAX_LEN = 10
VOCAB = 512


def _model(**overrides):
    """Tiny model with random params of its exact tree (test_t5's draws, seed 3)."""
    return _init(t5.get_t5_config("tiny", **overrides), seed=3)


def _encoder_tokens():
    enc = np.random.RandomState(0).randint(2, VOCAB, (3, 9)).astype(np.int32)
    enc[1, 6:] = 0  # a padded row
    return jnp.asarray(enc)


@functools.partial(jax.jit, static_argnums=0)
def _full_apply(model, params, enc, dec):
    return model.apply({"params": params}, enc, dec)


def _full_logits(model, params, enc, generated):
    """Logits of every position by full recomputation, decoder inputs = [0] + generated.

    Inputs are right-padded to MAX_LEN so one compiled shape serves every call; the decoder is
    causal, so the padding cannot change the positions returned.
    """
    batch, n = generated.shape
    dec = np.zeros((batch, MAX_LEN), np.int32)
    dec[:, 1:n + 1] = generated
    return np.asarray(_full_apply(model, params, enc, dec))[:, :n + 1]


def _naive_greedy(model, params, enc, steps, eos_id):
    generated = np.zeros((enc.shape[0], 0), np.int32)
    done = np.zeros(enc.shape[0], bool)
    for _ in range(steps):
        nxt = _full_logits(model, params, enc, generated)[:, -1].argmax(-1).astype(np.int32)
        nxt = np.where(done, 0, nxt)
        done |= nxt == eos_id
        generated = np.concatenate([generated, nxt[:, None]], axis=1)
    return generated


_greedy = jax.jit(decoding.greedy_decode, static_argnums=(0, 3), static_argnames=("eos_id",))
_sample = jax.jit(decoding.sample_decode, static_argnums=(0, 3),
                  static_argnames=("temperature", "top_k", "eos_id"))
_beam = jax.jit(decoding.beam_search_decode, static_argnums=(0, 3),
                static_argnames=("beam_size", "alpha", "eos_id"))


# ---------------------------------------------------------------------------------------------
# The cache.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, {"scan_layers": True, "tie_embeddings": True}])
def test_cached_steps_equal_full_recomputation(overrides):
    model, params = _model(**overrides)
    enc = _encoder_tokens()
    forced = np.random.RandomState(1).randint(2, 512, (3, MAX_LEN)).astype(np.int32)
    full = _full_logits(model, params, enc, forced[:, :-1])
    encoded = model.apply({"params": params}, enc, method="encode")
    cache = decoding.init_decode_cache(model, params, encoded, enc, MAX_LEN)
    step = jax.jit(decoding.model_step_fn(model, params, encoded, enc))
    last = jnp.zeros((3,), jnp.int32)
    for t in range(MAX_LEN):
        logits, cache = step(cache, last)
        # Float32 noise only: the cached step and the full pass sum in different orders
        # (seen up to 4.6e-5 on logits of magnitude ~1); the repo-wide bar is 1e-4.
        np.testing.assert_allclose(logits, full[:, t], atol=1e-4, err_msg=f"step {t}")
        last = jnp.asarray(forced[:, t])


def test_call_with_decode_flag_uses_the_cache():
    # The T5X-style protocol on __call__: a full-length decode=True call creates the cache,
    # then one token per call.
    model, params = _model()
    enc = _encoder_tokens()
    forced = np.random.RandomState(2).randint(2, 512, (3, MAX_LEN)).astype(np.int32)
    full = _full_logits(model, params, enc, forced[:, :-1])
    dummy = jnp.zeros((3, MAX_LEN), jnp.int32)
    _, variables = model.apply({"params": params}, enc, dummy, decode=True, mutable=["cache"])
    cache = jax.tree_util.tree_map(jnp.zeros_like, variables["cache"])

    @jax.jit
    def step(cache, token):
        logits, variables = model.apply({"params": params, "cache": cache}, enc, token,
                                        decode=True, mutable=["cache"])
        return logits, variables["cache"]

    token = jnp.zeros((3, 1), jnp.int32)
    for t in range(3):
        logits, cache = step(cache, token)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=2e-5, err_msg=f"step {t}")
        token = jnp.asarray(forced[:, t:t + 1])


def test_reorder_cache_gathers_batch_rows():
    model, params = _model(scan_layers=True)
    enc = _encoder_tokens()
    encoded = model.apply({"params": params}, enc, method="encode")
    cache = decoding.init_decode_cache(model, params, encoded, enc, MAX_LEN)
    step = jax.jit(decoding.model_step_fn(model, params, encoded, enc))
    _, cache = step(cache, jnp.array([5, 6, 7], jnp.int32))
    reordered = decoding.reorder_cache(cache, jnp.array([2, 2, 0]))
    key = cache["decoder"]["layers"]["block"]["attention"]["cached_key"]  # [layers, batch, ...]
    new = reordered["decoder"]["layers"]["block"]["attention"]["cached_key"]
    np.testing.assert_array_equal(new[:, 0], key[:, 2])
    np.testing.assert_array_equal(new[:, 2], key[:, 0])
    assert int(reordered["decoder"]["layers"]["block"]["attention"]["cache_index"][0]) == 1


# ---------------------------------------------------------------------------------------------
# Greedy and sampling.
# ---------------------------------------------------------------------------------------------
def test_greedy_equals_naive_argmax_loop():
    model, params = _model()
    enc = _encoder_tokens()
    tokens, scores = _greedy(model, params, enc, MAX_LEN, eos_id=-1)
    expected = _naive_greedy(model, params, enc, MAX_LEN, eos_id=-1)
    np.testing.assert_array_equal(tokens, expected)
    # Scores are the summed log-probs of the emitted tokens under full recomputation.
    logp = jax.nn.log_softmax(_full_logits(model, params, enc, expected[:, :-1]))
    ref = np.take_along_axis(np.asarray(logp), expected[:, :, None], axis=-1)[..., 0].sum(1)
    np.testing.assert_allclose(scores, ref, rtol=1e-5)


def test_greedy_stops_each_sequence_at_eos():
    model, params = _model()
    enc = _encoder_tokens()
    free, _ = _greedy(model, params, enc, MAX_LEN, eos_id=-1)
    eos = int(free[0, 3])  # row 0 emits this at step 3 (the others may or may not)
    tokens, _ = _greedy(model, params, enc, MAX_LEN, eos_id=eos)
    np.testing.assert_array_equal(tokens, _naive_greedy(model, params, enc, MAX_LEN, eos))
    first = int(np.argmax(np.asarray(free[0]) == eos))
    assert tokens[0, first] == eos and np.all(np.asarray(tokens[0, first + 1:]) == 0)


def test_sampling_top1_is_greedy_and_top_k_restricts():
    model, params = _model()
    enc = _encoder_tokens()
    greedy, _ = _greedy(model, params, enc, MAX_LEN, eos_id=-1)
    top1, _ = _sample(model, params, enc, MAX_LEN, rng_key=jax.random.PRNGKey(0),
                                     temperature=1.0, top_k=1, eos_id=-1)
    np.testing.assert_array_equal(top1, greedy)
    key = jax.random.PRNGKey(7)
    sampled, scores = _sample(model, params, enc, MAX_LEN, rng_key=key,
                                             temperature=2.0, top_k=3, eos_id=-1)
    again, _ = _sample(model, params, enc, MAX_LEN, rng_key=key,
                                      temperature=2.0, top_k=3, eos_id=-1)
    np.testing.assert_array_equal(sampled, again)  # same key, same sample
    assert not np.array_equal(sampled, greedy)
    logits = _full_logits(model, params, enc, np.asarray(sampled)[:, :-1])
    top3 = np.argsort(-logits, axis=-1)[..., :3]
    assert np.all(np.any(top3 == np.asarray(sampled)[..., None], axis=-1))
    logp = np.asarray(jax.nn.log_softmax(logits))
    ref = np.take_along_axis(logp, np.asarray(sampled)[..., None], axis=-1)[..., 0].sum(1)
    np.testing.assert_allclose(scores, ref, rtol=1e-5)


def test_decoding_jits():
    model, params = _model()
    enc = _encoder_tokens()
    greedy = jax.jit(functools.partial(decoding.greedy_decode, model, max_decode_length=MAX_LEN,
                                       eos_id=-1))
    np.testing.assert_array_equal(greedy(params, enc)[0],
                                  _naive_greedy(model, params, enc, MAX_LEN, eos_id=-1))
    beam = jax.jit(functools.partial(decoding.beam_search_decode, model,
                                     max_decode_length=MAX_LEN, beam_size=2))
    tokens, scores = beam(params, enc)
    assert tokens.shape == (3, 2, MAX_LEN) and scores.shape == (3, 2)


# ---------------------------------------------------------------------------------------------
# Beam search.
# ---------------------------------------------------------------------------------------------
def test_length_penalty_values():
    assert float(decoding.length_penalty(1, 0.6)) == pytest.approx(1.0)
    assert float(decoding.length_penalty(7, 0.6)) == pytest.approx(2.0**0.6)
    assert float(decoding.length_penalty(13, 1.0)) == pytest.approx(3.0)
    assert float(decoding.length_penalty(40, 0.0)) == pytest.approx(1.0)


@pytest.mark.parametrize("eos_step", [None, 4])
def test_beam_one_equals_greedy(eos_step):
    model, params = _model()
    enc = _encoder_tokens()
    free, free_scores = _greedy(model, params, enc, MAX_LEN, eos_id=-1)
    eos = -1 if eos_step is None else int(free[2, eos_step])
    greedy, greedy_scores = _greedy(model, params, enc, MAX_LEN, eos_id=eos)
    beam, beam_scores = _beam(model, params, enc, MAX_LEN, beam_size=1,
                                                    alpha=0.0, eos_id=eos)
    np.testing.assert_array_equal(beam[:, 0], greedy)
    np.testing.assert_allclose(beam_scores[:, 0], greedy_scores, rtol=1e-5)


def test_beam_scores_match_full_recomputation():
    # Every returned beam's score is its full-recomputation log-prob / length penalty, which
    # only holds if the cache rows follow their beams through the reordering.
    model, params = _model()
    enc = _encoder_tokens()
    alpha, eos = 0.6, 1
    tokens, scores = _beam(model, params, enc, MAX_LEN, beam_size=3,
                                                 alpha=alpha, eos_id=eos)
    tokens = np.asarray(tokens)
    for b in range(3):
        logits = _full_logits(model, params, enc[b:b + 1].repeat(3, 0), tokens[b, :, :-1])
        logp = np.asarray(jax.nn.log_softmax(logits))
        for k in range(3):
            seq = tokens[b, k]
            length = int(np.argmax(seq == eos)) + 1 if np.any(seq == eos) else MAX_LEN
            total = logp[k, np.arange(length), seq[:length]].sum()
            expected = total / ((5 + length) / 6) ** alpha
            np.testing.assert_allclose(scores[b, k], expected, rtol=1e-4)
    assert np.all(np.asarray(scores[:, 0]) >= np.asarray(scores[:, 1]) - 1e-6)


def _markov_step(table):
    """A hand-made "model": next-token probabilities depend only on the last token."""
    log_table = jnp.log(jnp.asarray(table, jnp.float32))

    def step(state, tokens):
        return log_table[tokens], state

    return step


# Tokens: 0 = start/PAD, 1 = EOS, 2 = A, 3 = B. Probabilities floored at 1e-9 (never chosen).
_TABLE = [
    [1e-9, 1e-9, 0.6, 0.4],  # after start
    [1e-9, 0.97, 0.015, 0.015],  # after EOS (unused)
    [1e-9, 0.25, 0.45, 0.3],  # after A
    [1e-9, 0.9, 0.05, 0.05],  # after B
]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_hand_checked_example(alpha):
    # By hand (k = 2, 3 steps): step 1 alive A .6, B .4. Step 2 candidates: B EOS .36,
    # A A .27, A B .18, A EOS .15 -> finished {BE, AE}, alive {AA, AB}. Step 3: A B EOS .162,
    # A A A .1215, A A B .081, A A EOS .0675 -> finished {BE .36, ABE .162}; greedy is A A A.
    tokens, scores = decoding.beam_search(
        _markov_step(_TABLE), None, lambda s, _: s, batch_size=1, beam_size=2,
        max_decode_length=3, alpha=alpha, eos_id=1,
    )
    np.testing.assert_array_equal(tokens[0], [[3, 1, 0], [2, 3, 1]])
    expected = [math.log(0.36) / (7 / 6) ** alpha, math.log(0.162) / (8 / 6) ** alpha]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
    greedy, _ = decoding.sample_loop(_markov_step(_TABLE), None, 1, 3, eos_id=1)
    np.testing.assert_array_equal(greedy[0], [2, 2, 2])


def test_beam_search_falls_back_to_alive_beams():
    # With eos_id=-1 nothing finishes and token 1 is an ordinary token: the alive beams come
    # back, penalised at length 2: "B 1" .36, "A A" .27 (then "A B" .18, "A 1" .15).
    tokens, scores = decoding.beam_search(
        _markov_step(_TABLE), None, lambda s, _: s, batch_size=1, beam_size=2,
        max_decode_length=2, alpha=0.6, eos_id=-1,
    )
    np.testing.assert_array_equal(tokens[0], [[3, 1], [2, 2]])
    penalty = (7 / 6) ** 0.6
    np.testing.assert_allclose(scores[0], [math.log(0.36) / penalty, math.log(0.27) / penalty],
                               rtol=1e-5)
