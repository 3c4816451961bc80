"""launch.reproduce: the paper tables as sweeps, their report, and the paper-scale dry runs."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from launch import reproduce, sweep_spec
from tests.helpers import REPO, cli_env


def _reproduce(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "launch.reproduce", *args], cwd=REPO,
                            env=cli_env(1), capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# ---------------------------------------------------------------------------------------------
# The sweeps the tables expand into.
# ---------------------------------------------------------------------------------------------
def test_table7_laptop_expands_into_rows_seeds_finetuning_and_scratch(tmp_path):
    runs = sweep_spec.expand(reproduce.build_sweep("t5_table7", "laptop"), str(tmp_path))
    by_name = {run.name: run for run in runs}
    pretrain = [r for r in runs if r.name.startswith("pretrain/")]
    finetune = [r for r in runs if r.name.startswith("finetune/")]
    assert len(pretrain) == 5 * 2 and len(finetune) == 5 * 2 + 2  # + scratch x 2 seeds
    # The paper's rows: i.i.d. replace spans at 15%, span corruption at mean lengths 2/3/5/10.
    span2 = by_name["pretrain/span2,seed=1"].resolved
    assert (span2.objective.name, span2.objective.noise_density,
            span2.objective.mean_noise_span_length) == ("span_corruption", 0.15, 2.0)
    iid = by_name["pretrain/iid,seed=0"].resolved
    assert (iid.objective.name, iid.objective.noise_density) == ("iid_replace_spans", 0.15)
    # Equal steps; decoder lengths from the T5 length arithmetic (128 inputs: 25 targets at
    # mean span 10, 32 at 2; T5's 568 -> 512 + 114 example scaled down is checked elsewhere).
    assert {r.resolved.train.steps for r in pretrain} == {1500}
    assert by_name["pretrain/span10,seed=0"].resolved.data.targets_length == 25
    assert span2.data.targets_length == 32
    # Fine-tuning starts from its parent with the parent's seed; scratch starts from nothing.
    child = by_name["finetune/span2,seed=1,wn_lexname"]
    assert child.after == "pretrain/span2,seed=1"
    assert child.resolved.train.init_from == by_name["pretrain/span2,seed=1"].workdir
    assert child.resolved.seed == 1 and child.resolved.objective.name == "text_to_text"
    scratch = by_name["finetune/scratch,seed=1,wn_lexname"]
    assert scratch.after is None and scratch.resolved.train.init_from == ""
    assert scratch.resolved.seed == 1
    assert scratch.resolved.train.steps == child.resolved.train.steps == 600


def test_electra_table5_rows_share_everything_but_the_objective(tmp_path):
    runs = sweep_spec.expand(reproduce.build_sweep("electra_table5", "laptop", n_seeds=1),
                             str(tmp_path))
    pretrain = {r.name: r.resolved for r in runs if r.name.startswith("pretrain/")}
    assert {c.objective.name for c in pretrain.values()} == {
        "electra", "all_tokens_mlm", "replace_mlm", "electra_15", "mlm"}
    for config in pretrain.values():
        # The laptop recipe (temperature 2) at the paper's 15% masks, equal steps and batch.
        assert (config.train.steps, config.data.batch_size, config.objective.mask_prob,
                config.objective.temperature) == (1000, 32, 0.15, 2.0)
    tasks = sorted(r.resolved.data.task for r in runs if r.name.startswith("finetune/electra,"))
    assert tasks == ["wn_hypernym", "wn_lexname"]


def test_compute_curve_rows_are_step_budgets(tmp_path):
    runs = sweep_spec.expand(reproduce.build_sweep("electra_compute", "laptop", n_seeds=1),
                             str(tmp_path))
    steps = {r.name: r.resolved.train.steps for r in runs if r.name.startswith("pretrain/")}
    assert steps == {"pretrain/electra_25,seed=0": 250, "pretrain/electra_50,seed=0": 500,
                     "pretrain/electra_100,seed=0": 1000, "pretrain/mlm_25,seed=0": 250,
                     "pretrain/mlm_50,seed=0": 500, "pretrain/mlm_100,seed=0": 1000}


@pytest.mark.parametrize("args, message", [
    (["no_such_table"], "invalid choice"),
    (["electra_table5", "--scale=paper", "--dry_run"], "--text_files=GLOB"),
    (["t5_table4", "--scale=paper", "--smoke"], "drop --scale=paper"),
    (["t5_table4", "--set", "config.train.no_such_key=1", "--dry_run"],
     "config.train.no_such_key does not exist"),
    (["t5_table4", "--set", "slurm.gpus=8", "--dry_run"], "is not a slurm setting"),
])
def test_bad_requests_fail_before_anything_is_written(tmp_path, args, message):
    result = _reproduce(*args, f"--root={tmp_path}/t", check=False)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "t")


def test_paper_scale_t5_table_on_slurm(tmp_path):
    """T5 Table 6 at the paper's scale: T5-Base-sized, 2^19 steps of 128 x 512 on C4 tasks
    that apply each row's corruption rate, fine-tuned on GLUE; sbatch scripts on 2 x 8 GPUs."""
    out = _reproduce("t5_table6", "--scale=paper", "--backend=slurm", "--dry_run",
                     f"--root={tmp_path}/t6").stdout
    assert not os.path.exists(tmp_path / "t6")
    # 4 rows x 3 seeds pretrained, then (4 rows + scratch) x 3 seeds x 8 GLUE tasks fine-tuned
    assert "sweep t5_table6_paper: 132 runs" in out
    for rate in ("0.1", "0.25", "0.5"):
        assert f"--config.data.task=pretrax_c4_en_iid_replace_spans_noise_density{rate}" in out
    assert "--config.data.task=pretrax_c4_en_iid_replace_spans " in out  # 15%: the default
    assert "--config.objective.noise_density=0.25" in out
    assert "#SBATCH --nodes=2" in out and "#SBATCH --gpus-per-node=8" in out
    # Decoder lengths the i.i.d. targets need at 512 inputs (exceeded by <= 1e-3 of examples)
    assert "configs/t5.py:t5_base" in out and "--config.data.targets_length=187" in out
    assert "glue_rte_v002" in out and "--config.model.preset=t5_base" in out
    assert "--config.train.steps" not in out.split("finetune/")[0]  # the preset's 2^19


