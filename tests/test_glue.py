"""data/glue.py and data/glue_tasks.py against T5's own GLUE / SuperGLUE task definitions.

The reference is ``t5.data.tasks`` and ``t5.data.mixtures`` (PyPI ``t5==0.9.4``) as T5
registers them: imported into an emptied seqio registry, their Task objects kept, and the
registry put back, so the comparison does not depend on what other tests registered. TFDS data
cannot be downloaded here, so both sides run on the same in-memory examples: TFDS's mock data
(random examples with each dataset's exact features and dtypes) and hand-written ones for what
random text cannot reach (unlabelled examples, HTML, "@highlight", WSC's pronoun marking).
Conversions must agree bitwise; metric values exactly (correlations to 1e-12 relative: ours are
NumPy, T5's scipy's).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from data import bundled, finetune, glue, glue_tasks
from data.vocab import load_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SKIPPED = {"glue_wnli_v002_simple_eval"}  # see data/glue_tasks.py


@pytest.fixture(scope="module")
def t5():
    """T5's GLUE/SuperGLUE/WSC/DPR tasks and their mixtures, registered apart from ours."""
    saved = seqio.TaskRegistry._REGISTRY, seqio.MixtureRegistry._REGISTRY
    seqio.TaskRegistry._REGISTRY, seqio.MixtureRegistry._REGISTRY = {}, {}
    try:
        for name in ("t5.data.tasks", "t5.data.mixtures"):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
            else:
                importlib.import_module(name)
        tasks = {n: seqio.TaskRegistry.get(n) for n in seqio.TaskRegistry.names()
                 if any(k in n for k in ("glue", "wsc", "dpr")) and n not in SKIPPED}
        mixtures = {n: seqio.MixtureRegistry.get(n) for n in (
            "glue_v002_proportional", "super_glue_v102_proportional",
            "super_glue_v102_proportional_sentinel", "glue_mnli_and_dev_v002")}
    finally:
        seqio.TaskRegistry._REGISTRY, seqio.MixtureRegistry._REGISTRY = saved
    glue_tasks.register()  # ours again, whatever the import did
    return {"tasks": tasks, "mixtures": mixtures}


def ours(name: str) -> seqio.Task:
    return seqio.TaskRegistry.get(name)


def conversion(task: seqio.Task) -> list:
    """The preprocessors before tokenization: the text-to-text conversion."""
    steps = list(task.preprocessors)
    return steps[:steps.index(seqio.preprocessors.tokenize)]


def run(task: seqio.Task, dataset: tf.data.Dataset) -> list[dict]:
    for step in conversion(task):
        dataset = step(dataset)
    return list(dataset.as_numpy_iterator())


def assert_same_examples(name: str, dataset: tf.data.Dataset, t5_task: seqio.Task) -> int:
    want, got = run(t5_task, dataset), run(ours(name), dataset)
    assert len(got) == len(want) and want, name
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w), name
        for key in w:
            assert np.asarray(g[key]).dtype == np.asarray(w[key]).dtype, (name, key)
            np.testing.assert_array_equal(g[key], w[key], err_msg=f"{name} {key}")
    return len(got)


# ---------------------------------------------------------------------------------------------
# Registrations.
# ---------------------------------------------------------------------------------------------
def test_the_same_tasks_sources_and_pipelines(t5):
    assert set(t5["tasks"]) <= set(glue_tasks.TASKS)
    assert set(glue_tasks.TASKS) <= set(t5["tasks"])
    for name, theirs in t5["tasks"].items():
        mine = ours(name)
        assert mine.source.tfds_dataset.name == theirs.source.tfds_dataset.name, name
        assert mine.source._splits == theirs.source._splits, name
        assert len(mine.metric_fns) == len(theirs.metric_fns), name
        assert (mine.postprocessor is None) == (theirs.postprocessor is None), name
        after = [type(p) if isinstance(p, seqio.CacheDatasetPlaceholder) else
                 getattr(p, "func", p).__name__ for p in mine.preprocessors]
        want = [type(p) if isinstance(p, seqio.CacheDatasetPlaceholder) else
                getattr(p, "func", p).__name__ for p in theirs.preprocessors]
        assert after[-4 if "sentinel" in name else -3:] == want[-4 if "sentinel" in name
                                                                else -3:], name
        for key, feature in theirs.output_features.items():
            assert mine.output_features[key].add_eos == feature.add_eos
            assert mine.output_features[key].required == feature.required


