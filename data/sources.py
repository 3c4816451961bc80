"""Robust raw-text document readers.

`read_documents(spec)` turns files into a stream of document strings, and never silently drops
or invents text: every line read is accounted for in a `ReadStats` (documents yielded, empty
lines skipped, bad records skipped, huge documents split), and every piece of bad input either
raises an error naming the file, the 1-based line and what was expected, or -- only where the
caller asked for ``on_error="warn"`` -- is logged, counted and skipped.

Formats (``fmt``):
  "lines"       one document per line (the bundled corpus' format).
  "paragraphs"  documents separated by one or more blank lines; a document's lines are joined
                with "\\n".
  "jsonl"       one JSON object per line; the document is its string field ``field``.
  "auto"        "jsonl" for ``*.jsonl`` / ``*.json`` (also ``.gz``-compressed), else "lines".
Files ending in ``.gz`` are decompressed transparently. Documents are whitespace-stripped.

Bad input:
  - a file with more invalid UTF-8 sequences than ``max_bad_byte_fraction`` (1%) of its bytes
    is refused (SourceError naming it: a binary file is not a corpus);
  - invalid UTF-8 bytes are replaced by U+FFFD, counted, and logged once per file (with the
    first bad line);
  - empty / whitespace-only documents are skipped and counted;
  - a document longer than ``max_doc_chars`` (e.g. a 50 MB line) is read in bounded pieces and
    split into documents of at most ``max_doc_chars`` characters (at a whitespace when one is
    in the last half of the window), counted in ``chunked_docs`` / ``extra_chunks``; memory
    stays bounded by ``max_doc_chars`` plus one read block, except for "jsonl", which must
    hold one whole JSON line to parse it;
  - a missing path, a glob or directory matching no file -> `SourceNotFoundError`, always
    (a typo'd path must not train on nothing);
  - an empty (0-byte) file, a corrupt gzip stream, a JSONL line that is not a JSON object,
    lacks ``field`` or has a non-string ``field`` -> `SourceError`; with ``on_error="warn"``
    empty files and bad JSONL lines are instead logged, counted (``empty_files``,
    ``bad_records_skipped``) and skipped.

Invariants (tested): per file ``documents == records + extra_chunks``; for "lines"/"jsonl"
``lines == records + empty_skipped + bad_records_skipped``; for "paragraphs" every line is
either a blank separator (``empty_skipped``) or part of exactly one record.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob as glob_lib
import gzip
import json
import logging
import os
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, TypeVar

DEFAULT_MAX_DOC_CHARS = 1_000_000
# Bytes per readline() call: bounds memory for a line of any length.
_READ_BYTES = 1 << 20
log = logging.getLogger(__name__)
_FORMATS = ("auto", "lines", "paragraphs", "jsonl")
_T = TypeVar("_T")


class SourceError(ValueError):
    """Bad input data: carries the file, the 1-based line number (0 = whole file) and why."""

    def __init__(self, path: str, line: int, message: str):
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class SourceNotFoundError(FileNotFoundError):
    """A missing file, or a glob / directory that matches no file."""


@dataclasses.dataclass
class FileStats:
    """What happened to one file's lines; see the module docstring for the invariants."""

    lines: int = 0
    records: int = 0  # source documents (non-empty lines / paragraphs / JSON records)
    documents: int = 0  # documents yielded (records + extra_chunks)
    empty_skipped: int = 0
    bad_records_skipped: int = 0
    bad_byte_replacements: int = 0
    first_bad_byte_line: int = 0
    bytes_read: int = 0
    chunked_docs: int = 0
    extra_chunks: int = 0
    empty_files: int = 0


@dataclasses.dataclass
class ReadStats:
    """Per-file `FileStats`, keyed by path, filled in while `read_documents` iterates."""

    files: dict[str, FileStats] = dataclasses.field(default_factory=dict)

    def total(self) -> FileStats:
        out = FileStats()
        for fs in self.files.values():
            for f in dataclasses.fields(FileStats):
                if f.name != "first_bad_byte_line":
                    setattr(out, f.name, getattr(out, f.name) + getattr(fs, f.name))
        return out

    def summary(self) -> str:
        t = self.total()
        return (
            f"{len(self.files)} files, {t.lines} lines -> {t.documents} documents "
            f"({t.records} records + {t.extra_chunks} extra chunks from {t.chunked_docs} "
            f"split documents); skipped {t.empty_skipped} empty, {t.bad_records_skipped} bad "
            f"records, {t.empty_files} empty files; {t.bad_byte_replacements} bad UTF-8 "
            "sequences replaced"
        )


