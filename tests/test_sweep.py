"""launch.sweep: expansion and its errors, run states, and a local sweep end to end.

The end-to-end test is the T5 objective comparison at tiny size (configs/sweeps/
t5_objectives_tiny.py with two objectives and 4 steps): expand, dry run, launch, status,
collect. Its references are what ``launch.train`` builds from ``configs/t5.py:tiny`` and the
same overrides, and each run's own metrics.jsonl. The SLURM backend is tested against a real
cluster in tests/test_sweep_slurm.py, the TPU VM commands in tests/test_sweep_tpu.py.
"""

import csv
import json
import os

import pytest

from configs import common
from configs import t5 as t5_configs
from launch import metrics as metrics_lib
from launch import sweep_spec, sweep_state
from launch.sweep_spec import Stage, Sweep, SweepError, named, product, seeds, values, zipped
from tests.helpers import REPO, losses, sweep_run

TINY = "configs/t5.py:tiny"


# ---------------------------------------------------------------------------------------------
# Expansion.
# ---------------------------------------------------------------------------------------------
def test_axes_names_and_overrides(tmp_path):
    sweep = Sweep(name="s", config=TINY, fixed={"config.train.steps": 5},
                  axes=product(zipped(values("config.objective.name", ["prefix_lm", "mass"],
                                             label="obj"),
                                      values("config.data.targets_length", [63, 64], label="")),
                               seeds([3, 4])))
    runs = sweep_spec.expand(sweep, tmp_path)
    assert [r.name for r in runs] == ["obj=prefix_lm,seed=3", "obj=prefix_lm,seed=4",
                                      "obj=mass,seed=3", "obj=mass,seed=4"]
    assert runs[2].overrides == {"config.train.steps": 5, "config.objective.name": "mass",
                                 "config.data.targets_length": 64, "config.seed": 3}
    assert runs[2].workdir == str(tmp_path / "obj=mass,seed=3")
    # The resolved config is what launch.train builds from the file and the same overrides.
    want = t5_configs.get_config("tiny")
    want.train.steps, want.objective.name, want.data.targets_length, want.seed = 5, "mass", 64, 3
    assert common.config_json(runs[2].resolved) == common.config_json(want)


def test_stages_chain_runs_to_their_parents(tmp_path):
    sweep = Sweep(name="s", config=TINY, axes=seeds(2), stages=[
        Stage("finetune", TINY, fixed={"config.train.steps": 3},
              axes=values("config.optimizer.learning_rate", [0.1, 0.01], label="lr"))])
    runs = sweep_spec.expand(sweep, tmp_path)
    assert [r.name for r in runs] == [
        "pretrain/seed=0", "pretrain/seed=1", "finetune/seed=0,lr=0.1", "finetune/seed=0,lr=0.01",
        "finetune/seed=1,lr=0.1", "finetune/seed=1,lr=0.01"]
    child = runs[4]
    assert child.after == "pretrain/seed=1"
    assert child.resolved.train.init_from == str(tmp_path / "pretrain" / "seed=1")


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO, "configs", "sweeps"))))
def test_every_shipped_sweep_expands(tmp_path, name):
    path = os.path.join(REPO, "configs", "sweeps", name)
    runs = sweep_spec.expand(sweep_spec.load_sweep(path), tmp_path, path, run_root="/mnt/x")
    assert runs and len({r.workdir for r in runs}) == len(runs)


