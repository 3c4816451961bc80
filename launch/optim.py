"""Optimizers, learning-rate schedules, gradient accumulation and layer-wise LR decay.

Built from optax pieces; custom code only where optax lacks the behaviour: Adafactor factored
by logical axis (``launch/adafactor.py``), Adam without bias correction (ELECTRA), a per-leaf
LR multiplier (layer-wise decay) and per-layer parameter-RMS scaling (nanoT5's AdamWScale).

``make_optimizer(cfg, ...)`` reads these keys (all required; ``DEFAULTS`` lists them):

    name                 "adafactor" | "adamw" | "adamw_rms"
    learning_rate        peak LR (rsqrt: the base, lr = base / sqrt(max(step, warmup)))
    schedule             "rsqrt" | "linear" | "cosine" | "constant"
    warmup_steps, total_steps, end_learning_rate (cosine's final value)
    weight_decay         decoupled, masked off norms and biases (adamw*, must be 0 for adafactor)
    b1, b2, eps, bias_correction                  (adamw*; adamw_rms corrects nanoT5's way)
    clip_norm            global-norm clipping before the optimizer; 0 disables
    decay_rate, epsilon1, epsilon2, clipping_threshold, multiply_by_parameter_scale
                         (adafactor; epsilon2 is also adamw_rms's RMS floor)
    layerwise_lr_decay   1.0 disables; else needs param_depths (see layerwise_lr_scales)
    layerwise_lr_legacy  reproduce the ELECTRA reference's off-by-one
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta
from jax.sharding import Mesh

from launch import adafactor as adafactor_lib
from launch import mesh as mesh_lib
from modeling import axes

DEFAULTS: dict[str, Any] = {
    "name": "adafactor",
    "learning_rate": 1.0,
    "schedule": "rsqrt",
    "warmup_steps": 10_000,
    "total_steps": 524_288,
    "end_learning_rate": 0.0,
    "weight_decay": 0.0,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-6,
    "bias_correction": True,
    "clip_norm": 0.0,
    "decay_rate": 0.8,
    "epsilon1": 1e-30,
    "epsilon2": 1e-3,
    "clipping_threshold": 1.0,
    "multiply_by_parameter_scale": True,
    "layerwise_lr_decay": 1.0,
    "layerwise_lr_legacy": False,
}
NAMES = ("adafactor", "adamw", "adamw_rms")
SCHEDULES = ("rsqrt", "linear", "cosine", "constant")


# ---------------------------------------------------------------------------------------------
# Schedules (optax convention: called with the number of updates already applied, 0 first).
# ---------------------------------------------------------------------------------------------
def rsqrt_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """T5X: ``lr / sqrt(max(step, warmup))``; with 1.0 and 10k that is 0.01 flat, then decay."""
    if warmup_steps < 1:
        raise ValueError(f"rsqrt schedule needs warmup_steps >= 1, got {warmup_steps}")
    return lambda step: learning_rate * jax.lax.rsqrt(
        jnp.maximum(jnp.asarray(step, jnp.float32), float(warmup_steps)))


def _warmup_factor(step: jax.Array, warmup_steps: int) -> jax.Array:
    if warmup_steps <= 0:
        return jnp.ones([], jnp.float32)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def linear_schedule(learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """ELECTRA: linear decay from the peak to 0 over ALL steps, times min(1, step / warmup).

    Warm-up and decay overlap, so the peak actually reached is ``lr * (1 - warmup / total)``.
    """
    def schedule(step):
        # (total - step) / total, not 1 - step / total: exactly 0 at the end in float32.
        decay = jnp.maximum(0.0, (total_steps - jnp.asarray(step, jnp.float32)) / total_steps)
        return learning_rate * decay * _warmup_factor(step, warmup_steps)
    return schedule


def cosine_schedule(learning_rate: float, warmup_steps: int, total_steps: int,
                    end_learning_rate: float = 0.0) -> optax.Schedule:
    """Linear warm-up 0 -> peak, then cosine to ``end_learning_rate`` at ``total_steps``."""
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps,
                                              end_learning_rate)


def constant_schedule(learning_rate: float, warmup_steps: int = 0) -> optax.Schedule:
    """Constant (T5 fine-tuning), times a linear warm-up when ``warmup_steps > 0``."""
    return lambda step: learning_rate * _warmup_factor(step, warmup_steps)


def _get(cfg: Any, key: str) -> Any:
    try:
        return cfg[key]
    except (KeyError, AttributeError) as e:
        raise KeyError(f"optimizer config has no key {key!r}; expected keys: "
                       f"{sorted(DEFAULTS)}") from e


def make_schedule(cfg: Any) -> optax.Schedule:
    """The learning-rate schedule named by ``cfg.schedule`` (see module docstring)."""
    name = _get(cfg, "schedule")
    lr, warmup, total = (_get(cfg, k) for k in ("learning_rate", "warmup_steps", "total_steps"))
    if name == "rsqrt":
        return rsqrt_schedule(lr, warmup)
    if name in ("linear", "cosine") and total <= warmup:
        raise ValueError(f"schedule {name!r}: total_steps {total} must exceed warmup_steps "
                         f"{warmup}")
    if name == "linear":
        return linear_schedule(lr, warmup, total)
    if name == "cosine":
        return cosine_schedule(lr, warmup, total, _get(cfg, "end_learning_rate"))
    if name == "constant":
        return constant_schedule(lr, warmup)
    raise ValueError(f"optimizer config key 'schedule' is {name!r}; expected one of {SCHEDULES}")


# ---------------------------------------------------------------------------------------------
# Adam pieces optax lacks.
# ---------------------------------------------------------------------------------------------
def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                  bias_correction: bool = True,
                  eps_outside_correction: bool = False) -> optax.GradientTransformation:
    """Adam's direction, in the three forms the recipes use.

    - ``bias_correction`` only: optax / PyTorch AdamW, ``m_hat / (sqrt(v_hat) + eps)``.
    - no ``bias_correction``: ELECTRA's raw moments, ``m / (sqrt(v) + eps)``.
    - with ``eps_outside_correction``: nanoT5 / HF AdamW, which corrects the step size
      instead, ``m * sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps)``; eps is then effectively
      larger early in training.
    """
    if bias_correction and not eps_outside_correction:
        return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        step_scale = 1.0
        if bias_correction:
            t = count.astype(jnp.float32)
            step_scale = jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        updates = jax.tree.map(lambda m, v: step_scale * m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, optax.ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _average_dims(param_axes: Any, params: Any) -> list[tuple[int, ...]]:
    """Per leaf, the dims an RMS averages over: all but a scanned LAYERS axis."""
    leaves = jax.tree.leaves(params)
    if param_axes is None:
        return [tuple(range(jnp.ndim(p))) for p in leaves]
    names = jax.tree.structure(params).flatten_up_to(param_axes)
    out = []
    for ns, p in zip(names, leaves, strict=True):
        if ns is None:
            out.append(tuple(range(jnp.ndim(p))))
        else:
            out.append(tuple(i for i, n in enumerate(tuple(ns)) if n != axes.LAYERS))
    return out


def scale_by_param_rms(min_scale: float = 1e-3,
                       param_axes: Any = None) -> optax.GradientTransformation:
    """nanoT5's AdamWScale: multiply each update by ``max(RMS(param), min_scale)``.

    RMS is per layer for scanned params when ``param_axes`` is given (so scan == loop).
    One knowing difference from nanoT5: its weight decay multiplies the already-updated
    param, ``(p - step) * (1 - lr * wd)``; optax's decoupled decay uses ``p`` (differs by
    ``lr * wd * step``, second order).
    """
    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_param_rms needs params in update()")
        treedef = jax.tree.structure(updates)
        dims = _average_dims(param_axes, updates)
        out = [u * jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(p), axis=d, keepdims=True)),
                               min_scale).astype(u.dtype)
               for u, p, d in zip(treedef.flatten_up_to(updates), treedef.flatten_up_to(params),
                                  dims, strict=True)]
        return treedef.unflatten(out), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _key_name(key: Any) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def decay_mask(params: Any) -> Any:
    """True where decoupled weight decay applies: not biases, not norm scales.

    A leaf is excluded when its own name is ``bias`` or ``scale`` or any path component
    contains ``norm`` (LayerNorm, layer_norm, RMSNorm...), as ELECTRA excludes
    ``LayerNorm`` and ``bias``. Boxed leaves count as one leaf.
    """
    def keep(path, _):
        names = [_key_name(k) for k in path if _key_name(k) != "value"]
        leaf = names[-1] if names else ""
        return not (leaf in ("bias", "scale") or any("norm" in n.lower() for n in names))
    return jax.tree_util.tree_map_with_path(keep, params,
                                            is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


# ---------------------------------------------------------------------------------------------
# Layer-wise LR decay (ELECTRA fine-tuning).
# ---------------------------------------------------------------------------------------------
def layerwise_lr_scales(param_depths: Any, num_layers: int, decay: float,
                        legacy: bool = False) -> Any:
    """LR multiplier per leaf from its depth: 0 embeddings, i + 1 for layer i, L + 1 the head.

    Intended rule: ``decay ** (L + 1 - depth)`` (head x1, top layer x decay, embeddings x
    decay^(L+1)). ``legacy`` reproduces the reference code, whose head sits at depth L + 2:
    head x1, every other depth d gets ``decay ** (L + 2 - d)`` (top layer x decay^2). A depth
    leaf may be a 1-D array for a scanned parameter ([layers, ...]); its multiplier then
    broadcasts along the leading axis.
    """
    def scale(depth):
        depth = np.asarray(depth)
        if np.any(depth < 0) or np.any(depth > num_layers + 1):
            raise ValueError(f"layer depth {depth} outside [0, {num_layers + 1}]")
        exponent = num_layers + 1 - depth
        if legacy:
            exponent = np.where(depth == num_layers + 1, 0, num_layers + 2 - depth)
        return np.asarray(decay, np.float32) ** exponent.astype(np.float32)
    return jax.tree.map(scale, param_depths)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by its scale (scalar, or 1-D along a leading LAYERS axis)."""
    def update_fn(updates, state, params=None):
        del params

        def mul(u, s):
            s = jnp.asarray(s, u.dtype)
            return u * s.reshape(s.shape + (1,) * (u.ndim - s.ndim))
        return jax.tree.map(mul, updates, scales), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ---------------------------------------------------------------------------------------------
