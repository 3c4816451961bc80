"""launch/optim.py + launch/adafactor.py against NumPy transcriptions of the published formulas.

References: Adafactor (Shazeer & Stern 2018, Alg. 4/5, written with row/column *sums*) with the
T5X conventions from reference/T5.md; ELECTRA's AdamWeightDecayOptimizer (no bias correction)
and schedule from reference/ELECTRA.md; nanoT5's AdamWScale (Adam step times max(1e-3, RMS(p))).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from launch import adafactor as adafactor_lib
from launch import mesh as mesh_lib
from launch import optim
from modeling import axes

RNG = np.random.default_rng(0)

# name -> (shape, logical axes, (row dims, column dims) as the FACTOR_RULES say, or None)
PARAMS = {
    "wi": ((4, 6), (axes.EMBED, axes.MLP), ((0,), (1,))),
    "wo": ((6, 4), (axes.MLP, axes.EMBED), ((1,), (0,))),
    "query": ((4, 2, 3), (axes.EMBED, axes.HEADS, axes.KV), ((0,), (1, 2))),
    "out": ((2, 3, 4), (axes.HEADS, axes.KV, axes.EMBED), ((2,), (0, 1))),
    "scale": ((4,), (axes.EMBED,), None),
    "relpos": ((5, 2), (axes.RELPOS_BUCKETS, axes.HEADS), None),
}
STACKED = ((2, 4, 6), (axes.LAYERS, axes.EMBED, axes.MLP))


def _config(**overrides):
    cfg = ml_collections.ConfigDict(optim.DEFAULTS)
    cfg.update(overrides)
    return cfg


def _tree(values):
    return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# NumPy Adafactor (paper notation; matrices are [ROW dims flattened, COLUMN dims flattened]).
# ---------------------------------------------------------------------------------------------
def _as_matrix(x, row, col):
    order = row + col
    rows = int(np.prod([x.shape[d] for d in row]))
    return np.transpose(x, order).reshape(rows, -1), order


def _from_matrix(m, x_shape, order):
    shape = [x_shape[d] for d in order]
    return np.transpose(m.reshape(shape), np.argsort(order))


def np_adafactor(params, grads_per_step, factor, lrs, clip_log, eps1=1e-30, eps2=1e-3, d=1.0):
    """Runs T5X Adafactor on one parameter array; returns the final parameter."""
    x = np.array(params, np.float64)
    r = c = v = None
    for t, (g, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
        g = np.asarray(g, np.float64)
        beta2 = 1.0 - t ** -0.8
        if factor is not None:
            gm, order = _as_matrix(g, *factor)
            sq = gm ** 2 + eps1
            n, m = sq.shape
            r_new = sq.sum(axis=1)  # row sums, [n]
            c_new = sq.sum(axis=0)  # column sums, [m]
            r = r_new * (1 - beta2) if r is None else beta2 * r + (1 - beta2) * r_new
            c = c_new * (1 - beta2) if c is None else beta2 * c + (1 - beta2) * c_new
            v_hat = np.outer(r, c) / r.sum()
            u = _from_matrix(gm / np.sqrt(v_hat), g.shape, order)
        else:
            sq = g ** 2 + eps1
            v = sq * (1 - beta2) if v is None else beta2 * v + (1 - beta2) * sq
            u = g / np.sqrt(v)
        rms_u = np.sqrt(np.mean(u ** 2))
        clip_log.append(rms_u > d)
        u = u / max(1.0, rms_u / d)
        alpha = max(eps2, np.sqrt(np.mean(x ** 2))) * lr
        x = x - alpha * u
    return x


def _adafactor_case(steps=3):
    params = {k: RNG.normal(size=s) for k, (s, _, _) in PARAMS.items()}
    params["scale"] *= 1e-4  # RMS below epsilon2: exercises the 1e-3 floor
    params["stack"] = RNG.normal(size=STACKED[0]) * np.array([1.0, 0.01])[:, None, None]
    grads = [{k: RNG.normal(size=np.shape(p)) * (1 + 3 * (k == "wi")) for k, p in params.items()}
             for _ in range(steps)]
    param_axes = {k: names for k, (_, names, _) in PARAMS.items()}
    param_axes["stack"] = STACKED[1]
    return params, grads, param_axes


def test_adafactor_matches_numpy_reference_for_every_factoring():
    params, grads, param_axes = _adafactor_case()
    tx = optim.make_optimizer(_config(), param_axes=param_axes)  # T5X defaults, rsqrt 1.0/10k
    p = _tree(params)
    state = tx.init(p)
    for g in grads:
        updates, state = jax.jit(tx.update)(_tree(g), state, p)
        p = optax.apply_updates(p, updates)

    lrs = [0.01] * len(grads)  # rsqrt: 1 / sqrt(max(step, 10000)) for steps 0, 1, 2
    clip_log = []
    for name, (_, _, factor) in PARAMS.items():
        want = np_adafactor(params[name], [g[name] for g in grads], factor, lrs, clip_log)
        np.testing.assert_allclose(p[name], want, rtol=2e-5, atol=1e-7, err_msg=name)
    # Scanned [layers, embed, mlp]: each layer is its own [embed, mlp] matrix (scan == loop),
    # including the per-layer parameter RMS (layer 1 is 100x smaller) and clipping.
    for layer in range(2):
        want = np_adafactor(params["stack"][layer], [g["stack"][layer] for g in grads],
                            ((0,), (1,)), lrs, clip_log)
        np.testing.assert_allclose(p["stack"][layer], want, rtol=2e-5, atol=1e-7)
    assert any(clip_log) and not all(clip_log)  # both clipping branches were exercised


def test_adafactor_factors_by_logical_axis_not_by_size():
    params, _, param_axes = _adafactor_case()
    tx = optim.make_optimizer(_config(), param_axes=param_axes)
    state = tx.init(_tree(params))[0]
    assert isinstance(state, adafactor_lib.AdafactorState)
    shapes = {k: (state.v_row[k].shape, state.v_col[k].shape, state.v[k].shape) for k in params}
    # v_row keeps the ROW (embed) dims, v_col the COLUMN dims, whatever their order or size.
    assert shapes["wi"] == ((4,), (6,), (1,))
    assert shapes["wo"] == ((4,), (6,), (1,))
    assert shapes["query"] == ((4,), (2, 3), (1,))
    assert shapes["out"] == ((4,), (2, 3), (1,))
    assert shapes["stack"] == ((2, 4), (2, 6), (1,))
    # No ROW+COLUMN pair: full second moment.
    assert shapes["scale"] == ((1,), (1,), (4,))
    assert shapes["relpos"] == ((1,), (1,), (5, 2))
    # optax's size heuristic would factor [heads=2, kv=3, embed=4] over its two largest dims
    # (kv, embed) and keep heads; by axis, embed is the row and heads*kv the columns.
    with pytest.raises(ValueError, match="logical axis 'length' with no entry in FACTOR_RULES"):
        optim.make_optimizer(_config(), param_axes={"w": ("length", axes.EMBED)}).init(
            {"w": jnp.zeros((2, 4))})
    with pytest.raises(ValueError, match="adafactor needs param_axes"):
        optim.make_optimizer(_config()).init({"w": jnp.zeros((2, 4))})


def test_adafactor_agrees_with_optax_where_semantics_coincide():
    # 2-D factored and 1-D params: optax's size-based choice and T5X's axis-based one coincide.
    params = {"wi": RNG.normal(size=(4, 6)), "wo": RNG.normal(size=(6, 4)),
              "scale": RNG.normal(size=(4,))}
    param_axes = {"wi": (axes.EMBED, axes.MLP), "wo": (axes.MLP, axes.EMBED),
                  "scale": (axes.EMBED,)}
    ours = optim.make_optimizer(_config(schedule="constant", learning_rate=0.01, warmup_steps=0),
                                param_axes=param_axes)
    ref = optax.adafactor(learning_rate=0.01, min_dim_size_to_factor=1, decay_rate=0.8,
                          clipping_threshold=1.0, momentum=None, eps=1e-30,
                          multiply_by_parameter_scale=True)
    grads = [_tree({k: RNG.normal(size=np.shape(v)) for k, v in params.items()})
             for _ in range(4)]

    @jax.jit
    def run(p_ours, p_ref):
        s_ours, s_ref = ours.init(p_ours), ref.init(p_ref)
        for g in grads:
            u_ours, s_ours = ours.update(g, s_ours, p_ours)
            u_ref, s_ref = ref.update(g, s_ref, p_ref)
            p_ours = optax.apply_updates(p_ours, u_ours)
            p_ref = optax.apply_updates(p_ref, u_ref)
        return p_ours, p_ref

    p_ours, p_ref = run(_tree(params), _tree(params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 p_ours, p_ref)


# ---------------------------------------------------------------------------------------------
# AdamW.
# ---------------------------------------------------------------------------------------------
ADAM_PARAMS = {
    "dense": {"kernel": RNG.normal(size=(3, 4)), "bias": RNG.normal(size=(4,))},
    "LayerNorm": {"scale": RNG.normal(size=(4,)), "bias": RNG.normal(size=(4,))},
    "embedding": RNG.normal(size=(5, 3)) * 1e-5,
}


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v, np.float64)
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def np_adamw(params, grads_per_step, lrs, *, bias_correction, rms_scale, wd=0.01, clip=1.0,
             b1=0.9, b2=0.999, eps=1e-6):
    """ELECTRA AdamWeightDecayOptimizer / nanoT5 AdamWScale on flattened {path: array}."""
    x = dict(params)
    m = {k: 0.0 for k in x}
    v = {k: 0.0 for k in x}
    decayed = {k: not (k.endswith("['bias']") or "LayerNorm" in k) for k in x}
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
        norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
        new_x = {}
        for k, g in grads.items():
            g = g * min(1.0, clip / norm)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g ** 2
            if rms_scale:  # nanoT5 (HF AdamW): bias correction folded into the step size
                u = m[k] * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) / (np.sqrt(v[k]) + eps)
                u = u * max(1e-3, np.sqrt(np.mean(x[k] ** 2)))
            elif bias_correction:
                u = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
            else:
                u = m[k] / (np.sqrt(v[k]) + eps)
            if decayed[k]:
                u = u + wd * x[k]
            new_x[k] = x[k] - lr * u
        x = new_x
    return x


@pytest.mark.parametrize("name,bias_correction", [("adamw", False), ("adamw", True),
                                                   ("adamw_rms", True)])
def test_adamw_matches_numpy_reference(name, bias_correction):
    # ELECTRA's schedule: linear decay over 100 steps times min(1, step / 10). eps is raised
    # to 1e-4 so that where it enters (nanoT5 vs optax bias correction) changes the numbers.
    cfg = _config(name=name, learning_rate=5e-4, schedule="linear", warmup_steps=10,
                  total_steps=100, weight_decay=0.01, clip_norm=1.0, eps=1e-4,
                  bias_correction=bias_correction)
    tx = optim.make_optimizer(cfg)
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), ADAM_PARAMS)
    total = jax.tree.map(jnp.zeros_like, p)
    state = tx.init(p)
    grads = [jax.tree.map(lambda x: RNG.normal(size=np.shape(x)) * 2, ADAM_PARAMS)
             for _ in range(3)]  # global norm ~9 > 1: clipping is active
    for g in grads:
        updates, state = jax.jit(tx.update)(jax.tree.map(jnp.float32, g), state, p)
        p = optax.apply_updates(p, updates)
        total = jax.tree.map(jnp.add, total, updates)
    lrs = [5e-4 * (1 - s / 100) * min(1.0, s / 10) for s in range(3)]  # 0 at step 0
    start = _flat(ADAM_PARAMS)
    want = np_adamw(start, [_flat(g) for g in grads], lrs, eps=1e-4,
                    bias_correction=bias_correction, rms_scale=name == "adamw_rms")
    # Compare the summed updates (~1e-4), not params (~1), so float32 rounding of the params
    # does not hide differences in the step.
    got = _flat(total)
    for k in want:
        np.testing.assert_allclose(got[k], want[k] - start[k], rtol=1e-4, atol=1e-11,
                                   err_msg=k)


def test_weight_decay_mask_excludes_norms_and_biases():
    tree = {"encoder": {"layer_norm": {"scale": 0}, "mlp": {"wi": {"kernel": 0, "bias": 0}},
                        "RMSNorm_0": {"weight": 0}},
            "embedding": 0, "LayerNorm": {"bias": 0}, "final_norm_scale": 0,
            "ln_f": {"scale": 0}}
    assert optim.decay_mask(tree) == {
        "encoder": {"layer_norm": {"scale": False}, "mlp": {"wi": {"kernel": True,
                                                                    "bias": False}},
                    "RMSNorm_0": {"weight": False}},
        "embedding": True, "LayerNorm": {"bias": False}, "final_norm_scale": False,
        "ln_f": {"scale": False}}
    # With zero gradients only decoupled decay moves the params: lr * wd * p where decayed.
    tx = optim.make_optimizer(_config(name="adamw", learning_rate=0.5, schedule="constant",
                                      warmup_steps=0, weight_decay=0.1))
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), ADAM_PARAMS)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.05 * p["dense"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(updates["embedding"], -0.05 * p["embedding"], rtol=1e-6)
    for leaf in (updates["dense"]["bias"], updates["LayerNorm"]["scale"],
                 updates["LayerNorm"]["bias"]):
        np.testing.assert_array_equal(leaf, 0.0)


# ---------------------------------------------------------------------------------------------
# Schedules.
# ---------------------------------------------------------------------------------------------
def test_schedules_at_known_steps():
    def at(schedule, steps):
        return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))

    rsqrt = optim.make_schedule(_config(schedule="rsqrt", learning_rate=1.0, warmup_steps=10000))
    np.testing.assert_allclose(at(rsqrt, [0, 5000, 10000, 20000, 40000]),
                               [0.01, 0.01, 0.01, 1 / np.sqrt(20000), 0.005], rtol=1e-6)
    linear = optim.make_schedule(_config(schedule="linear", learning_rate=5e-4,
                                         warmup_steps=10000, total_steps=100000))
    np.testing.assert_allclose(
        at(linear, [0, 5000, 10000, 20000, 55000, 100000]),
        [0.0, 5e-4 * 0.95 * 0.5, 5e-4 * 0.9, 5e-4 * 0.8, 5e-4 * 0.45, 0.0], rtol=1e-6, atol=1e-12)
    cosine = optim.make_schedule(_config(schedule="cosine", learning_rate=2e-2, warmup_steps=100,
                                         total_steps=1100, end_learning_rate=1e-5))
    np.testing.assert_allclose(
        at(cosine, [0, 50, 100, 600, 1100]),
        [0.0, 1e-2, 2e-2, 1e-5 + (2e-2 - 1e-5) / 2, 1e-5], rtol=1e-5, atol=1e-12)
    constant = optim.make_schedule(_config(schedule="constant", learning_rate=1e-3,
                                           warmup_steps=0))
    np.testing.assert_allclose(at(constant, [0, 1, 10**6]), [1e-3] * 3, rtol=1e-7)
    warm = optim.make_schedule(_config(schedule="constant", learning_rate=1e-3, warmup_steps=10))
    np.testing.assert_allclose(at(warm, [0, 5, 10, 50]), [0, 5e-4, 1e-3, 1e-3], rtol=1e-7)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="'name' is 'sgd'"):
        optim.make_optimizer(_config(name="sgd"))
    with pytest.raises(ValueError, match="'schedule' is 'step'"):
        optim.make_schedule(_config(schedule="step"))
    with pytest.raises(KeyError, match="no key 'b1'"):
        optim.make_optimizer({k: v for k, v in optim.DEFAULTS.items() if k != "b1"} |
                             {"name": "adamw"})
    with pytest.raises(ValueError, match="takes no weight decay"):
        optim.make_optimizer(_config(weight_decay=0.01), param_axes={})
    with pytest.raises(ValueError, match="total_steps 10 must exceed warmup_steps 10"):
        optim.make_schedule(_config(schedule="linear", warmup_steps=10, total_steps=10))
    with pytest.raises(ValueError, match="needs param_depths"):
        optim.make_optimizer(_config(name="adamw", layerwise_lr_decay=0.8))


# ---------------------------------------------------------------------------------------------
# Layer-wise LR decay.
# ---------------------------------------------------------------------------------------------
def test_layerwise_lr_decay_intended_and_legacy():
    depths = {"embeddings": 0, "layer_0": 1, "layer_1": 2, "head": 3,
              "stacked": np.array([1, 2])}
    scales = optim.layerwise_lr_scales(depths, num_layers=2, decay=0.8)
    np.testing.assert_allclose([scales[k] for k in ("embeddings", "layer_0", "layer_1", "head")],
                               [0.8 ** 3, 0.8 ** 2, 0.8, 1.0], rtol=1e-6)
    np.testing.assert_allclose(scales["stacked"], [0.64, 0.8], rtol=1e-6)
    legacy = optim.layerwise_lr_scales(depths, num_layers=2, decay=0.8, legacy=True)
    # The reference code's off-by-one: top layer decay^2, head undecayed.
    np.testing.assert_allclose([legacy[k] for k in ("embeddings", "layer_0", "layer_1", "head")],
                               [0.8 ** 4, 0.8 ** 3, 0.8 ** 2, 1.0], rtol=1e-6)
    # In the optimizer: same gradients everywhere -> the Adam step differs only by the scale.
    cfg = _config(name="adamw", learning_rate=1e-3, schedule="constant", warmup_steps=0,
                  layerwise_lr_decay=0.8)
    tx = optim.make_optimizer(cfg, param_depths=depths, num_layers=2)
    p = {k: jnp.ones((2, 3)) for k in depths}
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
    step = 1e-3 * 1.0 / (1.0 + 1e-6)  # optax default: bias-corrected, m_hat = v_hat = 1
    np.testing.assert_allclose(updates["layer_0"], -step * 0.64, rtol=1e-5)
    np.testing.assert_allclose(updates["stacked"][:, 0], [-step * 0.64, -step * 0.8], rtol=1e-5)
    with pytest.raises(ValueError, match=r"outside \[0, 3\]"):
        optim.layerwise_lr_scales({"x": 4}, num_layers=2, decay=0.8)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation.
# ---------------------------------------------------------------------------------------------
def test_accumulated_gradients_equal_full_batch():
    x = jnp.asarray(RNG.normal(size=(16, 5)), jnp.float32)
    y = jnp.asarray(RNG.normal(size=(16, 3)), jnp.float32)
    params = {"w": jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros(3)}

    def mean_loss(p, batch):
        err = batch["x"] @ p["w"] + p["b"] - batch["y"]
        return jnp.mean(err ** 2), {"n": jnp.float32(batch["x"].shape[0])}

    batch = {"x": x, "y": y}
    (loss, _), grads = jax.value_and_grad(mean_loss, has_aux=True)(params, batch)
    for k in (4, 16):
        fn = jax.jit(lambda p, b, k=k: optim.accumulate_gradients(mean_loss, p, b, k,
                                                                  has_aux=True))
        (acc_loss, aux), acc_grads = fn(params, batch)
        np.testing.assert_allclose(acc_loss, loss, rtol=1e-5)
        np.testing.assert_allclose(aux["n"], 16 / k)  # mean over microbatches of their size
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     acc_grads, grads)

    def sum_loss(p, batch, key):
        noise = jax.random.normal(key, ())  # per-microbatch key: differs, but is deterministic
        return jnp.sum((batch["x"] @ p["w"] - batch["y"]) ** 2) + 0.0 * noise

    full = jax.grad(lambda p: sum_loss(p, batch, jax.random.key(0)))(params)
    got = optim.accumulate_gradients(sum_loss, params, batch, 4, reduction="sum",
                                     rng_key=jax.random.key(1))[1]
    np.testing.assert_allclose(got["w"], full["w"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by num_microbatches=3"):
        optim.accumulate_gradients(mean_loss, params, batch, 3, has_aux=True)


# ---------------------------------------------------------------------------------------------
# Optimizer state sharded with the params' rules.
# ---------------------------------------------------------------------------------------------
def test_optimizer_state_shardings_follow_logical_axes():
    f32 = jnp.float32
    abstract = {
        "wi": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((32, 64), f32), (axes.EMBED,
                                                                             axes.MLP)),
        "stack": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((2, 64, 32), f32),
                                         (axes.LAYERS, axes.MLP, axes.EMBED)),
        "norm": {"scale": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((32,), f32),
                                                  (axes.EMBED,))},
    }
    mesh = mesh_lib.make_mesh(2, 4, 1)
    rules = mesh_lib.RULES["fsdp"]
    param_axes = mesh_lib.logical_specs(abstract)
    param_shardings = mesh_lib.params_shardings(abstract, mesh, rules)
    params = {"wi": jnp.asarray(RNG.normal(size=(32, 64)), f32),
              "stack": jnp.asarray(RNG.normal(size=(2, 64, 32)), f32),
              "norm": {"scale": jnp.ones(32, f32)}}
    grads = jax.tree.map(lambda x: jnp.asarray(RNG.normal(size=x.shape), f32), params)
    sharded = jax.device_put(params, param_shardings)

    for cfg in (_config(), _config(name="adamw", schedule="constant", warmup_steps=0,
                                   learning_rate=1e-3, weight_decay=0.01)):
        tx = optim.make_optimizer(cfg, param_axes=param_axes)
        shardings = optim.optimizer_state_shardings(tx, abstract, mesh, rules)
        state = jax.jit(tx.init, out_shardings=shardings)(sharded)
        # The trainer's way: tx.init on boxed params inside sharded_init gives the same layout.
        boxed = jax.tree.map(lambda a, p: a.replace_boxed(p), abstract, params,
                             is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        _, born_shardings = mesh_lib.sharded_init(lambda tx=tx, b=boxed: tx.init(b), mesh, rules)
        assert jax.tree.structure(born_shardings) == jax.tree.structure(shardings)
        assert jax.tree.leaves(born_shardings) == jax.tree.leaves(shardings)
        if cfg.name == "adafactor":
            inner = shardings[0]
            expect = {("v_row", "wi"): P("fsdp"), ("v_col", "wi"): P(),
                      ("v_row", "stack"): P(None, "fsdp"), ("v_col", "stack"): P(),
                      ("v", "wi"): P()}
            for (field, key), spec in expect.items():
                got = getattr(inner, field)[key]
                ndim = getattr(state[0], field)[key].ndim
                assert got.is_equivalent_to(NamedSharding(mesh, spec), ndim), (field, key, got)
            assert inner.v["norm"]["scale"].spec == P("fsdp")
            assert state[0].v_row["wi"].sharding.is_equivalent_to(NamedSharding(mesh, P("fsdp")),
                                                                  1)
        else:
            mu = shardings[0].mu
            assert mu["wi"].spec == P("fsdp", None)
            assert mu["stack"].spec == P(None, None, "fsdp")
            assert state[0].nu["wi"].sharding.is_equivalent_to(mu["wi"], 2)
        # A sharded, jitted step gives the same numbers as an unsharded one.
        step = jax.jit(tx.update, out_shardings=(param_shardings, shardings))
        updates, _ = step(jax.device_put(grads, param_shardings), state, sharded)
        ref_updates, _ = jax.jit(lambda g, p, tx=tx: tx.update(g, tx.init(p), p))(grads, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
                     updates, ref_updates)
