"""What every input reader shares: which columns a schema reads and how, the typed reads and
their cell checks, the malformed-line record, and pyarrow's CSV handlers.

Each *use* of a column gets its own typed read (``uses``: ``num:<col>`` float64 and/or
``text:<col>``): a column may be a dense feature and a sparse one, or the time column and a
sparse feature. A CSV column with numeric uses only is parsed by pyarrow as numbers; one that
is also text is read as text and its numbers cast here (``typed``). Cells are checked one by
one: a numeric cell must parse to a finite number (``inf``, ``nan`` and ``1e400`` are refused
unless ``input.null_values`` lists them as missing); a bad cell is named by file, line and
column (locate.py finds the line, on the error path only).

Malformed CSV lines (a wrong number of fields) are counted in ``BadLines`` and the first few
reported by file and line. ``Handlers`` opens pyarrow's CSV readers with a row handler each and
says what a failed read means (an unreadable file, a bad cell, the ``--strict`` stop).

Arrow reads CSV ahead on its IO threads, and the reader holds our Python row handler: a
reader released while a read-ahead is in flight is destroyed later on an Arrow thread, which
must then take the GIL to drop the handler. If the interpreter is exiting by then, Python
ends that thread inside a C++ destructor and the process aborts ("terminate called without
an active exception", exit 134). So every CSV read waits, when it ends, until Arrow has let
go of its handlers (``Handlers.wait_released``).

This module is below every reader (read.py's streaming reads, byte_ranges.py, criteo_tsv.py),
so that none of them imports another for these pieces.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from dlrm_dist.data.columnar.locate import (COMPRESSED, ORIGIN_FIRST, ORIGIN_PATH, at_record, cell_text,
                                            conversion_error, delimiter_of, first_fields, is_gzip, lines_of_records,
                                            open_bytes, read_as_number, where)
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema

BLOCK_BYTES = 8 << 20  # CSV bytes per record batch (both CSV readers): bounds memory whatever the file size
REPORTED = 10
RELEASE_SECONDS = 30.0  # how long a finished read waits for Arrow's read-ahead to let go
NUM, TEXT = "num", "text"  # the two typed reads of a column


@dataclass
class BadLines:
    """Malformed lines met while reading: a count and the first few, by file and line.

    pyarrow numbers a malformed row by records, not lines (a quoted cell may hold newlines):
    ``add`` takes that number, and the file's lines are found by one re-scan when the file
    ends (``resolve``), only if it had malformed lines, for the few that are reported.
    """

    count: int = 0
    examples: list[str] = field(default_factory=list)
    strict: bool = False
    fatal: Optional[str] = None  # strict: the first malformed line, raised by the reader
    notes: list[str] = field(default_factory=list)  # what a reader saw that may be a mistake (the report's warnings)
    _pending: list[tuple[int, Optional[int], str]] = field(default_factory=list)  # (example, record, why)

    def add(self, path: Path, schema: FeatureSchema, record: Optional[int], why: str) -> str:
        """Records a malformed line; returns what pyarrow should do with it."""
        if self.strict:
            self.fatal = f"{at_record(path, schema, record)}: {why} (--strict stops at the first malformed line)"
            return "error"
        self.count += 1
        if len(self.examples) < REPORTED:
            self._pending.append((len(self.examples), record, why))
            self.examples.append(f"{path}: {why}")
        return "skip"

    def add_line(self, path: str, line: int, why: str) -> None:
        """A malformed line whose number is known (criteo_tsv's parser counts lines)."""
        if self.strict:
            raise PreprocessError(f"{path}:{line}: {why} (--strict stops at the first malformed line)")
        self.count += 1
        if len(self.examples) < REPORTED:
            self.examples.append(f"{path}:{line}: {why}")

    def resolve(self, path: Path, schema: FeatureSchema) -> None:
        """Names this file's reported malformed lines by their line numbers."""
        if self._pending:
            lines = lines_of_records(path, schema, {r for _, r, _ in self._pending if r is not None})
            for k, record, why in self._pending:
                at = f"{path}:{lines[record]}" if record in lines else str(path)
                self.examples[k] = f"{at}: {why}"
            self._pending.clear()


# -- what is read, and how ----------------------------------------------------------------------
def numeric_columns(schema: FeatureSchema) -> list[str]:
    """Columns read as numbers: dense features, a numeric label, the time column."""
    label = [] if schema.label.categorical else [schema.label.column]
    cols = label + ([schema.split.column] if schema.split.column else [])
    return list(dict.fromkeys(cols + [d.column for d in schema.dense]))


def text_columns(schema: FeatureSchema) -> list[str]:
    """Columns read as text: the sparse features' and a categorical label's (one read per column,
    whatever its uses)."""
    label = [schema.label.column] if schema.label.categorical else []
    return list(dict.fromkeys(label + [s.column for s in schema.sparse]))


def check_uses(schema: FeatureSchema) -> None:
    """A column may serve several uses, but the label may not also be an input: the model
    would be given the answer it is trained to predict."""
    label = schema.label.column
    inputs = [f"dense feature {d.name!r}" for d in schema.dense if d.column == label]
    inputs += [f"sparse feature {s.name!r}" for s in schema.sparse if s.column == label]
    if inputs:
        raise SchemaError(f"column {label!r} is the label and also the input of {', '.join(inputs)}: the model "
                          "would be given the answer; remove the feature (or derive it from another column)")


def uses(schema: FeatureSchema) -> list[tuple[str, str]]:
    """(use, column) of every typed read, numbers first."""
    return [(NUM, c) for c in numeric_columns(schema)] + [(TEXT, c) for c in text_columns(schema)]


def field_name(use: str, column: str) -> str:
    return f"{use}:{column}"


def numbers(batch: pa.RecordBatch, column: str) -> pa.Array:
    """The numeric read of ``column`` (float64, null where the cell is missing)."""
    return batch.column(field_name(NUM, column))


def texts(batch: pa.RecordBatch, column: str) -> pa.Array:
    """The text read of ``column`` (null where the cell is missing)."""
    return batch.column(field_name(TEXT, column))


class _RowHandler:
    """pyarrow's invalid-row callback: counts a malformed line in ``bad`` (None: skips it silently)."""

    def __init__(self, path: Path, schema: FeatureSchema, bad: Optional[BadLines]) -> None:
        self.path, self.schema, self.bad = path, schema, bad

    def __call__(self, row: pa_csv.InvalidRow) -> str:
        if self.bad is None:
            return "skip"
        return self.bad.add(self.path, self.schema, row.number,
                            f"{row.actual_columns} fields, expected {row.expected_columns}")


class Handlers:
    """Opens a file's CSV readers, each with its own row handler, and waits at the end until
    Arrow has dropped them all.

    Arrow drops a handler when the last reference to its reader goes, which may be an IO
    thread's read-ahead finishing after we let go of the reader: see the module docstring.
    The parse options (which hold the handler too) never outlive ``open``, so that nothing
    but Arrow (not a traceback's frames) keeps a handler alive.
    """

    def __init__(self, path: Path, schema: FeatureSchema, fmt: str, bad: BadLines) -> None:
        self.path, self.schema, self.fmt, self.bad = path, schema, fmt, bad
        self.delimiter = delimiter_of(fmt, schema)
        self.names: list[str] = []  # the file's columns, once known (to name a column pyarrow numbers)
        self._live: list[tuple[weakref.ref, threading.Event]] = []

    def open(self, read_opts: pa_csv.ReadOptions, counted: bool,
             convert: Optional[pa_csv.ConvertOptions] = None) -> pa_csv.CSVStreamingReader:
        """A reader whose malformed lines are counted in ``bad`` (or, not ``counted``, skipped silently)."""
        handler = _RowHandler(self.path, self.schema, self.bad if counted else None)
        released = threading.Event()
        self._live.append((weakref.ref(handler, lambda _ref: released.set()), released))
        parse = pa_csv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=handler,
                                    quote_char='"' if self.fmt == "csv" else False)
        del handler
        try:
            return pa_csv.open_csv(str(self.path), read_options=read_opts, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as e:
            raise self.error(e) from None
        finally:
            del parse

    def error(self, e: Exception) -> PreprocessError:
        """What a failed open or read means: the strict stop, a numeric cell, or an unreadable file."""
        if self.bad.fatal:
            return PreprocessError(self.bad.fatal)
        return conversion_error(self.path, self.schema, self.names, e) or unreadable(self.path, e)

    def wait_released(self, seconds: float = RELEASE_SECONDS) -> bool:
        """Waits (without the GIL) until Arrow holds none of them; False on a timeout."""
        return all(ref() is None or released.wait(seconds) for ref, released in self._live)


def unreadable(path: Path, e: Exception) -> PreprocessError:
    text = str(e)
    if "Empty CSV file" in text:  # (pyarrow's word for a header without a line end too)
        with open_bytes(path) as f:
            header = f.read(1 << 16).removeprefix(b"\xef\xbb\xbf").strip()
        if header:
            return PreprocessError(f"{path}: it has no data rows (a header only); every input file must hold data")
        return PreprocessError(f"{path}: the file is empty (no header, no rows)")
    # (a CSV error inside a good gzip stream is an ArrowInvalid: named as CSV below)
    if (isinstance(e, OSError) and path.name.lower().endswith(".gz")) or any(w in text for w in ("compressed", "zlib",
                                                                                              "gzip")):
        return PreprocessError(f"{path}: not a complete gzip file ({text}); a name ending in .gz is read as "
                               "gzip: recompress it, or rename a plain file")
    return PreprocessError(f"{path}: cannot be read as CSV ({text})")


def csv_names(path: Path, schema: FeatureSchema, handlers: Handlers) -> list[str]:
    if not path.name.endswith(COMPRESSED) and is_gzip(path):  # (read as text: an "empty file", a bad header)
        raise PreprocessError(f"{path}: the file holds gzip data, and only a name ending in .gz is read as gzip: "
                              "name it *.gz")
    if schema.input.header:  # (malformed lines skipped silently here: the real read counts them)
        try:
            return handlers.open(pa_csv.ReadOptions(block_size=1 << 16, use_threads=False), counted=False).schema.names
        except UnicodeDecodeError as e:  # (pyarrow decodes the header's names in Python)
            raise PreprocessError(f"{path}: its header line is not UTF-8 text ({e.reason} in a column name); save "
                                  "the file as UTF-8") from None
    names = list(schema.input.columns or ())
    fields = first_fields(path, schema)
    if fields is not None and fields != len(names):
        raise PreprocessError(f"{path}: its first line has {fields} fields but input.columns names {len(names)} "
                              f"({names}); with header = false every line must have one field per name")
    return names



def check_columns(path: Path, have: list[str], wanted: list[str]) -> None:
    """Every column the schema reads is in the file, once (of two, a read would take the first silently)."""
    missing = [c for c in wanted if c not in have]
    if missing:
        raise SchemaError(f"{path}: the schema names column(s) {missing} that the file does not have; "
                          f"its columns are {have}")
    repeated = [c for c in wanted if have.count(c) > 1]
    if repeated:
        raise SchemaError(f"{path}: the file has more than one column named {repeated}, which the schema reads: "
                          "rename them")


# -- typed reads and cell checks ---------------------------------------------------------------------
def first_failing(values: pa.Array, convert: Callable[[pa.Array], pa.Array]) -> int:
    """Index of the first element ``convert`` refuses (bisection: Arrow names the value, not the row)."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(values.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def _in_nanoseconds(t: pa.DataType) -> pa.DataType:
    """A temporal type's nanosecond form (a date's: the timestamp of its midnight)."""
    return pa.time64("ns") if pa.types.is_time(t) else pa.duration("ns") if pa.types.is_duration(t) else \
        pa.timestamp("ns")


def _to_float(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.utf8_trim_whitespace(values)  # as pyarrow's CSV number parsing does
    elif pa.types.is_temporal(values.type):  # Parquet's timestamps, dates, times, durations: in nanoseconds,
        values = pc.cast(pc.cast(values, _in_nanoseconds(values.type)), pa.int64())  # whatever the unit
    # An integer past 2**53 is rounded to the nearest double (epoch nanoseconds, say): the time column's
    # order keeps to a few hundred ns, and a dense value is written as float32 anyway.
    return pc.cast(values, pa.float64(), safe=not pa.types.is_integer(values.type))


def _to_text(values: pa.Array, path: Optional[Path] = None, column: str = "") -> pa.Array:
    if pa.types.is_string(values.type):
        return values
    try:
        return pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:  # a list, struct or non-UTF-8 binary column
        raise PreprocessError(f"{path}: column {column!r} of type {values.type} cannot be read as text for a sparse "
                              f"feature ({str(e).splitlines()[0]}); give a column of strings or numbers") from None


def _number_error(batch: pa.RecordBatch, schema: FeatureSchema, column: str, row: int, value: object, why: str) -> PreprocessError:
    return PreprocessError(f"{where(batch, schema, row)}, column {column!r}: {value!r} {why}, "
                           f"{read_as_number(schema, column)}")


def _numeric(raw: pa.RecordBatch, schema: FeatureSchema, column: str) -> pa.Array:
    values = raw.column(column)
    try:
        x = _to_float(values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        i = first_failing(values, _to_float)
        raise _number_error(raw, schema, column, i, values[i].as_py(), "is not a number") from None
    finite = np.isfinite(x.to_numpy(zero_copy_only=False))
    bad = np.flatnonzero(~finite & ~x.is_null().to_numpy(zero_copy_only=False))
    if bad.size:
        i = int(bad[0])
        raise _number_error(raw, schema, column, i, cell_text(raw, schema, column, i), "is not a finite number")
    return x


def _integral(raw: pa.RecordBatch, schema: FeatureSchema, column: str, values: pa.Array) -> pa.Array:
    """A float column of ids (pandas writes an integer column with gaps as float64) as int64; a value
    that is not a whole number below 2**63 is named."""
    x = values.to_numpy(zero_copy_only=False)
    present = ~values.is_null().to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(present & ~(np.isfinite(x) & (x == np.floor(x)) & (np.abs(x) < 2.0**63)))
    if bad.size:
        i = int(bad[0])
        raise PreprocessError(f"{where(raw, schema, i)}, column {column!r}: {float(x[i])!r} is not a whole number, but "
                              "hash = \"int_modulo\" takes the column's values as integer ids")
    return pa.array(np.where(present, x, 0).astype(np.int64), mask=~present)


def _text_read(raw: pa.RecordBatch, schema: FeatureSchema, path: Path, column: str) -> pa.Array:
    """The text read of ``column``; an integer column (Parquet) that only ``int_modulo`` features
    read stays integers: its decimal text read in base 16 would give other ids."""
    values = raw.column(column)
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        return _to_text(values, path, column)
    users = [f for f in schema.sparse if f.column == column]
    modulo = [f.name for f in users if f.integer_ids]
    cut = [f.name for f in users if f.name in modulo and (f.multi_hot or f.prefix is not None)]
    if cut:
        raise SchemaError(f"{path}: column {column!r} holds numbers ({values.type}), but int_modulo feature(s) {cut} "
                          "split it (delimiter) or cut it (prefix), which needs text: drop those keys")
    if modulo and len(modulo) == len(users):
        return values if pa.types.is_integer(values.type) else _integral(raw, schema, column, values)
    if modulo:
        raise SchemaError(f"{path}: integer column {column!r} is read by int_modulo feature(s) {modulo} and by "
                          f"{[f.name for f in users if f.name not in modulo]}, which read it as text: give the "
                          "int_modulo features a column of their own (or hash = \"fnv1a\")")
    return _to_text(values, path, column)


def typed(raw: pa.RecordBatch, schema: FeatureSchema, path: Path, first: int) -> pa.RecordBatch:
    """One field per (use, column), each checked; the batch's origin in its metadata."""
    raw = raw.replace_schema_metadata({ORIGIN_PATH: str(path), ORIGIN_FIRST: str(first)})
    arrays, names = [], []
    for use, column in uses(schema):
        arrays.append(_numeric(raw, schema, column) if use == NUM else _text_read(raw, schema, path, column))
        names.append(field_name(use, column))
    return pa.RecordBatch.from_arrays(arrays, names=names).replace_schema_metadata(raw.schema.metadata)
