"""Real CLI runs on the bundled corpus: kill -9 and restart is bitwise exact; SIGTERM saves."""

import os
import signal
import subprocess
import sys
import time

from launch import metrics as metrics_lib
from tests.helpers import REPO, cli_env, step_losses

STEPS = 8
FLAGS = (f"--config.train.steps={STEPS}", "--config.train.eval_every=0",
         "--config.train.peak_flops=1e9", "--config.train.tensorboard=false",
         "--config.checkpoint.every=2")
# Two devices keep compilation cheap; sharding itself is covered by test_trainer.
ENV = cli_env(2)


def _command(workdir, *extra):
    return [sys.executable, "-m", "launch.train", "--config=configs/t5.py:tiny",
            f"--workdir={workdir}", *FLAGS, *extra]


def _run(workdir, *extra, timeout=600):
    return subprocess.run(_command(workdir, *extra), cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _start(workdir, *extra):
    return subprocess.Popen(_command(workdir, *extra), cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_steps(process, workdir, count, timeout=600):
    """Waits until metrics.jsonl holds ``count`` training lines (or the process ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [r for r in metrics_lib.read_metrics(str(workdir)) if "loss" in r]
        if len(records) >= count or process.poll() is not None:
            return records
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"no {count} steps in {workdir} after {timeout}s")


def test_sigkill_then_restart_is_bitwise_identical(tmp_path):
    # The run is told to train far longer than the test waits, so the kill always lands while
    # it trains: it is sent when metrics.jsonl (written by the run) shows step 5, right after
    # the step-4 checkpoint started saving (async), so it can land mid-save, mid-step or
    # mid-log-line. No timing decides whether the test can work.
    workdir = tmp_path / "killed"
    process = _start(workdir, "--config.train.steps=100000")
    _wait_for_steps(process, workdir, 5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved, "no checkpoint survived"
    target = saved[-1] + 3  # resume from whatever survived and train three steps further

    restarted = _run(workdir, f"--config.train.steps={target}")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resumed from" in restarted.stdout
    reference = _run(tmp_path / "reference", f"--config.train.steps={target}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = step_losses(tmp_path / "reference")
    assert [s for s, _ in expected] == list(range(1, target + 1))
    assert step_losses(workdir) == expected  # bitwise: floats compared with ==


def test_sigterm_saves_exits_zero_and_resumes(tmp_path):
    workdir = tmp_path / "w"
    process = _start(workdir, "--config.train.steps=1000", "--config.checkpoint.every=1000")
    _wait_for_steps(process, workdir, 3)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "stopped by signal at step" in output
    saved = int(output.split("stopped by signal at step ")[1].split(";")[0])
    assert 3 <= saved < 1000
    assert os.path.isdir(workdir / "checkpoints" / str(saved))

    resumed = _run(workdir, f"--config.train.steps={saved + 2}",
                   "--config.checkpoint.every=1000")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints/{saved}" in resumed.stdout
    steps = [s for s, _ in step_losses(workdir)]
    assert steps == list(range(1, saved + 3))
