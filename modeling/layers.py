"""The building blocks every pretrax model is made of.

Parameters are float32 and carry logical axis names (``modeling.axes``); matmul inputs are cast to
the configured compute dtype with float32 accumulation; norms, softmax statistics and logits stay
float32. Nothing here knows which model family it serves: T5 and ELECTRA differ only in the
``TransformerConfig`` fields that select a norm, a position scheme, biases and an MLP.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from modeling import axes

Array = jax.Array
Initializer = Callable[..., Array]

# Additive attention bias for masked positions. A large finite value rather than -inf keeps
# fully masked rows (padding queries in packed batches) finite.
MASK_VALUE = -1e10


def _normalize_axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis)


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


# ---------------------------------------------------------------------------------------------
# Dropout.
# ---------------------------------------------------------------------------------------------
# Keep decisions are drawn 16 bits at a time, two per 32-bit random word: generating random bits
# (threefry, sharding-invariant) is the costly part of dropout on CPU, and 16 bits resolve any
# rate to 1/65536 (0.1 -> 0.100006; outputs are scaled by the quantised keep rate, so unbiased).
_DROPOUT_LEVELS = 1 << 16


def dropout_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> Array:
    """Bool ``shape``: True where a unit is kept; P(keep) = round((1-rate) * 2^16) / 2^16."""
    last = shape[-1] if shape else 1
    lead = tuple(shape[:-1]) if shape else ()
    # [..., ceil(last / 2)] uint32 -> two uint16 draws each -> [..., last]
    bits = jax.random.bits(key, lead + ((last + 1) // 2,), jnp.uint32)
    draws = jnp.stack([bits & 0xFFFF, bits >> 16], axis=-1).reshape(lead + (-1,))[..., :last]
    return (draws < keep_threshold(rate)).reshape(shape)


def keep_threshold(rate: float) -> int:
    return int(round((1.0 - rate) * _DROPOUT_LEVELS))


class Dropout(nn.Module):
    """Inverted dropout (``flax.linen.Dropout``'s interface) with 16-bit keep decisions."""

    rate: float
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool | None = None) -> Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        keep = dropout_mask(self.make_rng(self.rng_collection), self.rate, tuple(shape))
        scale = _DROPOUT_LEVELS / keep_threshold(self.rate)
        return jnp.where(jnp.broadcast_to(keep, inputs.shape),
                         inputs * jnp.asarray(scale, inputs.dtype), jnp.zeros_like(inputs))


# ---------------------------------------------------------------------------------------------
# Dense and embeddings.
# ---------------------------------------------------------------------------------------------
class DenseGeneral(nn.Module):
    """A dense layer over one or more input axes with a multi-axis kernel.

    ``kernel_axes`` names every kernel dimension: first the contracted input axes, then the
    output ``features``. Variance-scaling initialisers see the true fan-in / fan-out.
    """

    features: int | Sequence[int]
    kernel_axes: tuple[str, ...]
    axis: int | Sequence[int] = -1
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = _as_tuple(self.features)
        contract = _normalize_axes(self.axis, x.ndim)
        in_shape = tuple(x.shape[a] for a in contract)
        n_in = len(in_shape)
        kernel_shape = in_shape + features
        if len(self.kernel_axes) != len(kernel_shape):
            raise ValueError(
                f"{self.name}: kernel_axes {self.kernel_axes} do not match kernel shape "
                f"{kernel_shape}"
            )
        init = functools.partial(
            _init_with_axes,
            self.kernel_init,
            in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, len(kernel_shape))),
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.kernel_axes),
            kernel_shape,
            jnp.float32,
        )
        y = _contract(x.astype(self.dtype), kernel.astype(self.dtype), tuple(contract))
        # the non-contracted x axes first, then the feature axes.
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(self.bias_init, self.kernel_axes[n_in:]),
                features,
                jnp.float32,
            )
            y = y + bias
        return y.astype(self.dtype)


