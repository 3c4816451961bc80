"""The shared core: buckets, norms, masks, attention, and scan/remat equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from transformers.models.t5.modeling_t5 import T5Attention

from modeling import layers
from modeling.transformer import Stack, TransformerConfig


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (8, 20)])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    rel = np.arange(-3000, 3000)
    hf = T5Attention._relative_position_bucket(
        torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets,
        max_distance=max_distance,
    ).numpy()
    ours = np.asarray(layers.relative_position_bucket(jnp.asarray(rel), bidirectional,
                                                      num_buckets, max_distance))
    np.testing.assert_array_equal(ours, hf)


def test_relative_position_bucket_hand_values():
    # Bidirectional, 32 buckets / 128: n = query - key. Keys after the query (n < 0) are offset
    # by 16; exact buckets below 8; log-spaced up to 15; n >= 128 saturates.
    rel = jnp.array([0, -1, -7, -8, -127, -128, -1000, 1, 7, 1000])  # key - query
    got = layers.relative_position_bucket(rel, True, 32, 128)
    # n = 0,1,7 exact; n=8 -> 8 + int(log(1)/log(16)*8) = 8; n=127 -> 8+int(7.99..)=15; sat 15.
    np.testing.assert_array_equal(got, [0, 1, 7, 8, 15, 15, 15, 17, 23, 31])
    # Causal: future keys (n < 0) collapse to bucket 0.
    got = layers.relative_position_bucket(rel, False, 32, 128)
    np.testing.assert_array_equal(got, [0, 1, 7, 8, 31, 31, 31, 0, 0, 0])


def test_rms_and_layer_norm_values():
    x = jnp.array([[1.0, 2.0, 3.0, 4.0], [-2.0, 0.0, 2.0, 4.0]])
    rms = layers.RMSNorm(epsilon=1e-6)
    out = rms.apply(rms.init(jax.random.PRNGKey(0), x), x)
    expected = x / np.sqrt(np.mean(np.square(np.asarray(x)), -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, expected, rtol=1e-6)

    ln = layers.LayerNorm(epsilon=1e-12)
    out = ln.apply(ln.init(jax.random.PRNGKey(0), x), x)
    ref = torch.nn.functional.layer_norm(torch.tensor(np.asarray(x)), (4,), eps=1e-12).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_packed_masks_follow_t5_example():
    # The packed example of T5.md: two encoder segments and padding.
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0]])
    valid = seg > 0
    mask = layers.attention_mask(valid, valid, seg, seg)[0, 0]
    assert bool(mask[0, 3]) and not bool(mask[0, 4]) and bool(mask[5, 8])
    assert not mask[9].any()  # the padding query attends to nothing
    dec_seg = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
    dec_pos = jnp.array([[0, 1, 2, 0, 1, 0, 0]])
    dmask = layers.attention_mask(dec_seg > 0, dec_seg > 0, dec_seg, dec_seg, causal=True,
                                  query_positions=dec_pos, key_positions=dec_pos)[0, 0]
    expected = np.zeros((7, 7), bool)
    expected[0, 0] = expected[1, :2] = expected[2, :3] = True
    expected[3, 3] = expected[4, 3:5] = True
    np.testing.assert_array_equal(dmask, expected)


def test_attention_matches_numpy_reference():
    b, lq, lk, d, h, k = 2, 3, 5, 8, 2, 4
    xq = jax.random.normal(jax.random.PRNGKey(0), (b, lq, d))
    xkv = jax.random.normal(jax.random.PRNGKey(1), (b, lk, d))
    key_valid = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    bias = layers.mask_to_bias(layers.attention_mask(None, key_valid))
    attn = layers.Attention(num_heads=h, head_dim=k, use_bias=True, scale_queries=True,
                            bias_init=nn.initializers.normal(1.0))
    variables = attn.init(jax.random.PRNGKey(2), xq, xkv, bias)
    out = attn.apply(variables, xq, xkv, bias)

    p = jax.tree_util.tree_map(np.asarray, nn.meta.unbox(variables)["params"])
    q = np.einsum("bld,dhk->blhk", xq, p["query"]["kernel"]) + p["query"]["bias"]
    kk = np.einsum("bld,dhk->blhk", xkv, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bld,dhk->blhk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
    s = np.einsum("bqhk,blhk->bhql", q, kk) / np.sqrt(k)
    s = np.where(np.asarray(key_valid)[:, None, None, :], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhql,blhk->bqhk", w, v)
    ref = np.einsum("bqhk,hkd->bqd", o, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(out, ref, atol=1e-5)


def _stack_params_like_scan(loop_params, num_layers):
    per_layer = [loop_params[f"layers_{i}"] for i in range(num_layers)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_layer)
    rest = {k: v for k, v in loop_params.items() if not k.startswith("layers_")}
    return {**rest, "layers": {"block": stacked}}


@pytest.mark.parametrize("family", ["t5", "bert"])
def test_scan_equals_loop_and_remat_changes_nothing(family):
    common = dict(vocab_size=128, d_model=32, num_heads=4, head_dim=8, d_ff=64, num_layers=3)
    if family == "bert":
        common.update(norm="layer", norm_eps=1e-12, prenorm=False, use_bias=True,
                      position="absolute", mlp="gelu", scale_attention=True, init="bert")
    else:
        common.update(mlp="gated-gelu")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 32))
    pos = jnp.arange(8)
    mask = layers.attention_mask(None, jnp.ones((2, 8), bool), causal=True,
                                 query_positions=pos, key_positions=pos)
    loop = Stack(TransformerConfig(**common), num_layers=3, causal=True)
    params = nn.meta.unbox(loop.init(jax.random.PRNGKey(1), x, mask))["params"]
    ref = loop.apply({"params": params}, x, mask)
    ref_grad = jax.grad(lambda p: jnp.sum(loop.apply({"params": p}, x, mask) ** 2))(params)

    scanned_params = _stack_params_like_scan(params, 3)
    for scan, remat in [(True, "none"), (True, "full"), (False, "dots"), (True, "dots_no_batch")]:
        cfg = TransformerConfig(**common, scan_layers=scan, remat_policy=remat)
        stack = Stack(cfg, num_layers=3, causal=True)
        p = scanned_params if scan else params
        out = stack.apply({"params": p}, x, mask)
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=f"scan={scan} remat={remat}")
        grad = jax.grad(lambda p, stack=stack: jnp.sum(stack.apply({"params": p}, x, mask) ** 2))(p)
        if scan:
            grad = {**{k: v for k, v in grad.items() if k != "layers"},
                    **{f"layers_{i}": jax.tree_util.tree_map(lambda a, i=i: a[i],
                                                            grad["layers"]["block"])
                       for i in range(3)}}
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
                               grad, ref_grad)


def test_scanned_params_carry_the_layers_axis():
    cfg = TransformerConfig(vocab_size=128, d_model=32, num_heads=4, head_dim=8, d_ff=64,
                            num_layers=2, scan_layers=True)
    x = jnp.zeros((1, 4, 32))
    boxed = jax.eval_shape(lambda: Stack(cfg, num_layers=2).init(jax.random.PRNGKey(0), x, None))
    kernel = boxed["params"]["layers"]["block"]["attention"]["query"]["kernel"]
    assert kernel.names == ("layers", "embed", "heads", "kv")
    assert kernel.value.shape == (2, 32, 4, 8)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="norm"):
        TransformerConfig(norm="batch")
    with pytest.raises(ValueError, match="remat_policy"):
        TransformerConfig(remat_policy="sometimes")


def test_dropout_keeps_the_quantised_rate_unbiased_and_sharding_invariant():
    # Two 16-bit draws per random word: P(keep) = round(0.9 * 2^16) / 2^16; kept units are
    # scaled by its inverse, so the mean is preserved.
    x = jnp.ones((64, 4, 128, 128))
    drop = layers.Dropout(0.1)
    y = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    keep = layers.keep_threshold(0.1) / 65536
    assert abs(keep - 0.9) < 1e-5
    kept = np.asarray(y != 0)
    assert abs(kept.mean() - keep) < 3 * np.sqrt(keep * (1 - keep) / kept.size)
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / keep, rtol=1e-6)
    np.testing.assert_allclose(float(jnp.mean(y)), 1.0, atol=2e-3)
    # Odd last axes and broadcast dims: one decision per (row, column) shared across axis 1.
    z = layers.Dropout(0.5, broadcast_dims=(1,)).apply(
        {}, jnp.ones((3, 5, 7)), deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert z.shape == (3, 5, 7) and np.all(np.asarray(z != 0) == np.asarray(z[:, :1] != 0))
    assert np.array_equal(np.asarray(drop.apply({}, x, deterministic=True)), np.asarray(x))
    # The same mask whether the activations are sharded over 8 devices or not.
    jax.config.update("jax_threefry_partitionable", True)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(8), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    fn = jax.jit(lambda key: layers.dropout_mask(key, 0.1, (64, 256)), out_shardings=sharding)
    np.testing.assert_array_equal(np.asarray(fn(jax.random.key(3))),
                                  np.asarray(jax.jit(lambda key: layers.dropout_mask(
                                      key, 0.1, (64, 256)))(jax.random.key(3))))


def test_softmax_gradient_matches_the_quotient_rule():
    """``layers.softmax``'s closed-form backward against autodiff of jax.nn.softmax, including
    rows that the attention mask covers entirely (all logits at MASK_VALUE)."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 5, 7)).astype(np.float32) * 4
    logits[0, 1, 2, :] = layers.MASK_VALUE  # a fully masked query row
    logits[1, 0, :, 3:] += layers.MASK_VALUE  # masked keys
    cotangent = rng.standard_normal(logits.shape).astype(np.float32)

    def loss(fn):
        return lambda x: jnp.sum(fn(x) * cotangent)

    ours = jax.grad(loss(layers.softmax))(jnp.asarray(logits))
    reference = jax.grad(loss(lambda x: jax.nn.softmax(x, axis=-1)))(jnp.asarray(logits))
    np.testing.assert_array_equal(layers.softmax(logits), jax.nn.softmax(logits, axis=-1))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    # Each row's gradient sums to zero (the softmax is shift-invariant).
    np.testing.assert_allclose(np.sum(np.asarray(ours), -1), 0.0, atol=1e-5)