# ---------------------------------------------------------------------------------------------
# File expansion and sharding.
# ---------------------------------------------------------------------------------------------


# A file whose invalid UTF-8 sequences exceed this fraction of its bytes is refused (a binary
# file given as a corpus); below it they are replaced and counted. Checked as soon as 64 kB
# have been read, and at the end of the file.
max_bad_byte_fraction = 0.01
_EARLY_CHECK_BYTES = 1 << 16


def expand_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Path, glob, directory (every regular file under it, recursively), or a list of those.

    Each glob / directory is expanded in sorted order; the list's own order is kept.
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not items:
        raise SourceNotFoundError("empty list of input files")
    files: list[str] = []
    for item in items:
        item = os.fspath(item)
        if glob_lib.has_magic(item):
            matches = sorted(p for p in glob_lib.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise SourceNotFoundError(f"glob {item!r} matched no files")
            files.extend(matches)
        elif os.path.isdir(item):
            matches = []
            for root, dirs, names in os.walk(item):
                dirs.sort()
                matches.extend(os.path.join(root, n) for n in names)
            matches = sorted(p for p in matches if os.path.isfile(p))
            if not matches:
                raise SourceNotFoundError(f"directory {item!r} contains no files")
            files.extend(matches)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise SourceNotFoundError(f"input file {item!r} does not exist")
    return files


def shard_files(files: Sequence[str], process_index: int, process_count: int) -> list[str]:
    """File-level sharding: process i reads files i, i + count, ... of `files` (order kept).

    Cheapest (each host opens only its own files) and deterministic; it needs at least as many
    files as processes, else some host would get no data -- use `shard_documents` then.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if len(files) < process_count:
        raise ValueError(
            f"{len(files)} files cannot be sharded over {process_count} processes (each needs at "
            "least one file); use shard_documents() or split the data into more files"
        )
    return list(files[process_index::process_count])


def shard_documents(docs: Iterable[_T], process_index: int, process_count: int) -> Iterator[_T]:
    """Document-level sharding: process i keeps documents i, i + count, ... of the stream.

    Works for any number of files (every host reads everything and drops the rest), so it suits
    small corpora such as the bundled one; deterministic given the same file order.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    for i, doc in enumerate(docs):
        if i % process_count == process_index:
            yield doc


# ---------------------------------------------------------------------------------------------
# Decoding: bounded reads, counted replacement of invalid UTF-8.
# ---------------------------------------------------------------------------------------------

_counter = threading.local()


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    _counter.n = getattr(_counter, "n", 0) + 1
    return "\ufffd", exc.end  # type: ignore[attr-defined]


codecs.register_error("pretrax_count_replace", _count_and_replace)


def _open(path: str) -> BinaryIO:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # type: ignore


def _iter_line_pieces(path: str, fs: FileStats) -> Iterator[tuple[int, str, bool]]:
    """Yields (1-based line, text piece, line_ended) with at most _READ_BYTES bytes per piece."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="pretrax_count_replace")
    line_no = 0
    at_line_start = True
    try:
        with _open(path) as f:
            while True:
                raw = f.readline(_READ_BYTES)
                if not raw:
                    break
                if at_line_start:
                    line_no += 1
                    fs.lines += 1
                ended = raw.endswith(b"\n") or len(raw) < _READ_BYTES
                fs.bytes_read += len(raw)
                _counter.n = 0
                text = decoder.decode(raw, final=ended)
                if _counter.n:
                    fs.bad_byte_replacements += _counter.n
                    fs.first_bad_byte_line = fs.first_bad_byte_line or line_no
                    if fs.bytes_read >= _EARLY_CHECK_BYTES:  # refuse a binary file early
                        _check_bad_bytes(path, fs)
                at_line_start = ended
                yield line_no, text, ended
            if not at_line_start:  # the last line filled its final read block exactly
                yield line_no, decoder.decode(b"", final=True), True
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise SourceNotFoundError(f"input file {path!r} does not exist") from e
        raise SourceError(path, line_no + 1, f"cannot read file ({type(e).__name__}: {e})") from e


class _Chunker:
    """Accumulates one document's text, emitting pieces of at most max_chars characters."""

    def __init__(self, max_chars: int, fs: FileStats):
        self.max_chars, self.fs = max_chars, fs
        self.parts: list[str] = []
        self.size = 0
        self.pieces = 0

    def feed(self, text: str) -> Iterator[str]:
        self.parts.append(text)
        self.size += len(text)
        if self.size <= self.max_chars:
            return
        buf, start = "".join(self.parts), 0  # join once: cutting stays linear in the text
        while len(buf) - start > self.max_chars:
            end = start + self.max_chars
            # Prefer to cut at whitespace so words survive, unless that wastes half the window.
            space = max(buf.rfind(" ", start, end + 1), buf.rfind("\n", start, end + 1))
            if space >= start + self.max_chars // 2:
                end = space
            yield from self._emit(buf[start:end])
            start = end
        rest = buf[start:]
        self.parts, self.size = [rest], len(rest)

    def finish(self) -> Iterator[str]:
        buf = "".join(self.parts)
        self.parts, self.size = [], 0
        yield from self._emit(buf)
        if self.pieces == 0:
            self.fs.empty_skipped += 1
        elif self.pieces > 1:
            self.fs.chunked_docs += 1
            self.fs.extra_chunks += self.pieces - 1
        self.pieces = 0

    def _emit(self, text: str) -> Iterator[str]:
        text = text.strip()
        if text:
            self.pieces += 1
            self.fs.documents += 1
            if self.pieces == 1:
                self.fs.records += 1
            yield text


# ---------------------------------------------------------------------------------------------
# Per-format readers.
# ---------------------------------------------------------------------------------------------


def _read_lines(path: str, fs: FileStats, max_chars: int) -> Iterator[str]:
    chunker = _Chunker(max_chars, fs)
    for _, text, ended in _iter_line_pieces(path, fs):
        yield from chunker.feed(text)
        if ended:
            yield from chunker.finish()


def _read_paragraphs(path: str, fs: FileStats, max_chars: int) -> Iterator[str]:
    chunker = _Chunker(max_chars, fs)
    in_paragraph = False
    pending: list[str] = []  # the current line while it is whitespace only (maybe blank)
    is_content = False
    for _, text, ended in _iter_line_pieces(path, fs):
        text = text.replace("\r\n", "\n")
        if is_content:
            yield from chunker.feed(text)  # a long content line streams into the paragraph
        else:
            pending.append(text)
            if text.strip():
                is_content = True
                yield from chunker.feed("".join(pending))
                pending = []
        if not ended:
            continue
        if is_content:
            in_paragraph = True
        else:
            fs.empty_skipped += 1  # a blank separator line
            if in_paragraph:
                in_paragraph = False
                yield from chunker.finish()
        pending, is_content = [], False
    if in_paragraph:
        yield from chunker.finish()


def _read_jsonl(
    path: str, fs: FileStats, max_chars: int, field: str, on_error: str
) -> Iterator[str]:
    chunker = _Chunker(max_chars, fs)
    parts: list[str] = []
    for line_no, text, ended in _iter_line_pieces(path, fs):
        parts.append(text)
        if not ended:
            continue
        line, parts = "".join(parts), []
        if not line.strip():
            fs.empty_skipped += 1
            continue
        try:
            value = _json_field(path, line_no, line, field)
        except SourceError as e:
            if on_error == "raise":
                raise
            log.warning("skipping bad record: %s", e)
            fs.bad_records_skipped += 1
            continue
        yield from chunker.feed(value)
        yield from chunker.finish()


def _json_field(path: str, line_no: int, line: str, field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise SourceError(
            path, line_no, f"expected a JSON object per line, got invalid JSON ({e.msg} at "
            f"column {e.colno}): {line[:80]!r}"
        ) from None
    if not isinstance(record, dict):
        raise SourceError(
            path, line_no, f"expected a JSON object per line, got {type(record).__name__}"
        )
    if field not in record:
        raise SourceError(
            path, line_no, f"expected field {field!r} in the JSON object; it has keys "
            f"{sorted(record)[:10]}"
        )
    value = record[field]
    if not isinstance(value, str):
        raise SourceError(
            path, line_no, f"expected field {field!r} to be a string, got "
            f"{type(value).__name__}: {str(value)[:80]!r}"
        )
    return value


def resolve_format(path: str, fmt: str = "auto") -> str:
    """The concrete format of `path` ("lines" | "paragraphs" | "jsonl") for `fmt`."""
    if fmt not in _FORMATS:
        raise ValueError(f"fmt={fmt!r}; expected one of {_FORMATS}")
    if fmt != "auto":
        return fmt
    name = path[:-3] if path.endswith(".gz") else path
    return "jsonl" if name.endswith((".jsonl", ".json")) else "lines"


def read_documents(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    fmt: str = "auto",
    field: str = "text",
    stats: ReadStats | None = None,
    on_error: str = "raise",
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
) -> Iterator[str]:
    """Yields the documents of every file in `spec` (see `expand_files`), in order.

    Args:
      spec: path, glob, directory, or a list of those.
      fmt: "auto" | "lines" | "paragraphs" | "jsonl" (see the module docstring).
      field: the JSONL field holding the text.
      stats: filled in per file while iterating (pass one in to log or check it afterwards).
      on_error: "raise" (default) or "warn": log, count and skip empty files and bad JSONL
        records. Missing files and empty globs always raise.
      max_doc_chars: longer documents are split into pieces of at most this many characters.
    """
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error={on_error!r}; expected 'raise' or 'warn'")
    if max_doc_chars < 1:
        raise ValueError(f"max_doc_chars={max_doc_chars}; expected >= 1")
    # Eager: a bad path or format fails at the call, not at the first next().
    files = expand_files(spec)
    formats = [resolve_format(p, fmt) for p in files]
    stats = stats if stats is not None else ReadStats()
    return _generate(files, formats, field, stats, on_error, max_doc_chars)


def _generate(
    files: list[str],
    formats: list[str],
    field: str,
    stats: ReadStats,
    on_error: str,
    max_doc_chars: int,
) -> Iterator[str]:
    for path, file_fmt in zip(files, formats, strict=True):
        fs = stats.files.setdefault(path, FileStats())
        if _is_empty(path):
            if on_error == "raise":
                raise SourceError(path, 0, "file is empty; expected at least one document")
            log.warning("skipping empty file %s", path)
            fs.empty_files += 1
            continue
        if file_fmt == "jsonl":
            reader = _read_jsonl(path, fs, max_doc_chars, field, on_error)
        elif file_fmt == "paragraphs":
            reader = _read_paragraphs(path, fs, max_doc_chars)
        else:
            reader = _read_lines(path, fs, max_doc_chars)
        try:
            yield from reader
            _check_bad_bytes(path, fs)
        finally:
            if fs.bad_byte_replacements:
                log.warning(
                    "%s: replaced %d invalid UTF-8 byte sequence(s) with U+FFFD (first on "
                    "line %d)", path, fs.bad_byte_replacements, fs.first_bad_byte_line,
                )


def _check_bad_bytes(path: str, fs: FileStats) -> None:
    limit = max_bad_byte_fraction
    if fs.bytes_read and fs.bad_byte_replacements / fs.bytes_read > limit:
        raise SourceError(
            path, fs.first_bad_byte_line,
            f"{fs.bad_byte_replacements} invalid UTF-8 sequences in the first {fs.bytes_read} "
            f"bytes ({100 * fs.bad_byte_replacements / fs.bytes_read:.1f}% > "
            f"{100 * limit:g}%): this does not look like UTF-8 text. Convert it, leave it out, "
            "or raise data.sources.max_bad_byte_fraction")


def _is_empty(path: str) -> bool:
    if os.path.getsize(path) == 0:
        return True
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return not f.read(1)
        except (EOFError, OSError, zlib.error) as e:
            raise SourceError(path, 1, f"cannot read gzip file ({type(e).__name__}: {e})") from e
    return False