def test_paper_scale_electra_table_on_tpu_vms(tmp_path):
    out = _reproduce("electra_table5", "--scale=paper", "--backend=tpu_vm", "--dry_run",
                     "--text_files=/mnt/gcs/wikibooks/*.txt", "--seeds=1",
                     "--set", "tpu.project=my-lab", "--git_url=https://example.org/pretrax.git",
                     "--git_ref=0123abc", f"--root={tmp_path}/e5").stdout
    assert "configs/electra.py:electra_base" in out
    assert "--config.data.train_files=/mnt/gcs/wikibooks/*.txt" in out
    assert "gcloud" in out and "--project=my-lab" in out and "v4-32" in out
    assert "configs/finetune.py:electra_base" in out and "glue_mnli_v002" in out


# ---------------------------------------------------------------------------------------------
# The report's arithmetic, on hand-made scores.
# ---------------------------------------------------------------------------------------------
def test_compare_pairs_seeds_and_uses_the_standard_error():
    scores = {"a": {0: 50.0, 1: 52.0, 2: 51.0}, "b": {0: 48.0, 1: 49.0, 2: 50.0},
              "c": {0: 49.0, 1: 53.0, 2: 50.0}}
    verdict, evidence = reproduce.compare(scores, "a", "b")
    # differences 2, 3, 1: mean 2, std 1, standard error 0.577
    assert verdict == "reproduced" and evidence == "+2.00 +- 1.00 (3 seeds)"
    assert reproduce.compare(scores, "b", "a")[0] == "reversed"
    # a - c: 1, -1, 1: mean 0.333, std 1.155, se 0.667 -> within the spread
    assert reproduce.compare(scores, "a", "c")[0] == "within the seeds' spread"
    assert reproduce.compare(scores, "a", "missing") == ("not run", "-")
    assert reproduce.compare({"a": {0: 1.0}, "b": {0: 0.0}}, "a", "b")[0].startswith(
        "inconclusive")


