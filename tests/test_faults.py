"""Faults a long run meets: a full disk during a checkpoint save (a real, small tmpfs)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO, cli_env, losses


def _train(workdir, steps=8):
    return subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/t5.py:tiny",
         f"--workdir={workdir}", "--config.data.source=synthetic",
         f"--config.train.steps={steps}", "--config.checkpoint.every=2",
         "--config.train.eval_every=0", "--config.train.tensorboard=false",
         "--config.train.peak_flops=1e9"],
        cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=600)


def _mount(path, size):
    # Needs root (CI runs as root); a failure here fails the test with mount's reason.
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True, text=True)


def test_disk_full_during_a_save_says_so_and_the_run_resumes_after(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(disk, "4m")  # one 2.4 MB checkpoint of configs/t5.py:tiny fits, two do not
    try:
        workdir = disk / "run"
        full = _train(workdir)
        assert full.returncode == 1
        # The last line says it all; orbax's own tracebacks of the full disk are filtered
        # (its timing warnings, e.g. a slow previous save on a loaded machine, may remain).
        assert full.stderr.strip().splitlines()[-1] == (
            f"ERROR: disk full while saving step 4 to {workdir}/checkpoints (a checkpoint "
            "takes ~2 MB); checkpoint 2 is intact. Free space (or point --workdir elsewhere) "
            "and rerun to resume.")
        assert "Traceback" not in full.stderr and "RESOURCE_EXHAUSTED" not in full.stderr
        checkpoints = sorted(os.listdir(workdir / "checkpoints"))
        assert checkpoints == ["2", "4.orbax-checkpoint-tmp"]

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = _train(workdir)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from {workdir}/checkpoints/2" in resumed.stdout
        assert not any(name.endswith("tmp") for name in os.listdir(workdir / "checkpoints"))
        assert len(losses(workdir)) == 8
    finally:
        subprocess.run(["umount", str(disk)], check=False)
