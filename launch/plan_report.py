"""The plan's table, its advice when a step does not fit, and the sweep's rows.

Everything is per device (= per chip: v4 is planned as megacore) unless it says "total". GiB
throughout, so the figures compare directly with the HBM column of ``launch/plan_chips.py``.
"""

from __future__ import annotations

from typing import Any

from launch.plan_chips import GiB


def _gib(n: float | None, unit: int = GiB) -> str:
    return "-" if n is None else f"{n / unit:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _flops(n: float | None) -> str:
    if n is None:
        return "-"
    scale, name = (1e15, "PFLOP") if n >= 1e15 else (1e12, "TFLOP") if n >= 1e12 else (
        1e9, "GFLOP")
    return f"{n / scale:,.2f} {name}"


def render(plan: Any) -> str:
    """The one table: memory per device (compiler vs count), fit, FLOPs, predicted speed."""
    a, m, t = plan.analytic, plan.memory, plan.target
    mesh = " ".join(f"{k}={v}" for k, v in plan.mesh.items())
    scan = "on (the plan's default; --no_scan plans the unrolled program)" if plan.scan else "off"
    lines = [
        f"plan: {plan.label}",
        f"target: {t.label}; compiled by: {plan.compiler}; took {plan.seconds:.1f} s",
        f"mesh: {mesh}; sharding={plan.sharding}; scan over layers: {scan}; "
        f"remat={plan.remat}; microbatches={plan.microbatches}; matmul dtype={plan.dtype}",
    ]
    if m is None:
        lines.append("GPU: no offline compiler for GPUs here, so memory is the analytic state "
                     "(params + optimizer + gradients + batch) WITHOUT activations: a lower "
                     "bound, and the FLOPs are the model count only.")
    elif plan.refused:
        lines.append(f"the TPU compiler REFUSED the program: {plan.refused}; its temporaries "
                     "are from that message, arguments/outputs from the count")
    elif not plan.compiler.startswith("TPU"):
        lines.append("NOTE: compiled for CPU devices: arguments/outputs are the real arrays, "
                     "temporaries are XLA:CPU's, not the TPU's.")
    # GiB for real models, MiB for the small configs of tests and smoke runs.
    unit, unit_name = (GiB, "GiB") if plan.peak_bytes >= GiB // 4 else (1024**2, "MiB")

    def size(n: float | None) -> str:
        return _gib(n, unit)

    row = "{:<44}{:>12}{:>12}"
    lines += ["", row.format(f"per device ({unit_name})", "compiler", "count")]
    state = a["params"] + a["opt_state"]
    lines += [
        row.format("  parameters (f32)", "", size(a["params"])),
        row.format("  optimizer state", "", size(a["opt_state"])),
        row.format("  batch shard", "", size(a["batch"])),
        row.format("  arguments = params + optimizer + batch",
                   size(m and m["arguments"]), size(state + a["batch"])),
        row.format("  outputs (new state, metrics)", size(m and m["outputs"]), size(state)),
        row.format("  aliased (donated state reused)", size(m and m["aliased"]), size(state)),
        row.format("  temporaries (activations, gradients)", size(m and m["temporaries"]),
                   ""),
        row.format("  gradients (XLA may fuse them into the update)", "", size(a["gradients"])),
        row.format("  generated code", size(m and m["code"]), ""),
        row.format("  peak = args + outputs - aliased + temp", size(plan.peak_bytes), ""),
        row.format(f"  HBM per chip ({t.chip.name})", size(t.chip.hbm_bytes), ""),
    ]
    headroom = t.chip.hbm_bytes - plan.peak_bytes
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    if m is not None and plan.compiler.startswith("TPU") and m["arguments"] > 1.05 * (
            state + a["batch"]):
        lines.append("  (the TPU pads each array to (8, 128) tiles: small dimensions per "
                     "device make the compiler's arguments exceed the shape count)")
    lines.append(row.format("  headroom", size(headroom), "")
                 + f"   {verdict} ({100 * headroom / t.chip.hbm_bytes:+.0f}% of HBM)")
    lines += ["", row.format("FLOPs per step (total)", "", "")]
    lines.append(row.format("  model (trainer's count)", "", _flops(plan.model_flops)))
    if plan.xla_flops is not None and plan.scan:
        # XLA's cost analysis counts a while loop's body once, not once per iteration.
        lines.append(row.format("  XLA cost analysis", _flops(plan.xla_flops), "")
                     + "   (scan: each layer loop counted ONCE; --no_scan for XLA's full count)")
    elif plan.xla_flops is not None:
        lines.append(row.format("  XLA cost analysis", _flops(plan.xla_flops), "")
                     + f"   ratio {plan.xla_flops / plan.model_flops:.2f} (includes remat, "
                     "softmax, optimizer)")
    step = plan.step_seconds
    lines += [
        "",
        f"at {100 * plan.mfu:.0f}% MFU of {t.chip.peak_flops / 1e12:.0f} TFLOP/s bf16 x "
        f"{t.num_chips} chips: step {step * 1e3:,.0f} ms, "
        f"{plan.tokens_per_step / step:,.0f} tokens/s, {plan.total_steps:,} steps in "
        f"{_duration(step * plan.total_steps)}",
    ]
    if plan.dtype != "bfloat16":
        lines.append(f"  (the config computes matmuls in {plan.dtype}; the peak above is bf16's: "
                     "--config.model.dtype=bfloat16 to plan the fast path)")
    return "\n".join(lines)


