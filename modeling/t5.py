"""T5 encoder-decoder (v1.0 and v1.1) on the shared transformer core.

Architecture facts follow ``shared/reference/T5.md``: RMSNorm in float32, no biases, no runtime
1/sqrt(d_kv) (folded into the query init), one relative position table per stack, relu (v1.0)
or gated-gelu (v1.1) MLP, tied logits scaled by d_model**-0.5 (v1.0) or an untied float32
``logits_dense`` (v1.1), dropout after the embeddings, PAD = 0 as the decoder start token.

Masks (True = may attend):

* unpacked batches (no segment ids) follow Hugging Face so padded batches match at every
  position: the encoder masks padding KEYS only; decoder self-attention is causal only (PAD is
  also the decoder start token, so decoder padding cannot be read off the inputs; padded targets
  are handled by the loss weights); cross-attention masks padding encoder keys.
* packed batches (``*_segment_ids`` given) use T5X's masks: padding AND same segment, AND causal
  (by ``decoder_positions`` when given) for the decoder. Relative positions are always indices:
  distances inside one segment are the same either way and cross-segment pairs are masked.

Parameter names are stable (checkpoints and ``modeling/hf.py`` depend on them): ``token_embedder``,
``encoder``, ``decoder``, ``logits_dense``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from modeling import axes, layers
from modeling.transformer import Stack, TransformerConfig

Array = jax.Array

# ---------------------------------------------------------------------------------------------
# Presets (T5.md's table). Dropout 0 is the pretraining setting; fine-tuning overrides it.
# ---------------------------------------------------------------------------------------------
_COMMON = dict(
    vocab_size=32128,
    norm="rms",
    norm_eps=1e-6,
    prenorm=True,
    use_bias=False,
    position="relative",
    relative_buckets=32,
    relative_max_distance=128,
    scale_attention=False,
    init="t5",
    dropout_rate=0.0,
    dropout_broadcast_dims=(-2,),  # T5X shares dropout masks along the length axis
)


def _v10(d_model: int, d_ff: int, heads: int, head_dim: int, layers_: int) -> TransformerConfig:
    return TransformerConfig(
        d_model=d_model, d_ff=d_ff, num_heads=heads, head_dim=head_dim, num_layers=layers_,
        num_decoder_layers=layers_, mlp="relu", tie_embeddings=True, **_COMMON,
    )


def _v11(d_model: int, d_ff: int, heads: int, layers_: int) -> TransformerConfig:
    return TransformerConfig(
        d_model=d_model, d_ff=d_ff, num_heads=heads, head_dim=64, num_layers=layers_,
        num_decoder_layers=layers_, mlp="gated-gelu", tie_embeddings=False, **_COMMON,
    )


PRESETS: dict[str, TransformerConfig] = {
    "t5_small": _v10(512, 2048, 8, 64, 6),
    "t5_base": _v10(768, 3072, 12, 64, 12),
    "t5_large": _v10(1024, 4096, 16, 64, 24),
    "t5_3b": _v10(1024, 16384, 32, 128, 24),
    "t5_11b": _v10(1024, 65536, 128, 128, 24),
    "t5_1_1_small": _v11(512, 1024, 6, 8),
    "t5_1_1_base": _v11(768, 2048, 12, 12),
    "t5_1_1_large": _v11(1024, 2816, 16, 24),
    "t5_1_1_xl": _v11(2048, 5120, 32, 24),
    "t5_1_1_xxl": _v11(4096, 10240, 64, 24),
    # For tests and laptop runs: v1.1-style (untied, gated-gelu), 2 + 2 layers.
    "tiny": dataclasses.replace(
        _v11(32, 64, 4, 2), vocab_size=512, head_dim=8
    ),
}


def get_t5_config(name: str, **overrides) -> TransformerConfig:
    """A preset by name with ``TransformerConfig`` fields overridden (e.g. ``dtype="bfloat16"``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown T5 preset {name!r}; known: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown TransformerConfig field(s) {unknown} for preset {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------
class EncoderDecoder(nn.Module):
    """T5: ``encode`` once, ``decode`` (full or one cached step), ``__call__`` = both."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.token_embedder = layers.Embed(
            num_embeddings=cfg.vocab_size,
            features=cfg.d_model,
            dtype=cfg.compute_dtype,
            embedding_init=cfg.embed_init(),
        )
        self.encoder = Stack(cfg, cfg.num_layers)
        self.decoder = Stack(cfg, cfg.num_decoder_layers, causal=True, cross_attention=True)
        if not cfg.tie_embeddings:
            self.logits_dense = layers.DenseGeneral(
                cfg.vocab_size,
                kernel_axes=(axes.EMBED, axes.VOCAB),
                dtype=jnp.float32,
                kernel_init=cfg.mlp_init(),
            )
        self.embedding_dropout = layers.Dropout(
            cfg.dropout_rate, broadcast_dims=cfg.dropout_broadcast_dims
        )

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """``[batch, inputs_len]`` ids -> encoded ``[batch, inputs_len, d_model]``."""
        valid = encoder_input_tokens > 0
        if encoder_segment_ids is None:
            mask = layers.attention_mask(None, valid)
        else:
            mask = layers.attention_mask(valid, valid, encoder_segment_ids, encoder_segment_ids)
        # [batch, length] -> [batch, length, embed]
        x = self.token_embedder(encoder_input_tokens)
        x = self.embedding_dropout(x, deterministic=deterministic)
        return self.encoder(x, mask, deterministic=deterministic)

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """Decoder logits, float32 ``[batch, target_len, vocab]``.

        ``decode=True`` is incremental decoding with a KV cache (``mutable=["cache"]``). The
        first such call, with the full-length dummy ``decoder_input_tokens``, only creates the
        cache (``model.init`` or ``apply``); every later call feeds ONE token per sequence and
        reads the step index from the cache itself, so the caller cannot get it out of sync.
        """
        if (encoder_segment_ids is None) != (decoder_segment_ids is None):
            raise ValueError(
                "packed batches need both encoder_segment_ids and decoder_segment_ids "
                f"(got encoder: {encoder_segment_ids is not None}, "
                f"decoder: {decoder_segment_ids is not None})"
            )
        enc_valid = encoder_input_tokens > 0
        batch, length = decoder_input_tokens.shape
        query_positions = None
        step = decode and length == 1 and self._has_cache()
        if step:
            if decoder_segment_ids is not None:
                raise ValueError("incremental decoding does not take segment ids")
            index, cache_len = self._cache_state()
            # The single query sits at ``index``; keys are the whole cache, filled up to it.
            query_positions = index[None]
            # [cache_len] -> [batch, 1, 1, cache_len]
            mask = jnp.broadcast_to(
                (jnp.arange(cache_len) <= index)[None, None, None, :], (batch, 1, 1, cache_len)
            )
            cross_mask = layers.attention_mask(None, enc_valid)
        elif decoder_segment_ids is None:
            idx = jnp.arange(length)
            mask = layers.attention_mask(
                None, None, causal=True, query_positions=idx, key_positions=idx
            )
            # [1, 1, q, k] -> [batch, 1, q, k] so every mask the stack sees is batched.
            mask = jnp.broadcast_to(mask, (batch, 1, length, length))
            cross_mask = layers.attention_mask(None, enc_valid)
        else:
            dec_valid = decoder_segment_ids > 0
            positions = decoder_positions
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
            mask = layers.attention_mask(
                dec_valid, dec_valid, decoder_segment_ids, decoder_segment_ids,
                causal=True, query_positions=positions, key_positions=positions,
            )
            cross_mask = layers.attention_mask(
                dec_valid, enc_valid, decoder_segment_ids, encoder_segment_ids
            )

        # [batch, target_len] -> [batch, target_len, embed]
        y = self.token_embedder(decoder_input_tokens)
        y = self.embedding_dropout(y, deterministic=deterministic)
        y = self.decoder(
            y, mask, encoded, cross_mask,
            query_positions=query_positions, deterministic=deterministic, decode=decode,
        )
        # [batch, target_len, embed] -> [batch, target_len, vocab]
        if self.config.tie_embeddings:
            # v1.0 rescales before the tied projection (T5.md; HF does the same).
            logits = self.token_embedder.attend(y * (self.config.d_model**-0.5))
        else:
            logits = self.logits_dense(y)
        logits = nn.with_logical_constraint(
            logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB)
        )
        return logits.astype(jnp.float32)

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """seqio EncDec features -> float32 logits ``[batch, target_len, vocab]``.

        ``encoder_positions`` is accepted for the batch dict's sake; the relative position bias
        uses indices (see the module docstring). ``decode=True`` behaves as in ``decode`` (it
        re-encodes every step; ``modeling.decoding`` encodes once and calls ``decode``).
        """
        del encoder_positions
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, deterministic)
        return self.decode(
            encoded, encoder_input_tokens, decoder_input_tokens,
            encoder_segment_ids, decoder_segment_ids, decoder_positions,
            deterministic=deterministic, decode=decode,
        )

    # -- decode-cache helpers -------------------------------------------------------------
    def _has_cache(self) -> bool:
        return "cache" in self.variables and bool(self.variables["cache"])

    def _cache_state(self) -> tuple[Array, int]:
        """(step index, cache length) of the decoder's first self-attention cache."""
        flat = traverse_util.flatten_dict(self.variables["cache"])
        index = cache_len = None
        for path in sorted(flat):
            if path[-1] == "cache_index" and index is None:
                # Scanned stacks keep one index per layer (all equal): [layers] or [].
                index = jnp.reshape(flat[path], (-1,))[0]
            if path[-1] == "cached_key" and cache_len is None:
                # [(layers,) batch, cache_len, heads, kv]
                cache_len = flat[path].shape[-3]
        if index is None or cache_len is None:
            raise ValueError("decode cache is missing cache_index/cached_key; initialise it with "
                             "a decode=True call on full-length decoder inputs")
        return index, cache_len


def count_params(params) -> int:
    """Total number of parameter scalars (works on ``jax.eval_shape`` outputs too)."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
