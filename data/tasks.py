"""Every seqio registration of pretrax, in one place.

Local corpora (text files / globs / directories, JSONL with a text field; train + validation):
  ``{prefix}_{objective}`` for every T5 objective of ``objectives/registry.py`` (the T5
  paper's objectives; ``{prefix}_span_corruption`` is the T5 / T5.1.1 one) and
  ``{prefix}_electra`` (``[CLS] A [SEP] B [SEP]`` examples with token types). The bundled corpus
  is registered under the prefix ``pretrax_bundled``.

  Their source and preprocessors are the fast pipeline's index-addressable NumPy functions
  (data/examples.py), so ``task.get_dataset(sequence_length, split, seed=s)`` yields exactly the
  examples the trainer's pipeline makes with seed s: the source emits the global example index
  (internally shuffled: epoch e visits the corpus's chunks in a permutation seeded by (s, e)),
  and ``make_examples`` turns an index into an example with ``tf.numpy_function``. The objective
  output loses its EOS there and ``append_eos_after_trim`` puts it back, as T5's tasks do.

Cloud sources (constructed and validated by the tests, never run there):
  ``pretrax_c4_en_{objective}`` reads TFDS ``c4/en:3.0.1`` (T5X's pretraining source, text
  field "text"); ``register_tfds_text_tasks`` does the same for any TFDS text dataset. They use
  T5's own recipe: rekey text -> targets, tokenize, cache placeholder, concatenate 128 documents
  and split to the objective's raw length, the objective (NumPy, seeded per example by seqio),
  append EOS after trim. ELECTRA is registered for local corpora only: its ExampleBuilder walks
  sentences in corpus order, which a streaming TFDS source cannot index.

Pretraining tasks have no metrics (metric_fns=[]). T5's GLUE and SuperGLUE tasks are registered by
``data/glue_tasks.py`` (import it), fine-tuning tasks as seqio tasks by ``data/finetune_seqio.py``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from data import bundled
from data import examples as examples_lib
from data import vocab as vocab_lib
from objectives import registry

DEFAULT_SEED = 0
SPLITS = ("train", "validation")
BUNDLED_PREFIX = "pretrax_bundled"
C4_TFDS_NAME = "c4/en:3.0.1"
C4_PREFIX = "pretrax_c4_en"
# T5's reduce_concat_tokens concatenates this many documents before splitting.
CONCAT_DOCUMENTS = 128


def t5_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """T5's DEFAULT_OUTPUT_FEATURES: EOS appended to both, inputs optional."""
    return {"inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
            "targets": seqio.Feature(vocabulary, add_eos=True)}


def electra_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """[CLS] ... [SEP] already framed, so no EOS; token types 0/1 (a 2-symbol vocabulary)."""
    return {"inputs": seqio.Feature(vocabulary, add_eos=False),
            "token_type_ids": seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False)}


# ---------------------------------------------------------------------------------------------
# Local corpora: an index source + the fast path's functions.
# ---------------------------------------------------------------------------------------------


class ExampleIndexSource(seqio.DataSource):
    """Yields {"index", "seed", "split"}: the global example indices 0, 1, 2, ... of a split.

    The stream is endless (epochs follow each other; each reshuffles internally), so use
    ``.take(n)``. Sharding takes every num_shards-th index.
    """

    def __init__(self, splits: Sequence[str] = SPLITS):
        super().__init__(splits=splits, caching_permitted=False,
                         performs_internal_shuffling=True)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, **unused: Any) -> tf.data.Dataset:
        if split not in self.splits:
            raise ValueError(f"split={split!r} is not one of {self.splits}")
        start, step = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        seed = DEFAULT_SEED if seed is None else int(seed)
        return tf.data.Dataset.range(start, 2**62, step).map(
            lambda i: {"index": i, "seed": tf.constant(seed, tf.int64),
                       "split": tf.constant(split)})


