"""Sweep files and their expansion into runs, each with its own workdir and locked config.

A sweep file (``configs/sweeps/NAME.py``) defines ``get_sweep()``::

    from launch.sweep_spec import Sweep, product, seeds, values

    def get_sweep():
        return Sweep(
            name="t5_objectives", config="configs/t5.py:tiny",
            fixed={"config.train.steps": 200},
            axes=product(values("config.objective.name", ["span_corruption", "prefix_lm"]),
                         seeds(2)))

Keys are written as on the command line, with a namespace:

- ``config.KEY``: a key of the base config (``configs/common.py``), as ``--config.KEY``;
- ``slurm.KEY``: the run's sbatch resources (:data:`SLURM_KEYS`);
- ``tpu.KEY``: the run's Cloud TPU slice (:data:`TPU_KEYS`);
- ``env.NAME``: an environment variable of the run's processes.

An axis is a list of points, each a name part and its overrides: :func:`values`, :func:`seeds`,
:func:`named` (runs with explicit names), combined by :func:`product` and :func:`zipped`. A
:class:`Stage` after the sweep's own runs trains every run of the stage before it once per point
of its axes, with ``config.train.init_from`` set to that run's workdir and only after it is done.

:func:`expand` resolves every run's config (the same locked ``ConfigDict`` ``launch.train``
would build) and fails, before anything is written, on a key the config does not have, a value
of the wrong type, an unknown ``slurm``/``tpu`` key or two runs resolving to the same workdir.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# sbatch resources a run may set (None: not passed to sbatch).
SLURM_KEYS: dict[str, Any] = {
    "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": None, "gpus_per_node": None,
    "partition": None, "time": None, "account": None, "qos": None, "mem": None,
    "constraint": None, "extra": (),  # extra: more sbatch options, e.g. ("--exclusive",)
}
# A run's Cloud TPU slice. Runs naming the same ``slice`` run one after another on it.
TPU_KEYS: dict[str, Any] = {
    "project": None, "zone": None, "accelerator_type": None, "version": None,
    # "on_demand" | "spot" (tpu-vm create --spot) | "queued" | "queued_spot" (queued resources)
    "provisioning": "on_demand", "slice": None,
    "setup": (),  # shell commands run on every worker after the install (mounts, ...)
    "extra_create_flags": (),
    "workdir_root": None,  # where runs write on the workers: a path every worker mounts
    # The CPython the workers install pretrax into (a uv venv; jax >= 0.10 needs >= 3.11,
    # newer than the TPU images' system python)
    "python": "3.11",
}
NAMESPACES = ("config", "slurm", "tpu", "env")
_NAME = re.compile(r"^[A-Za-z0-9._=,+@-]+$")


class SweepError(ValueError):
    """A sweep that cannot expand; the message names the file, the run and the key."""


# ---------------------------------------------------------------------------------------------
# Axes.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Point:
    """One coordinate of a sweep: a part of the run name and the overrides it sets."""
    name: str
    overrides: Mapping[str, Any]


def _format(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9._+@-]", "_", text)


def values(key: str, vals: Iterable[Any], label: str | None = None) -> list[Point]:
    """One point per value of ``key``, named ``label=value`` (label: the key minus ``config.``;
    ``""`` leaves the key out of run names, e.g. for a key zipped with a named one)."""
    label = key.removeprefix("config.") if label is None else label
    return [Point(f"{label}={_format(v)}" if label else "", {key: v}) for v in vals]


def seeds(n_or_list: int | Sequence[int]) -> list[Point]:
    """``config.seed`` over ``range(n)`` or the given seeds."""
    seeds_ = range(n_or_list) if isinstance(n_or_list, int) else n_or_list
    return values("config.seed", seeds_, label="seed")


def named(runs: Mapping[str, Mapping[str, Any]]) -> list[Point]:
    """Runs with explicit names: ``named({"base": {}, "wide": {"config.model.d_model": 64}})``."""
    return [Point(name, dict(overrides)) for name, overrides in runs.items()]


def _merge(points: Sequence[Point]) -> Point:
    overrides: dict[str, Any] = {}
    for point in points:
        for key in point.overrides:
            if key in overrides:
                raise SweepError(f"key {key!r} is set by two combined axes "
                                 f"({', '.join(p.name for p in points)})")
        overrides.update(point.overrides)
    return Point(",".join(p.name for p in points if p.name), overrides)


def product(*axes: Sequence[Point]) -> list[Point]:
    """Every combination (the last axis varies fastest)."""
    return [_merge(combo) for combo in itertools.product(*axes)]


def zipped(*axes: Sequence[Point]) -> list[Point]:
    """The i-th point of every axis together; the axes must be equally long."""
    lengths = [len(axis) for axis in axes]
    if len(set(lengths)) > 1:
        raise SweepError(f"zipped axes have different lengths {lengths}")
    return [_merge(combo) for combo in zip(*axes, strict=True)]


@dataclasses.dataclass(frozen=True)
class Stage:
    """Runs started from each finished run of the previous stage (e.g. fine-tuning)."""
    name: str
    config: str
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    axes: Sequence[Point] = (Point("", {}),)
    parent_key: str = "config.train.init_from"  # set to the parent run's workdir
    # Keys copied from each parent's overrides (e.g. "config.seed": fine-tune with the seed the
    # parent was pretrained with).
    inherit: Sequence[str] = ()
    # Runs of this stage with no parent, once per control x point of ``axes`` (e.g. the
    # from-scratch baselines of a fine-tuning stage: ``product(named({"scratch": {}}),
    # seeds(3))``); they start nothing after them.
    controls: Sequence[Point] = ()


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    config: str  # "configs/t5.py:tiny": a config file and its variant, as --config takes
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    axes: Sequence[Point] = (Point("", {}),)
    stages: Sequence[Stage] = ()
    stage_name: str = "pretrain"  # the first stage's directory when there are stages


# ---------------------------------------------------------------------------------------------
# Expansion.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    name: str  # unique; its workdir relative to the root (STAGE/NAME when there are stages)
    config: str  # the base config spec
    overrides: dict[str, Any]  # config.* keys, in order: sweep-wide, then the axes
    settings: dict[str, Any]  # slurm.*, tpu.*, env.* keys
    workdir: str  # where the run trains (on the cluster / TPU VMs)
    local_dir: str  # where the sweep writes its config and job files (== workdir but for tpu_vm)
    after: str | None = None  # the run that must be done first
    resolved: ml_collections.ConfigDict | None = dataclasses.field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields.pop("resolved")
        return fields

    def slurm(self) -> dict[str, Any]:
        return {**SLURM_KEYS, **{k[6:]: v for k, v in self.settings.items()
                                 if k.startswith("slurm.")}}

    def tpu(self) -> dict[str, Any]:
        return {**TPU_KEYS, **{k[4:]: v for k, v in self.settings.items()
                               if k.startswith("tpu.")}}

    def env(self) -> dict[str, str]:
        return {k[4:]: str(v) for k, v in self.settings.items() if k.startswith("env.")}


def load_sweep(path: str) -> Sweep:
    """``get_sweep()`` of a sweep file."""
    if not os.path.isfile(path):
        raise SweepError(f"--sweep={path}: no such file")
    spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{path}: defines no get_sweep()")
    sweep = module.get_sweep()
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: get_sweep() returned {type(sweep).__name__}, expected "
                         "launch.sweep_spec.Sweep")
    return sweep


_CONFIG_MODULES: dict[str, Any] = {}


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``configs/t5.py:tiny`` -> its locked config (the file is relative to cwd or the repo)."""
    file, _, arg = spec.partition(":")
    path = file if os.path.isfile(file) else os.path.join(REPO, file)
    if not os.path.isfile(path):
        raise SweepError(f"config {spec!r}: no file {file!r} (relative to the current directory "
                         f"or {REPO})")
    path = os.path.abspath(path)
    if path not in _CONFIG_MODULES:
        module_spec = importlib.util.spec_from_file_location(
            f"_sweep_config_{len(_CONFIG_MODULES)}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        _CONFIG_MODULES[path] = module
    try:
        config = _CONFIG_MODULES[path].get_config(arg or None)
    except ValueError as error:
        raise SweepError(f"config {spec!r}: {error}") from None
    config.lock()
    return config


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "config.") -> list[str]:
    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def apply_override(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    """``config.a.b = value`` with errors that name ``key`` and where it came from."""
    *sections, leaf = key.split(".")[1:]
    node = config
    for section in sections:
        node = node.get(section) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node or isinstance(
            node[leaf], ml_collections.ConfigDict):
        close = difflib.get_close_matches(key, _flat_keys(config), n=3)
        raise SweepError(f"{where}: {key} does not exist in the config"
                         + (f"; did you mean {' or '.join(close)}?" if close else ""))
    try:
        node[leaf] = value
    except (TypeError, ValueError) as error:
        raise SweepError(f"{where}: {key}={value!r}: {error}") from None


def _check_setting(key: str, where: str) -> None:
    namespace, _, name = key.partition(".")
    if namespace not in NAMESPACES or not name:
        raise SweepError(f"{where}: key {key!r} has no namespace; expected one of "
                         f"{', '.join(n + '.KEY' for n in NAMESPACES)}")
    known = {"slurm": SLURM_KEYS, "tpu": TPU_KEYS}.get(namespace)
    if known is not None and name not in known:
        raise SweepError(f"{where}: {key} is not a {namespace} setting; expected one of "
                         f"{sorted(known)}")


def _make_run(name: str, config_spec: str, overrides: Mapping[str, Any], root: str,
              run_root: str, after: str | None, sweep_file: str, staged: bool) -> Run:
    """``staged``: ``name`` is ``STAGE/NAME``."""
    parts = name.split("/", 1) if staged else [name]
    if not all(_NAME.match(part) and part not in (".", "..") for part in parts):
        raise SweepError(f"{sweep_file}: run name {parts[-1]!r} may only hold letters, digits "
                         "and ._=,+@-")
    where = f"{sweep_file}: run {name}"
    config = load_config(config_spec)
    config_overrides, settings = {}, {}
    for key, value in overrides.items():
        _check_setting(key, where)
        if key.startswith("config."):
            apply_override(config, key, value, where)
            config_overrides[key] = value
        else:
            settings[key] = value
    from objectives import registry  # the config files import jax already

    if config.objective.name not in registry.OBJECTIVES:
        raise SweepError(f"{where}: config.objective.name={config.objective.name!r} is not an "
                         f"objective; expected one of {sorted(registry.OBJECTIVES)}")
    return Run(name=name, config=config_spec, overrides=config_overrides, settings=settings,
               workdir=os.path.join(run_root, name), local_dir=os.path.join(root, name),
               after=after, resolved=config)


def expand(sweep: Sweep, root: str, sweep_file: str = "sweep",
           run_root: str | None = None) -> list[Run]:
    """Every run of ``sweep`` under ``root`` (``run_root``: where runs train, if elsewhere)."""
    root = os.path.abspath(root)
    run_root = run_root or root
    prefix = f"{sweep.stage_name}/" if sweep.stages else ""
    runs = [_make_run(prefix + (point.name or sweep.name), sweep.config,
                      {**sweep.fixed, **point.overrides}, root, run_root, None, sweep_file,
                      bool(sweep.stages))
            for point in sweep.axes]
    parents = runs
    for stage in sweep.stages:
        children = []
        for parent in parents:
            base = parent.name.split("/", 1)[-1]
            for point in stage.axes:
                name = f"{stage.name}/{base}" + (f",{point.name}" if point.name else "")
                missing = [key for key in stage.inherit if key not in parent.overrides]
                if missing:
                    raise SweepError(f"{sweep_file}: stage {stage.name} inherits {missing} "
                                     f"from run {parent.name}, which does not set it")
                inherited = {key: parent.overrides[key] for key in stage.inherit}
                overrides = {**stage.fixed, **inherited, **point.overrides,
                             stage.parent_key: parent.workdir}
                children.append(_make_run(name, stage.config, overrides, root, run_root,
                                          parent.name, sweep_file, True))
        controls = [_make_run(f"{stage.name}/{merged.name}", stage.config,
                              {**stage.fixed, **merged.overrides}, root, run_root, None,
                              sweep_file, True)
                    for merged in (_merge((control, point)) for control in stage.controls
                                   for point in stage.axes)]
        runs += children + controls
        parents = children
    seen: dict[str, Run] = {}
    for run in runs:
        key = os.path.normpath(run.local_dir)
        if key in seen:
            raise SweepError(
                f"{sweep_file}: runs {seen[key].name!r} ({seen[key].overrides}) and {run.name!r} "
                f"({run.overrides}) resolve to the same workdir {run.workdir}; give the axis a "
                "label or the runs distinct names")
        seen[key] = run
    return runs


def override_flags(run: Run) -> list[str]:
    """``--config.KEY=VALUE`` for each override, as ``launch.train`` parses them."""
    flags = []
    for key, value in run.overrides.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        flags.append(f"--{key}={text}")
    return flags
