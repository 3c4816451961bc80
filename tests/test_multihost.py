"""Two local processes (4 CPU devices each, gloo collectives) train like one 8-device process."""

import os
import subprocess
import sys

import numpy as np

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
