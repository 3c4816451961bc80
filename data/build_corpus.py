r"""Rebuilds the bundled corpus (data/corpus/) from pinned Debian packages.

    apt-get update   # once, so the pinned versions are known
    python -m data.build_corpus        # apt-get download into /tmp/pretrax_debs, then build
    python -m data.build_corpus --debs_dir=/tmp/debs   # use .deb files already there

Needs apt-get and dpkg, and an amd64 machine (the KJV text is decoded by a Debian binary).

Sources (see data/corpus/LICENSE for the full license texts):
  - python3.11-doc: the reStructuredText sources of the Python 3.11 documentation, with markup,
    code blocks, tables and directives stripped; documents are runs of sections of one page.
  - wordnet-base: WordNet 3.0 synsets that have a usage example, rendered "word, word: gloss;
    "example"."; documents are runs of _WORDNET_PER_DOC synsets of one lexicographer file.
  - bible-kjv-text (decoded with the `bible` program of bible-kjv): King James Version, one
    document per chapter.
Every document is one line. A document goes to validation iff the sha256 of its key (e.g.
"kjv/Ge1") is 0 mod _VALIDATION_MODULUS (~2%), so the split does not move when other documents
change; train documents are shuffled with a fixed seed and dealt round-robin into
bundled.NUM_TRAIN_SHARDS files. Files are gzipped with mtime=0 and no file name, so the same
package versions (and zlib) give the same bytes; MANIFEST.json records the sha256 of each
file's uncompressed text, which does not depend on zlib.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import tempfile
from collections.abc import Iterator
from typing import NamedTuple

from data import bundled

# Pinned versions (Debian 12 "bookworm"); rebuilding from others is allowed but warned about.
PACKAGES = {
    "python3.11-doc": "3.11.2-6+deb12u9",
    "wordnet-base": "1:3.0-37",
    "bible-kjv-text": "4.38",
    "bible-kjv": "4.38",  # only its decoder binary is used, no text
}
_PY_SOURCES = "usr/share/doc/python3.11/html/_sources"
_PY_SKIP = ("contents.rst.txt", "copyright.rst.txt", "license.rst.txt", "includes/",
            "whatsnew/changelog.rst.txt")
_WORDNET_PER_DOC = 25
# Only synsets with a quoted usage example: they read most like prose, and they keep the
# corpus within its size budget (all 117,659 glosses would add 11.5 MB of text).
_WORDNET_NEEDS_EXAMPLE = True
_VALIDATION_MODULUS = 50
_SHUFFLE_SEED = 20240601
_MIN_DOC_CHARS = 200
_TARGET_DOC_CHARS = 2000


# ---------------------------------------------------------------------------------------------
# Debian packages.
# ---------------------------------------------------------------------------------------------


def fetch_packages(debs_dir: str, packages: tuple[str, ...] = tuple(PACKAGES)
                   ) -> dict[str, str]:
    """Downloads the pinned .debs of `packages` into debs_dir unless present; returns
    {package: deb path}."""
    os.makedirs(debs_dir, exist_ok=True)
    found = {}
    for pkg in packages:
        version = PACKAGES[pkg]
        debs = [f for f in sorted(os.listdir(debs_dir)) if f.startswith(pkg + "_")]
        if not debs:
            subprocess.run(["apt-get", "download", f"{pkg}={version}"], cwd=debs_dir, check=True)
            debs = [f for f in sorted(os.listdir(debs_dir)) if f.startswith(pkg + "_")]
        found[pkg] = os.path.join(debs_dir, debs[-1])
    return found


def deb_version(deb: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", deb, "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()


def extract(debs: dict[str, str], root: str) -> dict[str, str]:
    """dpkg -x every package into root; returns {package: version}, warning on unpinned ones."""
    versions = {}
    for pkg, deb in debs.items():
        versions[pkg] = deb_version(deb)
        if versions[pkg] != PACKAGES[pkg]:
            print(f"WARNING: {pkg} is {versions[pkg]}, pinned {PACKAGES[pkg]}: output will differ")
        subprocess.run(["dpkg", "-x", deb, root], check=True)
    return versions


# ---------------------------------------------------------------------------------------------
# reStructuredText -> prose.
# ---------------------------------------------------------------------------------------------

# Directives whose indented content is code, markup or navigation, not prose.
_DROP_CONTENT = frozenset(
    "code-block code sourcecode literalinclude toctree index highlight testsetup testcleanup "
    "doctest testcode testoutput productionlist raw image figure csv-table list-table table "
    "only tabularcolumns include parsed-literal contents audit-event availability "
    "sectionauthor moduleauthor limited-api-list miscnews glossary".split()
)
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::(.*)$")
_COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
_OPTION = re.compile(r"^\s*:[\w -]+:(\s.*)?$")
_UNDERLINE = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
_TABLE = re.compile(r"^\s*(\+[-=+]+\+|=+( +=+)+)\s*$")
_BULLET = re.compile(r"^(\s*)([-*+\u2022]|#\.|\d+\.|\(?[a-z]\))\s+")
_ROLE = re.compile(r":([\w:.-]+):`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?")
_REF_TEXT = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``(.+?)``")
_EMPH = re.compile(r"(\*\*|\*)([^\s*](?:[^*]*?[^\s*])??)\1")
_SUBST = re.compile(r"\|([\w-]+)\|_{0,2}")
_FOOTNOTE = re.compile(r"\s*\[(#\w*|\d+|\*)\]_")


def rst_inline(text: str) -> str:
    """Inline markup -> its text: roles, links, literals, emphasis, substitutions."""

    def role(match: re.Match) -> str:
        name, inner = match.group(1), match.group(2)
        titled = re.match(r"^(.*?)\s*<[^<>]*>$", inner)
        if titled:
            return titled.group(1)
        if name in ("pep", "rfc"):
            return f"{name.upper()} {inner}"
        if name in ("ref", "doc"):  # an untitled cross-reference: the label is all we have
            inner = inner.rsplit("/", 1)[-1].replace("-", " ").replace("_", " ")
        return inner.lstrip("~!").replace("\\", "")

    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _REF_TEXT.sub(r"\1", text)
    text = _EMPH.sub(r"\2", text)
    text = _FOOTNOTE.sub("", text)
    text = _SUBST.sub(lambda m: "3.11" if m.group(1) in ("release", "version") else "", text)
    text = text.replace("\\ ", "").replace("\\", "")
    return normalize_space(text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_prose(paragraph: str) -> bool:
    """Keeps paragraphs that read as text, not leftovers of code or tables."""
    if paragraph.startswith((">>>", "$ ", "...")) or len(paragraph) < 3:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in paragraph)
    return letters >= 0.8 * len(paragraph)


def rst_to_sections(source: str) -> list[str]:
    """A page's reST -> one prose string per section (heading first), markup stripped."""
    lines = source.expandtabs(8).splitlines() + [""]
    sections: list[list[str]] = [[""]]  # [heading, paragraph, ...]
    paragraph: list[str] = []
    skip_deeper_than = -1  # while >= 0: drop lines indented more than this (and blank lines)
    para_indent = 0

    def flush() -> None:
        text = rst_inline(" ".join(paragraph))
        if text.endswith("::"):  # "Example::" introduces a literal block
            text = text[:-1].rstrip(" :") + (":" if text[:-2].strip() else "")
        if _is_prose(text):
            sections[-1].append(text)
        paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        if skip_deeper_than >= 0:
            if not line.strip() or _indent(line) > skip_deeper_than:
                continue
            skip_deeper_than = -1
        if not line.strip():
            if paragraph:
                ends_literal = paragraph[-1].endswith("::")
                flush()
                if ends_literal:
                    skip_deeper_than = para_indent
            continue
        directive = _DIRECTIVE.match(line)
        if directive or _COMMENT.match(line):
            if paragraph:
                flush()
            indent = _indent(line)
            name = directive.group(2) if directive else ""
            while i < len(lines) and _OPTION.match(lines[i]) and _indent(lines[i]) > indent:
                i += 1  # directive options
            if name == "rubric":
                sections.append([rst_inline(directive.group(3))])
            elif not directive or name in _DROP_CONTENT:
                skip_deeper_than = indent
            continue
        if _UNDERLINE.match(line) or _TABLE.match(line) or line.lstrip().startswith("|"):
            if _UNDERLINE.match(line) and paragraph and len(paragraph) == 1:
                heading = rst_inline(paragraph[0])
                paragraph.clear()
                sections.append([heading + ("" if heading[-1:] in ".?!:" else ".")])
            elif paragraph and not _UNDERLINE.match(line):
                flush()
            continue
        bullet = _BULLET.match(line)
        if paragraph and (bullet or _indent(line) != para_indent):
            ends_literal = paragraph[-1].endswith("::")
            flush()
            if ends_literal and _indent(line) > para_indent:
                skip_deeper_than = para_indent
                continue
        if not paragraph:
            para_indent = bullet.end() if bullet else _indent(line)
        paragraph.append(line[bullet.end():] if bullet else line.strip())
    if paragraph:
        flush()
    return [" ".join(s).strip() for s in sections if len(s) > 1]


