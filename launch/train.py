"""Command line: ``python -m launch.train --config=configs/t5.py:tiny --workdir=DIR``.

The config is locked, so an override of a key that does not exist fails at start-up. The
resolved config is written to ``DIR/config.json`` (and ``config.txt``) so a run can be
reproduced from its folder; a later start in the same ``DIR`` resumes from its latest
checkpoint. Exit code 0 on success and after a SIGTERM/SIGINT (checkpoint saved), 1 when the
loss became NaN/Inf (the last good checkpoint stays intact).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from configs import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file and its variant: configs/FILE.py:VARIANT.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here so --help works without initialising JAX.
    import jax

    from launch import trainer

    # orbax logs every file it writes at INFO; keep the console to the progress line.
    logging.set_verbosity(logging.WARNING)
    config, workdir = _CONFIG.value, _WORKDIR.value
    trainer.initialize_distributed(config.distributed)
    if jax.process_index() == 0:
        common.write_config(config, workdir)
    try:
        summary = trainer.train(config, workdir)
    except trainer.TrainingDiverged as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        return 1
    if jax.process_index() == 0:
        _print_summary(summary)
        from launch import plot

        print(f"loss curves: {plot.plot(workdir)}", flush=True)
    return 0


def _print_summary(summary: dict) -> None:
    if summary["stopped_by_signal"]:
        print(f"stopped by signal at step {summary['step']}; checkpoint saved, rerun the same "
              "command to resume", flush=True)
        return
    evals = summary["eval"]
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        lines = [f"validation loss: step {first['step']} {first['eval/loss']:.4f} -> step "
                 f"{last['step']} {last['eval/loss']:.4f}"]
        objective = summary["objective"]
        for key in objective.summary_keys:
            if f"eval/{key}" in last and f"eval/{key}" in first:
                lines.append(f"  {key}: {first[f'eval/{key}']:.4f} -> {last[f'eval/{key}']:.4f}")
        print("\n".join(lines + objective.notes(last)), flush=True)
    if summary.get("showcase"):
        print("\n".join(summary["showcase"]), flush=True)
    print(f"done: step {summary['step']}", flush=True)


if __name__ == "__main__":
    try:
        common.check_renamed(sys.argv[1:])
    except ValueError as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    app.run(lambda argv: sys.exit(main(argv)))
