"""A sweep at a glance: the ``status`` table, and ``collect``'s CSV, markdown and curves.

``collect`` writes, next to ``ROOT/sweep.json``:

- ``results.csv``: one row per run: its state and step, each varied key, then for the training
  loss and every evaluation metric its final value and its best value with the step of the best
  (best = highest for accuracies, AUC, precision, recall; lowest otherwise);
- ``results.md``: the same for the headline metrics (:data:`HEADLINE`), as a markdown table;
- ``curves.png``: every run's training loss and evaluation metrics against steps, one panel each.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

from launch import sweep_state

# Metrics shown in the status table and the markdown (in this order, when a run reports them).
HEADLINE = ("loss", "cross_entropy", "accuracy", "disc_auc", "disc_accuracy", "gen_accuracy",
            "main_accuracy")
HIGHER_IS_BETTER = ("accuracy", "auc", "precision", "recall", "f1")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def _eval_summary(record: dict[str, Any]) -> str:
    parts = [f"{key} {_fmt(record[f'eval/{key}'])}" for key in HEADLINE
             if f"eval/{key}" in record]
    return ", ".join(parts[:3]) or "-"


def status_table(statuses: list[sweep_state.RunStatus]) -> str:
    """run, state, step, latest loss, latest evaluation, tokens/s, workdir (and why)."""
    rows = []
    for s in statuses:
        step = "-" if s.step is None else f"{s.step}/{s.total}"
        eval_text = _eval_summary(s.last_eval)
        if s.last_eval:
            eval_text = f"@{s.last_eval['step']}: {eval_text}"
        rows.append([s.run.name, s.state, step, _fmt(s.last.get("loss")), eval_text,
                     _fmt(s.last.get("tokens_per_sec")), s.run.workdir, s.detail])
    counts = {state: sum(s.state == state for s in statuses) for state in sweep_state.STATES}
    summary = f"{len(statuses)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items()
                                                    if n)
    return _table(["run", "state", "step", "loss", "eval", "tok/s", "workdir", "detail"],
                  rows) + "\n" + summary


def _best(records: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    points = [(r[key], r["step"]) for r in records
              if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    if not points:
        return None, None
    higher = any(word in key for word in HIGHER_IS_BETTER)
    return (max if higher else min)(points, key=lambda p: p[0])


def result_rows(statuses: list[sweep_state.RunStatus]) -> tuple[list[str], list[dict[str, Any]]]:
    """CSV columns and one dict per run."""
    varied = []
    for s in statuses:
        varied += [k for k in s.run.overrides if k not in varied]
    # Keys that are the same in every run are the sweep's fixed settings, not results.
    varied = [k for k in varied if len({repr(s.run.overrides.get(k)) for s in statuses}) > 1]
    metric_keys = ["loss"]
    for s in statuses:
        for r in s.records:
            metric_keys += [k for k in r if k.startswith("eval/") and k not in metric_keys]
    rows = []
    for s in statuses:
        row: dict[str, Any] = {"run": s.run.name, "state": s.state, "step": s.step}
        row.update({k.removeprefix("config."): s.run.overrides.get(k) for k in varied})
        for key in metric_keys:
            source = s.last if key == "loss" else s.last_eval
            best, best_step = _best(s.records, key)
            row[f"final {key}"] = source.get(key)
            row[f"best {key}"], row[f"best {key} step"] = best, best_step
        rows.append(row)
    columns = ["run", "state", "step", *[k.removeprefix("config.") for k in varied]]
    for key in metric_keys:
        columns += [f"final {key}", f"best {key}", f"best {key} step"]
    return columns, rows


def _markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    headline = {f"eval/{k}" for k in HEADLINE} | {"loss"}
    keep = [c for c in columns if not c.startswith(("final ", "best "))
            or (c.split(" ", 1)[1] in headline)]
    keep = [c for c in keep if not c.endswith(" step") or c == "step"]
    lines = ["| " + " | ".join(keep) + " |", "|" + "---|" * len(keep)]
    for row in rows:
        cells = []
        for c in keep:
            value = row.get(c)
            best_step = row.get(f"{c} step") if c.startswith("best ") else None
            cells.append(_fmt(value) + (f" (@{best_step})" if best_step is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def collect(root: str, statuses: list[sweep_state.RunStatus]) -> list[str]:
    """Writes results.csv, results.md and curves.png under ``root``; returns their paths."""
    columns, rows = result_rows(statuses)
    csv_path, md_path = os.path.join(root, "results.csv"), os.path.join(root, "results.md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(md_path, "w") as f:
        f.write(_markdown(columns, rows))
    return [csv_path, md_path, plot_curves(statuses, os.path.join(root, "curves.png"))]


def plot_curves(statuses: list[sweep_state.RunStatus], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["loss"] + [f"eval/{k}" for k in HEADLINE
                         if any(f"eval/{k}" in r for s in statuses for r in s.records)]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols + 3, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, panels, strict=False):
        for s in statuses:
            points = [(r["step"], r[key]) for r in s.records
                      if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
            if points:
                style = "-" if key == "loss" else "o-"
                ax.plot(*zip(*points, strict=True), style, label=s.run.name, linewidth=1.2,
                        markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 5 * cols / (5 * cols + 3), 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
