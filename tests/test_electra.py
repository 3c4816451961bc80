"""ELECTRA family: presets and parameter counts, sharing modes and their gradients, the gathered
MLM head, packing, classification, scan/remat/bfloat16 and logical axes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn
from flax import traverse_util

from modeling import axes, electra

KEY = jax.random.PRNGKey(0)
TOKENS = jnp.array([[5, 9, 17, 33, 2, 11, 40, 7, 0, 0, 0, 0],
                    [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
POSITIONS = jnp.array([[1, 3, 6], [0, 7, 11]])


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _ours(module, *args) -> int:
    shapes = jax.eval_shape(lambda: module.init(KEY, *args))
    return _count(nn.meta.unbox(shapes["params"]))


def _hf_config(cfg) -> transformers.ElectraConfig:
    return transformers.ElectraConfig(
        vocab_size=cfg.vocab_size, embedding_size=electra.embedding_width(cfg),
        hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_positions, type_vocab_size=cfg.type_vocab_size)


def _hf_count(cls, cfg) -> int:
    with torch.device("meta"):  # shapes only, no memory
        model = cls(_hf_config(cfg))
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


# Discriminator totals by hand: embeddings V*E + 512*E + 2*E + 2*E (+ E*H + H projection),
# per layer 4*(H*H + H) + 2*2H + (H*4H + 4H) + (4H*H + H), head H*H + H + H + 1.
# Small: 3,972,864 + 33,024 + 12 * 789,760 + 66,049 = 13,549,057 (the paper's "14M").
@pytest.mark.parametrize("name,disc_params,gen_dims", [
    ("electra_small", 13_549_057, (64, 1, 256, 12)),
    ("electra_base", 109_483_009, (256, 4, 1024, 12)),
    ("electra_large", 335_142_913, (256, 4, 1024, 24)),
])
def test_preset_param_counts_equal_hf(name, disc_params, gen_dims):
    cfg = electra.get_electra_config(name)
    disc, gen = cfg.discriminator, cfg.generator_config()
    assert (gen.d_model, gen.num_heads, gen.d_ff, gen.num_layers) == gen_dims
    tokens = jnp.zeros((1, 8), jnp.int32)
    n_disc = _ours(electra.ElectraDiscriminator(disc), tokens)
    assert n_disc == disc_params
    assert n_disc == _hf_count(transformers.ElectraForPreTraining, disc)
    if name == "electra_large":
        return  # the generator's shapes are those of base's generator, deeper: checked there
    n_gen = _ours(electra.ElectraGenerator(gen), tokens)
    assert n_gen == _hf_count(transformers.ElectraForMaskedLM, gen)
    # Joint model = both networks minus one copy of the shared tables and embedding LayerNorm.
    e = cfg.embedding_size
    shared = (disc.vocab_size + disc.max_positions + disc.type_vocab_size + 2) * e
    assert _ours(electra.Electra(cfg), tokens, jnp.zeros((1, 2), jnp.int32)) == (
        n_disc + n_gen - shared)


def test_config_overrides_and_errors():
    pp = electra.get_electra_config("electra_small_pp")
    assert pp.generator_config() == pp.discriminator  # small++: a full-size generator
    cfg = electra.get_electra_config("electra_base", dtype="bfloat16", embedding_sharing="gdes")
    assert cfg.generator_config().dtype == "bfloat16" and cfg.embedding_sharing == "gdes"
    # round(768 / 3) = 256 with the projection 768 -> 256 of its own.
    assert cfg.generator_config().embedding_size == 768 and cfg.embedding_size == 768
    with pytest.raises(ValueError, match="unknown ELECTRA config overrides.*hiden"):
        electra.get_electra_config("tiny", hiden=3)
    with pytest.raises(ValueError, match="unknown ELECTRA preset"):
        electra.get_electra_config("electra_huge")
    with pytest.raises(ValueError, match="generator_fraction=1.0"):
        electra.get_electra_config("tiny", embedding_sharing="all")
    with pytest.raises(ValueError, match="embedding_sharing"):
        electra.get_electra_config("tiny", embedding_sharing="shared")
    assert electra.PRETRAINING_MASK_PROB["electra_large"] == 0.25
    with pytest.raises(ValueError, match="length 80 > max_positions 64"):
        m = electra.ElectraDiscriminator(electra.get_electra_config("tiny").discriminator)
        jax.eval_shape(lambda: m.init(KEY, jnp.ones((1, 80), jnp.int32)))


def _random_params(module, *args, noise=0.2, seed=1):
    """Params of ``module`` filled with numpy noise (no JAX RNG compiles): norms' scales around
    one, everything else (biases, LayerNorm biases, gdes delta) non-trivial."""
    shapes = nn.meta.unbox(jax.eval_shape(lambda: module.init(KEY, *args))["params"])
    rng = np.random.RandomState(seed)
    flat = {path: rng.normal(0.0, noise, x.shape).astype(np.float32)
            + (1.0 if path[-1] == "scale" else 0.0)
            for path, x in traverse_util.flatten_dict(shapes).items()}
    return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat))


def _init(cfg):
    model = electra.Electra(cfg)
    return model, _random_params(model, TOKENS, POSITIONS)


@pytest.mark.parametrize("sharing", ["tied", "gdes"])
def test_gathered_mlm_head_equals_full_length_head(sharing):
    cfg = electra.get_electra_config("tiny", embedding_sharing=sharing)
    model, params = _init(cfg)
    full = model.apply({"params": params}, TOKENS, None, method="generator_logits")
    gathered = model.apply({"params": params}, TOKENS, POSITIONS, method="generator_logits")
    assert full.shape == (2, 12, 512) and gathered.shape == (2, 3, 512)
    assert gathered.dtype == jnp.float32
    expected = np.take_along_axis(np.asarray(full), np.asarray(POSITIONS)[:, :, None], axis=1)
    np.testing.assert_allclose(gathered, expected, atol=1e-5, rtol=1e-5)
    # The standalone generator (the MLM baseline) gives the same numbers from the same weights.
    gen = electra.ElectraGenerator(cfg.generator_config())
    alone = gen.apply({"params": electra.generator_params(cfg, params)}, TOKENS, POSITIONS)
    np.testing.assert_allclose(alone, gathered, atol=1e-5, rtol=1e-5)


def _grad_norms(model, params, method, *args):
    def loss(p):
        return jnp.sum(jnp.sin(model.apply({"params": p}, *args, method=method)))

    grads = jax.grad(loss)(params)
    return {k: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(v)))
            for k, v in grads.items()} | {
        "word": float(jnp.sum(jnp.abs(grads["embeddings"]["word"]["embedding"]))),
        "position": float(jnp.sum(jnp.abs(grads["embeddings"]["position"]["embedding"])))}


# (mode, keys the DISCRIMINATOR loss must reach, keys it must not; same for the GENERATOR loss)
SHARING_CASES = [
    ("tied", {"word", "position", "discriminator", "discriminator_head"},
     {"generator", "generator_head"},
     {"word", "position", "generator", "generator_head"}, {"discriminator", "discriminator_head"}),
    ("untied", {"embeddings", "discriminator"}, {"generator_embeddings", "generator"},
     {"generator_embeddings", "generator", "generator_head"},
     {"embeddings", "discriminator", "discriminator_head"}),
    ("all", {"word", "discriminator", "discriminator_head"}, {"generator_head"},
     {"word", "discriminator", "generator_head"}, {"discriminator_head"}),
    ("gdes", {"discriminator_word_delta", "position", "discriminator"}, {"word", "generator"},
     {"word", "position", "generator"}, {"discriminator_word_delta", "discriminator"}),
]


@pytest.mark.parametrize("sharing,d_yes,d_no,g_yes,g_no", SHARING_CASES)
def test_sharing_modes_route_gradients(sharing, d_yes, d_no, g_yes, g_no):
    fraction = 1.0 if sharing == "all" else 0.5
    cfg = electra.get_electra_config("tiny", embedding_sharing=sharing,
                                     generator_fraction=fraction)
    model, params = _init(cfg)
    assert ("generator" in params) == (sharing != "all")
    d = _grad_norms(model, params, "discriminator_logits", TOKENS)
    g = _grad_norms(model, params, "generator_logits", TOKENS, POSITIONS)
    for name in d_yes:
        assert d[name] > 1e-3, (name, d)
    for name in d_no:
        assert d[name] == 0.0, (name, d)
    for name in g_yes:
        assert g[name] > 1e-3, (name, g)
    for name in g_no:
        assert g[name] == 0.0, (name, g)


def test_gdes_starts_as_tied_sharing():
    """With the zero-initialised delta, gdes computes exactly what tied sharing computes."""
    tied = electra.get_electra_config("tiny")
    model, params = _init(tied)
    gdes = electra.Electra(dataclasses.replace(tied, embedding_sharing="gdes"))
    # init only the delta (the other submodules are never set up by this method).
    delta = gdes.init(KEY, method=lambda m: m.discriminator_word_delta)["params"][
        "discriminator_word_delta"]
    assert delta.value.shape == (512, 16)
    assert float(jnp.max(jnp.abs(nn.meta.unbox(delta)))) == 0.0
    p_gdes = {**params, "discriminator_word_delta": nn.meta.unbox(delta)}
    for method, args in (("discriminator_logits", ()), ("generator_logits", (POSITIONS,))):
        a = model.apply({"params": params}, TOKENS, *args, method=method)
        b = gdes.apply({"params": p_gdes}, TOKENS, *args, method=method)
        np.testing.assert_array_equal(a, b)


def test_packed_segments_equal_separate_examples():
    cfg = electra.get_electra_config("tiny").discriminator
    model = electra.ElectraDiscriminator(cfg)
    a, b = [5, 9, 17, 33, 2], [8, 4, 21, 6]
    params = _random_params(model, TOKENS)
    ta, tb = [0, 0, 0, 1, 1], [0, 1, 1, 1]
    # Every call is [2, 12] (the shape of TOKENS) so no new shapes get compiled.
    packed = jnp.array([a + b + [0, 0, 0]] * 2)
    seg = jnp.array([[1] * 5 + [2] * 4 + [0] * 3] * 2)
    pos = jnp.array([list(range(5)) + list(range(4)) + [0] * 3] * 2)
    types = jnp.array([ta + tb + [0] * 3] * 2)
    out = model.apply({"params": params}, packed, types, seg, pos)
    alone = model.apply({"params": params}, jnp.array([a + [0] * 7, b + [0] * 8]),
                        jnp.array([ta + [0] * 7, tb + [0] * 8]))
    np.testing.assert_allclose(out[0, :5], alone[0, :5], atol=1e-5)
    np.testing.assert_allclose(out[0, 5:9], alone[1, :4], atol=1e-5)
    assert float(jnp.max(jnp.abs(out[0, :5] - model.apply({"params": params}, packed)[0, :5]))) \
        > 1e-3  # without segment ids the two examples do see each other


def test_classifier_is_dense_on_cls_vector():
    cfg = electra.get_electra_config("tiny").discriminator
    clf = electra.ElectraClassifier(cfg, num_classes=3, classifier_dropout=0.5)
    params = _random_params(clf, TOKENS)
    logits = clf.apply({"params": params}, TOKENS)
    disc = electra.ElectraDiscriminator(cfg)
    disc_params = {"embeddings": params["embeddings"], "network": params["network"]}
    hidden = disc.apply({"params": disc_params}, TOKENS, method="encode")
    w = params["head"]["dense"]
    expected = np.asarray(hidden)[:, 0] @ np.asarray(w["kernel"]) + np.asarray(w["bias"])
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    dropped = clf.apply({"params": params}, TOKENS, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(3)})
    assert float(jnp.max(jnp.abs(dropped - logits))) > 1e-3


def _to_scanned(params: dict) -> dict:
    """Loop layout (network/stack/layers_i) -> scan layout (network/stack/layers/block)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict) and "stack" in v:
            stack = v["stack"]
            layers = [stack[f"layers_{i}"] for i in range(len(stack))]
            block = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
            out[k] = {**v, "stack": {"layers": {"block": block}}}
        else:
            out[k] = v
    return out


