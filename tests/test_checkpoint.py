"""Orbax checkpoints: exact resume, retention, atomicity, corrupt-step fallback, re-sharding."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import SingleDeviceSharding

from launch import checkpoint as ckpt_lib
from launch import metrics as metrics_lib
from launch import trainer
from objectives import registry
from tests.helpers import REPO, cli_env, losses, tiny

# The CLI overrides that reproduce tests.test_trainer.tiny() in a subprocess.
TINY_FLAGS = ("--config.data.source=synthetic", "--config.train.eval_every=0",
              "--config.train.peak_flops=1e9", "--config.train.tensorboard=false",
              "--config.checkpoint.every=0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 4 steps saving every step (keep 2 + every 2nd). Run B: 2 steps, then resumed."""
    root = tmp_path_factory.mktemp("ckpt")
    config = tiny(steps=4, checkpoint__every=1, checkpoint__keep=2, checkpoint__keep_period=2)
    trainer.train(config, str(root / "a"))
    trainer.train(tiny(steps=2, checkpoint__every=2), str(root / "b"))
    shutil.copytree(root / "b", root / "b_at_2")
    resumed = trainer.train(tiny(steps=4, checkpoint__every=2), str(root / "b"))
    return root, resumed


def test_resume_gives_identical_losses(runs):
    root, resumed = runs
    assert resumed["start_step"] == 2 and resumed["step"] == 4
    a, b = losses(root / "a"), losses(root / "b")
    assert len(a) == 4
    assert a == b  # bitwise: same params, optimizer state, data position and step keys
    steps = [r["step"] for r in metrics_lib.read_metrics(str(root / "b"))]
    assert steps == [1, 2, 3, 4]  # no duplicated lines after the resume


def test_keeps_last_k_plus_every_pth(runs):
    root, _ = runs
    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(root / "a")), every=1,
                                         keep=2, keep_period=2)
    assert checkpointer.all_steps() == [2, 3, 4]  # step 1 dropped; 2 kept as a 2nd step
    checkpointer.close()


def test_interrupted_save_never_becomes_latest(runs, tmp_path):
    root, _ = runs
    shutil.copytree(root / "a", tmp_path / "a")
    directory = ckpt_lib.checkpoint_dir(str(tmp_path / "a"))
    # What a kill in the middle of saving step 6 leaves behind (orbax's temporary name).
    partial = os.path.join(directory, "6.orbax-checkpoint-tmp", "state")
    os.makedirs(partial)
    with open(os.path.join(partial, "manifest.ocdbt"), "wb") as f:
        f.write(b"half written")
    checkpointer = ckpt_lib.Checkpointer(directory, every=1, keep=2, keep_period=2)
    assert checkpointer.latest_step() == 4
    checkpointer.close()


def test_corrupt_latest_falls_back_without_deleting(runs, capsys):
    root, _ = runs
    workdir = root / "corrupt"
    shutil.copytree(root / "a", workdir)
    state_dir = workdir / "checkpoints" / "4" / "state"
    for dirpath, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(dirpath, name), "wb") as f:
                f.write(b"\x00garbage")
    summary = trainer.train(tiny(steps=4, checkpoint__every=1, checkpoint__keep=2,
                                 checkpoint__keep_period=2), str(workdir))
    out = capsys.readouterr().out
    assert f"checkpoint {workdir}/checkpoints/4 could not be restored" in out
    assert summary["start_step"] == 3
    assert os.path.isdir(state_dir)  # nothing deleted
    assert losses(workdir) == losses(root / "a")


def _abstract_params(config):
    objective = registry.build(config)
    shapes = jax.eval_shape(objective.init_fn, jax.random.key(0))["params"]
    shapes = nn.unbox(shapes)
    sharding = SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)


def test_init_from_checkpoint_loads_params_only(runs, tmp_path):
    root, _ = runs
    abstract = _abstract_params(tiny())
    params = ckpt_lib.load_params(str(root / "a"), abstract)
    again = ckpt_lib.load_params(str(root / "a" / "checkpoints" / "4"), abstract)
    jax.tree.map(np.testing.assert_array_equal, params, again)
    # The warm-started run starts from trained params: its first loss is run A's level, not
    # the fresh initial loss.
    trainer.train(tiny(steps=1, train__init_from=str(root / "a")), str(tmp_path))
    warm, fresh = losses(tmp_path)[0], losses(root / "a")[0]
    assert warm < fresh
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        ckpt_lib.load_params(str(tmp_path / "nothing"), abstract)


def test_save_params_round_trip(tmp_path):
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": {"x": jnp.ones(3, jnp.int32)}}
    ckpt_lib.save_params(str(tmp_path), params, step=7)
    sharding = SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            params)
    restored = ckpt_lib.load_params(str(tmp_path), abstract)
    jax.tree.map(np.testing.assert_array_equal, restored, params)


@pytest.mark.parametrize("devices", [4, 1])
def test_restore_on_a_different_device_count(runs, tmp_path, devices):
    """Saved on 8 devices at step 2, continued on 4 and on 1: step 3 and 4 match run A."""
    root, _ = runs
    workdir = tmp_path / "w"
    shutil.copytree(root / "b_at_2", workdir)
    env = cli_env(devices)
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/t5.py:tiny",
         f"--workdir={workdir}", "--config.train.steps=4", *TINY_FLAGS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and f"'fsdp': {devices}" in result.stdout
    np.testing.assert_allclose(losses(workdir), losses(root / "a"), rtol=2e-5)


def test_convert_to_hf_and_back(runs, tmp_path):
    """Checkpoint -> HF dir (launch.convert) -> params again, also as an init_from source."""
    from configs import common
    from launch import convert
    from modeling import hf

    root, _ = runs
    run = tmp_path / "run"
    shutil.copytree(root / "a", run)
    common.write_config(tiny(), str(run))
    model, params = convert.load_run_params(str(run))
    convert.main(["to_hf", str(run), str(tmp_path / "hf")])
    assert ckpt_lib.is_hf_dir(str(tmp_path / "hf"))
    from transformers import AutoTokenizer  # the directory carries its tokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf")).convert_tokens_to_ids(
        "<extra_id_0>") == params["token_embedder"]["embedding"].shape[0] - 1
    _, back = hf.from_hf(str(tmp_path / "hf"))
    jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))
    from launch import step as step_lib

    warm = trainer._warm_start(str(tmp_path / "hf"), step_lib.build(tiny()), None, False)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(warm), jax.device_get(params))
    # And HF -> a params-only checkpoint that init_from reads.
    convert.main(["from_hf", str(tmp_path / "hf"), str(tmp_path / "imported")])
    imported = ckpt_lib.load_params(str(tmp_path / "imported"), _abstract_params(tiny()))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(imported),
                 jax.device_get(params))