# The optimizer from config.
# ---------------------------------------------------------------------------------------------
def make_optimizer(cfg: Mapping[str, Any] | Any, *, param_axes: Any = None,
                   param_depths: Any = None, num_layers: int | None = None
                   ) -> optax.GradientTransformation:
    """The optimizer named by ``cfg.name``, with its schedule, clipping and LR decay.

    ``param_axes``: tree of logical names matching the params (``mesh.logical_specs(boxed)``);
    required for adafactor, used by adamw_rms for per-layer RMS. ``param_depths`` and
    ``num_layers``: required when ``layerwise_lr_decay != 1``.
    """
    name = _get(cfg, "name")
    if name not in NAMES:
        raise ValueError(f"optimizer config key 'name' is {name!r}; expected one of {NAMES}")
    schedule = make_schedule(cfg)
    weight_decay = _get(cfg, "weight_decay")
    parts = []
    if _get(cfg, "clip_norm"):
        parts.append(optax.clip_by_global_norm(_get(cfg, "clip_norm")))
    if name == "adafactor":
        if weight_decay:
            raise ValueError(f"adafactor (T5X recipe) takes no weight decay; optimizer config "
                             f"'weight_decay' is {weight_decay}, expected 0")
        parts.append(adafactor_lib.scale_by_axis_factored_rms(
            param_axes, _get(cfg, "decay_rate"), _get(cfg, "epsilon1"),
            _get(cfg, "clipping_threshold"), _get(cfg, "multiply_by_parameter_scale"),
            _get(cfg, "epsilon2")))
    else:
        parts.append(scale_by_adam(_get(cfg, "b1"), _get(cfg, "b2"), _get(cfg, "eps"),
                                   _get(cfg, "bias_correction"),
                                   eps_outside_correction=name == "adamw_rms"))
        if name == "adamw_rms":
            parts.append(scale_by_param_rms(_get(cfg, "epsilon2"), param_axes))
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    decay = _get(cfg, "layerwise_lr_decay")
    if decay != 1.0:
        if param_depths is None or num_layers is None:
            raise ValueError(f"layerwise_lr_decay={decay} needs param_depths and num_layers")
        parts.append(scale_by_tree(layerwise_lr_scales(param_depths, num_layers, decay,
                                                       _get(cfg, "layerwise_lr_legacy"))))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def optimizer_state_shardings(tx: optax.GradientTransformation, abstract_params: Any,
                              mesh: Mesh, rules: mesh_lib.Rules) -> Any:
    """Shardings of ``tx.init(params)`` from the boxed ``jax.eval_shape(model.init)`` output.

    Moments that mirror the params (Adam's mu/nu, Adafactor's v and its factors) carry the
    params' logical names through ``init``; counters and placeholders are replicated. Use as
    ``jax.jit(tx.init, out_shardings=optimizer_state_shardings(...))(params)``.
    """
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    return mesh_lib.logical_to_mesh_sharding(nn.get_partition_spec(abstract_state), mesh, rules)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation.
# ---------------------------------------------------------------------------------------------
def accumulate_gradients(loss_fn: Callable[..., Any], params: Any, batch: Any,
                         num_microbatches: int, *, has_aux: bool = False,
                         reduction: str = "mean", rng_key: jax.Array | None = None) -> Any:
    """``jax.value_and_grad(loss_fn)`` over ``num_microbatches`` slices, inside one jit.

    ``loss_fn(params, microbatch)`` (or ``(params, microbatch, key)`` when ``rng_key`` is
    given; microbatch i gets ``fold_in(rng_key, i)``). ``reduction="mean"`` averages loss,
    aux and grads over microbatches (equals the full batch for a per-example mean loss);
    ``"sum"`` adds them (for T5X's summed token loss, or normalise afterwards by a summed
    weight in aux). Microbatch i takes rows i, i + k, i + 2k... so each device's rows are
    spread over all microbatches and no data moves between devices. Returns what
    ``jax.value_and_grad`` would: ``(loss, grads)`` or ``((loss, aux), grads)``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

    def call(micro, index):
        if rng_key is None:
            return grad_fn(params, micro)
        return grad_fn(params, micro, jax.random.fold_in(rng_key, index))

    if num_microbatches == 1:
        return call(batch, 0)
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(batch)}
    if len(sizes) != 1 or next(iter(sizes)) % num_microbatches:
        raise ValueError(f"batch leading sizes {sorted(sizes)} must be one size divisible by "
                         f"num_microbatches={num_microbatches}")

    # [batch, ...] -> [batch / k, k, ...] -> [k, batch / k, ...]: microbatch i = rows i::k.
    def split(x):
        x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    micro_batches = jax.tree.map(split, batch)

    def body(carry, inputs):
        index, micro = inputs
        out = call(micro, index)
        return jax.tree.map(jnp.add, carry, out), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(call, jax.tree.map(lambda x: x[0], micro_batches), 0))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro_batches))
    if reduction == "mean":
        total = jax.tree.map(lambda x: x / num_microbatches, total)
    return total
