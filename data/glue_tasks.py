"""T5's GLUE and SuperGLUE seqio tasks, registered on import (``import data.glue_tasks``).

The names, TFDS datasets, splits, metrics and postprocessors are those of ``t5/data/tasks.py``
(the table is :data:`data.glue.BENCHMARKS`); the text-to-text conversions below are ours and
give T5's strings bitwise (tests/test_glue.py runs both on the same examples). Each task:
TFDS source -> conversion -> tokenize -> cache placeholder -> EOS after trim, with pretrax's
vocabulary (``register(vocab_path)`` registers them again with another). Registered:

- GLUE: ``glue_{cola,sst2,mrpc,qqp,stsb,mnli,mnli_mismatched,mnli_matched,qnli,rte,wnli,ax}_v002``
  (``ax`` and the MNLI evaluation sets are cast as MNLI);
- SuperGLUE: ``super_glue_{boolq,cb,copa,multirc,record,rte,wic,axb,axg}_v102``, WSC as naming
  the referent (``super_glue_wsc_v102_simple_train`` / ``_eval``), ``dpr_v001_simple``, and each
  of those with one sentinel (``..._1_sentinel``, seqio.experimental.add_task_with_sentinels);
- mixtures ``glue_v002_proportional``, ``super_glue_v102_proportional`` (and ``_sentinel``),
  ``glue_mnli_and_dev_v002``, rated by training examples as T5 rates them.

Not registered: ``glue_wnli_v002_simple_eval`` (T5 turns WNLI into WSC-style referents with a
Python heuristic of pronoun matching; an evaluation-only task, left out).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from data import bundled, glue, tasks
from data import vocab as vocab_lib

AUTOTUNE = tf.data.AUTOTUNE


# ---------------------------------------------------------------------------------------------
# The conversions: TFDS example -> {"inputs": text, "targets": text, what evaluation needs}.
# ---------------------------------------------------------------------------------------------
def _label_name(label: tf.Tensor, labels: Sequence[str]) -> tf.Tensor:
    """The label's name; "<unk>" for -1 (unlabelled test examples)."""
    return tf.gather(tf.constant(("<unk>", *labels)), tf.cast(label, tf.int64) + 1)


def _fields_text(x: Mapping[str, tf.Tensor], prefix: str, fields: Sequence[str]) -> tf.Tensor:
    """``"<prefix> field1: text1 field2: text2 ..."``."""
    pieces = [prefix]
    for field in fields:
        pieces += [f"{field}:", x[field]]
    return tf.strings.join(pieces, separator=" ")


def text_example(x: Mapping[str, tf.Tensor], *, prefix: str, fields: Sequence[str],
                 labels: Sequence[str]) -> dict[str, tf.Tensor]:
    """T5's generic GLUE format; ``idx`` kept."""
    return {"inputs": _fields_text(x, prefix, fields),
            "targets": _label_name(x["label"], labels), "idx": x["idx"]}


def multirc_example(x: Mapping[str, tf.Tensor], *, prefix: str, fields: Sequence[str],
                    labels: Sequence[str]) -> dict[str, tf.Tensor]:
    """The generic format without MultiRC's HTML (<br> -> space, <b> dropped); the paragraph,
    question and answer ids kept flat (``idx/question`` groups answers for the metrics)."""
    inputs = tf.strings.regex_replace(_fields_text(x, prefix, fields), "<br>", " ")
    out = {"inputs": tf.strings.regex_replace(inputs, "</?b>", ""),
           "targets": _label_name(x["label"], labels)}
    out.update({f"idx/{key}": x["idx"][key] for key in ("paragraph", "question", "answer")})
    return out


def stsb_example(x: Mapping[str, tf.Tensor], *, prefix: str, fields: Sequence[str],
                 labels: Sequence[str]) -> dict[str, tf.Tensor]:
    """STS-B as text: the score rounded to the nearest 0.2 (ties to even), one decimal."""
    del labels
    nearest_fifth = tf.round(x["label"] * 5) / 5
    return {"inputs": _fields_text(x, prefix, fields),
            "targets": tf.strings.as_string(nearest_fifth, precision=1), "idx": x["idx"]}


