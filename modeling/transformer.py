"""One transformer core for both families: ``TransformerConfig``, ``Block`` and ``Stack``.

T5 and ELECTRA (BERT) differ only in config fields, never in classes:

| field | T5 | ELECTRA |
|---|---|---|
| norm / norm_eps | "rms" / 1e-6 | "layer" / 1e-12 |
| prenorm | True (norm -> sublayer -> add, final norm) | False (sublayer -> add -> norm) |
| use_bias | False | True |
| position | "relative" (one bias table per stack) | "absolute" (learned, added by the family) |
| mlp | "relu" (v1.0) / "gated-gelu" (v1.1) | "gelu" (exact erf) |
| scale_attention | False (folded into the query init) | True (1/sqrt(head_dim)) |
| init | "t5" (T5X initialisers) | "bert" (truncated normal 0.02) |

``Stack`` takes already-embedded inputs; the family module owns embeddings and heads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from modeling import axes, layers

Array = jax.Array

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_all": jax.checkpoint_policies.everything_saveable,
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Everything a Block/Stack needs. Frozen and hashable: safe as a static jit argument."""

    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 8
    head_dim: int = 64
    d_ff: int = 2048
    num_layers: int = 6  # encoder layers (the only stack of an encoder-only model)
    num_decoder_layers: int = 6
    tie_embeddings: bool = True  # T5 v1.0: logits = (x * d_model**-0.5) @ embedding.T
    embedding_size: int | None = None  # ELECTRA factorized embeddings (None = d_model)
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-6
    prenorm: bool = True
    use_bias: bool = False
    position: str = "relative"  # "relative" | "absolute"
    relative_buckets: int = 32
    relative_max_distance: int = 128
    max_positions: int = 512  # absolute positions only
    type_vocab_size: int = 2  # absolute (BERT) models only
    mlp: str = "relu"  # "relu" | "gated-gelu" | "gelu"
    scale_attention: bool = False
    init: str = "t5"  # "t5" | "bert"
    init_range: float = 0.02  # stddev of the "bert" initialiser
    dropout_rate: float = 0.0
    dropout_broadcast_dims: tuple[int, ...] = ()
    # Dropout on the MLP's hidden activations too: T5 (T5.md) drops them; BERT/ELECTRA only drop
    # after the output projection (their "intermediate" layer has no dropout).
    mlp_hidden_dropout: bool = True
    dtype: str = "float32"  # compute dtype for matmul inputs; params stay float32
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        _check_choice("norm", self.norm, ("rms", "layer"))
        _check_choice("position", self.position, ("relative", "absolute"))
        _check_choice("mlp", self.mlp, ("relu", "gated-gelu", "gelu"))
        _check_choice("init", self.init, ("t5", "bert"))
        _check_choice("dtype", self.dtype, ("float32", "bfloat16"))
        _check_choice("remat_policy", self.remat_policy, tuple(REMAT_POLICIES))
        for name in ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TransformerConfig.{name} must be positive, got "
                                 f"{getattr(self, name)}")
        object.__setattr__(self, "dropout_broadcast_dims", tuple(self.dropout_broadcast_dims))

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    # Initialisers: T5X's for "t5", BERT's truncated normal for "bert".
    def kernel_init(self) -> layers.Initializer:
        if self.init == "bert":
            return nn.initializers.truncated_normal(self.init_range)
        return layers.variance_scaling(1.0, "fan_in", "normal")

    def query_init(self) -> layers.Initializer:
        if self.init == "bert":
            return nn.initializers.truncated_normal(self.init_range)
        return layers.scaled(layers.variance_scaling(1.0, "fan_in", "normal"), self.head_dim**-0.5)

    def mlp_init(self) -> layers.Initializer:
        if self.init == "bert":
            return nn.initializers.truncated_normal(self.init_range)
        return layers.variance_scaling(1.0, "fan_in", "truncated_normal")

    def embed_init(self) -> layers.Initializer:
        if self.init == "bert":
            return nn.initializers.truncated_normal(self.init_range)
        return nn.initializers.normal(stddev=1.0)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"TransformerConfig.{name} must be one of {choices}, got {value!r}")


def activation_constraint(x: Array) -> Array:
    # [batch, length, embed] at every block boundary.
    return nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))


