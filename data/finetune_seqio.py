"""A fine-tuning task (``data/finetune.py``) as a seqio Task of the same name.

``register_seqio(task)`` gives seqio-based code (T5X, seqio's evaluator, a user's mixtures) the
task pretrax fine-tunes on, with nothing re-described:

- source: the task's records, ``task.rows(split)`` (its JSONL files or its reader), through
  ``seqio.FunctionDataSource``, one shard per split, in record order;
- preprocessors: T5's text-to-text format, ``inputs`` = the string ``task.t5_input(record)``
  builds (``"<prefix> field1: text1 field2: text2"``) and ``targets`` = the target text, kept by
  seqio's tokenizer as ``inputs_pretokenized`` / ``targets_pretokenized``; then
  ``seqio.preprocessors.tokenize`` and ``append_eos_after_trim`` (trim to length - 1, then EOS),
  so ``get_dataset(sequence_length)`` yields the token ids ``finetune.encdec_examples`` builds
  for the same lengths (tested bitwise);
- metric_fns: the task's; postprocess_fn: ``task.postprocess`` (seqio also passes ``example``
  and ``is_target``, which a FinetuneTask does not need).

The formatting is TensorFlow string ops (no Python callback), so the task can be cached and
served like any seqio task; it joins exactly the pieces ``FinetuneTask.t5_input`` joins.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from data import bundled, finetune, tasks
from data import vocab as vocab_lib


def records_dataset(task: finetune.FinetuneTask, split: str, shuffle_files: bool = False,
                    seed: int | None = None) -> tf.data.Dataset:
    """The split's records, ``{field: string}`` for T5's input fields and the target."""
    records = task.rows(split)
    fields = dict.fromkeys((task.t5_fields or task.text_fields) + (task.target_field,))
    return tf.data.Dataset.from_tensor_slices(
        {field: tf.constant([r[field] for r in records], tf.string) for field in fields})


def text_to_text(dataset: tf.data.Dataset, *, prefix: str, fields: Sequence[str],
                 target_field: str) -> tf.data.Dataset:
    """``{"inputs": "<prefix> f1: x[f1] f2: x[f2]", "targets": x[target_field]}``."""
    def convert(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parts = [tf.constant(prefix)] + [tf.strings.join([f"{field}: ", x[field]])
                                         for field in fields]
        return {"inputs": tf.strings.join(parts, separator=" "), "targets": x[target_field]}

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def _postprocess(text: str, example: Any = None, is_target: bool = False, *,
                 task: finetune.FinetuneTask) -> Any:
    del example, is_target  # seqio's postprocess_fn signature; the task needs only the text
    return task.postprocess(text)


def register_seqio(task: finetune.FinetuneTask, vocab_path: str = bundled.VOCAB_PATH,
                   extra_ids: int = bundled.EXTRA_IDS) -> seqio.Task:
    """Registers (or replaces) the seqio Task ``task.name``; returns it."""
    splits = sorted(task.files) if task.reader is None else list(finetune.SPLITS)
    source = seqio.FunctionDataSource(
        dataset_fn=functools.partial(records_dataset, task), splits=splits)
    preprocessors = [
        functools.partial(text_to_text, prefix=task.prefix or task.name,
                          fields=task.t5_fields or task.text_fields,
                          target_field=task.target_field),
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
    ]
    if task.name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(task.name)
    return seqio.TaskRegistry.add(
        task.name, source=source, preprocessors=preprocessors,
        output_features=tasks.t5_output_features(vocab_lib.get_vocabulary(vocab_path, extra_ids)),
        metric_fns=list(task.metric_fns),
        postprocess_fn=functools.partial(_postprocess, task=task))
