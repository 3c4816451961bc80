"""Objective registry: a name -> the model it trains, its batch spec and its loss.

The trainer knows nothing about T5 or ELECTRA; it asks :func:`build` for an :class:`Objective`:

- ``model``: the Flax module (``EncoderDecoder`` or ``Electra``) built from the config;
- ``batch_spec``: ``{key: (shape, dtype)}`` of one GLOBAL batch (what the data pipeline yields);
- ``init_fn(key)``: the model's boxed variables (logical axis names kept for sharding);
- ``loss_fn(params, batch, step_key, deterministic) -> (loss, metrics)``;
- ``flops_per_step``: training FLOPs of one global batch (PERFORMANCE.md's convention, for MFU);
- ``reduction``: how gradient accumulation combines microbatches (``"sum"`` for T5X's summed
  token loss, so k microbatches equal one big batch exactly; ``"mean"`` otherwise).

T5 objectives (``span_corruption`` and every name in ``denoising.T5_OBJECTIVES``) differ only in
how the host builds examples; on device they share one loss: T5X cross-entropy with z-loss,
summed over target tokens by default. ELECTRA objectives (``electra`` = replaced token
detection, ``electra_15``, ``mlm``) run masking and sampling on device via ``objectives.rtd``,
reaching the networks through ``Electra.generator_logits`` / ``discriminator_logits``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from modeling import electra, t5
from modeling.transformer import TransformerConfig
from objectives import denoising, losses, rtd

LossFn = Callable[[Any, dict, jax.Array, bool], tuple[jax.Array, dict]]

T5_NAMES: tuple[str, ...] = tuple(denoising.T5_OBJECTIVES)
ELECTRA_NAMES: tuple[str, ...] = tuple(rtd.ELECTRA_OBJECTIVES)
# Table 5's ablations whose main network predicts tokens: it gets an MLM head on its own word
# table (``Electra.main_logits``), and its replaced-token head is All-Tokens MLM's copy gate.
_MAIN_MLM = ("replace_mlm", "all_tokens_mlm")
OBJECTIVES: tuple[str, ...] = T5_NAMES + ELECTRA_NAMES

_MODEL_OVERRIDES = ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_layers",
                    "num_decoder_layers", "embedding_size", "dropout_rate")


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    family: str
    model: nn.Module
    batch_spec: dict[str, tuple[tuple[int, ...], Any]]
    init_fn: Callable[[jax.Array], Any]
    loss_fn: LossFn
    flops_per_step: float
    tokens_per_step: int
    reduction: str
    vocab_size: int
    special_ids: dict[str, int] | None = None


# ---------------------------------------------------------------------------------------------
# Model configs from the ConfigDict (built once, frozen; nothing from ml_collections is jitted).
# ---------------------------------------------------------------------------------------------
def model_overrides(config: Any) -> dict[str, Any]:
    """The ``config.model`` fields that change the preset (None = keep the preset's value)."""
    out = {"dtype": config.model.dtype, "scan_layers": config.model.scan_layers,
           "remat_policy": config.model.remat_policy}
    for key in _MODEL_OVERRIDES:
        if config.model[key] is not None:
            out[key] = config.model[key]
    return out


def t5_model_config(config: Any) -> TransformerConfig:
    for key in ("embedding_size", "generator_fraction", "embedding_sharing"):
        if config.model[key] is not None:
            raise ValueError(f"config.model.{key}={config.model[key]!r} is an ELECTRA setting; "
                             "T5 models do not have it")
    return t5.get_t5_config(config.model.preset, **model_overrides(config))


def electra_model_config(config: Any) -> electra.ElectraConfig:
    overrides = model_overrides(config)
    for key in ("generator_fraction", "embedding_sharing"):
        if config.model[key] is not None:
            overrides[key] = config.model[key]
    name = config.objective.name
    if name == "mlm" and "embedding_sharing" not in overrides:
        # The BERT baseline: one discriminator-sized encoder trained by MLM (the "generator"
        # IS the discriminator network; its replaced-token head stays unused).
        overrides.update(embedding_sharing="all", generator_fraction=1.0)
    if name in _MAIN_MLM:
        overrides["main_mlm_head"] = True
    if config.data.inputs_length > electra.PRESETS[config.model.preset].discriminator.max_positions:
        overrides["max_positions"] = config.data.inputs_length
    return electra.get_electra_config(config.model.preset, **overrides)


# ---------------------------------------------------------------------------------------------
# FLOPs (shared/reference/PERFORMANCE.md): training = 3 x forward matmul FLOPs.
# ---------------------------------------------------------------------------------------------
def _ffn(cfg: TransformerConfig) -> int:
    return (3 if cfg.mlp == "gated-gelu" else 2) * cfg.d_model * cfg.d_ff


def t5_flops(cfg: TransformerConfig, batch: int, inputs_length: int, targets_length: int
             ) -> float:
    d, inner = cfg.d_model, cfg.num_heads * cfg.head_dim
    t_enc, t_dec = batch * inputs_length, batch * targets_length
    enc = 2 * t_enc * (4 * d * inner + _ffn(cfg)) + 4 * batch * inputs_length**2 * inner
    dec = (2 * t_dec * (6 * d * inner + _ffn(cfg)) + 2 * t_enc * 2 * d * inner
           + 4 * batch * targets_length**2 * inner
           + 4 * batch * targets_length * inputs_length * inner)
    head = 2 * t_dec * d * cfg.vocab_size
    return 3.0 * (cfg.num_layers * enc + cfg.num_decoder_layers * dec + head)


def electra_encoder_flops(cfg: TransformerConfig, batch: int, length: int) -> float:
    h, tokens = cfg.d_model, batch * length
    # PERFORMANCE.md's 2*T*(4*h*h + 2*h*ffn) with ffn = d_ff.
    per_layer = 2 * tokens * (4 * h * h + 2 * h * cfg.d_ff) + 4 * batch * length**2 * h
    emb = cfg.embedding_size or h
    proj = 2 * tokens * emb * h if emb != h else 0
    return cfg.num_layers * per_layer + proj


def electra_flops(cfg: electra.ElectraConfig, name: str, batch: int, length: int,
                  masked: int) -> float:
    disc, gen = cfg.discriminator, cfg.generator_config()
    emb, h = cfg.embedding_size, gen.d_model
    forward = electra_encoder_flops(gen, batch, length)
    forward += 2 * batch * masked * (h * emb + emb * gen.vocab_size)  # MLM head at masked slots
    if name != "mlm":
        forward += electra_encoder_flops(disc, batch, length)
        forward += 2 * batch * length * (disc.d_model**2 + disc.d_model)
    if name in _MAIN_MLM:  # the main network's MLM head: at masked slots or at every token
        slots = masked if name == "replace_mlm" else length
        forward += 2 * batch * slots * (disc.d_model * emb + emb * disc.vocab_size)
    return 3.0 * forward


# ---------------------------------------------------------------------------------------------
# T5.
# ---------------------------------------------------------------------------------------------
def _t5(config: Any) -> Objective:
    cfg = t5_model_config(config)
    model = t5.EncoderDecoder(cfg)
    obj = config.objective
    if obj.normalize not in losses.NORMALIZE_MODES:
        raise ValueError(f"config.objective.normalize={obj.normalize!r}; expected one of "
                         f"{losses.NORMALIZE_MODES}")
    batch, l_in, l_out = (config.data.batch_size, config.data.inputs_length,
                          config.data.targets_length)
    spec = {"encoder_input_tokens": (batch, l_in), "decoder_input_tokens": (batch, l_out),
            "decoder_target_tokens": (batch, l_out), "decoder_loss_weights": (batch, l_out)}
    if config.data.pack:
        spec.update(encoder_segment_ids=(batch, l_in), encoder_positions=(batch, l_in),
                    decoder_segment_ids=(batch, l_out), decoder_positions=(batch, l_out))
    batch_spec = {k: (shape, jnp.int32) for k, shape in spec.items()}

    def init_fn(key):
        enc = jnp.ones((1, l_in), jnp.int32)
        dec = jnp.ones((1, l_out), jnp.int32)
        return model.init({"params": key}, enc, dec, deterministic=True)

    def loss_fn(params, batch, step_key, deterministic):
        # [batch, targets_length, vocab] float32
        logits = model.apply(
            {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            batch.get("encoder_segment_ids"), batch.get("decoder_segment_ids"),
            batch.get("encoder_positions"), batch.get("decoder_positions"),
            deterministic=deterministic, rngs={"dropout": step_key})
        targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        token_loss, z_term = losses.token_cross_entropy(
            logits, targets, z_loss=obj.z_loss, label_smoothing=obj.label_smoothing)
        loss = losses.normalize(token_loss, weights, obj.normalize,
                                segment_ids=batch.get("decoder_segment_ids"))
        sums = losses.cross_entropy(logits, targets, weights, label_smoothing=obj.label_smoothing)
        z_sum = jnp.sum(jnp.where(weights != 0, z_term * weights, 0.0))
        metrics = {
            "cross_entropy": sums.mean,  # per target token, z-loss excluded
            "z_loss": losses.safe_divide(z_sum, sums.weight_sum),
            "accuracy": losses.accuracy(logits, targets, weights),
            "target_tokens": sums.weight_sum,
        }
        return loss, metrics

    return Objective(
        name=obj.name, family="t5", model=model, batch_spec=batch_spec, init_fn=init_fn,
        loss_fn=loss_fn, flops_per_step=t5_flops(cfg, batch, l_in, l_out),
        tokens_per_step=batch * (l_in + l_out),
        reduction="sum" if obj.normalize == "sum" else "mean", vocab_size=cfg.vocab_size)


# ---------------------------------------------------------------------------------------------
# ELECTRA.
# ---------------------------------------------------------------------------------------------
def rtd_config(config: Any, special_ids: dict[str, int], vocab_size: int) -> rtd.RTDConfig:
    obj = config.objective
    return rtd.RTDConfig(
        mask_id=special_ids["mask"], cls_id=special_ids["cls"], sep_id=special_ids["sep"],
        pad_id=special_ids.get("pad", 0), mask_prob=obj.mask_prob,
        max_predictions=obj.max_predictions, mask_replace_prob=obj.mask_replace_prob,
        random_token_prob=obj.random_token_prob, vocab_size=vocab_size,
        temperature=obj.temperature, disallow_correct=obj.disallow_correct,
        uniform_generator=obj.uniform_generator, gen_weight=obj.gen_weight,
        disc_weight=obj.disc_weight, main_mlm_weight=obj.main_mlm_weight)


def _electra(config: Any, special_ids: dict[str, int]) -> Objective:
    cfg = electra_model_config(config)
    model = electra.Electra(cfg)
    name = config.objective.name
    rcfg = rtd_config(config, special_ids, cfg.discriminator.vocab_size)
    objective_fn = rtd.ELECTRA_OBJECTIVES[name]
    batch, length = config.data.batch_size, config.data.inputs_length
    keys = ["encoder_input_tokens", "encoder_token_type_ids"]
    if config.data.pack:
        keys += ["encoder_segment_ids", "encoder_positions"]
    batch_spec = {k: ((batch, length), jnp.int32) for k in keys}
    masked = rcfg.max_predictions or int((rcfg.mask_prob + 0.005) * length)

    def init_fn(key):
        tokens = jnp.ones((1, length), jnp.int32)
        return model.init({"params": key}, tokens, jnp.zeros((1, masked), jnp.int32),
                          deterministic=True)

    def loss_fn(params, batch, step_key, deterministic):
        objective_key, dropout_key = jax.random.split(step_key)
        extra = dict(encoder_token_type_ids=batch.get("encoder_token_type_ids"),
                     encoder_segment_ids=batch.get("encoder_segment_ids"),
                     encoder_positions=batch.get("encoder_positions"),
                     deterministic=deterministic)
        gen_key, disc_key = jax.random.split(dropout_key)

        def generator_fn(tokens, positions):
            # [batch, length], [batch, slots] -> [batch, slots, vocab]
            return model.apply({"params": params}, tokens, positions, **extra,
                               method=electra.Electra.generator_logits,
                               rngs={"dropout": gen_key})

        def discriminator_fn(tokens):
            # [batch, length] -> [batch, length]
            return model.apply({"params": params}, tokens, **extra,
                               method=electra.Electra.discriminator_logits,
                               rngs={"dropout": disc_key})

        def main_mlm_fn(tokens, positions):
            # [batch, length], [batch, slots] -> [batch, slots, vocab]
            return model.apply({"params": params}, tokens, positions, **extra,
                               method=electra.Electra.main_logits,
                               rngs={"dropout": disc_key})[0]

        def all_tokens_fn(tokens):
            # [batch, length] -> ([batch, length, vocab], copy logits [batch, length])
            return model.apply({"params": params}, tokens, None, **extra,
                               method=electra.Electra.main_logits,
                               rngs={"dropout": disc_key})

        second = {"replace_mlm": main_mlm_fn, "all_tokens_mlm": all_tokens_fn}.get(
            name, discriminator_fn)

        loss, metrics = objective_fn(objective_key, batch, generator_fn, second, rcfg)
        metrics = {k: v for k, v in metrics.items() if k != "loss"}
        return loss, metrics

    return Objective(
        name=name, family="electra", model=model, batch_spec=batch_spec, init_fn=init_fn,
        loss_fn=loss_fn, flops_per_step=electra_flops(cfg, name, batch, length, masked),
        tokens_per_step=batch * length, reduction="mean",
        vocab_size=cfg.discriminator.vocab_size, special_ids=dict(special_ids))


def build(config: Any, special_ids: dict[str, int] | None = None) -> Objective:
    """The objective named by ``config.objective.name`` for ``config.model.family``.

    ``special_ids`` ({"pad", "cls", "sep", "mask"}) are required for ELECTRA objectives (they
    come from the vocabulary); T5 objectives ignore them.
    """
    name, family = config.objective.name, config.model.family
    if name in T5_NAMES and family == "t5":
        return _t5(config)
    if name in ELECTRA_NAMES and family == "electra":
        if special_ids is None:
            from launch import inputs as inputs_lib

            special_ids = inputs_lib.special_ids(config)
        return _electra(config, special_ids)
    known = T5_NAMES if family == "t5" else ELECTRA_NAMES if family == "electra" else ()
    raise ValueError(f"config.objective.name={name!r} is not an objective of model family "
                     f"{family!r}; expected one of {known}")
