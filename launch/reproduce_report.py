"""The report of a paper table's sweep (``launch/reproduce.py``): cells, verdicts, figures.

``report`` reads every finished fine-tuning run of ROOT into cells (row, task, seed, score),
writes ``ROOT/table.md`` (mean +- std per cell, every seed linked to its run folder; row scores
and their differences from the baseline row beside the paper's), checks the paper's
conclusions with a one-sided paired t-test over seeds, and draws ``pretraining.png`` and
``downstream.png``. ``export`` copies what a committed table needs; ``against`` compares a
re-run with a committed table cell by cell.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from configs import common
from launch import reproduce, sweep_state
from launch.reproduce import FINETUNE_STAGE, REUSED, SCRATCH, Row, Table
from launch.sweep_spec import SweepError

CELLS = "cells.json"  # every cell's value, machine-readable (what --against compares)
LABELS = "labels.json"  # beside an exported fine-tuning run: what its last predictions were


@dataclasses.dataclass
class Cell:
    row: str
    task: str
    seed: int
    value: float | None  # None: the run has not finished
    run: str  # its folder, relative to the root


def _metric_name(task: str, table: Table) -> str:
    """The metric a table scores ``task`` by: the table's own choice (``Table.metrics``: the
    ELECTRA paper's), else the task's main metric (T5's)."""
    from data import finetune

    return table.metrics.get(task) or finetune.get(task).metric


def _score(records: list[dict[str, Any]], metric: str, select: str) -> float | None:
    evals = [r[f"eval/{metric}"] for r in records if f"eval/{metric}" in r and r.get("step")]
    if not evals:
        return None
    return max(evals) if select == "best" else evals[-1]


def _parse_name(name: str) -> dict[str, str]:
    """``finetune/bert,seed=1,wn_lexname`` -> {"row": "bert", "seed": "1", "task": ...}."""
    parts = name.split("/", 1)[-1].split(",")
    seed = next(p for p in parts if p.startswith("seed="))
    return {"row": parts[0], "seed": seed.split("=", 1)[1], "task": parts[-1]}


def cells(root: str, table: Table) -> list[Cell]:
    from launch import metrics as metrics_lib

    _, runs = sweep_state.read_manifest(root)
    out = []
    for run in runs:
        if not run.name.startswith(FINETUNE_STAGE + "/"):
            continue
        parts = _parse_name(run.name)
        value = None
        if sweep_state.is_done(run):
            value = _score(metrics_lib.read_metrics(run.workdir),
                           _metric_name(parts["task"], table), table.select)
        out.append(Cell(parts["row"], parts["task"], int(parts["seed"]), value,
                        os.path.relpath(run.local_dir, root)))
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def row_scores(found: list[Cell]) -> dict[str, dict[int, float]]:
    """row -> seed -> the mean over tasks (only seeds with every task finished)."""
    tasks = sorted({c.task for c in found})
    out: dict[str, dict[int, float]] = {}
    for row in dict.fromkeys(c.row for c in found):
        for seed in sorted({c.seed for c in found if c.row == row}):
            values = [c.value for c in found if c.row == row and c.seed == seed]
            if len(values) == len(tasks) and all(v is not None for v in values):
                out.setdefault(row, {})[seed] = sum(values) / len(values)
    return out


CONFIDENCE = 0.95  # one-sided, paired t-test over seeds


def paired_t(diffs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, t statistic, the one-sided critical t at :data:`CONFIDENCE`) of paired
    differences (n >= 2; t is +-inf when every difference is the same nonzero value)."""
    from scipy import stats

    n = len(diffs)
    mean, std = _mean_std(diffs)
    se = std / math.sqrt(n)
    t = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return mean, t, float(stats.t.ppf(CONFIDENCE, n - 1))


def _diffs(scores: dict[str, dict[int, float]], a: str, b: str) -> list[float]:
    paired = sorted(set(scores.get(a, {})) & set(scores.get(b, {})))
    return [scores[a][s] - scores[b][s] for s in paired]


def _evidence(diffs: Sequence[float]) -> str:
    mean, std = _mean_std(diffs)
    text = f"{mean:+.2f} +- {std:.2f} ({len(diffs)} seed{'s' * (len(diffs) > 1)}"
    if len(diffs) > 1:
        _, t, crit = paired_t(diffs)
        text += f"; t = {t:.2f}, needs {crit:.2f}"
    return text + ")"


def compare(scores: dict[str, dict[int, float]], better: str, worse: str) -> tuple[str, str]:
    """(verdict, evidence) for "``better`` scores above ``worse``", paired over seeds: a
    one-sided t-test at 95% either way ("reproduced" / "reversed"), else "within the seeds'
    spread" (with two seeds a difference must be large against its spread to count)."""
    diffs = _diffs(scores, better, worse)
    if not diffs:
        return "not run", "-"
    if len(diffs) < 2:
        return "inconclusive (one seed)", _evidence(diffs)
    _, t, crit = paired_t(diffs)
    verdict = ("reproduced" if t > crit else "reversed" if t < -crit
               else "within the seeds' spread")
    return verdict, _evidence(diffs)


def as_good_as_any(scores: dict[str, dict[int, float]], row: str, others: Sequence[str]
                   ) -> tuple[str, str]:
    """"``row`` is about as good as any": reproduced when no other row beats it (the test of
    :func:`compare`), not reproduced naming the rows that do."""
    if row not in scores:
        return "not run", "-"
    tested = [o for o in others if o in scores and o != row and len(_diffs(scores, o, row)) > 1]
    if not tested:
        return "inconclusive (one seed)", "-"
    beaten_by = [o for o in tested if compare(scores, o, row)[0] == "reproduced"]
    best = max(tested, key=lambda o: _mean_std(list(scores[o].values()))[0])
    evidence = f"best other row {best}: {_evidence(_diffs(scores, row, best))}"
    if beaten_by:
        return f"not reproduced: {', '.join(beaten_by)} score higher", evidence
    return "reproduced", evidence


def _flops(root: str, runs: Sequence[Any]) -> dict[str, float]:
    """row -> pretraining FLOPs (the objective's model FLOPs per step x steps)."""
    from objectives import registry

    out = {}
    for run in runs:
        if run.name.startswith(FINETUNE_STAGE + "/"):
            continue
        row = run.name.split("/", 1)[-1].split(",")[0]
        if row in out:
            continue
        config = common.read_config(os.path.join(run.local_dir, "config.json"))
        # FLOPs depend on the shapes only: count them with the bundled vocabulary, so that a
        # report needs neither the run's (gs://, or on the cluster) nor a network.
        config.data.vocab_path = ""
        out[row] = registry.build(config).flops_per_step * config.train.steps
    return out


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation in log FLOPs; None outside the measured range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) if x1 > x0 else 0
            return y0 + t * (y1 - y0)
    return None


