"""Streaming the schema's columns out of CSV/TSV (plain or gzip) and Parquet files with pyarrow.

Files are read in record batches of bounded size, only the columns the schema names.
Malformed CSV lines (a wrong number of fields) are skipped, counted, and the first few
reported by file and line. A column the schema names that a file lacks, or a numeric
column holding text, is a SchemaError naming the file and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema

BLOCK_BYTES = 8 << 20  # CSV bytes per record batch: bounds memory whatever the file size
PARQUET_ROWS = 1 << 18
REPORTED = 10


@dataclass
class BadLines:
    """Malformed lines met while reading: a count and the first few, by file and line."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    strict: bool = False
    fatal: Optional[str] = None  # strict: the first malformed line, raised by the reader

    def add(self, where: str, why: str) -> str:
        """Records a malformed line; returns what pyarrow should do with it."""
        if self.strict:
            self.fatal = f"{where}: {why} (--strict stops at the first malformed line)"
            return "error"
        self.count += 1
        if len(self.examples) < REPORTED:
            self.examples.append(f"{where}: {why}")
        return "skip"


def file_format(path: Path, schema: FeatureSchema) -> str:
    if schema.input.format:
        return schema.input.format
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "tsv" if name.endswith((".tsv", ".tab", ".txt")) else "csv"


def _delimiter(fmt: str, schema: FeatureSchema) -> str:
    return schema.input.delimiter or ("\t" if fmt == "tsv" else ",")


def numeric_columns(schema: FeatureSchema) -> list[str]:
    """Columns read as numbers: dense features, the label, the time column."""
    cols = [d.column for d in schema.dense] + [schema.label.column]
    return cols + ([schema.split.column] if schema.split.column else [])


def _types(schema: FeatureSchema, wanted: list[str]) -> dict[str, pa.DataType]:
    numeric = set(numeric_columns(schema))
    return {c: (pa.float64() if c in numeric else pa.string()) for c in wanted}


def _check_columns(path: Path, have: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        raise SchemaError(f"{path}: the schema names column(s) {missing} that the file does not have; "
                          f"its columns are {have}")


def _csv_names(path: Path, schema: FeatureSchema, delimiter: str) -> list[str]:
    if not schema.input.header:
        return list(schema.input.columns or ())
    opts = pa_csv.ReadOptions(block_size=1 << 16)
    # Only the header is wanted here; malformed lines are counted by the real read.
    parse = pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda _row: "skip")
    return pa_csv.open_csv(str(path), read_options=opts, parse_options=parse).schema.names


def _conversion_error(path: Path, e: pa.ArrowInvalid, bad: BadLines) -> PreprocessError:
    if bad.fatal:
        return PreprocessError(bad.fatal)
    m = re.search(r"column #(\d+): Row #(\d+): CSV conversion error to \w+: invalid value '([^']*)'", str(e))
    if not m:
        return PreprocessError(f"{path}: {e}")
    return PreprocessError(
        f"{path}: line {m.group(2)}, column #{m.group(1)}: {m.group(3)!r} is not a number, but the schema reads "
        "this column as a number (a dense feature, the label or the time column); fix the data, or list "
        "the value in input.null_values to read it as missing")


def _read_csv(path: Path, schema: FeatureSchema, fmt: str, wanted: list[str], bad: BadLines) -> Iterator[pa.RecordBatch]:
    delimiter = _delimiter(fmt, schema)
    names = _csv_names(path, schema, delimiter)
    _check_columns(path, names, wanted)

    def handler(row: pa_csv.InvalidRow) -> str:
        line = f"{path}:{row.number}" if row.number is not None else str(path)
        return bad.add(line, f"{row.actual_columns} fields, expected {row.expected_columns}")

    read_opts = pa_csv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False,
                                   column_names=None if schema.input.header else names)
    parse_opts = pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler,
                                     quote_char='"' if fmt == "csv" else False)
    convert = pa_csv.ConvertOptions(include_columns=wanted, column_types=_types(schema, wanted),
                                    null_values=["", *schema.input.null_values],
                                    strings_can_be_null=True, quoted_strings_can_be_null=False)
    try:  # opening reads the first block: a conversion error can come from here too
        reader = pa_csv.open_csv(str(path), read_options=read_opts, parse_options=parse_opts, convert_options=convert)
    except pa.ArrowInvalid as e:
        raise _conversion_error(path, e, bad) from None
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise _conversion_error(path, e, bad) from None
        yield batch


def _read_parquet(path: Path, schema: FeatureSchema, wanted: list[str]) -> Iterator[pa.RecordBatch]:
    try:
        f = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise PreprocessError(f"{path}: not a readable Parquet file ({e})") from None
    _check_columns(path, f.schema_arrow.names, wanted)
    types = _types(schema, wanted)
    for batch in f.iter_batches(batch_size=PARQUET_ROWS, columns=wanted):
        try:
            yield pa.RecordBatch.from_arrays([batch.column(c).cast(types[c]) for c in wanted], names=wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise PreprocessError(f"{path}: a column does not convert as the schema says ({e})") from None


def read_file(path: Path, schema: FeatureSchema, bad: BadLines) -> Iterator[pa.RecordBatch]:
    """The schema's columns of ``path`` in record batches (numeric columns as float64, others as text)."""
    wanted = schema.columns()
    fmt = file_format(path, schema)
    if fmt == "parquet":
        return _read_parquet(path, schema, wanted)
    return _read_csv(path, schema, fmt, wanted, bad)


def read_inputs(paths: list[Path], schema: FeatureSchema, bad: BadLines,
                on_file: Optional[Callable[[Path], None]] = None) -> Iterator[tuple[Path, int, pa.RecordBatch]]:
    """(file, index of the batch's first valid row in that file, batch) over every input in order."""
    for path in paths:
        if on_file:
            on_file(path)
        row = 0
        for batch in read_file(path, schema, bad):
            yield path, row, batch
            row += batch.num_rows
