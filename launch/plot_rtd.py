"""``python -m launch.plot_rtd DIR[=LABEL] ... --out FILE``: replaced-token-detection curves
of several ELECTRA runs (pretrax or ``launch.electra_reference``) in one PNG.

Panels, from each run's evaluation records: the discriminator's ROC AUC (solid) with, where
the run reports them, the token-identity baseline (dashed) and the AUC on shuffled word order
(dotted); precision and recall of "replaced"; the generator's accuracy; the generator's MLM
cross-entropy with the unigram entropy (dashed).
"""

from __future__ import annotations

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from launch import metrics as metrics_lib  # noqa: E402


def _series(records, key):
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return [s for s, _ in points], [v for _, v in points]


def plot(runs: list[tuple[str, str]], out: str, title: str = "") -> str:
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (workdir, label) in enumerate(runs):
        records = [r for r in metrics_lib.read_metrics(workdir) if "eval/disc_auc" in r]
        if not records:
            raise FileNotFoundError(f"no ELECTRA evaluation records in {workdir}")
        color = colors[i % len(colors)]
        ax = axes[0]
        ax.plot(*_series(records, "eval/disc_auc"), color=color, label=label)
        ax.plot(*_series(records, "eval/identity_auc"), color=color, linestyle="--", alpha=0.7)
        ax.plot(*_series(records, "eval/disc_auc_shuffled"), color=color, linestyle=":",
                alpha=0.9)
        axes[1].plot(*_series(records, "eval/disc_recall"), color=color, label=f"{label} recall")
        axes[1].plot(*_series(records, "eval/disc_precision"), color=color, linestyle="--",
                     label=f"{label} precision")
        axes[2].plot(*_series(records, "eval/gen_accuracy"), color=color, label=label)
        axes[3].plot(*_series(records, "eval/mlm_loss"), color=color, label=label)
        axes[3].plot(*_series(records, "eval/unigram_entropy"), color=color, linestyle="--",
                     alpha=0.6)
    axes[0].axhline(0.5, color="grey", linewidth=0.8)
    axes[0].set_title("discriminator ROC AUC\n(-- token identity, : shuffled order)")
    axes[1].set_title("replaced: recall (solid), precision (--)")
    axes[2].set_title("generator accuracy (masked slots)")
    axes[3].set_title("generator MLM cross-entropy (-- unigram)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if len(runs) <= 3:
        axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders, each optionally =LABEL")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = [(r.split("=", 1)[0], r.split("=", 1)[1] if "=" in r else os.path.basename(
        os.path.normpath(r))) for r in args.runs]
    print(plot(runs, args.out, args.title))


if __name__ == "__main__":
    main()
