"""Raw-row input files for scoring: CSV/TSV/Parquet in the schema's input format, and JSON lines.

A file is read in blocks of bounded size (``FileRows``), with read.py's own readers, and each
block becomes a raw record batch for records.py's typed reads and error finding; ``--keep``
columns are carried beside the scores. A malformed line, a file or cell that is not UTF-8 and a
missing column are named by file, line (the header is line 1) and column, as preprocessing names
them (data/columnar/locate.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from dlrm_dist.data.columnar import columns, locate, read
from dlrm_dist.errors import DlrmError
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.serving.records import (COLUMN_NAMED, JSONL, MAX_PROBLEMS, PARQUET, FieldProblem, RecordError, detached,
                                       integer_columns, optional_columns, records_batch, text_problem)


def file_kind(path: Path, schema: FeatureSchema) -> str:
    """jsonl | parquet | criteo_tsv | csv | tsv: JSON lines and Parquet by their names, text files in
    the schema's input format."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(JSONL):
        return "jsonl"
    if name.endswith(PARQUET):
        return "parquet"
    return locate.file_format(path, schema)


def header_names(path: Path, schema: FeatureSchema, kind: str) -> list[str]:
    """The columns a file holds (its header, its Parquet schema, or input.columns)."""
    if kind == "parquet":
        try:
            return pq.ParquetFile(str(path)).schema_arrow.names
        except (pa.ArrowInvalid, OSError) as e:
            raise RecordError([FieldProblem(0, "", None, f"not a readable Parquet file ({e})")], str(path), "row") from None
    if not schema.input.header:
        return list(schema.input.columns or ())
    try:
        reader = pa_csv.open_csv(str(path), read_options=pa_csv.ReadOptions(block_size=1 << 16, use_threads=False),
                                 parse_options=_parse_options(kind, schema))
        try:
            names = reader.schema.names
        finally:
            reader.close()
    except UnicodeDecodeError:  # the header's names are not UTF-8 (e.g. a UTF-16 file)
        raise RecordError([FieldProblem(1, "", None, not_utf8(path))], str(path), "line") from None
    except (pa.ArrowInvalid, OSError) as e:  # the first block's lines are parsed with the header
        raise RecordError([csv_problem(path, schema, kind, e)], str(path), "line") from None
    return names


def not_utf8(path: Path) -> str:
    """Where a text file stops being UTF-8 (its first bad byte's offset, for a plain file)."""
    where = ""
    if not path.name.lower().endswith(".gz"):
        with path.open("rb") as f:
            head = f.read(1 << 16)
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as u:
            where = f" (byte 0x{head[u.start]:02x} at offset {u.start})"
    return f"not UTF-8 text{where}: scoring reads text files as UTF-8, as preprocessing did; save the file as UTF-8"


_ROW = re.compile(r"Row #(\d+)")
_COLUMN_INDEX = re.compile(r"column #(\d+)")


def csv_problem(path: Path, schema: FeatureSchema, kind: str, e: "BaseException | str",
                names: Optional[Sequence[str]] = None) -> FieldProblem:
    """pyarrow's error reading a text file as the problem of its line and column: pyarrow names the
    record ("Row #N", 1-based, the header included) and the 0-based column; the line is found by
    preprocessing's own re-scan (locate.lines_of_records: a quoted cell may span lines)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    row = _ROW.search(text)
    line = locate.lines_of_records(path, schema, {int(row.group(1))}).get(int(row.group(1))) if row else None
    col = _COLUMN_INDEX.search(text)
    if names is None and col:
        names = _header_fields(path, schema)
    column = names[int(col.group(1))] if col and names and int(col.group(1)) < len(names) else ""
    return FieldProblem(line or 0, column, None, f"cannot be read as {kind.upper()} ({text})")


def _header_fields(path: Path, schema: FeatureSchema) -> Optional[list[str]]:
    if not schema.input.header:
        return list(schema.input.columns or ())
    return next((fields for _, fields in locate._records(path, schema) if fields and fields != [""]),  # noqa: SLF001
                None)


def _parse_options(kind: str, schema: FeatureSchema) -> pa_csv.ParseOptions:
    return pa_csv.ParseOptions(delimiter=locate.delimiter_of(kind, schema), quote_char='"' if kind == "csv" else False)


def check_columns(path: Path, schema: FeatureSchema, names: list[str], keep: Sequence[str], unit: str) -> None:
    """A feature column or a --keep column the file lacks is named (with the columns it has)."""
    optional = set(optional_columns(schema))
    missing = [c for c in schema.columns() if c not in names and c not in optional]
    missing += [c for c in keep if c not in names and c not in missing]
    if missing:
        raise RecordError([FieldProblem(1 if unit == "line" else 0, c, None,
                                        f"the file has no column {c!r} (it has {names})") for c in missing],
                          str(path), unit)


@dataclass
class Block:
    """Rows read from a file: the raw batch (criteo_tsv: already typed, by its own parser), how its
    row i is named in a problem (a line, or a Parquet row), and the kept columns' cells."""

    raw: pa.RecordBatch
    first: int  # the block's first data row in the file
    typed: bool
    number: Callable[[int], int]
    kept: dict[str, list[Any]]