@functools.lru_cache(maxsize=16)
def _local_examples(files: tuple[str, ...], vocab_path: str, kind: str, objective: str,
                    params: tuple, seed: int, inputs_length: int, fmt: str, field: str,
                    ) -> examples_lib.IndexedExamples:
    if kind == "electra":
        return examples_lib.electra_examples_from_files(
            files, vocab_path, max_length=inputs_length, seed=seed, fmt=fmt, field=field)
    return examples_lib.t5_examples(files, vocab_path, denoiser=registry.denoiser(objective),
                                    inputs_length=inputs_length, seed=seed, fmt=fmt, field=field,
                                    **dict(params))


def make_examples(dataset: tf.data.Dataset, sequence_length: Mapping[str, int], *,
                  split_files: Mapping[str, tuple[str, ...]], vocab_path: str, kind: str,
                  objective: str = "", params: tuple = (), fmt: str = "auto",
                  field: str = "text") -> tf.data.Dataset:
    """index -> the fast path's example (T5: inputs/targets WITHOUT the final EOS)."""
    inputs_length = int(sequence_length["inputs"])
    keys = ("inputs", "token_type_ids") if kind == "electra" else ("inputs", "targets")

    def build(index: np.int64, seed: np.int64, split: bytes) -> list[np.ndarray]:
        examples = _local_examples(split_files[split.decode()], vocab_path, kind, objective,
                                   params, int(seed), inputs_length, fmt, field)
        example = examples.example(int(index))
        if kind == "electra":
            return [example[k] for k in keys]
        return [example[k][:-1] for k in keys]  # append_eos_after_trim restores it

    def convert(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        values = tf.numpy_function(build, [x["index"], x["seed"], x["split"]],
                                   [tf.int32, tf.int32], stateful=False)
        for v in values:
            v.set_shape([None])
        return dict(zip(keys, values, strict=True))

    return dataset.map(convert, num_parallel_calls=1, deterministic=True)


def register_local_corpus_tasks(prefix: str, train_files: str | Sequence[str],
                                validation_files: str | Sequence[str], vocab_path: str, *,
                                fmt: str = "auto", field: str = "text",
                                objectives: Sequence[str] | None = None) -> list[str]:
    """Registers ``{prefix}_{objective}`` for each T5 objective and ``{prefix}_electra``."""
    split_files = {"train": tuple(_as_list(train_files)),
                   "validation": tuple(_as_list(validation_files))}
    vocabulary = vocab_lib.get_vocabulary(vocab_path)
    names = []
    for objective in (objectives or sorted(registry.denoising_names())):
        name = f"{prefix}_{objective}"
        _add(name, ExampleIndexSource(),
             [functools.partial(make_examples, split_files=split_files, vocab_path=vocab_path,
                                kind="t5", objective=objective, fmt=fmt, field=field),
              seqio.preprocessors.append_eos_after_trim],
             t5_output_features(vocabulary))
        names.append(name)
    name = f"{prefix}_electra"
    _add(name, ExampleIndexSource(),
         [functools.partial(make_examples, split_files=split_files, vocab_path=vocab_path,
                            kind="electra", fmt=fmt, field=field)],
         electra_output_features(vocabulary))
    return names + [name]


def _as_list(files: str | Sequence[str]) -> list[str]:
    return [files] if isinstance(files, str) else list(files)


def _add(name: str, source: seqio.DataSource, preprocessors: list,
         output_features: Mapping[str, seqio.Feature]) -> None:
    # Re-registering (e.g. a re-imported module) replaces the task instead of failing.
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                           output_features=output_features, metric_fns=[],
                           shuffle_buffer_size=None)


# ---------------------------------------------------------------------------------------------
# TFDS text sources (C4 and any other): T5's streaming recipe.
# ---------------------------------------------------------------------------------------------


