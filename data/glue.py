"""GLUE and SuperGLUE as T5 registers them (``t5/data/tasks.py``), without TensorFlow.

What is true of each T5 task apart from the data pipeline lives here: its seqio name, TFDS
dataset and splits, the text fields of the input in T5's order, the label names, T5's metric
functions and postprocessors (our implementations; tests/test_glue.py checks each against the
original on the same inputs). ``data/glue_tasks.py`` registers the seqio tasks from
:data:`BENCHMARKS`.

Every GLUE classification and regression task, and SuperGLUE's BoolQ, CB and RTE, is also a
:class:`~data.finetune.FinetuneTask` of the same name read from TFDS, so pretrax's trainer
fine-tunes ELECTRA (``classify``) or T5 (``text_to_text``) on it with T5's metrics:
``--config.data.task=glue_mrpc_v002`` (``data.finetune.get`` imports this module for a name
that starts with ``glue_`` or ``super_glue_``). The encoder reads the fields in the usual
segment order (MNLI: premise, then hypothesis); T5's input keeps T5's order (``t5_fields``).
STS-B's FinetuneTask target is the raw score ("3.8"); T5's seqio task rounds it to 0.2.

Reading TFDS needs a prepared copy (``tfds build glue/mrpc:1.0.0`` where there is network, into
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). GLUE's test labels are hidden (-1), so the
FinetuneTasks have train and validation splits only (MNLI's validation is the matched set;
``glue_mnli_mismatched_v002`` is the mismatched one).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from data import finetune
from data.finetune import accuracy, f1_with_invalid, matthews_corrcoef

GLUE_VERSION, SUPER_GLUE_VERSION = "1.0.0", "1.0.2"  # T5's pins


# ---------------------------------------------------------------------------------------------
# Postprocessors: seqio's contract, fn(text, example=None, is_target=False) -> value.
# ---------------------------------------------------------------------------------------------
def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@dataclasses.dataclass(frozen=True)
class LabelToId:
    """A label string -> its index in ``labels``; -1 for any other text (a wrong prediction)."""

    labels: tuple[str, ...]

    def __call__(self, text: str, example: Any = None, is_target: bool = False) -> int:
        return self.labels.index(text) if text in self.labels else -1


def string_to_float(text: str, example: Any = None, is_target: bool = False) -> float:
    """STS-B: the number the text spells; -1.0 if it spells none."""
    try:
        return float(text)
    except ValueError:
        return -1.0


_TRUE_FALSE = LabelToId(("False", "True"))


def multirc_postprocess(text: str, example: Any = None, is_target: bool = False) -> dict:
    """``{"value": class id}``, and for a target the question it answers (``"group"``)."""
    out = {"value": _TRUE_FALSE(text)}
    if is_target:
        out["group"] = example["idx/question"]
    return out


def record_postprocess(text: str, example: Any = None, is_target: bool = False) -> dict:
    """A prediction: ``{"value": text}``; a target: every correct answer and the query's id."""
    if not is_target:
        return {"value": text}
    return {"value": [_text(a) for a in example["answers"]],
            "group": (example["idx/passage"], example["idx/query"])}


_DETERMINERS = frozenset("a an few her his each every many much my our some that the their "
                         "these this those which whose your".split())


def _content_words(text: str | bytes) -> list[str]:
    """Lower-cased words (split on single spaces) without determiners."""
    return [w for w in _text(text).strip().lower().split(" ") if w not in _DETERMINERS]


def wsc_simple_postprocess(text: str, example: Any = None, is_target: bool = False) -> int:
    """WSC as generation: 1 if the predicted noun phrase names the referent the example asks
    about (either word set contains the other, determiners and case ignored, both or neither
    possessive), else 0; -1 for an empty prediction. A target is the example's 0/1 label."""
    if is_target:
        return example["label"]
    predicted = _content_words(text)
    if predicted in ([], [""]):
        return -1  # never equal to a label by accident
    referent = _content_words(example["targets_pretokenized"])
    if any("'" in w for w in predicted) != any("'" in w for w in referent):
        return 0  # "Bob" is not "Bob's hat"
    p, r = set(predicted), set(referent) or {""}
    return int(p <= r or r <= p)