# ---------------------------------------------------------------------------------------------
# Per-source documents: (key, text) pairs, each text one line.
# ---------------------------------------------------------------------------------------------


def normalize_space(text: str) -> str:
    return " ".join(text.split())


def python_doc_documents(root: str) -> Iterator[tuple[str, str]]:
    """Sections of each documentation page, merged into documents of >= _TARGET_DOC_CHARS."""
    base = os.path.join(root, _PY_SOURCES)
    paths = []
    for dirpath, dirs, names in os.walk(base):
        dirs.sort()
        paths += [os.path.join(dirpath, n) for n in names if n.endswith(".rst.txt")]
    for path in sorted(paths):
        rel = os.path.relpath(path, base)
        if rel.startswith(_PY_SKIP):
            continue
        with open(path, encoding="utf-8") as f:
            sections = rst_to_sections(f.read())
        doc: list[str] = []
        index = 0
        for section in sections:
            doc.append(section)
            if sum(len(s) for s in doc) >= _TARGET_DOC_CHARS:
                yield f"pydoc/{rel}/{index}", normalize_space(" ".join(doc))
                doc, index = [], index + 1
        if doc:
            yield f"pydoc/{rel}/{index}", normalize_space(" ".join(doc))


_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
WORDNET_DIR = "usr/share/wordnet"
WORDNET_POS = ("noun", "verb", "adj", "adv")  # data.<pos> files
_POS_LETTER = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}  # as pointers write them