def test_scan_remat_and_bfloat16():
    cfg = electra.get_electra_config("tiny", dropout_rate=0.0)
    model, params = _init(cfg)
    ref = model.apply({"params": params}, TOKENS, POSITIONS)

    def grads(m, p):
        return jax.grad(lambda p: sum(jnp.sum(jnp.tanh(o)) for o in m.apply({"params": p},
                                                                          TOKENS, POSITIONS)))(p)

    ref_grads = grads(model, params)
    for overrides in ({"scan_layers": True, "remat_policy": "dots"}, {"remat_policy": "full"}):
        m = electra.Electra(electra.get_electra_config("tiny", dropout_rate=0.0, **overrides))
        p = _to_scanned(params) if overrides.get("scan_layers") else params
        # The converted params have exactly the tree the variant's own init builds.
        init_tree = jax.tree.structure(nn.meta.unbox(
            jax.eval_shape(lambda m=m: m.init(KEY, TOKENS, POSITIONS))["params"]))
        assert jax.tree.structure(p) == init_tree
        for a, b in zip(m.apply({"params": p}, TOKENS, POSITIONS), ref, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        if not overrides.get("scan_layers"):
            continue  # gradients once, through scan + remat together (compiles are slow)
        g = grads(m, p)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(_to_scanned(ref_grads)), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    bf16 = electra.Electra(electra.get_electra_config("tiny", dtype="bfloat16"))
    for a, b in zip(bf16.apply({"params": params}, TOKENS, POSITIONS), ref, strict=True):
        assert a.dtype == jnp.float32
        assert float(jnp.max(jnp.abs(a - b))) < 0.1 * float(jnp.max(jnp.abs(b))) + 0.1


@pytest.mark.parametrize("sharing", ["tied", "untied", "gdes"])
def test_every_param_has_logical_axes(sharing):
    cfg = electra.get_electra_config("tiny", embedding_sharing=sharing, scan_layers=True)
    boxed = jax.eval_shape(lambda: electra.Electra(cfg).init(KEY, TOKENS, POSITIONS))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert len(leaves) > 20
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= set(axes.WEIGHT_AXES)
    names = {n for leaf in leaves for n in leaf.names}
    assert {axes.EMBED_PROJ, axes.ABSPOS, axes.TOKEN_TYPES, axes.CLASSES, axes.LAYERS} <= names


def test_bad_masked_positions_raise():
    model, params = _init(electra.get_electra_config("tiny"))
    with pytest.raises(ValueError, match=r"masked_positions must be \[batch=2, num_masked\]"):
        model.apply({"params": params}, TOKENS, POSITIONS[0], method="generator_logits")


def test_main_mlm_head_for_table5_ablations():
    cfg = electra.get_electra_config("tiny", main_mlm_head=True)
    model, params = _init(cfg)
    mlm, rtd = model.apply({"params": params}, TOKENS, POSITIONS, method="main_logits")
    assert mlm.shape == (2, 3, 512) and rtd.shape == (2, 12)
    np.testing.assert_allclose(rtd, model.apply({"params": params}, TOKENS,
                                                method="discriminator_logits"), atol=1e-6)
    # = an MLM encoder (generator layout) made of the discriminator network + the main head.
    mlm_model = electra.MlmEncoder(cfg.discriminator)
    mlm_params = {"embeddings": params["embeddings"], "network": params["discriminator"],
                  "head": params["main_mlm_head"]}
    np.testing.assert_allclose(mlm, mlm_model.apply({"params": mlm_params}, TOKENS, POSITIONS),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="main_mlm_head=True"):
        plain, plain_params = _init(electra.get_electra_config("tiny"))
        plain.apply({"params": plain_params}, TOKENS, POSITIONS, method="main_logits")
