"""Two local processes (4 CPU devices each, gloo collectives) train like one 8-device process."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO, cli_env, free_port, losses

FLAGS = ("--config=configs/t5.py:tiny", "--config.train.steps=3", "--config.train.eval_every=0",
         "--config.train.peak_flops=1e9", "--config.train.tensorboard=false",
         "--config.checkpoint.every=0")


def test_two_processes_match_one(tmp_path):
    single = subprocess.run(
        [sys.executable, "-m", "launch.train", *FLAGS, f"--workdir={tmp_path / 'one'}"],
        cwd=REPO, env=cli_env(8), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    port = free_port()
    workdir = tmp_path / "two"
    processes = [subprocess.Popen(
        [sys.executable, "-m", "launch.train", *FLAGS, f"--workdir={workdir}",
         "--config.distributed.mode=on",
         f"--config.distributed.coordinator_address=127.0.0.1:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
         "--config.distributed.cpu_collectives=gloo",
         "--config.distributed.initialization_timeout=120"],
        cwd=REPO, env=cli_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    # Only process 0 logs; both wrote their checkpoint shards into the one final checkpoint.
    assert "step 3/3" in outputs[0] and "step 3/3" not in outputs[1]
    assert "'fsdp': 8" in outputs[0]
    assert os.path.isdir(workdir / "checkpoints" / "3" / "state")
    one, two = losses(tmp_path / "one"), losses(workdir)
    assert len(one) == 3
    np.testing.assert_allclose(two, one, rtol=2e-5)


def _two_process_job(workdir, port, steps, *extra):
    return [subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--config=configs/t5.py:tiny",
         f"--config.train.steps={steps}", "--config.train.eval_every=0",
         "--config.train.peak_flops=1e9", "--config.train.tensorboard=false",
         "--config.train.log_every=1", "--config.checkpoint.every=2", f"--workdir={workdir}",
         "--config.distributed.mode=on",
         f"--config.distributed.coordinator_address=127.0.0.1:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
         "--config.distributed.cpu_collectives=gloo",
         "--config.distributed.initialization_timeout=120", *extra],
        cwd=REPO, env=cli_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]


@pytest.mark.parametrize("victim", [1, 0], ids=["peer", "coordinator"])
def test_dead_peer_or_coordinator_ends_the_job_in_one_line(tmp_path, victim):
    """SIGKILL one process of a running 2-process job: the other exits with code 3 within the
    heartbeat timeout and one line naming the dead process, the step and the newest checkpoint
    (not the coordination service's SIGABRT and stack trace); the same command resumes."""
    timeout = 10
    workdir = tmp_path / "run"
    processes = _two_process_job(workdir, free_port(), 100_000,
                                 f"--config.distributed.heartbeat_timeout={timeout}")
    survivor = processes[1 - victim]
    try:
        metrics = workdir / "metrics.jsonl"
        deadline = time.time() + 400
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
            assert all(p.poll() is None for p in processes), processes[0].communicate()[1][-3000:]
            assert time.time() < deadline, "the job did not reach step 5"
            time.sleep(0.2)
        processes[victim].kill()
        killed = time.time()
        _, stderr = survivor.communicate(timeout=timeout + 60)
        elapsed = time.time() - killed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert survivor.returncode == 3, stderr[-3000:]
    assert elapsed < timeout + 20, elapsed
    lines = [line for line in stderr.splitlines() if line and not line.startswith("[Gloo]")]
    assert len(lines) == 1, stderr[-3000:]  # no traceback, no runtime log lines
    message = lines[0]
    who = ("process 1 of 2 stopped responding (no heartbeat for 10 s; seen by process 0)"
           if victim == 1 else "process 0 of 2, the coordinator at 127.0.0.1:")
    assert message.startswith(f"ERROR: {who}"), message
    step = int(re.search(r" at step (\d+)\.", message).group(1))
    newest = max(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())
    assert 5 <= step and newest <= step, message
    assert f"Newest checkpoint: step {newest} in {workdir / 'checkpoints'}." in message
    assert f"resume from step {newest};" in message
    report = workdir / "logs" / f"process{1 - victim}.stderr.txt"
    assert "coordination" in report.read_text(), report.read_text()[-2000:]
    if victim == 0:  # "restart every process with the same command" does resume
        restarted = _two_process_job(workdir, free_port(), newest + 1)
        outputs = [p.communicate(timeout=600) for p in restarted]
        assert [p.returncode for p in restarted] == [0, 0], outputs[0][1][-3000:]
        assert f"resumed from {workdir / 'checkpoints'}/{newest}" in outputs[0][0]
