"""Downstream (fine-tuning) tasks: labelled text in JSONL files, their metrics, their examples.

A :class:`FinetuneTask` names its files (one JSON object per line, optionally gzipped), which
fields hold the text (one field: single-sentence; two: sentence pair), the target field and
what the target is:

- ``classification``: a label string from ``labels`` (as T5 writes GLUE labels);
- ``regression``: a number written as a string (as T5 writes STS-B);
- ``text_to_text``: free text.

The same task trains both families: an ELECTRA classifier reads ``[CLS] A [SEP] B [SEP]`` with
token types and predicts a label index (or a float); T5 reads ``"<prefix> sentence1: A
sentence2: B"`` and generates the target text. Predictions of either become strings (or floats)
and are scored by the task's metric functions, seqio's contract: ``fn(targets, predictions) ->
{name: value}`` after ``postprocess``.

Tasks are registered by name (:func:`register`); ``config.data.task_module`` names a module
that registers more before the lookup (T5X's ``MIXTURE_OR_TASK_MODULE``). The bundled tasks
(``data/downstream/``, built by ``data/build_downstream.py``) are registered on import; GLUE and
SuperGLUE (``glue_*``, ``super_glue_*``, read from TFDS: ``data/glue.py``) when first asked for.
``data/finetune_seqio.py`` registers any task as a seqio Task of the same name.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from data import features
from data.examples import IndexedExamples
from data.vocab import load_sentencepiece

KINDS = ("classification", "regression", "text_to_text")
SPLITS = ("train", "validation", "test")
DOWNSTREAM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "downstream")


# ---------------------------------------------------------------------------------------------
# Metrics: seqio's contract, fn(targets, predictions) -> {name: value}, on postprocessed values.
# ---------------------------------------------------------------------------------------------
def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions,
                                                                        strict=True)]))}


def f1_binary(targets: Sequence[Any], predictions: Sequence[Any], positive: Any = "yes"
              ) -> dict[str, float]:
    """F1 of the positive class (GLUE's MRPC/QQP convention), in percent."""
    t = np.asarray([x == positive for x in targets])
    p = np.asarray([x == positive for x in predictions])
    tp = float(np.sum(t & p))
    denominator = float(np.sum(t) + np.sum(p))
    return {"f1": 100.0 * (2 * tp / denominator if denominator else 0.0)}


def f1_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """F1 of class 1 over class ids 0/1 (T5's GLUE MRPC/QQP metric), in percent; a prediction
    that is neither (an unknown label, -1) counts as wrong: a false positive when the target is
    0, a false negative when it is 1."""
    t = np.asarray(targets) == 1
    p = np.asarray(predictions)
    p = np.where((p == 0) | (p == 1), p == 1, ~t)
    tp = float(np.sum(t & p))
    denominator = 2 * tp + float(np.sum(~t & p)) + float(np.sum(t & ~p))
    return {"f1": 100.0 * (2 * tp / denominator if denominator else 0.0)}


def matthews_corrcoef(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Matthews correlation (GLUE's CoLA metric), times 100; for more than two values (an
    invalid prediction is a value of its own) the multiclass R_K of Gorodkin (2004)."""
    index = {v: i for i, v in enumerate(dict.fromkeys([*targets, *predictions]))}
    n = len(targets)
    confusion = np.zeros((len(index), len(index)), np.float64)
    np.add.at(confusion, ([index[v] for v in targets], [index[v] for v in predictions]), 1.0)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    samples, correct = float(n), float(np.trace(confusion))
    cov_tp = correct * samples - float(np.dot(t_sum, p_sum))
    cov_pp = samples**2 - float(np.dot(p_sum, p_sum))
    cov_tt = samples**2 - float(np.dot(t_sum, t_sum))
    if cov_pp * cov_tt == 0:
        return {"matthews_corrcoef": 0.0}
    return {"matthews_corrcoef": 100.0 * (cov_tp / np.sqrt(cov_tt * cov_pp))}


def mean_multiclass_f1(num_classes: int) -> Callable[[Sequence[int], Sequence[int]],
                                                      dict[str, float]]:
    """Unweighted mean over class ids 0..num_classes-1 of each class's F1 (T5's CB metric,
    ``mean_3class_f1``), in percent; a class never predicted nor present scores 0."""
    def mean_f1(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
        t, p = np.asarray(targets), np.asarray(predictions)
        scores = []
        for c in range(num_classes):
            tp = float(np.sum((t == c) & (p == c)))
            denominator = float(np.sum(t == c) + np.sum(p == c))
            scores.append(2 * tp / denominator if denominator else 0.0)
        return {f"mean_{num_classes}class_f1": 100.0 * float(np.mean(scores))}

    return mean_f1


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0)) if denominator else np.nan


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    first = np.concatenate([[True], x[order][1:] != x[order][:-1]])
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(x))
    ranks = np.empty(len(x), np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(first) - 1]
    return ranks


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]
                     ) -> dict[str, float]:
    """Pearson correlation times 100 (T5's STS-B metric; NaN if either side is constant)."""
    return {"pearson_corrcoef": 100.0 * _pearson(np.asarray(targets, np.float64),
                                                 np.asarray(predictions, np.float64))}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]
                      ) -> dict[str, float]:
    """Spearman correlation (Pearson of average ranks) times 100 (T5's second STS-B metric)."""
    return {"spearman_corrcoef": 100.0 * _pearson(
        _average_ranks(np.asarray(targets, np.float64)),
        _average_ranks(np.asarray(predictions, np.float64)))}