def test_compute_claims_interpolate_mlm_at_electra_flops():
    table = reproduce.TABLES["electra_compute"]
    flops = {"electra_25": 2e9, "electra_50": 4e9, "electra_100": 8e9,
             "mlm_25": 1e9, "mlm_50": 2e9, "mlm_100": 4e9}
    scores = {"electra_25": {0: 30.0, 1: 32.0}, "electra_50": {0: 40.0, 1: 41.0},
              "electra_100": {0: 50.0, 1: 50.0},
              "mlm_25": {0: 10.0, 1: 12.0}, "mlm_50": {0: 20.0, 1: 20.0},
              "mlm_100": {0: 44.0, 1: 42.0}}
    claims = reproduce.compute_claims(table, scores, flops)
    # electra_25 at 2e9 meets mlm_50 exactly (diffs 10, 12); electra_50 at 4e9 meets mlm_100
    # (diffs -4, -1); electra_100 at 8e9 is beyond MLM's range: no claim.
    assert [(text.split("(")[1], verdict) for text, verdict, _ in claims] == [
        ("2.00e+09 FLOPs)", "reproduced"), ("4.00e+09 FLOPs)", "reversed")]
    assert claims[0][2] == "+11.00 +- 1.41 (2 seeds)"
    half = reproduce._interpolate([(1e9, 10.0), (4e9, 40.0)], 2e9)
    assert math.isclose(half, 10.0 + 30.0 * 0.5)  # half way in log FLOPs


# ---------------------------------------------------------------------------------------------
# Every table end to end at smoke size (tiny models, a few steps; about a minute each).
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("table", sorted(reproduce.TABLES))
def test_smoke_table_runs_and_reports_the_runs_numbers(tmp_path, table):
    from launch import metrics as metrics_lib
    from launch import sweep_state

    root = tmp_path / table
    out = _reproduce(table, "--smoke", f"--root={root}", "--parallel=2").stdout
    text = (root / "table.md").read_text()
    assert text in out
    for name in ("pretraining.png", "downstream.png"):
        assert (root / name).stat().st_size > 10_000
    _, runs = sweep_state.read_manifest(str(root))
    spec = reproduce.TABLES[table]
    assert len([r for r in runs if r.name.startswith("pretrain/")]) == len(spec.rows)
    for run in runs:
        if not run.name.startswith("finetune/"):
            continue
        # Each cell is the run's own validation metric, read here from its metrics file.
        records = metrics_lib.read_metrics(run.workdir)
        metric = "accuracy"  # wn_lexname's
        final = [r[f"eval/{metric}"] for r in records if f"eval/{metric}" in r and r["step"]]
        want = max(final) if spec.select == "best" else final[-1]
        link = os.path.relpath(run.local_dir, root)
        assert f"[{want:.1f}]({link})" in text, (link, want)
        if "scratch" not in run.name:
            parent = run.overrides["config.train.init_from"]
            assert parent.endswith("/pretrain/" + run.name.split("/")[1].rsplit(",", 1)[0])
            assert f"initialised params from {parent}" in (
                open(os.path.join(run.local_dir, "sweep", "train.log")).read())
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(spec.rows) + 1 and "pending" not in text
    assert re.search(r"\| pretraining \(\w+\) beats no pretraining \| inconclusive \(one seed\)",
                     text)
    # Exported for committing (no checkpoints), then compared cell by cell with itself.
    committed = tmp_path / "committed"
    _reproduce(table, "--report", f"--root={root}", f"--export={committed}")
    assert (committed / "table.md").read_text() == text
    assert not list(committed.rglob("checkpoints"))
    n = len([r for r in runs if r.name.startswith("finetune/")])
    out = _reproduce(table, "--report", f"--root={root}", f"--against={committed}").stdout
    assert f"{n} cells compared: {n} identical, largest difference 0.00" in out
