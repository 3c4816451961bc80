"""ELECTRA <-> Hugging Face: float32 parity with transformers' PyTorch models (random weights,
padded batches, token types, with and without embeddings_project), export -> HF load, joining a
discriminator and a generator, and bad checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from modeling import electra, hf, hf_electra, hf_io
from modeling.hf_io import HFConversionError

VOCAB, TYPES, LENGTH = 128, 3, 16
RNG = np.random.RandomState(0)
TOKENS = RNG.randint(1, VOCAB, (3, LENGTH))
TOKENS[1, 11:] = 0  # padded rows: HF gets attention_mask = tokens != 0
TOKENS[2, 4:] = 0
TOKEN_TYPES = RNG.randint(0, TYPES, (3, LENGTH))
POSITIONS = np.array([[0, 5, 15], [1, 10, 12], [3, 2, 7]])  # incl. padding positions
TOL = 1e-4


def _hf_config(embedding_size=16, hidden=32, heads=2, ffn=64):
    return transformers.ElectraConfig(
        vocab_size=VOCAB, embedding_size=embedding_size, hidden_size=hidden,
        num_hidden_layers=2, num_attention_heads=heads, intermediate_size=ffn,
        max_position_embeddings=32, type_vocab_size=TYPES)


def _randomized(cls, config, seed):
    """An HF model with EVERY parameter random (LayerNorm weights and biases included)."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def _hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(TOKENS),
                     attention_mask=torch.tensor(TOKENS != 0).long(),
                     token_type_ids=torch.tensor(TOKEN_TYPES)).logits.numpy()


def _max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("embedding_size", [16, 32])  # 16: embeddings_project 16 -> 32
@pytest.mark.parametrize("cls", [transformers.ElectraForPreTraining,
                                 transformers.ElectraForMaskedLM])
def test_from_hf_parity(tmp_path, cls, embedding_size):
    ref_model = _randomized(cls, _hf_config(embedding_size), seed=embedding_size)
    ref_model.save_pretrained(tmp_path)
    ref = _hf_logits(ref_model)
    model, params = hf.from_hf(str(tmp_path))
    ours = model.apply({"params": params}, jnp.asarray(TOKENS),
                       encoder_token_type_ids=jnp.asarray(TOKEN_TYPES))
    assert ours.dtype == jnp.float32
    diff = _max_diff(ours, ref)
    print(f"{cls.__name__} embedding_size={embedding_size}: max abs diff {diff:.2e} "
          f"(logit scale {np.abs(ref).max():.2f})")
    assert diff < TOL
    assert ("embeddings_project" in params["network"]) == (embedding_size != 32)
    if cls is transformers.ElectraForMaskedLM:
        assert isinstance(model, electra.ElectraGenerator) and ours.shape == (3, LENGTH, VOCAB)
        gathered = model.apply({"params": params}, jnp.asarray(TOKENS), jnp.asarray(POSITIONS),
                               encoder_token_type_ids=jnp.asarray(TOKEN_TYPES))
        expected = np.take_along_axis(ref, POSITIONS[:, :, None], axis=1)
        assert _max_diff(gathered, expected) < TOL
    else:
        assert isinstance(model, electra.ElectraDiscriminator) and ours.shape == (3, LENGTH)


def test_from_hf_scan_layers_override(tmp_path):
    ref_model = _randomized(transformers.ElectraForPreTraining, _hf_config(), seed=3)
    ref_model.save_pretrained(tmp_path)
    config, reader = hf_io.read_hf_dir(str(tmp_path))
    model, params = hf_electra.electra_from_hf(str(tmp_path), config, reader, scan_layers=True)
    assert params["network"]["stack"]["layers"]["block"]["mlp"]["wi"]["kernel"].shape == (
        2, 32, 64)
    ours = model.apply({"params": params}, jnp.asarray(TOKENS),
                       encoder_token_type_ids=jnp.asarray(TOKEN_TYPES))
    assert _max_diff(ours, _hf_logits(ref_model)) < TOL