def test_the_same_mixtures(t5):
    for name, theirs in t5["mixtures"].items():
        mine = seqio.MixtureRegistry.get(name)
        assert {t.name: mine.get_rate(t) for t in mine.tasks} == {
            t.name: theirs.get_rate(t) for t in theirs.tasks}, name


def test_fields_and_labels_are_tfds_features():
    configs = {**{f"glue/{c.name}": c for c in tfds.text.glue.Glue.builder_configs.values()},
               **{f"super_glue/{c.name}": c
                  for c in tfds.text.super_glue.SuperGlue.builder_configs.values()}}
    for b in glue.BENCHMARKS:
        config = configs.get(b.tfds_name.split(":")[0])
        if config is None or b.style not in ("text", "stsb", "multirc"):
            continue
        names = set(getattr(config, "text_features", None) or config.features)
        if b.rekey:
            names = {dict((old, new) for new, old in b.rekey).get(n, n) for n in names}
        assert set(b.fields) <= names and set(b.encoder_fields) <= names, b.name
        assert tuple(b.labels) == tuple(config.label_classes or ()), b.name


# ---------------------------------------------------------------------------------------------
# Conversions on TFDS's mock data (every dataset's real features and dtypes).
# ---------------------------------------------------------------------------------------------
def _mock_split(b: glue.Benchmark) -> str:
    if b.splits:
        return b.splits[0]
    return "validation_matched" if b.tfds_name.startswith("glue/mnli:") else "validation"


@pytest.mark.parametrize("name", [b.name for b in glue.BENCHMARKS if "wsc" not in b.name])
def test_conversion_matches_t5_on_mock_tfds_examples(t5, name):
    b = glue.BY_NAME[name]
    with tfds.testing.mock_data(num_examples=5):
        dataset = tfds.load(b.tfds_name, split=_mock_split(b), download=False)
        assert assert_same_examples(name, dataset, t5["tasks"][name]) >= 5
        if b.sentinel:
            assert_same_examples(glue_tasks.sentinel_task_name(name), dataset,
                                 t5["tasks"][glue_tasks.sentinel_task_name(name)])


# ---------------------------------------------------------------------------------------------
# Conversions on hand-written examples.
# ---------------------------------------------------------------------------------------------
def in_memory(examples: list[dict]) -> tf.data.Dataset:
    dataset = None
    for example in examples:
        one = tf.data.Dataset.from_tensors(example)
        dataset = one if dataset is None else dataset.concatenate(one)
    return dataset


L = np.int64  # TFDS ClassLabel
N = np.int32  # TFDS idx and indices

