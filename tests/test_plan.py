"""launch/plan.py: the compiler's bytes against an independent count and against live arrays.

TPU tests need the ``plan`` extra (libtpu) and are skipped without it; the CPU fallback and the
GPU (analytic) path always run. Configs are tiny, widened where a TPU test needs every
per-device dimension to be a multiple of TPU's 128-lane tile (else the compiler's figure
includes tile padding that a shape count does not).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import electra as electra_configs
from configs import t5 as t5_configs
from launch import plan, plan_chips, plan_report
from tests.helpers import REPO

needs_libtpu = pytest.mark.skipif(plan_chips.libtpu_version() is None,
                                  reason="libtpu not installed (pip install -e '.[plan]')")


def t5_config(**model):
    config = t5_configs.get_config("tiny")
    config.model.scan_layers = True
    for key, value in model.items():
        config.model[key] = value
    return config


def n_params(program):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(program["params"]))


def cpu_plan(config, topology):
    target = plan_chips.parse_target(topology)
    devices, compiler = plan.devices_for(target, use_cpu=True)
    return plan.make_plan(config, target, devices, compiler)


def test_dp_adam_count_is_params_times_three_times_four_bytes():
    # dp replicates everything, so the per-device count is the whole model: parameters x 4
    # bytes x (1 + 2 Adam slots), with the parameter count taken from the model's own shapes.
    config = electra_configs.get_config("tiny")
    config.sharding = "dp"
    config.mesh.data, config.mesh.fsdp = -1, 1
    result = cpu_plan(config, "v5e:2x2")
    from objectives import registry

    objective = registry.build(config)
    count = n_params(jax.eval_shape(objective.init_fn, jax.random.key(0)))
    assert result.analytic["params"] == 4 * count
    assert result.analytic["opt_state"] == 2 * 4 * count
    batch = 8 // 4 * 64 * 4 * len(objective.batch_spec)  # int32 rows of this device
    assert result.analytic["batch"] == batch
    # The CPU compiler's arguments are the same arrays: state (+ two int32 counters) + batch.
    assert 0 <= result.memory["arguments"] - (12 * count + batch) <= 64


def test_cpu_fallback_matches_live_shards_of_a_real_state():
    # Plan for 8 devices, then allocate the trainer's real state on the 8 CPU devices and sum
    # what device 0 actually holds.
    from launch import mesh as mesh_lib
    from launch import step

    config = t5_config()
    result = cpu_plan(config, "v5e:2x4")
    program = step.build(config, mesh_lib.make_mesh(1, -1, 1, devices=jax.devices()[:8]))
    state = program.init_state()
    device = jax.devices()[0]
    live = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards
               if s.device == device)
    batch = sum(int(np.prod(shape)) // 8 * 4 for shape, _ in program.objective.batch_spec.values())
    # jit drops inputs the step never reads: T5's relative attention never reads
    # encoder_positions (this device's row: 64 int32).
    unused = 64 * 4
    assert result.memory["arguments"] == live + batch - unused
    assert result.memory["aliased"] == live  # the donated state, reused for the new one
    count = result.analytic
    # The count leaves out Adafactor's zeros([1]) placeholders and the int32 step counters.
    small = sum(x.nbytes for x in jax.tree.leaves(state) if x.shape in ((), (1,)))
    assert count["params"] + count["opt_state"] == live - small
    assert count["batch"] == batch


@needs_libtpu
def test_tpu_compiler_bytes_match_the_count_on_v5e():
    # Width 512 over fsdp=4: 128 per device, one full TPU tile, so no padding.
    config = t5_config(d_model=512, num_heads=4, head_dim=128, d_ff=512)
    target = plan_chips.parse_target("v5e:2x2")
    devices, compiler = plan.devices_for(target, use_cpu=False)
    assert devices[0].device_kind == "TPU v5 lite"
    result = plan.make_plan(config, target, devices, compiler)
    count = result.analytic
    state = count["params"] + count["opt_state"]
    # Small vectors (norm scales, relative-position tables) still pad to a tile: within 3%.
    assert result.memory["arguments"] == pytest.approx(state + count["batch"], rel=0.03)
    assert result.memory["aliased"] == pytest.approx(state, rel=0.03)
    assert result.memory["temporaries"] > 0
    text = plan_report.render(result)
    assert "TPU compiler" in text and "FITS" in text
    # XLA's FLOPs (per device x devices) against the trainer's count: matmuls dominate. Only
    # unrolled: XLA counts a scanned layer loop's body once.
    config.model.scan_layers = False
    unrolled = plan.make_plan(config, target, devices, compiler)
    assert unrolled.xla_flops == pytest.approx(unrolled.model_flops, rel=0.15)
    assert unrolled.memory["arguments"] == pytest.approx(result.memory["arguments"], rel=0.01)


@needs_libtpu
def test_sweep_remat_trades_temporaries_for_flops_on_tpu():
    # Enough tokens per device (16 x 256/64) that activations dominate the temporaries (at 8 x
    # 256/64 they stopped doing so once attention saved only its probabilities: 21.8 MB without
    # remat, 26.0 MB with full remat).
    base = t5_config()
    base.data.batch_size, base.data.inputs_length, base.data.targets_length = 64, 256, 64
    target = plan_chips.parse_target("v6e:2x2")
    devices, compiler = plan.devices_for(target, use_cpu=False)
    configs = plan.sweep_configs(base, models=[1], remats=["none", "full"], micros=[1])
    assert [label for label, _ in configs] == ["model=1 remat=none micro=1",
                                               "model=1 remat=full micro=1"]
    plain, full = (plan.make_plan(c, target, devices, compiler, label=label)
                   for label, c in configs)
    assert full.memory["temporaries"] < plain.memory["temporaries"]
    # The forward pass runs again in the backward (XLA counts the scanned body once; the
    # recomputation is in that body, so the order holds).
    assert full.xla_flops > plain.xla_flops
    assert full.model_flops == plain.model_flops
    assert "least recomputation" in plan_report.sweep_summary([plain, full])
    assert plain.label in plan_report.sweep_summary([plain, full])


def test_gpu_plan_is_analytic_and_says_so():
    config = t5_config()
    config.mesh.fsdp = -1
    target = plan_chips.parse_target("h100:8")
    devices, compiler = plan.devices_for(target, use_cpu=False)
    assert devices is None
    result = plan.make_plan(config, target, devices, compiler)
    assert result.memory is None and result.xla_flops is None
    cpu = cpu_plan(t5_config(), "v5e:2x4")  # the same 8-way fsdp, counted the same way
    assert result.analytic == cpu.analytic
    assert "no offline compiler for GPUs" in plan_report.render(result)


def test_bad_topology_is_one_sentence():
    with pytest.raises(ValueError, match="v4:4x4x8"):
        plan_chips.parse_target("v3:2x2")


def test_cli_exits_nonzero_naming_the_largest_consumer():
    # A tiny model with an enormous batch: activations (temporaries) overflow a v5e's 16 GiB.
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "launch.plan", "--config=configs/t5.py:tiny",
         "--topology=v5e:2x2", "--config.data.batch_size=2048",
         "--config.data.inputs_length=2048", "--config.data.targets_length=512"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DOES NOT FIT" in proc.stdout
    assert "Largest consumer: temporaries" in proc.stderr
    assert "remat" in proc.stderr and "microbatches" in proc.stderr
