"""Fine-tuning objectives: one downstream task (``data/finetune.py``) per run.

- ``classify``: an ELECTRA discriminator encoder with a [CLS] head (``ElectraClassifier``):
  softmax cross-entropy over the task's labels, or squared error for a regression task (as
  ``ElectraForSequenceClassification``: mean over the batch). Warm starts take the encoder from
  an ELECTRA pretraining run (the discriminator; generator dropped), a discriminator or
  classifier HF directory; the head is new unless the source has one of the same shape.
- ``text_to_text``: T5 with teacher forcing on ``"<task> sentence1: ..."`` -> target text,
  the pretraining loss (``objectives/t5_family.py``); predictions are decoded (greedy, or beam
  with ``config.objective.beam_size > 1``).

Both add to the :class:`~objectives.base.Objective` what evaluation by task metrics needs:
``task``, ``task_examples(split, vocab_path, seed)``, a jittable ``predict_fn(params, batch)``
and ``decode_predictions(outputs) -> strings``; the metric functions are the task's, the same
for both families.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data import finetune
from data import vocab as vocab_lib
from modeling import decoding, electra
from objectives import base, electra_family, t5_family

_DISCRIMINATOR = electra_family.Variant(loss=None, second="discriminator", paper="")


# ---------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay: the depth of every classifier parameter.
# ---------------------------------------------------------------------------------------------
def classifier_depths(params: Any, num_layers: int) -> Any:
    """0 for the embeddings (and ``embeddings_project``), i + 1 for layer i, L + 1 the head.

    Scanned layers (``network/stack/layers/...``, a leading layers axis) get the vector
    ``[1..L]``; ``optim.layerwise_lr_scales`` turns depths into LR multipliers.
    """
    def depth(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        if names[0] == "head":
            return np.asarray(num_layers + 1)
        if "stack" in names:
            part = names[names.index("stack") + 1]
            if part.startswith("layers_"):
                return np.asarray(int(part[len("layers_"):]) + 1)
            if part == "layers":
                return np.arange(1, num_layers + 1)
        return np.asarray(0)

    return jax.tree_util.tree_map_with_path(depth, params)


def _adapt_encoder(source: Mapping[str, Any], init: Mapping[str, Any]) -> dict[str, Any]:
    """Warm-start params for ``ElectraClassifier`` from what an ELECTRA checkpoint holds."""
    if "discriminator" in source and "embeddings" in source:  # an Electra pretraining run
        embeddings = dict(source["embeddings"])
        if "discriminator_word_delta" in source:  # gdes: fold the delta in
            word = dict(embeddings["word"])
            word["embedding"] = word["embedding"] + source["discriminator_word_delta"]
            embeddings["word"] = word
        encoder = {"embeddings": embeddings, "network": source["discriminator"]}
    elif "network" in source and "embeddings" in source:  # a single network (HF, classifier)
        encoder = {"embeddings": source["embeddings"], "network": source["network"]}
    else:
        raise ValueError(f"init_from holds params {sorted(source)}; an ELECTRA classifier "
                         "starts from an ELECTRA pretraining run, discriminator or classifier "
                         "(embeddings + network)")
    head = source.get("head")
    same = head is not None and (jax.tree.structure(head) == jax.tree.structure(init["head"])
                                 and all(np.shape(a) == np.shape(b) for a, b in zip(
                                     jax.tree.leaves(head), jax.tree.leaves(init["head"]),
                                     strict=True)))
    return {**encoder, "head": head if same else init["head"]}


# ---------------------------------------------------------------------------------------------
# ELECTRA: classification and regression.
# ---------------------------------------------------------------------------------------------
def build_classify(config: Any) -> base.Objective:
    task = finetune.get(config.data.task, config.data.task_module)
    num_classes = task.num_classes
    disc = electra_family.model_config(config, _DISCRIMINATOR).discriminator
    obj = config.objective
    model = electra.ElectraClassifier(disc, num_classes, classifier_dropout=disc.dropout_rate,
                                      head_style=obj.classifier_head)
    vocab_path = vocab_lib.path_of(config)
    special_ids = vocab_lib.special_ids(vocab_path)
    batch, length = config.data.batch_size, config.data.inputs_length
    regression = task.kind == "regression"
    batch_spec = {"encoder_input_tokens": ((batch, length), jnp.int32),
                  "encoder_token_type_ids": ((batch, length), jnp.int32),
                  "labels": ((batch,), jnp.float32 if regression else jnp.int32)}

    def init_fn(key):
        tokens = jnp.ones((1, length), jnp.int32)
        return model.init({"params": key}, tokens, jnp.zeros_like(tokens), deterministic=True)

    def logits_fn(params, batch, deterministic, rng=None):
        # [batch, length] -> [batch, classes] float32
        return model.apply({"params": params}, batch["encoder_input_tokens"],
                           batch["encoder_token_type_ids"], deterministic=deterministic,
                           rngs=None if rng is None else {"dropout": rng})

    def loss_fn(params, batch, step_key, deterministic):
        logits = logits_fn(params, batch, deterministic, step_key)
        labels = batch["labels"]
        if regression:
            loss = jnp.mean(jnp.square(logits[:, 0] - labels))
            return loss, {"mse": loss}
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        # Named apart from the task's "accuracy" (in percent, over the whole split).
        return loss, {"label_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    def predict_fn(params, batch):
        # [batch, classes]: probabilities (classification) or the value (regression)
        logits = logits_fn(params, batch, True)
        return logits if regression else jax.nn.softmax(logits, axis=-1)

    def decode_predictions(outputs: np.ndarray) -> list[str]:
        if regression:
            return [repr(float(v)) for v in outputs[:, 0]]
        return [task.labels[i] for i in np.argmax(outputs, axis=-1)]

    def prediction_details(outputs: np.ndarray) -> list[dict]:
        if regression:
            return [{} for _ in outputs]
        return [{"probabilities": {label: float(p) for label, p in zip(task.labels, row,
                                                                       strict=True)}}
                for row in outputs]

    def task_examples(split, path: str, seed: int) -> finetune.FinetuneExamples:
        return finetune.encoder_examples(task, split, path, special_ids, length, seed)

    return base.Objective(
        name=obj.name, model=model, batch_spec=batch_spec, init_fn=init_fn, loss_fn=loss_fn,
        reduction="mean",
        flops_per_step=3.0 * electra_family.encoder_flops(disc, batch, length),
        tokens_per_step=batch * length, vocab_size=disc.vocab_size, special_ids=special_ids,
        example_kind="classify", feature_lengths={"inputs": length},
        make_examples=_no_corpus(obj.name), synthetic_batch=_no_synthetic(obj.name),
        feature_converter=None,
        summary_keys=("mse" if regression else "label_accuracy", task.metric),
        baselines=lambda batches: {}, notes=lambda record: [], showcase=None,
        task=task, task_examples=task_examples, predict_fn=predict_fn,
        decode_predictions=decode_predictions, prediction_details=prediction_details,
        param_depths=functools.partial(classifier_depths, num_layers=disc.num_layers),
        num_layers=disc.num_layers, adapt_params=_adapt_encoder)


# ---------------------------------------------------------------------------------------------
# T5: text to text.
# ---------------------------------------------------------------------------------------------
def build_text_to_text(config: Any) -> base.Objective:
    task = finetune.get(config.data.task, config.data.task_module)
    pretraining = t5_family.build(config, denoiser=None)
    model, obj = pretraining.model, config.objective
    vocab_path = vocab_lib.path_of(config)
    eos = pretraining.special_ids["eos"]
    l_in, l_out = config.data.inputs_length, config.data.targets_length

    def predict_fn(params, batch):
        # [batch, inputs_length] -> [batch, targets_length] generated ids
        tokens = batch["encoder_input_tokens"]
        if obj.beam_size > 1:
            ids, _ = decoding.beam_search_decode(model, params, tokens, l_out,
                                                 beam_size=obj.beam_size, eos_id=eos)
            return ids[:, 0]  # the best beam
        return decoding.greedy_decode(model, params, tokens, l_out, eos_id=eos)[0]

    def decode_predictions(outputs: np.ndarray) -> list[str]:
        sp = vocab_lib.load_sentencepiece(vocab_path)
        out = []
        for row in np.asarray(outputs):
            ids = [int(i) for i in row]
            ids = ids[:ids.index(eos)] if eos in ids else ids
            out.append(sp.decode([i for i in ids if 0 < i < sp.get_piece_size()]))
        return out

    def task_examples(split, path: str, seed: int) -> finetune.FinetuneExamples:
        return finetune.encdec_examples(task, split, path, eos, l_in, l_out, seed)

    def loss_fn(params, batch, step_key, deterministic):
        # The pretraining loss; its per-token accuracy renamed apart from the task's metrics.
        loss, metrics = pretraining.loss_fn(params, batch, step_key, deterministic)
        metrics["token_accuracy"] = metrics.pop("accuracy")
        return loss, metrics

    return dataclasses.replace(
        pretraining, loss_fn=loss_fn, make_examples=_no_corpus(obj.name), feature_converter=None,
        summary_keys=("cross_entropy", task.metric),
        synthetic_batch=_no_synthetic(obj.name), baselines=lambda batches: {},
        notes=lambda record: [], showcase=None, task=task, task_examples=task_examples,
        predict_fn=predict_fn, decode_predictions=decode_predictions)


def _no_corpus(name: str):
    def make_examples(files: Sequence[str], path: str, seed: int) -> Any:
        raise ValueError(f"objective {name!r} fine-tunes on a task: set "
                         "config.data.source='task' and config.data.task")
    return make_examples


def _no_synthetic(name: str):
    def synthetic_batch(rng: np.random.Generator) -> base.HostBatch:
        raise ValueError(f"objective {name!r} fine-tunes on a task; it has no synthetic data")
    return synthetic_batch
