"""Reading raw sources into normalised documents, streamed in chunks.

Sources are local files, folders, globs or http(s) URLs of .txt, .md, .jsonl, .csv, .tsv and
.parquet, each optionally gzip-compressed, read as a stream. Text is decoded strictly, as UTF-8
unless a source says latin-1 or cp1252 (an error names the file and byte offset), the BOM is
stripped, CRLF becomes LF and Unicode is NFC-normalised. A labeled source is a table (text and
label by column) or a text file of one example per line, labeled by its source or by a pattern.
Each record keeps where it came from (file, and line or row), so that a failed check can point at it.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import io
import json
import os
import re
import unicodedata
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq

TEXT_SUFFIXES = (".txt", ".md")
TABLE_SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")
SUPPORTED = TEXT_SUFFIXES + TABLE_SUFFIXES
READ_BLOCK = 1 << 20


class SourceError(ValueError):
    """A source that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class ReadSpec:
    """How to read documents (and labels) out of one source."""

    document_split: Literal["blank_line", "line", "file"] = "line"  # text files only
    text_field: str = "text"  # tables only
    label_field: str | None = None  # tables only; None: unlabeled, or every record gets `label`
    label: str | None = None  # the label of every record
    pattern: re.Pattern | None = None  # text lines as (?P<text>...) and (?P<label>...) groups
    encoding: Literal["utf-8", "latin-1", "cp1252"] = "utf-8"
    format: Literal["auto", "text", "jsonl", "csv", "tsv", "parquet"] = "auto"  # auto: by the file's suffix


@dataclass(frozen=True)
class Record:
    text: str
    source: str
    row: int  # 1-based: the first line of a text document, the data row of a table (header excluded)
    label: str | None = None


def expand_sources(sources: list[str], root: Path) -> list[str]:
    """Files and URLs named by `sources` (files, folders, globs), in a stable order."""
    found: list[str] = []
    for source in sources:
        if source.startswith(("http://", "https://")):
            found.append(source)
            continue
        path = root / source
        if any(ch in source for ch in "*?["):
            matches = sorted(glob.glob(str(path), recursive=True))
        elif path.is_dir():
            matches = sorted(str(p) for p in path.rglob("*") if p.is_file() and _base_suffix(p.name) in SUPPORTED)
        elif path.exists():
            matches = [str(path)]
        else:
            raise SourceError(f"source {source!r} does not exist (looked in {path})")
        if not matches:
            raise SourceError(f"source {source!r} matched no files")
        found.extend(matches)
    return found


def position_name(location: str) -> str:
    """What a Record's row counts in this source: lines of a text file, rows of a table."""
    return "row" if _base_suffix(location) in TABLE_SUFFIXES else "line"


def source_suffix(location: str, file_format: str = "auto") -> str:
    """The suffix a source is read by: its own (under .gz), or the one its `format` names."""
    if file_format == "auto":
        return _base_suffix(location)
    return ".txt" if file_format == "text" else f".{file_format}"


def _base_suffix(name: str) -> str:
    name = name.split("?")[0].lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def _open_binary(location: str) -> io.BufferedIOBase:
    if location.startswith(("http://", "https://")):
        try:
            stream = urllib.request.urlopen(location, timeout=60)  # noqa: S310 (the user names the URL)
        except OSError as error:
            raise SourceError(f"{location}: cannot download ({error})") from error
    else:
        stream = open(location, "rb")
    if location.split("?")[0].lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=stream)
    return stream


def normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