def pearson_spearman(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (STS-B's metrics), times 100; 0 for a constant side."""
    t, p = np.asarray(targets, np.float64), np.asarray(predictions, np.float64)
    if np.std(t) == 0 or np.std(p) == 0:
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": pearson_corrcoef(t, p)["pearson_corrcoef"],
            "spearman": spearman_corrcoef(t, p)["spearman_corrcoef"]}


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percent of predictions equal to the target after stripping and lower-casing."""
    return {"exact_match": 100.0 * float(np.mean(
        [t.strip().lower() == p.strip().lower()
         for t, p in zip(targets, predictions, strict=True)]))}


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


# ---------------------------------------------------------------------------------------------
# Tasks.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FinetuneTask:
    """A downstream task over JSONL files; see the module docstring."""

    name: str
    kind: str  # one of KINDS
    files: Mapping[str, str]  # split -> path of a .jsonl or .jsonl.gz file (or {} with reader)
    text_fields: tuple[str, ...] = ("sentence1",)  # 1 (single sentence) or 2 (pair)
    target_field: str = "target"
    labels: tuple[str, ...] = ()  # classification: the label strings, index = class id
    metric_fns: tuple[Callable[[Sequence[Any], Sequence[Any]], dict[str, float]], ...] = ()
    prefix: str = ""  # T5's input prefix; default: the task name
    main_metric: str = ""  # what "best" means; default: the first metric's first key
    # Records from elsewhere (e.g. TFDS): split -> list of records with the fields above; used
    # instead of ``files`` when set.
    reader: Callable[[str], list[dict[str, str]]] | None = None
    # T5's input fields in order, when they differ from ``text_fields`` (the encoder's segment
    # order): T5's GLUE tasks sort them by name ("mnli hypothesis: ... premise: ...").
    t5_fields: tuple[str, ...] = ()
    # A target or prediction string -> what the metrics compare (seqio's postprocess_fn; T5's
    # GLUE tasks map labels to class ids, -1 for anything else). Default: see postprocess().
    postprocessor: Callable[[str], Any] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind={self.kind!r}; expected one of {KINDS}")
        if len(self.text_fields) not in (1, 2):
            raise ValueError(f"task {self.name!r}: text_fields={self.text_fields}; expected one "
                             "field (single sentence) or two (sentence pair)")
        if self.kind == "classification" and len(self.labels) < 2:
            raise ValueError(f"task {self.name!r}: a classification task needs >= 2 labels, "
                             f"got {self.labels}")
        if self.kind != "classification" and self.labels:
            raise ValueError(f"task {self.name!r}: labels are for classification tasks only")
        if not self.metric_fns:
            raise ValueError(f"task {self.name!r}: needs at least one metric function")

    @property
    def num_classes(self) -> int:
        """Output width of an encoder head: labels, or 1 for regression."""
        if self.kind == "text_to_text":
            raise ValueError(f"task {self.name!r} is text-to-text: it has no classifier head; "
                             "fine-tune a T5 model on it (objective 'text_to_text')")
        return len(self.labels) if self.kind == "classification" else 1

    def postprocess(self, text: str) -> Any:
        """A target or prediction string -> the value metrics compare: ``postprocessor(text)``
        if the task has one; else the stripped text (a float for regression, NaN if none)."""
        if self.postprocessor is not None:
            return self.postprocessor(text)
        return _float_or_nan(text) if self.kind == "regression" else text.strip()

    def score(self, targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
        t = [self.postprocess(x) for x in targets]
        p = [self.postprocess(x) for x in predictions]
        out: dict[str, float] = {}
        for fn in self.metric_fns:
            out.update(fn(t, p))
        return out

    @property
    def metric(self) -> str:
        """The metric that picks the best checkpoint (higher is better)."""
        if self.main_metric:
            return self.main_metric
        # The first metric's first key, found on a trivially correct prediction.
        probe = [self.postprocess(x) for x in {"classification": self.labels[:1],
                                                "regression": ["1", "2"],
                                                "text_to_text": ["a"]}[self.kind]]
        return next(iter(self.metric_fns[0](probe, probe)))

    def rows(self, split: str) -> list[dict[str, str]]:
        """The split's records, checked: text fields present, targets valid."""
        if self.reader is not None:
            records = self.reader(split)
            if not records:
                raise ValueError(f"task {self.name!r}: split {split!r} has no records")
            return [self._checked(r, f"task {self.name!r} {split} record {i}")
                    for i, r in enumerate(records)]
        if split not in self.files:
            raise ValueError(f"task {self.name!r} has no split {split!r}; it has "
                             f"{sorted(self.files)}")
        path = self.files[split]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"task {self.name!r}: {split} file {path!r} does not exist")
        return self.read(path)

    def read(self, path: str, with_targets: bool = True) -> list[dict[str, str]]:
        """The records of a JSONL(.gz) file, checked (targets optional for prediction)."""
        opener = gzip.open if path.endswith(".gz") else open
        out = []
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not a JSON object ({e})") from e
                out.append(self._checked(record, f"{path}:{number}", with_targets))
        if not out:
            raise ValueError(f"{path}: no records")
        return out

    def _checked(self, record: Any, where: str, with_target: bool = True) -> dict[str, str]:
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        fields = self.text_fields + self.t5_fields + ((self.target_field,) if with_target else ())
        for field in fields:
            if not isinstance(record.get(field), str):
                raise ValueError(f"{where}: field {field!r} must be a string; the record has "
                                 f"{sorted(record)}")
        if not with_target and self.target_field not in record:
            return record
        target = record[self.target_field]
        if self.kind == "classification" and target not in self.labels:
            raise ValueError(f"{where}: target {target!r} is not one of task {self.name!r}'s "
                             f"labels {list(self.labels)}")
        if self.kind == "regression" and not np.isfinite(_float_or_nan(target)):
            raise ValueError(f"{where}: target {target!r} of regression task {self.name!r} is "
                             "not a number")
        return record

    def t5_input(self, record: Mapping[str, str]) -> str:
        """T5's text-to-text input: ``"<prefix> field1: text1 field2: text2"`` (GLUE style)."""
        parts = [self.prefix or self.name]
        for field in self.t5_fields or self.text_fields:
            parts.append(f"{field}: {record[field]}")
        return " ".join(parts)