HAND_WRITTEN = {
    "glue_mrpc_v002": [
        {"sentence1": "He said: \"fine\" ", "sentence2": "Ça   va.", "label": L(1), "idx": N(0)},
        {"sentence1": "", "sentence2": "unlabelled (a test example)", "label": L(-1),
         "idx": N(1)}],
    "glue_stsb_v002": [
        {"sentence1": "a", "sentence2": "b", "label": np.float32(v), "idx": N(i)}
        for i, v in enumerate([0.0, 0.1, 0.3, 0.5, 2.5, 2.3, 3.8, 4.9, 5.0, 1.7, -1.0])],
    "glue_ax_v002": [{"premise": "P.", "hypothesis": "H?", "label": L(-1), "idx": N(3)}],
    "super_glue_multirc_v102": [
        {"paragraph": "<b>Sent 1: </b>Tom ran.<br><b>Sent 2: </b>He won.<br>",
         "question": "Who <b>won</b>?", "answer": "Tom", "label": L(1),
         "idx": {"paragraph": N(0), "question": N(4), "answer": N(2)}}],
    "super_glue_record_v102": [
        {"passage": "Cats purr.\n@highlight\nDogs bark\n@highlight\nBirds \"sing\"\n@highlight\n"
                    "The end", "query": "@placeholder purr.", "entities": ["Cats", "Dogs"],
         "answers": ["Cats", "cats"], "idx": {"passage": N(7), "query": N(9)}},
        {"passage": "Test passage?\n@highlight\nNo answers", "query": "Who is @placeholder?",
         "entities": ["A", "B", "C"], "answers": tf.constant([], tf.string),
         "idx": {"passage": N(8), "query": N(1)}}],
    "super_glue_axb_v102": [{"sentence1": "S one.", "sentence2": "S two.", "label": L(1),
                             "idx": N(5)}],
    "dpr_v001_simple": [
        {"sentence": "Bob asked Tom if he can lend some money, he said.", "pronoun": "he",
         "candidates": ["Bob", "Tom"], "label": L(1)},
        {"sentence": "The bird saw the cat and it flew.", "pronoun": "it",
         "candidates": ["The bird", "the cat"], "label": L(0)}],
}

WSC = [
    {"text": "Mitchell asked Tom if he could lend some money .", "span1_text": "Tom",
     "span1_index": N(2), "span2_text": "he", "span2_index": N(4), "label": L(0), "idx": N(0)},
    {"text": "Mitchell asked Tom if he could lend some money .", "span1_text": "Mitchell",
     "span1_index": N(0), "span2_text": "he", "span2_index": N(4), "label": L(1), "idx": N(1)},
    # A standalone X elsewhere gets the marks too (as in T5).
    {"text": "Mr. X told Bob that he was late .", "span1_text": "Bob", "span1_index": N(3),
     "span2_text": "he", "span2_index": N(5), "label": L(1), "idx": N(2)},
    # The two texts T5 corrects by hand (their indices are in range but wrong).
    {"text": next(iter(glue_tasks.WSC_CORRECTIONS)), "span1_text": "The boy",
     "span1_index": N(0), "span2_text": "him", "span2_index": N(20), "label": L(1),
     "idx": N(3)},
    {"text": list(glue_tasks.WSC_CORRECTIONS)[1], "span1_text": "the magic pebble",
     "span1_index": N(20), "span2_text": "it", "span2_index": N(30), "label": L(-1),
     "idx": N(4)},
]


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_conversion_matches_t5_on_hand_written_examples(t5, name):
    assert assert_same_examples(name, in_memory(HAND_WRITTEN[name]), t5["tasks"][name]) >= len(
        HAND_WRITTEN[name])


def test_wsc_matches_t5(t5):
    train = assert_same_examples("super_glue_wsc_v102_simple_train", in_memory(WSC),
                                 t5["tasks"]["super_glue_wsc_v102_simple_train"])
    assert train == 4  # label 0 dropped (and -1 kept, as T5's cast to bool keeps it)
    assert assert_same_examples("super_glue_wsc_v102_simple_eval", in_memory(WSC),
                                t5["tasks"]["super_glue_wsc_v102_simple_eval"]) == 5
    first = run(ours("super_glue_wsc_v102_simple_eval"), in_memory(WSC))
    assert first[0]["inputs"] == b"wsc: Mitchell asked Tom if *he* could lend some money ."
    assert first[2]["inputs"] == b"wsc: Mr. *he* told Bob that *he* was late ."


