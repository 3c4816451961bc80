"""Checks of the bundled downstream task files (data/downstream/, built by data/build_downstream).

The references are independent of the build code: hashlib for the manifest and the documented
split rule, GNU grep for "no sentence occurs in the pretraining corpus", and WordNet 3.0 lines
read by hand for a few examples.
"""

import collections
import gzip
import hashlib
import json
import os
import subprocess

import pytest

from data import bundled

DOWNSTREAM = os.path.join(os.path.dirname(bundled.CORPUS_DIR), "downstream")
SPLITS = ("train", "validation", "test")
# task -> number of text fields
TASKS = {"wn_lexname": 1, "wn_hypernym": 2, "wn_headword": 1}


def _manifest() -> dict:
    with open(os.path.join(DOWNSTREAM, "MANIFEST.json")) as f:
        return json.load(f)


def _text(task: str, split: str) -> bytes:
    with gzip.open(os.path.join(DOWNSTREAM, task, f"{split}.jsonl.gz"), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def examples() -> dict[str, dict[str, list[dict]]]:
    return {task: {split: [json.loads(line) for line in _text(task, split).splitlines()]
                   for split in SPLITS} for task in TASKS}


def test_files_match_manifest_and_schema(examples):
    manifest = _manifest()
    assert sorted(manifest["tasks"]) == sorted(TASKS)
    caps = {"train": 20_000, "validation": 2_000, "test": 2_000}
    for task, n_texts in TASKS.items():
        keys = {"id", "target", "sentence1"} | ({"sentence2"} if n_texts == 2 else set())
        for split in SPLITS:
            entry = manifest["tasks"][task]["files"][split]
            assert hashlib.sha256(_text(task, split)).hexdigest() == entry["text_sha256"]
            assert len(examples[task][split]) == entry["examples"]
            assert 1_000 <= entry["examples"] <= caps[split], (task, split)
            for example in examples[task][split]:
                assert set(example) == keys, (task, split, example)
                assert all(isinstance(v, str) and v and v == v.strip()
                           for v in example.values()), (task, split, example)


def test_splits_disjoint_and_hash_stable(examples):
    for task in TASKS:
        ids = {s: [e["id"] for e in examples[task][s]] for s in SPLITS}
        firsts = {s: {e["sentence1"] for e in examples[task][s]} for s in SPLITS}
        for i, a in enumerate(SPLITS):
            assert len(set(ids[a])) == len(ids[a]), (task, a)
            for b in SPLITS[i + 1:]:
                assert not set(ids[a]) & set(ids[b]), (task, a, b)
                assert not firsts[a] & firsts[b], (task, a, b)  # no gloss in two splits
        for split in SPLITS:
            for example in examples[task][split]:
                key = example["id"].split("-")[0]  # pairs: "X-Y", split by X
                u = int(hashlib.sha256(key.encode()).hexdigest(), 16) / 2**256
                expected = "test" if u < 0.1 else "validation" if u < 0.2 else "train"
                assert split == expected, (task, example["id"], u)


def test_labels_within_label_lists(examples):
    manifest = _manifest()
    lexname = manifest["tasks"]["wn_lexname"]["labels"]
    assert lexname == sorted(lexname) and 40 <= len(lexname) <= 45
    assert {"noun.animal", "noun.person", "verb.motion", "adj.all", "adv.all"} <= set(lexname)
    assert manifest["tasks"]["wn_hypernym"]["labels"] == ["no", "yes"]
    assert "labels" not in manifest["tasks"]["wn_headword"]
    for task in ("wn_lexname", "wn_hypernym"):
        labels = set(manifest["tasks"][task]["labels"])
        for split in SPLITS:
            counts = collections.Counter(e["target"] for e in examples[task][split])
            assert set(counts) <= labels, (task, split, set(counts) - labels)
            assert counts == manifest["tasks"][task]["label_counts"][split]
    for split in SPLITS:
        pairs = examples["wn_hypernym"][split]
        by_x = collections.defaultdict(list)
        for e in pairs:
            by_x[e["id"].split("-")[0]].append(e["target"])
        # every X: one positive, one negative, both with X's gloss as sentence1
        assert all(sorted(t) == ["no", "yes"] for t in by_x.values()), split
    for split in SPLITS:
        for e in examples["wn_headword"][split]:
            assert "_" not in e["target"], e


def test_no_sentence_occurs_in_the_pretraining_corpus(examples, tmp_path):
    sentences = {e[k] for splits in examples.values() for es in splits.values() for e in es
                 for k in ("sentence1", "sentence2") if k in e}
    assert len(sentences) > 20_000
    corpus = tmp_path / "corpus.txt"
    with open(corpus, "wb") as out:
        for path in bundled.TRAIN_FILES + bundled.VALIDATION_FILES:
            with gzip.open(path, "rb") as f:
                out.write(f.read())
    # A positive control proves grep sees the corpus: a stretch of its validation text.
    with gzip.open(bundled.VALIDATION_FILES[0], "rt", encoding="utf-8") as f:
        control = f.readline()[100:160]
    patterns = tmp_path / "patterns.txt"
    patterns.write_text("".join(s + "\n" for s in sorted(sentences | {control})),
                        encoding="utf-8")
    run = subprocess.run(["grep", "-F", "-o", "-f", str(patterns), str(corpus)],
                         capture_output=True, env={**os.environ, "LC_ALL": "C"}, check=True)
    found = set(run.stdout.decode("utf-8").splitlines())
    assert found == {control}, sorted(found - {control})[:10]


# WordNet 3.0 data.noun lines (wordnet-base 1:3.0-37), read by hand; lexnames(5WN) says file 13
# is noun.food and 23 noun.quantity:
#   07926442 13 n 01 orangeade 0 001 @ 07925966 n 0000 | sweetened beverage of diluted orange juice
#   07925966 13 n 02 fruit_drink 0 ade 0 004 @ 07881800 n 0000 ~ 07926250 n 0000 ~ ...
#            | a sweetened beverage of diluted fruit juice
#   13681749 23 n 02 haler 1 heller 1 002 @ 13681530 n 0000 #p 13681275 n 0000
#            | 100 halers equal 1 koruna Slovakia
def test_examples_read_by_hand_from_wordnet(examples):
    orangeade = "sweetened beverage of diluted orange juice"
    assert _find(examples, "wn_lexname", "n07926442") == (
        "test", {"id": "n07926442", "sentence1": orangeade, "target": "noun.food"})
    assert _find(examples, "wn_headword", "n07926442") == (
        "test", {"id": "n07926442", "sentence1": orangeade, "target": "orangeade"})
    assert _find(examples, "wn_hypernym", "n07926442-n07925966") == (
        "test", {"id": "n07926442-n07925966", "sentence1": orangeade,
                 "sentence2": "a sweetened beverage of diluted fruit juice", "target": "yes"})
    haler = "100 halers equal 1 koruna Slovakia"
    assert _find(examples, "wn_lexname", "n13681749")[1]["target"] == "noun.quantity"
    assert _find(examples, "wn_headword", "n13681749")[1] == {
        "id": "n13681749", "sentence1": haler, "target": "haler"}


def test_left_out_synsets_are_absent(examples):
    # dog (has a usage example, so it is in the corpus); pyrotechnics ('the craft of making
    # fireworks' occurs in the corpus text); Sombrero (its gloss is shared with another island);
    # all three hash into the test split, below its cap.
    absent = {"n02084071": "a member of the genus Canis",
              "n00617692": "the craft of making fireworks",
              "n08988333": "one of the islands of Saint Christopher-Nevis"}
    for task, splits in examples.items():
        for es in splits.values():
            for e in es:
                assert e["id"].split("-")[0] not in absent, (task, e)
                assert not any(e["sentence1"].startswith(g) for g in absent.values()), (task, e)


def _find(examples, task: str, example_id: str) -> tuple[str, dict]:
    for split in SPLITS:
        for e in examples[task][split]:
            if e["id"] == example_id:
                return split, e
    raise AssertionError(f"{example_id} not in {task}")