@pytest.mark.parametrize("sweep,message", [
    (Sweep("s", TINY, axes=values("config.train.stpes", [1, 2])),
     "run train.stpes=1: config.train.stpes does not exist in the config; did you mean "
     "config.train.steps"),
    (Sweep("s", TINY, fixed={"config.train.steps": "ten"}),
     "config.train.steps='ten'"),
    (Sweep("s", TINY, axes=values("config.optimizer.learning_rate", [0.001, 1e-3])),
     "runs 'optimizer.learning_rate=0.001' ({'config.optimizer.learning_rate': 0.001}) and "
     "'optimizer.learning_rate=0.001' ({'config.optimizer.learning_rate': 0.001}) resolve to "
     "the same workdir"),
    (Sweep("s", TINY, fixed={"slurm.gpus": 8}), "slurm.gpus is not a slurm setting"),
    (Sweep("s", TINY, fixed={"train.steps": 8}), "key 'train.steps' has no namespace"),
    (Sweep("s", TINY, axes=values("config.objective.name", ["span_corruptoin"])),
     "config.objective.name='span_corruptoin' is not an objective"),
    (Sweep("s", "configs/t5.py:huge"), "unknown variant 'huge'"),
    (Sweep("s", TINY, axes=named({"a/b": {}})), "run name 'a/b' may only hold"),
])
def test_bad_sweeps_fail_at_expansion(tmp_path, sweep, message):
    with pytest.raises(SweepError) as error:
        sweep_spec.expand(sweep, tmp_path, "configs/sweeps/x.py")
    assert message in str(error.value)
    assert "configs/sweeps/x.py" in str(error.value) or "config '" in str(error.value)
    assert not os.listdir(tmp_path)


def test_zipped_axes_must_be_equally_long():
    with pytest.raises(SweepError, match=r"zipped axes have different lengths \[2, 3\]"):
        zipped(seeds(2), seeds(3))


def test_bad_key_via_cli_names_it_and_writes_nothing(tmp_path):
    sweep_file = tmp_path / "bad.py"
    sweep_file.write_text("from launch.sweep_spec import Sweep, values\n"
                          "def get_sweep():\n"
                          "    return Sweep('bad', 'configs/t5.py:tiny',\n"
                          "                 axes=values('config.model.widht', [32, 64]))\n")
    result = sweep_run("--sweep", str(sweep_file), "--root", str(tmp_path / "root"),
                       check=False)
    assert result.returncode == 2
    assert f"ERROR: {sweep_file}: run model.widht=32: config.model.widht does not exist" in (
        result.stderr)
    assert not (tmp_path / "root").exists()


# ---------------------------------------------------------------------------------------------
# Run states from files (exit codes and SLURM states as the backends record them).
# ---------------------------------------------------------------------------------------------
def _run_with(tmp_path, *, steps_logged, exit_code=None, backend="local", job_id="123"):
    run = sweep_spec.expand(Sweep("s", TINY, fixed={"config.train.steps": 4}), tmp_path)[0]
    common.write_config(run.resolved, run.local_dir)
    with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
        for step in range(1, steps_logged + 1):
            f.write(json.dumps({"step": step, "loss": 1.0}) + "\n")
    if steps_logged == 4:
        os.makedirs(os.path.join(run.workdir, "checkpoints", "4"))
    if backend:
        sweep_state.record_job(run, backend, job_id)
    if exit_code is not None:
        with open(sweep_state.exit_code_path(run), "w") as f:
            f.write(f"{exit_code}\n")
    return run


@pytest.mark.parametrize("kwargs,slurm,state", [
    (dict(steps_logged=4, exit_code=0), {}, "done"),
    (dict(steps_logged=2, exit_code=0), {}, "preempted"),  # SIGTERM: saved and exited 0
    (dict(steps_logged=2, exit_code=1), {}, "failed"),  # diverged, or an exception
    (dict(steps_logged=2), {}, "preempted"),  # killed: no exit code written
    (dict(steps_logged=0, backend=None), {}, "pending"),  # never submitted
    (dict(steps_logged=2, backend="slurm"), {"123": ("PENDING", "BeginTime")}, "pending"),
    (dict(steps_logged=2, backend="slurm"), {"123": ("RUNNING", "None")}, "running"),
    (dict(steps_logged=2, backend="slurm"), {"123": ("TIMEOUT", "None")}, "preempted"),
    (dict(steps_logged=2, backend="slurm"), {"123": ("OUT_OF_MEMORY", "None")}, "failed"),
    (dict(steps_logged=2, backend="slurm", exit_code=1), {"123": ("FAILED", "None")},
     "failed"),
])
def test_run_states(tmp_path, kwargs, slurm, state):
    run = _run_with(tmp_path, **kwargs)
    assert sweep_state.run_status(run, slurm).state == state