def _noisy(tree, seed):
    rng = np.random.RandomState(seed)
    return {k: _noisy(v, seed + i + 1) if isinstance(v, dict)
            else jnp.asarray(rng.normal(0, 0.3, v.shape).astype(np.float32) + (k == "scale"))
            for i, (k, v) in enumerate(sorted(tree.items()))}


@pytest.mark.parametrize("sharing", ["tied", "untied", "all", "gdes"])
def test_electra_export_loads_in_hf_with_identical_logits(tmp_path, sharing):
    cfg = electra.get_electra_config(
        "tiny", vocab_size=VOCAB, type_vocab_size=TYPES, max_positions=32,
        embedding_sharing=sharing, generator_fraction=1.0 if sharing == "all" else 0.5,
        scan_layers=sharing == "untied")  # one export from the scan layout
    model = electra.Electra(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(TOKENS),
                                               jnp.asarray(POSITIONS)))
    params = _noisy(nn.meta.unbox(shapes["params"]), seed=7)  # gdes delta non-zero too
    hf.to_hf(model, params, str(tmp_path))
    kw = dict(encoder_token_type_ids=jnp.asarray(TOKEN_TYPES))
    disc_ours = model.apply({"params": params}, jnp.asarray(TOKENS), method="discriminator_logits",
                            **kw)
    gen_ours = model.apply({"params": params}, jnp.asarray(TOKENS), None,
                           method="generator_logits", **kw)
    disc_hf = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "discriminator")
    gen_hf = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator")
    d_diff = _max_diff(disc_ours, _hf_logits(disc_hf.eval()))
    g_diff = _max_diff(gen_ours, _hf_logits(gen_hf.eval()))
    print(f"export {sharing}: discriminator {d_diff:.2e}, generator {g_diff:.2e}")
    assert d_diff < TOL and g_diff < TOL
    # Each directory carries its own full copy of the embeddings, and re-imports exactly.
    gen_dir = str(tmp_path / "generator")
    _, back_params = hf_electra.electra_from_hf(gen_dir, *hf_io.read_hf_dir(gen_dir),
                                                scan_layers=cfg.discriminator.scan_layers)
    want = electra.generator_params(cfg, params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(want):
        got = back_params
        for k in path:
            got = got[k.key]
        np.testing.assert_array_equal(got, leaf, err_msg=str(path))


def _pair(tmp_path, same_embeddings=True):
    """An HF discriminator (hidden 32 = embedding 32) and generator (hidden 16, projected)."""
    disc = _randomized(transformers.ElectraForPreTraining, _hf_config(32), seed=11)
    gen = _randomized(transformers.ElectraForMaskedLM, _hf_config(32, 16, 1, 64), seed=12)
    if same_embeddings:
        gen.electra.embeddings.load_state_dict(disc.electra.embeddings.state_dict())
    disc.save_pretrained(tmp_path / "d")
    gen.save_pretrained(tmp_path / "g")
    return disc, gen, str(tmp_path / "d"), str(tmp_path / "g")


def test_electra_join_matches_both_hf_models(tmp_path):
    disc, gen, d_dir, g_dir = _pair(tmp_path)
    model, params = hf_electra.electra_join(d_dir, g_dir)
    assert isinstance(model, electra.Electra)
    assert "embeddings_project" in params["generator"]
    assert "embeddings_project" not in params["discriminator"]
    tokens, kw = jnp.asarray(TOKENS), dict(encoder_token_type_ids=jnp.asarray(TOKEN_TYPES))
    d = model.apply({"params": params}, tokens, method="discriminator_logits", **kw)
    g = model.apply({"params": params}, tokens, None, method="generator_logits", **kw)
    g_at = model.apply({"params": params}, tokens, jnp.asarray(POSITIONS),
                       method="generator_logits", **kw)
    ref_g = _hf_logits(gen)
    print(f"join: discriminator {_max_diff(d, _hf_logits(disc)):.2e}, generator "
          f"{_max_diff(g, ref_g):.2e}")
    assert _max_diff(d, _hf_logits(disc)) < TOL and _max_diff(g, ref_g) < TOL
    assert _max_diff(g_at, np.take_along_axis(ref_g, POSITIONS[:, :, None], axis=1)) < TOL


def test_electra_join_disagreeing_embeddings(tmp_path):
    disc, gen, d_dir, g_dir = _pair(tmp_path, same_embeddings=False)
    with pytest.raises(HFConversionError, match="shared embeddings disagree.*word/embedding"):
        hf_electra.electra_join(d_dir, g_dir)
    with pytest.warns(UserWarning, match="keeping the generator's"):
        model, params = hf_electra.electra_join(d_dir, g_dir, winner="generator")
    g = model.apply({"params": params}, jnp.asarray(TOKENS), None, method="generator_logits",
                    encoder_token_type_ids=jnp.asarray(TOKEN_TYPES))
    assert _max_diff(g, _hf_logits(gen)) < TOL


def _rewrite(src: str, dst: str, edit_tensors=None, edit_config=None) -> str:
    config, reader = hf_io.read_hf_dir(src)
    tensors = {n: reader.take(n, reader.shape(n)) for n in reader.names()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    hf_io.write_hf_dir(dst, config, tensors)
    return dst


def test_bad_checkpoints_name_the_problem(tmp_path):
    src = str(tmp_path / "src")
    _randomized(transformers.ElectraForMaskedLM, _hf_config(), seed=5).save_pretrained(src)
    name = "electra.encoder.layer.1.intermediate.dense.weight"

    def wrong_shape(t):
        t[name] = np.zeros((65, 32), np.float32)

    bad = _rewrite(src, str(tmp_path / "a"), wrong_shape)
    with pytest.raises(HFConversionError, match=rf"{name}.*\(65, 32\), expected \(64, 32\)"):
        hf.from_hf(bad)
    bad = _rewrite(src, str(tmp_path / "b"), lambda t: t.pop("generator_lm_head.bias"))
    with pytest.raises(HFConversionError, match=r"missing tensor 'generator_lm_head.bias'.*128"):
        hf.from_hf(bad)
    bad = _rewrite(src, str(tmp_path / "c"),
                   lambda t: t.update({"cls.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(HFConversionError, match="not mapped.*cls.extra.weight"):
        hf.from_hf(bad)

    def untied(t):
        t["generator_lm_head.weight"] = np.ones((VOCAB, 16), np.float32)

    bad = _rewrite(src, str(tmp_path / "d"), untied)
    with pytest.raises(HFConversionError, match="generator_lm_head.weight.*differs"):
        hf.from_hf(bad)
    bad = _rewrite(src, str(tmp_path / "e"), edit_config=lambda c: c.update(
        architectures=["ElectraForTokenClassification"]))
    with pytest.raises(HFConversionError, match="unsupported ELECTRA architecture.*TokenClass"):
        hf.from_hf(bad)
    bad = _rewrite(src, str(tmp_path / "f"), edit_config=lambda c: c.update(hidden_act="relu"))
    with pytest.raises(HFConversionError, match="hidden_act 'relu' unsupported"):
        hf.from_hf(bad)
    # A checkpoint without "architectures" is recognised by its head's tensors.
    plain = _rewrite(src, str(tmp_path / "g"), edit_config=lambda c: c.pop("architectures"))
    with open(os.path.join(plain, "config.json")) as f:
        assert "architectures" not in json.load(f)
    assert isinstance(hf.from_hf(plain)[0], electra.ElectraGenerator)
    with pytest.raises(HFConversionError, match="expected ElectraForPreTraining"):
        hf_electra.electra_join(src, src)
