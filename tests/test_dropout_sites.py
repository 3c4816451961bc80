"""Dropout is applied where Hugging Face applies it, to tensors of the same shapes.

HF's models are the reference for where dropout sits (T5.md lists T5's sites; BERT/ELECTRA drop
after the embeddings, on the attention probabilities and after each output projection, but not on
the MLP's hidden "intermediate" activations). Both models run one training-mode forward; every
tensor HF hands to ``torch.nn.functional.dropout`` and every tensor pretrax masks is recorded.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from modeling import hf, layers

BATCH, LENGTH, TARGETS = 2, 12, 5


def _hf_dropout_shapes(model, monkeypatch, **inputs) -> collections.Counter:
    shapes = collections.Counter()
    original = torch.nn.functional.dropout

    def recording(x, p=0.5, training=True, inplace=False):
        if training and p > 0:
            shapes[tuple(x.shape)] += 1
        return original(x, p, training, inplace)

    monkeypatch.setattr(torch.nn.functional, "dropout", recording)
    model.train()
    with torch.no_grad():
        model(**{k: torch.tensor(v) for k, v in inputs.items()})
    return shapes


def _our_dropout_shapes(model, params, monkeypatch, *args, **kwargs) -> collections.Counter:
    shapes = collections.Counter()
    original = layers.dropout_mask

    def recording(key, rate, shape):
        shapes[tuple(shape)] += 1
        return original(key, rate, shape)

    monkeypatch.setattr(layers, "dropout_mask", recording)
    jax.eval_shape(lambda p: model.apply({"params": p}, *args, deterministic=False,
                                         rngs={"dropout": jax.random.key(0)}, **kwargs), params)
    return shapes


def test_electra_drops_where_hf_electra_does(tmp_path, monkeypatch):
    config = transformers.ElectraConfig(
        vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=96, max_position_embeddings=32)
    transformers.ElectraForPreTraining(config).save_pretrained(tmp_path)
    tokens = np.random.RandomState(0).randint(1, 64, (BATCH, LENGTH))
    ref = _hf_dropout_shapes(transformers.ElectraForPreTraining.from_pretrained(tmp_path),
                             monkeypatch, input_ids=tokens)
    model, params = hf.from_hf(str(tmp_path))
    assert model.config.dropout_rate == pytest.approx(0.1)
    ours = _our_dropout_shapes(model, params, monkeypatch, jnp.asarray(tokens))
    assert ours == ref
    assert (BATCH, LENGTH, 96) not in ours  # the MLP's hidden activations are not dropped


@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_t5_drops_where_hf_t5_does(tmp_path, monkeypatch, proj):
    config = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=96, num_layers=2, num_decoder_layers=2,
        num_heads=4, feed_forward_proj=proj, dropout_rate=0.1, decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    rng = np.random.RandomState(0)
    inputs = rng.randint(1, 64, (BATCH, LENGTH))
    targets = rng.randint(1, 64, (BATCH, TARGETS))
    ref = _hf_dropout_shapes(transformers.T5ForConditionalGeneration.from_pretrained(tmp_path),
                             monkeypatch, input_ids=inputs, decoder_input_ids=targets)
    # HF draws a mask per element; T5X (our preset default) shares it along the length axis.
    model, params = hf.from_hf(str(tmp_path), dropout_broadcast_dims=())
    ours = _our_dropout_shapes(model, params, monkeypatch, jnp.asarray(inputs),
                               jnp.asarray(targets))
    assert ours == ref
    assert ours[(BATCH, LENGTH, 96)] == 2 and ours[(BATCH, TARGETS, 96)] == 2  # MLP hidden
