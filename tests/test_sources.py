"""Tests for data/sources.py (document readers) and the bundled corpus (data/build_corpus.py)."""

import gzip
import json
import logging
import os

import pytest

from data import build_corpus, bundled, sources


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


def _read(spec, **kwargs):
    stats = sources.ReadStats()
    docs = list(sources.read_documents(spec, stats=stats, **kwargs))
    return docs, stats


def _check_invariants(stats: sources.ReadStats, docs: list[str], line_format: bool = True):
    """Every line is accounted for: the stats add up to the lines read and the docs yielded."""
    t = stats.total()
    assert t.documents == len(docs)
    assert t.documents == t.records + t.extra_chunks
    if line_format:
        assert t.lines == t.records + t.empty_skipped + t.bad_records_skipped


# --------------------------------------------------------------------------------------------
# Formats.
# --------------------------------------------------------------------------------------------


def test_lines_skips_and_counts_empty_lines(tmp_path):
    path = _write(tmp_path / "a.txt", b"first doc\n\n   \n  second doc  \r\nthird")
    docs, stats = _read(path)
    assert docs == ["first doc", "second doc", "third"]
    fs = stats.files[path]
    assert (fs.lines, fs.records, fs.empty_skipped, fs.documents) == (5, 3, 2, 3)
    _check_invariants(stats, docs)


def test_paragraphs_are_blank_line_separated(tmp_path):
    path = _write(tmp_path / "p.txt", b"\na b\nc d\n\n\n\ne f\n  \ng\n")
    docs, stats = _read(path, fmt="paragraphs")
    assert docs == ["a b\nc d", "e f", "g"]
    fs = stats.files[path]
    # 9 lines: 4 in paragraphs, 5 blank (the leading one, three in a row, and "  ").
    assert (fs.lines, fs.records, fs.empty_skipped) == (9, 3, 5)
    _check_invariants(stats, docs, line_format=False)


def test_jsonl_auto_detected_through_gzip(tmp_path):
    lines = [json.dumps({"text": "héllo", "id": 1}), "", json.dumps({"text": "  "}),
             json.dumps({"text": "world"})]
    path = _write(tmp_path / "d.jsonl.gz", "\n".join(lines).encode())
    docs, stats = _read(path)
    assert docs == ["héllo", "world"]
    fs = stats.files[path]
    assert (fs.lines, fs.records, fs.empty_skipped) == (4, 2, 2)
    _check_invariants(stats, docs)
    assert sources.resolve_format("x.json") == "jsonl"
    assert sources.resolve_format("x.txt.gz") == "lines"


def test_jsonl_custom_field(tmp_path):
    path = _write(tmp_path / "d.jsonl", b'{"body": "x y"}\n')
    assert _read(path, field="body")[0] == ["x y"]


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        (b"{not json", "invalid JSON"),
        (b'["a list"]', "expected a JSON object per line, got list"),
        (b'{"txt": "typo"}', "expected field 'text' in the JSON object; it has keys ['txt']"),
        (b'{"text": 3}', "expected field 'text' to be a string, got int"),
        (b'{"text": null}', "got NoneType"),
    ],
)
def test_jsonl_bad_record_names_file_and_line(tmp_path, bad_line, expected):
    path = _write(tmp_path / "bad.jsonl", b'{"text": "ok"}\n\n' + bad_line + b'\n{"text": "z"}\n')
    with pytest.raises(sources.SourceError) as err:
        list(sources.read_documents(path))
    assert f"{path}:3: " in str(err.value)
    assert expected in str(err.value)
    assert (err.value.path, err.value.line) == (path, 3)
    assert isinstance(err.value, ValueError)

    docs, stats = _read(path, on_error="warn")
    assert docs == ["ok", "z"]
    fs = stats.files[path]
    assert (fs.lines, fs.records, fs.empty_skipped, fs.bad_records_skipped) == (4, 2, 1, 1)
    _check_invariants(stats, docs)


# --------------------------------------------------------------------------------------------
# Bad bytes, huge lines.
# --------------------------------------------------------------------------------------------


def test_invalid_utf8_replaced_counted_and_warned_once(tmp_path, caplog):
    data = b"good line\nbad \xff\xfe bytes\nmore \xc3\nok \xe2\x82\xac\n"
    path = _write(tmp_path / "latin.txt", data)
    with caplog.at_level(logging.WARNING):
        docs, stats = _read(path)
    # Python's own "replace" decoding is the reference for what and how much gets replaced.
    expected = [d.strip() for d in data.decode("utf-8", "replace").splitlines()]
    assert docs == expected
    fs = stats.files[path]
    assert fs.bad_byte_replacements == data.decode("utf-8", "replace").count("\ufffd") == 3
    assert fs.first_bad_byte_line == 2
    warnings = [r.getMessage() for r in caplog.records if "UTF-8" in r.getMessage()]
    assert len(warnings) == 1
    assert path in warnings[0] and "line 2" in warnings[0] and " 3 " in warnings[0]


