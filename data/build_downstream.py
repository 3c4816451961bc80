r"""Builds the bundled downstream tasks (data/downstream/) from WordNet glosses not in the corpus.

    python -m data.build_downstream                     # apt-get download wordnet-base, build
    python -m data.build_downstream --debs_dir=/tmp/debs  # use a .deb already there

Needs apt-get (or the .deb), dpkg and GNU grep; reuses data.build_corpus's pinned package and
WordNet parser. The pretraining corpus (data/corpus/) holds every WordNet synset WITH a usage
example, so these tasks use only synsets that are *eligible*:

  - the gloss quotes no usage example (no '"'), and is not empty;
  - no other example-less synset has the same gloss (an identical gloss with two labels or two
    headwords would be noise, and could sit in two splits);
  - the gloss occurs nowhere in the bundled corpus text, not even as a substring (GNU grep -F;
    574 glosses such as "hit hard" or "the craft of making fireworks" do and are dropped).

Tasks (JSONL, one schema: {"id", "sentence1", ["sentence2",] "target"}):
  - wn_lexname: gloss -> lexicographer file name ("noun.animal"; lexnames(5WN)), 1 sentence.
  - wn_hypernym: (gloss of X, gloss of Y) -> "yes" iff Y is a direct hypernym of X ("@" or
    instance "@i" pointer). Every X gives one positive (an eligible direct hypernym) and one
    negative, so labels are exactly balanced and sentence1 alone says nothing. The negative Y is
    the positive hypernym of another random X' of the same part of speech, so "yes" and "no"
    sentence2s have the same distribution (a random synset would let a model answer from
    sentence2 alone: hypernyms are general concepts); a negative Y is never X, an ancestor of X
    or a descendant of X. Randomness is seeded by the sha256 of X's key.
  - wn_headword: gloss -> the synset's first lemma, "_" as " " ("hot dog"), text to text.

Splits are hash-stable: a synset (for wn_hypernym: X) goes to test if u < 0.1, validation if
u < 0.2, else train, where u = sha256(key) / 2^256 and key is its pos letter + offset
("n02084071"). The same synset lands in the same split in every task. Each split then keeps the
examples with the smallest u up to CAPS, and lists them ordered by sha256 of their id.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import tempfile
import textwrap

from data import build_corpus, bundled
from data.downstream_baselines import baseline_table

PACKAGE = "wordnet-base"
OUTPUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "downstream")
SPLITS = ("train", "validation", "test")
CAPS = {"train": 20_000, "validation": 2_000, "test": 2_000}  # examples per split and task
_TEST_BELOW, _VALIDATION_BELOW = 0.1, 0.2
HYPERNYM_POINTERS = ("@", "@i")
TASKS = ("wn_lexname", "wn_hypernym", "wn_headword")


# ---------------------------------------------------------------------------------------------
# WordNet: lexicographer files, synsets, the eligible pool.
# ---------------------------------------------------------------------------------------------
_LEXNAME_ROW = re.compile(r"^(\d\d)\t([a-z]+\.[A-Za-z]+) *\t")  # "noun.person  \t"


def read_lexnames(root: str) -> dict[int, str]:
    """File number -> name, from the table in the package's lexnames(5WN) manual page."""
    path = os.path.join(root, "usr/share/man/man5/lexnames.5WN.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [_LEXNAME_ROW.match(line) for line in f]
    names = {int(m.group(1)): m.group(2) for m in rows if m}
    if sorted(names) != list(range(45)):
        raise ValueError(f"{path}: found lexicographer files {sorted(names)}; expected 00..44")
    return names


def corpus_occurrences(texts: set[str], corpus_files: list[str]) -> set[str]:
    """The members of `texts` that occur as substrings of the corpus (gzip, one doc a line).

    `grep -F -o` prints one leftmost-longest match at a time, so a text overlapped by another
    match can be missed in one pass; passes repeat without the found texts until none is found.
    """
    if any(not t or "\n" in t for t in texts):
        raise ValueError("texts to look up must be non-empty single lines")
    found: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, patterns = os.path.join(tmp, "corpus.txt"), os.path.join(tmp, "patterns.txt")
        with open(corpus, "wb") as out:
            for path in corpus_files:
                with gzip.open(path, "rb") as f:
                    out.write(f.read())
        remaining = set(texts)
        while remaining:
            with open(patterns, "w", encoding="utf-8") as f:
                f.writelines(t + "\n" for t in sorted(remaining))
            run = subprocess.run(["grep", "-F", "-o", "-f", patterns, corpus],
                                 capture_output=True, env={**os.environ, "LC_ALL": "C"})
            if run.returncode not in (0, 1):
                raise RuntimeError(f"grep failed: {run.stderr.decode(errors='replace')}")
            hits = set(run.stdout.decode("utf-8").splitlines()) & remaining
            if not hits:
                break
            found |= hits
            remaining -= hits
    return found


def eligible_synsets(synsets: dict[str, build_corpus.Synset], corpus_files: list[str]
                     ) -> tuple[dict[str, build_corpus.Synset], dict[str, int]]:
    """-> (eligible synsets by key, how many each filter removed); see the module docstring."""
    no_example = {k: s for k, s in synsets.items() if s.gloss and not s.has_example}
    gloss_count = collections.Counter(s.gloss for s in no_example.values())
    unique = {k: s for k, s in no_example.items() if gloss_count[s.gloss] == 1}
    in_corpus = corpus_occurrences({s.gloss for s in unique.values()}, corpus_files)
    eligible = {k: s for k, s in unique.items() if s.gloss not in in_corpus}
    counts = {"synsets": len(synsets), "without_example": len(no_example),
              "gloss_unique": len(unique), "eligible_not_in_corpus": len(eligible)}
    return eligible, counts


# ---------------------------------------------------------------------------------------------
# Hash-stable splits.
# ---------------------------------------------------------------------------------------------
def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


def key_fraction(key: str) -> float:
    return _digest(key) / 2**256


def split_of(key: str) -> str:
    u = key_fraction(key)
    return "test" if u < _TEST_BELOW else "validation" if u < _VALIDATION_BELOW else "train"


def assign_splits(groups: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """{key: examples of that key} -> {split: examples}: whole groups by split_of(key), smallest
    key_fraction first while the split's cap allows, then ordered by sha256 of the id."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for key in sorted(groups, key=key_fraction):
        split = out[split_of(key)]
        if len(split) + len(groups[key]) <= CAPS[split_of(key)]:
            split.extend(groups[key])
    return {s: sorted(examples, key=lambda e: _digest(e["id"])) for s, examples in out.items()}


# ---------------------------------------------------------------------------------------------
# Tasks: {key: [example, ...]}.
# ---------------------------------------------------------------------------------------------
def lexname_groups(pool: dict[str, build_corpus.Synset], lexnames: dict[int, str]
                   ) -> dict[str, list[dict]]:
    return {k: [{"id": k, "sentence1": s.gloss, "target": lexnames[s.lex_file]}]
            for k, s in pool.items()}


def headword_groups(pool: dict[str, build_corpus.Synset]) -> dict[str, list[dict]]:
    return {k: [{"id": k, "sentence1": s.gloss, "target": s.words[0].replace("_", " ")}]
            for k, s in pool.items()}


def _hypernyms(synset: build_corpus.Synset) -> list[str]:
    return sorted(t for symbol, t in synset.pointers if symbol in HYPERNYM_POINTERS)


def _ancestors(key: str, synsets: dict[str, build_corpus.Synset]) -> set[str]:
    seen: set[str] = set()
    stack = _hypernyms(synsets[key])
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack.extend(_hypernyms(synsets[k]))
    return seen


def hypernym_groups(pool: dict[str, build_corpus.Synset],
                    synsets: dict[str, build_corpus.Synset]) -> dict[str, list[dict]]:
    """X -> [positive (X, hypernym), negative (X, another X's hypernym)]; both sides eligible."""
    positive: dict[str, str] = {}
    for key in sorted(pool):
        candidates = [h for h in _hypernyms(pool[key]) if h in pool]
        if candidates:
            rng = random.Random(_digest("positive/" + key))
            positive[key] = candidates[rng.randrange(len(candidates))]
    by_pos: dict[str, list[str]] = collections.defaultdict(list)
    for key in sorted(positive):
        by_pos[key[0]].append(key)
    groups = {}
    for key, hypernym in positive.items():
        rng = random.Random(_digest("negative/" + key))
        ancestors = _ancestors(key, synsets)
        same_pos = by_pos[key[0]]
        for _ in range(1000):
            other = positive[same_pos[rng.randrange(len(same_pos))]]
            if other != key and other not in ancestors and key not in _ancestors(other, synsets):
                break
        else:
            raise RuntimeError(f"no negative found for {key} in 1000 draws")
        groups[key] = [
            {"id": f"{key}-{y}", "sentence1": pool[key].gloss, "sentence2": pool[y].gloss,
             "target": target}
            for y, target in ((hypernym, "yes"), (other, "no"))
        ]
    return groups


# ---------------------------------------------------------------------------------------------
# Build: files, MANIFEST.json, LICENSE, README.md.
# ---------------------------------------------------------------------------------------------
def build(output_dir: str, debs_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as root:
        versions = build_corpus.extract(build_corpus.fetch_packages(debs_dir, (PACKAGE,)), root)
        lexnames = read_lexnames(root)
        synsets = {s.key: s for pos in build_corpus.WORDNET_POS
                   for s in build_corpus.read_synsets(root, pos)}
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(root, "usr/share/doc", PACKAGE, "copyright"),
                  encoding="utf-8") as f:
            copyright_text = f.read()
    with open(os.path.join(output_dir, "LICENSE"), "w", encoding="utf-8") as f:
        f.write(f"The downstream tasks (data/downstream/*/) are derived from WordNet 3.0,\n"
                f"Debian package {PACKAGE} {versions[PACKAGE]}; its copyright file follows.\n\n"
                f"{copyright_text}")
    pool, pool_counts = eligible_synsets(synsets, bundled.TRAIN_FILES + bundled.VALIDATION_FILES)
    groups = {
        "wn_lexname": lexname_groups(pool, lexnames),
        "wn_hypernym": hypernym_groups(pool, synsets),
        "wn_headword": headword_groups(pool),
    }
    tasks = {}
    splits = {}
    for name in TASKS:
        splits[name] = assign_splits(groups[name])
        os.makedirs(os.path.join(output_dir, name), exist_ok=True)
        entry: dict = {"files": {}}
        for split, examples in splits[name].items():
            lines = [json.dumps(e, ensure_ascii=False, sort_keys=True) for e in examples]
            digest = build_corpus.write_gzip_lines(
                os.path.join(output_dir, name, f"{split}.jsonl.gz"), lines)
            entry["files"][split] = {"examples": len(lines), "text_sha256": digest}
        if name != "wn_headword":
            entry["labels"] = sorted({e["target"] for es in splits[name].values() for e in es})
            entry["label_counts"] = {
                s: dict(sorted(collections.Counter(e["target"] for e in es).items()))
                for s, es in splits[name].items()}
        entry["groups_before_caps"] = len(groups[name])
        tasks[name] = entry
    manifest = {
        "packages": {PACKAGE: versions[PACKAGE]},
        "caps": CAPS,
        "pool": pool_counts,
        "format": "gzip UTF-8 JSONL: {id, sentence1, [sentence2,] target}",
        "tasks": tasks,
    }
    with open(os.path.join(output_dir, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    write_readme(os.path.join(output_dir, "README.md"), manifest, splits,
                 baseline_table(splits))
    return manifest


_DESCRIPTIONS = {
    "wn_lexname": ("classification, 1 sentence", "gloss", "lexicographer file, e.g. `noun.animal`"),
    "wn_hypernym": ("classification, sentence pair", "gloss of X, gloss of Y",
                    "`yes` iff Y is a direct hypernym of X, else `no`"),
    "wn_headword": ("text to text", "gloss", "first lemma, e.g. `hot dog`"),
}


def token_lengths(splits: dict[str, list[dict]]) -> dict[str, tuple[float, int]]:
    """{field: (mean, max)} of spm_8192 pieces over all splits (no special tokens)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=bundled.VOCAB_PATH)
    examples = [e for es in splits.values() for e in es]
    out = {}
    for field in ("sentence1", "sentence2", "target"):
        if field in examples[0]:
            n = [len(ids) for ids in processor.encode([e[field] for e in examples])]
            out[field] = (sum(n) / len(n), max(n))
    return out


def _paragraph(text: str) -> list[str]:
    return textwrap.wrap(text, width=96) + [""]


def write_readme(path: str, manifest: dict, splits: dict, baselines: dict) -> None:
    tasks, pool = manifest["tasks"], manifest["pool"]
    lexname_counts: collections.Counter = collections.Counter()
    for counts in tasks["wn_lexname"]["label_counts"].values():
        lexname_counts.update(counts)
    rare = sorted(lexname_counts, key=lambda label: (lexname_counts[label], label))[:4]
    lines = ["# Bundled downstream tasks", ""]
    lines += _paragraph(
        "Three fine-tuning tasks that run offline, built by `python -m data.build_downstream` "
        f"from WordNet 3.0 (Debian 12 package `{PACKAGE}` {manifest['packages'][PACKAGE]}) out "
        "of the synsets the pretraining corpus (`data/corpus/`) leaves out: no sentence of any "
        "task occurs in the corpus text, not even as a substring (checked with GNU grep by "
        "`tests/test_downstream_data.py`). Every rule is in the docstring of "
        "`data/build_downstream.py`.")
    lines += _paragraph("**Licence:** the WordNet 3.0 license (Princeton University; "
                        "permissive, keep the notice), in full in `LICENSE`.")
    lines += _paragraph(
        "**Format:** `<task>/{train,validation,test}.jsonl.gz`, gzip UTF-8, one JSON object a "
        'line: `{"id": str, "sentence1": str, "sentence2": str (pairs only), "target": str}`. '
        "`MANIFEST.json` has the sha256 of each file's uncompressed text, the example counts, "
        "and the sorted label list and label counts of each classification task; "
        "`data/finetune.py` registers the tasks from it.")
    lines += ["## Tasks", "",
              "| task | kind | input | target | train | validation | test | spm_8192 pieces "
              "(mean / max) |", "|---|---|---|---|---|---|---|---|"]
    for name in TASKS:
        kind, inputs, target = _DESCRIPTIONS[name]
        n = [f"{tasks[name]['files'][s]['examples']:,}" for s in SPLITS]
        lengths = ", ".join(f"{field} {mean:.1f} / {top}"
                            for field, (mean, top) in token_lengths(splits[name]).items())
        lines.append(f"| `{name}` | {kind} | {inputs} | {target} | {' | '.join(n)} | {lengths} |")
    lines.append("")
    lines += _paragraph(
        f"`wn_lexname` has {len(lexname_counts)} labels (of WordNet's 45 lexicographer files), "
        "imbalanced as WordNet is: the rarest over all splits are "
        + ", ".join(f"`{label}` ({lexname_counts[label]})" for label in rare)
        + "; label counts per split are in MANIFEST.json. `wn_hypernym` is exactly balanced: "
        "each X gives one positive and one negative pair, and the negative's sentence2 is "
        "another X's hypernym, so sentence2 alone carries no signal; a hypernym's gloss is "
        "sentence2 for many X, in every split, while an X gloss is in one split only. "
        "`wn_headword` is hard by "
        "design (a reverse dictionary; many glosses fit several words); its metric is exact "
        "match.")
    lines += ["## Sources and sizes", ""]
    lines += _paragraph(
        f"Of WordNet's {pool['synsets']:,} synsets, {pool['without_example']:,} have a gloss and "
        f"no usage example (the corpus holds the others), {pool['gloss_unique']:,} of those "
        f"have a gloss no other one shares, and {pool['eligible_not_in_corpus']:,} of those a "
        "gloss found nowhere in the corpus: the pool. A synset (X for pairs) is in test if "
        "sha256(key) / 2^256 < 0.1, validation if < 0.2, else train, with key = pos letter + "
        "offset (`n07926442`); the same synset is in the same split in every task. Caps per "
        f"task: train {CAPS['train']:,}, validation {CAPS['validation']:,}, test "
        f"{CAPS['test']:,} examples (the smallest hashes are kept). Before the caps there were "
        + ", ".join(f"{tasks[n]['groups_before_caps']:,} "
                    f"{'X synsets (two pairs each)' if n == 'wn_hypernym' else 'synsets'} "
                    f"for `{n}`" for n in TASKS) + ".")
    lines += ["## Baselines (percent)", "",
              "| task | metric | majority validation | majority test | bag of words validation "
              "| bag of words test |", "|---|---|---|---|---|---|"]
    for name in TASKS:
        row = baselines[name]
        metric = "exact match" if name == "wn_headword" else "accuracy"
        if "bag_of_words" in row:
            bow = row["bag_of_words"]
            bow_cells = f"{bow['validation']:.1f} | {bow['test']:.1f} (L2 {bow['l2']:g})"
        else:
            bow = row["nearest_neighbour"]
            bow_cells = f"{bow['validation']:.1f} | {bow['test']:.1f} (nearest neighbour)"
        lines.append(f"| `{name}` | {metric} | {row['majority']['validation']:.1f} | "
                     f"{row['majority']['test']:.1f} | {bow_cells} |")
    lines.append("")
    lines += _paragraph(
        "Majority: always the most frequent train target ("
        + ", ".join(f"`{n}`: `{baselines[n]['majority']['prediction']}`" for n in TASKS)
        + "). Bag of words (`data/downstream_baselines.py`): logistic regression on word counts "
        "(for pairs also a per-word 'in both sentences' feature), L2 chosen on validation; for "
        "`wn_headword`, the headword of the train gloss nearest by tf-idf cosine.")
    lines += ["## Rebuilding", "", "```",
              "python -m data.build_downstream                       # apt-get download, build",
              "python -m data.build_downstream --debs_dir=/tmp/debs  # or use the .deb there",
              "```", ""]
    lines += _paragraph(
        "Needs apt-get (or the .deb), dpkg and GNU grep. With the same package version the text "
        "of every file is identical (its sha256 is in MANIFEST.json), and so are the gzip bytes "
        "with the same zlib (mtime 0, no file name). The build takes a few minutes on one core, "
        "most of it the bag-of-words baselines.")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=OUTPUT_DIR)
    parser.add_argument("--debs_dir", default=os.path.join(tempfile.gettempdir(), "pretrax_debs"))
    args = parser.parse_args(argv)
    manifest = build(args.output_dir, args.debs_dir)
    print(json.dumps({n: t["files"] for n, t in manifest["tasks"].items()}, indent=2))


if __name__ == "__main__":
    main()