def _contract(x: Array, kernel: Array, contract: tuple[int, ...]) -> Array:
    """``x`` contracted over its axes ``contract`` with the leading axes of ``kernel``, in
    float32 accumulation. When the contracted axes are x's trailing ones (every layer here),
    as ONE 2-D matrix product ``[rows, fan_in] @ [fan_in, fan_out]``: XLA:CPU lowers the
    weight gradient of a [batch, length, ...] product, contracted over two axes, with a
    transposed copy of the activations; on the 2-D form it is a plain GEMM (T5 v1.1 small's
    gated-GELU MLP, forward + backward: 0.48 s -> 0.25 s on a 2-core Sapphire Rapids)."""
    n_in = len(contract)
    if contract != tuple(range(x.ndim - n_in, x.ndim)):
        return jax.lax.dot_general(x, kernel, ((contract, tuple(range(n_in))), ((), ())),
                                   preferred_element_type=jnp.float32)
    lead, fan_in = x.shape[:x.ndim - n_in], math.prod(kernel.shape[:n_in])
    features = kernel.shape[n_in:]
    y = jnp.dot(x.reshape(-1, fan_in), kernel.reshape(fan_in, -1),
                preferred_element_type=jnp.float32)
    return y.reshape(lead + features)


def _init_with_axes(init: Initializer, key: Array, shape, dtype, *, in_axis, out_axis) -> Array:
    """Calls a variance-scaling style initialiser with explicit fan axes when it accepts them."""
    try:
        return init(key, shape, dtype, in_axis=in_axis, out_axis=out_axis)
    except TypeError:
        return init(key, shape, dtype)


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """Flax's variance scaling with (in_axis, out_axis) passed at call time."""

    def init(key, shape, dtype=jnp.float32, in_axis=-2, out_axis=-1):
        return nn.initializers.variance_scaling(
            scale, mode, distribution, in_axis=in_axis, out_axis=out_axis
        )(key, shape, dtype)

    return init


def scaled(init: Initializer, factor: float) -> Initializer:
    """``init`` times a constant (T5 folds 1/sqrt(d_kv) into the query kernel's init)."""

    def wrapped(key, shape, dtype=jnp.float32, **kwargs):
        return init(key, shape, dtype, **kwargs) * factor

    return wrapped


class Embed(nn.Module):
    """A lookup table ``[num_embeddings, features]``; ``attend`` is its transposed matmul."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = (axes.VOCAB, axes.EMBED)
    dtype: Any = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, self.axes),
            (self.num_embeddings, self.features),
            jnp.float32,
        )

    def __call__(self, ids: Array) -> Array:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"{self.name}: expected integer ids, got {ids.dtype}")
        # [batch, length] -> [batch, length, features]
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        """``x @ embedding.T`` in float32: logits against the tied vocabulary."""
        # [batch, length, features] -> [batch, length, num_embeddings], as one 2-D product
        y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype),
                    self.embedding.astype(self.dtype).T, preferred_element_type=jnp.float32)
        return y.reshape(x.shape[:-1] + (self.num_embeddings,))


# ---------------------------------------------------------------------------------------------
# Norms (computed in float32 whatever the compute dtype).
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """T5's "layer norm": scale only, no mean subtraction, no bias."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
            (x.shape[-1],),
            jnp.float32,
        )
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return (x * jax.lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)


class LayerNorm(nn.Module):
    """BERT's LayerNorm (mean and variance, scale and bias)."""

    epsilon: float = 1e-12
    dtype: Any = jnp.float32
    axis_name: str = axes.EMBED

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        features = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (features,),
            jnp.float32,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
            (features,),
            jnp.float32,
        )
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale + bias).astype(self.dtype)


def make_norm(kind: str, epsilon: float, dtype: Any, name: str) -> nn.Module:
    if kind == "rms":
        return RMSNorm(epsilon=epsilon, dtype=dtype, name=name)
    if kind == "layer":
        return LayerNorm(epsilon=epsilon, dtype=dtype, name=name)
    raise ValueError(f"norm must be 'rms' or 'layer', got {kind!r}")