def test_multibyte_chars_split_across_reads_survive(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_READ_BYTES", 5)  # forces "é€" to straddle read blocks
    text = "aé€b " * 20 + "\nzz €\n"
    path = _write(tmp_path / "u.txt", text.encode())
    docs, stats = _read(path)
    assert docs == [line.strip() for line in text.splitlines()]
    assert stats.files[path].bad_byte_replacements == 0
    assert stats.files[path].lines == 2


def test_last_line_filling_the_read_block_exactly_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_READ_BYTES", 4)
    path = _write(tmp_path / "x.txt", b"ab\nabcd")  # no newline after a block-sized line
    docs, stats = _read(path)
    assert docs == ["ab", "abcd"]
    assert (stats.total().lines, stats.total().records) == (2, 2)


def test_fifty_megabyte_line_is_chunked_with_bounded_pieces(tmp_path):
    words = 10_000_000
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.write(b"short first\n")
        f.write(b"word " * words)  # one 50 MB line, no newline until the next document
        f.write(b"\nshort last\n")
    assert os.path.getsize(path) > 50_000_000
    stats = sources.ReadStats()
    counted_words, chunks, longest = 0, 0, 0
    docs = sources.read_documents(str(path), stats=stats)
    assert next(docs) == "short first"
    for doc in docs:
        if doc == "short last":
            break
        chunks += 1
        longest = max(longest, len(doc))
        counted_words += doc.count(" ") + 1
        assert doc.startswith("word") and doc.endswith("word")  # cut at whitespace only
    assert counted_words == words
    assert longest <= sources.DEFAULT_MAX_DOC_CHARS
    fs = stats.files[str(path)]
    assert (fs.lines, fs.records, fs.chunked_docs, fs.extra_chunks) == (3, 3, 1, chunks - 1)
    assert chunks == 50  # 50,000,000 chars in windows of at most 1,000,000 that end at a word


def test_chunking_without_whitespace_is_exact(tmp_path):
    path = _write(tmp_path / "x.txt", b"abcdefghij\n")
    docs, stats = _read(path, max_doc_chars=3)
    assert docs == ["abc", "def", "ghi", "j"]
    assert (stats.total().chunked_docs, stats.total().extra_chunks) == (1, 3)
    _check_invariants(stats, docs)


def test_paragraph_chunks_cut_at_spaces_and_newlines(tmp_path):
    path = _write(tmp_path / "p.txt", b"aaa bbb ccc\nddd\n\neee\n")
    docs, stats = _read(path, fmt="paragraphs", max_doc_chars=5)
    assert docs == ["aaa", "bbb", "ccc", "ddd", "eee"]
    t = stats.total()
    assert (t.records, t.chunked_docs, t.extra_chunks, t.empty_skipped) == (2, 1, 3, 1)
    _check_invariants(stats, docs, line_format=False)


# --------------------------------------------------------------------------------------------
# Missing, empty and corrupt inputs; file expansion.
# --------------------------------------------------------------------------------------------


def test_missing_file_and_empty_glob_raise(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(sources.SourceNotFoundError, match="nope.txt"):
        sources.read_documents(missing)  # eager: fails at the call
    with pytest.raises(FileNotFoundError, match=r"glob .*\*\.jsonl.* matched no files"):
        sources.read_documents(str(tmp_path / "*.jsonl"), on_error="warn")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="contains no files"):
        sources.read_documents(str(tmp_path / "empty_dir"))
    with pytest.raises(FileNotFoundError, match="empty list"):
        sources.read_documents([])


def test_empty_file_raises_or_is_counted(tmp_path):
    empty = _write(tmp_path / "a_empty.txt", b"")
    empty_gz = _write(tmp_path / "b_empty.txt.gz", b"")
    good = _write(tmp_path / "c_good.txt", b"doc\n")
    for path in (empty, empty_gz):
        with pytest.raises(sources.SourceError, match=f"{path}: file is empty"):
            list(sources.read_documents(path))
    docs, stats = _read(str(tmp_path), on_error="warn")
    assert docs == ["doc"]
    assert stats.total().empty_files == 2 and list(stats.files) == [empty, empty_gz, good]


def test_corrupt_gzip_raises_with_path(tmp_path):
    path = tmp_path / "bad.txt.gz"
    path.write_bytes(gzip.compress(b"line one\n" * 1000)[:-30])  # truncated stream
    with pytest.raises(sources.SourceError, match="bad.txt.gz"):
        list(sources.read_documents(str(path)))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="fmt='csv'"):
        sources.read_documents(bundled.VALIDATION_FILES, fmt="csv")
    with pytest.raises(ValueError, match="on_error"):
        sources.read_documents(bundled.VALIDATION_FILES, on_error="ignore")


def test_directory_and_list_expansion_order(tmp_path):
    b = _write(tmp_path / "d" / "sub" / "b.txt", b"b\n")
    a = _write(tmp_path / "d" / "a.txt", b"a\n")
    c = _write(tmp_path / "c.txt", b"c\n")
    assert sources.expand_files(str(tmp_path / "d")) == [a, b]
    assert sources.expand_files([c, str(tmp_path / "d" / "**" / "*.txt")]) == [c, a, b]
    assert _read([c, str(tmp_path / "d")])[0] == ["c", "a", "b"]


