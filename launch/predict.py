"""Predictions of a fine-tuning run for new inputs (T5X's infer.py).

    python -m launch.predict --workdir=DIR --input=IN.jsonl --output=OUT.jsonl
        [--step=latest|best|N] [--config.objective.beam_size=4 ...]

Each input line is a JSON object with the task's text fields (``sentence1`` [, ``sentence2``]);
a target, if present, is kept. Each output line is the input record plus ``prediction`` (T5: the
decoded text, greedy or beam search; ELECTRA: the label, or the value for regression) and, for
classification, ``probabilities`` per label. Exit status 2 for bad input.
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
    flags.DEFINE_string("input", None, "JSONL records with the task's text fields.")
    flags.DEFINE_string("output", None, "Where to write the predictions (JSONL).")
    flags.mark_flags_as_required(["input", "output"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    evaluation.start_cli()
    import jax

    from data import vocab as vocab_lib

    try:
        program, params, step = evaluation.load_program(FLAGS.config, FLAGS.workdir, FLAGS.step)
        objective = program.objective
        if not os.path.isfile(FLAGS.input):
            raise FileNotFoundError(f"--input={FLAGS.input!r} does not exist")
        records = objective.task.read(FLAGS.input, with_targets=False)
        examples = objective.task_examples(records, vocab_lib.path_of(FLAGS.config),
                                           FLAGS.config.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        return 2
    outputs = evaluation.outputs(program, params, examples)
    predictions = objective.decode_predictions(outputs)
    details = (objective.prediction_details(outputs) if objective.prediction_details
               else [{} for _ in predictions])
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            for record, prediction, extra in zip(records, predictions, details, strict=True):
                f.write(json.dumps({**record, "prediction": prediction, **extra},
                                   ensure_ascii=False) + "\n")
        print(f"{len(records)} predictions of {objective.task.name} (step {step}) written to "
              f"{FLAGS.output}" + (f"; {examples.truncated} inputs truncated to fit"
                                   if examples.truncated else ""), flush=True)
    return 0


if __name__ == "__main__":
    from launch import platform

    platform.reexec_with_host_allocator()  # before JAX starts: see its docstring
    define_flags(evaluation.load_config(evaluation.workdir_from_argv(sys.argv)))
    app.run(lambda argv: sys.exit(main(argv)))
