"""Does pretraining help? Fine-tune from the quickstart pretraining runs and from scratch.

    python -m launch.finetune_study --root=runs/study [--seeds=3] [--steps=600] [--tasks=...]

For every bundled downstream task (``data/downstream/``) and family (ELECTRA ``classify`` on
the classification tasks, T5 ``text_to_text`` on all), fine-tunes the quickstart-shaped model
(``configs/finetune.py:{electra,t5}_quickstart``) twice per seed: from the quickstart
pretraining run (``configs/{electra,t5}.py:quickstart``, trained first if ``ROOT/pretrain/*``
holds no checkpoint) and from random initialisation, with the same steps, data order and
recipe. Each run's best checkpoint (by validation metric) is scored on the test split. Writes
``ROOT/results.md`` (mean +- std over seeds, the majority-class baseline beside) and
``ROOT/results.png``; every run keeps its own folder, so a rerun resumes and skips what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np


def _quiet(config: Any) -> Any:
    config.train.tensorboard = False
    config.train.console = False
    return config


def _pretrain(root: str, family: str) -> str:
    from configs import electra as electra_configs
    from configs import t5 as t5_configs
    from launch import trainer

    workdir = os.path.join(root, "pretrain", family)
    config = (t5_configs if family == "t5" else electra_configs).get_config("quickstart")
    config.train.showcase = False
    done = os.path.join(workdir, "done.json")
    if not os.path.exists(done):
        summary = trainer.train(_quiet(config), workdir)
        with open(done, "w") as f:
            json.dump({"step": summary["step"], "eval": summary["eval"][-1:]}, f)
    return workdir


def _finetune(root: str, family: str, task: str, init: str, seed: int, steps: int,
              pretrained: str) -> dict[str, Any]:
    from configs import finetune as finetune_configs
    from launch import evaluation, trainer

    workdir = os.path.join(root, family, task, init, f"seed{seed}")
    result_path = os.path.join(workdir, "test.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    config = finetune_configs.get_config(f"{family}_quickstart")
    config.data.task = task
    config.seed = seed
    config.train.epochs = None
    config.train.steps = steps
    config.optimizer.total_steps = steps
    config.optimizer.warmup_steps = steps // 10 if family == "electra" else 0
    config.train.eval_every = max(1, steps // 4)
    config.checkpoint.every = config.train.eval_every
    config.train.task_eval_examples = 500  # model selection on 500 validation records
    if init == "pretrained":
        config.train.init_from = pretrained
    start = time.time()
    trainer.train(_quiet(config), workdir)
    program, params, step = evaluation.load_program(config, workdir, "best")
    from data import vocab as vocab_lib

    examples = program.objective.task_examples("test", vocab_lib.path_of(config), seed)
    metrics = evaluation.task_metrics(program, params, examples,
                                      os.path.join(workdir, "predictions", "test-best.jsonl"))
    result = {"family": family, "task": task, "init": init, "seed": seed, "best_step": step,
              "metric": program.objective.task.metric, "seconds": time.time() - start, **metrics}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def _majority(task: Any) -> float:
    targets = [r[task.target_field] for r in task.rows("train")]
    values, counts = np.unique(targets, return_counts=True)
    test = [r[task.target_field] for r in task.rows("test")]
    return 100.0 * float(np.mean(np.asarray(test) == values[np.argmax(counts)]))


def _report(root: str, results: list[dict[str, Any]]) -> None:
    from data import finetune

    rows = ["| family | task | metric | majority baseline | from scratch | pretrained | "
            "difference |", "|---|---|---|---|---|---|---|"]
    cells = {}
    for family, task in sorted({(r["family"], r["task"]) for r in results}):
        group = [r for r in results if r["family"] == family and r["task"] == task]
        metric = group[0]["metric"]
        stats = {}
        for init in ("scratch", "pretrained"):
            values = [r[metric] for r in group if r["init"] == init]
            stats[init] = (float(np.mean(values)), float(np.std(values)), len(values))
        cells[(family, task)] = stats
        diff = stats["pretrained"][0] - stats["scratch"][0]
        rows.append(f"| {family} | {task} | {metric} | {_majority(finetune.get(task)):.1f} | "
                    f"{stats['scratch'][0]:.1f} +- {stats['scratch'][1]:.1f} | "
                    f"{stats['pretrained'][0]:.1f} +- {stats['pretrained'][1]:.1f} | "
                    f"{diff:+.1f} |")
    with open(os.path.join(root, "results.md"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print("\n".join(rows), flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{f}\n{t}" for f, t in cells]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(1.8 * len(labels) + 2, 4))
    for offset, init in ((-0.2, "scratch"), (0.2, "pretrained")):
        ax.bar(x + offset, [cells[k][init][0] for k in cells], 0.4,
               yerr=[cells[k][init][1] for k in cells], label=init, capsize=3)
    ax.set_xticks(x, labels)
    ax.set_ylabel("test metric (task's main metric)")
    ax.set_title("Fine-tuning from the quickstart pretraining vs from scratch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(root, "results.png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--tasks", default="wn_lexname,wn_hypernym,wn_headword")
    parser.add_argument("--families", default="electra,t5")
    parser.add_argument("--report_only", action="store_true",
                        help="Only write the table and plot from the runs finished so far.")
    args = parser.parse_args()
    from launch import platform

    platform.prefer_cpu_without_accelerators()
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from data import finetune

    if args.report_only:
        import glob

        results = []
        for path in sorted(glob.glob(os.path.join(args.root, "*", "*", "*", "seed*",
                                                  "test.json"))):
            with open(path) as f:
                results.append(json.load(f))
        _report(args.root, results)
        return
    results = []
    for family in args.families.split(","):
        pretrained = _pretrain(args.root, family)
        for task in args.tasks.split(","):
            kind = finetune.get(task).kind
            if family == "electra" and kind == "text_to_text":
                continue
            for seed in range(args.seeds):
                for init in ("scratch", "pretrained"):
                    result = _finetune(args.root, family, task, init, seed, args.steps,
                                       pretrained)
                    print(json.dumps(result), flush=True)
                    results.append(result)
    _report(args.root, results)


if __name__ == "__main__":
    main()