class FileRows:
    """The rows of one input file, in order, in blocks of bounded size."""

    def __init__(self, path: Path, schema: FeatureSchema, keep: Sequence[str] = (), block_rows: int = 65536) -> None:
        self.path, self.schema, self.keep, self.block_rows = Path(path), schema, list(keep), block_rows
        if not self.path.is_file():
            raise RecordError([FieldProblem(0, "", None, "no such file")], str(path), "line")
        self.kind = file_kind(self.path, schema)
        self.unit = "row" if self.kind == "parquet" else "line"
        self.has_label = True  # known once the header is read

    def blocks(self) -> Iterator[Block]:
        if self.kind == "jsonl":
            yield from self._jsonl()
            return
        names = header_names(self.path, self.schema, self.kind) if self.kind != "criteo_tsv" else \
            list(self.schema.input.columns or ())
        check_columns(self.path, self.schema, names, self.keep, self.unit)
        self.has_label = self.schema.label.column in names
        wanted = [c for c in self.schema.columns() if c in names]
        kept = _KeptCells(self._kept_batches(names)) if self.keep else None
        row = 0
        for batch in self._raw(wanted):
            number = self._numbers(batch, row)
            yield Block(batch, row, self.kind == "criteo_tsv", number, kept.take(batch.num_rows) if kept else {})
            row += batch.num_rows
        if not row:
            raise self.no_rows()

    def no_rows(self) -> RecordError:
        """A file with nothing to score (empty, a header only, blank lines) is refused, whatever its kind."""
        return RecordError([FieldProblem(0, "", None, "the file holds no rows to score")], str(self.path), self.unit)

    def _raw(self, wanted: list[str]) -> Iterator[pa.RecordBatch]:
        bad = read.BadLines(strict=True)  # a score per row: a malformed line is an error, not skipped
        if self.kind == "criteo_tsv":
            stream = (b for _, _, b in read.read_inputs([self.path], self.schema, bad))
        elif self.kind == "parquet":
            stream = read._read_parquet(self.path, wanted)  # noqa: SLF001 - preprocessing's own reader
        else:
            stream = read._read_csv(self.path, self.schema, self.kind, wanted, bad)  # noqa: SLF001 - ditto
        try:
            while True:
                try:
                    batch = next(stream)
                except StopIteration:
                    return
                except DlrmError as e:
                    raise self.error(e) from None
                if batch.num_rows:
                    yield batch
        finally:
            stream.close()

    def _numbers(self, batch: pa.RecordBatch, first: int) -> Callable[[int], int]:
        """Row i of a block -> its line (CSV: found by a re-scan, on the error path only) or Parquet row."""
        if self.kind == "criteo_tsv":
            return lambda i: int(batch.column(locate.LINE_FIELD)[i].as_py()) + 1
        if self.kind == "parquet":
            return lambda i: first + i + 1
        return lambda i: locate.line_of_row(self.path, self.schema, first + i) or first + i + 1

    def error(self, e: DlrmError) -> RecordError:
        """A reader's error (a malformed line, a cell pyarrow does not parse) as a problem of its line."""
        text = str(e)
        m = re.search(rf"{re.escape(str(self.path))}(?::| line | row )(\d+)", text)
        col = COLUMN_NAMED.search(text)
        column = col.group(1) if col and col.group(1) in self.schema.columns() else ""
        if not m and _ROW.search(text) and self.unit == "line":  # pyarrow's record number, not yet a line
            return RecordError([csv_problem(self.path, self.schema, self.kind, _inner(text, str(self.path)))],
                               str(self.path), self.unit)
        if text.startswith(str(self.path)):
            text = re.sub(rf"^{re.escape(str(self.path))}(?::\d+| line \d+| row \d+)?(?:, column '[^']*')?:?\s*", "",
                          text)
        return RecordError([FieldProblem(int(m.group(1)) if m else 0, column, None, text)], str(self.path), self.unit)

    def _kept_batches(self, names: list[str]) -> Iterator[pa.RecordBatch]:
        if self.kind == "parquet":
            yield from pq.ParquetFile(str(self.path)).iter_batches(batch_size=self.block_rows, columns=self.keep)
            return
        kind = "tsv" if self.kind == "criteo_tsv" else self.kind
        opts = pa_csv.ReadOptions(block_size=columns.BLOCK_BYTES, use_threads=False,
                                  column_names=None if self.schema.input.header else names)
        convert = pa_csv.ConvertOptions(include_columns=self.keep, column_types={c: pa.string() for c in self.keep},
                                        strings_can_be_null=False)
        reader = pa_csv.open_csv(str(self.path), read_options=opts, parse_options=_parse_options(kind, self.schema),
                                 convert_options=convert)
        try:
            yield from reader
        except pa.ArrowInvalid as e:  # a malformed line or a cell that is not UTF-8, named by its line
            raise RecordError([csv_problem(self.path, self.schema, kind, e, names)], str(self.path), self.unit) from None
        finally:
            reader.close()

    def _jsonl(self) -> Iterator[Block]:
        detached_schema = detached(self.schema)
        lines, records, row = [], [], 0
        with self.path.open("rb") as f:
            for number, raw_line in enumerate(f, start=1):
                text = raw_line.strip()
                if not text:
                    continue
                try:
                    records.append(json.loads(text))
                except (ValueError, RecursionError) as e:
                    raise RecordError([FieldProblem(number, "", text[:80].decode("utf-8", "replace"),
                                                    f"not a JSON object ({type(e).__name__}: {e})")],
                                      str(self.path), "line") from None
                lines.append(number)
                if len(records) == self.block_rows:
                    yield self._records_block(records, lines, row, detached_schema)
                    row += len(records)
                    lines, records = [], []
        if records:
            yield self._records_block(records, lines, row, detached_schema)
        elif not row:
            raise self.no_rows()

    def _kept_missing(self, records: list, lines: list[int]) -> list[FieldProblem]:
        """A --keep column a line lacks is refused by name, as a CSV file without the column is (an
        empty output cell would look like a kept value)."""
        out = []
        for k, r in enumerate(records):
            for c in self.keep if isinstance(r, Mapping) else ():
                if c not in r:
                    out.append(FieldProblem(lines[k], c, None, f"no key {c!r}: every line needs each --keep column "
                                            "(null for an empty cell)"))
                elif isinstance(r[c], str) and (why := text_problem(r[c])):
                    out.append(FieldProblem(lines[k], c, r[c], why))  # (the output file is UTF-8 too)
        return out[:MAX_PROBLEMS]

    def _records_block(self, records: list, lines: list[int], row: int, schema: FeatureSchema) -> Block:
        batch, problems = records_batch(records, schema, lines, integers=integer_columns(self.schema))
        problems = (problems + self._kept_missing(records, lines))[:MAX_PROBLEMS]
        if problems:
            raise RecordError(problems, str(self.path), "line")
        self.has_label = self.has_label and all(isinstance(r, Mapping) and r.get(self.schema.label.column) is not None
                                                for r in records)
        kept = {c: [r.get(c) for r in records] for c in self.keep}
        return Block(batch, row, False, lambda i, lines=lines: lines[i], kept)


def _inner(text: str, path: str) -> str:
    """pyarrow's own words inside a reader's "FILE: cannot be read as CSV (...)"."""
    m = re.match(rf"^{re.escape(path)}: cannot be read as \w+ \((.*)\)$", text, re.S)
    return m.group(1) if m else text


class _KeptCells:
    """The --keep columns' cells, taken in step with the feature read's batches."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self.batches, self.buffer = batches, None

    def take(self, n: int) -> dict[str, list[Any]]:
        parts, have = [], 0
        while have < n:
            if self.buffer is None or not self.buffer.num_rows:
                self.buffer = next(self.batches, None)
                if self.buffer is None:
                    break
            piece = self.buffer.slice(0, n - have)
            self.buffer = self.buffer.slice(piece.num_rows)
            parts.append(piece)
            have += piece.num_rows
        table = pa.Table.from_batches(parts) if parts else None
        return {c: table.column(c).to_pylist() if table is not None else [] for c in (table.schema.names if table else [])}
