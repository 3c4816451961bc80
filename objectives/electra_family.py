"""Encoder objectives: ELECTRA's replaced token detection and the paper's baselines on
``modeling.electra``.

Masking and sampling run on device (``objectives.rtd``), reaching the networks through
``Electra.generator_logits`` and one "second network" callable. A :class:`Variant` says which
loss and which second network each named objective uses; ``config.objective`` carries the
masking / sampling / weighting settings (``objectives.rtd.RTDConfig``'s fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data import vocab as vocab_lib
from modeling import electra
from modeling.transformer import TransformerConfig
from objectives import base, rtd

# What answers after the generator: the replaced-token head ("discriminator"), the main
# network's MLM head at the masked slots ("main_mlm", Replace MLM), at every token with the copy
# gate ("all_tokens", All-Tokens MLM), or nothing (the BERT baseline is the generator alone).
SECOND_NETWORKS = ("discriminator", "main_mlm", "all_tokens", "none")


@dataclasses.dataclass(frozen=True)
class Variant:
    loss: rtd.LossFn
    second: str
    paper: str


_MODEL_OVERRIDES = ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_layers",
                    "embedding_size", "dropout_rate")


def model_config(config: Any, variant: Variant) -> electra.ElectraConfig:
    name = config.objective.name
    if config.model.num_decoder_layers is not None:
        raise ValueError(f"config.model.num_decoder_layers={config.model.num_decoder_layers} is "
                         f"a T5 setting; objective {name!r} trains an ELECTRA encoder")
    if config.model.preset not in electra.PRESETS:
        raise ValueError(f"config.model.preset={config.model.preset!r} is not an ELECTRA "
                         f"preset; objective {name!r} trains one of {sorted(electra.PRESETS)}")
    overrides = {"dtype": config.model.dtype, "scan_layers": config.model.scan_layers,
                 "remat_policy": config.model.remat_policy}
    for key in _MODEL_OVERRIDES + ("generator_fraction", "embedding_sharing"):
        if config.model[key] is not None:
            overrides[key] = config.model[key]
    if variant.second == "none" and "embedding_sharing" not in overrides:
        # The BERT baseline: one discriminator-sized encoder trained by MLM (the "generator"
        # IS the discriminator network; its replaced-token head stays unused).
        overrides.update(embedding_sharing="all", generator_fraction=1.0)
    if variant.second in ("main_mlm", "all_tokens"):
        overrides["main_mlm_head"] = True
    if config.data.inputs_length > electra.PRESETS[config.model.preset].discriminator.max_positions:
        overrides["max_positions"] = config.data.inputs_length
    return electra.get_electra_config(config.model.preset, **overrides)


def rtd_config(config: Any, special_ids: Mapping[str, int], vocab_size: int) -> rtd.RTDConfig:
    obj = config.objective
    return rtd.RTDConfig(
        mask_id=special_ids["mask"], cls_id=special_ids["cls"], sep_id=special_ids["sep"],
        pad_id=special_ids.get("pad", 0), mask_prob=obj.mask_prob,
        max_predictions=obj.max_predictions, mask_replace_prob=obj.mask_replace_prob,
        random_token_prob=obj.random_token_prob, vocab_size=vocab_size,
        temperature=obj.temperature, disallow_correct=obj.disallow_correct,
        uniform_generator=obj.uniform_generator,
        unigram_generator=obj.unigram_generator, gen_weight=obj.gen_weight,
        disc_weight=obj.disc_weight, main_mlm_weight=obj.main_mlm_weight)


# ---------------------------------------------------------------------------------------------
# FLOPs (launch/metrics.py's convention): training = 3 x forward matmul FLOPs.
# ---------------------------------------------------------------------------------------------
def encoder_flops(cfg: TransformerConfig, batch: int, length: int) -> float:
    h, tokens = cfg.d_model, batch * length
    # 2*T*(4*h*h + 2*h*ffn) per layer, plus attention scores and values.
    per_layer = 2 * tokens * (4 * h * h + 2 * h * cfg.d_ff) + 4 * batch * length**2 * h
    emb = cfg.embedding_size or h
    proj = 2 * tokens * emb * h if emb != h else 0
    return cfg.num_layers * per_layer + proj


def flops(cfg: electra.ElectraConfig, second: str, batch: int, length: int,
          masked: int) -> float:
    disc, gen = cfg.discriminator, cfg.generator_config()
    emb, h = cfg.embedding_size, gen.d_model
    forward = encoder_flops(gen, batch, length)
    forward += 2 * batch * masked * (h * emb + emb * gen.vocab_size)  # MLM head at masked slots
    if second != "none":
        forward += encoder_flops(disc, batch, length)
        forward += 2 * batch * length * (disc.d_model**2 + disc.d_model)
    if second in ("main_mlm", "all_tokens"):  # the main MLM head: masked slots or every token
        slots = masked if second == "main_mlm" else length
        forward += 2 * batch * slots * (disc.d_model * emb + emb * disc.vocab_size)
    return 3.0 * forward


def unigram_baselines(batches: Sequence[base.HostBatch],
                      special_ids: Mapping[str, int]) -> dict[str, float]:
    """What a generator earns without context on these batches: the entropy (nats) of their
    unigram distribution over real, non-special tokens (the expected MLM cross-entropy of a
    perfect unigram model, since masked slots are drawn uniformly from those tokens) and the
    accuracy of always predicting the most frequent one."""
    tokens = np.concatenate([np.asarray(b["encoder_input_tokens"]).ravel() for b in batches])
    tokens = tokens[~np.isin(tokens, [0, *special_ids.values()])]
    if tokens.size == 0:
        return {}
    counts = np.unique(tokens, return_counts=True)[1].astype(np.float64)
    probs = counts / counts.sum()
    return {"unigram_entropy": float(-np.sum(probs * np.log(probs))),
            "unigram_accuracy": float(probs.max())}


# ---------------------------------------------------------------------------------------------
# The objective.
# ---------------------------------------------------------------------------------------------
def build(config: Any, variant: Variant) -> base.Objective:
    if variant.second not in SECOND_NETWORKS:
        raise ValueError(f"Variant.second={variant.second!r}; expected one of {SECOND_NETWORKS}")
    cfg = model_config(config, variant)
    model = electra.Electra(cfg)
    name = config.objective.name
    special_ids = vocab_lib.special_ids(vocab_lib.path_of(config))
    rcfg = rtd_config(config, special_ids, cfg.discriminator.vocab_size)
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
        gen_key, disc_key = jax.random.split(dropout_key)
        extra = dict(encoder_token_type_ids=batch.get("encoder_token_type_ids"),
                     encoder_segment_ids=batch.get("encoder_segment_ids"),
                     encoder_positions=batch.get("encoder_positions"),
                     deterministic=deterministic)

        def apply(method, rng, *args):
            return model.apply({"params": params}, *args, **extra, method=method,
                               rngs={"dropout": rng})

        def generator_fn(tokens, positions):
            # [batch, length], [batch, slots] -> [batch, slots, vocab]
            return apply(electra.Electra.generator_logits, gen_key, tokens, positions)

        second_fns = {
            # [batch, length] -> [batch, length]
            "discriminator": lambda tokens: apply(electra.Electra.discriminator_logits,
                                                  disc_key, tokens),
            # [batch, length], [batch, slots] -> [batch, slots, vocab]
            "main_mlm": lambda tokens, positions: apply(electra.Electra.main_logits, disc_key,
                                                        tokens, positions)[0],
            # [batch, length] -> ([batch, length, vocab], copy logits [batch, length])
            "all_tokens": lambda tokens: apply(electra.Electra.main_logits, disc_key, tokens,
                                               None),
            "none": None,
        }
        # Evaluation also runs the context probes (one more discriminator pass).
        cfg = dataclasses.replace(rcfg, eval_probes=deterministic
                                  and variant.second == "discriminator")
        loss, metrics = variant.loss(objective_key, batch, generator_fn,
                                     second_fns[variant.second], cfg)
        return loss, {k: v for k, v in metrics.items() if k != "loss"}

    def make_examples(files: Sequence[str], path: str, seed: int) -> Any:
        from data import examples

        return examples.electra_examples_from_files(files, path, max_length=length, seed=seed)

    def synthetic_batch(rng: np.random.Generator) -> base.HostBatch:
        # [batch, length] ids above the special ones, framed as [CLS] ... [SEP].
        tokens = rng.integers(max(special_ids.values()) + 1, cfg.discriminator.vocab_size,
                              (batch, length))
        tokens[:, 0], tokens[:, -1] = special_ids["cls"], special_ids["sep"]
        return base.fill_packing_keys(
            {"encoder_input_tokens": tokens, "encoder_token_type_ids": np.zeros_like(tokens)},
            batch_spec)

    def baselines(batches: list[base.HostBatch]) -> dict[str, float]:
        return unigram_baselines(batches, special_ids) if batches else {}

    def notes(record: Mapping[str, Any]) -> list[str]:
        lines = []
        if "eval/unigram_entropy" in record:
            lines.append(f"  context-free generator: cross-entropy "
                         f"{record['eval/unigram_entropy']:.4f} (unigram), accuracy "
                         f"{record['eval/unigram_accuracy']:.4f} (always the most frequent token)")
        if "eval/replaced_fraction" in record:
            rate = record["eval/replaced_fraction"]
            lines.append(f"  context-free discriminator: accuracy {1 - rate:.4f} (always "
                         f"'original'), precision {rate:.4f} (the share of replaced tokens), "
                         f"auc 0.5 (chance), "
                         f"{record.get('eval/identity_auc', float('nan')):.4f} (token identity); "
                         f"the discriminator on shuffled word order: auc "
                         f"{record.get('eval/disc_auc_shuffled', float('nan')):.4f}")
        return lines

    def showcase(trained, initial, example, path):
        from objectives import showcase as showcase_lib

        return showcase_lib.electra_detection(model, trained, initial, example, path, rcfg,
                                              length, jax.random.key(config.seed + 1))

    summary_keys = {
        "discriminator": ("disc_accuracy", "gen_accuracy", "disc_precision", "disc_recall",
                          "disc_auc"),
        "main_mlm": ("main_accuracy", "gen_accuracy"),
        "all_tokens": ("main_accuracy", "gen_accuracy"),
        "none": ("gen_accuracy",),
    }[variant.second]
    return base.Objective(
        name=name, model=model, batch_spec=batch_spec, init_fn=init_fn, loss_fn=loss_fn,
        reduction="mean", flops_per_step=flops(cfg, variant.second, batch, length, masked),
        tokens_per_step=batch * length, vocab_size=cfg.discriminator.vocab_size,
        special_ids=special_ids, example_kind="encoder", feature_lengths={"inputs": length},
        make_examples=make_examples, synthetic_batch=synthetic_batch, feature_converter=None,
        summary_keys=summary_keys, baselines=baselines, notes=notes,
        showcase=showcase if variant.second == "discriminator" else None)
