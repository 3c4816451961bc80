"""Plan a run before renting the pod: will the train step fit, how fast, on what.

``python -m launch.plan --config=configs/t5.py:t5_1_1_xxl --topology=v4:4x4x8
--config.mesh.model=8 --config.sharding=fsdp_tp`` builds the trainer's own program
(``launch/step.py``: the same objective, optimizer, shardings and donation) on a mesh of the
topology's devices and compiles its train step ahead of time on abstract inputs, so no parameter
is allocated. With ``libtpu`` installed (``pip install -e ".[plan]"``) the TPU compiler compiles
for real TPU device descriptions on this CPU-only machine and its ``memory_analysis`` and
``cost_analysis`` are what the table reports. Without it the plan compiles for as many CPU
devices and says its memory figures are CPU figures (XLA:CPU makes different fusion and layout
choices, so temporaries differ; arguments and outputs are the same arrays). GPU targets
(``--topology=h100:64``) are analytic only: there is no offline GPU compiler here.

Next to the compiler's numbers stands an independent count made from parameter shapes and the
sharding rules alone: parameters x 4 bytes x (1 + optimizer slots) per shard (Adam: 2 full
slots; Adafactor: its row and column factors), the batch shard, and gradients (one more copy
of the parameter shard). Model FLOPs are the trainer's count (``objective.flops_per_step``,
PERFORMANCE.md's convention); XLA's count also includes remat recomputation, attention
softmax and the optimizer.

Scan over layers is on by default (``--no_scan`` plans the unrolled program): the compile time
then does not grow with depth, and the memory is what a scanned run uses. Exit status is 1
when the step does not fit, with the largest consumer and what would fix it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from launch import plan_chips, plan_report

FLAGS = flags.FLAGS

def define_flags() -> None:
    """The command line's flags; defined only when run as a program, so importing this module
    next to ``launch.train`` (in one test process) does not define ``--config`` twice."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file and variant, e.g. configs/t5.py:t5_1_1_xxl.",
        lock_config=True)
    flags.DEFINE_string(
        "topology", None,
        "TPU topology (v4:4x4x8, v5e:16x16, v5p:4x4x4, v6e:4x4) or GPUs (h100:64).")
    flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilisation for the time estimate.")
    flags.DEFINE_bool("no_scan", False, "Plan the unrolled program (slow for deep models).")
    flags.DEFINE_bool("cpu", False, "Compile for CPU devices even when libtpu is installed.")
    flags.DEFINE_bool("sweep", False, "Plan every mesh / remat / microbatch combination.")
    flags.DEFINE_list("sweep_model", None, "Sweep: model-axis sizes (default: 1 and the config's).")
    flags.DEFINE_list("sweep_remat", ["none", "full"], "Sweep: remat policies.")
    flags.DEFINE_list("sweep_microbatches", ["1", "4"], "Sweep: microbatch counts.")
    flags.mark_flags_as_required(["config", "topology"])


