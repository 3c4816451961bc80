"""Adafactor as T5X trains T5, with the second moment factored by *logical axis*.

Why a custom transform: ``optax.scale_by_factored_rms`` (and so ``optax.adafactor``) chooses the
two largest dimensions of each array, decides by size (``min_dim_size_to_factor``) and
averages the update-clipping and parameter-scale statistics over the whole array. T5X instead
reads each weight's logical axes: ``embed`` is the ROW axis, ``vocab/mlp/heads/kv`` are COLUMN
axes (``modeling.axes.FACTOR_RULES``), and a scanned ``layers`` axis is a batch axis over which
nothing is averaged, so a scanned stack trains exactly like its unrolled loop. Both need the
axis names, which only the model knows; they come in as ``param_axes``.

Per parameter ``p`` with gradient ``g`` at step ``t`` (0 for the first update):

    beta2 = 1 - (t + 1) ** -decay_rate                  # 0 at t=0: the first v is g**2
    g2 = g**2 + epsilon1
    factored (has ROW and COLUMN dims):
        v_row = beta2 v_row + (1 - beta2) mean(g2, COLUMN dims)
        v_col = beta2 v_col + (1 - beta2) mean(g2, ROW dims)
        y = g / sqrt(v_row / mean(v_row, ROW dims)) / sqrt(v_col)
    otherwise (vectors, [relpos_buckets, heads], ...):
        v = beta2 v + (1 - beta2) g2;   y = g / sqrt(v)
    y /= max(1, RMS(y) / clipping_threshold)             # update clipping
    y *= max(RMS(p), epsilon2)                           # parameter scaling
    update = -learning_rate * y

RMS averages over every dimension except ``layers``. No momentum, no weight decay. Other NONE
dimensions inside a factored weight are kept (never reduced) in both factors (T5X raises there).
One knowing difference: T5X falls back to its size heuristic for unscanned 2-D weights (factor
only if both dims >= 128); for a 2-D weight the factored estimate is the same whichever dim is
the row, so this only changes tiny (< 128 wide) models, which we factor and T5X does not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax.core import meta

from modeling import axes


class AdafactorState(NamedTuple):
    """Trees with the params' structure; unused slots hold a replicated ``zeros([1])``."""

    count: jax.Array  # [] int32, number of updates applied
    v_row: Any  # factored: param shape minus the COLUMN dims
    v_col: Any  # factored: param shape minus the ROW dims
    v: Any  # unfactored: param shape


class Factoring(NamedTuple):
    """Static, per-parameter description of how its statistics are reduced."""

    names: tuple  # logical axis name per dimension
    row: tuple[int, ...]  # dims tagged ROW
    col: tuple[int, ...]  # dims tagged COLUMN
    average: tuple[int, ...]  # dims RMS is averaged over (all but LAYERS)

    @property
    def factored(self) -> bool:
        return bool(self.row) and bool(self.col)


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def factoring(names: Any, ndim: int, where: str = "?",
              factor_rules: dict[str, str] | None = None) -> Factoring:
    """How a parameter with logical ``names`` is factored (see the module docstring)."""
    rules = axes.FACTOR_RULES if factor_rules is None else factor_rules
    names = tuple(names) if names is not None else (None,) * ndim
    if len(names) != ndim:
        raise ValueError(f"adafactor: parameter {where} has {ndim} dims but logical axes "
                         f"{names} (create it with nn.with_logical_partitioning)")
    kinds = []
    for name in names:
        if name is not None and name not in rules:
            raise ValueError(f"adafactor: parameter {where} has logical axis {name!r} with no "
                             f"entry in FACTOR_RULES ({sorted(rules)})")
        kinds.append(rules.get(name, axes.NONE))
    row = tuple(i for i, k in enumerate(kinds) if k == axes.ROW)
    col = tuple(i for i, k in enumerate(kinds) if k == axes.COLUMN)
    average = tuple(i for i, n in enumerate(names) if n != axes.LAYERS)
    return Factoring(names, row, col, average)


