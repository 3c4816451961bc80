"""Output heads of the ELECTRA family: replaced-token detection, masked LM, classification.

Each head takes the encoder's hidden states ``[batch, length, embed]`` (already gathered where a
head only looks at some positions) and returns float32 logits. Kernels use the family's
initialiser (BERT truncated normal); biases start at zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from modeling import axes, layers
from modeling.transformer import TransformerConfig

Array = jax.Array


def gather_positions(x: Array, positions: Array) -> Array:
    """Rows of ``x`` [batch, length, d] at ``positions`` [batch, n] -> [batch, n, d]."""
    if positions.ndim != 2 or positions.shape[0] != x.shape[0]:
        raise ValueError(
            f"masked_positions must be [batch={x.shape[0]}, num_masked], got {positions.shape}"
        )
    # [batch, n] -> [batch, n, 1] -> [batch, n, d]
    return jnp.take_along_axis(x, positions[:, :, None].astype(jnp.int32), axis=1)


class DiscriminatorHead(nn.Module):
    """Replaced-token detection: ``dense(hidden) -> act -> dense(1)``, one logit per token."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        # [batch, length, embed] -> [batch, length, mlp(=embed)]
        h = layers.DenseGeneral(
            cfg.d_model, (axes.EMBED, axes.MLP), use_bias=True, dtype=cfg.compute_dtype,
            kernel_init=cfg.kernel_init(), name="dense",
        )(x)
        h = layers.activation("gelu")(h)
        h = nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        # [batch, length, mlp] -> [batch, length, 1] -> [batch, length]
        logits = layers.DenseGeneral(
            1, (axes.MLP, axes.CLASSES), use_bias=True, dtype=cfg.compute_dtype,
            kernel_init=cfg.kernel_init(), name="prediction",
        )(h)
        return logits[..., 0].astype(jnp.float32)


class MlmHead(nn.Module):
    """Masked LM: ``dense(embedding_size) -> GELU -> LayerNorm -> tied output + own bias``.

    ``embedding_size`` is the width of the (shared) word-embedding table the output is tied to,
    which for a factorized or narrow generator differs from the network width.
    """

    config: TransformerConfig
    embedding_size: int

    @nn.compact
    def __call__(self, x: Array, word_table: Array) -> Array:
        cfg = self.config
        vocab = word_table.shape[0]
        # [batch, n, embed] -> [batch, n, embed_proj]
        h = layers.DenseGeneral(
            self.embedding_size, (axes.EMBED, axes.EMBED_PROJ), use_bias=True,
            dtype=cfg.compute_dtype, kernel_init=cfg.kernel_init(), name="dense",
        )(x)
        h = layers.activation("gelu")(h)
        h = layers.LayerNorm(
            epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, axis_name=axes.EMBED_PROJ, name="norm"
        )(h)
        bias = self.param(
            "output_bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (axes.VOCAB,)),
            (vocab,),
            jnp.float32,
        )
        # [batch, n, embed_proj] x [vocab, embed_proj] -> [batch, n, vocab], float32
        logits = jnp.einsum(
            "...d,vd->...v",
            h.astype(cfg.compute_dtype),
            word_table.astype(cfg.compute_dtype),
            preferred_element_type=jnp.float32,
        )
        logits = nn.with_logical_constraint(
            logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB)
        )
        return logits + bias


CLASSIFIER_STYLES = ("electra", "hf")


class ClassificationHead(nn.Module):
    """Sequence classification on the first ([CLS]) vector -> ``[batch, num_classes]``.

    ``style="electra"`` (the reference fine-tuning code): dropout -> dense(num_classes), no
    pooler weights. ``style="hf"`` (``ElectraForSequenceClassification``'s head): dropout ->
    dense(hidden) -> GELU -> dropout -> ``out_proj``(num_classes). ``num_classes=1`` serves
    regression tasks (STS-B).
    """

    config: TransformerConfig
    num_classes: int
    dropout_rate: float = 0.1
    style: str = "electra"

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        cfg = self.config
        if self.style not in CLASSIFIER_STYLES:
            raise ValueError(f"classifier style {self.style!r}; expected one of "
                             f"{CLASSIFIER_STYLES}")
        # [batch, length, embed] -> [batch, embed]
        h = x[:, 0]
        h = layers.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        if self.style == "hf":
            h = layers.DenseGeneral(
                cfg.d_model, (axes.EMBED, axes.MLP), use_bias=True, dtype=cfg.compute_dtype,
                kernel_init=cfg.kernel_init(), name="dense",
            )(h)
            h = layers.activation("gelu")(h)
            h = layers.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        # [batch, embed] -> [batch, classes]
        return layers.DenseGeneral(
            self.num_classes, (axes.MLP if self.style == "hf" else axes.EMBED, axes.CLASSES),
            use_bias=True, dtype=cfg.compute_dtype, kernel_init=cfg.kernel_init(),
            name="out_proj" if self.style == "hf" else "dense",
        )(h).astype(jnp.float32)
