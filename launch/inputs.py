"""The trainer's view of the data: global sharded batches with a JSON-able, resumable state.

``make_inputs`` returns an iterator of ``{key: jax.Array [global_batch, length]}`` laid out by
the batch sharding, plus ``state()`` (saved in every checkpoint) and ``close()``:

- ``source="bundled"`` / ``"files"``: ``data.pipeline.InputPipeline`` over the bundled corpus
  (or ``config.data.*_files``) with the objective's host-side preprocessing (T5) or ELECTRA's
  example builder; every process builds only the rows its devices hold.
- ``source="seqio"``: the registered seqio task or mixture ``config.data.task``. A local-corpus
  task (``data/tasks.py``) is read through the fast path above (same examples, tested); any
  other (C4 from TFDS, a mixture) through ``seqio.get_dataset`` with the task's feature
  converter, each process reading its ``seqio.ShardInfo`` shard. Its state is the number of
  batches consumed; a resume skips that many (tf.data re-reads them: the cost of a streaming
  source).
- ``source="synthetic"``: random ids that are a pure function of (seed, batch index), for
  benchmarks and for tests that must not depend on a corpus. The T5 targets copy the first
  input tokens so the loss can go down.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Sharding

from data import bundled, pipeline
from objectives import denoising

SOURCES = ("bundled", "files", "seqio", "synthetic")
SYNTHETIC_SPECIAL_IDS = {"pad": 0, "eos": 1, "unk": 2, "cls": 3, "sep": 4, "mask": 5}


def vocab_path(config: Any) -> str:
    return config.data.vocab_path or bundled.VOCAB_PATH


def special_ids(config: Any) -> dict[str, int]:
    """pad/eos/unk/cls/sep/mask ids of the configured vocabulary."""
    if config.data.source == "synthetic":
        return dict(SYNTHETIC_SPECIAL_IDS)
    from data import vocab as vocab_lib  # seqio (and TensorFlow): only for real data

    return vocab_lib.special_ids(vocab_path(config))


def _files(config: Any, split: str) -> Any:
    if config.data.source == "bundled":
        return bundled.TRAIN_FILES if split == "train" else bundled.VALIDATION_FILES
    files = config.data.train_files if split == "train" else config.data.validation_files
    if not files:
        raise ValueError(f"config.data.source='files' needs config.data.{split}_files "
                         "(a glob or comma-separated globs)")
    return [f for f in files.split(",") if f]


def make_examples(config: Any, split: str) -> pipeline.IndexedExamples | SeqioSplit | None:
    """The index-addressable examples of one split (None for the synthetic source; a
    :class:`SeqioSplit` for a seqio task that only tf.data can read)."""
    source = config.data.source
    if source not in SOURCES:
        raise ValueError(f"config.data.source={source!r}; expected one of {SOURCES}")
    if source == "synthetic":
        return None
    if source == "seqio":
        return _seqio_examples(config, split)
    from data import vocab as vocab_lib  # seqio (and TensorFlow): only for real data

    path = vocab_path(config)
    vocab_size = vocab_lib.get_vocabulary(path).vocab_size
    if config.model.vocab_size is not None:
        vocab_lib.check_vocab_fits(config.model.vocab_size, vocab_size)
    if config.model.family == "electra":
        return pipeline.electra_examples_from_files(
            _files(config, split), path, max_length=config.data.inputs_length,
            seed=config.seed)
    return _check_lengths(config, pipeline.t5_examples(
        _files(config, split), path, objective=config.objective.name,
        inputs_length=config.data.inputs_length, seed=config.seed, **_objective_params(config)))


def _objective_params(config: Any) -> dict[str, Any]:
    spec = denoising.get_objective(config.objective.name)
    return {k: config.data[k] for k in ("noise_density", "mean_noise_span_length")
            if k in spec.defaults}


def _check_lengths(config: Any, examples: pipeline.IndexedExamples
                   ) -> pipeline.IndexedExamples:
    if examples.kind != "encdec":
        return examples
    targets = examples.task_lengths["targets"]
    if targets != config.data.targets_length:
        raise ValueError(
            f"objective {config.objective.name!r} with inputs_length="
            f"{config.data.inputs_length} makes targets of length {targets}; set "
            f"config.data.targets_length={targets} (it is {config.data.targets_length})")
    return examples


@dataclasses.dataclass(frozen=True)
class SeqioSplit:
    """A split of a task that is read through ``seqio.get_dataset`` (not a local corpus)."""

    task: str
    split: str


def _seqio_examples(config: Any, split: str) -> pipeline.IndexedExamples | SeqioSplit:
    from data import tasks  # registers every pretrax task

    name = config.data.task
    if not name:
        raise ValueError("config.data.source='seqio' needs config.data.task (a registered task "
                         f"or mixture, e.g. {tasks.BUNDLED_TASKS[0]!r} or {tasks.C4_TASKS[0]!r})")
    import seqio

    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        raise ValueError(f"config.data.task={name!r} is not a registered seqio task or mixture")
    from data import vocab as vocab_lib

    features = seqio.get_mixture_or_task(name).output_features
    if config.model.vocab_size is not None:
        vocab_lib.check_vocab_fits(config.model.vocab_size, features["inputs"].vocabulary)
    local = tasks.local_examples(name, split, inputs_length=config.data.inputs_length,
                                 seed=config.seed)
    if local is None:
        return SeqioSplit(name, split)
    family = "encoder" if config.model.family == "electra" else "encdec"
    if local.kind != family:
        raise ValueError(f"config.data.task={name!r} makes {local.kind!r} examples; a "
                         f"{config.model.family} model needs {family!r} ones")
    return _check_lengths(config, local)


class SyntheticInputs:
    """Random ids as a pure function of (seed, batch index); state = batches handed out."""

    def __init__(self, batch_spec: Mapping[str, tuple[tuple[int, ...], Any]], vocab_size: int,
                 seed: int, sharding: Sharding, state: Mapping[str, Any] | None = None):
        self.batch_spec, self.vocab_size, self.seed = dict(batch_spec), vocab_size, seed
        self.sharding = sharding
        self.batches = int(state["batches"]) if state else 0

    def _host_batch(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        first_shape = next(iter(self.batch_spec.values()))[0]
        batch, length = first_shape
        ids = SYNTHETIC_SPECIAL_IDS
        # [batch, length] ids above the special ones; the last column is EOS/SEP.
        tokens = rng.integers(max(ids.values()) + 1, self.vocab_size, (batch, length))
        out = {}
        if "decoder_target_tokens" in self.batch_spec:
            tokens[:, -1] = ids["eos"]
            targets_len = self.batch_spec["decoder_target_tokens"][0][1]
            targets = tokens[:, :targets_len].copy()
            targets[:, -1] = ids["eos"]
            out["encoder_input_tokens"] = tokens
            out["decoder_target_tokens"] = targets
            # Shift right with PAD (0) as the start token.
            out["decoder_input_tokens"] = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
            out["decoder_loss_weights"] = np.ones_like(targets)
        else:
            tokens[:, 0], tokens[:, -1] = ids["cls"], ids["sep"]
            out["encoder_input_tokens"] = tokens
            out["encoder_token_type_ids"] = np.zeros_like(tokens)
        for key, (shape, _) in self.batch_spec.items():
            if key.endswith("_segment_ids"):
                out[key] = np.ones(shape, np.int64)
            elif key.endswith("_positions"):
                out[key] = np.broadcast_to(np.arange(shape[1]), shape)
        missing = set(self.batch_spec) - set(out)
        if missing:
            raise ValueError(f"synthetic source cannot make batch keys {sorted(missing)}")
        return {k: np.asarray(v, np.int32) for k, v in out.items()}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        host = self._host_batch(self.batches)
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


class SeqioInputs:
    """``seqio.get_dataset`` batches of this process's shard; state = batches handed out."""

    def __init__(self, config: Any, split: SeqioSplit, sharding: Sharding,
                 state: Mapping[str, Any] | None = None):
        import seqio

        if config.model.family != "t5":
            raise ValueError(f"config.data.task={split.task!r} is read by tf.data, which "
                             "pretrax supports for T5 tasks; ELECTRA reads local-corpus tasks")
        if state is not None and state.get("task") != split.task:
            raise ValueError(f"the checkpoint's data state is for {state.get('task')!r}, not "
                             f"config.data.task={split.task!r}")
        self.task, self.sharding = split.task, sharding
        self.batches = int(state["batches"]) if state else 0
        batch = config.data.batch_size
        rows = batch // jax.process_count()
        lengths = {"inputs": config.data.inputs_length, "targets": config.data.targets_length}
        dataset = seqio.get_dataset(
            split.task, task_feature_lengths=lengths, dataset_split=split.split,
            shuffle=split.split == "train", num_epochs=None, seed=config.seed, use_cached=False,
            shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
            feature_converter=seqio.EncDecFeatureConverter(pack=config.data.pack))
        dataset = dataset.batch(rows, drop_remainder=True).skip(self.batches)
        self._iterator = dataset.prefetch(max(config.data.prefetch, 1)).as_numpy_iterator()
        self._shape = (batch,)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        local = next(self._iterator)
        self.batches += 1
        return {k: jax.make_array_from_process_local_data(
            self.sharding, np.asarray(v, np.int32), self._shape + v.shape[1:])
            for k, v in local.items()}

    def state(self) -> dict[str, Any]:
        return {"source": "seqio", "task": self.task, "batches": self.batches}

    def close(self) -> None:
        self._iterator = None


def make_inputs(config: Any, examples: pipeline.IndexedExamples | None,
                batch_spec: Mapping[str, tuple[tuple[int, ...], Any]], vocab_size: int,
                sharding: Sharding, state: Mapping[str, Any] | None = None,
                prefetch: int | None = None, split: str = "train"
                ) -> SyntheticInputs | PipelineInputs | SeqioInputs:
    """The batch iterator for ``examples`` (from :func:`make_examples`), resumed at ``state``."""
    if isinstance(examples, SeqioSplit):
        return SeqioInputs(config, examples, sharding, state)
    if examples is None:
        # Validation draws from a different synthetic stream than training.
        seed = config.seed if split == "train" else config.seed + 1_000_003
        return SyntheticInputs(batch_spec, vocab_size, seed, sharding, state)
    return PipelineInputs(examples, config, sharding, state, prefetch)
