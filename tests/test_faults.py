"""Faults a long run meets: a full disk during a checkpoint save (a real, small tmpfs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, cli_env, losses


def _train(workdir, *flags, steps=8):
    return subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/t5.py:tiny",
         f"--workdir={workdir}", "--config.data.source=synthetic",
         f"--config.train.steps={steps}", "--config.checkpoint.every=2",
         "--config.train.eval_every=0", "--config.train.tensorboard=false",
         "--config.train.peak_flops=1e9", *flags],
        cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=600)


def _mount(path, size):
    # Needs root (CI runs as root); a failure here fails the test with mount's reason.
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True, text=True)


@pytest.mark.parametrize("when", ["before_writing", "while_writing"])
def test_disk_full_during_a_save_says_so_and_the_run_resumes_after(tmp_path, when):
    """One 2.4 MB checkpoint of configs/t5.py:tiny fits a 4 MB disk, two do not. By default the
    save of step 4 is refused before it starts (free space < the last checkpoint's size); with
    that check off, orbax starts writing and runs out of space half-way. Either way the run
    stops with one line naming the step, the directory and the intact checkpoint, and the
    background threads' dozens of tracebacks of the same error are not shown."""
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(disk, "4m")
    try:
        workdir = disk / "run"
        flags = [] if when == "before_writing" else ["--config.checkpoint.check_free_space=false"]
        full = _train(workdir, *flags)
        assert full.returncode == 1, full.stderr[-3000:]
        size = r"~2\.\d MB, 1\.\d MB free" if when == "before_writing" else "~2 MB"
        # Orbax's timing warnings (e.g. a slow previous save on a loaded machine) may precede it.
        assert re.fullmatch(
            f"ERROR: disk full while saving step 4 to {re.escape(str(workdir))}/checkpoints "
            rf"\(a checkpoint takes {size}\); checkpoint 2 is intact\. Free space \(or point "
            r"--workdir elsewhere\) and rerun to resume\.",
            full.stderr.strip().splitlines()[-1]), full.stderr[-2000:]
        for noise in ("Traceback", "RESOURCE_EXHAUSTED", "Event loop is closed"):
            assert noise not in full.stderr
        checkpoints = sorted(os.listdir(workdir / "checkpoints"))
        assert checkpoints == (["2"] if when == "before_writing" else
                               ["2", "4.orbax-checkpoint-tmp"])

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = _train(workdir, *flags)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from {workdir}/checkpoints/2" in resumed.stdout
        assert not any(name.endswith("tmp") for name in os.listdir(workdir / "checkpoints"))
        assert len(losses(workdir)) == 8
    finally:
        subprocess.run(["umount", str(disk)], check=False)