def compute_claims(table: Table, scores: dict[str, dict[int, float]], flops: dict[str, float]
                   ) -> list[tuple[str, str, str]]:
    """For each ELECTRA budget inside MLM's measured FLOP range: ELECTRA's mean score against
    MLM's interpolated at the same FLOPs (per seed, then paired as :func:`compare`)."""
    out = []
    for claim in table.claims:
        ours = [r.name for r in table.rows if r.name.startswith(claim.better + "_")]
        theirs = [r.name for r in table.rows if r.name.startswith(claim.worse + "_")]
        for row in ours:
            if row not in scores or row not in flops:
                continue
            paired: dict[str, dict[int, float]] = {"a": {}, "b": {}}
            for seed, value in scores[row].items():
                curve = [(flops[r], scores[r][seed]) for r in theirs
                         if r in scores and seed in scores[r] and r in flops]
                other = _interpolate(curve, flops[row])
                if other is not None:
                    paired["a"][seed], paired["b"][seed] = value, other
            verdict, evidence = compare(paired, "a", "b")
            if verdict != "not run":
                out.append((f"{claim.text} ({flops[row]:.2e} FLOPs)", verdict, evidence))
    return out


def report(root: str, table_name: str) -> str:
    """Writes ROOT/table.md, ROOT/pretraining.png and ROOT/downstream.png; returns the markdown."""
    table = reproduce.TABLES[table_name]
    if not os.path.isfile(os.path.join(root, sweep_state.MANIFEST)):
        raise SweepError(f"{root} holds no table: run python -m launch.reproduce {table_name} "
                         f"--root={root} first")
    manifest, runs = sweep_state.read_manifest(root)
    if not manifest["name"].startswith(table_name + "_"):
        raise SweepError(f"{root} holds the sweep {manifest['name']!r}, not {table_name}")
    found = cells(root, table)
    unseen = [run.workdir for run in runs  # runs that write elsewhere (TPU VMs) and are not here
              if run.workdir != run.local_dir and not os.path.isdir(run.workdir)]
    if unseen and len(unseen) == len(runs):
        print(f"note: no run folder is on this machine (e.g. {unseen[0]}): a TPU or cluster "
              "sweep's runs write where its workers mount them; mount that place here at the "
              "same path (tpu.workdir_root) to read their metrics", file=sys.stderr)
    scores = row_scores(found)
    flops = _flops(root, runs)
    tasks = sorted({c.task for c in found})
    base = scores.get(table.baseline, {})
    metrics = ", ".join(f"{t} {_metric_name(t, table)}" for t in tasks)
    lines = [f"# {table.title}", "",
             f"Sweep `{manifest['name']}` under `{root}`; "
             f"{'best' if table.select == 'best' else 'final'} validation score of each "
             f"fine-tuning run (metric: {metrics}); "
             "mean +- std over pretraining seeds, each seed's value linked to its run.", ""]
    header = ["row", "paper row", *tasks, "score (mean over tasks)",
              f"vs {table.baseline}", f"paper ({table.paper_column})", "paper vs baseline",
              "pretraining FLOPs"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baseline_paper = table.row(table.baseline).paper
    for row_name in [r.name for r in table.rows] + [SCRATCH]:
        row = next((r for r in table.rows if r.name == row_name), None)
        cols = [f"`{row_name}`", row.label if row else "no pretraining (from scratch)"]
        for task in tasks:
            mine = sorted((c for c in found if c.row == row_name and c.task == task),
                          key=lambda c: c.seed)
            done = [c.value for c in mine if c.value is not None]
            links = ", ".join(f"[{c.value:.1f}]({c.run})" if c.value is not None
                              else f"[pending]({c.run})" for c in mine)
            if done:
                mean, std = _mean_std(done)
                cols.append(f"{mean:.1f} +- {std:.1f} ({links})")
            else:
                cols.append(links or "-")
        mine = scores.get(row_name, {})
        if mine:
            mean, std = _mean_std(list(mine.values()))
            cols.append(f"**{mean:.2f}** +- {std:.2f}")
            paired = sorted(set(mine) & set(base))
            if paired and row_name != table.baseline:
                diff, dstd = _mean_std([mine[s] - base[s] for s in paired])
                cols.append(f"{diff:+.2f} +- {dstd:.2f}")
            else:
                cols.append("-")
        else:
            cols += ["-", "-"]
        paper = row.paper if row else None
        cols.append("-" if paper is None else f"{paper:.2f}")
        cols.append("-" if paper is None or baseline_paper is None or row_name == table.baseline
                    else f"{paper - baseline_paper:+.2f}")
        cols.append(f"{flops[row_name]:.2e}" if row_name in flops else "0")
        lines.append("| " + " | ".join(cols) + " |")
    lines += ["", "## The paper's conclusions, checked", "",
              "| conclusion | here | mean difference +- std over seeds |", "|---|---|---|"]
    rows = [r.name for r in table.rows]
    claims = (compute_claims(table, scores, flops) if table.compute_curve else
              [(c.text, *(compare(scores, c.better, c.worse) if c.kind == "beats" else
                          as_good_as_any(scores, c.better, rows))) for c in table.claims])
    claims += [(f"pretraining ({r}) beats no pretraining", *compare(scores, r, SCRATCH))
               for r in rows]
    lines += [f"| {text} | {verdict} | {evidence} |" for text, verdict, evidence in claims]
    lines += ["", "A conclusion is *reproduced* when a one-sided paired t-test over the seeds "
              "passes at 95% (t above the critical value shown), *reversed* when the opposite "
              "test passes, and within the seeds' spread otherwise.", ""]
    text = "\n".join(lines)
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(root, CELLS), "w") as f:
        json.dump({"table": table_name, "sweep": manifest["name"],
                   "cells": [dataclasses.asdict(c) for c in found],
                   "scores": scores}, f, indent=1)
    _plots(root, table, runs, scores, flops)
    return text


