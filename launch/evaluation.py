"""Scoring a fine-tuning objective on a whole split by its task's metrics.

:func:`task_metrics` walks the split's records in file order, one global batch at a time (the
last batch is topped up with copies of its final record, whose predictions are dropped), runs
the program's jitted ``predict_step``, turns the outputs into strings with the objective's
``decode_predictions`` and scores them with the task's metric functions (seqio's contract:
``fn(targets, predictions)`` on postprocessed values). Predictions are written as JSONL, one
line per record: the record's fields plus ``prediction``.

Used by the trainer (every evaluation of a fine-tuning run), ``launch/evaluate.py`` and
``launch/predict.py``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import numpy as np

from launch import mesh as mesh_lib


def predict(program: Any, params: Any, examples: Any) -> list[str]:
    """Prediction strings for every record of ``examples`` (a ``FinetuneExamples``), in order."""
    return program.objective.decode_predictions(outputs(program, params, examples))


def outputs(program: Any, params: Any, examples: Any) -> np.ndarray:
    """``predict_step`` outputs for every record of ``examples``, in order (host array)."""
    objective = program.objective
    if program.predict_step is None:
        raise ValueError(f"objective {objective.name!r} has no predictions (not a fine-tuning "
                         "objective)")
    batch_size = next(iter(objective.batch_spec.values()))[0][0]  # the global batch
    n = len(examples.rows)
    chunks = []
    with mesh_lib.use_mesh(program.mesh, program.rules):
        for start in range(0, n, batch_size):
            index = list(range(start, min(start + batch_size, n)))
            group = [examples.rows[i] for i in index + [index[-1]] * (batch_size - len(index))]
            host = examples.features(group, False)
            batch = {k: jax.make_array_from_callback(v.shape, program.batch_sharding,
                                                     lambda i, v=v: v[i])
                     for k, v in host.items() if k in objective.batch_spec}
            out = np.asarray(jax.device_get(program.predict_step(params, batch)))
            chunks.append(out[:len(index)])
    return np.concatenate(chunks)


def task_metrics(program: Any, params: Any, examples: Any, predictions_path: str | None = None,
                 limit: int | None = None) -> dict[str, float]:
    """The task's metrics on ``examples`` (the first ``limit`` records if set); predictions
    written to ``predictions_path``."""
    if limit is not None and limit < len(examples.rows):
        examples = examples.head(limit)
    predictions = predict(program, params, examples)
    metrics = examples.task.score(examples.targets, predictions)
    if predictions_path and jax.process_index() == 0:
        write_predictions(predictions_path, examples.records, predictions)
    return metrics


def write_predictions(path: str, records: list[dict], predictions: list[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record, prediction in zip(records, predictions, strict=True):
            f.write(json.dumps({**record, "prediction": prediction}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Loading a run for launch/evaluate.py and launch/predict.py.
# ---------------------------------------------------------------------------------------------
def define_run_flags(config: Any) -> None:
    """``--config`` (the run's config, overridable and locked), ``--workdir``, ``--step``."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_dict("config", config, "The run's config; override with "
                                    "--config.KEY=VALUE.", lock_config=True)
    flags.DEFINE_string("workdir", None, "The fine-tuning run's folder.")
    flags.DEFINE_string("step", "latest", "latest, best or a step number.")


def start_cli() -> None:
    """What every command does before JAX starts: backend choice, quiet logs, the RNG mode."""
    from absl import logging

    from launch import platform

    platform.prefer_cpu_without_accelerators()
    logging.set_verbosity(logging.WARNING)
    jax.config.update("jax_threefry_partitionable", True)


def workdir_from_argv(argv: list[str]) -> str:
    """``--workdir=DIR`` (or ``--workdir DIR``) from the command line, before flags exist."""
    for i, arg in enumerate(argv):
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
        if arg == "--workdir" and i + 1 < len(argv):
            return argv[i + 1]
    print("ERROR: --workdir=DIR (a training run's folder) is required", file=sys.stderr)
    sys.exit(2)


def load_config(workdir: str) -> Any:
    """The run's resolved config (``WORKDIR/config.json``) over today's defaults."""
    from configs import common

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        print(f"ERROR: {path} does not exist: --workdir must be a training run's folder",
              file=sys.stderr)
        sys.exit(2)
    with open(path) as f:
        saved = json.load(f)
    config = common.base_config()
    unknown = sorted(set(saved) - set(config))
    if unknown:
        print(f"ERROR: {path} has sections {unknown} this version does not know",
              file=sys.stderr)
        sys.exit(2)
    config.update(saved)
    return config


def checkpoint_path(workdir: str, step: str) -> str:
    """``latest`` -> the workdir, ``best`` -> ``WORKDIR/best``, N -> ``checkpoints/N``."""
    from launch import checkpoint as ckpt_lib

    if step == "latest":
        return workdir
    if step == "best":
        if ckpt_lib.best_record(workdir) is None:
            raise ValueError(f"{workdir} has no best checkpoint (WORKDIR/best/best.json)")
        return os.path.join(workdir, ckpt_lib.BEST_DIR)
    if not step.isdigit():
        raise ValueError(f"--step={step!r}; expected latest, best or a step number")
    path = os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR, step)
    if not os.path.isdir(path):
        raise ValueError(f"{path} does not exist; steps saved: "
                         f"{sorted(os.listdir(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR)))}")
    return path


def load_program(config: Any, workdir: str, step: str) -> tuple[Any, Any, int]:
    """(program, params, step) of the run's checkpoint ``step`` (``checkpoint_path``)."""
    from launch import checkpoint as ckpt_lib
    from launch import step as step_lib

    program = step_lib.build(config)
    if program.predict_step is None:
        raise ValueError(f"objective {program.objective.name!r} is a pretraining objective: "
                         "evaluate and predict score fine-tuning runs (configs/finetune.py)")
    step_dir = ckpt_lib.resolve_step_dir(checkpoint_path(workdir, step))
    params = ckpt_lib.load_params(step_dir, program.abstract_state["params"])
    return program, params, int(os.path.basename(step_dir))