class Synset(NamedTuple):
    """One synset of a WordNet 3.0 data.<pos> file (format: wndb(5WN))."""

    key: str  # pos letter of the file + offset, e.g. "n02084071": unique in WordNet
    lex_file: int  # lexicographer file number (lexnames(5WN))
    words: tuple[str, ...]  # lemmas in order, "_" kept, adjective markers "(a)" removed
    pointers: tuple[tuple[str, str], ...]  # (symbol, target key), e.g. ("@", "n02083346")
    gloss: str  # definition and examples, whitespace normalized; may be ""

    @property
    def has_example(self) -> bool:
        """Whether the gloss quotes a usage example (the corpus keeps exactly these)."""
        return '"' in self.gloss


def parse_synset(line: str, pos: str) -> Synset | None:
    """One line of data.<pos> -> Synset; None for the license header."""
    if line.startswith("  "):
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    lex_file, n_words = int(fields[1]), int(fields[3], 16)
    words = tuple(_ADJ_MARKER.sub("", fields[4 + 2 * i]) for i in range(n_words))
    at = 4 + 2 * n_words
    n_pointers = int(fields[at])
    pointers = tuple(
        (fields[at + 1 + 4 * i], fields[at + 3 + 4 * i] + fields[at + 2 + 4 * i])
        for i in range(n_pointers)
    )
    return Synset(_POS_LETTER[pos] + fields[0], lex_file, words, pointers,
                  normalize_space(gloss))


def read_synsets(root: str, pos: str) -> Iterator[Synset]:
    """Every synset of data.<pos> under an extracted wordnet-base, in file order."""
    with open(os.path.join(root, WORDNET_DIR, f"data.{pos}"), encoding="utf-8") as f:
        for line in f:
            synset = parse_synset(line, pos)
            if synset is not None:
                yield synset


def wordnet_synset(synset: Synset) -> str | None:
    """-> "word, word: gloss." as the corpus renders it; None without a gloss."""
    gloss = synset.gloss
    if not gloss:
        return None
    if gloss[-1] not in ".!?\"'":
        gloss += "."
    words = [w.replace("_", " ") for w in synset.words]
    return f"{', '.join(dict.fromkeys(words))}: {gloss}"


def wordnet_documents(root: str) -> Iterator[tuple[str, str]]:
    for pos in WORDNET_POS:
        by_file: dict[int, list[str]] = {}
        for synset in read_synsets(root, pos):
            text = wordnet_synset(synset)
            if text and (not _WORDNET_NEEDS_EXAMPLE or synset.has_example):
                by_file.setdefault(synset.lex_file, []).append(text)
        for lex_file in sorted(by_file):
            entries = by_file[lex_file]
            for start in range(0, len(entries), _WORDNET_PER_DOC):
                text = " ".join(entries[start : start + _WORDNET_PER_DOC])
                yield f"wordnet/{pos}/{lex_file}/{start // _WORDNET_PER_DOC}", text