def test_shard_files_partitions_deterministically():
    files = [f"f{i}" for i in range(10)]
    shards = [sources.shard_files(files, i, 4) for i in range(4)]
    assert shards[1] == ["f1", "f5", "f9"]
    assert sorted(sum(shards, [])) == sorted(files)
    with pytest.raises(ValueError, match="3 files cannot be sharded over 4 processes"):
        sources.shard_files(files[:3], 0, 4)
    with pytest.raises(ValueError, match="process_index=4"):
        sources.shard_files(files, 4, 4)
    assert list(sources.shard_documents(range(7), 2, 3)) == [2, 5]


# --------------------------------------------------------------------------------------------
# The bundled corpus and the functions that build it.
# --------------------------------------------------------------------------------------------


def test_bundled_corpus_matches_manifest():
    with open(os.path.join(bundled.CORPUS_DIR, "MANIFEST.json")) as f:
        manifest = json.load(f)
    assert manifest["packages"] == build_corpus.PACKAGES
    total = 0
    for path in bundled.TRAIN_FILES + bundled.VALIDATION_FILES:
        docs, stats = _read(path)
        t = stats.total()
        entry = manifest["files"][os.path.basename(path)]
        assert len(docs) == entry["documents"] == t.lines  # one document per line, no blanks
        assert t.bad_byte_replacements == t.empty_skipped == t.extra_chunks == 0
        with gzip.open(path, "rb") as f:
            assert f.read() == "".join(d + "\n" for d in docs).encode()
        total += len(docs)
    assert total == sum(manifest["documents_per_source"].values())
    n_val = manifest["files"][os.path.basename(bundled.VALIDATION_FILES[0])]["documents"]
    assert 0.01 < n_val / total < 0.03


def test_rst_to_sections_strips_markup():
    rst = (
        ".. _label:\n\nTitle\n=====\n\nSee :func:`os.path.join` and ``x = 1`` in\n"
        "*the* `docs <https://x.org>`_ (:pep:`8`).  Example::\n\n    code = 'dropped'\n\n"
        ".. note::\n\n   Kept **note** text here.\n\n"
        ".. code-block:: python\n\n   also = dropped\n\n"
        ">>> doctest()\n\n* bullet item one\n  continues here\n\nSub\n---\n\n.. index:: single: x\n"
    )
    assert build_corpus.rst_to_sections(rst) == [
        "Title. See os.path.join and x = 1 in the docs (PEP 8). Example: "
        "Kept note text here. bullet item one continues here"
    ]


def test_wordnet_and_kjv_parsers():
    line = ("00006269 03 n 01 life 0 002 @ 00004258 n 0000 ~ 07993776 n 0000 | living things "
            'collectively; "the oceans are teeming with life"  \n')
    life = build_corpus.parse_synset(line, "noun")
    assert life == build_corpus.Synset(
        "n00006269", 3, ("life",), (("@", "n00004258"), ("~", "n07993776")),
        'living things collectively; "the oceans are teeming with life"')
    assert life.has_example
    assert build_corpus.wordnet_synset(life) == (
        'life: living things collectively; "the oceans are teeming with life"'
    )
    adj = build_corpus.parse_synset(
        "00001740 00 a 02 able(p) 0 unable 0 001 & 00002098 a 0000 | (usually followed by "
        "`to') having  power\n", "adj")
    assert adj == build_corpus.Synset("a00001740", 0, ("able", "unable"), (("&", "a00002098"),),
                                      "(usually followed by `to') having power")
    assert not adj.has_example
    assert build_corpus.wordnet_synset(adj) == ("able, unable: (usually followed by `to') "
                                                "having power.")
    assert build_corpus.parse_synset("  1 This software and database is\n", "noun") is None
    verses = ["Ge1:1 In the beginning.", "Ge1:2 And  the earth.", "Ge2:1 Thus.", "1Jo5:21 Amen."]
    assert list(build_corpus.kjv_chapters(verses)) == [
        ("kjv/Ge1", "In the beginning. And the earth."), ("kjv/Ge2", "Thus."),
        ("kjv/1Jo5", "Amen."),
    ]
    with pytest.raises(ValueError, match="expected 'Book1:1 text'"):
        list(build_corpus.kjv_chapters(["garbage"]))


def test_split_and_gzip_are_reproducible(tmp_path):
    docs = [(f"src/{i}", f"document number {i} " * 20) for i in range(1000)]
    shards, val = build_corpus.split_documents(docs)
    shards2, val2 = build_corpus.split_documents(list(reversed(docs)))
    assert (shards, val) == (shards2, val2)  # independent of input order
    assert sum(map(len, shards)) + len(val) == 1000 and 5 <= len(val) <= 40
    digests = []
    for name in ("a.gz", "b.gz"):
        digests.append(build_corpus.write_gzip_lines(str(tmp_path / name), shards[0]))
    raw = (tmp_path / "a.gz").read_bytes()
    assert raw == (tmp_path / "b.gz").read_bytes() and raw[4:8] == b"\0\0\0\0"  # mtime 0
    assert digests[0] == digests[1]
