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
from typing import Any

import jax
import numpy as np

from launch import mesh as mesh_lib


def predict(program: Any, params: Any, examples: Any) -> list[str]:
    """Prediction strings for every record of ``examples`` (a ``FinetuneExamples``), in order."""
    objective = program.objective
    if program.predict_step is None:
        raise ValueError(f"objective {objective.name!r} has no predictions (not a fine-tuning "
                         "objective)")
    batch_size = next(iter(objective.batch_spec.values()))[0][0]  # the global batch
    n = len(examples.rows)
    outputs = []
    with mesh_lib.use_mesh(program.mesh, program.rules):
        for start in range(0, n, batch_size):
            index = list(range(start, min(start + batch_size, n)))
            group = [examples.rows[i] for i in index + [index[-1]] * (batch_size - len(index))]
            host = examples.features(group, False)
            batch = {k: jax.make_array_from_callback(v.shape, program.batch_sharding,
                                                     lambda i, v=v: v[i])
                     for k, v in host.items() if k in objective.batch_spec}
            out = np.asarray(jax.device_get(program.predict_step(params, batch)))
            outputs.append(out[:len(index)])
    return objective.decode_predictions(np.concatenate(outputs))


def task_metrics(program: Any, params: Any, examples: Any, predictions_path: str | None = None
                 ) -> dict[str, float]:
    """The task's metrics on ``examples``; predictions written to ``predictions_path``."""
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
