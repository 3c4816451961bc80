"""Parity with Hugging Face transformers' PyTorch T5ForConditionalGeneration (float32, <5).

transformers 5.x forces tied T5 embeddings, so untied v1.1 parity needs transformers<5 (pinned
in the test extra). Every weight is randomised (norm scales and relative biases included) so a
mis-mapped tensor cannot hide behind an init value.
"""

import functools
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from modeling import hf, hf_io, t5

TOL = 1e-4
BASE = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
            num_heads=4, dropout_rate=0.0)
CASES = {
    "v1_0_tied_relu": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1_1_untied_gated_gelu": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "unequal_depths": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                           num_layers=3, num_decoder_layers=1),
    "gelu_non_gated": dict(feed_forward_proj="gelu", tie_word_embeddings=True),
    "d_kv_not_d_model_over_heads": dict(feed_forward_proj="relu", tie_word_embeddings=True,
                                        d_kv=12, num_heads=3),
}


def _hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = transformers.T5Config(**{**BASE, **overrides})
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name or name == "shared.weight":
                p.normal_(0.0, 1.0)
            else:  # Linear [out, in]: fan-in scaled, so float32 stays well conditioned
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model


def _inputs(batch=2, enc_len=12, dec_len=9, vocab=128, pad_from=None, seed=0):
    rng = np.random.RandomState(seed)
    enc = rng.randint(2, vocab, (batch, enc_len)).astype(np.int64)
    if pad_from is not None:
        enc[1, pad_from:] = 0
    dec = rng.randint(2, vocab, (batch, dec_len)).astype(np.int64)
    dec[:, 0] = 0
    return enc, dec


def _hf_logits(model, enc, dec):
    with torch.no_grad():
        return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                     decoder_input_ids=torch.tensor(dec)).logits.numpy()


@functools.partial(jax.jit, static_argnums=0)
def _our_logits(model, params, enc, dec):
    return model.apply({"params": params}, encoder_input_tokens=enc, decoder_input_tokens=dec)


def _max_err(model, params, hf_model, enc, dec):
    ours = np.asarray(_our_logits(model, params, enc.astype(np.int32), dec.astype(np.int32)))
    ref = _hf_logits(hf_model, enc, dec)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    return float(np.abs(ours - ref).max())


# ---------------------------------------------------------------------------------------------
# from_hf parity.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_from_hf_logits_match(case, tmp_path):
    hf_model = _hf_model(**CASES[case])
    hf_model.save_pretrained(tmp_path)
    model, params = hf.from_hf(str(tmp_path))
    assert model.config.tie_embeddings == CASES[case]["tie_word_embeddings"]
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
    err = _max_err(model, params, hf_model, *_inputs(pad_from=7))  # a padded batch
    print(f"{case}: max abs logits error {err:.2e}")
    assert err <= TOL


def test_long_sequences_exercise_log_buckets(tmp_path):
    # Distances up to 299 > max_distance 128: every log-spaced bucket and the clamp are used.
    hf_model = _hf_model(**CASES["v1_1_untied_gated_gelu"], d_model=16, d_ff=24, d_kv=4)
    hf_model.save_pretrained(tmp_path)
    model, params = hf.from_hf(str(tmp_path))
    err = _max_err(model, params, hf_model, *_inputs(enc_len=300, dec_len=260, pad_from=230))
    print(f"long sequences: max abs logits error {err:.2e}")
    assert err <= TOL


def test_bin_checkpoint_and_scan_layout(tmp_path):
    hf_model = _hf_model(**CASES["v1_0_tied_relu"])
    hf_model.save_pretrained(tmp_path, safe_serialization=False)
    assert os.path.exists(tmp_path / hf_io.BIN_NAME)
    model, params = hf.from_hf(str(tmp_path))
    err = _max_err(model, params, hf_model, *_inputs(pad_from=5))
    scanned, scan_params = hf.from_hf(str(tmp_path), scan_layers=True)
    assert scan_params["encoder"]["layers"]["block"]["mlp"]["wi"]["kernel"].shape == (2, 32, 48)
    scan_err = _max_err(scanned, scan_params, hf_model, *_inputs(pad_from=5))
    print(f".bin: max abs error {err:.2e}; scan layout {scan_err:.2e}")
    assert err <= TOL and scan_err <= TOL


# ---------------------------------------------------------------------------------------------
# Greedy decoding vs HF generate.
# ---------------------------------------------------------------------------------------------
def test_greedy_decoding_matches_hf_generate(tmp_path):
    from modeling import decoding

    hf_model = _hf_model(seed=1, **CASES["v1_1_untied_gated_gelu"])
    hf_model.save_pretrained(tmp_path)
    model, params = hf.from_hf(str(tmp_path))
    enc, _ = _inputs(batch=3, pad_from=6)
    steps = 24
    greedy = jax.jit(functools.partial(decoding.greedy_decode, model,
                                       max_decode_length=steps), static_argnames="eos_id")

    def hf_generate(eos_id):
        with torch.no_grad():
            out = hf_model.generate(
                input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                max_new_tokens=steps, num_beams=1, do_sample=False, eos_token_id=eos_id,
                pad_token_id=0, decoder_start_token_id=0,
            ).numpy()
        # Drop the start token; right-pad to `steps` (generate stops once all rows ended).
        return np.pad(out[:, 1:], ((0, 0), (0, steps + 1 - out.shape[1])))

    # EOS set to an id no row emits: all 24 steps are compared token by token.
    ref = hf_generate(eos_id=127)
    assert ref.shape == (3, steps) and not np.any(ref == 127)
    ours, _ = greedy(params, enc.astype(np.int32), eos_id=127)
    np.testing.assert_array_equal(ours, ref)
    # EOS = the token row 0 emits at step 5: row 0 stops there (then PAD), other rows go on.
    eos = int(ref[0, 5])
    ref_eos = hf_generate(eos_id=eos)
    ours_eos, _ = greedy(params, enc.astype(np.int32), eos_id=eos)
    np.testing.assert_array_equal(ours_eos, ref_eos)
    assert np.all(ref_eos[0, 6:] == 0)


