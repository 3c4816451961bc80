"""launch/lock.py (one job per workdir) and launch/train.py's one-line start-up errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from launch import lock as lock_lib
from tests.helpers import REPO, cli_env


def _held_by(path, **fields):
    record = {"job": "other-job", "host": "elsewhere", "pid": 1, "since": time.time(),
              "heartbeat": time.time(), **fields}
    with open(os.path.join(path, lock_lib.LOCK_FILE), "w") as f:
        json.dump(record, f)


def test_a_live_lock_of_another_job_refuses_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAX_JOB_ID", "mine")
    _held_by(tmp_path)
    with pytest.raises(lock_lib.WorkdirBusy,
                       match=r"in use by job other-job on host elsewhere \(pid 1\)"):
        lock_lib.WorkdirLock(str(tmp_path)).acquire()


def test_the_same_job_gets_through_and_releases(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAX_JOB_ID", "other-job")  # e.g. a requeued SLURM job
    _held_by(tmp_path)
    with lock_lib.WorkdirLock(str(tmp_path)) as lock:
        with open(lock.path) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert not os.path.exists(os.path.join(tmp_path, lock_lib.LOCK_FILE))


@pytest.mark.parametrize("case", ["stale heartbeat", "dead pid on this host"])
def test_a_dead_job_is_taken_over_with_a_warning(tmp_path, monkeypatch, case):
    monkeypatch.setenv("PRETRAX_JOB_ID", "mine")
    if case == "stale heartbeat":
        _held_by(tmp_path, heartbeat=time.time() - 1000)
    else:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        _held_by(tmp_path, host=socket.gethostname(), pid=dead.pid)
    messages = []
    lock = lock_lib.WorkdirLock(str(tmp_path), stale_seconds=300, log=messages.append)
    lock.acquire()
    lock.release()
    assert len(messages) == 1 and "taking over the lock of job other-job" in messages[0]


def test_the_heartbeat_moves(tmp_path):
    lock = lock_lib.WorkdirLock(str(tmp_path), heartbeat_seconds=0.05)
    lock.acquire()
    with open(lock.path) as f:
        first = json.load(f)["heartbeat"]
    deadline = time.time() + 10
    while time.time() < deadline:
        with open(lock.path) as f:
            if json.load(f)["heartbeat"] > first:
                break
        time.sleep(0.05)
    else:
        pytest.fail("the heartbeat did not move")
    lock.release()


def _train(workdir, *extra, env_extra=None):
    env = cli_env(**(env_extra or {}))
    return [sys.executable, "-m", "launch.train", "--config=configs/t5.py:tiny",
            f"--workdir={workdir}", "--config.data.source=synthetic",
            "--config.train.tensorboard=false", "--config.train.peak_flops=1e9",
            "--config.train.eval_every=0", *extra], env


def test_a_double_start_is_refused_and_start_up_errors_are_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    cmd, env = _train(workdir, "--config.train.steps=100000",
                      env_extra={"PRETRAX_JOB_ID": "first"})
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock_path = os.path.join(workdir, lock_lib.LOCK_FILE)
        deadline = time.time() + 300
        while not os.path.exists(lock_path) and first.poll() is None:
            assert time.time() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        cmd, env = _train(workdir, env_extra={"PRETRAX_JOB_ID": "second"})
        second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"ERROR: {workdir} is in use by job first on host" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # A mistyped key: one line, exit 2, the override named with ml_collections' suggestion.
    cmd, env = _train(str(tmp_path / "typo"), "--config.train.stpes=10")
    typo = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines() == [
        'ERROR: --config.train.stpes: no such config key. Did you mean "steps" instead of '
        '"stpes"? (--verbose shows the traceback)']
    assert not os.path.exists(tmp_path / "typo" / "config.json")  # nothing written
