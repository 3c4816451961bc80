"""T5 span corruption, host-side in NumPy (runs in the data pipeline on token ids).

Semantics follow the original T5 preprocessors (``t5.data.preprocessors``:
``random_spans_helper``, ``random_spans_noise_mask``, ``noise_span_to_unique_sentinel``,
``nonnoise_span_to_unique_sentinel``) as summarised in shared/reference/T5.md;
tests/test_span_corruption.py compares against them.

Randomness: every random draw comes from the ``rng`` argument, and the pipeline builds that with
:func:`example_rng` from (seed, example index) only, so an example's corruption never depends on
which worker made it, on batch composition or on global state.

Ids: EOS = 1; sentinels count down from ``vocab_size - 1`` (``<extra_id_0>``), where
``vocab_size`` is the seqio vocabulary size including its extra ids (32100 for the T5 vocabulary:
sentinels 32099, 32098, ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

EOS_ID = 1
NUM_SENTINELS = 100  # seqio's default extra_ids for the T5 vocabulary.
# Ids 0, 1, 2 are PAD, EOS, UNK: a sentinel must never land on them.
NUM_RESERVED_IDS = 3


# ---------------------------------------------------------------------------------------------
# Randomness and parameter checks.
# ---------------------------------------------------------------------------------------------


def example_rng(seed: int, index: int) -> np.random.Generator:
    """A generator whose stream depends only on (seed, index): Philox keyed by both.

    Philox is counter-based, so distinct keys give independent streams without any state shared
    between examples. Constructing one costs ~10-25 us (NumPy also seeds an unused SeedSequence).
    """
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"example_rng: {name} must be an int, got {value!r}")
        if not 0 <= int(value) < 2**64:
            raise ValueError(f"example_rng: {name}={value} must be in [0, 2**64)")
    return np.random.Generator(np.random.Philox(key=(int(seed) << 64) | int(index)))


def check_noise_density(noise_density: float) -> None:
    if not isinstance(noise_density, (int, float, np.floating)) or not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density={noise_density!r} must be a float in (0, 1)")


def check_mean_noise_span_length(mean_noise_span_length: float) -> None:
    ok = isinstance(mean_noise_span_length, (int, float, np.floating))
    if not ok or not (math.isfinite(mean_noise_span_length) and mean_noise_span_length > 0):
        raise ValueError(
            f"mean_noise_span_length={mean_noise_span_length!r} must be a finite number > 0")


def check_tokens(tokens: np.ndarray, name: str = "tokens") -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array, got shape {tokens.shape} "
                         f"dtype {tokens.dtype}")
    return tokens


def check_mask(noise_mask: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    noise_mask = np.asarray(noise_mask)
    if noise_mask.dtype != np.bool_ or noise_mask.shape != tokens.shape:
        raise ValueError(f"noise_mask must be a bool array of shape {tokens.shape}, got shape "
                         f"{noise_mask.shape} dtype {noise_mask.dtype}")
    return noise_mask


# ---------------------------------------------------------------------------------------------
# Length bookkeeping.
# ---------------------------------------------------------------------------------------------


def _lengths_after_corruption(tokens_length: int, noise_density: float,
                              mean_noise_span_length: float) -> tuple[int, int, int]:
    """(inputs_length, targets_length, num_noise_spans) of a raw chunk, EOS included.

    Python float arithmetic and round() (half to even), exactly as the original's bookkeeping.
    """
    num_noise = int(round(tokens_length * noise_density))
    num_spans = int(round(num_noise / mean_noise_span_length))
    # inputs: non-noise tokens + one sentinel per noise span + EOS; targets: the mirror image.
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1, num_spans


def raw_length(inputs_length: int, noise_density: float = 0.15,
               mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(tokens_length, targets_length): the raw chunk that corrupts to exactly ``inputs_length``.

    The largest raw length whose inputs (with EOS) still fit, as the original
    ``random_spans_helper`` with one sentinel per span: 512 -> (568, 114), 128 -> (141, 29).
    """
    check_noise_density(noise_density)
    check_mean_noise_span_length(mean_noise_span_length)
    if isinstance(inputs_length, bool) or not isinstance(inputs_length, (int, np.integer)):
        raise ValueError(f"inputs_length={inputs_length!r} must be an int")
    tokens_length = int(inputs_length) - 1
    while _lengths_after_corruption(
            tokens_length + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length, num_spans = _lengths_after_corruption(
        tokens_length, noise_density, mean_noise_span_length)
    if num_spans < 1:
        # The mask would still force one span (it clips to >= 1), so inputs would overflow.
        raise ValueError(
            f"inputs_length={inputs_length} is too short for noise_density={noise_density}, "
            f"mean_noise_span_length={mean_noise_span_length}: its raw chunk of {tokens_length} "
            "tokens has no whole noise span")
    # The original's tweak for density 0.5: make targets no longer than inputs (round numbers).
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


@functools.lru_cache(maxsize=1024)
def num_noise_tokens_and_spans(length: int, noise_density: float,
                               mean_noise_span_length: float) -> tuple[int, int]:
    """The mask's deterministic counts for a chunk of ``length`` >= 2 tokens.

    float32 products / quotients with round-half-to-even, as the original computes them on
    device, so the counts agree with it even where float32 and float64 would round differently.
    (A float32 value is exact in a Python float, whose round() is half-to-even.) Cached: a
    pipeline sees the same few lengths over and over.
    """
    num_noise = round(float(np.float32(length) * np.float32(noise_density)))
    num_noise = min(max(num_noise, 1), length - 1)  # at least one noise and one non-noise token
    num_spans = round(float(np.float32(num_noise) / np.float32(mean_noise_span_length)))
    return num_noise, max(num_spans, 1)


# ---------------------------------------------------------------------------------------------
# The noise mask.
# ---------------------------------------------------------------------------------------------


def _random_compositions(keys: np.ndarray, num_items: int, num_segments: int) -> np.ndarray:
    """Uniformly random splits of ``num_items`` into ``num_segments`` positive lengths, per row.

    ``keys`` holds num_items - 1 uniform draws per row, one per gap between items; the gaps with
    the num_segments - 1 smallest keys are a uniformly random subset of gaps, i.e. the cut points
    of a uniformly random composition (what the original gets by shuffling a 0/1 vector).
    """
    batch = keys.shape[0]
    # [batch, num_items - 1] keys -> [batch, num_segments + 1] boundaries 0 < cut < ... < num_items
    bounds = np.empty((batch, num_segments + 1), dtype=np.int64)
    bounds[:, 0] = 0
    bounds[:, -1] = num_items
    if num_segments > 1:
        cuts = np.argpartition(keys, num_segments - 2, axis=1)[:, : num_segments - 1]
        cuts.sort(axis=1)
        bounds[:, 1:-1] = cuts
        bounds[:, 1:-1] += 1
    # [batch, num_segments + 1] -> [batch, num_segments]
    return bounds[:, 1:] - bounds[:, :-1]


@functools.lru_cache(maxsize=64)
def _alternating(size: int) -> np.ndarray:
    """[False, True, False, ...] of ``size``: the run kinds (non-noise first). Read-only, cached."""
    pattern = np.arange(size) % 2 == 1
    pattern.flags.writeable = False
    return pattern


def _check_mask_args(length: int, noise_density: float, mean_noise_span_length: float) -> None:
    check_noise_density(noise_density)
    check_mean_noise_span_length(mean_noise_span_length)
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length={length!r} must be an int >= 0")


def _noise_masks(length: int, noise_density: float, mean_noise_span_length: float,
                 rngs: Sequence[np.random.Generator]) -> np.ndarray:
    padded_length = max(int(length), 2)
    num_noise, num_spans = num_noise_tokens_and_spans(
        padded_length, noise_density, mean_noise_span_length)
    num_nonnoise = padded_length - num_noise
    if num_spans > min(num_noise, num_nonnoise):
        # The original fails here too (a TF shape error): k spans need >= k tokens of each kind.
        raise ValueError(
            f"length={length} with noise_density={noise_density}, mean_noise_span_length="
            f"{mean_noise_span_length} needs {num_spans} noise and {num_spans} non-noise spans "
            f"but has {num_noise} noise and {num_nonnoise} non-noise tokens")
    # Each example draws from its own generator: first its noise gaps, then its non-noise gaps.
    keys = np.empty((len(rngs), padded_length - 2))
    for row, rng in zip(keys, rngs, strict=True):
        rng.random(out=row)
    noise_lengths = _random_compositions(keys[:, : num_noise - 1], num_noise, num_spans)
    nonnoise_lengths = _random_compositions(keys[:, num_noise - 1:], num_nonnoise, num_spans)
    # [batch, num_spans] x 2 -> [batch, 2 * num_spans]: nonnoise_0, noise_0, nonnoise_1, ...
    run_lengths = np.empty((len(rngs), 2 * num_spans), dtype=np.int64)
    run_lengths[:, 0::2] = nonnoise_lengths
    run_lengths[:, 1::2] = noise_lengths
    pattern = _alternating(2 * num_spans * len(rngs))
    # [batch * 2 * num_spans] runs -> [batch, padded_length]
    masks = np.repeat(pattern, run_lengths.ravel()).reshape(len(rngs), padded_length)
    return masks[:, :length]


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """bool[length]: noise spans at random, alternating non-noise / noise, starting non-noise.

    num_noise = clip(round(length * density), 1, length - 1) tokens in
    num_spans = max(round(num_noise / mean), 1) spans; the noise lengths and the non-noise
    lengths are independent uniformly random compositions. Chunks shorter than 2 tokens are
    treated as length 2 and cut back, as in the original.
    """
    _check_mask_args(length, noise_density, mean_noise_span_length)
    return _noise_masks(length, noise_density, mean_noise_span_length, (rng,))[0]


def random_spans_noise_masks(length: int, noise_density: float, mean_noise_span_length: float,
                             rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """bool[len(rngs), length]; row b equals random_spans_noise_mask(..., rngs[b]).

    The batched form amortises NumPy's per-call overhead over a batch of same-length chunks.
    """
    _check_mask_args(length, noise_density, mean_noise_span_length)
    return _noise_masks(length, noise_density, mean_noise_span_length, rngs)


# ---------------------------------------------------------------------------------------------
# Mask -> (inputs, targets).
# ---------------------------------------------------------------------------------------------


def _check_sentinel_room(num_spans: int, vocab_size: int, max_sentinels: int | None) -> None:
    if max_sentinels is not None and num_spans > max_sentinels:
        raise ValueError(
            f"{num_spans} spans need {num_spans} sentinels but the vocabulary has only "
            f"max_sentinels={max_sentinels} extra ids (vocab_size={vocab_size}); use a vocabulary "
            "with more extra ids or fewer spans (lower noise_density / longer mean span)")
    if vocab_size - num_spans < NUM_RESERVED_IDS:
        raise ValueError(f"vocab_size={vocab_size} has no room for {num_spans} sentinels above the "
                         f"{NUM_RESERVED_IDS} reserved ids (PAD, EOS, UNK)")


def _spans_to_unique_sentinels(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int,
                               max_sentinels: int | None) -> np.ndarray:
    """[batch, length] -> [batch, kept]; every row must keep the same number of tokens."""
    # A token starts a run if it is noise and its predecessor is not.
    prev_is_noise = np.zeros_like(noise_mask)
    prev_is_noise[:, 1:] = noise_mask[:, :-1]
    first_noise = noise_mask & ~prev_is_noise
    run_index = np.cumsum(first_noise, axis=1, dtype=np.int32)
    if run_index.size:
        _check_sentinel_room(int(run_index[:, -1].max()), vocab_size, max_sentinels)
    keep = ~(noise_mask & prev_is_noise)
    out = np.where(first_noise, vocab_size - run_index, tokens).astype(tokens.dtype)
    # [batch, length] -> [batch * kept] -> [batch, kept]
    return out[keep].reshape(tokens.shape[0], -1)


def _corrupt(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int,
             max_sentinels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Both sides at once (shares the run bookkeeping): [batch, length] -> inputs, targets.

    Equal to _spans_to_unique_sentinels on the mask (inputs) and on its complement (targets).
    """
    # [batch, length]: where a run of either kind starts.
    run_start = np.empty_like(noise_mask)
    run_start[:, :1] = True
    np.not_equal(noise_mask[:, 1:], noise_mask[:, :-1], out=run_start[:, 1:])
    noise_start = run_start & noise_mask
    nonnoise_start = run_start & ~noise_mask
    noise_index = np.cumsum(noise_start, axis=1, dtype=np.int32)  # int32: 10x faster than int64
    nonnoise_index = np.cumsum(nonnoise_start, axis=1, dtype=np.int32)
    if tokens.size:
        num_spans = max(int(noise_index[:, -1].max()), int(nonnoise_index[:, -1].max()))
        _check_sentinel_room(num_spans, vocab_size, max_sentinels)
    batch = tokens.shape[0]
    # A run start is kept (as its sentinel on the side where the run is dropped).
    inputs = np.where(noise_start, vocab_size - noise_index, tokens)
    inputs = inputs[run_start | ~noise_mask].reshape(batch, -1)
    targets = np.where(nonnoise_start, vocab_size - nonnoise_index, tokens)
    targets = targets[run_start | noise_mask].reshape(batch, -1)
    return inputs.astype(tokens.dtype, copy=False), targets.astype(tokens.dtype, copy=False)


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int,
                                  max_sentinels: int | None = NUM_SENTINELS) -> np.ndarray:
    """Each run of noise tokens -> one sentinel, vocab_size - 1 for the first run, then down."""
    return _spans_to_unique_sentinels(tokens[None], noise_mask[None], vocab_size,
                                      max_sentinels)[0]


def nonnoise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int,
                                     max_sentinels: int | None = NUM_SENTINELS) -> np.ndarray:
    """The targets side: each run of kept tokens -> one sentinel, noise tokens stay."""
    return noise_span_to_unique_sentinel(tokens, ~noise_mask, vocab_size, max_sentinels)


def append_eos(tokens: np.ndarray, eos_id: int = EOS_ID) -> np.ndarray:
    """[..., length] -> [..., length + 1]."""
    out = np.empty(tokens.shape[:-1] + (tokens.shape[-1] + 1,), dtype=tokens.dtype)
    out[..., :-1] = tokens
    out[..., -1] = eos_id
    return out


def check_vocab_size(vocab_size: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or (
            vocab_size <= NUM_RESERVED_IDS):
        raise ValueError(f"vocab_size={vocab_size!r} must be an int > {NUM_RESERVED_IDS}")


def span_corruption_from_mask(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int,
                              eos_id: int = EOS_ID, max_sentinels: int | None = NUM_SENTINELS,
                              ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) for a given mask; both end with EOS.

    inputs: non-noise tokens with one sentinel per noise span. targets: one sentinel per
    non-noise span, then that span's noise tokens, i.e. <extra_id_0> noise_0 <extra_id_1> ...
    ``max_sentinels`` (the vocabulary's extra ids) bounds the span count: None disables the
    bound as the original did (its sentinels then walk down into ordinary ids).
    """
    tokens = check_tokens(tokens)
    noise_mask = check_mask(noise_mask, tokens)
    check_vocab_size(vocab_size)
    # [length] -> [1, length] -> [1, kept] -> [kept + 1]
    inputs, targets = _corrupt(tokens[None], noise_mask[None], vocab_size, max_sentinels)
    return append_eos(inputs[0], eos_id), append_eos(targets[0], eos_id)


def span_corruption(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
                    noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                    eos_id: int = EOS_ID, max_sentinels: int | None = NUM_SENTINELS,
                    ) -> dict[str, np.ndarray]:
    """The T5 pretraining objective on one raw chunk: dict(inputs=..., targets=...)."""
    tokens = check_tokens(tokens)
    noise_mask = random_spans_noise_mask(tokens.size, noise_density, mean_noise_span_length, rng)
    inputs, targets = span_corruption_from_mask(tokens, noise_mask, vocab_size, eos_id,
                                                max_sentinels)
    return {"inputs": inputs, "targets": targets}


def span_corruption_batch(tokens: np.ndarray, rngs: Sequence[np.random.Generator],
                          vocab_size: int, noise_density: float = 0.15,
                          mean_noise_span_length: float = 3.0, eos_id: int = EOS_ID,
                          max_sentinels: int | None = NUM_SENTINELS) -> dict[str, np.ndarray]:
    """Row b equals span_corruption(tokens[b], rngs[b], ...) for same-length chunks.

    Same-length chunks have the same deterministic noise and span counts, so every row of the
    inputs (and of the targets) has the same length and the batch stays rectangular.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu" or not 0 < tokens.shape[0] == len(rngs):
        raise ValueError(f"tokens must be a [batch >= 1, length] integer array, one rng per row; "
                         f"got shape {tokens.shape} dtype {tokens.dtype} and {len(rngs)} rngs")
    check_vocab_size(vocab_size)
    masks = random_spans_noise_masks(tokens.shape[1], noise_density, mean_noise_span_length, rngs)
    # [batch, length] -> [batch, inputs_length - 1] and [batch, targets_length - 1], then EOS.
    inputs, targets = _corrupt(tokens, masks, vocab_size, max_sentinels)
    return {"inputs": append_eos(inputs, eos_id), "targets": append_eos(targets, eos_id)}
