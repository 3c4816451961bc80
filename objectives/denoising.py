"""The T5 paper's other pretraining objectives (Raffel et al. 2020, Tables 4-7), host-side NumPy.

Each objective is the original T5 ``denoise`` recipe of the paper's gin configs
(``t5/models/gin/objectives/*.gin`` of the ``t5`` package): a noise mask, an inputs transform and a
targets transform (the whole original text when it has none), then EOS on both sides as the
T5 tasks' output features append it. Mapping, paper row -> (mask, inputs, targets):

| objective         | paper rows (table)     | mask              | inputs           | targets     |
|-------------------|------------------------|-------------------|------------------|-------------|
| prefix_lm         | prefix LM (4)          | random prefix     | the prefix       | the rest    |
| bert              | BERT-style (4, 5)      | i.i.d. 15%        | 90% mask token,  | whole text  |
|                   |                        |                   | 10% random token |             |
| mass              | MASS-style (5)         | i.i.d. 15%        | mask tokens      | whole text  |
| deshuffle         | deshuffling (4)        | every token       | permuted         | whole text  |
| iid_replace_spans | replace spans (5, 6)   | i.i.d. d          | sentinel per run | sentinels + |
|                   |                        |                   |                  | noise       |
| iid_drop_tokens   | drop corrupted (5)     | i.i.d. d          | noise dropped    | noise       |
| span_corruption   | span lengths (7), T5   | random spans d, m | sentinel per run | sentinels + |
|                   |                        |                   |                  | noise       |

(gin: prefix_lm, iid_15_r10s90_f, iid_15_m_f, all_permute, iid_{10,15,25,50}_u_u, iid_15_d_d,
span_{2,3,5,10}_15_u_u.) A non-unique mask token is the first sentinel, ``vocab_size - 1``; random
replacement tokens are uniform over [3, vocab_size) (the extra ids included), as in the original.

The transforms take their randomness as explicit arrays (a mask, a permutation, per-token
draws), so tests can feed the original TF transforms and ours the same draws; the objectives draw
those from the ``rng`` they are given (see ``span_corruption.example_rng``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from objectives import span_corruption as sc

# Truncation budget for objectives whose targets vary in length: ``lengths`` reports the length
# that at most this fraction of examples exceeds (the pipeline trims the rare longer ones).
TARGETS_TAIL_PROB = 1e-3


# ---------------------------------------------------------------------------------------------
# Noise masks.
# ---------------------------------------------------------------------------------------------


def iid_noise_mask(length: int, noise_density: float, rng: np.random.Generator) -> np.ndarray:
    """bool[length]: each token is noise independently with probability ``noise_density``."""
    if not 0.0 < noise_density <= 1.0:
        raise ValueError(f"noise_density={noise_density!r} must be in (0, 1]")
    return rng.random(length) < noise_density


def random_prefix_noise_mask(length: int, noise_density: float,
                             rng: np.random.Generator) -> np.ndarray:
    """bool[length]: the first k tokens are "noise" (the prefix), k uniform in [k_min, length-1].

    k_min = clip(round((1 - 2 * density) * (length - 1)), 1, length - 1), in float32 as the
    original; density 0.5 gives any split point that leaves both sides non-empty.
    """
    if not 0.0 < noise_density <= 0.5:
        raise ValueError(f"noise_density={noise_density!r} must be in (0, 0.5] for prefix_lm")
    if length < 2:
        raise ValueError(f"length={length} must be >= 2 to split into a prefix and a rest")
    max_prefix = length - 1
    min_prefix = round(float(np.float32(1 - 2 * noise_density) * np.float32(max_prefix)))
    min_prefix = min(max_prefix, max(1, min_prefix))
    num_prefix = rng.integers(min_prefix, max_prefix + 1)
    return np.arange(length) < num_prefix


# ---------------------------------------------------------------------------------------------
# Transforms: (tokens, noise mask, explicit draws) -> tokens.
# ---------------------------------------------------------------------------------------------


def noise_token_to_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                            vocab_size: int) -> np.ndarray:
    """Every noise token -> the mask token <extra_id_0> = vocab_size - 1 (MASS-style)."""
    return np.where(noise_mask, vocab_size - 1, tokens).astype(tokens.dtype, copy=False)


def noise_token_to_random_token_or_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                            vocab_size: int, use_random: np.ndarray,
                                            random_tokens: np.ndarray) -> np.ndarray:
    """BERT-style: a noise token becomes ``random_tokens`` if ``use_random``, else the mask token.

    ``use_random`` (bool) and ``random_tokens`` are per-position draws over the whole sequence,
    as the original draws them; non-noise positions ignore them.
    """
    replacement = np.where(use_random, random_tokens, vocab_size - 1)
    return np.where(noise_mask, replacement, tokens).astype(tokens.dtype, copy=False)


def drop_noise_tokens(tokens: np.ndarray, noise_mask: np.ndarray) -> np.ndarray:
    return tokens[~noise_mask]


def drop_nonnoise_tokens(tokens: np.ndarray, noise_mask: np.ndarray) -> np.ndarray:
    return tokens[noise_mask]


def permute_noise_tokens(tokens: np.ndarray, noise_mask: np.ndarray,
                         permutation: np.ndarray) -> np.ndarray:
    """Noise tokens reordered: the i-th noise position gets noise token ``permutation[i]``."""
    out = tokens.copy()
    out[noise_mask] = tokens[noise_mask][permutation]
    return out


# ---------------------------------------------------------------------------------------------
# Objectives: (tokens, rng, vocab_size, **params) -> dict(inputs, targets), EOS on both.
# ---------------------------------------------------------------------------------------------


def _finish(inputs: np.ndarray, targets: np.ndarray, eos_id: int) -> dict[str, np.ndarray]:
    return {"inputs": sc.append_eos(inputs, eos_id), "targets": sc.append_eos(targets, eos_id)}


def _prepare(tokens: np.ndarray, vocab_size: int, min_length: int = 1) -> np.ndarray:
    tokens = sc.check_tokens(tokens)
    sc.check_vocab_size(vocab_size)
    if tokens.size < min_length:
        raise ValueError(f"tokens has {tokens.size} tokens; this objective needs >= {min_length}")
    return tokens


def prefix_lm(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
              noise_density: float = 0.5, eos_id: int = sc.EOS_ID) -> dict[str, np.ndarray]:
    """Split at a random point: inputs = the prefix, targets = the continuation."""
    tokens = _prepare(tokens, vocab_size, min_length=2)
    noise_mask = random_prefix_noise_mask(tokens.size, noise_density, rng)
    return _finish(drop_nonnoise_tokens(tokens, noise_mask),
                   drop_noise_tokens(tokens, noise_mask), eos_id)


def bert(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
         noise_density: float = 0.15, random_prob: float = 0.1,
         eos_id: int = sc.EOS_ID) -> dict[str, np.ndarray]:
    """BERT-style: corrupt i.i.d. tokens (mask token or random token), predict the whole text."""
    tokens = _prepare(tokens, vocab_size)
    sc.check_noise_density(noise_density)
    if not 0.0 <= random_prob <= 1.0:
        raise ValueError(f"random_prob={random_prob!r} must be in [0, 1]")
    noise_mask = iid_noise_mask(tokens.size, noise_density, rng)
    use_random = rng.random(tokens.size) < random_prob
    random_tokens = rng.integers(sc.NUM_RESERVED_IDS, vocab_size, tokens.size)
    inputs = noise_token_to_random_token_or_sentinel(tokens, noise_mask, vocab_size, use_random,
                                                     random_tokens)
    return _finish(inputs, tokens, eos_id)


def mass(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
         noise_density: float = 0.15, eos_id: int = sc.EOS_ID) -> dict[str, np.ndarray]:
    """MASS-style: every i.i.d.-chosen token becomes the mask token; predict the whole text."""
    tokens = _prepare(tokens, vocab_size)
    sc.check_noise_density(noise_density)
    noise_mask = iid_noise_mask(tokens.size, noise_density, rng)
    return _finish(noise_token_to_sentinel(tokens, noise_mask, vocab_size), tokens, eos_id)


def deshuffle(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
              eos_id: int = sc.EOS_ID) -> dict[str, np.ndarray]:
    """Inputs are the tokens in random order; targets the original order."""
    tokens = _prepare(tokens, vocab_size)
    # The original's mask has density 1.0: every token is noise, so all of them are permuted.
    noise_mask = np.ones(tokens.size, dtype=bool)
    return _finish(permute_noise_tokens(tokens, noise_mask, rng.permutation(tokens.size)),
                   tokens, eos_id)


def iid_replace_spans(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
                      noise_density: float = 0.15, eos_id: int = sc.EOS_ID,
                      max_sentinels: int | None = None) -> dict[str, np.ndarray]:
    """The paper's baseline: i.i.d. noise, each noise run -> one unique sentinel.

    ``max_sentinels`` defaults to None: the paper ran this with 100 extra ids although a 511-token
    chunk at 25% density averages ~96 noise runs, so its sentinels walked down into ordinary ids.
    """
    tokens = _prepare(tokens, vocab_size)
    sc.check_noise_density(noise_density)
    noise_mask = iid_noise_mask(tokens.size, noise_density, rng)
    inputs, targets = sc.span_corruption_from_mask(tokens, noise_mask, vocab_size, eos_id,
                                                   max_sentinels)
    return {"inputs": inputs, "targets": targets}


def iid_drop_tokens(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
                    noise_density: float = 0.15, eos_id: int = sc.EOS_ID,
                    ) -> dict[str, np.ndarray]:
    """Drop i.i.d. noise tokens from the inputs; the targets are exactly the dropped tokens."""
    tokens = _prepare(tokens, vocab_size)
    sc.check_noise_density(noise_density)
    noise_mask = iid_noise_mask(tokens.size, noise_density, rng)
    return _finish(drop_noise_tokens(tokens, noise_mask), drop_nonnoise_tokens(tokens, noise_mask),
                   eos_id)


# ---------------------------------------------------------------------------------------------
# Lengths: how long a raw chunk to feed each objective, and how long its targets get.
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def iid_targets_length(num_tokens: int, noise_density: float, sentinel_per_run: bool,
                       tail_prob: float = TARGETS_TAIL_PROB) -> int:
    """Targets length (EOS included) that i.i.d. noise on ``num_tokens`` exceeds w.p. <= tail_prob.

    Targets hold the noise tokens, plus one sentinel per noise run if ``sentinel_per_run``. The
    exact distribution comes from a two-state recursion over the previous token's state.
    """
    extra = 2 if sentinel_per_run else 1  # a token that starts a noise run adds its sentinel too
    size = extra * num_tokens + 1
    # [size] probabilities of the running target count, split by whether the last token is noise.
    p_clean = np.zeros(size)
    p_clean[0] = 1.0
    p_noise = np.zeros(size)
    for _ in range(num_tokens):
        new_noise = np.zeros(size)
        new_noise[1:] = p_noise[:-1] * noise_density
        new_noise[extra:] += p_clean[:-extra] * noise_density
        p_clean = (p_clean + p_noise) * (1.0 - noise_density)
        p_noise = new_noise
    cdf = np.cumsum(p_clean + p_noise)
    return int(np.searchsorted(cdf, 1.0 - tail_prob)) + 1


def _raw_for(inputs_length: int, min_tokens: int = 1) -> int:
    """The original splits the text to inputs_length - 1 tokens, leaving room for EOS."""
    if isinstance(inputs_length, bool) or not isinstance(inputs_length, (int, np.integer)):
        raise ValueError(f"inputs_length={inputs_length!r} must be an int")
    if inputs_length - 1 < min_tokens:
        raise ValueError(f"inputs_length={inputs_length} is too short: the objective needs a "
                         f"raw chunk of >= {min_tokens} tokens plus EOS")
    return int(inputs_length) - 1


def _lengths_full_text(inputs_length: int, noise_density: float = 0.15, random_prob: float = 0.0,
                       **unused: Any) -> tuple[int, int]:
    sc.check_noise_density(noise_density)
    if not 0.0 <= random_prob <= 1.0:
        raise ValueError(f"random_prob={random_prob!r} must be in [0, 1]")
    raw = _raw_for(inputs_length)
    return raw, raw + 1


def _lengths_prefix_lm(inputs_length: int, noise_density: float, **unused: Any,
                       ) -> tuple[int, int]:
    if not 0.0 < noise_density <= 0.5:
        raise ValueError(f"noise_density={noise_density!r} must be in (0, 0.5] for prefix_lm")
    raw = _raw_for(inputs_length, min_tokens=2)
    min_prefix = round(float(np.float32(1 - 2 * noise_density) * np.float32(raw - 1)))
    min_prefix = min(raw - 1, max(1, min_prefix))
    return raw, raw - min_prefix + 1  # the longest continuation follows the shortest prefix


def _lengths_iid(sentinel_per_run: bool) -> Callable[..., tuple[int, int]]:
    def lengths(inputs_length: int, noise_density: float, **unused: Any) -> tuple[int, int]:
        sc.check_noise_density(noise_density)
        raw = _raw_for(inputs_length)
        return raw, iid_targets_length(raw, float(noise_density), sentinel_per_run)
    return lengths


def _lengths_span(inputs_length: int, noise_density: float, mean_noise_span_length: float,
                  **unused: Any) -> tuple[int, int]:
    return sc.raw_length(inputs_length, noise_density, mean_noise_span_length)


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------

_COMMON_PARAMS = ("eos_id",)


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One of the paper's host-side corruption recipes: its function, default parameters and
    length bookkeeping. (The objective registry, ``objectives/registry.py``, names them and
    pairs each with the encoder-decoder model and loss.)

    fixed_length: a full raw chunk always gives exactly ``lengths(...)`` (inputs_length, targets
      length); otherwise inputs may be shorter and targets vary, up to the reported length for
      prefix_lm and beyond it with probability <= TARGETS_TAIL_PROB for the i.i.d. ones.
    concatenate_documents: whether the original pipeline concatenates documents before splitting
      into chunks (its ``reduce_concat_tokens``); prefix_lm and deshuffling chunk one document.
    """

    name: str
    fn: Callable[..., dict[str, np.ndarray]]
    defaults: Mapping[str, Any]
    lengths_fn: Callable[..., tuple[int, int]]
    fixed_length: bool
    concatenate_documents: bool
    paper: str

    def params(self, **overrides: Any) -> dict[str, Any]:
        """The defaults updated with ``overrides``; unknown names raise ValueError."""
        for key in overrides:
            if key not in self.defaults and key not in _COMMON_PARAMS:
                raise ValueError(f"objective {self.name!r} has no parameter {key!r} (value "
                                 f"{overrides[key]!r}); it takes {sorted(self.defaults)}")
        return {**self.defaults, **overrides}

    def lengths(self, inputs_length: int, **params: Any) -> tuple[int, int]:
        """(raw_tokens_length, targets_length) for an encoder input of ``inputs_length``."""
        return self.lengths_fn(inputs_length, **self.params(**params))

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
                 **params: Any) -> dict[str, np.ndarray]:
        return self.fn(tokens, rng, vocab_size, **self.params(**params))

    def bind(self, inputs_length: int, **params: Any
             ) -> tuple[Callable[..., dict[str, np.ndarray]], int, int]:
        """(fn(tokens, rng, vocab_size) with ``params`` bound, raw length, targets length)."""
        merged = self.params(**params)
        raw_length, targets_length = self.lengths_fn(inputs_length, **merged)
        return functools.partial(_call, self.fn, merged), raw_length, targets_length