def concat_and_split(dataset: tf.data.Dataset, sequence_length: Mapping[str, int], *,
                     objective: str, params: tuple = ()) -> tf.data.Dataset:
    """Concatenate up to 128 tokenized documents (if the objective does, as T5) and split
    them into chunks of the objective's raw length; the last chunk of a group may be shorter."""
    inputs_length = int(sequence_length["inputs"])
    _, raw_length, _ = registry.denoiser(objective).bind(inputs_length, **dict(params))
    tokens = dataset.map(lambda x: x["targets"])
    if registry.denoiser(objective).concatenate_documents:
        tokens = tokens.ragged_batch(CONCAT_DOCUMENTS).map(lambda r: r.flat_values)

    def split(flat: tf.Tensor) -> tf.data.Dataset:
        n = tf.size(flat)
        rows = (n + raw_length - 1) // raw_length
        starts = tf.range(rows) * raw_length
        pieces = tf.RaggedTensor.from_row_limits(flat, tf.minimum(starts + raw_length, n))
        return tf.data.Dataset.from_tensor_slices(pieces).map(lambda p: {"targets": p})

    min_tokens = 2 if objective == "prefix_lm" else 1
    return tokens.flat_map(split).filter(lambda x: tf.size(x["targets"]) >= min_tokens)