# ---------------------------------------------------------------------------------------------
# to_hf round trip.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["v1_0_tied_relu", "unequal_depths"])
def test_to_hf_loads_in_transformers_with_identical_logits(case, tmp_path):
    hf_model = _hf_model(seed=2, **CASES[case])
    hf_model.save_pretrained(tmp_path / "src")
    model, params = hf.from_hf(str(tmp_path / "src"))
    hf.to_hf(model, params, str(tmp_path / "out"))
    with open(tmp_path / "out" / "config.json") as f:
        written = json.load(f)
    expected = {**BASE, **CASES[case]}
    for key in ("d_kv", "num_layers", "num_decoder_layers", "feed_forward_proj",
                "tie_word_embeddings", "num_heads", "d_ff"):
        assert written[key] == expected[key], key
    assert written["relative_attention_max_distance"] == 128
    reloaded, info = transformers.T5ForConditionalGeneration.from_pretrained(
        tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    reloaded.eval()
    enc, dec = _inputs(pad_from=8, seed=3)
    ours = np.asarray(_our_logits(model, params, enc.astype(np.int32), dec.astype(np.int32)))
    err = float(np.abs(_hf_logits(reloaded, enc, dec) - ours).max())
    print(f"to_hf {case}: max abs logits error {err:.2e}")
    assert err <= TOL
    # The export is the same weights: identical to the original HF model's outputs.
    np.testing.assert_array_equal(_hf_logits(reloaded, enc, dec), _hf_logits(hf_model, enc, dec))


def test_to_hf_from_scan_layout_and_fresh_init(tmp_path):
    cfg = t5.get_t5_config("tiny", scan_layers=True)
    model = t5.EncoderDecoder(cfg)
    x = np.ones((1, 3), np.int32)
    params = jax.jit(lambda k: model.init(k, x, x)["params"])(jax.random.PRNGKey(0))
    hf.to_hf(model, params, str(tmp_path))
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    enc, dec = _inputs(vocab=512, pad_from=9, seed=4)
    from flax import linen as nn

    ours = np.asarray(_our_logits(model, nn.meta.unbox(params), enc.astype(np.int32),
                                  dec.astype(np.int32)))
    err = float(np.abs(_hf_logits(reloaded, enc, dec) - ours).max())
    print(f"to_hf scan layout: max abs logits error {err:.2e}")
    assert err <= TOL


# ---------------------------------------------------------------------------------------------
# Bad directories.
# ---------------------------------------------------------------------------------------------
def _edit_checkpoint(src, dst, edit_tensors=None, edit_config=None):
    config, reader = hf_io.read_hf_dir(str(src))
    tensors = {name: reader.take(name, reader.shape(name)) for name in reader.names()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    hf_io.write_hf_dir(str(dst), config, tensors)
    return str(dst)


def test_bad_directories_raise_naming_the_problem(tmp_path):
    _hf_model(**CASES["v1_1_untied_gated_gelu"]).save_pretrained(tmp_path / "good")
    good = tmp_path / "good"
    name = "decoder.block.1.layer.2.DenseReluDense.wi_1.weight"

    missing = _edit_checkpoint(good, tmp_path / "missing", lambda t: t.pop(name))
    with pytest.raises(hf_io.HFConversionError, match=f"missing tensor '{name}'.*\\(48, 32\\)"):
        hf.from_hf(missing)

    def reshape(t):
        t[name] = t[name][:40]

    wrong = _edit_checkpoint(good, tmp_path / "shape", reshape)
    with pytest.raises(hf_io.HFConversionError,
                       match=f"'{name}' has shape \\(40, 32\\), expected \\(48, 32\\)"):
        hf.from_hf(wrong)

    def extra(t):
        t["encoder.block.5.layer.0.SelfAttention.q.weight"] = np.zeros((32, 32), np.float32)

    leftover = _edit_checkpoint(good, tmp_path / "extra", extra)
    with pytest.raises(hf_io.HFConversionError, match="encoder.block.5.layer.0.SelfAttention"):
        hf.from_hf(leftover)

    def bert(c):
        c["architectures"], c["model_type"] = ["BertForMaskedLM"], "bert"

    unknown = _edit_checkpoint(good, tmp_path / "bert", edit_config=bert)
    with pytest.raises(hf_io.HFConversionError, match="BertForMaskedLM"):
        hf.from_hf(unknown)

    def gated_silu(c):
        c["feed_forward_proj"] = "gated-silu"

    act = _edit_checkpoint(good, tmp_path / "silu", edit_config=gated_silu)
    with pytest.raises(hf_io.HFConversionError, match="gated-silu"):
        hf.from_hf(act)

    os.remove(tmp_path / "silu" / hf_io.SAFETENSORS_NAME)
    with pytest.raises(hf_io.HFConversionError, match="no weights file"):
        hf.from_hf(str(tmp_path / "silu"))
    with pytest.raises(hf_io.HFConversionError, match="no config.json"):
        hf.from_hf(str(tmp_path))