# ---------------------------------------------------------------------------------------------
# The independent count: shapes x sharding rules, no compiler involved.
# ---------------------------------------------------------------------------------------------
def _shard_elements(shape: tuple[int, ...], ways: tuple[int, ...], keep: tuple[int, ...]) -> int:
    return math.prod(shape[i] // ways[i] for i in keep)


def analytic_bytes(config: Any, program: Any) -> dict[str, int]:
    """Per-device bytes of parameters, optimizer state, gradients and the batch shard.

    Reads only logical axis names, shapes, the rule preset and the mesh sizes: each dimension
    is divided by the mesh axes its rule names. Optimizer slots: Adam keeps two full-size
    moments; Adafactor keeps, per weight with row and column axes (``axes.FACTOR_RULES``), the
    weight without its column axes plus the weight without its row axes, else one full copy.
    """
    import flax.linen as nn
    import jax

    from launch import mesh as mesh_lib
    from modeling import axes

    boxed = jax.eval_shape(program.objective.init_fn, program.init_key)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    adam = config.optimizer.name != "adafactor"
    params = opt = 0
    for leaf in leaves:
        value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
        names = tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else (None,) * value.ndim
        mesh_axes = nn.logical_to_mesh_axes(names, list(program.rules))
        ways = tuple(math.prod(program.mesh.shape[a] for a in mesh_lib._mesh_axes_of(e))
                     for e in mesh_axes)
        dims = tuple(range(value.ndim))
        size = value.dtype.itemsize
        params += size * _shard_elements(value.shape, ways, dims)
        if adam:
            opt += 2 * size * _shard_elements(value.shape, ways, dims)
            continue
        kinds = [axes.FACTOR_RULES.get(n, axes.NONE) if n else axes.NONE for n in names]
        row = tuple(i for i in dims if kinds[i] == axes.ROW)
        col = tuple(i for i in dims if kinds[i] == axes.COLUMN)
        if row and col:
            without_col = tuple(i for i in dims if i not in col)
            without_row = tuple(i for i in dims if i not in row)
            opt += 4 * (_shard_elements(value.shape, ways, without_col)
                        + _shard_elements(value.shape, ways, without_row))
        else:
            opt += 4 * _shard_elements(value.shape, ways, dims)
    batch_shards = math.prod(program.mesh.shape[a] for a in mesh_lib.BATCH_MESH_AXES)
    batch = sum(math.prod(shape) // batch_shards * jax.numpy.dtype(dtype).itemsize
                for shape, dtype in program.objective.batch_spec.values())
    return {"params": params, "opt_state": opt, "gradients": params, "batch": batch}


# ---------------------------------------------------------------------------------------------
# One plan.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    label: str  # config + overrides
    target: plan_chips.Target
    compiler: str  # "tpu (libtpu X)" | "cpu" | "analytic"
    mesh: dict[str, int]
    sharding: str
    scan: bool
    remat: str
    microbatches: int
    analytic: dict[str, int]
    memory: dict[str, int] | None  # the compiler's memory_analysis, per device
    xla_flops: float | None  # cost_analysis flops summed over devices
    model_flops: float
    tokens_per_step: int
    total_steps: int
    seconds: float  # build + lower + compile
    mfu: float
    dtype: str
    refused: str = ""  # the TPU compiler's out-of-memory message, when it refused to compile

    @property
    def peak_bytes(self) -> int:
        """Compiled: arguments + outputs - donated aliases + temporaries + code; else state."""
        if self.memory is None:
            a = self.analytic
            return a["params"] + a["opt_state"] + a["gradients"] + a["batch"]
        m = self.memory
        return m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["code"]

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.target.chip.hbm_bytes

    @property
    def step_seconds(self) -> float:
        chips = self.target.num_chips
        return self.model_flops / (chips * self.target.chip.peak_flops * self.mfu)


def devices_for(target: plan_chips.Target, use_cpu: bool) -> tuple[list[Any] | None, str]:
    """The devices to compile for and the compiler's name (None devices: analytic only)."""
    import jax

    if target.topology is None:
        return None, "analytic"
    version = plan_chips.libtpu_version()
    if version is not None and not use_cpu:
        return plan_chips.tpu_devices(target), f"TPU compiler (libtpu {version})"
    cpus = jax.devices("cpu")
    if len(cpus) < target.num_chips:
        raise ValueError(
            f"CPU fallback needs {target.num_chips} CPU devices for {target.topology}, this "
            f"process has {len(cpus)} (XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{target.num_chips}); or install libtpu: pip install -e '.[plan]'")
    why = "--cpu" if version is not None else "libtpu not installed"
    return cpus[:target.num_chips], f"CPU compiler ({why}: CPU memory figures)"


def _memory(compiled: Any) -> dict[str, int]:
    m = compiled.memory_analysis()
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
            "code": m.generated_code_size_in_bytes}


_OOM = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT])\)")


def _out_of_memory(message: str) -> dict[str, int] | None:
    """The TPU compiler refuses a program that does not fit; its message names the
    temporaries' size, which is all the plan needs (arguments/outputs come from the count,
    filled in by the caller)."""
    m = _OOM.search(message)
    if "RESOURCE_EXHAUSTED" not in message or m is None:
        return None
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)]
    return {"arguments": -1, "outputs": -1, "aliased": -1, "temporaries":
            int(float(m.group(1)) * scale), "code": 0}


def _xla_flops(compiled: Any, num_devices: int) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    # The SPMD program is one device's share: cost_analysis counts per device.
    return float(cost["flops"]) * num_devices