def apply_objective(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature], *,
                    objective: str, sequence_length: Mapping[str, int],
                    params: tuple = ()) -> tf.data.Dataset:
    """The NumPy objective on each chunk, seeded by seqio's per-example seed; EOS removed
    (append_eos_after_trim adds it)."""
    fn, _, _ = registry.denoiser(objective).bind(int(sequence_length["inputs"]),
                                                 **dict(params))
    vocab_size = output_features["targets"].vocabulary.vocab_size

    def corrupt(tokens: np.ndarray, seed: np.ndarray) -> list[np.ndarray]:
        key = (int(np.uint32(seed[0])) << 32) | int(np.uint32(seed[1]))
        out = fn(tokens.astype(np.int32), np.random.Generator(np.random.Philox(key=key)),
                 vocab_size)
        return [out["inputs"][:-1].astype(np.int32), out["targets"][:-1].astype(np.int32)]

    @seqio.map_over_dataset(num_seeds=1)
    def convert(x: Mapping[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs, targets = tf.numpy_function(corrupt, [x["targets"], seed],
                                            [tf.int32, tf.int32], stateful=False)
        inputs.set_shape([None])
        targets.set_shape([None])
        return {"inputs": inputs, "targets": targets}

    return convert(dataset)


def register_tfds_text_tasks(prefix: str, tfds_name: str, vocab_path: str, *,
                             text_field: str = "text", splits: Sequence[str] | None = None,
                             objectives: Sequence[str] | None = None) -> list[str]:
    """``{prefix}_{objective}`` over a TFDS dataset with a text field (no data is read here)."""
    vocabulary = vocab_lib.get_vocabulary(vocab_path)
    names = []
    for objective in (objectives or sorted(registry.denoising_names())):
        name = f"{prefix}_{objective}"
        source = seqio.TfdsDataSource(tfds_name=tfds_name,
                                      splits=list(splits) if splits else None)
        _add_streaming(name, source, text_field, objective, t5_output_features(vocabulary))
        names.append(name)
    return names


def c4_task_name(objective: str, params: Mapping[str, float] | None = None,
                 vocab_path: str = bundled.VOCAB_PATH, register: bool = True) -> str:
    """The C4 task of ``objective`` with ``params`` (e.g. {"noise_density": 0.25}):
    ``pretrax_c4_en_{objective}`` at the objective's defaults, else with the parameters in the
    name (``..._iid_replace_spans_noise_density0.25``). With ``register``, (re)registers it
    with the sentencepiece model ``vocab_path`` unless it already has that one."""
    denoiser = registry.denoiser(objective)
    defaults = denoiser.params()
    given = {k: v for k, v in (params or {}).items() if v != defaults.get(k)}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"objective {objective!r} has no parameter {unknown}; it has "
                         f"{sorted(defaults)}")
    name = f"{C4_PREFIX}_{objective}" + "".join(f"_{k}{v:g}" for k, v in sorted(given.items()))
    if not re.fullmatch(r"[\w\d.:_]+", name):
        raise ValueError(f"objective parameters {given} make the task name {name!r}, which "
                         "seqio refuses; use plain decimal values")
    if register and _vocab_file(name) != vocab_path:
        _add_streaming(name, seqio.TfdsDataSource(tfds_name=C4_TFDS_NAME), "text", objective,
                       t5_output_features(vocab_lib.get_vocabulary(vocab_path)),
                       tuple(sorted(given.items())))
    return name


def _vocab_file(name: str) -> str | None:
    """The sentencepiece model of a registered task (None: no such task)."""
    if name not in seqio.TaskRegistry.names():
        return None
    vocabulary = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
    return getattr(vocabulary, "sentencepiece_model_file", None)


def streaming_recipe(name: str) -> tuple[str, dict[str, float]] | None:
    """(objective, its parameters) a streaming pretraining task applies (None for others)."""
    task = seqio.get_mixture_or_task(name)
    for step in getattr(task, "preprocessors", ()):
        if getattr(step, "func", None) is apply_objective:
            objective = step.keywords["objective"]
            return objective, registry.denoiser(objective).params(**dict(step.keywords.get(
                "params", ())))
    return None


def local_examples(name: str, split: str, *, inputs_length: int,
                   seed: int) -> examples_lib.IndexedExamples | None:
    """The fast path's examples behind a local-corpus task (None for any other task).

    ``task.get_dataset(..., seed=seed)`` yields exactly these examples (tested), so a trainer can
    read a local task at the fast path's speed and with its exact, replay-free resume.
    """
    task = seqio.get_mixture_or_task(name)
    if not isinstance(task, seqio.Task) or not isinstance(task.source, ExampleIndexSource):
        return None
    recipe = task.preprocessors[0].keywords  # functools.partial(make_examples, ...)
    if split not in recipe["split_files"]:
        raise ValueError(f"task {name!r} has no split {split!r}; it has "
                         f"{sorted(recipe['split_files'])}")
    return _local_examples(recipe["split_files"][split], recipe["vocab_path"], recipe["kind"],
                           recipe.get("objective", ""), recipe.get("params", ()), int(seed),
                           int(inputs_length), recipe["fmt"], recipe["field"])


def register_streaming_task(name: str, source: seqio.DataSource, vocab_path: str, *,
                            objective: str = "span_corruption", text_field: str = "text") -> str:
    """``name``: T5's streaming recipe (below) over any seqio source of ``{text_field: str}``."""
    _add_streaming(name, source, text_field, objective,
                   t5_output_features(vocab_lib.get_vocabulary(vocab_path)))
    return name


def _add_streaming(name: str, source: seqio.DataSource, text_field: str, objective: str,
                   output_features: Mapping[str, seqio.Feature], params: tuple = ()) -> None:
    preprocessors = [
        functools.partial(seqio.preprocessors.rekey,
                          key_map={"inputs": None, "targets": text_field}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        functools.partial(concat_and_split, objective=objective, params=params),
        functools.partial(apply_objective, objective=objective, params=params),
        seqio.preprocessors.append_eos_after_trim,
    ]
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                           output_features=output_features, metric_fns=[])


# ---------------------------------------------------------------------------------------------
# The registrations.
# ---------------------------------------------------------------------------------------------

BUNDLED_TASKS = register_local_corpus_tasks(BUNDLED_PREFIX, bundled.TRAIN_FILES,
                                            bundled.VALIDATION_FILES, bundled.VOCAB_PATH)
C4_TASKS = register_tfds_text_tasks(C4_PREFIX, C4_TFDS_NAME, bundled.VOCAB_PATH)