def advice(plan: Any) -> str:
    """Names the largest consumer and what would shrink it."""
    a, m = plan.analytic, plan.memory
    parts = {"parameters + optimizer state": a["params"] + a["opt_state"]}
    if m is not None:
        parts["temporaries (activations, gradients)"] = m["temporaries"]
    else:
        parts["gradients"] = a["gradients"]
    largest = max(parts, key=parts.get)
    over = plan.peak_bytes - plan.target.chip.hbm_bytes
    fixes = {
        "parameters + optimizer state": (
            "shard the state over more devices: a larger fsdp axis (--config.mesh.fsdp=-1 "
            "--config.mesh.data=1), --config.sharding=fsdp_tp with --config.mesh.model=N, or a "
            "bigger slice"),
        "temporaries (activations, gradients)": (
            "keep fewer activations: a remat policy (--config.model.remat_policy=full or dots), "
            "gradient accumulation (--config.train.microbatches=K), or a smaller per-device "
            "batch (--config.data.batch_size, or more devices on data/fsdp)"),
        "gradients": "shard over more devices (fsdp) or a bigger slice",
    }
    return (f"DOES NOT FIT: needs {_gib(plan.peak_bytes)} GiB per chip, {_gib(over)} GiB over "
            f"the {plan.target.chip.name}'s {_gib(plan.target.chip.hbm_bytes)} GiB. Largest "
            f"consumer: {largest} ({_gib(parts[largest])} GiB). Fix: {fixes[largest]}.")


def sweep_row(plan: Any) -> str:
    if isinstance(plan, str):
        return plan
    mesh = "x".join(str(v) for v in plan.mesh.values())
    return (f"{plan.label:<34} mesh {mesh:<9} peak {_gib(plan.peak_bytes):>7} GiB  "
            f"{'fits ' if plan.fits else 'NO   '} step {plan.step_seconds * 1e3:8,.0f} ms  "
            f"({plan.seconds:.0f} s to plan)")


def sweep_summary(plans: list[Any]) -> str:
    good = [p for p in plans if not isinstance(p, str) and p.fits]
    if not good:
        return "sweep: nothing fits; see the largest consumers above, or a bigger slice"
    # Same model FLOPs everywhere: prefer the least recomputation (XLA's count), then memory.
    best = min(good, key=lambda p: (p.xla_flops or p.model_flops, p.peak_bytes))
    return (f"sweep: {len(good)}/{len(plans)} fit; least recomputation, then least memory: "
            f"{best.label} ({_gib(best.peak_bytes)} GiB per chip)")