def _iter_decoded(location: str, encoding: str = "utf-8") -> Iterator[str]:
    """Blocks of strictly decoded text; the BOM is dropped; an error names the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8-sig" if encoding == "utf-8" else encoding)(errors="strict")
    offset, total = 0, 0
    with _open_binary(location) as stream:
        while block := stream.read(READ_BLOCK):
            if b"\x00" in block:
                nul = offset + block.index(b"\x00")
                raise SourceError(f"{location}: binary data (NUL byte at offset {nul}), not text")
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as error:
                name = "UTF-8" if encoding == "utf-8" else encoding
                raise SourceError(f"{location}: invalid {name} at byte offset {offset + error.start}") from error
            offset += len(block)
            total += len(text)
            yield text
        yield decoder.decode(b"", final=True)
    if offset == 0:
        raise SourceError(f"{location}: the file is empty")


class DecodedStream(io.TextIOBase):
    """A read-only text stream over decoded blocks (what pandas' chunked readers consume)."""

    def __init__(self, blocks: Iterator[str]) -> None:
        self._blocks = blocks
        self._buffer = ""

    def readable(self) -> bool:
        return True

    def _fill(self, until: int | None = None, line: bool = False) -> None:
        while (until is None or len(self._buffer) < until) and not (line and "\n" in self._buffer):
            block = next(self._blocks, None)
            if block is None:
                return
            self._buffer += block

    def read(self, size: int | None = -1) -> str:
        self._fill(None if size is None or size < 0 else size)
        cut = len(self._buffer) if size is None or size < 0 else size
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out

    def readline(self, size: int | None = -1) -> str:
        self._fill(line=True)
        end = self._buffer.find("\n") + 1 or len(self._buffer)
        out, self._buffer = self._buffer[:end], self._buffer[end:]
        return out


def iter_text_documents(
    location: str, rule: Literal["blank_line", "line", "file"], encoding: str = "utf-8"
) -> Iterator[tuple[int, str]]:
    """(first line, document) of a plain-text file, split by `rule`, without holding the whole file."""
    if rule == "file":
        yield 1, normalise("".join(_iter_decoded(location, encoding)))
        return
    pending, line = "", 1
    separator = "\n\n" if rule == "blank_line" else "\n"
    for block in _iter_decoded(location, encoding):
        # A CR that ends a block may be half of a CRLF: normalised alone it would add a line break.
        held = "\r" if block.endswith("\r") else ""
        pending = normalise(pending + block[: len(block) - len(held)])
        *complete, pending = pending.split(separator)
        for document in complete:
            yield line, document
            line += document.count("\n") + len(separator)
        pending += held
    yield line, normalise(pending)


def iter_table_rows(
    location: str, columns: list[str], chunk_rows: int, encoding: str = "utf-8", suffix: str | None = None
) -> Iterator[pd.DataFrame]:
    """Chunks of a .jsonl/.csv/.tsv/.parquet table holding `columns` (as strings)."""
    suffix = suffix or _base_suffix(location)
    if suffix == ".parquet":
        with _open_binary(location) as stream:
            parquet = pq.ParquetFile(io.BytesIO(stream.read()) if location.startswith("http") else stream)
            _check_columns(location, list(parquet.schema_arrow.names), columns)
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
                yield batch.to_pandas().astype(str)
        return
    # Text tables stream through the strict decoder, so bad bytes name the file and offset.
    if suffix == ".jsonl":
        yield from _iter_jsonl_rows(location, columns, chunk_rows, encoding)
        return
    sep = "\t" if suffix == ".tsv" else ","
    reader = pd.read_csv(
        DecodedStream(_iter_decoded(location, encoding)),
        sep=sep,
        chunksize=chunk_rows,
        dtype=str,
        keep_default_na=False,
        quoting=3 if sep == "\t" else 0,
    )
    try:
        for i, chunk in enumerate(reader):
            if i == 0:
                _check_columns(location, [str(c) for c in chunk.columns], columns)
            yield chunk[columns].astype(str)
    except pd.errors.ParserError as error:  # its message gives the line, not the file
        raise SourceError(f"{location}: {error}".strip()) from None


def _iter_jsonl_rows(location: str, columns: list[str], chunk_rows: int, encoding: str) -> Iterator[pd.DataFrame]:
    """JSON Lines parsed one line at a time, so that a bad line is named by its number."""
    rows: list[list[Any]] = []
    for number, line in iter_text_documents(location, "line", encoding):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SourceError(f"{location}: line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise SourceError(f"{location}: line {number} is not a JSON object")
        _check_columns(f"{location}: line {number}", list(record), columns)
        rows.append([record[c] for c in columns])
        if len(rows) == chunk_rows:
            yield pd.DataFrame(rows, columns=columns).astype(str)
            rows = []
    if rows:
        yield pd.DataFrame(rows, columns=columns).astype(str)


def _check_columns(location: str, available: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise SourceError(f"{location}: missing column {missing[0]!r} (columns: {available})")


def iter_records(location: str, spec: ReadSpec, chunk_rows: int) -> Iterator[list[Record]]:
    """Chunks of records from one source; a text file's blank documents are skipped.

    Text documents lose their surrounding blank lines (indentation stays), table texts their
    surrounding whitespace. A text line that does not match `spec.pattern` is an error naming it.
    """
    suffix = source_suffix(location, spec.format)
    if suffix not in SUPPORTED:
        raise SourceError(
            f"{location}: unsupported file type {suffix!r} (supported: {', '.join(SUPPORTED)}; or give the"
            " source a format: text, jsonl, csv, tsv, parquet)"
        )
    if suffix in TEXT_SUFFIXES:
        if spec.label_field is not None and spec.label is None and spec.pattern is None:
            raise SourceError(f"{location}: a text file needs a source label or a pattern to carry labels")
        chunk: list[Record] = []
        for line, document in iter_text_documents(location, spec.document_split, spec.encoding):
            text = document.lstrip("\n")
            line += len(document) - len(text)
            if not text.strip():
                continue  # blank lines separate documents, they are not documents
            label = spec.label
            if spec.pattern is not None:
                match = spec.pattern.fullmatch(text.rstrip("\n"))
                if match is None:
                    raise SourceError(f"{location}: line {line} does not match the pattern {spec.pattern.pattern!r}")
                text, label = match["text"], label if label is not None else match["label"]
            chunk.append(Record(text.rstrip("\n"), location, line, label))
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
        yield chunk
        return
    label_field = spec.label_field if spec.label is None else None
    columns = [spec.text_field] + ([label_field] if label_field else [])
    rows_before = 0
    for frame in iter_table_rows(location, columns, chunk_rows, spec.encoding, suffix):
        texts = [normalise(t).strip() for t in frame[spec.text_field]]
        labels = frame[label_field].tolist() if label_field else [spec.label] * len(texts)
        rows = range(rows_before + 1, rows_before + len(texts) + 1)
        yield [Record(t, location, row, lab) for t, row, lab in zip(texts, rows, labels, strict=True)]
        rows_before += len(texts)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
