"""Encoder-decoder objectives: the T5 paper's denoising objectives on ``modeling.t5``.

Every T5 objective differs only in how the host corrupts text (a ``denoising.Denoiser``:
span corruption, prefix LM, BERT-style, deshuffling, ...); on device they share one loss, T5X's
cross-entropy with z-loss, summed over target tokens by default (so k microbatches add up to
one batch exactly). ``config.objective`` carries the denoiser's parameters
(``noise_density``, ``mean_noise_span_length``; None = the paper's value for that objective) and
the loss settings (``z_loss``, ``label_smoothing``, ``normalize``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from data import vocab as vocab_lib
from modeling import t5
from modeling.transformer import TransformerConfig
from objectives import base, denoising, losses

# config.objective fields that parameterise a denoiser (None: the denoiser's default).
DENOISER_PARAMS = ("noise_density", "mean_noise_span_length")
_ELECTRA_ONLY = ("embedding_size", "generator_fraction", "embedding_sharing")
_MODEL_OVERRIDES = ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_layers",
                    "num_decoder_layers", "embedding_size", "dropout_rate")


def model_overrides(config: Any) -> dict[str, Any]:
    """The ``config.model`` fields that change the preset (None = keep the preset's value)."""
    out = {"dtype": config.model.dtype, "scan_layers": config.model.scan_layers,
           "remat_policy": config.model.remat_policy}
    for key in _MODEL_OVERRIDES:
        if config.model[key] is not None:
            out[key] = config.model[key]
    return out


def model_config(config: Any) -> TransformerConfig:
    for key in _ELECTRA_ONLY:
        if config.model[key] is not None:
            raise ValueError(f"config.model.{key}={config.model[key]!r} is an ELECTRA setting; "
                             f"objective {config.objective.name!r} trains a T5 model")
    if config.model.preset not in t5.PRESETS:
        raise ValueError(f"config.model.preset={config.model.preset!r} is not a T5 preset; "
                         f"objective {config.objective.name!r} trains one of {sorted(t5.PRESETS)}")
    return t5.get_t5_config(config.model.preset, **model_overrides(config))


def denoiser_params(config: Any) -> dict[str, Any]:
    """The denoiser parameters set in ``config.objective`` (unset ones keep the defaults)."""
    return {k: config.objective[k] for k in DENOISER_PARAMS if config.objective[k] is not None}


def flops(cfg: TransformerConfig, batch: int, inputs_length: int, targets_length: int) -> float:
    """Training FLOPs of one batch: 3 x the forward matmuls (launch/metrics.py's convention)."""
    d, inner = cfg.d_model, cfg.num_heads * cfg.head_dim
    ffn = (3 if cfg.mlp == "gated-gelu" else 2) * cfg.d_model * cfg.d_ff
    t_enc, t_dec = batch * inputs_length, batch * targets_length
    enc = 2 * t_enc * (4 * d * inner + ffn) + 4 * batch * inputs_length**2 * inner
    dec = (2 * t_dec * (6 * d * inner + ffn) + 2 * t_enc * 2 * d * inner
           + 4 * batch * targets_length**2 * inner
           + 4 * batch * targets_length * inputs_length * inner)
    head = 2 * t_dec * d * cfg.vocab_size
    return 3.0 * (cfg.num_layers * enc + cfg.num_decoder_layers * dec + head)


def unigram_entropy(batches: list[base.HostBatch]) -> float | None:
    """Entropy (nats) of the target-token unigram distribution: a context-free baseline loss."""
    targets = np.concatenate([np.asarray(b["decoder_target_tokens"]).ravel() for b in batches])
    weights = np.concatenate([np.asarray(b["decoder_loss_weights"]).ravel() for b in batches])
    keep = weights > 0
    if not keep.any():
        return None
    _, inverse = np.unique(targets[keep], return_inverse=True)
    counts = np.bincount(inverse, weights=weights[keep].astype(np.float64))
    probs = counts / counts.sum()
    return float(-np.sum(probs * np.log(probs)))


def build(config: Any, denoiser: denoising.Denoiser | None) -> base.Objective:
    """A T5 objective; ``denoiser=None`` builds the model, loss and batch spec only (the
    fine-tuning objective supplies its own examples)."""
    cfg = model_config(config)
    model = t5.EncoderDecoder(cfg)
    obj = config.objective
    if obj.normalize not in losses.NORMALIZE_MODES:
        raise ValueError(f"config.objective.normalize={obj.normalize!r}; expected one of "
                         f"{losses.NORMALIZE_MODES}")
    # Unknown parameters fail here.
    params = denoiser.params(**denoiser_params(config)) if denoiser is not None else {}
    vocab_path = vocab_lib.path_of(config)
    batch, l_in, l_out = (config.data.batch_size, config.data.inputs_length,
                          config.data.targets_length)
    spec = {"encoder_input_tokens": (batch, l_in), "decoder_input_tokens": (batch, l_out),
            "decoder_target_tokens": (batch, l_out), "decoder_loss_weights": (batch, l_out)}
    if config.data.pack:
        spec.update(encoder_segment_ids=(batch, l_in), encoder_positions=(batch, l_in),
                    decoder_segment_ids=(batch, l_out), decoder_positions=(batch, l_out))
    batch_spec = {k: (shape, jnp.int32) for k, shape in spec.items()}
    # pad/eos/unk only: T5's sentinels (and BERT/MASS-style masks) are seqio's extra ids, so
    # T5's own vocabularies (no ELECTRA [CLS]/[SEP]/[MASK] pieces) are accepted.
    special_ids = vocab_lib.special_ids(vocab_path, symbols=vocab_lib.T5_SYMBOLS)

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

    def make_examples(files: Sequence[str], path: str, seed: int) -> Any:
        from data import examples

        return examples.t5_examples(files, path, denoiser=denoiser, inputs_length=l_in,
                                    seed=seed, **params)

    def synthetic_batch(rng: np.random.Generator) -> base.HostBatch:
        # [batch, inputs_length] ids above the special ones, EOS last; the targets copy the
        # first input tokens so the loss can go down.
        tokens = rng.integers(max(special_ids.values()) + 1, cfg.vocab_size, (batch, l_in))
        tokens[:, -1] = special_ids["eos"]
        targets = tokens[:, :l_out].copy()
        targets[:, -1] = special_ids["eos"]
        out = {"encoder_input_tokens": tokens, "decoder_target_tokens": targets,
               # shifted right, PAD (0) starts
               "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
               "decoder_loss_weights": np.ones_like(targets)}
        return base.fill_packing_keys(out, batch_spec)

    def feature_converter(pack: bool) -> Any:
        import seqio

        return seqio.EncDecFeatureConverter(pack=pack)

    def baselines(batches: list[base.HostBatch]) -> dict[str, float]:
        entropy = unigram_entropy(batches) if batches else None
        return {} if entropy is None else {"unigram_entropy": entropy}

    def notes(record: Mapping[str, Any]) -> list[str]:
        if "eval/unigram_entropy" not in record:
            return []
        return [f"  unigram baseline (context-free cross-entropy): "
                f"{record['eval/unigram_entropy']:.4f}"]

    def showcase(trained, initial, example, path):
        from objectives import showcase as showcase_lib

        return showcase_lib.t5_span_filling(model, trained, initial, example, path, l_in, l_out)

    return base.Objective(
        name=obj.name, model=model, batch_spec=batch_spec, init_fn=init_fn, loss_fn=loss_fn,
        reduction="sum" if obj.normalize == "sum" else "mean",
        flops_per_step=flops(cfg, batch, l_in, l_out), tokens_per_step=batch * (l_in + l_out),
        vocab_size=cfg.vocab_size, special_ids=special_ids, example_kind="encdec",
        feature_lengths={"inputs": l_in, "targets": l_out}, make_examples=make_examples,
        synthetic_batch=synthetic_batch, feature_converter=feature_converter,
        summary_keys=("cross_entropy", "accuracy"), baselines=baselines, notes=notes,
        showcase=showcase)
