"""The trainer: same losses on every mesh, clear start-up errors, NaN handling, the real CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from launch import checkpoint as ckpt_lib
from launch import mesh as mesh_lib
from launch import metrics as metrics_lib
from launch import trainer
from tests.helpers import REPO, cli_env, losses, tiny


def test_same_losses_on_every_mesh(tmp_path):
    results = {}
    for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 1)]:
        config = tiny()
        config.mesh.data, config.mesh.fsdp, config.mesh.model = shape
        config.sharding = "fsdp_tp"
        workdir = tmp_path / "x".join(map(str, shape))
        summary = trainer.train(config, str(workdir))
        assert summary["step"] == 3
        results[shape] = losses(workdir)
    reference = results[(1, 1, 1)]
    assert len(reference) == 3
    # The model learns on the copy task, so equal losses are not all the same number.
    assert reference[-1] < reference[0]
    for shape, values in results.items():
        np.testing.assert_allclose(values, reference, rtol=2e-5, err_msg=str(shape))


def test_microbatches_match_one_big_batch(tmp_path):
    one = trainer.train(tiny(steps=2, mesh__fsdp=4), str(tmp_path / "one"))
    four = trainer.train(tiny(steps=2, mesh__fsdp=2, train__microbatches=4),
                         str(tmp_path / "four"))
    assert one["step"] == four["step"] == 2
    np.testing.assert_allclose(losses(tmp_path / "four"), losses(tmp_path / "one"), rtol=2e-5)


@pytest.mark.parametrize("overrides,match", [
    (dict(mesh__data=3), r"do not divide the device count 8"),
    (dict(data__batch_size=12), r"batch 12 .* not divisible by data\*fsdp"),
    (dict(train__microbatches=3), r"does not divide into 3 microbatches"),
    (dict(model__d_model=36, mesh__fsdp=8), r"not divisible by mesh axis 'fsdp' of size 8"),
])
def test_startup_errors(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        trainer.train(tiny(**overrides), str(tmp_path))


def test_rule_naming_a_missing_mesh_axis(tmp_path, monkeypatch):
    bad = tuple(("embed", "tensor") if name == "embed" else (name, axis)
                for name, axis in mesh_lib.RULES["fsdp"])
    monkeypatch.setitem(mesh_lib.RULES, "bad", bad)
    config = tiny()
    config.sharding = "bad"
    with pytest.raises(ValueError, match="names mesh axis 'tensor'"):
        trainer.train(config, str(tmp_path))
    config.sharding = "nope"
    with pytest.raises(ValueError, match="config.sharding='nope'"):
        trainer.train(config, str(tmp_path))


def _diverging(policy):
    # Step 1 is computed on the initial params (finite); its update (lr 1e30) blows the
    # params up, so every later loss is NaN/Inf.
    return tiny(steps=3, optimizer__name="adamw", optimizer__schedule="constant",
                optimizer__warmup_steps=0, optimizer__learning_rate=1e30,
                checkpoint__every=1, train__nan_policy=policy)


def test_nan_stops_with_clear_error_and_keeps_the_good_checkpoint(tmp_path):
    with pytest.raises(trainer.TrainingDiverged, match=r"at step 2.*Last good checkpoint: .*1"):
        trainer.train(_diverging("stop"), str(tmp_path))
    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(tmp_path)), every=1,
                                         keep=3)
    assert checkpointer.all_steps() == [1]
    checkpointer.close()
    records = metrics_lib.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1] and np.isfinite(records[0]["loss"])


def test_nan_skip_policy_drops_exactly_that_update(tmp_path):
    # A NaN loss (and NaN gradients) injected at step 2 only: with "skip" the params and
    # optimizer state after step 2 are bitwise those after step 1, and training goes on.
    config = tiny(steps=4, checkpoint__every=1, checkpoint__keep=10, train__nan_policy="skip")
    config.debug.inject_nan_at_step = 2
    summary = trainer.train(config, str(tmp_path))
    assert summary["step"] == 4
    values = losses(tmp_path)
    assert np.isfinite(values[0]) and np.isnan(values[1]) and np.all(np.isfinite(values[2:]))
    states = {}
    for step in (1, 2, 3):
        states[step] = ckpt_lib.read_params(os.path.join(tmp_path, "checkpoints", str(step)))
    for a, b in zip(jax.tree.leaves(states[1]), jax.tree.leaves(states[2]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(states[2]), jax.tree.leaves(states[3]), strict=True))


def test_injected_nan_stops_with_the_last_good_checkpoint(tmp_path):
    config = tiny(steps=4, checkpoint__every=1)
    config.debug.inject_nan_at_step = 3
    with pytest.raises(trainer.TrainingDiverged, match=r"at step 3.*Last good checkpoint: .*2"):
        trainer.train(config, str(tmp_path))


def test_the_host_reads_a_step_behind_and_checks_before_every_checkpoint(tmp_path):
    # One host read per step, each of a step older than the newest dispatched one, except the
    # drains before a checkpoint (steps 4 and 8), which check every pending step first.
    summary = trainer.train(tiny(steps=8, checkpoint__every=4, train__log_every=1,
                                 train__eval_every=0), str(tmp_path))
    reads = summary["host_reads"]
    assert [done for done, _ in reads] == list(range(1, 9))
    assert [done for done, newest in reads if done == newest] == [4, 8]
    assert all(done == newest - 1 for done, newest in reads if done not in (4, 8))
    assert [r["step"] for r in metrics_lib.read_metrics(str(tmp_path))] == list(range(1, 9))
    # metrics_lag=0 is the old behaviour: the host waits for every step it dispatches.
    summary = trainer.train(tiny(steps=3, train__metrics_lag=0, train__eval_every=0),
                            str(tmp_path / "sync"))
    assert all(done == newest for done, newest in summary["host_reads"])


def test_a_nan_found_late_stops_before_any_checkpoint_holds_it(tmp_path):
    # Lag 2: the NaN of step 5 is read after step 7 was dispatched; the checkpoint of step 4
    # (checked before it was saved) is the newest, and nothing after it was written.
    config = tiny(steps=12, checkpoint__every=4, train__metrics_lag=2, train__eval_every=0)
    config.debug.inject_nan_at_step = 5
    with pytest.raises(trainer.TrainingDiverged, match=r"at step 5.*Last good checkpoint: .*4"):
        trainer.train(config, str(tmp_path))
    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(tmp_path)), every=4,
                                         keep=3)
    assert checkpointer.all_steps() == [4]
    checkpointer.close()


def _cli(config, workdir, *overrides, devices=8, timeout=600):
    env = cli_env(devices)
    return subprocess.run(
        [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={workdir}",
         *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("config,keys,shown", [
    ("configs/t5.py:tiny", ("cross_entropy", "accuracy", "z_loss"),
     ("held-out text with masked spans: ", "<extra_id_0>", "reference fill:", "step 0 fill:",
      "trained fill:")),
    ("configs/electra.py:tiny", ("mlm_loss", "disc_loss", "disc_accuracy", "gen_accuracy"),
     ("replaced by the generator", "step 0 discriminator: flags",
      "trained discriminator: flags", "suspects")),
])
def test_cli_end_to_end_on_the_bundled_corpus(tmp_path, config, keys, shown):
    result = _cli(config, tmp_path, "--config.train.steps=3", "--config.train.eval_every=3",
                  "--config.train.peak_flops=1e9", "--config.train.showcase=true")
    assert result.returncode == 0, result.stderr[-3000:]
    records = metrics_lib.read_metrics(str(tmp_path))
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    for key in (*keys, "tokens_per_sec", "mfu", "learning_rate"):
        assert key in train_records[-1], key
    assert np.isfinite(train_records[-1]["loss"])
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 3]
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["train"]["steps"] == 3
    assert os.path.isdir(tmp_path / "checkpoints" / "3")
    assert os.listdir(tmp_path / "tensorboard")
    assert "validation loss: step 0" in result.stdout
    for text in shown:  # the held-out example, step 0 vs trained (launch/showcase.py)
        assert text in result.stdout, text
    png = str(tmp_path / "metrics.png")  # written by launch.train at the end of the run
    assert f"loss curves: {png}" in result.stdout
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
