"""Device mesh, logical-axis rule presets and the shardings derived from them.

Models name every weight and activation dimension with the logical names in ``modeling/axes.py``;
this module turns those names into ``NamedSharding``s on a 3-axis mesh ``("data", "fsdp",
"model")``. The rule presets are ordered lists read by Flax's priority resolver: for each array,
rules are tried top to bottom and a rule only applies if its mesh axes are still unused by the
array's other dimensions (so ``[embed_proj, embed]`` gets fsdp on its first dimension only).
Every preset ends with ``(name, None)`` for each remaining name so that *all* names are covered
explicitly; a ``None`` rule must come after any real rule for the same name.

Typical start-up::

    mesh = make_mesh(**config.mesh)                      # data=1, fsdp=-1, model=1
    rules = RULES[config.sharding]
    validate(mesh, rules, abstract_params=boxed, global_batch_size=B)
    variables, shardings = sharded_init(init_fn, mesh, rules)
    with use_mesh(mesh, rules):                          # activation constraints need this
        state, metrics = train_step(state, batch)        # jitted; traced on the first call
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from modeling import axes

Rules = tuple[tuple[str, Any], ...]
BATCH_MESH_AXES = (axes.DATA, axes.FSDP)


def _complete(rules: list[tuple[str, Any]]) -> Rules:
    """Appends ``(name, None)`` for every logical name the preset did not mention."""
    named = {name for name, _ in rules}
    return tuple(rules) + tuple((name, None) for name in axes.ALL_AXES if name not in named)


# Activations: batch is split over every data-like axis in all presets.
_ACT_DP = [(axes.ACT_BATCH, BATCH_MESH_AXES)]

RULES: dict[str, Rules] = {
    # Pure data parallel: params and optimizer state replicated on every device.
    "dp": _complete(list(_ACT_DP)),
    # ZeRO-3: every big matrix ([vocab, embed], [embed, heads, kv], [embed, mlp], ELECTRA's
    # [vocab, embed_proj] / [embed_proj, embed]) has an embed-like dimension, and model widths
    # are multiples of 8, so that is the dimension split over fsdp. vocab/heads are left alone
    # on purpose: 30522 or 12 do not divide typical fsdp sizes. LAYERS is never sharded
    # (nn.scan slices it every step).
    "fsdp": _complete([
        (axes.EMBED, axes.FSDP),
        (axes.EMBED_PROJ, axes.FSDP),
        *_ACT_DP,
    ]),
    # FSDP + Megatron tensor parallel: heads/mlp/vocab over model (column-then-row parallel
    # pairs), embed over fsdp; the activations' heads/mlp/vocab follow their weights.
    "fsdp_tp": _complete([
        (axes.VOCAB, axes.MODEL),
        (axes.MLP, axes.MODEL),
        (axes.HEADS, axes.MODEL),
        (axes.EMBED, axes.FSDP),
        (axes.EMBED_PROJ, axes.FSDP),
        *_ACT_DP,
        (axes.ACT_HEADS, axes.MODEL),
        (axes.ACT_MLP, axes.MODEL),
        (axes.ACT_VOCAB, axes.MODEL),
    ]),
}


# ---------------------------------------------------------------------------------------------
# Mesh.
# ---------------------------------------------------------------------------------------------
def resolve_mesh_shape(data: int, fsdp: int, model: int, num_devices: int) -> tuple[int, int,
                                                                                     int]:
    """Replaces the one ``-1`` by "the rest of the devices" and checks the product."""
    sizes = {axes.DATA: data, axes.FSDP: fsdp, axes.MODEL: model}
    free = [name for name, size in sizes.items() if size == -1]
    bad = [f"{name}={size}" for name, size in sizes.items() if size != -1 and size < 1]
    if bad or len(free) > 1:
        raise ValueError(
            f"mesh sizes {sizes}: each must be >= 1, and at most one may be -1 ('the rest'); "
            f"got {', '.join(bad) or f'{len(free)} sizes of -1'}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if num_devices % fixed:
        raise ValueError(
            f"mesh sizes {sizes} (product of fixed sizes {fixed}) do not divide the device "
            f"count {num_devices}")
    if free:
        sizes[free[0]] = num_devices // fixed
    return sizes[axes.DATA], sizes[axes.FSDP], sizes[axes.MODEL]


def make_mesh(data: int = 1, fsdp: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "fsdp", "model")`` mesh; one size may be -1 meaning "the rest".

    With no -1 and a product smaller than the device count, the first ``product`` devices are
    used (single-process only). Device order comes from ``jax.make_mesh`` (topology-aware on
    TPU, so the last, ``model``, axis lands on the most tightly connected devices); pass
    ``devices`` to override it.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(data, fsdp, model, len(devices))
    if math.prod(shape) != len(devices) and jax.process_count() > 1:
        raise ValueError(f"mesh {shape} must use all {len(devices)} devices on multi-host")
    return jax.make_mesh(shape, axes.MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices[:math.prod(shape)])


# ---------------------------------------------------------------------------------------------
# Logical specs -> shardings.
# ---------------------------------------------------------------------------------------------
def logical_to_mesh_sharding(logical_spec_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Maps a tree of logical ``PartitionSpec``s to ``NamedSharding``s on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, list(rules))


def logical_specs(boxed_tree: Any) -> Any:
    """Logical ``PartitionSpec`` per leaf of a tree boxed with ``nn.Partitioned``.

    Unboxed array leaves get ``P()`` (replicated). The result has the *unboxed* structure.
    """
    return nn.get_partition_spec(boxed_tree)


def params_shardings(abstract_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """Shardings for ``jax.eval_shape(model.init, ...)`` output (boxed leaves)."""
    return logical_to_mesh_sharding(logical_specs(abstract_params), mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ``("data", "fsdp")``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Makes ``mesh`` and ``rules`` current for tracing (jit calls, ``eval_shape``).

    Flax's ``with_logical_constraint`` only acts when ``jax.sharding.get_abstract_mesh()`` is
    set, which ``jax.set_mesh`` does and the legacy ``with mesh:`` does not: without this, the
    activation rules are silently ignored.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        yield


def sharded_init(init_fn: Callable[[], Any], mesh: Mesh, rules: Rules,
                 unbox: bool = True) -> tuple[Any, Any]:
    """Runs ``init_fn()`` so that its outputs are born sharded; returns (variables, shardings).

    ``init_fn`` takes no arguments (close over the PRNG key and dummy inputs) and returns a
    tree whose leaves may be boxed with logical names. Shapes come from ``jax.eval_shape``, the
    shardings from the rules, and ``jax.jit(init_fn, out_shardings=...)`` then materialises
    each shard on its device only. With ``unbox`` the boxes are dropped from the result (the
    shardings tree always has the unboxed structure).
    """
    with use_mesh(mesh, rules):
        abstract = jax.eval_shape(init_fn)
        shardings = params_shardings(abstract, mesh, rules)
        boxed_shardings = jax.tree.map(
            lambda x, s: x.replace_boxed(s) if isinstance(x, meta.AxisMetadata) else s,
            abstract, shardings, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
        variables = jax.jit(init_fn, out_shardings=boxed_shardings)()
    if unbox:
        variables = meta.unbox(variables)
    return variables, shardings


# ---------------------------------------------------------------------------------------------
# Start-up validation.
# ---------------------------------------------------------------------------------------------
def _mesh_axes_of(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def validate(mesh: Mesh, rules: Rules, *, abstract_params: Any = None,
             global_batch_size: int | None = None, num_microbatches: int = 1,
             process_count: int | None = None) -> None:
    """Fails fast with a readable error before anything is compiled.

    Checks: every rule's mesh axes exist on ``mesh``; every logical name used by the params
    has a rule; the global batch (and each microbatch) divides ``data * fsdp``; on multi-host,
    the per-process batch divides this process's share of the batch shards; every sharded
    parameter dimension is divisible by the product of the mesh axes it is sharded over.
    """
    for name, entry in rules:
        missing = [a for a in _mesh_axes_of(entry) if a not in mesh.shape]
        if missing:
            raise ValueError(f"axis rule ({name!r}, {entry!r}) names mesh axis {missing[0]!r} "
                             f"which is not in the mesh axes {tuple(mesh.shape)}")

    if global_batch_size is not None:
        shards = math.prod(mesh.shape[a] for a in BATCH_MESH_AXES)
        if global_batch_size % num_microbatches:
            raise ValueError(f"global batch {global_batch_size} does not divide into "
                             f"{num_microbatches} microbatches")
        micro = global_batch_size // num_microbatches
        if micro % shards:
            raise ValueError(
                f"(micro)batch {micro} (global batch {global_batch_size} / {num_microbatches} "
                f"microbatches) is not divisible by data*fsdp = {mesh.shape[axes.DATA]}*"
                f"{mesh.shape[axes.FSDP]} = {shards}")
        processes = jax.process_count() if process_count is None else process_count
        if global_batch_size % processes:
            raise ValueError(f"global batch {global_batch_size} is not divisible by the "
                             f"{processes} processes")
        per_process = global_batch_size // processes
        local_shards = max(1, shards // processes)
        if per_process % local_shards:
            raise ValueError(f"per-process batch {per_process} is not divisible by the "
                             f"{local_shards} batch shards each process holds")

    if abstract_params is None:
        return
    known = {name for name, _ in rules}
    flat = jax.tree_util.tree_flatten_with_path(
        abstract_params, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))[0]
    for path, leaf in flat:
        if not isinstance(leaf, meta.AxisMetadata):
            continue
        names = tuple(leaf.names)
        shape = np.shape(leaf.value)
        where = _path_str(path)
        if len(names) != len(shape):
            raise ValueError(f"parameter {where} has shape {shape} but {len(names)} logical "
                             f"axes {names}")
        unknown = [n for n in names if isinstance(n, str) and n not in known]
        if unknown:
            raise ValueError(f"parameter {where} uses logical axis {unknown[0]!r} that has no "
                             f"rule (add it to modeling/axes.py and every preset)")
        mesh_axes = nn.logical_to_mesh_axes(names, list(rules))
        for dim, (size, entry) in enumerate(zip(shape, mesh_axes, strict=True)):
            ways = math.prod(mesh.shape[a] for a in _mesh_axes_of(entry))
            if size % ways:
                raise ValueError(
                    f"parameter {where} with shape {shape}: dimension {dim} "
                    f"({names[dim]!r}, size {size}) is not divisible by mesh axis "
                    f"{entry!r} of size {ways}; {_divisor_hint(size, ways, entry)}")


def _divisor_hint(size: int, ways: int, entry: Any) -> str:
    """What would fix a weight that does not divide over its mesh axes."""
    fits = [d for d in range(2, min(size, 4 * ways) + 1) if size % d == 0][:4]
    axes = " x ".join(_mesh_axes_of(entry))
    if not fits:
        return f"a size of {size} cannot be split: use a sharding preset that keeps it whole"
    return (f"use a {axes} size of {' or '.join(map(str, fits))} (sizes that divide {size}), "
            "or a sharding preset that does not split this axis")
