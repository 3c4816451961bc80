"""``python -m launch.plot DIR [--out FILE]``: loss and metric curves of a run as a PNG.

Reads ``DIR/metrics.jsonl``; draws the training loss with the validation loss on top, and one
panel per objective metric that both splits report (cross-entropy, accuracies...). Writes
``DIR/metrics.png`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from launch import metrics as metrics_lib  # noqa: E402

# Panels after the loss, in this order when present.
PANELS = ("cross_entropy", "accuracy", "mlm_loss", "disc_loss", "disc_accuracy", "gen_accuracy",
          "tokens_per_sec", "learning_rate")


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return [s for s, _ in points], [v for _, v in points]


def plot(workdir: str, out: str | None = None) -> str:
    """Writes the PNG and returns its path."""
    records = metrics_lib.read_metrics(workdir)
    if not records:
        raise FileNotFoundError(f"no metrics in {os.path.join(workdir, metrics_lib.METRICS_FILE)}")
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    keys = ["loss"] + [k for k in PANELS if any(k in r for r in train)
                       or any(f"eval/{k}" in r for r in evals)]
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        steps, values = _series(train, key)
        if steps:
            ax.plot(steps, values, label="train", linewidth=1.2)
        steps, values = _series(evals, f"eval/{key}")
        if steps:
            ax.plot(steps, values, "o-", label="validation", linewidth=1.5)
        if key == "cross_entropy":
            steps, values = _series(evals, "eval/unigram_entropy")
            if steps:
                ax.axhline(values[-1], color="gray", linestyle="--", label="unigram baseline")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    out = out or os.path.join(workdir, "metrics.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a run directory holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="PNG path (default: WORKDIR/metrics.png)")
    args = parser.parse_args(argv)
    print(plot(args.workdir, args.out))


if __name__ == "__main__":
    main()