def map_examples(dataset: tf.data.Dataset, *, convert, **kw) -> tf.data.Dataset:
    return dataset.map(functools.partial(convert, **kw), num_parallel_calls=AUTOTUNE)


def record_examples(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """ReCoRD: one example per correct answer ("<unk>" if none), each with every answer;
    the passage's "@highlight" lines joined into sentences."""
    def expand(x: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
        passage = tf.strings.regex_replace(x["passage"], "([.?!\"'])\n@highlight\n", r"\1 ")
        passage = tf.strings.regex_replace(passage, "\n@highlight\n", ". ")
        inputs = tf.strings.join(
            ["record query:", x["query"], "entities:",
             tf.strings.reduce_join(x["entities"], separator=", "), "passage:", passage],
            separator=" ")
        answers = x["answers"]
        targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant(["<unk>"]))
        copies = tf.size(targets)
        return tf.data.Dataset.from_tensor_slices({
            "inputs": tf.fill([copies], inputs), "targets": targets,
            "answers": tf.tile(answers[tf.newaxis], [copies, 1]),
            "idx/passage": tf.fill([copies], x["idx"]["passage"]),
            "idx/query": tf.fill([copies], x["idx"]["query"])})

    return dataset.flat_map(expand)


# Two WSC texts whose span2_index misses the pronoun, corrected by hand as T5 corrects them
# (the first also splits the pronoun from its punctuation): text -> text with the pronoun "X".
WSC_CORRECTIONS = {
    'The boy continued to whip the pony , and eventually the pony threw him over. John '
    'laughed out quite loud. "Good for him," he said. ':
    'The boy continued to whip the pony , and eventually the pony threw him over. John '
    'laughed out quite loud. "Good for X ," he said.',
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the '
    'magic pebble in an iron safe . Some day they might want to use it , but really for now, '
    'what more could they wish for?':
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the '
    'magic pebble in an iron safe . Some day they might want to use X , but really for now, '
    'what more could they wish for?',
}


def _pronoun_as_x(x: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The text with the word at span2_index (checked to be span2_text) replaced by "X"."""
    words = tf.strings.split(x["text"], sep=" ")
    i = x["span2_index"]
    checks = [tf.debugging.assert_greater(i, 0, message="WSC: pronoun is the first word"),
              tf.debugging.assert_less(i, tf.size(words), message="WSC: span2_index too big")]
    with tf.control_dependencies(checks):
        i = tf.identity(i)
    with tf.control_dependencies([tf.debugging.assert_equal(
            words[i], x["span2_text"], message="WSC: span2_index is not span2_text")]):
        return tf.strings.reduce_join(tf.concat([words[:i], ["X"], words[i + 1:]], 0),
                                      separator=" ")


def wsc_example(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """``"wsc: ... *pronoun* ..."`` -> the candidate referent (span1), with the 0/1 label.
    As T5 does, every standalone " X " of the text with the pronoun as X gets the marks."""
    def pronoun_as_x(corrections: list[tuple[str, str]]) -> tf.Tensor:
        if not corrections:
            return _pronoun_as_x(x)
        (original, corrected), rest = corrections[0], corrections[1:]
        return tf.cond(tf.equal(x["text"], original), lambda: tf.constant(corrected),
                       lambda: pronoun_as_x(rest))

    text = pronoun_as_x(list(WSC_CORRECTIONS.items()))
    marked = tf.strings.regex_replace(text, " X ", " *" + x["span2_text"] + "* ")
    return {"inputs": tf.strings.join(["wsc:", marked], separator=" "),
            "targets": tf.reshape(x["span1_text"], []),
            "label": x["label"] if "label" in x else tf.constant(0), "idx": x["idx"]}


def wsc_examples(dataset: tf.data.Dataset, *, correct_referent_only: bool) -> tf.data.Dataset:
    """WSC as naming the referent; for training, only the examples whose span1 is the one."""
    if correct_referent_only:
        dataset = dataset.filter(lambda x: tf.cast(x["label"] if "label" in x else False,
                                                   tf.bool))
    return dataset.map(wsc_example, num_parallel_calls=AUTOTUNE)


def dpr_example(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Definite pronoun resolution as WSC: the first pronoun (followed by a space, "." or ",")
    marked with asterisks -> the correct candidate."""
    pattern = tf.strings.join([" (", x["pronoun"], ")([ .,])"])
    marked = tf.strings.regex_replace(x["sentence"], pattern, r" *\1*\2", replace_global=False)
    return {"inputs": tf.strings.join(["wsc:", marked], separator=" "),
            "targets": x["candidates"][x["label"]]}


def rekey(dataset: tf.data.Dataset, *, key_map: Sequence[tuple[str, str]]) -> tf.data.Dataset:
    """Renamed features (new name, old name); the others kept."""
    renamed = {old for _, old in key_map}

    def convert(x):
        out = {k: v for k, v in x.items() if k not in renamed}
        out.update({new: x[old] for new, old in key_map})
        return out

    return dataset.map(convert, num_parallel_calls=AUTOTUNE)


def conversion(b: glue.Benchmark) -> list:
    """The preprocessors that turn the benchmark's TFDS examples into text pairs."""
    kw = dict(prefix=b.prefix, fields=b.fields, labels=b.labels)
    steps = [functools.partial(rekey, key_map=b.rekey)] if b.rekey else []
    if b.style in ("text", "multirc", "stsb"):
        convert = {"text": text_example, "multirc": multirc_example,
                   "stsb": stsb_example}[b.style]
        return steps + [functools.partial(map_examples, convert=convert, **kw)]
    if b.style == "record":
        return steps + [record_examples]
    if b.style in ("wsc_train", "wsc_eval"):
        return steps + [functools.partial(wsc_examples,
                                          correct_referent_only=b.style == "wsc_train")]
    if b.style == "dpr":
        return steps + [functools.partial(map_examples, convert=dpr_example)]
    raise ValueError(f"benchmark {b.name!r}: unknown style {b.style!r}")


# ---------------------------------------------------------------------------------------------
# Registration.
# ---------------------------------------------------------------------------------------------
def _replace(registry, name: str) -> None:
    if name in registry.names():
        registry.remove(name)


def register(vocab_path: str = bundled.VOCAB_PATH, extra_ids: int = bundled.EXTRA_IDS
             ) -> list[str]:
    """(Re)registers every task and mixture with this vocabulary; returns the task names."""
    features = tasks.t5_output_features(vocab_lib.get_vocabulary(vocab_path, extra_ids))
    names = []
    for b in glue.BENCHMARKS:
        _replace(seqio.TaskRegistry, b.name)
        seqio.TaskRegistry.add(
            b.name,
            source=seqio.TfdsDataSource(tfds_name=b.tfds_name,
                                        splits=list(b.splits) if b.splits else None),
            preprocessors=conversion(b) + [seqio.preprocessors.tokenize,
                                           seqio.CacheDatasetPlaceholder(),
                                           seqio.preprocessors.append_eos_after_trim],
            output_features=features, metric_fns=list(b.metric_fns),
            postprocess_fn=b.postprocessor)
        names.append(b.name)
        if b.sentinel:
            sentinel_name = sentinel_task_name(b.name)
            _replace(seqio.TaskRegistry, sentinel_name)
            seqio.experimental.add_task_with_sentinels(b.name, num_sentinels=1)
            names.append(sentinel_name)
    mixtures = {
        "glue_v002_proportional": glue.GLUE_RATES,
        "super_glue_v102_proportional": glue.SUPER_GLUE_RATES,
        "super_glue_v102_proportional_sentinel": {
            sentinel_task_name(n): r for n, r in glue.SUPER_GLUE_RATES.items()},
        "glue_mnli_and_dev_v002": dict.fromkeys(
            ("glue_mnli_v002", "glue_mnli_mismatched_v002", "glue_mnli_matched_v002"), 1.0),
    }
    for name, rates in mixtures.items():
        _replace(seqio.MixtureRegistry, name)
        seqio.MixtureRegistry.add(name, list(rates.items()))
    return names


def sentinel_task_name(name: str) -> str:
    """seqio's name for the task with one sentinel: ``_1_sentinel`` before a split suffix."""
    for suffix in ("_train", "_eval"):
        if name.endswith(suffix):
            return f"{name[:-len(suffix)]}_1_sentinel{suffix}"
    return f"{name}_1_sentinel"


TASKS = register()
