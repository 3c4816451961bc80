"""Score a fine-tuning run's checkpoint on a split of its task (T5X's eval.py).

    python -m launch.evaluate --workdir=DIR [--step=latest|best|N] [--split=validation|test]
        [--config.data.task=OTHER --config.data.task_module=pkg.mod ...]

The run's own config (``DIR/config.json``) is the starting point; ``--config.*`` overrides it
(locked, so a typo fails). Prints the task's metrics and writes them to
``DIR/eval/SPLIT-STEP.json``, the predictions to ``DIR/predictions/SPLIT-STEP.jsonl``. Exit
status 2 for bad input (no such run, step or split).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from launch import evaluation

FLAGS = flags.FLAGS


def define_flags(config) -> None:
    evaluation.define_run_flags(config)
    flags.DEFINE_string("split", "validation", "The task's split to score.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    evaluation.start_cli()
    import jax

    workdir, split = FLAGS.workdir, FLAGS.split
    try:
        program, params, step = evaluation.load_program(FLAGS.config, workdir, FLAGS.step)
        from data import vocab as vocab_lib

        examples = program.objective.task_examples(split, vocab_lib.path_of(FLAGS.config),
                                                   FLAGS.config.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        return 2
    task = program.objective.task
    metrics = evaluation.task_metrics(program, params, examples, os.path.join(
        workdir, "predictions", f"{split}-{step}.jsonl"))
    record = {"task": task.name, "split": split, "step": step, "examples": len(examples.rows),
              "truncated": examples.truncated, **metrics}
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", f"{split}-{step}.json"), "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"{task.name} {split} @ step {step} ({len(examples.rows)} examples): "
              + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
    return 0


if __name__ == "__main__":
    from launch import platform

    platform.reexec_with_host_allocator()  # before JAX starts: see its docstring
    define_flags(evaluation.load_config(evaluation.workdir_from_argv(sys.argv)))
    app.run(lambda argv: sys.exit(main(argv)))
