"""Command line: ``python -m launch.train --config=configs/t5.py:tiny --workdir=DIR``.

The config is locked, so an override of a key that does not exist fails at start-up. The
resolved config is written to ``DIR/config.json`` (and ``config.txt``) so a run can be
reproduced from its folder; a later start in the same ``DIR`` resumes from its latest
checkpoint. Exit code 0 on success and after a SIGTERM/SIGINT (checkpoint saved), 1 when the
loss became NaN/Inf (the last good checkpoint stays intact), 2 when the run cannot start (a bad
flag or config value, mesh, vocabulary, corpus or checkpoint, a workdir another job holds):
one line saying what and why; ``--verbose`` shows the traceback. 3 when another process of a
multi-process job (or its coordinator) stopped responding: one line naming it, the step and the
newest checkpoint, within ``config.distributed.heartbeat_timeout`` seconds (launch/supervise.py).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from configs import common

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined only when run as a program: tests import this module beside other CLIs."""
    config_flags.DEFINE_config_file(
        "config", None, "A config file and its variant: configs/FILE.py:VARIANT.",
        lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
    flags.DEFINE_bool("verbose", False, "Show the traceback of start-up errors.")
    flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad flag or config override (a typo'd key, a wrong type, an
    unknown variant) answered in one line and exit code 2 instead of a traceback."""
    try:
        return FLAGS(argv)
    except Exception as error:  # absl and ml_collections raise many types here
        if "--verbose" in argv:
            raise
        message = str(error).strip()
        if "Traceback (most recent call last)" in message:  # a config file that raised
            last = message.splitlines()[-1]
            message = f"{message.splitlines()[0].split(':', 1)[0]}: {last.split(': ', 1)[-1]}"
        message = " ".join(message.replace("\\n", " ").replace("\\'", "'").split())
        if "Did you mean" in message:  # a mistyped key: name the override it came from
            hint = message[message.index("Did you mean"):].rstrip("'\"")
            key = message.split("Did you mean")[0].strip(" '\"")
            override = next((a.split("=", 1)[0] for a in argv
                             if a.startswith("--config.") and f".{key}=" in a), key)
            message = f"{override}: no such config key. {hint}"
        print(f"ERROR: {message} (--verbose shows the traceback)", file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from launch import platform

    platform.prefer_cpu_without_accelerators()
    # Imported here so --help works without initialising JAX.
    import jax

    from launch import checkpoint as ckpt_lib
    from launch import supervise, trainer

    # orbax logs every file it writes at INFO; keep the console to the progress line.
    logging.set_verbosity(logging.WARNING)
    config, workdir = FLAGS.config, FLAGS.workdir
    if supervise.is_child():
        supervise.die_with_parent()
    else:
        try:
            watch = (config.distributed.supervise
                     and trainer.multi_process_expected(config.distributed))
        except ValueError as error:
            print(f"ERROR: {error}", file=sys.stderr, flush=True)
            return 2
        if watch:
            return supervise.run(sys.argv[1:], workdir, config.distributed.heartbeat_timeout)
    try:
        trainer.initialize_distributed(config.distributed)
        if jax.process_index() == 0:
            common.write_config(config, workdir)
        summary = trainer.train(config, workdir)
    except Exception as error:
        if supervise.is_child() and supervise.is_collective_failure(error):
            supervise.peer_lost(error, config.distributed.heartbeat_timeout)  # does not return
        if isinstance(error, (trainer.TrainingDiverged, ckpt_lib.DiskFull)):
            print(f"ERROR: {error}", file=sys.stderr, flush=True)
            return 1
        if isinstance(error, trainer.StartupError) and not FLAGS.verbose:
            print(f"ERROR: {error}", file=sys.stderr, flush=True)
            return 2
        raise
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
    from launch import platform

    platform.reexec_with_host_allocator()  # before JAX starts: see its docstring
    try:
        common.check_renamed(sys.argv[1:])
    except ValueError as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
