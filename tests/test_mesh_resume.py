"""A run checkpointed on one mesh resumes on another, on real data: the bundled corpus.

The data position is independent of the mesh (one input stream per batch row), so the same
global batch continues with the same examples; only the float summation order of the smaller
mesh differs.
"""


import numpy as np

from configs import t5 as t5_configs
from launch import trainer
from tests.helpers import losses


def _config(steps, fsdp):
    config = t5_configs.get_config("tiny")  # the bundled corpus
    config.train.steps = steps
    config.train.eval_every = 0
    config.train.peak_flops = 1e9
    config.train.tensorboard = False
    config.train.console = False
    config.checkpoint.every = 2
    config.mesh.fsdp = fsdp
    return config


def test_bundled_run_resumes_from_8_devices_on_4(tmp_path):
    trainer.train(_config(4, 8), str(tmp_path / "straight"))
    trainer.train(_config(2, 8), str(tmp_path / "moved"))
    resumed = trainer.train(_config(4, 4), str(tmp_path / "moved"))
    assert resumed["start_step"] == 2 and resumed["step"] == 4
    straight, moved = losses(tmp_path / "straight"), losses(tmp_path / "moved")
    assert len(straight) == len(moved) == 4
    # Steps 1-2 ran on the same mesh: bitwise. Steps 3-4 on 4 devices: the same batches, so the
    # same losses up to float32 reduction order (another batch would differ by ~1e-2).
    assert moved[:2] == straight[:2]
    np.testing.assert_allclose(moved[2:], straight[2:], rtol=2e-5)
