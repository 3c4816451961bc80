"""A sweep on a real SLURM cluster (tests/slurm/up.sh starts a one-node one on this machine).

Two runs of tiny T5: ``one`` (one task, 8 CPU devices) and ``two`` (``srun`` with 2 tasks of 4
devices, two jax.distributed processes over gloo). ``two`` is requeued by SLURM in the middle
(as a preemption does), then cancelled in the middle and resubmitted by ``launch.sweep retry``;
each time it resumes from its checkpoint, and its losses still equal the uninterrupted
one-process run's. If SLURM cannot start, the test fails with the daemons' logs.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from launch import sweep as sweep_cli
from launch import sweep_state
from tests.helpers import REPO, losses, sweep_run

STEPS = 16  # two runs identically to one for ~20 steps; later, float noise grows (chaos)
SWEEP = f'''
from launch.sweep_spec import Sweep, named

COMMON = {{"config.data.source": "synthetic", "config.train.steps": {STEPS},
          "config.train.eval_every": 0, "config.checkpoint.every": 4,
          "config.train.tensorboard": False, "config.train.peak_flops": 1e9,
          "slurm.cpus_per_task": 1, "env.JAX_PLATFORMS": "cpu"}}


def get_sweep():
    return Sweep(name="slurm_test", config="configs/t5.py:tiny", fixed=COMMON, axes=named({{
        "one": {{"slurm.ntasks_per_node": 1,
                "env.XLA_FLAGS": "--xla_force_host_platform_device_count=8"}},
        "two": {{"slurm.ntasks_per_node": 2,
                "env.XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                "config.distributed.cpu_collectives": "gloo",
                "config.distributed.initialization_timeout": 120}},
    }}))
'''


@pytest.fixture(scope="module")
def slurm():
    result = subprocess.run(["bash", os.path.join(REPO, "tests", "slurm", "up.sh")],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"SLURM did not start (tests/slurm/up.sh):\n{result.stdout}\n"
                    f"{result.stderr}", pytrace=False)


def _states(root):
    _, runs = sweep_state.read_manifest(str(root))
    return {s.run.name: s for s in sweep_cli._statuses(runs)}


def _logs(root):
    text = []
    for name in ("one", "two"):
        folder = root / name / "sweep"
        for log in sorted(folder.glob("slurm-*.log")) if folder.is_dir() else []:
            text.append(f"----- {log} -----\n" + log.read_text()[-3000:])
    return "\n".join(text)


def _wait(root, what, predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = _states(root)
        if predicate(states):
            return states
        if any(s.state == "failed" for s in states.values()):
            break
        time.sleep(0.5)
    squeue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
    pytest.fail(f"waiting for {what}: states "
                f"{ {n: (s.state, s.step, s.detail) for n, s in _states(root).items()} }\n"
                f"{squeue}\n{_logs(root)}", pytrace=False)


@pytest.fixture
def root(tmp_path):
    """The sweep's root; its SLURM jobs are cancelled when the test ends, however it ends."""
    yield tmp_path / "root"
    ids = [s.job["id"] for s in _states(tmp_path / "root").values() if s.job] if (
        tmp_path / "root" / sweep_state.MANIFEST).exists() else []
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def _scontrol(*args):
    result = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_two_task_run_survives_requeue_and_cancel(slurm, tmp_path, root):
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(SWEEP)
    out = sweep_run("--sweep", str(sweep_file), "--root", str(root), "--backend=slurm")
    assert "one: submitted as SLURM job" in out and "two: submitted as SLURM job" in out
    script = (root / "two" / "sweep" / "job.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --requeue" in script
    assert "srun --kill-on-bad-exit=1" in script

    # Preemption: SLURM requeues `two` in the middle; it saves its step and restarts.
    states = _wait(root, "two at step 3", lambda s: (s["two"].step or 0) >= 3)
    job = states["two"].job["id"]
    _scontrol("requeue", job)
    _wait(root, "two requeued", lambda s: s["two"].detail.startswith("slurm PENDING"))
    saved = max(int(d) for d in os.listdir(root / "two" / "checkpoints") if d.isdigit())
    assert 3 <= saved < STEPS
    _scontrol("update", f"JobId={job}", "StartTime=now")  # requeued jobs wait 2 minutes

    # A user cancels it in the middle of its second attempt: preempted, then `retry`.
    _wait(root, "two resumed and 2 steps on", lambda s: s["two"].state == "running"
          and (s["two"].step or 0) >= saved + 2)
    subprocess.run(["scancel", job], check=True)
    states = _wait(root, "two preempted", lambda s: s["two"].state == "preempted")
    assert "preempted" in sweep_run("status", "--root", str(root))
    assert states["one"].state == "done"
    out = sweep_run("retry", "--root", str(root))
    assert "two: submitted as SLURM job" in out and "one:" not in out
    _wait(root, "two done", lambda s: s["two"].state == "done")

    log = "".join(p.read_text() for p in sorted((root / "two" / "sweep").glob("slurm-*.log")))
    assert log.count("resumed from") == 2, _logs(root)
    assert f"resumed from {root / 'two' / 'checkpoints'}/{saved}" in log
    assert "(restart 1)" in log  # SLURM's own requeue, same job id
    attempts = [json.loads(line) for line in
                (root / "two" / "sweep" / "jobs.jsonl").read_text().splitlines()]
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[0]["id"] == job
    # Every step logged once, and the two processes trained exactly like one process.
    one, two = losses(root / "one"), losses(root / "two")
    assert len(one) == len(two) == STEPS
    np.testing.assert_allclose(two, one, rtol=2e-5)


def test_missing_sbatch_is_a_clear_error(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # python, but no SLURM
    sweep_file, root = tmp_path / "sweep.py", tmp_path / "root"
    sweep_file.write_text(SWEEP)
    result = subprocess.run(
        [sys.executable, "-m", "launch.sweep", "--sweep", str(sweep_file), "--root", str(root),
         "--backend=slurm"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--backend=slurm needs `sbatch`, `squeue`, `scontrol` on PATH" in result.stderr
    assert "nothing was started" in result.stderr
    assert not root.exists()