def test_a_started_run_keeps_its_config(tmp_path):
    sweep = Sweep("s", TINY, fixed={"config.train.steps": 4})
    run = _run_with(tmp_path, steps_logged=2)
    changed = sweep_spec.expand(Sweep("s", TINY, fixed={"config.train.steps": 8}), tmp_path)[0]
    with pytest.raises(SweepError, match=r"run s was started with a different config "
                                         r"\(config.train.steps: .* has \[4\], the sweep now "
                                         r"gives \[8\]"):
        sweep_state.check_unchanged(changed, common.config_json(changed.resolved))
    same = sweep_spec.expand(sweep, tmp_path)[0]
    sweep_state.check_unchanged(same, common.config_json(same.resolved))
    assert run.name == same.name


# ---------------------------------------------------------------------------------------------
# A local sweep end to end.
# ---------------------------------------------------------------------------------------------
LOCAL_SWEEP = '''
from launch.sweep_spec import Sweep, named, product, seeds

OBJECTIVES = {"span_corruption": 14, "prefix_lm": 63}


def get_sweep():
    return Sweep(
        name="objectives", config="configs/t5.py:tiny",
        fixed={"config.train.steps": 4, "config.train.eval_every": 2,
               "config.train.eval_steps": 1, "config.checkpoint.every": 2,
               "config.train.tensorboard": False, "config.train.peak_flops": 1e9},
        axes=product(named({name: {"config.objective.name": name,
                                   "config.data.targets_length": length}
                            for name, length in OBJECTIVES.items()}), seeds(2)))
'''


def test_local_sweep_end_to_end(tmp_path):
    sweep_file, root = tmp_path / "objectives.py", tmp_path / "root"
    sweep_file.write_text(LOCAL_SWEEP)
    names = [f"{o},seed={s}" for o in ("span_corruption", "prefix_lm") for s in (0, 1)]

    # Dry run: the runs, their overrides and the exact commands; nothing written.
    out = sweep_run("--sweep", str(sweep_file), "--root", str(root), "--dry_run")
    assert "would start 4" in out and not root.exists()
    workdir = root / "prefix_lm,seed=1"
    assert ("--config.objective.name=prefix_lm --config.data.targets_length=63 --config.seed=1"
            in out)
    assert (f"-m launch.train --config=configs/resolved.py:{workdir}/config.json "
            f"--workdir={workdir}") in out

    # Expand: every run's locked config is on disk before anything starts.
    sweep_run("expand", "--sweep", str(sweep_file), "--root", str(root))
    for name in names:
        assert (root / name / "config.json").is_file()
        assert not (root / name / "metrics.jsonl").exists()
    want = t5_configs.get_config("tiny")
    want.train.steps, want.train.eval_every, want.train.eval_steps = 4, 2, 1
    want.checkpoint.every, want.train.tensorboard, want.train.peak_flops = 2, False, 1e9
    want.objective.name, want.data.targets_length, want.seed = "prefix_lm", 63, 1
    expanded = (workdir / "config.json").read_text()
    assert expanded == common.config_json(want)

    # Launch the expanded root (no --sweep needed), two at a time.
    out = sweep_run("launch", "--root", str(root), "--parallel=2")
    assert out.count(": done in") == 4, out
    assert (workdir / "config.json").read_text() == expanded  # the trainer kept it

    status = sweep_run("status", "--root", str(root))
    assert "4 runs: 4 done" in status
    for name in names:
        line = next(row for row in status.splitlines() if row.startswith(name + " "))
        assert line.split()[1:3] == ["done", "4/4"], line
    assert "nothing to launch" in sweep_run("launch", "--root", str(root))

    # Collect: final and best metrics per run, the markdown table, the curves.
    out = sweep_run("collect", "--root", str(root))
    with open(root / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(names)
    records = metrics_lib.read_metrics(str(workdir))
    evals = [r["eval/cross_entropy"] for r in records if "eval/cross_entropy" in r]
    row = rows["prefix_lm,seed=1"]
    assert (row["objective.name"], row["seed"], row["state"]) == ("prefix_lm", "1", "done")
    assert float(row["final loss"]) == losses(workdir)[-1]
    assert float(row["final eval/cross_entropy"]) == evals[-1]
    assert float(row["best eval/cross_entropy"]) == min(evals)
    assert "| run | state | step | objective.name |" in out
    assert (root / "results.md").read_text().count("\n") == 2 + 4
    assert (root / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