def _plots(root: str, table: Table, runs: Sequence[Any], scores: dict[str, dict[int, float]],
           flops: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from launch import metrics as metrics_lib

    key = "eval/cross_entropy" if table.family == "t5" else "eval/loss"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in table.rows:
        curves = []
        for run in runs:
            if run.name.startswith(f"pretrain/{row.name},"):
                records = [r for r in metrics_lib.read_metrics(run.workdir) if key in r]
                curves.append({r["step"]: r[key] for r in records})
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            ax.plot(steps, [sum(c[s] for c in curves) / len(curves) for s in steps],
                    marker="o", label=_legend_label(row))
    ax.set_xlabel("pretraining step")
    ax.set_ylabel(f"validation {key.split('/')[1].replace('_', '-')}\n(own objective, seed mean)")
    _finish(fig, ax, f"{table.title}: pretraining", os.path.join(root, "pretraining.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    families = ({"ELECTRA": "electra_", "BERT (MLM)": "mlm_"} if table.compute_curve else
                {_legend_label(r): r.name for r in table.rows})
    for label, prefix in families.items():
        names = [r.name for r in table.rows if (r.name.startswith(prefix) if table.compute_curve
                                                else r.name == prefix)]
        xs, ys, es = [], [], []
        for name in names:
            if name in scores and name in flops:
                mean, std = _mean_std(list(scores[name].values()))
                xs.append(flops[name])
                ys.append(mean)
                es.append(std)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label,
                        linestyle="-" if table.compute_curve else "none")
    if SCRATCH in scores:
        mean, _ = _mean_std(list(scores[SCRATCH].values()))
        ax.axhline(mean, color="gray", linestyle="--", label="no pretraining")
    if table.compute_curve:
        ax.set_xscale("log")
    ax.set_xlabel("pretraining FLOPs (model FLOPs per step x steps)")
    ax.set_ylabel("downstream score (mean over tasks and seeds)")
    _finish(fig, ax, f"{table.title}: downstream", os.path.join(root, "downstream.png"))


def _legend_label(row: Row) -> str:
    """The paper's label, or the row name where the label is just its tail ("2" for span2)."""
    return row.name if row.name.endswith(row.label) else row.label


def _finish(fig: Any, ax: Any, title: str, path: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prediction_labels(workdir: str) -> dict[str, Any] | None:
    """How often each label was the target and the prediction in a fine-tuning run's last
    validation predictions (``predictions/validation-<step>.jsonl``); None without any."""
    folder = os.path.join(workdir, "predictions")
    steps = sorted(int(n[len("validation-"):-len(".jsonl")]) for n in
                   (os.listdir(folder) if os.path.isdir(folder) else ())
                   if n.startswith("validation-") and n.endswith(".jsonl"))
    if not steps:
        return None
    targets, predictions = collections.Counter(), collections.Counter()
    with open(os.path.join(folder, f"validation-{steps[-1]}.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            targets[record["target"]] += 1
            predictions[record["prediction"]] += 1
    return {"step": steps[-1], "records": sum(targets.values()),
            "distinct_predictions": len(predictions),
            "predictions": dict(predictions.most_common()), "targets": dict(targets.most_common())}


def export(root: str, dest: str) -> list[str]:
    """Copies what a committed table needs into ``dest``: the table, figures, cells, wall
    times, and each run's config.json, metrics.jsonl, log, (for a run copied from another
    table by ``--reuse``) where it came from, and for a fine-tuning run the label counts of its
    last validation predictions (``labels.json``; the predictions themselves are 0.1-0.5 MB
    a run); no checkpoints. The run folders keep their names so the table's links resolve
    there."""
    copied = []
    _, runs = sweep_state.read_manifest(root)
    names = ["table.md", "pretraining.png", "downstream.png", CELLS, "reproduce.json",
             "table_sweep.py"]
    files = [(os.path.join(root, n), os.path.join(dest, n)) for n in names]
    for run in runs:
        rel = os.path.relpath(run.local_dir, root)
        for name in ("config.json", "metrics.jsonl", os.path.join("sweep", "train.log"),
                     os.path.join(sweep_state.JOB_DIR, REUSED)):
            files.append((os.path.join(run.local_dir, name), os.path.join(dest, rel, name)))
        labels = prediction_labels(run.workdir)
        if labels is not None:
            os.makedirs(os.path.join(dest, rel), exist_ok=True)
            with open(os.path.join(dest, rel, LABELS), "w") as f:
                json.dump(labels, f, indent=1)
            copied.append(os.path.join(dest, rel, LABELS))
    for source, target in files:
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(target)
    return copied


def against(root: str, reference: str) -> str:
    """Each cell of ``root`` beside the same cell (row, task, seed) of a committed table, and
    each row score's difference against the committed seeds' spread."""
    def load(path: str) -> dict[str, Any]:
        with open(os.path.join(path, CELLS)) as f:
            return json.load(f)

    now, then = load(root), load(reference)
    if now["sweep"] != then["sweep"]:
        raise SweepError(f"--against={reference} holds {then['sweep']}, not {now['sweep']}")
    key = lambda c: (c["row"], c["task"], c["seed"])  # noqa: E731
    old = {key(c): c["value"] for c in then["cells"]}
    lines = ["| row | task | seed | committed | this run | difference |",
             "|---|---|---|---|---|---|"]
    diffs = []
    for cell in now["cells"]:
        a, b = old.get(key(cell)), cell["value"]
        if a is None or b is None:
            continue
        diffs.append(abs(b - a))
        lines.append(f"| {cell['row']} | {cell['task']} | {cell['seed']} | {a:.2f} | {b:.2f} | "
                     f"{b - a:+.2f} |")
    lines.append("")
    within = []
    for row, seeds_ in then["scores"].items():
        mine = now["scores"].get(row)
        if not mine or len(seeds_) < 2:
            continue
        mean, std = _mean_std(list(seeds_.values()))
        here, _ = _mean_std(list(mine.values()))
        within.append(abs(here - mean) <= std)
        lines.append(f"row {row}: committed {mean:.2f} +- {std:.2f}, this run {here:.2f} "
                     f"({'within' if within[-1] else 'OUTSIDE'} the committed spread)")
    identical = sum(d == 0 for d in diffs)
    lines.append(f"{len(diffs)} cells compared: {identical} identical, largest difference "
                 f"{max(diffs, default=0):.2f}; {sum(within)} of {len(within)} row scores "
                 "within the committed seeds' spread")
    return "\n".join(lines)
