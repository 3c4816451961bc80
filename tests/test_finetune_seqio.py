"""data/finetune_seqio.py: a FinetuneTask as a seqio Task gives the trainer's token ids.

The reference is the fine-tuning path itself (``finetune.encdec_examples``, the rows
``launch.train`` feeds T5) and seqio's own get_dataset / postprocess_fn / metric_fns machinery:
the two pipelines share only the sentencepiece model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import seqio

from data import bundled, finetune, finetune_seqio
from data import vocab as vocab_lib

RECORDS = {
    "train": [
        {"sentence1": "The cat sat on the mat.", "sentence2": "A cat is sitting.",
         "label": "yes"},
        {"sentence1": "Prices rose  sharply\tin  May, économistes said.",
         "sentence2": "Nothing happened", "label": "no"},
        # Long enough to be trimmed at inputs length 24 (EOS kept last, as seqio does).
        {"sentence1": " ".join(["many words here"] * 12), "sentence2": "short",
         "label": "maybe so"},
    ],
    "validation": [
        {"sentence1": "One.", "sentence2": "Two.", "label": "no"},
        {"sentence1": "", "sentence2": "an empty first sentence", "label": "yes"},
    ],
}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    files = {}
    for split, records in RECORDS.items():
        files[split] = str(d / f"{split}.jsonl")
        with open(files[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return finetune.FinetuneTask(
        name="pretrax_test_pair", kind="classification", files=files,
        text_fields=("sentence1", "sentence2"), t5_fields=("sentence2", "sentence1"),
        target_field="label", labels=("yes", "no", "maybe so"), prefix="pair",
        metric_fns=(finetune.accuracy, finetune.f1_binary))


@pytest.mark.parametrize("split", ["train", "validation"])
@pytest.mark.parametrize("lengths", [(24, 4), (64, 8)])
def test_seqio_dataset_is_the_finetune_rows(task, split, lengths):
    seqio_task = finetune_seqio.register_seqio(task)
    assert seqio.get_mixture_or_task(task.name) is seqio_task
    inputs_length, targets_length = lengths
    ds = seqio.get_dataset(
        task.name, task_feature_lengths={"inputs": inputs_length, "targets": targets_length},
        dataset_split=split, shuffle=False, feature_converter=seqio.PassThroughFeatureConverter())
    got = list(ds.as_numpy_iterator())
    vocabulary = vocab_lib.get_vocabulary()
    want = finetune.encdec_examples(task, split, bundled.VOCAB_PATH, vocabulary.eos_id,
                                    inputs_length, targets_length, seed=0)
    assert len(got) == len(want.rows) == len(RECORDS[split])
    for g, w, record in zip(got, want.rows, RECORDS[split], strict=True):
        for key in ("inputs", "targets"):
            assert g[key].dtype == w[key].dtype == np.int32
            np.testing.assert_array_equal(g[key], w[key])
        assert g["inputs_pretokenized"].decode() == task.t5_input(record)
        assert g["targets_pretokenized"].decode() == record["label"]
    if inputs_length == 24 and split == "train":
        assert len(got[2]["inputs"]) == 24 and got[2]["inputs"][-1] == vocabulary.eos_id
    # The formatted string, written out by hand for the first record (t5_fields order).
    if split == "train":
        assert got[0]["inputs_pretokenized"] == (
            b"pair sentence2: A cat is sitting. sentence1: The cat sat on the mat.")


def test_seqio_task_scores_as_the_task(task):
    seqio_task = finetune_seqio.register_seqio(task)
    assert list(seqio_task.metric_fns) == list(task.metric_fns)
    assert seqio_task.source.splits == ("train", "validation")
    targets = ["yes", "no", "yes", "maybe so"]
    predictions = [" yes", "no ", "no", "maybe so"]
    # seqio's calling convention: postprocess_fn(text, example=..., is_target=...).
    t = [seqio_task.postprocess_fn(x, example={}, is_target=True) for x in targets]
    p = [seqio_task.postprocess_fn(x, example={}, is_target=False) for x in predictions]
    assert p == ["yes", "no", "no", "maybe so"]
    scores = {}
    for fn in seqio_task.metric_fns:
        scores.update(fn(t, p))
    assert scores == task.score(targets, predictions)
    # f1 of "yes": tp 1, 2 targets + 1 prediction of "yes".
    assert scores == {"accuracy": 75.0, "f1": 100.0 * (2 * 1 / (2 + 1))}


def test_a_reader_task_reads_through_seqio(task):
    reader_task = finetune.FinetuneTask(
        name="pretrax_test_reader", kind="regression", files={},
        reader=lambda split: [{"sentence1": f"{split} text", "score": "2.5"}],
        target_field="score", metric_fns=(finetune.pearson_spearman,))
    seqio_task = finetune_seqio.register_seqio(reader_task)
    assert seqio_task.source.splits == finetune.SPLITS
    ds = seqio_task.get_dataset({"inputs": 16, "targets": 4}, split="test", shuffle=False)
    (example,) = list(ds.as_numpy_iterator())
    assert example["inputs_pretokenized"] == b"pretrax_test_reader sentence1: test text"
    assert seqio_task.postprocess_fn("2.5", example=example, is_target=True) == 2.5