_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def kjv_chapters(verse_lines: list[str]) -> Iterator[tuple[str, str]]:
    """Lines "Ge1:1 In the beginning ..." -> one (key "kjv/Ge1", text) per chapter, in order."""
    chapter_key, verses = None, []
    for line in verse_lines:
        match = _VERSE.match(line.strip())
        if not match:
            raise ValueError(f"unexpected line from `bible`: {line!r}; expected 'Book1:1 text'")
        key = f"kjv/{match.group(1)}{match.group(2)}"
        if key != chapter_key and verses:
            yield chapter_key, normalize_space(" ".join(verses))
            verses = []
        chapter_key = key
        verses.append(match.group(4))
    if verses:
        yield chapter_key, normalize_space(" ".join(verses))


def kjv_documents(root: str) -> Iterator[tuple[str, str]]:
    out = subprocess.run(
        [os.path.join(root, "usr/bin/bible"), "-f", "-p", os.path.join(root, "usr/lib"),
         "gen1:1-rev22:21"],
        check=True, capture_output=True, text=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    if len(lines) != 31102:  # the KJV has 31,102 verses
        raise ValueError(f"`bible` printed {len(lines)} verses; expected 31102")
    yield from kjv_chapters(lines)


# ---------------------------------------------------------------------------------------------
# Split, shuffle, write.
# ---------------------------------------------------------------------------------------------


def is_validation(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % _VALIDATION_MODULUS == 0


def split_documents(docs: list[tuple[str, str]]) -> tuple[list[list[str]], list[str]]:
    """-> (train shards, validation documents), independent of the order of `docs`."""
    docs = sorted(docs)
    if len({k for k, _ in docs}) != len(docs):
        raise ValueError("duplicate document keys")
    train = [t for k, t in docs if not is_validation(k)]
    validation = [t for k, t in docs if is_validation(k)]
    rng = random.Random(_SHUFFLE_SEED)
    rng.shuffle(train)
    rng.shuffle(validation)
    n = bundled.NUM_TRAIN_SHARDS
    return [train[i::n] for i in range(n)], validation


def write_gzip_lines(path: str, lines: list[str]) -> str:
    """Writes reproducible gzip (mtime=0, no name); returns the sha256 of the text."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9
    ) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def write_license(root: str, versions: dict[str, str], path: str) -> None:
    parts = [
        "Licenses of the bundled corpus (data/corpus/*.txt.gz) and of the vocabulary trained\n"
        "on it. Each section is the Debian copyright file of the package the text came from.\n"
    ]
    for pkg in ("python3.11-doc", "wordnet-base", "bible-kjv-text"):
        with open(os.path.join(root, "usr/share/doc", pkg, "copyright"), encoding="utf-8") as f:
            text = f.read()
        parts.append(f"{'=' * 78}\n{pkg} {versions[pkg]}\n{'=' * 78}\n{text}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def build(output_dir: str, debs_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as root:
        versions = extract(fetch_packages(debs_dir), root)
        sources = {
            "python3.11-doc": python_doc_documents(root),
            "wordnet-base": wordnet_documents(root),
            "bible-kjv-text": kjv_documents(root),
        }
        sources = {
            name: [(k, t) for k, t in docs if len(t) >= _MIN_DOC_CHARS]
            for name, docs in sources.items()
        }
        os.makedirs(output_dir, exist_ok=True)
        write_license(root, versions, os.path.join(output_dir, "LICENSE"))
    shards, validation = split_documents([d for docs in sources.values() for d in docs])
    files = {}
    for path, lines in zip(bundled.TRAIN_FILES, shards, strict=True):
        files[os.path.basename(path)] = {"documents": len(lines)}
        files[os.path.basename(path)]["text_sha256"] = write_gzip_lines(
            os.path.join(output_dir, os.path.basename(path)), lines)
    name = os.path.basename(bundled.VALIDATION_FILES[0])
    files[name] = {"documents": len(validation),
                   "text_sha256": write_gzip_lines(os.path.join(output_dir, name), validation)}
    manifest = {
        "packages": versions,
        "documents_per_source": {s: len(d) for s, d in sources.items()},
        "files": files,
        "format": "gzip UTF-8, one document per line",
    }
    with open(os.path.join(output_dir, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=bundled.CORPUS_DIR)
    parser.add_argument("--debs_dir", default=os.path.join(tempfile.gettempdir(), "pretrax_debs"))
    args = parser.parse_args(argv)
    print(json.dumps(build(args.output_dir, args.debs_dir), indent=2))


if __name__ == "__main__":
    main()
