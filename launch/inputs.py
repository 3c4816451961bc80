"""The trainer's view of the data: global sharded batches with a JSON-able, resumable state.

``make_inputs`` returns an iterator of ``{key: jax.Array [global_batch, length]}`` laid out by
the batch sharding, plus ``state()`` (saved in every checkpoint) and ``close()``. What the
examples are is the objective's business (``objective.make_examples``, ``synthetic_batch``,
``feature_converter``); this module only chooses the source:

- ``source="bundled"`` / ``"files"``: ``data.pipeline.InputPipeline`` over the bundled corpus
  (or ``config.data.*_files``) with the objective's examples; every process builds only the
  rows its devices hold. The position is independent of the mesh, so a checkpoint resumes on
  any device count with the same global batch and continues with the same examples.
- ``source="seqio"``: the registered seqio task or mixture ``config.data.task``. A local-corpus
  task (``data/tasks.py``) is read through the fast path above (same examples, tested); any
  other (C4 from TFDS, a mixture) through ``seqio.get_dataset`` with the objective's feature
  converter, each process reading its ``seqio.ShardInfo`` shard. Its position is the tf.data
  iterator itself, saved with each checkpoint (``tf_iterator``) and restored on resume;
  without one, a resume skips the batches consumed (tf.data re-reads them). Either way it
  needs the same process count, batch, lengths, packing and seed.
- ``source="task"``: a fine-tuning task's split (``data/finetune.py``), one record per row,
  through the same pipeline (epochs are seeded permutations; resumable the same way).
- ``source="synthetic"``: the objective's random ids, a pure function of (seed, batch index),
  for benchmarks and for tests that must not depend on a corpus.

TensorFlow (through seqio) is imported only by the ``seqio`` source.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Sharding

from data import bundled, pipeline
from data import vocab as vocab_lib
from objectives.base import HostBatch, Objective

SOURCES = ("bundled", "files", "seqio", "task", "synthetic")
# Validation draws from a different synthetic stream than training.
_SYNTHETIC_VALIDATION_OFFSET = 1_000_003


def _files(config: Any, split: str) -> list[str]:
    if config.data.source == "bundled":
        return bundled.TRAIN_FILES if split == "train" else bundled.VALIDATION_FILES
    files = config.data.train_files if split == "train" else config.data.validation_files
    if not files:
        raise ValueError(f"config.data.source='files' needs config.data.{split}_files "
                         "(a glob or comma-separated globs)")
    return [f for f in files.split(",") if f]


@dataclasses.dataclass(frozen=True)
class SeqioSplit:
    """A split of a task that is read through ``seqio.get_dataset`` (not a local corpus)."""

    task: str
    split: str


def make_examples(config: Any, objective: Objective, split: str
                  ) -> pipeline.IndexedExamples | SeqioSplit | None:
    """The index-addressable examples of one split (None for the synthetic source; a
    :class:`SeqioSplit` for a seqio task that only tf.data can read)."""
    source = config.data.source
    if source not in SOURCES:
        raise ValueError(f"config.data.source={source!r}; expected one of {SOURCES}")
    if source == "synthetic":
        return None
    if source == "seqio":
        return _seqio_examples(config, objective, split)
    path = vocab_lib.path_of(config)
    vocab_lib.check_vocab_fits(objective.vocab_size, vocab_lib.vocabulary_size(path))
    if source == "task":
        if objective.task_examples is None:
            raise ValueError(f"config.data.source='task' is for fine-tuning objectives; "
                             f"objective {objective.name!r} pretrains on text (bundled, files, "
                             "seqio or synthetic)")
        return _checked(objective, objective.task_examples(split, path, config.seed),
                        f"config.data.task={config.data.task!r}")
    examples = objective.make_examples(_files(config, split), path, config.seed)
    return _checked(objective, examples, f"config.data.source={source!r}")


def _checked(objective: Objective, examples: pipeline.IndexedExamples, what: str
             ) -> pipeline.IndexedExamples:
    """``examples`` if they are what ``objective`` trains on, else a clear error."""
    if examples.kind != objective.example_kind:
        raise ValueError(f"{what} makes {examples.kind!r} examples; objective "
                         f"{objective.name!r} trains on {objective.example_kind!r} ones")
    for key, want in objective.feature_lengths.items():
        have = examples.task_lengths.get(key)
        if have != want:
            raise ValueError(
                f"{what} makes {key} of length {have} (objective {objective.name!r}, "
                f"inputs_length={examples.task_lengths['inputs']}); set "
                f"config.data.{key}_length={have} (it is {want})")
    return examples


def _seqio_examples(config: Any, objective: Objective, split: str
                    ) -> pipeline.IndexedExamples | SeqioSplit:
    from data import tasks  # registers every pretrax task (imports seqio and TensorFlow)

    name = config.data.task
    if not name:
        raise ValueError("config.data.source='seqio' needs config.data.task (a registered task "
                         f"or mixture, e.g. {tasks.BUNDLED_TASKS[0]!r} or {tasks.C4_TASKS[0]!r})")
    import seqio

    if name.startswith(tasks.C4_PREFIX):  # registered (again) with the run's vocabulary
        _register_c4_variant(name, config, objective)
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        raise ValueError(f"config.data.task={name!r} is not a registered seqio task or mixture")
    features = seqio.get_mixture_or_task(name).output_features
    vocab_lib.check_vocab_fits(objective.vocab_size, features["inputs"].vocabulary)
    local = tasks.local_examples(name, split, inputs_length=config.data.inputs_length,
                                 seed=config.seed)
    if local is None:
        _check_recipe(name, tasks.streaming_recipe(name), config, objective)
        return SeqioSplit(name, split)
    return _checked(objective, local, f"config.data.task={name!r}")


def _register_c4_variant(name: str, config: Any, objective: Objective) -> None:
    """Registers ``name`` if it is the C4 task of the config's objective and parameters
    (``data.tasks.c4_task_name``: e.g. T5 Table 6's 25% i.i.d. corruption on C4)."""
    from data import tasks
    from objectives import registry, t5_family

    if objective.name in registry.denoising_names():
        tasks.c4_task_name(objective.name, t5_family.denoiser_params(config),
                           vocab_lib.path_of(config))


def _check_recipe(name: str, recipe: tuple[str, dict[str, Any]] | None, config: Any,
                  objective: Objective) -> None:
    """A streaming task corrupts text with its own objective and parameters: they must be the
    config's (else a run set to 25% noise would silently train on the task's 15%)."""
    from objectives import registry, t5_family

    if recipe is None or objective.name not in registry.denoising_names():
        return
    task_objective, task_params = recipe
    want = registry.denoiser(objective.name).params(**t5_family.denoiser_params(config))
    if task_objective != objective.name or task_params != want:
        from data import tasks

        raise ValueError(
            f"config.data.task={name!r} applies {task_objective} {task_params}, but the config "
            f"trains {objective.name} {want}; use config.data.task="
            f"{tasks.c4_task_name(objective.name, want)!r} for C4, or make the two agree")


class SyntheticInputs:
    """The objective's random ids as a pure function of (seed, batch index); state = batches
    handed out."""

    tf_iterator = None  # nothing for the checkpoint to save beyond state()

    def __init__(self, make_batch: Callable[[np.random.Generator], HostBatch], seed: int,
                 sharding: Sharding, state: Mapping[str, Any] | None = None):
        self.make_batch, self.seed, self.sharding = make_batch, seed, sharding
        self.batches = int(state["batches"]) if state else 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        host = self.make_batch(np.random.default_rng([self.seed, self.batches]))
        self.batches += 1
        # Every process computes the same global batch and hands over the rows it holds.
        return {k: jax.make_array_from_callback(v.shape, self.sharding, lambda i, v=v: v[i])
                for k, v in host.items()}

    def state(self) -> dict[str, Any]:
        return {"source": "synthetic", "seed": self.seed, "batches": self.batches}

    def close(self) -> None:
        pass


class PipelineInputs:
    """``data.pipeline.InputPipeline`` with the state gathered over processes."""

    tf_iterator = None  # its position is all in state()

    def __init__(self, examples: pipeline.IndexedExamples, config: Any, sharding: Sharding,
                 state: Mapping[str, Any] | None = None, prefetch: int | None = None):
        self.pipeline = pipeline.InputPipeline(
            examples, config.data.batch_size, sharding=sharding, pack=config.data.pack,
            state=state, prefetch=config.data.prefetch if prefetch is None else prefetch)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        return next(self.pipeline)

    def state(self) -> dict[str, Any]:
        # A collective on multi-host: every process must call it (the trainer does, at saves).
        return json.loads(json.dumps(pipeline.global_state(self.pipeline)))

    def close(self) -> None:
        self.pipeline.close()


def checkpointable(dataset: Any) -> Any:
    """``dataset`` whose iterators a checkpoint can always save: a Python function in a task's
    preprocessors has state tf.data cannot save, and the rest is saved with a warning (a pure
    function resumes exactly) instead of failing the save."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.WARN
    return dataset.with_options(options)


class SeqioInputs:
    """``seqio.get_dataset`` batches of this process's shard; state = batches handed out, and
    what the iterator depends on (a resume with another batch, lengths, packing or seed is
    refused: its saved iterator would yield the old shapes, its skip count the wrong batches).

    The tf.data iterator itself is saved with each checkpoint (``tf_iterator``); a resume
    restores it through ``restore_iterator`` and continues exactly where it stopped. Without a
    saved iterator (a checkpoint from before it was saved, ``checkpoint.save_iterator=False``,
    or an unreadable one) the dataset skips the batches consumed, which tf.data does by
    reading them again."""

    def __init__(self, config: Any, objective: Objective, split: SeqioSplit,
                 sharding: Sharding, state: Mapping[str, Any] | None = None,
                 restore_iterator: Callable[..., str | None] | None = None):
        import seqio

        if objective.feature_converter is None:
            raise ValueError(f"config.data.task={split.task!r} is read by tf.data, which "
                             f"objective {objective.name!r} does not support; it reads "
                             "local-corpus tasks (data/tasks.py) or text files")
        processes = jax.process_count()
        batch = config.data.batch_size
        self.task, self.sharding, self._shape = split.task, sharding, (batch,)
        self._layout = {"task": split.task, "processes": processes, "rows": batch // processes,
                        "lengths": dict(objective.feature_lengths), "pack": config.data.pack,
                        "seed": config.seed}
        for key, want in self._layout.items() if state is not None else ():
            # (checkpoints from before rows, lengths, pack and seed were recorded: taken as equal)
            have = state.get(key) if key in ("task", "processes") else state.get(key, want)
            if have != want:
                raise ValueError(
                    f"the checkpoint's data state has {key}={have!r}, this run {key}={want!r}: "
                    "a streaming seqio task's position (its saved tf.data iterator, or the "
                    "batches to skip) only carries over to the same task, process count, batch, "
                    "lengths, packing and seed")
        self.batches = int(state["batches"]) if state else 0

        def open_at(skip: int) -> Any:
            # A new dataset each time: every iterator of one dataset object draws another
            # shuffle order from the shared seed, so a discarded iterator would move the next.
            dataset = seqio.get_dataset(
                split.task, task_feature_lengths=dict(objective.feature_lengths),
                dataset_split=split.split, shuffle=split.split == "train", num_epochs=None,
                seed=config.seed, use_cached=False,
                shard_info=seqio.ShardInfo(jax.process_index(), processes),
                feature_converter=objective.feature_converter(config.data.pack),
            ).batch(batch // processes, drop_remainder=True)
            if skip:
                dataset = dataset.skip(skip)
            return iter(checkpointable(dataset).prefetch(max(config.data.prefetch, 1)))

        # A saved iterator restores only into the dataset it came from: the same skip.
        self.skipped = int(state.get("skipped", 0)) if state else 0
        self._save_iterator = config.checkpoint.save_iterator
        self._pending: list[Any] = []  # a batch read while checking the restored iterator
        restorable = bool(self.batches) and self.skipped != self.batches
        why = None
        if restorable and not self._save_iterator:
            why = "config.checkpoint.save_iterator=False"
        elif restorable and restore_iterator is None:
            why = "no checkpoint to restore it from"
        elif restorable:
            self._iterator = open_at(self.skipped)
            # Pull one batch inside the restore: an iterator that restores but cannot yield
            # (a TF or preprocessor change) falls back like an unreadable one, on every process.
            why = restore_iterator(self._iterator, lambda it: self._pending.append(next(it)))
        if why is not None:
            logging.warning("no data iterator restored (%s); re-reading the %d batches "
                            "consumed", why, self.batches)
            self.skipped, self._pending = self.batches, []
        if why is not None or not restorable:
            self._iterator = open_at(self.skipped)

    @property
    def tf_iterator(self) -> Any:
        """The iterator a checkpoint saves (None with ``checkpoint.save_iterator=False``)."""
        return self._iterator if self._save_iterator else None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        local = self._pending.pop() if self._pending else next(self._iterator)
        self.batches += 1
        return {k: jax.make_array_from_process_local_data(
            self.sharding, np.asarray(v, np.int32), self._shape + tuple(v.shape[1:]))
            for k, v in local.items()}

    def state(self) -> dict[str, Any]:
        return {"source": "seqio", **self._layout, "batches": self.batches,
                "skipped": self.skipped}

    def close(self) -> None:
        self._iterator = None


def make_inputs(config: Any, objective: Objective,
                examples: pipeline.IndexedExamples | SeqioSplit | None, sharding: Sharding,
                state: Mapping[str, Any] | None = None, prefetch: int | None = None,
                split: str = "train", restore_iterator: Callable[..., str | None] | None = None,
                ) -> SyntheticInputs | PipelineInputs | SeqioInputs:
    """The batch iterator for ``examples`` (from :func:`make_examples`), resumed at ``state``.

    ``restore_iterator(tf_iterator, check)`` restores a tf.data iterator saved with the
    checkpoint and runs ``check`` on it (None on success, else why not); only streaming seqio
    sources have one."""
    if isinstance(examples, SeqioSplit):
        return SeqioInputs(config, objective, examples, sharding, state, restore_iterator)
    if examples is None:
        seed = config.seed + (0 if split == "train" else _SYNTHETIC_VALIDATION_OFFSET)
        return SyntheticInputs(objective.synthetic_batch, seed, sharding, state)
    return PipelineInputs(examples, config, sharding, state, prefetch)