# ---------------------------------------------------------------------------------------------
# Masks and biases.
# ---------------------------------------------------------------------------------------------
def attention_mask(
    query_valid: Array | None,
    key_valid: Array | None,
    query_segment_ids: Array | None = None,
    key_segment_ids: Array | None = None,
    causal: bool = False,
    query_positions: Array | None = None,
    key_positions: Array | None = None,
) -> Array | None:
    """A boolean mask ``[batch, 1, q_len, k_len]`` (True = may attend), or None for "all".

    ``query_valid`` may be None to leave query rows unmasked (HF's convention for padding: only
    keys are masked, so padding positions still produce finite outputs). Segment ids restrict
    attention to the same packed example; ``causal`` uses positions (default: indices).
    """
    masks = []
    if key_valid is not None:
        # [batch, k_len] -> [batch, 1, 1, k_len]
        masks.append(key_valid[:, None, None, :])
    if query_valid is not None:
        masks.append(query_valid[:, None, :, None])
    if query_segment_ids is not None and key_segment_ids is not None:
        masks.append(query_segment_ids[:, None, :, None] == key_segment_ids[:, None, None, :])
    if causal:
        if query_positions is None or key_positions is None:
            raise ValueError("causal masks need query and key positions")
        masks.append(query_positions[..., None, :, None] >= key_positions[..., None, None, :])
    if not masks:
        return None
    mask = masks[0]
    for m in masks[1:]:
        mask = jnp.logical_and(mask, m)
    return mask


def mask_to_bias(mask: Array | None) -> Array | None:
    if mask is None:
        return None
    return jnp.where(mask, 0.0, MASK_VALUE).astype(jnp.float32)


