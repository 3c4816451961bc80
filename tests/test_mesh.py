"""launch/mesh.py: mesh sizes, rule presets, params born sharded, start-up validation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from launch import mesh as mesh_lib
from modeling import axes

VOCAB, EMBED, MLP, HEADS, KV, LAYERS = 128, 32, 64, 4, 8, 2


def _init(init, names):
    return nn.with_logical_partitioning(init, names)


def _ramp(scale):
    """Deterministic, distinct values: XLA:CPU compiles this in milliseconds, threefry in
    seconds, and only the shardings matter here."""
    def init(key, shape, dtype=jnp.float32):
        del key
        # [prod(shape)] -> shape
        return (scale * jnp.sin(jnp.arange(np.prod(shape), dtype=dtype))).reshape(shape)
    return init


class ScannedMlp(nn.Module):
    """One residual MLP layer, stacked with nn.scan so its kernels gain a leading LAYERS axis."""

    @nn.compact
    def __call__(self, x, _):
        h = nn.Dense(MLP, use_bias=False, name="wi",
                     kernel_init=_init(_ramp(0.1), (axes.EMBED, axes.MLP)))(x)
        h = nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        y = nn.Dense(EMBED, use_bias=False, name="wo",
                     kernel_init=_init(_ramp(0.1), (axes.MLP, axes.EMBED)))(h)
        return x + y, None


class Tiny(nn.Module):
    """Embed -> q projection -> scanned MLPs -> norm -> tied logits: every preset case."""

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(VOCAB, EMBED, name="embedding",
                         embedding_init=_init(_ramp(1.0), (axes.VOCAB,
                                                                            axes.EMBED)))
        # [batch, length] -> [batch, length, embed]
        x = embed(tokens)
        x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        # [batch, length, embed] -> [batch, length, heads, kv]
        # A plain self.param: nn.DenseGeneral inits a flat kernel and unboxes it, which applies
        # the 3-D logical constraint to a 2-D value once a mesh is set.
        kernel = self.param("query_kernel", _init(_ramp(0.1),
                                                  (axes.EMBED, axes.HEADS, axes.KV)),
                            (EMBED, HEADS, KV))
        q = jnp.einsum("ble,ehk->blhk", x, kernel)
        q = nn.with_logical_constraint(q, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS,
                                           axes.ACT_KV))
        x = x + q.reshape(x.shape)
        stack = nn.scan(ScannedMlp, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=LAYERS, metadata_params={nn.PARTITION_NAME: axes.LAYERS})
        x, _ = stack(name="layers")(x, None)
        x = nn.LayerNorm(name="norm", scale_init=_init(nn.initializers.ones, (axes.EMBED,)),
                         bias_init=_init(nn.initializers.zeros, (axes.EMBED,)))(x)
        # [batch, length, embed] -> [batch, length, vocab]
        logits = embed.attend(x)
        return nn.with_logical_constraint(logits, (axes.ACT_BATCH, axes.ACT_LENGTH,
                                                   axes.ACT_VOCAB))


TOKENS = jnp.arange(8 * 16, dtype=jnp.int32).reshape(8, 16) % VOCAB


def _init_fn():
    return Tiny().init(jax.random.key(0), TOKENS)


@functools.cache
def _reference():
    """Unsharded variables and logits on one device, without any mesh or rules."""
    variables = nn.meta.unbox(jax.jit(_init_fn)())
    return variables, jax.jit(Tiny().apply)(variables, TOKENS)


# Hand-written expectations: path -> mesh PartitionSpec per preset.
EXPECTED = {
    "dp": {
        ("embedding", "embedding"): P(),
        ("query_kernel",): P(),
        ("layers", "wi", "kernel"): P(),
        ("layers", "wo", "kernel"): P(),
        ("norm", "scale"): P(),
    },
    "fsdp": {
        ("embedding", "embedding"): P(None, "fsdp"),
        ("query_kernel",): P("fsdp", None, None),
        ("layers", "wi", "kernel"): P(None, "fsdp", None),
        ("layers", "wo", "kernel"): P(None, None, "fsdp"),
        ("norm", "scale"): P("fsdp"),
    },
    "fsdp_tp": {
        ("embedding", "embedding"): P("model", "fsdp"),
        ("query_kernel",): P("fsdp", "model", None),
        ("layers", "wi", "kernel"): P(None, "fsdp", "model"),
        ("layers", "wo", "kernel"): P(None, "model", "fsdp"),
        ("norm", "scale"): P("fsdp"),
    },
}
LOGITS_SPEC = {"dp": P(("data", "fsdp")), "fsdp": P(("data", "fsdp")),
               "fsdp_tp": P(("data", "fsdp"), None, "model")}
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_every_preset_covers_every_axis_name_with_real_mesh_axes():
    for name, rules in mesh_lib.RULES.items():
        covered = {logical for logical, _ in rules}
        assert set(axes.ALL_AXES) <= covered, (name, set(axes.ALL_AXES) - covered)
        for _, entry in rules:
            assert set(mesh_lib._mesh_axes_of(entry)) <= set(axes.MESH_AXES), (name, entry)
    # The batch rule is the one every loader depends on.
    for rules in mesh_lib.RULES.values():
        assert nn.logical_to_mesh_axes((axes.ACT_BATCH,), list(rules)) == P(("data", "fsdp"))


def test_make_mesh_fills_the_free_axis():
    assert dict(mesh_lib.make_mesh().shape) == {"data": 1, "fsdp": 8, "model": 1}
    assert dict(mesh_lib.make_mesh(data=2, fsdp=-1, model=2).shape) == {
        "data": 2, "fsdp": 2, "model": 2}
    assert dict(mesh_lib.make_mesh(data=-1, fsdp=1, model=4).shape) == {
        "data": 2, "fsdp": 1, "model": 4}
    mesh = mesh_lib.make_mesh(2, 4, 1)
    assert mesh.axis_names == axes.MESH_AXES
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_make_mesh_errors_name_sizes_and_device_count():
    with pytest.raises(ValueError, match=r"'data': 3.*do not divide the device count 8"):
        mesh_lib.make_mesh(data=3)
    with pytest.raises(ValueError, match="at most one may be -1"):
        mesh_lib.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="model=0"):
        mesh_lib.make_mesh(model=0)


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_params_born_sharded_and_forward_matches_unsharded(shape, preset):
    mesh = mesh_lib.make_mesh(*shape)
    rules = mesh_lib.RULES[preset]
    mesh_lib.validate(mesh, rules, abstract_params=jax.eval_shape(_init_fn),
                      global_batch_size=TOKENS.shape[0])
    variables, shardings = mesh_lib.sharded_init(_init_fn, mesh, rules)
    for path, spec in EXPECTED[preset].items():
        leaf = _get(variables["params"], path)
        want = NamedSharding(mesh, spec)
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (path, leaf.sharding)
        assert _get(shardings["params"], path).is_equivalent_to(want, leaf.ndim)
    # The sharded init draws the same numbers as a plain single-device init.
    reference, reference_logits = _reference()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 variables, reference)

    tokens = jax.device_put(TOKENS, mesh_lib.batch_sharding(mesh))

    @jax.jit
    def forward(v, t):
        return Tiny().apply(v, t)

    with mesh_lib.use_mesh(mesh, rules):
        logits = forward(variables, tokens)
    assert logits.sharding.is_equivalent_to(NamedSharding(mesh, LOGITS_SPEC[preset]), 3)
    np.testing.assert_allclose(logits, reference_logits, rtol=1e-5, atol=1e-5)


def test_fsdp_shards_are_the_expected_slices():
    mesh = mesh_lib.make_mesh(2, 4, 1)
    variables, _ = mesh_lib.sharded_init(_init_fn, mesh, mesh_lib.RULES["fsdp"])
    wi = variables["params"]["layers"]["wi"]["kernel"]  # [layers, embed, mlp]
    assert wi.shape == (LAYERS, EMBED, MLP)
    shard_shapes = {s.data.shape for s in wi.addressable_shards}
    assert shard_shapes == {(LAYERS, EMBED // 4, MLP)}
    # Device at fsdp index i holds embed rows [8i, 8i + 8).
    for s in wi.addressable_shards:
        np.testing.assert_array_equal(s.data, np.asarray(wi)[s.index])


def test_logical_to_mesh_sharding_and_batch_sharding():
    mesh = mesh_lib.make_mesh(2, 2, 2)
    tree = {"x": P(axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP), "y": P(axes.VOCAB, axes.EMBED)}
    out = mesh_lib.logical_to_mesh_sharding(tree, mesh, mesh_lib.RULES["fsdp_tp"])
    assert out["x"].spec == P(("data", "fsdp"), None, "model")
    assert out["y"].spec == P("model", "fsdp")
    batch = jax.device_put(np.zeros((16, 5), np.float32), mesh_lib.batch_sharding(mesh))
    assert {s.data.shape for s in batch.addressable_shards} == {(4, 5)}


def test_validate_rejects_unknown_mesh_axis():
    rules = mesh_lib.RULES["fsdp"] + ((axes.EMBED, "tensor"),)
    with pytest.raises(ValueError, match=r"names mesh axis 'tensor'.*\('data', 'fsdp', 'model'\)"):
        mesh_lib.validate(mesh_lib.make_mesh(), rules)


def test_validate_rejects_bad_batch_sizes():
    mesh = mesh_lib.make_mesh(2, 4, 1)
    rules = mesh_lib.RULES["fsdp"]
    with pytest.raises(ValueError, match=r"batch 12 .*data\*fsdp = 2\*4 = 8"):
        mesh_lib.validate(mesh, rules, global_batch_size=12)
    with pytest.raises(ValueError, match=r"batch 4 \(global batch 16 / 4 microbatches\)"):
        mesh_lib.validate(mesh, rules, global_batch_size=16, num_microbatches=4)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        mesh_lib.validate(mesh, rules, global_batch_size=8, process_count=3)
    mesh_lib.validate(mesh, rules, global_batch_size=64, num_microbatches=8, process_count=2)


def test_validate_names_the_indivisible_parameter():
    class Odd(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(MLP, name="wi", kernel_init=_init(nn.initializers.normal(),
                                                               (axes.EMBED, axes.MLP)))(x)

    abstract = jax.eval_shape(lambda: Odd().init(jax.random.key(0), jnp.zeros((2, 12))))
    mesh = mesh_lib.make_mesh(1, 8, 1)
    with pytest.raises(ValueError, match=r"params/wi/kernel with shape \(12, 64\): dimension 0 "
                                         r"\('embed', size 12\).*'fsdp' of size 8"):
        mesh_lib.validate(mesh, mesh_lib.RULES["fsdp"], abstract_params=abstract)
    # Replicated under dp, so the same params are fine there.
    mesh_lib.validate(mesh, mesh_lib.RULES["dp"], abstract_params=abstract)


def test_validate_rejects_logical_name_without_rule():
    abstract = {"w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((8, 8), jnp.float32),
                                             names=("embed", "mystery"))}
    with pytest.raises(ValueError, match=r"w uses logical axis 'mystery' that has no rule"):
        mesh_lib.validate(mesh_lib.make_mesh(), mesh_lib.RULES["fsdp"], abstract_params=abstract)