_TASKS: dict[str, FinetuneTask] = {}


def register(task: FinetuneTask) -> FinetuneTask:
    """Adds ``task`` to the table (a second registration of the same name is refused)."""
    if task.name in _TASKS and _TASKS[task.name] != task:
        raise ValueError(f"a fine-tuning task named {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


# Modules that register tasks by name prefix, imported when such a task is asked for (so the
# GLUE tasks need no task_module, and importing this module stays free of TensorFlow).
PROVIDERS = {"glue_": "data.glue", "super_glue_": "data.glue"}


def get(name: str, module: str = "") -> FinetuneTask:
    """The task ``name``, after importing ``module`` (which may register it), or the module of
    :data:`PROVIDERS` whose prefix the name has."""
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"config.data.task_module={module!r} cannot be imported: {e}") from e
    if name not in _TASKS:
        for prefix, provider in PROVIDERS.items():
            if name.startswith(prefix):
                importlib.import_module(provider)
    if name not in _TASKS:
        hint = "" if module else " (set config.data.task_module to the module that registers it)"
        raise ValueError(f"config.data.task={name!r} is not a registered fine-tuning task; "
                         f"registered: {sorted(_TASKS)}{hint}")
    return _TASKS[name]


def names() -> list[str]:
    return sorted(_TASKS)


# ---------------------------------------------------------------------------------------------
# Examples: tokenized rows, index-addressable like the pretraining examples.
# ---------------------------------------------------------------------------------------------
class FinetuneExamples(IndexedExamples):
    """A split of a task as model rows; epochs are seeded permutations (data/examples.py).

    ``rows[i]`` and ``targets[i]`` are record i in file order (evaluation walks them in
    order); ``truncated`` counts records cut to fit the configured lengths.
    """

    def __init__(self, task: FinetuneTask, kind: str, rows: list[dict[str, np.ndarray]],
                 records: list[dict[str, str]], task_lengths: dict[str, int], truncated: int,
                 seed: int):
        self.task, self.kind, self.rows, self.records = task, kind, rows, records
        self.task_lengths, self.truncated = task_lengths, truncated
        self.targets = [r.get(task.target_field) for r in records]
        super().__init__(len(rows), seed)

    def _make(self, item: int, index: int) -> dict[str, np.ndarray]:
        return self.rows[item]

    def head(self, n: int) -> FinetuneExamples:
        """The first ``n`` records (evaluation on a subset)."""
        return FinetuneExamples(self.task, self.kind, self.rows[:n], self.records[:n],
                                self.task_lengths, self.truncated, self.seed)

    def features(self, group: Sequence[Mapping[str, np.ndarray]], pack: bool
                 ) -> dict[str, np.ndarray]:
        """The batch rows of ``group`` (never packed: one record per row)."""
        if self.kind == "encdec":
            return features.encdec_features(features.pad_examples(group, self.task_lengths),
                                            False)
        out = features.encoder_features(features.pad_examples(group, self.task_lengths), False)
        labels = np.asarray([g["label"] for g in group])
        out["labels"] = labels.astype(np.float32 if self.task.kind == "regression" else np.int32)
        return out