def add_biases(*biases: Array | None) -> Array | None:
    out = None
    for b in biases:
        if b is not None:
            out = b if out is None else out + b
    return out


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucket of ``key_position - query_position`` (see T5.md for the rule).

    Computed in float32 in the same order of operations as the reference implementations, so the
    log-spaced bucket edges land identically.
    """
    n = -relative_position  # query - key
    offset = 0
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(n < 0, num_buckets, 0)
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    safe_n = jnp.maximum(n, 1).astype(jnp.float32)
    large = max_exact + (
        jnp.log(safe_n / max_exact)
        / np.float32(np.log(max_distance / max_exact))
        * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return offset + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """One learned ``[buckets, heads]`` table per stack, shared by all its layers."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    embedding_init: Initializer = variance_scaling(1.0, "fan_avg", "uniform")

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        """Positions ``[q_len]`` and ``[k_len]`` -> bias ``[1, heads, q_len, k_len]``."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(self.embedding_init, (axes.RELPOS_BUCKETS, axes.HEADS)),
            (self.num_buckets, self.num_heads),
            jnp.float32,
        )
        rel = key_positions[None, :] - query_positions[:, None]
        buckets = relative_position_bucket(
            rel, self.bidirectional, self.num_buckets, self.max_distance
        )
        # [q_len, k_len] -> [q_len, k_len, heads] -> [1, heads, q_len, k_len]
        values = jnp.take(table, buckets, axis=0)
        return jnp.transpose(values, (2, 0, 1))[None].astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Attention and MLP.
# ---------------------------------------------------------------------------------------------
@jax.custom_jvp
def softmax(logits: Array) -> Array:
    """Softmax over the last axis whose derivative keeps only the probabilities.

    ``jax.nn.softmax`` differentiates ``exp(x - max) / sum`` by the quotient rule, which keeps
    the unnormalised exponentials and a broadcast reciprocal alive for the backward pass (three
    ``[batch, heads, q, k]`` arrays read per attention layer); the closed form ``p * (t - sum(p
    * t))`` reads two. A JVP rule rather than a VJP one, so rematerialisation (``jax.checkpoint``)
    sees an ordinary linear function and recomputes it like any other.
    """
    return jax.nn.softmax(logits, axis=-1)


@softmax.defjvp
def _softmax_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    probs = softmax(primals[0])
    tangent = tangents[0]
    return probs, probs * (tangent - jnp.sum(probs * tangent, axis=-1, keepdims=True))


class Attention(nn.Module):
    """Multi-head dot-product attention with an additive bias and an optional decode cache.

    ``scale_queries`` divides logits by sqrt(head_dim) at run time (BERT); T5 folds that factor
    into the query initialiser instead. In decode mode the keys/values of each new position are
    written into a ``cache`` collection, so one call processes one step.
    """

    num_heads: int
    head_dim: int
    use_bias: bool = False
    scale_queries: bool = False
    dropout_rate: float = 0.0
    dropout_broadcast_dims: tuple[int, ...] = ()
    dtype: Any = jnp.float32
    kernel_init: Initializer = variance_scaling(1.0, "fan_in", "normal")
    query_init: Initializer | None = None
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        bias: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        proj = functools.partial(
            DenseGeneral,
            features=(self.num_heads, self.head_dim),
            kernel_axes=(axes.EMBED, axes.HEADS, axes.KV),
            use_bias=self.use_bias,
            dtype=self.dtype,
            bias_init=self.bias_init,
        )
        # [batch, length, embed] -> [batch, length, heads, kv]
        query = proj(kernel_init=self.query_init or self.kernel_init, name="query")(inputs_q)
        key = proj(kernel_init=self.kernel_init, name="key")(inputs_kv)
        value = proj(kernel_init=self.kernel_init, name="value")(inputs_kv)
        heads_axes = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_KV)
        query = nn.with_logical_constraint(query, heads_axes)
        key = nn.with_logical_constraint(key, heads_axes)
        value = nn.with_logical_constraint(value, heads_axes)

        if decode:
            key, value = self._update_cache(key, value)

        if self.scale_queries:
            query = query / jnp.sqrt(self.head_dim).astype(query.dtype)
        # [batch, q_len, heads, kv] x [batch, k_len, heads, kv] -> [batch, heads, q_len, k_len]
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias
        weights = softmax(logits)
        if not deterministic and self.dropout_rate > 0.0:
            weights = Dropout(self.dropout_rate, broadcast_dims=self.dropout_broadcast_dims)(
                weights, deterministic=False
            )
        # [batch, heads, q_len, k_len] x [batch, k_len, heads, kv] -> [batch, q_len, heads, kv]
        out = jnp.einsum(
            "bhqk,bkhd->bqhd",
            weights.astype(self.dtype),
            value.astype(self.dtype),
            preferred_element_type=jnp.float32,
        ).astype(self.dtype)
        # [batch, q_len, heads, kv] -> [batch, q_len, embed]
        return DenseGeneral(
            features=inputs_q.shape[-1],
            kernel_axes=(axes.HEADS, axes.KV, axes.EMBED),
            axis=(-2, -1),
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name="out",
        )(out)

    def _update_cache(self, key: Array, value: Array) -> tuple[Array, Array]:
        """Writes this step's key/value at ``cache_index`` and returns the whole cache.

        The cache is created (zeros, full length) by a first call with the full-length input in
        ``init``; positions past the current index are masked by the caller's causal bias.
        """
        is_initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not is_initialized:
            return key, value
        if key.shape[1] != 1:
            raise ValueError(f"decode mode processes one position per call, got {key.shape[1]}")
        idx = cache_index.value
        zero = jnp.array(0, jnp.int32)
        cached_key.value = jax.lax.dynamic_update_slice(
            cached_key.value, key, (zero, idx, zero, zero))
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, value, (zero, idx, zero, zero)
        )
        cache_index.value = idx + 1
        return cached_key.value, cached_value.value


def activation(name: str) -> Callable[[Array], Array]:
    if name == "relu":
        return jax.nn.relu
    if name == "gelu":  # exact erf GELU (BERT / ELECTRA)
        return functools.partial(jax.nn.gelu, approximate=False)
    if name == "gelu_tanh":  # the tanh approximation (T5.1.1's gated-gelu, HF "gelu_new")
        return functools.partial(jax.nn.gelu, approximate=True)
    raise ValueError(f"unknown activation {name!r}")


class Mlp(nn.Module):
    """``wo(act(wi x))``, or gated ``wo(act(wi_0 x) * wi_1 x)``."""

    d_ff: int
    act: str = "relu"
    gated: bool = False
    use_bias: bool = False
    dropout_rate: float = 0.0
    dropout_broadcast_dims: tuple[int, ...] = ()
    dtype: Any = jnp.float32
    kernel_init: Initializer = variance_scaling(1.0, "fan_in", "truncated_normal")
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        dense = functools.partial(
            DenseGeneral,
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
        )
        act = activation(self.act)
        # [batch, length, embed] -> [batch, length, mlp]
        if self.gated:
            h = act(dense(self.d_ff, (axes.EMBED, axes.MLP), name="wi_0")(x))
            h = h * dense(self.d_ff, (axes.EMBED, axes.MLP), name="wi_1")(x)
        else:
            h = act(dense(self.d_ff, (axes.EMBED, axes.MLP), name="wi")(x))
        h = nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        h = Dropout(self.dropout_rate, broadcast_dims=self.dropout_broadcast_dims)(
            h, deterministic=deterministic
        )
        # [batch, length, mlp] -> [batch, length, embed]
        return dense(x.shape[-1], (axes.MLP, axes.EMBED), name="wo")(h)
