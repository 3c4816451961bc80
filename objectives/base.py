"""The one interface between what is trained and the machinery that trains it.

An :class:`Objective` owns everything that differs between T5-style and ELECTRA-style training
(and, next, fine-tuning tasks), so that ``launch/`` (trainer, input layer, metrics, CLI) never
asks which family or which objective it runs:

- device side: the Flax ``model``, the global ``batch_spec``, ``init_fn``, ``loss_fn``, how
  microbatches combine (``reduction``), FLOPs and tokens per step (for MFU and tokens/s);
- host side: which examples it trains on (``make_examples`` over text files, ``example_kind``
  and ``feature_lengths`` to check a seqio task's examples, a ``feature_converter`` for
  streaming seqio tasks, ``synthetic_batch`` for benchmarks);
- reporting: the metric keys worth showing (``summary_keys``), context-free ``baselines`` of
  an evaluation, ``notes`` that say what the numbers mean, and an optional ``showcase`` (step 0
  vs trained on one held-out example);
- fine-tuning only: the downstream ``task``, its examples, a ``predict_fn`` whose outputs
  ``decode_predictions`` turns into strings for the task's metrics, layer-wise LR decay depths
  and how to adapt a pretraining checkpoint (``adapt_params``).

``objectives/registry.py`` holds the one table of names; ``objectives/t5_family.py`` and
``objectives/electra_family.py`` build the objectives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn

# loss_fn(params, batch, step_key, deterministic) -> (scalar loss, {name: scalar metric})
LossFn = Callable[[Any, dict, jax.Array, bool], tuple[jax.Array, dict]]
BatchSpec = dict[str, tuple[tuple[int, ...], Any]]
HostBatch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Objective:
    """What is trained: a model, its data and its loss, and how to report it."""

    name: str
    # -- device side ------------------------------------------------------------------------
    model: nn.Module
    batch_spec: BatchSpec  # {key: (shape, dtype)} of one GLOBAL batch
    init_fn: Callable[[jax.Array], Any]  # key -> the model's boxed variables
    loss_fn: LossFn
    reduction: str  # "sum" (T5X's summed token loss: microbatches add up) | "mean"
    flops_per_step: float  # training FLOPs of one global batch (launch/metrics.py convention)
    tokens_per_step: int
    vocab_size: int  # rows of the model's embedding table
    special_ids: Mapping[str, int]  # pad/eos/unk (+ cls/sep/mask) of the vocabulary
    # -- host side: data --------------------------------------------------------------------
    example_kind: str  # "encdec" | "encoder": the data/examples.py kind it trains on
    feature_lengths: Mapping[str, int]  # {"inputs": ..., "targets": ...} it expects
    # (files, vocab_path, seed) -> data/examples.py IndexedExamples of those files
    make_examples: Callable[[Sequence[str], str, int], Any]
    synthetic_batch: Callable[[np.random.Generator], HostBatch]  # one global batch of ids
    # pack -> the seqio FeatureConverter for streaming tasks; None: local corpora only
    feature_converter: Callable[[bool], Any] | None
    # -- reporting --------------------------------------------------------------------------
    summary_keys: tuple[str, ...]  # metrics shown in the progress line and the final summary
    # validation host batches -> context-free baselines ({name: value}) for the same metrics
    baselines: Callable[[list[HostBatch]], dict[str, float]]
    # last evaluation record ("eval/..." keys) -> lines explaining what the numbers mean
    notes: Callable[[Mapping[str, Any]], list[str]]
    # (params, step-0 params, one held-out example, vocab_path) -> lines; None: no showcase
    showcase: Callable[[Any, Any, Mapping[str, np.ndarray], str], list[str]] | None
    # -- fine-tuning (objectives/finetune.py); None for pretraining ---------------------------
    task: Any = None  # the data/finetune.FinetuneTask trained on
    # (split, vocab_path, seed) -> data/finetune.FinetuneExamples of the task
    task_examples: Callable[[str, str, int], Any] | None = None
    predict_fn: Callable[[Any, dict], jax.Array] | None = None  # jittable (params, batch)
    decode_predictions: Callable[[np.ndarray], list[str]] | None = None  # outputs -> strings
    # outputs -> per-record extras for launch/predict.py (e.g. class probabilities)
    prediction_details: Callable[[np.ndarray], list[dict]] | None = None
    # layer-wise LR decay: abstract params -> depth per leaf (launch/optim.py), and the depth
    param_depths: Callable[[Any], Any] | None = None
    num_layers: int | None = None
    # warm start from a checkpoint of another layout: (source params, fresh params) -> params
    adapt_params: Callable[[Any, Any], Any] | None = None


def fill_packing_keys(batch: HostBatch, batch_spec: BatchSpec) -> HostBatch:
    """Adds ``*_segment_ids`` (all 1) and ``*_positions`` (0..L-1) that ``batch_spec`` asks for:
    a batch of unpacked, full-length rows."""
    out = dict(batch)
    for key, (shape, _) in batch_spec.items():
        if key.endswith("_segment_ids"):
            out[key] = np.ones(shape, np.int32)
        elif key.endswith("_positions"):
            out[key] = np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy()
    missing = set(batch_spec) - set(out)
    if missing:
        raise ValueError(f"synthetic batch lacks keys {sorted(missing)}")
    return {k: np.asarray(v, np.int32) for k, v in out.items()}