def make_plan(config: Any, target: plan_chips.Target, devices: list[Any] | None,
              compiler: str, *, mfu: float = 0.4, label: str = "") -> Plan:
    """Builds the trainer's program on ``devices`` and compiles its train step (if any)."""
    import jax

    from launch import mesh as mesh_lib
    from launch import step

    jax.config.update("jax_threefry_partitionable", True)  # as the trainer runs
    start = time.perf_counter()
    extra = {}
    shape = mesh_lib.resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.model,
                                        target.num_chips)
    if devices is None:
        # Analytic only: the program is still built (same shapes, same rules) on one CPU
        # device's worth of abstract mesh, so the count uses the requested mesh sizes.
        mesh = jax.sharding.AbstractMesh(shape, ("data", "fsdp", "model"))
        program = _abstract_program(config, mesh)
        memory = flops = None
    else:
        mesh = mesh_lib.make_mesh(*shape, devices=devices)
        program = step.build(config, mesh)
        try:
            compiled = program.lower().compile()
            memory, flops = _memory(compiled), _xla_flops(compiled, len(devices))
        except jax.errors.JaxRuntimeError as error:
            refused = _out_of_memory(str(error))
            if refused is None:
                raise
            memory, flops = refused, None
            extra["refused"] = str(error).strip().splitlines()[0]
    analytic = analytic_bytes(config, program)
    if memory is not None and memory["arguments"] < 0:
        state = analytic["params"] + analytic["opt_state"]
        memory.update(arguments=state + analytic["batch"], outputs=state, aliased=state)
    return Plan(label=label, target=target, compiler=compiler,
                mesh=dict(zip(("data", "fsdp", "model"), shape, strict=True)),
                sharding=config.sharding, scan=config.model.scan_layers,
                remat=config.model.remat_policy, microbatches=config.train.microbatches,
                analytic=analytic, memory=memory, xla_flops=flops,
                model_flops=program.objective.flops_per_step,
                tokens_per_step=program.objective.tokens_per_step,
                total_steps=config.train.steps, seconds=time.perf_counter() - start, mfu=mfu,
                dtype=config.model.dtype, **extra)


@dataclasses.dataclass(frozen=True)
class _AbstractProgram:
    """What ``analytic_bytes`` reads, for a mesh without devices (GPU plans)."""

    objective: Any
    init_key: Any
    rules: Any
    mesh: Any


def _abstract_program(config: Any, mesh: Any) -> _AbstractProgram:
    import jax

    from launch import mesh as mesh_lib
    from objectives import registry

    objective = registry.build(config)
    return _AbstractProgram(objective, jax.random.key(config.seed),
                            mesh_lib.RULES[config.sharding], mesh)


# ---------------------------------------------------------------------------------------------
# Sweep.
# ---------------------------------------------------------------------------------------------
def sweep_configs(config: Any, models: list[int], remats: list[str], micros: list[int]
                  ) -> list[tuple[str, Any]]:
    """(label, config) per combination; model > 1 switches the rule preset to fsdp_tp."""
    out = []
    for model in models:
        for remat in remats:
            for micro in micros:
                c = copy.deepcopy(config)
                c.mesh.model, c.mesh.data, c.mesh.fsdp = model, 1, -1
                if model > 1:
                    c.sharding = "fsdp_tp"
                c.model.remat_policy = remat
                c.train.microbatches = micro
                out.append((f"model={model} remat={remat} micro={micro}", c))
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        target = plan_chips.parse_target(FLAGS.topology)
    except ValueError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    use_cpu = FLAGS.cpu or plan_chips.libtpu_version() is None
    if target.topology is not None and use_cpu:
        # The CPU fallback needs one CPU device per chip; set before JAX's backend starts.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={target.num_chips}").strip()
    import jax

    jax.config.update("jax_platforms", "cpu")  # execution stays on CPU; TPUs are only described
    config = FLAGS.config
    config.model.scan_layers = not FLAGS.no_scan
    try:
        devices, compiler = devices_for(target, FLAGS.cpu)
        if not FLAGS.sweep:
            plan = make_plan(config, target, devices, compiler, mfu=FLAGS.mfu,
                             label=" ".join(sys.argv[1:]))
            print(plan_report.render(plan), flush=True)
            if not plan.fits:
                print(plan_report.advice(plan), file=sys.stderr, flush=True)
                return 1
            return 0
        models = [int(m) for m in (FLAGS.sweep_model or sorted({1, config.mesh.model}))]
        plans = []
        for label, c in sweep_configs(config, models, FLAGS.sweep_remat,
                                      [int(m) for m in FLAGS.sweep_microbatches]):
            try:
                plans.append(make_plan(c, target, devices, compiler, mfu=FLAGS.mfu,
                                       label=label))
            except ValueError as error:  # a mesh or microbatch count that does not divide
                plans.append(label + f": not valid ({error})")
            print(plan_report.sweep_row(plans[-1]), flush=True)
        print(plan_report.sweep_summary(plans), flush=True)
        return 0 if any(isinstance(p, Plan) and p.fits for p in plans) else 1
    except ValueError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
