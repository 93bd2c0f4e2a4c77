"""Where a row of an input file came from: its file and line, found only on error paths.

pyarrow's streaming CSV reads give neither the line of a malformed record nor that of a cell
that does not convert; a quoted cell may hold newlines, so a data row's line is not its index.
This module re-scans a file with Python's csv reader when (and only when) an error is to be
reported. Batches carry their origin (file, first data row) in their schema metadata under
``ORIGIN_PATH`` / ``ORIGIN_FIRST``, set by read.py. criteo_tsv batches know their lines (their
parser counts them): a ``line:`` field holds each row's 0-based line, and no re-scan is needed.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import pyarrow as pa

from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.schema import FeatureSchema

ORIGIN_PATH, ORIGIN_FIRST = b"dlrm_dist.path", b"dlrm_dist.first_row"
LINE_FIELD = "line:"  # criteo_tsv batches: the 0-based line of each row in its file


def file_format(path: Path, schema: FeatureSchema) -> str:
    if schema.input.format:
        return schema.input.format
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "tsv" if name.endswith((".tsv", ".tab", ".txt")) else "csv"


def delimiter_of(fmt: str, schema: FeatureSchema) -> str:
    return schema.input.delimiter or ("\t" if fmt == "tsv" else ",")


# -- where a row came from -------------------------------------------------------------------------
def origin(batch: pa.RecordBatch) -> tuple[Path, int]:
    """(file, index of the batch's first data row in it)."""
    meta = batch.schema.metadata or {}
    return Path(meta[ORIGIN_PATH].decode()), int(meta[ORIGIN_FIRST])


def where(batch: pa.RecordBatch, schema: FeatureSchema, row: int) -> str:
    """``FILE line L`` (CSV) or ``FILE row R`` (Parquet) of the batch's row ``row``."""
    path, first = origin(batch)
    if LINE_FIELD in batch.schema.names:
        return f"{path} line {batch.column(LINE_FIELD)[row].as_py() + 1}"
    return locate(path, schema, first + row)


def locate(path: Path, schema: FeatureSchema, data_row: int) -> str:
    if file_format(path, schema) == "parquet":
        return f"{path} row {data_row + 1}"
    line = line_of_row(path, schema, data_row)
    return f"{path} line {line}" if line is not None else f"{path} data row {data_row + 1}"


def is_gzip(path: Path) -> bool:
    """Whether the file begins as gzip data does (its magic bytes), whatever its name."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


COMPRESSED = (".bz2", ".gz", ".lz4", ".zst")  # the names pyarrow's readers decompress (as it spells them)


def open_bytes(path: Path) -> BinaryIO:
    """The file's text bytes as pyarrow's CSV reader sees them: decompressed by the name's extension
    (.gz, .bz2, .zst, ...), as ``pyarrow.csv.open_csv(path)`` decompresses."""
    return pa.input_stream(str(path))


def line_at(path: Path, offset: int) -> int:
    """The 1-based line of the file's byte ``offset`` (of its text): lines end at LF, CR or CRLF."""
    line, seen, after_cr = 1, 0, False
    with open_bytes(path) as f:
        while seen < offset and (data := f.read(min(8 << 20, offset - seen))):
            line += data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n") - (after_cr and data[:1] == b"\n")
            seen, after_cr = seen + len(data), data[-1:] == b"\r"
    return line


def _text_lines(path: Path) -> io.TextIOBase:
    raw = open_bytes(path)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")


def _records(path: Path, schema: FeatureSchema) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of every non-empty record, as pyarrow splits them (quotes, embedded
    newlines) and counts them (it skips empty lines)."""
    fmt = file_format(path, schema)
    quoting = {"quotechar": '"', "doublequote": True} if fmt == "csv" else {"quoting": csv.QUOTE_NONE}
    with _text_lines(path) as text:
        reader = csv.reader(text, delimiter=delimiter_of(fmt, schema), strict=False, **quoting)
        start = 1
        try:
            for fields in reader:
                if fields and fields != [""]:
                    yield start, fields
                start = reader.line_num + 1
        except (csv.Error, OSError, EOFError):
            return


def lines_of_records(path: Path, schema: FeatureSchema, records: set[int]) -> dict[int, int]:
    """First line of each pyarrow record number (1-based over non-empty records, the header included)."""
    found: dict[int, int] = {}
    k = 0
    for number, _ in _records(path, schema):
        k += 1
        if k in records:
            found[k] = number
            if len(found) == len(records):
                break
    return found


def at_record(path: Path, schema: FeatureSchema, record: Optional[int]) -> str:
    line = lines_of_records(path, schema, {record}).get(record) if record is not None else None
    return f"{path}:{line}" if line is not None else str(path)


def record_of_row(path: Path, schema: FeatureSchema, data_row: int) -> Optional[tuple[int, dict[str, str]]]:
    """(first line, cells by column) of data row ``data_row`` (0-based, valid rows only): a re-scan
    of the file as pyarrow splits it, for error messages."""
    names: Optional[list[str]] = list(schema.input.columns) if not schema.input.header else None
    row = 0
    for number, fields in _records(path, schema):
        if names is None:
            names = fields
            continue
        if len(fields) != len(names):
            continue  # a malformed line: skipped, not a data row
        if row == data_row:
            return number, dict(zip(names, fields))
        row += 1
    return None


def line_of_row(path: Path, schema: FeatureSchema, data_row: int) -> Optional[int]:
    """The line where data row ``data_row`` starts."""
    found = record_of_row(path, schema, data_row)
    return found[0] if found else None


def cell_text(batch: pa.RecordBatch, schema: FeatureSchema, column: str, row: int) -> object:
    """A cell as the file holds it (CSV: its text, e.g. ``1e400`` rather than the inf it parsed to)."""
    path, first = origin(batch)
    if file_format(path, schema) != "parquet":
        found = record_of_row(path, schema, first + row)
        if found and column in found[1]:
            return found[1][column]
    return batch.column(column)[row].as_py()


def first_fields(path: Path, schema: FeatureSchema) -> Optional[int]:
    return next((len(fields) for _, fields in _records(path, schema)), None)


# -- CSV -------------------------------------------------------------------------------------------
_CONVERSION = re.compile(r"column #(\d+): (?:Row #\d+: )?CSV conversion error to \w+: invalid value '(.*)'", re.S)


def _line_of_quoted(path: Path, schema: FeatureSchema, value: str) -> Optional[int]:
    """The first line holding ``"value"`` as a whole quoted field: a cell that would be missing
    unquoted (empty, or in null_values) is a conversion error only when quoted, and Python's csv
    module does not say what was quoted."""
    d = re.escape(delimiter_of(file_format(path, schema), schema))
    field_re = re.compile(rf'(^|{d})"{re.escape(value)}"({d}|$)')
    with _text_lines(path) as text:
        for number, line in enumerate(text, start=1):
            if field_re.search(line.rstrip("\r\n")):
                return number
    return None


def _line_of_value(path: Path, schema: FeatureSchema, index: int, value: str) -> Optional[int]:
    """The first line whose data row holds ``value`` in field ``index``: a re-scan, for error messages."""
    if value in ("", *schema.input.null_values):
        line = _line_of_quoted(path, schema, value)
        if line is not None or value != "":
            return line
    # pyarrow names the value as it parsed it, surrounding spaces trimmed (" >50K" -> ">50K"); a cell
    # of spaces only is trimmed to "" (an empty cell, unquoted, is missing: no error)
    matches = (lambda f: f.strip(" \t") == value) if value else (lambda f: f != "" and not f.strip(" \t"))
    expected = None
    for number, fields in _records(path, schema):
        if expected is None:
            expected = len(schema.input.columns) if not schema.input.header else len(fields)
            if schema.input.header:
                continue
        if len(fields) == expected and index < len(fields) and matches(fields[index]):
            return number
    return None


_NOT_UTF8 = re.compile(r"column #(\d+): (?:Row #\d+: )?CSV conversion error to \w+: invalid UTF8 data")


def _line_not_utf8(path: Path, schema: FeatureSchema, index: int) -> Optional[int]:
    """The first line of a record whose field ``index`` is not UTF-8 (read with replacement characters)."""
    for number, fields in _records(path, schema):
        if index < len(fields) and "\ufffd" in fields[index]:
            return number
    return None


def conversion_error(path: Path, schema: FeatureSchema, names: list[str], e: Exception) -> Optional[PreprocessError]:
    """pyarrow's error for a numeric cell that does not parse, or a text cell that is not UTF-8, with
    its line found by a re-scan (pyarrow names the column by index and the record, not the line)."""
    bad_text = _NOT_UTF8.search(str(e))
    if bad_text:
        index = int(bad_text.group(1))
        column = names[index] if index < len(names) else f"#{index + 1}"
        line = _line_not_utf8(path, schema, index)
        return PreprocessError(f"{f'{path} line {line}' if line is not None else path}, column {column!r}: the cell "
                               "is not UTF-8 text; save the file as UTF-8")
    m = _CONVERSION.search(str(e))
    if not m:
        return None
    index, value = int(m.group(1)), m.group(2)
    column = names[index] if index < len(names) else f"#{index + 1}"
    line = _line_of_value(path, schema, index, value)
    at = f"{path} line {line}" if line is not None else str(path)
    return PreprocessError(f"{at}, column {column!r}: {value!r} is not a number, {read_as_number(schema, column)}")


def read_as_number(schema: FeatureSchema, column: str) -> str:
    """Why a cell of ``column`` had to be a number, and what would be valid: a label cannot be
    missing (null_values is no remedy for it) but may be categorical; other cells may be missing."""
    if column == schema.label.column and not schema.label.categorical:
        return ("but the label column is read as a number (0 or 1, or compared with label.threshold); for a "
                f"label of text values give label = {{ column = {column!r}, positive = [...] }} (the values "
                "that are 1; every other value is 0, or add negative = [...] to refuse any other value)")
    return ("but the schema reads this column as a number (a dense feature or the time column); fix the data, "
            "or list the value in input.null_values to read it as missing")
