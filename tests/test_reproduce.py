"""launch.reproduce: the paper tables as sweeps, their report, and the paper-scale dry runs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from launch import reproduce, sweep_spec
from launch import reproduce_report as report_lib
from launch.sweep_spec import SweepError
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
    finetune = [r.resolved for r in runs if r.name.startswith("finetune/electra,")]
    assert sorted(c.data.task for c in finetune) == ["wn_hypernym", "wn_lexname"]
    # 600 steps, not finetune.py's 3 epochs (which would resolve to 1,875 steps at run time)
    assert {(c.train.epochs, c.train.steps, c.optimizer.total_steps) for c in finetune} == {
        (None, 600, 600)}


def test_set_reaches_the_stage_it_names(tmp_path):
    sweep = reproduce.build_sweep("electra_compute", "laptop", n_seeds=1, settings={
        "config.train.steps": 400, "config.data.inputs_length": 64,
        "finetune.config.train.steps": 50, "env.FOO": "1"})
    runs = {r.name: r for r in sweep_spec.expand(sweep, str(tmp_path))}
    electra_25 = runs["pretrain/electra_25,seed=0"].resolved
    assert (electra_25.train.steps, electra_25.optimizer.total_steps,
            electra_25.data.inputs_length) == (100, 100, 64)
    assert runs["pretrain/mlm_200,seed=0"].resolved.train.steps == 800
    child = runs["finetune/electra_25,seed=0,wn_lexname"]
    assert child.resolved.train.steps == 50 and child.resolved.data.inputs_length == 128
    assert child.env() == {"FOO": "1"}
    t5 = {r.name: r.resolved for r in sweep_spec.expand(reproduce.build_sweep(
        "t5_table6", "laptop", n_seeds=1, settings={"config.data.inputs_length": 64}),
        str(tmp_path / "t5"))}
    # the decoder length follows the encoder length set with --set (50% noise: 114 at 128)
    from objectives import registry

    want = registry.denoiser("iid_replace_spans").lengths(64, noise_density=0.5)[1]
    assert t5["pretrain/rate50,seed=0"].data.targets_length == want != 114


def test_compute_curve_rows_are_step_budgets(tmp_path):
    runs = sweep_spec.expand(reproduce.build_sweep("electra_compute", "laptop", n_seeds=1),
                             str(tmp_path))
    steps = {r.name: r.resolved.train.steps for r in runs if r.name.startswith("pretrain/")}
    assert steps == {"pretrain/electra_25,seed=0": 250, "pretrain/electra_50,seed=0": 500,
                     "pretrain/electra_100,seed=0": 1000, "pretrain/mlm_25,seed=0": 250,
                     "pretrain/mlm_50,seed=0": 500, "pretrain/mlm_100,seed=0": 1000,
                     "pretrain/mlm_200,seed=0": 2000}


@pytest.mark.parametrize("args, message", [
    (["no_such_table"], "invalid choice"),
    (["electra_table5", "--scale=paper", "--dry_run"], "--text_files=GLOB"),
    (["electra_table5", "--scale=paper", "--dry_run", "--text_files=/w/*.txt"],
     "--validation_files=GLOB"),
    (["electra_table5", "--scale=paper", "--dry_run", "--text_files=/w/*.txt",
      "--validation_files=/v/*.txt"], "--vocab=PATH"),
    (["t5_table4", "--scale=paper", "--dry_run", "--vocab=/v/spm.model"],
     "are for the ELECTRA tables"),
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
    pretrain = out.split("\nfinetune/")[0]
    assert pretrain.count("--config.train.steps=524288") == 12  # 2^19 steps of 128 x 512
    # No dropout in pretraining (shared/reference/T5.md), the paper's 32k C4 vocabulary and
    # bfloat16 compute in both stages; fine-tuning on one node
    assert pretrain.count("--config.model.dropout_rate=0.0") == 12
    assert out.count("--config.data.vocab_path=gs://t5-data/vocabs/cc_all.32000/"
                     "sentencepiece.model") == 132
    assert out.count("--config.model.dtype=bfloat16") == 132
    finetune = out[len(pretrain):]
    assert "#SBATCH --nodes=1" in finetune and "#SBATCH --nodes=2" not in finetune
    assert "#SBATCH --time=2-00:00:00" in finetune
    # A sweep-wide setting reaches both stages (over the fine-tuning defaults), but for the
    # machine's size, which is pretraining's; a finetune.* one only fine-tuning, over all.
    for extra, nodes in (((), 1), (("--set", "finetune.slurm.nodes=3"), 3)):
        out = _reproduce("t5_table6", "--scale=paper", "--backend=slurm", "--dry_run",
                         "--seeds=1", "--set", "slurm.time=9-00:00:00", "--set",
                         "slurm.nodes=4", *extra, f"--root={tmp_path}/t6").stdout
        pretrain = out.split("\nfinetune/")[0]
        finetune = out[len(pretrain):]
        assert "#SBATCH --time=9-00:00:00" in pretrain and "#SBATCH --nodes=4" in pretrain
        assert (finetune.count("#SBATCH --time=9-00:00:00")
                == finetune.count(f"#SBATCH --nodes={nodes}") > 0)
        assert "#SBATCH --time=2-00:00:00" not in finetune
        assert "#SBATCH --nodes=4" not in finetune


def test_paper_scale_electra_table_on_tpu_vms(tmp_path):
    out = _reproduce("electra_table5", "--scale=paper", "--backend=tpu_vm", "--dry_run",
                     "--text_files=/mnt/gcs/wikibooks/*.txt", "--seeds=1",
                     "--validation_files=/mnt/gcs/wikibooks/heldout/*.txt",
                     "--vocab=/mnt/gcs/wikibooks/spm.model",
                     "--set", "tpu.project=my-lab", "--git_url=https://example.org/pretrax.git",
                     "--git_ref=0123abc", f"--root={tmp_path}/e5").stdout
    assert "configs/electra.py:electra_base" in out
    assert "--config.data.train_files=/mnt/gcs/wikibooks/*.txt" in out
    assert "gcloud" in out and "--project=my-lab" in out
    pretrain = out.split("\nfinetune/")[0]
    assert pretrain.count("'tpu.accelerator_type': 'v4-32'") == 5  # fine-tunes on v4-8s
    assert out[len(pretrain):].count("'tpu.accelerator_type': 'v4-8'") == 6 * 8
    # the bucket is mounted writable by the ssh user the runs execute as, renames allowed
    assert "sudo gcsfuse --uid=$(id -u) --gid=$(id -g) --rename-dir-limit=200000" in out
    assert "configs/finetune.py:electra_base" in out and "glue_mnli_v002" in out
    # 5 rows x 1 seed pretrained, (5 rows + scratch) x 8 GLUE tasks fine-tuned: every run reads
    # the vocabulary made for the text; pretraining validates on the held-out files (each run
    # prints its overrides twice: its config line and its line in the slice script)
    assert out.count("--config.data.vocab_path=/mnt/gcs/wikibooks/spm.model") == 2 * (5 + 6 * 8)
    assert out.count("--config.data.validation_files=/mnt/gcs/wikibooks/heldout/*.txt") == 2 * 5


def test_electra_tables_score_glue_by_the_electra_papers_metrics():
    """ELECTRA reports accuracy for MRPC / QQP and Spearman for STS-B (T5: F1, Pearson)."""
    name = report_lib._metric_name
    electra, t5 = reproduce.TABLES["electra_table5"], reproduce.TABLES["t5_table4"]
    assert reproduce.TABLES["electra_compute"].metrics == electra.metrics
    assert [name(t, electra) for t in ("glue_mrpc_v002", "glue_qqp_v002", "glue_stsb_v002",
                                         "glue_cola_v002", "glue_rte_v002")] == [
        "accuracy", "accuracy", "spearman_corrcoef", "matthews_corrcoef", "accuracy"]
    assert [name(t, t5) for t in ("glue_mrpc_v002", "glue_stsb_v002")] == [
        "f1", "pearson_corrcoef"]


# ---------------------------------------------------------------------------------------------
# The report's arithmetic, on hand-made scores.
# ---------------------------------------------------------------------------------------------
def test_compare_is_a_paired_one_sided_t_test():
    scores = {"a": {0: 50.0, 1: 52.0, 2: 51.0}, "b": {0: 48.0, 1: 49.0, 2: 50.0},
              "c": {0: 49.0, 1: 53.0, 2: 50.0}}
    verdict, evidence = report_lib.compare(scores, "a", "b")
    # differences 2, 3, 1: mean 2, std 1, standard error 1/sqrt(3), t = 3.46 > t(0.95, 2) = 2.92
    assert verdict == "reproduced"
    assert evidence == "+2.00 +- 1.00 (3 seeds; t = 3.46, needs 2.92)"
    assert report_lib.compare(scores, "b", "a")[0] == "reversed"
    # a - c: 1, -1, 1: t = 0.5
    assert report_lib.compare(scores, "a", "c")[0] == "within the seeds' spread"
    assert report_lib.compare(scores, "a", "missing") == ("not run", "-")
    assert report_lib.compare({"a": {0: 1.0}, "b": {0: 0.0}}, "a", "b")[0].startswith(
        "inconclusive")
    # Two seeds: t(0.95, 1) = 6.31, so 2.0 and 2.5 (t = 9) counts and 1.0 and 3.0 (t = 2) not.
    two = {"x": {0: 2.0, 1: 2.5}, "y": {0: 1.0, 1: 3.0}, "z": {0: 0.0, 1: 0.0}}
    assert report_lib.compare(two, "x", "z")[0] == "reproduced"
    assert report_lib.compare(two, "y", "z")[0] == "within the seeds' spread"


def test_as_good_as_any_names_the_rows_that_beat_it():
    scores = {"r1": {0: 50.0, 1: 51.0, 2: 52.0}, "r2": {0: 53.0, 1: 54.5, 2: 55.0},
              "r3": {0: 47.0, 1: 57.0, 2: 51.0}}  # noisy: nothing is significant against it
    verdict, evidence = report_lib.as_good_as_any(scores, "r1", ["r1", "r2", "r3"])
    assert verdict == "not reproduced: r2 score higher"  # r2 - r1: 3, 3.5, 3
    assert evidence.startswith("best other row r2: -3.17")
    assert report_lib.as_good_as_any(scores, "r2", ["r1", "r2", "r3"])[0] == "reproduced"
    assert report_lib.as_good_as_any(scores, "r3", ["r1", "r2", "r3"])[0] == "reproduced"


def test_score_takes_the_last_or_the_best_evaluation_after_step_0():
    records = [{"step": 0, "eval/accuracy": 99.0}, {"step": 2, "loss": 1.0},
               {"step": 2, "eval/accuracy": 50.0}, {"step": 4, "eval/accuracy": 40.0}]
    assert report_lib._score(records, "accuracy", "last") == 40.0
    assert report_lib._score(records, "accuracy", "best") == 50.0
    assert report_lib._score(records[:2], "accuracy", "last") is None


def test_compute_claims_interpolate_mlm_at_electra_flops():
    table = reproduce.TABLES["electra_compute"]
    flops = {"electra_25": 2e9, "electra_50": 4e9, "electra_100": 8e9,
             "mlm_25": 1e9, "mlm_50": 2e9, "mlm_100": 4e9}
    scores = {"electra_25": {0: 30.0, 1: 32.0}, "electra_50": {0: 40.0, 1: 41.0},
              "electra_100": {0: 50.0, 1: 50.0},
              "mlm_25": {0: 10.0, 1: 12.0}, "mlm_50": {0: 20.0, 1: 20.0},
              "mlm_100": {0: 44.0, 1: 42.0}}
    claims = report_lib.compute_claims(table, scores, flops)
    # electra_25 at 2e9 meets mlm_50 exactly (differences 10, 12: t = 11); electra_50 at 4e9
    # meets mlm_100 (-4, -1: t = -1.67); electra_100 at 8e9 is beyond MLM's range: no claim.
    assert [(text.split("(")[1], verdict) for text, verdict, _ in claims] == [
        ("2.00e+09 FLOPs)", "reproduced"), ("4.00e+09 FLOPs)", "within the seeds' spread")]
    assert claims[0][2] == "+11.00 +- 1.41 (2 seeds; t = 11.00, needs 6.31)"
    half = report_lib._interpolate([(1e9, 10.0), (4e9, 40.0)], 2e9)
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
    for run in runs:  # each fine-tune's last predictions, counted by label
        if run.name.startswith("finetune/"):
            last = max(os.listdir(os.path.join(run.workdir, "predictions")),
                       key=lambda n: int(n.split("-")[1].split(".")[0]))
            with open(os.path.join(run.workdir, "predictions", last)) as f:
                lines = [json.loads(line) for line in f]
            with open(committed / os.path.relpath(run.local_dir, root) / "labels.json") as f:
                labels = json.load(f)
            assert labels["records"] == len(lines) > 0
            assert labels["step"] == int(last.split("-")[1].split(".")[0]) > 0
            assert sum(labels["predictions"].values()) == len(lines)
            assert labels["distinct_predictions"] == len({x["prediction"] for x in lines})
    n = len([r for r in runs if r.name.startswith("finetune/")])
    out = _reproduce(table, "--report", f"--root={root}", f"--against={committed}").stdout
    assert f"{n} cells compared: {n} identical, largest difference 0.00" in out


def test_report_on_hand_written_runs(tmp_path):
    """Three seeds of T5 Table 4 with hand-set fine-tuning accuracies (one run still pending):
    the cells, row scores, differences and verdicts are the hand-computed ones."""
    from configs import common
    from launch import metrics as metrics_lib
    from launch import sweep_state

    root = str(tmp_path / "t4")
    runs = sweep_spec.expand(reproduce.build_sweep("t5_table4", "laptop", n_seeds=3), root)
    for run in runs:
        common.write_config(run.resolved, run.local_dir)
    sweep_state.write_manifest(root, "table_sweep.py", "t5_table4_laptop", "local", runs)
    accuracy = {"bert": [30, 31, 32], "prefix_lm": [25, 27, 26], "deshuffle": [10, 12, None],
                "scratch": [20, 20, 21]}
    for run in runs:
        if not run.name.startswith("finetune/"):
            continue
        row, seed = run.name.split("/")[1].split(",")[:2]
        value = accuracy[row][int(seed.split("=")[1])]
        if value is None:
            continue  # pending: no final step yet
        os.makedirs(os.path.join(run.workdir, "checkpoints", "600"))
        with open(os.path.join(run.workdir, metrics_lib.METRICS_FILE), "w") as f:
            f.write('{"step": 0, "eval/accuracy": 0.0}\n{"step": 300, "eval/accuracy": 99.0}\n'
                    f'{{"step": 600, "loss": 1.0}}\n{{"step": 600, "eval/accuracy": {value}}}\n')
    text = report_lib.report(root, "t5_table4")
    rows = {line.split(" | ")[0][3:-1]: line for line in text.splitlines()
            if line.startswith("| `")}
    # "best" selection (T5): the step-300 99.0 wins over every final value
    assert "| 99.0 +- 0.0 ([99.0](finetune/bert,seed=0,wn_lexname), [99.0]" in rows["bert"]
    assert "[pending](finetune/deshuffle,seed=2,wn_lexname)" in rows["deshuffle"]
    claims = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in text.splitlines()
              if line.startswith("| ") and " beats " in line}
    # every finished run scored 99.0: all differences are 0 -> within the spread
    assert set(claims.values()) == {"within the seeds' spread"}, claims

    table = reproduce.TABLES["t5_table4"]
    reproduce.TABLES["t5_table4"] = dataclasses.replace(table, select="last")
    try:
        text = report_lib.report(root, "t5_table4")
    finally:
        reproduce.TABLES["t5_table4"] = table
    rows = {line.split(" | ")[0][3:-1]: line for line in text.splitlines()
            if line.startswith("| `")}
    assert "| 31.0 +- 1.0 ([30.0](finetune/bert,seed=0,wn_lexname)" in rows["bert"]
    assert "| **31.00** +- 1.00 | - |" in rows["bert"]
    assert "| **26.00** +- 1.00 | -5.00 +- 1.00 | 80.69 | -2.27 |" in rows["prefix_lm"]
    assert "| **11.00** +- 1.41 | -19.50 +- 0.71 | 73.17 | -9.79 |" in rows["deshuffle"]
    claims = {line.split(" | ")[0][2:]: line.rstrip(" |").split(" | ")[1:3]
              for line in text.splitlines() if line.startswith("| ") and " beats " in line}
    assert claims["BERT-style denoising beats prefix LM"] == [
        "reproduced", "+5.00 +- 1.00 (3 seeds; t = 8.66, needs 2.92)"]
    assert claims["BERT-style denoising beats deshuffling"][0] == "reproduced"  # 20, 19: t = 39
    assert claims["pretraining (deshuffle) beats no pretraining"][0] == "reversed"
    assert claims["pretraining (bert) beats no pretraining"] == [
        "reproduced", "+10.67 +- 0.58 (3 seeds; t = 32.00, needs 2.92)"]
    with pytest.raises(sweep_spec.SweepError, match="not t5_table6"):
        report_lib.report(root, "t5_table6")


def test_reuse_copies_the_runs_another_table_finished(tmp_path, monkeypatch):
    """A table's runs that another table already finished with the same config are copied,
    not run again: matched by config, never by name (the source's row "electra" is an MLM
    row: it is this table's "mlm", not its "electra"), a fine-tune only on top of a copied
    parent, and only finished runs (the source's from-scratch run is left unfinished here).
    Two one-seed tables of tiny ELECTRA rows."""
    from launch import metrics as metrics_lib
    from launch import sweep_state

    five = reproduce.TABLES["electra_table5"]
    row = {r.name: r for r in five.rows}
    mlm_named_electra = dataclasses.replace(row["mlm"], name="electra")
    tables = {"src": dataclasses.replace(five, name="src", rows=(mlm_named_electra,),
                                         baseline="electra", claims=()),
              "dst": dataclasses.replace(five, name="dst", rows=(row["electra"], row["mlm"]),
                                         claims=())}
    monkeypatch.setattr(reproduce, "TABLES", {**reproduce.TABLES, **tables})
    for key, value in cli_env(1).items():
        monkeypatch.setenv(key, value)
    source, dest = tmp_path / "src", tmp_path / "dst"
    assert reproduce.main(["src", "--smoke", "--seeds=1", f"--root={source}"]) == 0
    scratch = source / "finetune" / "scratch,seed=0,wn_lexname"
    with open(scratch / "config.json") as f:
        steps = json.load(f)["train"]["steps"]
    shutil.rmtree(scratch / "checkpoints" / str(steps))  # as if it had stopped before the end
    with pytest.raises(SweepError, match="--reuse=.*no sweep.json there"):
        reproduce.main(["dst", "--smoke", "--seeds=1", f"--root={dest}", f"--reuse={dest}"])
    assert not dest.exists()  # refused before anything was written
    assert reproduce.main(["dst", "--smoke", "--seeds=1", f"--root={dest}",
                           f"--reuse={source}"]) == 0

    _, runs = sweep_state.read_manifest(str(dest))
    reused = {r.name: os.path.join(r.local_dir, "sweep", reproduce.REUSED) for r in runs}
    copied = {name: json.load(open(path))["source"] for name, path in reused.items()
              if os.path.isfile(path)}
    assert copied == {"pretrain/mlm,seed=0": str(source / "pretrain" / "electra,seed=0"),
                      "finetune/mlm,seed=0,wn_lexname":
                          str(source / "finetune" / "electra,seed=0,wn_lexname")}
    for run in runs:
        assert sweep_state.is_done(run), run.name
        if run.name in copied:
            assert (metrics_lib.read_metrics(run.workdir)
                    == metrics_lib.read_metrics(copied[run.name])), run.name
            assert not os.path.exists(os.path.join(run.local_dir, "sweep", "job.json"))
        else:  # ran here: its own job record
            assert os.path.isfile(os.path.join(run.local_dir, "sweep", "job.json")), run.name
    assert not list(tmp_path.rglob("*.reuse-tmp"))
    # A later invocation copies a fine-tune onto a parent an earlier one copied.
    shutil.rmtree(dest / "finetune" / "mlm,seed=0,wn_lexname")
    expanded = sweep_spec.expand(reproduce.build_sweep("dst", "laptop", 1, smoke=True),
                                 str(dest))
    assert reproduce.reuse_finished(expanded, [str(source)], log=lambda m: None) == {
        "finetune/mlm,seed=0,wn_lexname": copied["finetune/mlm,seed=0,wn_lexname"]}
    # The copied fine-tune's config names this table's (copied) parent.
    with open(dest / "finetune" / "mlm,seed=0,wn_lexname" / "config.json") as f:
        assert json.load(f)["train"]["init_from"] == str(dest / "pretrain" / "mlm,seed=0")
    assert "pending" not in (dest / "table.md").read_text()
