"""ELECTRA replaced token detection and the paper's baselines/ablations (Clark et al. 2020).

Every loss has the signature

    loss(key, batch, generator_fn, discriminator_fn, cfg) -> (loss, metrics)

and reaches the networks only through two callables, so it does not depend on the model module
(the caller closes over params, token types, segment ids, dropout keys...). ``batch`` needs
``encoder_input_tokens`` [B, L] (0 = padding). The callables' contracts, per loss (named
by the objective that uses it, objectives/registry.py):

- "electra", "electra_15" (Table 5: ELECTRA 15% scores the discriminator only at chosen slots):
  generator_fn(masked [B,L], positions [B,N]) -> [B,N,V] generator MLM logits;
  discriminator_fn(corrupted [B,L]) -> [B,L] logits.
- "mlm" (BERT baseline): generator_fn(masked, positions) -> [B,N,V] logits of THE model;
  discriminator_fn is unused (may be None).
- "replace_mlm": generator_fn as for "electra" (it only supplies samples and trains by MLM);
  discriminator_fn(corrupted [B,L], positions [B,N]) -> [B,N,V] main-model MLM logits.
- "all_tokens_mlm": generator_fn as for "electra";
  discriminator_fn(corrupted [B,L]) -> (logits [B,L,V], copy_logits [B,L]).

All logits float32. In the two-network objectives the generator is trained by its own MLM loss
(weight ``gen_weight``) and receives no gradient from the second network: the samples are int32
and produced under stop_gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from objectives import losses, masking

Metrics = dict[str, jax.Array]
# loss(key, batch, generator_fn, second_network_fn, cfg) -> (loss, metrics)
LossFn = Callable[..., tuple[jax.Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class RTDConfig:
    """Static (hashable) settings of the ELECTRA-family objectives."""

    mask_id: int
    cls_id: int
    sep_id: int
    mask_prob: float = 0.15
    pad_id: int = 0
    max_predictions: int | None = None  # None -> int((mask_prob + 0.005) * length)
    mask_replace_prob: float = 0.85  # of chosen positions -> [MASK]; the rest keep their token
    random_token_prob: float = 0.0  # > 0 gives BERT's 80/10/10 (with mask_replace_prob 0.8)
    vocab_size: int | None = None  # needed only when random_token_prob > 0
    temperature: float = 1.0
    disallow_correct: bool = False
    uniform_generator: bool = False
    # Replacements drawn from the batch's own unigram distribution (its real, non-special
    # tokens), the generator still trained but unused: an ablation where token identity says
    # nothing and only context can find the replacements.
    unigram_generator: bool = False
    gen_weight: float = 1.0
    disc_weight: float = 50.0
    main_mlm_weight: float = 1.0  # weight of the main model's MLM loss (replace/all-tokens MLM)
    # Evaluation probes (off in the train step): "identity_auc", a context-free detector's AUC
    # (:func:`identity_scores`), and "disc_auc_shuffled", the discriminator on each corrupted
    # sequence with its real tokens in a random order (labels moved along). Shuffled near
    # "disc_auc": word order is not used; near "identity_auc": context is not used at all.
    eval_probes: bool = False

    def __post_init__(self):
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"RTDConfig.mask_prob={self.mask_prob}, expected 0 < p < 1")
        if self.temperature <= 0:
            raise ValueError(f"RTDConfig.temperature={self.temperature}, expected > 0")
        if self.uniform_generator and self.unigram_generator:
            raise ValueError("RTDConfig: uniform_generator and unigram_generator are exclusive")
        if self.max_predictions is not None and self.max_predictions <= 0:
            raise ValueError(f"RTDConfig.max_predictions={self.max_predictions}, expected > 0")


def _tokens(batch: Mapping[str, jax.Array]) -> jax.Array:
    if "encoder_input_tokens" not in batch:
        raise KeyError(f"rtd: batch needs 'encoder_input_tokens' [batch, length]; got keys "
                       f"{sorted(batch)}")
    tokens = batch["encoder_input_tokens"]
    if tokens.ndim != 2:
        raise ValueError(f"rtd: encoder_input_tokens must be [batch, length], got {tokens.shape}")
    return tokens.astype(jnp.int32)


def _mask(key: jax.Array, tokens: jax.Array, cfg: RTDConfig) -> masking.MaskedInputs:
    return masking.mask_tokens(
        key, tokens, mask_prob=cfg.mask_prob, mask_id=cfg.mask_id,
        special_ids=(cfg.cls_id, cfg.sep_id), pad_id=cfg.pad_id,
        max_predictions=cfg.max_predictions, mask_replace_prob=cfg.mask_replace_prob,
        random_token_prob=cfg.random_token_prob, vocab_size=cfg.vocab_size)


def _check_logits(name: str, logits: jax.Array, shape: tuple[int, ...]) -> None:
    if logits.shape[: len(shape)] != shape or logits.ndim != len(shape) + 1:
        raise ValueError(f"rtd: {name} returned logits {logits.shape}, expected {shape} + (vocab,)")


def generator_step(key: jax.Array, batch: Mapping[str, jax.Array], generator_fn: Callable,
                    cfg: RTDConfig):
    """Mask, run the generator, MLM loss at the chosen slots, sample, corrupt."""
    mask_key, sample_key = jax.random.split(key)
    tokens = _tokens(batch)
    masked = _mask(mask_key, tokens, cfg)
    # [batch, length], [batch, slots] -> [batch, slots, vocab]
    gen_logits = generator_fn(masked.masked_tokens, masked.positions)
    _check_logits("generator_fn", gen_logits, masked.positions.shape)
    mlm = losses.cross_entropy(gen_logits, masked.ids, masked.weights)
    sampler_logits = gen_logits
    if cfg.unigram_generator:
        candidates = masking.candidates(tokens, (cfg.cls_id, cfg.sep_id, cfg.mask_id), cfg.pad_id)
        # [vocab] counts of the batch's candidate tokens -> log-probabilities at every slot
        counts = jnp.zeros((gen_logits.shape[-1],), jnp.float32).at[tokens.reshape(-1)].add(
            candidates.reshape(-1).astype(jnp.float32))
        sampler_logits = jnp.broadcast_to(jnp.log(counts), gen_logits.shape)
    samples = masking.sample_replacements(
        sample_key, sampler_logits, temperature=cfg.temperature,
        disallow_correct=cfg.disallow_correct, original_ids=masked.ids,
        uniform=cfg.uniform_generator)
    # [batch, length] with samples at the chosen positions
    corrupted, labels = masking.corrupt(tokens, masked.positions, masked.weights, samples)
    metrics = {
        "mlm_loss": mlm.mean,
        "gen_accuracy": losses.accuracy(gen_logits, masked.ids, masked.weights),
        "masked_count": mlm.weight_sum,
    }
    return tokens, masked, corrupted, labels, mlm.mean, metrics


def identity_scores(corrupted: jax.Array, labels: jax.Array, weights: jax.Array,
                    vocab_size: int) -> jax.Array:
    """A context-free detector: each token scored by how often ITS ID is replaced in the other
    half of the batch, [B, L].

    Cross-fitted: rows of the first half are scored from counts in the second and vice versa
    (with one row, even positions from odd ones), so no label ever scores its own token. (Leave
    one out would not do: with the id's total fixed, removing a token's own label biases the
    AUC below 0.5.) Its AUC is what token identity alone earns on these batches, e.g. from a
    generator that samples rare ids too often; a discriminator that uses context must beat it.
    Smoothed towards the half's replaced rate by one pseudo-occurrence.
    """
    batch, length = labels.shape
    if batch >= 2:
        half = (jnp.arange(batch) >= batch // 2)[:, None] & jnp.ones((1, length), bool)
    else:
        half = (jnp.arange(length) % 2 == 1)[None, :]
    half = half.reshape(-1).astype(jnp.int32)  # 0 or 1 per token
    ids = corrupted.reshape(-1)
    w = jnp.broadcast_to(weights, labels.shape).reshape(-1).astype(jnp.float32)
    y = labels.reshape(-1).astype(jnp.float32) * w
    # [2, vocab]: occurrences and replaced occurrences of each id in each half
    seen = jnp.zeros((2, vocab_size), jnp.float32).at[half, ids].add(w)
    replaced = jnp.zeros((2, vocab_size), jnp.float32).at[half, ids].add(y)
    rate = losses.safe_divide(jnp.sum(replaced, axis=1), jnp.sum(seen, axis=1))  # [2]
    other = 1 - half
    scores = (replaced[other, ids] + rate[other]) / (seen[other, ids] + 1.0)
    return scores.reshape(labels.shape)


def _disc_metrics(disc_logits: jax.Array, labels: jax.Array, weights: jax.Array,
                  real: jax.Array) -> Metrics:
    predictions = disc_logits > 0
    precision, recall = losses.binary_precision_recall(predictions, labels, weights)
    metrics = {
        "disc_accuracy": losses.binary_accuracy(predictions, labels, weights),
        "disc_precision": precision,
        "disc_recall": recall,
        # Threshold-free: does the discriminator rank replaced tokens above originals?
        "disc_auc": losses.binary_auc(disc_logits, labels, weights),
        "replaced_fraction": losses.safe_divide(jnp.sum(labels * real), jnp.sum(real)),
    }
    return metrics


def _replaced_token_detection(key, batch, generator_fn, discriminator_fn, cfg: RTDConfig,
                              *, only_masked: bool) -> tuple[jax.Array, Metrics]:
    tokens, masked, corrupted, labels, mlm_loss, metrics = generator_step(
        key, batch, generator_fn, cfg)
    # [batch, length] -> [batch, length]
    disc_logits = discriminator_fn(corrupted)
    if disc_logits.shape != tokens.shape:
        raise ValueError(f"rtd: discriminator_fn returned {disc_logits.shape}, expected "
                         f"{tokens.shape} (one logit per token)")
    real = (tokens != cfg.pad_id).astype(jnp.float32)
    if only_masked:
        # ELECTRA 15%: the discriminator is scored only where the generator was asked to predict.
        weights = masking.slots_to_length(masked.positions, masked.weights, tokens.shape[1])
    else:
        weights = real  # every real token, [CLS] and [SEP] included
    disc_loss = losses.sigmoid_bce(disc_logits, labels, weights).mean
    loss = cfg.gen_weight * mlm_loss + cfg.disc_weight * disc_loss
    metrics.update(_disc_metrics(disc_logits, labels, weights, real))
    if cfg.eval_probes:
        if cfg.vocab_size is not None:
            metrics["identity_auc"] = losses.binary_auc(
                identity_scores(corrupted, labels, weights, cfg.vocab_size), labels, weights)
        metrics["disc_auc_shuffled"] = _shuffled_auc(key, corrupted, labels, weights, real,
                                                     discriminator_fn)
    metrics.update(loss=loss, disc_loss=disc_loss)
    return loss, metrics


def _shuffled_auc(key: jax.Array, corrupted: jax.Array, labels: jax.Array, weights: jax.Array,
                  real: jax.Array, discriminator_fn: Callable) -> jax.Array:
    """Discriminator AUC on the same corrupted sequences with their real tokens permuted."""
    # Real positions first in a random order, padding after them: [batch, length]
    noise = jax.random.uniform(jax.random.fold_in(key, 1), corrupted.shape)
    order = jnp.argsort(jnp.where(real > 0, noise, 2.0), axis=-1)
    take = functools.partial(jnp.take_along_axis, indices=order, axis=-1)
    logits = discriminator_fn(take(corrupted))
    return losses.binary_auc(logits, take(labels), take(jnp.broadcast_to(weights, labels.shape)))


def rtd_loss(key: jax.Array, batch: Mapping[str, jax.Array], generator_fn: Callable,
             discriminator_fn: Callable, cfg: RTDConfig) -> tuple[jax.Array, Metrics]:
    """ELECTRA: gen_weight * MLM(generator) + disc_weight * BCE(discriminator, all real tokens).

    Metrics: loss, mlm_loss, disc_loss, gen_accuracy, disc_accuracy, disc_precision, disc_recall
    (positive class = replaced), disc_auc, replaced_fraction (of real tokens), masked_count
    (whole batch); with ``cfg.eval_probes`` also identity_auc (needs ``cfg.vocab_size``) and
    disc_auc_shuffled.
    """
    return _replaced_token_detection(key, batch, generator_fn, discriminator_fn, cfg,
                                     only_masked=False)


def electra_15_loss(key: jax.Array, batch: Mapping[str, jax.Array], generator_fn: Callable,
                    discriminator_fn: Callable, cfg: RTDConfig) -> tuple[jax.Array, Metrics]:
    """ELECTRA 15%: as :func:`rtd_loss` but the BCE (and its metrics) only at chosen positions."""
    return _replaced_token_detection(key, batch, generator_fn, discriminator_fn, cfg,
                                     only_masked=True)


def mlm_loss(key: jax.Array, batch: Mapping[str, jax.Array], generator_fn: Callable,
             discriminator_fn: Any, cfg: RTDConfig) -> tuple[jax.Array, Metrics]:
    """BERT baseline: ``generator_fn`` is the model; MLM loss averaged over the chosen slots.

    Same masking as ELECTRA (85% [MASK] / 15% kept; set random_token_prob for 80/10/10).
    ``discriminator_fn`` is ignored.
    """
    del discriminator_fn
    tokens = _tokens(batch)
    masked = _mask(key, tokens, cfg)
    # [batch, length], [batch, slots] -> [batch, slots, vocab]
    logits = generator_fn(masked.masked_tokens, masked.positions)
    _check_logits("generator_fn", logits, masked.positions.shape)
    mlm = losses.cross_entropy(logits, masked.ids, masked.weights)
    metrics = {
        "loss": mlm.mean,
        "mlm_loss": mlm.mean,
        "gen_accuracy": losses.accuracy(logits, masked.ids, masked.weights),
        "masked_count": mlm.weight_sum,
    }
    return mlm.mean, metrics


def replace_mlm_loss(key: jax.Array, batch: Mapping[str, jax.Array], generator_fn: Callable,
                     discriminator_fn: Callable, cfg: RTDConfig) -> tuple[jax.Array, Metrics]:
    """Replace MLM: chosen positions hold generator samples (not [MASK]); the main model
    ``discriminator_fn(corrupted, positions) -> [B, N, V]`` predicts the originals there.

    Loss = gen_weight * MLM(generator) + main_mlm_weight * MLM(main model). A sample equal to the
    original stays a prediction target (as BERT's 'keep' case).
    """
    tokens, masked, corrupted, labels, gen_mlm, metrics = generator_step(
        key, batch, generator_fn, cfg)
    # [batch, length], [batch, slots] -> [batch, slots, vocab]
    main_logits = discriminator_fn(corrupted, masked.positions)
    _check_logits("discriminator_fn", main_logits, masked.positions.shape)
    main = losses.cross_entropy(main_logits, masked.ids, masked.weights)
    loss = cfg.gen_weight * gen_mlm + cfg.main_mlm_weight * main.mean
    real = (tokens != cfg.pad_id).astype(jnp.float32)
    metrics.update(
        loss=loss,
        main_mlm_loss=main.mean,
        main_accuracy=losses.accuracy(main_logits, masked.ids, masked.weights),
        replaced_fraction=losses.safe_divide(jnp.sum(labels * real), jnp.sum(real)),
    )
    return loss, metrics


def copy_mechanism_log_prob(logits: jax.Array, copy_logits: jax.Array, inputs: jax.Array,
                            targets: jax.Array) -> jax.Array:
    """log p(target) under the paper's copy mechanism, [B, L].

    p(x) = D * [x == input] + (1 - D) * softmax(logits)[x] with copy probability
    D = sigmoid(copy_logits); computed in log space so it is stable for saturated gates.
    """
    logits = logits.astype(jnp.float32)
    copy_logits = copy_logits.astype(jnp.float32)
    # [batch, length, vocab] -> [batch, length]
    log_softmax_target = jnp.take_along_axis(
        jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]
    generate = jax.nn.log_sigmoid(-copy_logits) + log_softmax_target
    # Copying contributes only where the input already shows the target token.
    copy = jnp.where(inputs == targets, jax.nn.log_sigmoid(copy_logits), -1e30)
    return jnp.logaddexp(copy, generate)


def all_tokens_mlm_loss(key: jax.Array, batch: Mapping[str, jax.Array], generator_fn: Callable,
                        discriminator_fn: Callable, cfg: RTDConfig) -> tuple[jax.Array, Metrics]:
    """All-Tokens MLM: Replace MLM's input, but the main model predicts EVERY real token.

    Uses the paper's explicit copy mechanism (not a simplification):
    ``discriminator_fn(corrupted) -> (logits [B, L, V], copy_logits [B, L])``; the output
    distribution puts D = sigmoid(copy_logit) on the input token and (1 - D) on softmax(logits).
    Main loss = -log p(original) averaged over all real tokens ([CLS]/[SEP] included).
    """
    tokens, _, corrupted, labels, gen_mlm, metrics = generator_step(
        key, batch, generator_fn, cfg)
    outputs = discriminator_fn(corrupted)
    if not (isinstance(outputs, tuple | list) and len(outputs) == 2):
        raise ValueError("rtd: all_tokens_mlm needs discriminator_fn(corrupted) -> "
                         "(logits [B, L, V], copy_logits [B, L])")
    main_logits, copy_logits = outputs
    _check_logits("discriminator_fn", main_logits, tokens.shape)
    if copy_logits.shape != tokens.shape:
        raise ValueError(f"rtd: copy_logits {copy_logits.shape}, expected {tokens.shape}")
    real = (tokens != cfg.pad_id).astype(jnp.float32)
    # [batch, length]
    log_prob = copy_mechanism_log_prob(main_logits, copy_logits, corrupted, tokens)
    main = losses.safe_divide(jnp.sum(jnp.where(real > 0, -log_prob, 0.0)), jnp.sum(real))
    # The prediction is the argmax of the full copy/generate mixture.
    # [batch, length, vocab]
    gate = jax.nn.sigmoid(copy_logits.astype(jnp.float32))[..., None]
    mixture = ((1.0 - gate) * jax.nn.softmax(main_logits.astype(jnp.float32), axis=-1)
               + gate * jax.nn.one_hot(corrupted, main_logits.shape[-1]))
    loss = cfg.gen_weight * gen_mlm + cfg.main_mlm_weight * main
    metrics.update(
        loss=loss,
        main_mlm_loss=main,
        main_accuracy=losses.accuracy(mixture, tokens, real),
        copy_probability=losses.safe_divide(
            jnp.sum(jax.nn.sigmoid(copy_logits) * real), jnp.sum(real)),
        replaced_fraction=losses.safe_divide(jnp.sum(labels * real), jnp.sum(real)),
    )
    return loss, metrics