# ---------------------------------------------------------------------------------------------
# SuperGLUE metrics (GLUE's are in data/finetune.py).
# ---------------------------------------------------------------------------------------------
def multirc_f1(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
    """F1 over every answer of every question (T5's ``multirc_f1_over_all_answers``)."""
    return f1_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def multirc_exact_match(targets: Sequence[dict], predictions: Sequence[dict]
                        ) -> dict[str, float]:
    """Percent of questions whose answers are all classified right, averaged per question."""
    groups: dict[Any, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
    for t, p in zip(targets, predictions, strict=True):
        groups[t["group"]][0].append(t["value"])
        groups[t["group"]][1].append(p["value"])
    return {"exact_match": float(np.mean([100 * float(t == p) for t, p in groups.values()]))}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_squad(text: str) -> str:
    """The SQuAD script's answer normalisation: lower case, no punctuation or articles, single
    spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def _token_f1(target: str, prediction: str) -> float:
    common = collections.Counter(prediction.split()) & collections.Counter(target.split())
    same = sum(common.values())
    if not same:
        return 0
    precision, recall = same / len(prediction.split()), same / len(target.split())
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD's exact match and token F1 (percent), each the best over a question's answers."""
    targets = [[normalize_squad(t) for t in answers] for answers in targets]
    predictions = [normalize_squad(p) for p in predictions]
    em = np.mean([max(t == p for t in ts) for ts, p in zip(targets, predictions, strict=True)])
    f1 = np.mean([max(_token_f1(t, p) for t in ts) for ts, p in zip(targets, predictions,
                                                                     strict=True)])
    return {"em": em * 100, "f1": f1 * 100}


def record_squad(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
    """SQuAD metrics over ReCoRD queries, each counted once (its first copy: T5's examples
    repeat a query once per correct answer)."""
    seen, kept_targets, kept_predictions = set(), [], []
    for t, p in zip(targets, predictions, strict=True):
        if t["group"] not in seen:
            seen.add(t["group"])
            kept_targets.append(t["value"])
            kept_predictions.append(p["value"])
    return squad(kept_targets, kept_predictions)


CB_F1 = finetune.mean_multiclass_f1(3)
STSB_METRICS = (finetune.pearson_corrcoef, finetune.spearman_corrcoef)


# ---------------------------------------------------------------------------------------------
# The tasks.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One of T5's GLUE / SuperGLUE seqio tasks (and optionally a FinetuneTask)."""

    name: str  # T5's seqio task name
    tfds_name: str
    # The text-to-text conversion (data/glue_tasks.py): "text" (T5's generic GLUE format
    # "<prefix> field: text ..."), "multirc" (the same without HTML), "stsb", "record",
    # "wsc_train" / "wsc_eval" (WSC as naming the referent), "dpr".
    style: str
    prefix: str = ""  # T5's first input word
    fields: tuple[str, ...] = ()  # T5's input fields, in order (TFDS feature names)
    labels: tuple[str, ...] = ()
    splits: tuple[str, ...] | None = None  # None: every split TFDS has
    metric_fns: tuple[Callable, ...] = ()
    postprocessor: Callable | None = None
    rekey: tuple[tuple[str, str], ...] = ()  # (new name, TFDS name) before converting
    sentinel: bool = False  # T5 also registers a "_1_sentinel" copy
    # As a FinetuneTask: the encoder's segments in order (empty: not one), and its splits.
    encoder_fields: tuple[str, ...] = ()
    finetune_splits: tuple[tuple[str, str], ...] = (("train", "train"),
                                                    ("validation", "validation"))


def _glue(config: str, fields: tuple[str, ...], labels: tuple[str, ...], metric_fns: tuple,
          **kw: Any) -> Benchmark:
    kw.setdefault("prefix", "mnli" if "mnli" in config or config == "ax" else config)
    kw.setdefault("postprocessor", LabelToId(labels))
    return Benchmark(
        name=f"glue_{config}_v002", tfds_name=f"glue/{config}:{GLUE_VERSION}",
        style=kw.pop("style", "text"), fields=fields, labels=labels, metric_fns=metric_fns,
        **kw)


def _super_glue(config: str, fields: tuple[str, ...], labels: tuple[str, ...],
                metric_fns: tuple, **kw: Any) -> Benchmark:
    kw.setdefault("prefix", config)
    kw.setdefault("postprocessor", LabelToId(labels) if labels else None)
    return Benchmark(
        name=kw.pop("name", f"super_glue_{config}_v102"),
        tfds_name=f"super_glue/{config}:{SUPER_GLUE_VERSION}", style=kw.pop("style", "text"),
        fields=fields, labels=labels, metric_fns=metric_fns, sentinel=True, **kw)


MNLI_LABELS = ("entailment", "neutral", "contradiction")
NLI_FIELDS, PAIR = ("hypothesis", "premise"), ("sentence1", "sentence2")
RTE_LABELS = ("entailment", "not_entailment")
MNLI_EVAL = dict(finetune_splits=(("validation", "validation"),))  # evaluation sets

BENCHMARKS: tuple[Benchmark, ...] = (
    _glue("cola", ("sentence",), ("unacceptable", "acceptable"), (matthews_corrcoef,),
          encoder_fields=("sentence",)),
    _glue("sst2", ("sentence",), ("negative", "positive"), (accuracy,),
          encoder_fields=("sentence",)),
    _glue("mrpc", PAIR, ("not_equivalent", "equivalent"), (f1_with_invalid, accuracy),
          encoder_fields=PAIR),
    _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
          (f1_with_invalid, accuracy), encoder_fields=("question1", "question2")),
    _glue("stsb", PAIR, (), STSB_METRICS, style="stsb", postprocessor=string_to_float,
          encoder_fields=PAIR),
    _glue("mnli", NLI_FIELDS, MNLI_LABELS, (accuracy,), encoder_fields=NLI_FIELDS[::-1],
          finetune_splits=(("train", "train"), ("validation", "validation_matched"))),
    _glue("mnli_mismatched", NLI_FIELDS, MNLI_LABELS, (accuracy,),
          encoder_fields=NLI_FIELDS[::-1], **MNLI_EVAL),
    _glue("mnli_matched", NLI_FIELDS, MNLI_LABELS, (accuracy,),
          encoder_fields=NLI_FIELDS[::-1], **MNLI_EVAL),
    _glue("qnli", ("question", "sentence"), RTE_LABELS, (accuracy,),
          encoder_fields=("question", "sentence")),
    _glue("rte", PAIR, RTE_LABELS, (accuracy,), encoder_fields=PAIR),
    _glue("wnli", PAIR, ("not_entailment", "entailment"), (accuracy,), encoder_fields=PAIR),
    _glue("ax", NLI_FIELDS, MNLI_LABELS, (), splits=("test",)),  # MNLI diagnostics, unlabelled
    _super_glue("boolq", ("passage", "question"), ("False", "True"), (accuracy,),
                encoder_fields=("question", "passage")),
    _super_glue("cb", NLI_FIELDS, ("entailment", "contradiction", "neutral"),
                (CB_F1, accuracy), encoder_fields=NLI_FIELDS[::-1]),
    _super_glue("copa", ("choice1", "choice2", "premise", "question"), ("choice1", "choice2"),
                (accuracy,)),
    _super_glue("multirc", ("question", "answer", "paragraph"), ("False", "True"),
                (multirc_f1, multirc_exact_match), style="multirc",
                postprocessor=multirc_postprocess),
    _super_glue("record", (), (), (record_squad,), style="record",
                postprocessor=record_postprocess),
    _super_glue("rte", NLI_FIELDS, RTE_LABELS, (accuracy,), encoder_fields=NLI_FIELDS[::-1]),
    _super_glue("wic", ("sentence1", "sentence2", "word"), ("False", "True"), (accuracy,)),
    # The diagnostics, cast as RTE (AX-b's sentence1/2 renamed premise/hypothesis).
    _super_glue("axb", NLI_FIELDS, RTE_LABELS, (), prefix="rte", splits=("test",),
                rekey=(("premise", "sentence1"), ("hypothesis", "sentence2"))),
    _super_glue("axg", NLI_FIELDS, RTE_LABELS, (), prefix="rte", splits=("test",)),
    # WSC as naming the pronoun's referent: train on correct referents only, evaluate all.
    dataclasses.replace(
        _super_glue("wsc.fixed", (), (), (), name="super_glue_wsc_v102_simple_train",
                    style="wsc_train"), splits=("train",)),
    dataclasses.replace(
        _super_glue("wsc.fixed", (), (), (accuracy,), name="super_glue_wsc_v102_simple_eval",
                    style="wsc_eval", postprocessor=wsc_simple_postprocess),
        splits=("validation", "test")),
    Benchmark(name="dpr_v001_simple", tfds_name="definite_pronoun_resolution:1.1.0",
              style="dpr", metric_fns=(accuracy,), sentinel=True),
)

BY_NAME: dict[str, Benchmark] = {b.name: b for b in BENCHMARKS}

# T5's mixtures, rated by training examples (0: evaluated, never trained on).
GLUE_RATES = {"glue_cola_v002": 8_551., "glue_sst2_v002": 67_349., "glue_mrpc_v002": 3_668.,
              "glue_qqp_v002": 363_849., "glue_stsb_v002": 5_749., "glue_mnli_v002": 392_702.,
              "glue_qnli_v002": 104_743., "glue_rte_v002": 2_490.,
              "glue_mnli_mismatched_v002": 0., "glue_mnli_matched_v002": 0.,
              "glue_ax_v002": 0.}
SUPER_GLUE_RATES = {"dpr_v001_simple": 1_322., "super_glue_wsc_v102_simple_train": 259.,
                    "super_glue_wsc_v102_simple_eval": 0., "super_glue_boolq_v102": 9_427.,
                    "super_glue_cb_v102": 250., "super_glue_copa_v102": 400.,
                    "super_glue_multirc_v102": 27_243., "super_glue_record_v102": 138_854.,
                    "super_glue_rte_v102": 2_490., "super_glue_wic_v102": 5_428.,
                    "super_glue_axb_v102": 0., "super_glue_axg_v102": 0.}


# ---------------------------------------------------------------------------------------------
# FinetuneTasks read from TFDS.
# ---------------------------------------------------------------------------------------------
def read_tfds(split: str, *, benchmark: Benchmark) -> list[dict[str, str]]:
    """The records of a FinetuneTask split: the text fields and ``label`` as strings."""
    splits = dict(benchmark.finetune_splits)
    if split not in splits:
        hidden = " (GLUE's test labels are not public)" if split == "test" else ""
        raise ValueError(f"task {benchmark.name!r} has no split {split!r}{hidden}; it has "
                         f"{sorted(splits)}")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"task {benchmark.name!r} reads TFDS {benchmark.tfds_name!r}: "
                          "install tensorflow-datasets") from e
    try:
        dataset = tfds.load(benchmark.tfds_name, split=splits[split], download=False,
                            shuffle_files=False, data_dir=os.environ.get("TFDS_DATA_DIR"))
    except AssertionError as e:  # what tfds raises for a dataset not prepared
        raise FileNotFoundError(
            f"task {benchmark.name!r} reads TFDS {benchmark.tfds_name!r} split "
            f"{splits[split]!r}, which is not prepared here ({e}). Prepare it where there is "
            f"network: `tfds build {benchmark.tfds_name} --data_dir=DIR` (or copy a prepared "
            "copy into DIR), then set TFDS_DATA_DIR=DIR") from e
    records = []
    for example in tfds.as_numpy(dataset):
        record = {f: _text(example[f]) for f in benchmark.encoder_fields}
        label = example["label"]
        record["label"] = (benchmark.labels[label] if benchmark.labels
                           else str(np.float32(label)))
        records.append(record)
    return records


def finetune_task(benchmark: Benchmark) -> finetune.FinetuneTask:
    """The FinetuneTask of a GLUE/SuperGLUE classification or regression benchmark."""
    if not benchmark.encoder_fields:
        raise ValueError(f"{benchmark.name!r} is not a classification or regression task of "
                         "one or two texts")
    return finetune.FinetuneTask(
        name=benchmark.name, kind="classification" if benchmark.labels else "regression",
        files={}, reader=functools.partial(read_tfds, benchmark=benchmark),
        text_fields=benchmark.encoder_fields, t5_fields=benchmark.fields,
        target_field="label", labels=benchmark.labels, metric_fns=benchmark.metric_fns,
        prefix=benchmark.prefix, postprocessor=benchmark.postprocessor)


FINETUNE_TASKS: Mapping[str, finetune.FinetuneTask] = {
    b.name: finetune.register(finetune_task(b)) for b in BENCHMARKS if b.encoder_fields}