def _fit(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """BERT's pair truncation: drop from the end of the longer one until both fit."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def _records(task: FinetuneTask, split: str | list[dict[str, str]]) -> list[dict[str, str]]:
    return task.rows(split) if isinstance(split, str) else split


def encoder_examples(task: FinetuneTask, split: str | list[dict[str, str]], vocab_path: str,
                     special_ids: Mapping[str, int], max_length: int, seed: int
                     ) -> FinetuneExamples:
    """``[CLS] A [SEP] (B [SEP])`` rows, token types 0 then 1, label index (or float); label 0
    for records without a target (prediction). ``split``: a split name or the records."""
    _ = task.num_classes  # raises for text-to-text tasks: they have no classifier head
    sp = load_sentencepiece(vocab_path)
    records = _records(task, split)
    cls, sep = special_ids["cls"], special_ids["sep"]
    budget = max_length - 1 - len(task.text_fields)
    rows, truncated = [], 0
    for record in records:
        pieces = [sp.encode(record[f]) for f in task.text_fields]
        if len(pieces) == 1:
            fitted = [pieces[0][:budget]]
        else:
            fitted = list(_fit(pieces[0], pieces[1], budget))
        truncated += sum(len(x) for x in pieces) > sum(len(x) for x in fitted)
        tokens, types = [cls], [0]
        for segment, ids in enumerate(fitted):
            tokens += ids + [sep]
            types += [segment] * (len(ids) + 1)
        target = record.get(task.target_field)
        if target is None:
            label = 0
        else:
            label = (task.labels.index(target) if task.kind == "classification"
                     else float(target))
        rows.append({"inputs": np.asarray(tokens, np.int32),
                     "token_type_ids": np.asarray(types, np.int32), "label": label})
    return FinetuneExamples(task, "classify", rows, records, {"inputs": max_length},
                            truncated, seed)


def encdec_examples(task: FinetuneTask, split: str | list[dict[str, str]], vocab_path: str,
                    eos_id: int, inputs_length: int, targets_length: int, seed: int
                    ) -> FinetuneExamples:
    """T5 rows: the formatted input and the target text, each + EOS (trimmed first, as seqio's
    ``append_eos_after_trim``); an empty target for records without one (prediction)."""
    sp = load_sentencepiece(vocab_path)
    records = _records(task, split)
    rows, truncated = [], 0
    for record in records:
        inputs = sp.encode(task.t5_input(record))
        targets = sp.encode(record.get(task.target_field, ""))
        truncated += len(inputs) >= inputs_length or len(targets) >= targets_length
        rows.append({"inputs": np.asarray(inputs[:inputs_length - 1] + [eos_id], np.int32),
                     "targets": np.asarray(targets[:targets_length - 1] + [eos_id], np.int32)})
    return FinetuneExamples(task, "encdec", rows, records,
                            {"inputs": inputs_length, "targets": targets_length}, truncated,
                            seed)


# ---------------------------------------------------------------------------------------------
# The bundled tasks (data/downstream/, see its README): registered when their files exist.
# ---------------------------------------------------------------------------------------------
def _bundled_files(name: str) -> dict[str, str]:
    return {s: os.path.join(DOWNSTREAM_DIR, name, f"{s}.jsonl.gz") for s in SPLITS}


def _register_bundled() -> None:
    manifest_path = os.path.join(DOWNSTREAM_DIR, "MANIFEST.json")
    if not os.path.isfile(manifest_path):
        return
    with open(manifest_path) as f:
        manifest = json.load(f)
    tasks = manifest.get("tasks", manifest)
    specs = {
        "wn_lexname": dict(kind="classification", metric_fns=(accuracy,)),
        "wn_hypernym": dict(kind="classification", text_fields=("sentence1", "sentence2"),
                            metric_fns=(accuracy, f1_binary)),
        "wn_headword": dict(kind="text_to_text", metric_fns=(exact_match,)),
    }
    for name, spec in specs.items():
        if name not in tasks:
            continue
        labels = tuple(tasks[name].get("labels", ())) if spec["kind"] == "classification" else ()
        register(FinetuneTask(name=name, files=_bundled_files(name), labels=labels, **spec))


_register_bundled()