# ---------------------------------------------------------------------------------------------
# Postprocessors and metrics: T5's task vs ours, from strings to scores.
# ---------------------------------------------------------------------------------------------
def score(task: seqio.Task, targets: list[str], predictions: list[str], examples: list[dict]
          ) -> dict[str, float]:
    t = [task.postprocess_fn(x, example=e, is_target=True) for x, e in zip(targets, examples,
                                                                           strict=True)]
    p = [task.postprocess_fn(x, example=e, is_target=False)
         for x, e in zip(predictions, examples, strict=True)]
    out = {}
    for fn in task.metric_fns:
        out.update(fn(t, p))
    return out


def assert_same_scores(name: str, got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want), name
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key]), (name, key)
        elif "corrcoef" in key and key != "matthews_corrcoef":
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
        else:
            assert got[key] == value, (name, key, got[key], value)


def cases(name: str, rng: np.random.Generator, n: int):
    """(targets, predictions, examples) strings as a model and a dataset would give them."""
    b = glue.BY_NAME[name]
    if b.style == "stsb":
        values = np.round(rng.uniform(0, 5, n) * 5) / 5
        targets = [f"{v:.1f}" for v in values]
        predictions = [rng.choice([f"{v:.1f}", f"{rng.uniform(0, 5):.1f}", "nonsense", " 2"])
                       for v in values]
        return targets, predictions, [{}] * n
    if b.style == "record":
        groups = rng.integers(0, max(1, n // 2), n)
        names = ["The Cat", "a dog", "Dog!", "the  cat's", "Bird"]
        examples = [{"answers": [x.encode() for x in rng.choice(names, rng.integers(1, 3))],
                     "idx/passage": int(g), "idx/query": 0} for g in groups]
        return ["ignored"] * n, list(rng.choice(names, n)), examples
    if b.style in ("wsc_eval", "dpr"):
        referents = ["the cat", "Bob", "fuzzy bunny", "Bob's hat", "his dog"]
        examples = [{"label": int(rng.integers(0, 2)),
                     "targets_pretokenized": rng.choice(referents).encode()} for _ in range(n)]
        predictions = list(rng.choice(referents + ["bunny", "", "the", "BOB", "a  cat"], n))
        return [e["targets_pretokenized"].decode() for e in examples], predictions, examples
    labels = list(b.labels)
    targets = list(rng.choice(labels, n))
    predictions = list(rng.choice(labels + ["unknown", labels[0] + " "], n))
    examples = [{"idx/question": int(q)} for q in rng.integers(0, max(1, n // 3), n)]
    return targets, predictions, examples


@pytest.mark.parametrize("name", [b.name for b in glue.BENCHMARKS if b.metric_fns])
def test_scores_match_t5(t5, name):
    rng = np.random.default_rng(sum(map(ord, name)))
    for n in (2, 3, 9, 64, 200):
        targets, predictions, examples = cases(name, rng, n)
        theirs = t5["tasks"][name]
        assert_same_scores(name, score(ours(name), targets, predictions, examples),
                           score(theirs, targets, predictions, examples))
        # All predictions right, and all the same (degenerate correlations and F1s).
        assert_same_scores(name, score(ours(name), targets, targets, examples),
                           score(theirs, targets, targets, examples))
        assert_same_scores(name, score(ours(name), targets, [predictions[0]] * n, examples),
                           score(theirs, targets, [predictions[0]] * n, examples))


# ---------------------------------------------------------------------------------------------
# GLUE as FinetuneTasks (ELECTRA's classify, T5's text_to_text through pretrax's trainer).
# ---------------------------------------------------------------------------------------------
def test_importing_the_tasks_does_not_import_tensorflow():
    code = ("import sys; from data import finetune; "
            "task = finetune.get('glue_mnli_v002'); "
            "assert task.text_fields == ('premise', 'hypothesis'), task; "
            "assert not [m for m in ('tensorflow', 'tensorflow_datasets', 'seqio') "
            "if m in sys.modules], sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("name", sorted(glue.FINETUNE_TASKS))
def test_finetune_task_records_are_t5s_examples(t5, name):
    """The reader's records (TFDS mock data) give T5's own inputs and targets."""
    task = finetune.get(name)
    assert task is glue.FINETUNE_TASKS[name]
    b = glue.BY_NAME[name]
    with tfds.testing.mock_data(num_examples=6):
        split = dict(b.finetune_splits)["validation"]
        raw = list(tfds.as_numpy(tfds.load(b.tfds_name, split=split, download=False)))
        want = run(t5["tasks"][name], tfds.load(b.tfds_name, split=split, download=False))
        records = task.rows("validation")
    assert len(records) == len(want) == 6
    for record, w, example in zip(records, want, raw, strict=True):
        assert task.t5_input(record).encode() == w["inputs"]
        if task.kind == "classification":
            assert record["label"].encode() == w["targets"]
        else:  # the raw score, exactly (T5's target is it rounded to 0.2)
            assert np.float32(record["label"]) == example["label"]
    assert task.metric == next(iter(score_keys(t5["tasks"][name])))


def score_keys(task: seqio.Task) -> list[str]:
    keys = []
    for fn in task.metric_fns:
        keys += list(fn([0, 1, 1], [0, 1, 0]))
    return keys


def test_missing_tfds_data_and_hidden_test_labels_are_named(tmp_path, monkeypatch):
    task = finetune.get("glue_mrpc_v002")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"glue_mrpc_v002.*TFDS 'glue/mrpc:1.0.0' "
                       r"split 'train'.*tfds build glue/mrpc:1.0.0 --data_dir=DIR"):
        task.rows("train")
    with pytest.raises(ValueError, match=r"no split 'test' \(GLUE's test labels are not public"):
        task.rows("test")
    with pytest.raises(ValueError, match="glue_mnli_mismatched_v002' has no split 'train'"):
        finetune.get("glue_mnli_mismatched_v002").rows("train")
    with pytest.raises(ValueError, match="not a registered fine-tuning task"):
        finetune.get("glue_no_such_task_v002")


def test_electra_fine_tunes_on_glue_mrpc(tmp_path):
    """The trainer on glue_mrpc_v002 (TFDS mock data) with no task_module: [CLS] A [SEP] B
    [SEP] rows, and the run's F1 / accuracy are sklearn's on its own predictions."""
    import sklearn.metrics

    from configs import finetune as finetune_configs
    from launch import trainer
    from objectives import registry

    config = finetune_configs.get_config("electra_tiny")
    config.data.task, config.data.task_module = "glue_mrpc_v002", ""
    config.train.tensorboard = config.train.console = False
    config.train.peak_flops, config.train.compilation_cache_dir = 1e9, ""
    config.train.steps = 4
    config.mesh.fsdp = 1
    with tfds.testing.mock_data(num_examples=16):
        objective = registry.build(config)
        assert objective.task is glue.FINETUNE_TASKS["glue_mrpc_v002"]
        examples = objective.task_examples("validation", bundled.VOCAB_PATH, 0)
        record, row = examples.records[0], examples.rows[0]
        sp = load_sentencepiece(bundled.VOCAB_PATH)
        ids = objective.special_ids
        a, b = sp.encode(record["sentence1"]), sp.encode(record["sentence2"])
        np.testing.assert_array_equal(row["inputs"],
                                      [ids["cls"], *a, ids["sep"], *b, ids["sep"]][:len(
                                          row["inputs"])])
        summary = trainer.train(config, str(tmp_path))
    last = summary["eval"][-1]
    with open(os.path.join(tmp_path, "predictions",
                           f"validation-{summary['step']}.jsonl")) as f:
        predictions = [json.loads(line) for line in f]
    labels = glue.BY_NAME["glue_mrpc_v002"].labels
    t = [labels.index(p["label"]) for p in predictions]  # the record, + "prediction"
    p = [labels.index(p["prediction"]) for p in predictions]
    assert len(t) == 16
    assert last["eval/accuracy"] == pytest.approx(100 * sklearn.metrics.accuracy_score(t, p))
    assert last["eval/f1"] == pytest.approx(100 * sklearn.metrics.f1_score(t, p))