def _call(fn: Callable[..., dict], params: Mapping[str, Any], tokens: np.ndarray, rng: Any,
          vocab_size: int) -> dict[str, np.ndarray]:
    return fn(tokens, rng, vocab_size, **params)


SPAN_CORRUPTION = Denoiser("span_corruption", sc.span_corruption,
                           {"noise_density": 0.15, "mean_noise_span_length": 3.0,
                            "max_sentinels": sc.NUM_SENTINELS},
                           _lengths_span, True, True, "Table 7; the final T5 objective")
# The paper's recipes; objectives/registry.py is the table that names them for configs.
DENOISERS: tuple[Denoiser, ...] = (
    SPAN_CORRUPTION,
    Denoiser("iid_replace_spans", iid_replace_spans,
             {"noise_density": 0.15, "max_sentinels": None},
             _lengths_iid(True), False, True, "Tables 5, 6; the paper's baseline"),
    Denoiser("iid_drop_tokens", iid_drop_tokens, {"noise_density": 0.15},
             _lengths_iid(False), False, True, "Table 5"),
    Denoiser("bert", bert, {"noise_density": 0.15, "random_prob": 0.1},
             _lengths_full_text, True, True, "Tables 4, 5"),
    Denoiser("mass", mass, {"noise_density": 0.15},
             _lengths_full_text, True, True, "Table 5"),
    Denoiser("deshuffle", deshuffle, {}, _lengths_full_text, True, False, "Table 4"),
    Denoiser("prefix_lm", prefix_lm, {"noise_density": 0.5},
             _lengths_prefix_lm, False, False, "Table 4"),
)