class Block(nn.Module):
    """Self-attention, optional cross-attention, MLP; pre- or post-norm by config."""

    config: TransformerConfig
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        bias: Array | None,
        encoded: Array | None = None,
        cross_bias: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        cfg = self.config
        dtype = cfg.compute_dtype
        dropout = functools.partial(
            layers.Dropout, rate=cfg.dropout_rate, broadcast_dims=cfg.dropout_broadcast_dims
        )
        attention = functools.partial(
            layers.Attention,
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            use_bias=cfg.use_bias,
            scale_queries=cfg.scale_attention,
            dropout_rate=cfg.dropout_rate,
            dropout_broadcast_dims=cfg.dropout_broadcast_dims,
            dtype=dtype,
            kernel_init=cfg.kernel_init(),
            query_init=cfg.query_init(),
        )
        norm = functools.partial(layers.make_norm, cfg.norm, cfg.norm_eps, dtype)

        def sublayer(x, fn, norm_name):
            if cfg.prenorm:
                y = fn(norm(norm_name)(x))
                return x + dropout()(y, deterministic=deterministic)
            y = dropout()(fn(x), deterministic=deterministic)
            return norm(norm_name)(x + y)

        x = activation_constraint(x)
        x = sublayer(
            x,
            lambda h: attention(name="attention")(
                h, h, bias, deterministic=deterministic, decode=decode
            ),
            "attention_norm",
        )
        if self.cross_attention:
            x = sublayer(
                x,
                lambda h: attention(name="cross_attention")(
                    h, encoded, cross_bias, deterministic=deterministic
                ),
                "cross_attention_norm",
            )
        mlp = layers.Mlp(
            d_ff=cfg.d_ff,
            act={"relu": "relu", "gated-gelu": "gelu_tanh", "gelu": "gelu"}[cfg.mlp],
            gated=cfg.mlp == "gated-gelu",
            use_bias=cfg.use_bias,
            dropout_rate=cfg.dropout_rate if cfg.mlp_hidden_dropout else 0.0,
            dropout_broadcast_dims=cfg.dropout_broadcast_dims,
            dtype=dtype,
            kernel_init=cfg.mlp_init(),
            name="mlp",
        )
        x = sublayer(x, lambda h: mlp(h, deterministic=deterministic), "mlp_norm")
        return activation_constraint(x)


class _ScanBody(nn.Module):
    """Adapts Block to nn.scan's (carry, x) -> (carry, y) signature."""

    config: TransformerConfig
    cross_attention: bool

    @nn.compact
    def __call__(self, x, bias, encoded, cross_bias, deterministic, decode):
        block = _maybe_remat(Block, self.config)
        x = block(self.config, self.cross_attention, name="block")(
            x, bias, encoded, cross_bias, deterministic, decode
        )
        return x, None


def _maybe_remat(module_cls, cfg: TransformerConfig):
    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy == "none":
        return module_cls
    # Arguments 5 and 6 (deterministic, decode; counting self) are Python bools.
    return nn.remat(module_cls, policy=policy, static_argnums=(5, 6),
                    prevent_cse=not cfg.scan_layers)


class Stack(nn.Module):
    """``num_layers`` Blocks over embedded inputs, with T5's relative position bias if configured.

    ``mask`` is the boolean attention mask ``[batch, 1, q, k]`` (or None); the stack adds its
    position bias, runs the blocks (a Python loop, or ``nn.scan`` with a leading ``layers`` param
    axis) and, for pre-norm models, the final norm and dropout.
    """

    config: TransformerConfig
    num_layers: int
    causal: bool = False
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        encoded: Array | None = None,
        cross_mask: Array | None = None,
        *,
        query_positions: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        cfg = self.config
        bias = layers.mask_to_bias(mask)
        if cfg.position == "relative":
            k_len = x.shape[1] if mask is None else mask.shape[-1]
            if query_positions is None:
                query_positions = jnp.arange(x.shape[1])
            position_bias = layers.RelativePositionBias(
                num_buckets=cfg.relative_buckets,
                max_distance=cfg.relative_max_distance,
                num_heads=cfg.num_heads,
                bidirectional=not self.causal,
                name="relpos_bias",
            )(query_positions, jnp.arange(k_len))
            bias = layers.add_biases(bias, position_bias)
        cross_bias = layers.mask_to_bias(cross_mask)

        if cfg.scan_layers:
            scanned = nn.scan(
                _ScanBody,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * 5,
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: axes.LAYERS},
            )
            x, _ = scanned(cfg, self.cross_attention, name="layers")(
                x, bias, encoded, cross_bias, deterministic, decode
            )
        else:
            block = _maybe_remat(Block, cfg)
            for i in range(self.num_layers):
                x = block(cfg, self.cross_attention, name=f"layers_{i}")(
                    x, bias, encoded, cross_bias, deterministic, decode
                )

        if cfg.prenorm:
            x = layers.make_norm(cfg.norm, cfg.norm_eps, cfg.compute_dtype, "final_norm")(x)
            x = layers.Dropout(cfg.dropout_rate, broadcast_dims=cfg.dropout_broadcast_dims)(
                x, deterministic=deterministic
            )
        return activation_constraint(x)