def param_factorings(params: Any, param_axes: Any,
                     factor_rules: dict[str, str] | None = None) -> tuple[list[Factoring], Any]:
    """Flattens ``params`` (boxes count as leaves) and pairs each leaf with its Factoring."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)
    if param_axes is None:
        raise ValueError("adafactor needs param_axes: a tree of logical axis names matching "
                         "the params, e.g. launch.mesh.logical_specs(abstract_boxed_params)")
    axes_leaves = jax.tree.structure(params, is_leaf=_is_box).flatten_up_to(param_axes)
    out = []
    for (path, leaf), names in zip(leaves, axes_leaves, strict=True):
        value = leaf.value if _is_box(leaf) else leaf
        out.append(factoring(names, jnp.ndim(value), jax.tree_util.keystr(path), factor_rules))
    return out, treedef


def _without(seq: tuple, dims: tuple[int, ...]) -> tuple:
    return tuple(x for i, x in enumerate(seq) if i not in dims)


def _rms(x: jax.Array, dims: tuple[int, ...]) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x), axis=dims, keepdims=True))


def scale_by_axis_factored_rms(
    param_axes: Any,
    decay_rate: float = 0.8,
    epsilon1: float = 1e-30,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    epsilon2: float = 1e-3,
    factor_rules: dict[str, str] | None = None,
) -> optax.GradientTransformation:
    """Adafactor's direction ``y`` (module docstring) before the learning rate.

    ``param_axes``: a tree with the params' structure whose leaves are logical axis names
    (tuples or PartitionSpecs). ``init`` also accepts params boxed with ``nn.Partitioned``; the
    state leaves are then boxed with their own logical names (``v_row`` drops the COLUMN axes,
    ``v_col`` drops the ROW axes) so ``nn.get_partition_spec(jax.eval_shape(init, boxed))``
    shards the state with the same rules as the params.
    """

    def init_fn(params: Any) -> AdafactorState:
        facts, treedef = param_factorings(params, param_axes, factor_rules)
        rows, cols, fulls = [], [], []
        for (_, leaf), f in zip(jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0],
                                facts, strict=True):
            value = leaf.value if _is_box(leaf) else leaf
            shape = jnp.shape(value)

            def make(dims_removed: tuple | None, leaf=leaf, shape=shape):
                if dims_removed is None:  # unused slot
                    return jnp.zeros((1,), jnp.float32)
                zeros = jnp.zeros(_without(shape, dims_removed), jnp.float32)
                if not _is_box(leaf):
                    return zeros
                return leaf.replace(value=zeros, names=_without(tuple(leaf.names),
                                                                dims_removed))

            rows.append(make(f.col if f.factored else None))
            cols.append(make(f.row if f.factored else None))
            fulls.append(make(None if f.factored else ()))
        unflatten = treedef.unflatten
        return AdafactorState(jnp.zeros([], jnp.int32), unflatten(rows), unflatten(cols),
                              unflatten(fulls))

    def update_fn(updates: Any, state: AdafactorState, params: Any = None):
        if multiply_by_parameter_scale and params is None:
            raise ValueError("adafactor with parameter scaling needs params in update()")
        facts, treedef = param_factorings(updates, param_axes, factor_rules)
        flat = [treedef.flatten_up_to(t) for t in (updates, state.v_row, state.v_col, state.v)]
        flat_params = treedef.flatten_up_to(params) if params is not None else [None] * len(facts)
        t = state.count.astype(jnp.float32) + 1.0
        beta2 = 1.0 - t ** (-decay_rate)
        new_updates, new_rows, new_cols, new_fulls = [], [], [], []
        for f, g_in, v_row, v_col, v, p in zip(facts, *flat, flat_params, strict=True):
            g = g_in.astype(jnp.float32)
            g2 = jnp.square(g) + epsilon1
            if f.factored:
                # [...param dims] -> [...param dims without COLUMN dims] (and vice versa)
                v_row = beta2 * v_row + (1.0 - beta2) * jnp.mean(g2, axis=f.col)
                v_col = beta2 * v_col + (1.0 - beta2) * jnp.mean(g2, axis=f.row)
                # ROW dims renumbered inside v_row, where the COLUMN dims are gone.
                row_in_vrow = tuple(d - sum(c < d for c in f.col) for d in f.row)
                row_mean = jnp.mean(v_row, axis=row_in_vrow, keepdims=True)
                row_factor = jax.lax.rsqrt(v_row / row_mean)
                col_factor = jax.lax.rsqrt(v_col)
                y = (g * jnp.expand_dims(row_factor, f.col)
                     * jnp.expand_dims(col_factor, f.row))
            else:
                v = beta2 * v + (1.0 - beta2) * g2
                y = g * jax.lax.rsqrt(v)
            if clipping_threshold is not None:
                y = y / jnp.maximum(1.0, _rms(y, f.average) / clipping_threshold)
            if multiply_by_parameter_scale:
                y = y * jnp.maximum(_rms(p.astype(jnp.float32), f.average), epsilon2)
            new_updates.append(y.astype(g_in.dtype))
            new_rows.append(v_row)
            new_cols.append(v_col)
            new_fulls.append(v)
        unflatten = treedef.unflatten
        new_state = AdafactorState(optax.safe_increment(state.count), unflatten(new_rows),
                                   unflatten(new_cols), unflatten(new_fulls))
        return unflatten(new_updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)

