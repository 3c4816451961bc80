"""T5 EncoderDecoder: presets, parameter counts vs HF, masks, dtypes, scan/remat, dropout, init."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn
from flax import traverse_util

from modeling import hf, t5

SEQIO_NAMES = ("encoder_input_tokens", "decoder_input_tokens", "encoder_segment_ids",
               "decoder_segment_ids", "encoder_positions", "decoder_positions")


def _init(cfg, seed=0):
    """The model and random params of its exact tree (numpy draws on ``eval_shape``: no init
    compile). Norm scales near 1, embeddings and relpos ~N(0, 1), kernels ~N(0, 1/fan_in)."""
    model = t5.EncoderDecoder(cfg)
    x = jnp.ones((1, 2), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), x, x)))
    rng = np.random.RandomState(seed)

    def draw(path, s):
        name = path[-1].key
        if name == "scale":
            return (1.0 + 0.2 * rng.randn(*s.shape)).astype(np.float32)
        if name in ("embedding", "rel_embedding"):
            return rng.randn(*s.shape).astype(np.float32)
        # Attention "out" kernels [heads, kv, embed] contract two axes; the rest one.
        fan_in = s.shape[0] * (s.shape[1] if path[-2].key == "out" else 1)
        return (rng.randn(*s.shape) / np.sqrt(fan_in)).astype(np.float32)

    return model, jax.tree_util.tree_map_with_path(draw, shapes["params"])


def _apply(model, params, *args, **kwargs):
    return _jitted_apply(model)({"params": params}, *args, **kwargs)


_JITTED = {}


def _jitted_apply(model):
    if model not in _JITTED:
        _JITTED[model] = jax.jit(model.apply, static_argnames=("deterministic",))
    return _JITTED[model]


def _tokens(seed, shape, vocab=512):
    return np.random.RandomState(seed).randint(2, vocab, shape).astype(np.int32)


def _to_scan(params):
    """Loop layout ``{stack}/layers_{i}/...`` -> scan layout ``{stack}/layers/block/...``."""
    flat = traverse_util.flatten_dict(params)
    out, stacked = {}, {}
    for path, value in flat.items():
        if path[1].startswith("layers_"):
            stacked.setdefault((path[0], "layers", "block", *path[2:]), []).append(
                (int(path[1][7:]), value))
        else:
            out[path] = value
    for path, items in stacked.items():
        out[path] = jnp.stack([v for _, v in sorted(items)])
    return traverse_util.unflatten_dict(out)


# ---------------------------------------------------------------------------------------------
# Presets and parameter counts.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,d_model,d_ff,heads,d_kv,layers,mlp,tied", [
    ("t5_small", 512, 2048, 8, 64, 6, "relu", True),
    ("t5_base", 768, 3072, 12, 64, 12, "relu", True),
    ("t5_large", 1024, 4096, 16, 64, 24, "relu", True),
    ("t5_3b", 1024, 16384, 32, 128, 24, "relu", True),
    ("t5_11b", 1024, 65536, 128, 128, 24, "relu", True),
    ("t5_1_1_small", 512, 1024, 6, 64, 8, "gated-gelu", False),
    ("t5_1_1_base", 768, 2048, 12, 64, 12, "gated-gelu", False),
    ("t5_1_1_large", 1024, 2816, 16, 64, 24, "gated-gelu", False),
    ("t5_1_1_xl", 2048, 5120, 32, 64, 24, "gated-gelu", False),
    ("t5_1_1_xxl", 4096, 10240, 64, 64, 24, "gated-gelu", False),
])
def test_presets_match_t5_table(name, d_model, d_ff, heads, d_kv, layers, mlp, tied):
    cfg = t5.PRESETS[name]
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.head_dim) == (d_model, d_ff, heads, d_kv)
    assert (cfg.num_layers, cfg.num_decoder_layers) == (layers, layers)
    assert (cfg.mlp, cfg.tie_embeddings, cfg.vocab_size) == (mlp, tied, 32128)
    assert (cfg.norm, cfg.norm_eps, cfg.use_bias) == ("rms", 1e-6, False)
    assert not cfg.scale_attention
    assert (cfg.relative_buckets, cfg.relative_max_distance) == (32, 128)


@pytest.mark.parametrize("name,expected", [
    ("t5_1_1_small", 76_961_152),
    ("t5_1_1_base", 247_577_856),
    ("t5_small", 60_506_624),
])
def test_param_count_equals_hf(name, expected):
    cfg = t5.PRESETS[name]
    model = t5.EncoderDecoder(cfg)
    x = jnp.zeros((1, 4), jnp.int32)
    # Shapes only: nothing of the real size is allocated.
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, x))["params"]
    ours = t5.count_params(shapes)
    hf_config = transformers.T5Config(**hf.t5_config_to_hf(cfg))
    with torch.device("meta"):
        reference = transformers.T5ForConditionalGeneration(hf_config).num_parameters()
    print(f"{name}: pretrax {ours:,} params, HF {reference:,}")
    assert ours == reference == expected


def test_get_t5_config_overrides_and_errors():
    cfg = t5.get_t5_config("t5_1_1_base", dtype="bfloat16", scan_layers=True)
    assert cfg.dtype == "bfloat16" and cfg.scan_layers and cfg.d_model == 768
    with pytest.raises(ValueError, match="t5_1_1_medium"):
        t5.get_t5_config("t5_1_1_medium")
    with pytest.raises(ValueError, match="d_modle"):
        t5.get_t5_config("tiny", d_modle=4)


# ---------------------------------------------------------------------------------------------
# Masks: packing and padding.
# ---------------------------------------------------------------------------------------------
def test_packed_batch_equals_separate_examples():
    # T5.md's packed example: each segment must see exactly what it would see alone.
    model, params = _init(t5.get_t5_config("tiny"))
    packed = dict(
        encoder_input_tokens=np.array([[7, 8, 5, 1, 8, 4, 9, 3, 1, 0]]),
        encoder_segment_ids=np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0]]),
        encoder_positions=np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0]]),
        decoder_input_tokens=np.array([[0, 3, 9, 0, 4, 0, 0]]),
        decoder_segment_ids=np.array([[1, 1, 1, 2, 2, 0, 0]]),
        decoder_positions=np.array([[0, 1, 2, 0, 1, 0, 0]]),
    )
    logits = _apply(model, params, **packed)
    first = _apply(model, params, np.array([[7, 8, 5, 1]]), np.array([[0, 3, 9]]))
    second = _apply(model, params, np.array([[8, 4, 9, 3, 1]]), np.array([[0, 4]]))
    np.testing.assert_allclose(logits[0, :3], first[0], atol=1e-5)
    np.testing.assert_allclose(logits[0, 3:5], second[0], atol=1e-5)
    assert np.all(np.isfinite(logits))


def test_encoder_padding_does_not_change_logits():
    model, params = _init(t5.get_t5_config("tiny"))
    enc = _tokens(0, (1, 5))
    dec = np.concatenate([[[0]], _tokens(1, (1, 4))], axis=1)
    padded = np.concatenate([enc, np.zeros((1, 4), np.int32)], axis=1)
    np.testing.assert_allclose(
        _apply(model, params, padded, dec), _apply(model, params, enc, dec),
        atol=1e-5,
    )


def test_decoder_is_causal():
    model, params = _init(t5.get_t5_config("tiny"))
    enc, dec = _tokens(0, (2, 8)), _tokens(1, (2, 6))
    changed = dec.copy()
    changed[:, 4:] = _tokens(2, (2, 2))
    a = _apply(model, params, enc, dec)
    b = _apply(model, params, enc, changed)
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3


def test_packing_needs_both_segment_ids():
    model, params = _init(t5.get_t5_config("tiny"))
    with pytest.raises(ValueError, match="both encoder_segment_ids and decoder_segment_ids"):
        _apply(model, params, _tokens(0, (2, 8)), _tokens(1, (2, 6)),
                    encoder_segment_ids=np.ones((2, 8), np.int32))


# ---------------------------------------------------------------------------------------------
# Tied logits, dtypes, scan, remat, dropout.
# ---------------------------------------------------------------------------------------------
def test_tied_logits_are_scaled_embedding_products():
    cfg = t5.get_t5_config("tiny", tie_embeddings=True, mlp="relu")
    model, params = _init(cfg)
    assert "logits_dense" not in params
    enc, dec = _tokens(0, (2, 8)), _tokens(1, (2, 6))

    def hidden(module, e, d):
        encoded = module.encode(e)
        # Run the decoder stack up to its final norm, then apply T5.md's formula by hand.
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((6, 6), bool)), (2, 1, 6, 6))
        return module.decoder(module.token_embedder(d), mask, encoded,
                              (e > 0)[:, None, None, :])

    h = jax.jit(lambda p: model.apply({"params": p}, enc, dec, method=hidden))(params)
    embedding = params["token_embedder"]["embedding"]
    expected = np.einsum("bld,vd->blv", h * cfg.d_model**-0.5, embedding)
    np.testing.assert_allclose(_apply(model, params, enc, dec), expected, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model, params = _init(t5.get_t5_config("tiny"))
    bf16 = t5.EncoderDecoder(t5.get_t5_config("tiny", dtype="bfloat16"))
    x = jnp.ones((1, 2), jnp.int32)
    bf16_params = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), x, x))["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(bf16_params))
    enc, dec = _tokens(0, (2, 8)), _tokens(1, (2, 6))
    ref = _apply(model, params, enc, dec)
    out = _apply(bf16, params, enc, dec)
    assert out.dtype == jnp.float32
    # bfloat16 has ~3 significant digits; the result must still track the float32 model.
    err = np.abs(out - ref)
    assert err.mean() < 0.02 * np.abs(ref).mean() and err.max() < 0.1 * np.abs(ref).max()
    assert err.max() > 1e-4  # it really computed in bfloat16


@pytest.mark.parametrize("tie", [False, True])
def test_scan_equals_loop(tie):
    cfg = t5.get_t5_config("tiny", num_layers=3, num_decoder_layers=2, tie_embeddings=tie)
    model, params = _init(cfg)
    scanned = t5.EncoderDecoder(dataclasses.replace(cfg, scan_layers=True))
    _, scan_params = _init(scanned.config)
    mapped = _to_scan(params)
    assert jax.tree_util.tree_structure(mapped) == jax.tree_util.tree_structure(scan_params)
    assert jax.tree_util.tree_map(jnp.shape, mapped) == jax.tree_util.tree_map(
        jnp.shape, scan_params)
    enc, dec = _tokens(0, (2, 8)), _tokens(1, (2, 6))
    np.testing.assert_allclose(
        _apply(scanned, mapped, enc, dec), _apply(model, params, enc, dec),
        atol=1e-5,
    )


@pytest.mark.parametrize("scan", [False, True])
def test_remat_changes_nothing(scan):
    cfg = t5.get_t5_config("tiny", scan_layers=scan)
    model, params = _init(cfg)
    remat = t5.EncoderDecoder(dataclasses.replace(cfg, remat_policy="full"))
    enc, dec = _tokens(0, (2, 8)), _tokens(1, (2, 6))

    def loss(p, m):
        return jnp.sum(jax.nn.log_softmax(m.apply({"params": p}, enc, dec))[..., 3])

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ref, g_ref = value_and_grad(params, model)
    value, g_remat = value_and_grad(params, remat)
    np.testing.assert_allclose(value, ref, rtol=1e-6)
    # Remat recomputes the forward inside the backward pass, which XLA may fuse differently:
    # float32 noise (seen up to 1.8e-5), nothing more.
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5),
                           g_remat, g_ref)


def test_trainer_batch_dict_with_dropout():
    model, params = _init(t5.get_t5_config("tiny", dropout_rate=0.5))
    batch = dict(
        encoder_input_tokens=np.array([[7, 8, 5, 1, 8, 4, 9, 3, 1, 0]] * 2),
        encoder_segment_ids=np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0]] * 2),
        encoder_positions=np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0]] * 2),
        decoder_input_tokens=np.array([[0, 3, 9, 0, 4, 0, 0]] * 2),
        decoder_target_tokens=np.array([[3, 9, 1, 4, 1, 0, 0]] * 2),
        decoder_segment_ids=np.array([[1, 1, 1, 2, 2, 0, 0]] * 2),
        decoder_positions=np.array([[0, 1, 2, 0, 1, 0, 0]] * 2),
    )
    inputs = {k: batch[k] for k in SEQIO_NAMES}

    def run(key):
        return _apply(model, params, **inputs, deterministic=False,
                           rngs={"dropout": key})

    a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
    assert a.shape == (2, 7, 512) and a.dtype == jnp.float32
    assert np.abs(a - b).max() > 1e-3  # dropout is active and keyed
    np.testing.assert_array_equal(a, run(jax.random.PRNGKey(1)))
    det = _apply(model, params, **inputs)
    np.testing.assert_array_equal(det, _apply(model, params, **inputs))
    assert np.abs(det - a).max() > 1e-3


def test_t5x_initialisers():
    d, heads, kv, ff = 128, 4, 32, 256
    cfg = t5.get_t5_config("tiny", d_model=d, num_heads=heads, head_dim=kv, d_ff=ff)
    model = t5.EncoderDecoder(cfg)
    x = jnp.ones((1, 2), jnp.int32)
    params = jax.jit(lambda k: nn.meta.unbox(model.init(k, x, x))["params"])(
        jax.random.PRNGKey(0))
    layer = params["encoder"]["layers_0"]
    checks = [
        (params["token_embedder"]["embedding"], 1.0),  # normal(1.0)
        (layer["attention"]["query"]["kernel"], (d * kv) ** -0.5),  # fan-in / sqrt(d_kv)
        (layer["attention"]["key"]["kernel"], d**-0.5),
        (layer["attention"]["out"]["kernel"], (heads * kv) ** -0.5),
        (layer["mlp"]["wi_0"]["kernel"], d**-0.5),  # truncated normal, unit variance
        (layer["mlp"]["wo"]["kernel"], ff**-0.5),
        (params["logits_dense"]["kernel"], d**-0.5),
        # fan-avg uniform over [buckets, heads]: variance 2 / (32 + heads).
        (params["encoder"]["relpos_bias"]["rel_embedding"], (2 / (32 + heads)) ** 0.5),
    ]
    for value, std in checks:
        assert abs(float(np.std(value)) / std - 1) < 0.1, (value.shape, np.std(value), std)
    np.testing.assert_array_equal(layer["attention_norm"]["scale"], np.ones(d))
    # Truncated at 2 standard deviations (Flax's truncated_normal); a plain normal is not.
    assert np.abs(layer["mlp"]["wo"]["kernel"]).max() < 2.01 * ff**-0.5 / 0.8796
