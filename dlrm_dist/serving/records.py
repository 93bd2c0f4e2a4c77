"""Raw rows for scoring, read as preprocessing read them, and what is wrong with a bad one.

Rows come from a list of dicts (the Python API, dlrm-serve), a JSON-lines file, or a CSV/TSV/
Parquet file in the schema's input format (the files are read by row_files.py). Every source becomes raw record batches, which
data/columnar/read.py's typed reads turn into what the encoder takes (``num:``/``text:``
fields, each cell checked: a number must be finite, and so on), exactly as in preprocessing:

- files: read.py's own CSV/TSV (delimiter, quoting, header, ``null_values``) and Parquet
  readers; Criteo's fixed layout by its own parser. Malformed lines are refused (a score per
  input row, in order), not skipped as preprocessing skips them.
- records and JSON lines: each cell as a CSV file of them would hold it (a number as its
  text, ``null`` or a key's value in ``input.null_values`` as missing, a list for a multi-hot
  column joined by its delimiter), so a value means what it meant in the training file.
  (JSON lines are parsed line by line, so a problem is named by its line.)
- a number for an ``int_modulo`` feature (its column read by int_modulo features only, not split
  or cut) means what it meant in training (``integer_columns``): its value when the schema's input
  format is parquet (an integer column, as columns.py ``_text_read`` keeps it), its decimal text read
  in base 16 for csv/tsv/criteo_tsv; refused by name when the format is unset (the export cannot
  tell). A string keeps the text rule. The same holds for a record batch's (or a Parquet input
  file's) number columns.

The label and the time column are not needed to score: absent, they are read as missing. A
feature column absent from a file, a record without a feature key (give ``null`` for a
missing value), or a cell the reader or the encoder refuses is a ``FieldProblem``; they are
raised together as one ``RecordError`` (exit 2). Which row and column failed is found by
running the real reader and encoder on halves of the batch (on the error path only), so a
row is refused exactly when preprocessing would have refused it, with its message.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm_dist.data.columnar import read
from dlrm_dist.errors import EXIT_BAD_INPUT, DlrmError
from dlrm_dist.features.schema import FeatureSchema, SplitSpec

RECORDS = "records"  # the origin of rows given as a list of dicts
MAX_PROBLEMS = 20  # problems collected in one error (a server's 422 lists them)
SHOWN = 3  # problems named in the error's message
JSONL = (".jsonl", ".ndjson")
PARQUET = (".parquet", ".pq")
COLUMN_NAMED = re.compile(r"column '((?:[^'\\]|\\.)*)'")
_FEATURE = re.compile(r"feature '((?:[^'\\]|\\.)*)'")


@dataclass(frozen=True)
class FieldProblem:
    """What is wrong with one cell: ``record`` is the 0-based index in a list of records, or the
    1-based line (row, for Parquet) of a file; ``column`` "" when the whole record is wrong."""

    record: int
    column: str
    value: Any
    message: str


class RecordError(DlrmError):
    """Rows to score that cannot be read or encoded; ``problems`` names each (at most MAX_PROBLEMS)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: Sequence[FieldProblem], origin: str = RECORDS, unit: str = "record") -> None:
        self.problems, self.origin, self.unit = list(problems), origin, unit
        shown = "; ".join(self.describe(p) for p in self.problems[:SHOWN])
        more = len(self.problems) - SHOWN
        super().__init__(shown + (f" (and {more}{'+' if len(self.problems) >= MAX_PROBLEMS else ''} more)"
                                  if more > 0 else ""))

    def describe(self, p: FieldProblem) -> str:
        # record 0 of a file: the whole file (its lines and rows are 1-based)
        at = f"record {p.record}" if self.origin == RECORDS else \
            f"{self.origin} {self.unit} {p.record}" if p.record else self.origin
        cell = f", column {p.column!r}" if p.column else ""
        value = f" (value {_short(p.value)})" if p.value is not None else ""
        return f"{at}{cell}{value}: {p.message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class InputColumn:
    """A column scoring reads: ``number`` (a dense feature), ``text`` (a categorical one) or ``list``
    (multi-hot: a delimited string or a JSON list); ``required`` columns must be given (their value
    may be null, read as missing); the label and the time column are not required."""

    name: str
    kind: Literal["number", "text", "list"]
    required: bool


def input_columns(schema: FeatureSchema) -> list[InputColumn]:
    """The columns a record to score holds, features first."""
    optional = optional_columns(schema)
    out = []
    for c in schema.columns():
        users = [s for s in schema.sparse if s.column == c]
        kind = "list" if any(s.multi_hot for s in users) else "text" if users or c in read.text_columns(schema) else "number"
        out.append(InputColumn(c, kind, c not in optional))
    return sorted(out, key=lambda col: not col.required)


def optional_columns(schema: FeatureSchema) -> list[str]:
    """The label and the time column, unless a feature reads them too."""
    features = {d.column for d in schema.dense} | {s.column for s in schema.sparse}
    cols = [schema.label.column] + ([schema.split.column] if schema.split.column else [])
    return [c for c in dict.fromkeys(cols) if c not in features]


# -- what a number means for an int_modulo feature --------------------------------------------------
def integer_columns(schema: FeatureSchema) -> dict[str, str]:
    """Columns whose numbers mean something else by the training files' format: those read only by
    ``int_modulo`` features that neither split nor cut them (columns.py ``_text_read``: a Parquet
    integer column of theirs stays integers, its value the id; a text cell is read in base 16).
    Each maps to the rule training used for a number: ``value`` (input format parquet), ``text``
    (csv/tsv/criteo_tsv: the decimal text a CSV cell holds, read in base 16) or ``unknown`` (the
    format was taken from each file's name, so the export cannot say which files trained it)."""
    rule = {"parquet": "value", None: "unknown"}.get(schema.input.format, "text")
    out = {}
    for c in read.text_columns(schema):
        users = [f for f in schema.sparse if f.column == c]
        if users and all(f.integer_ids and not f.multi_hot and f.prefix is None for f in users):
            out[c] = rule
    return out


def unknown_rule(column: str, schema: FeatureSchema) -> str:
    """Why a number in ``column`` is refused when the export cannot tell the training format."""
    names = [f.name for f in schema.sparse if f.column == column]
    return (f"int_modulo feature(s) {names} take a Parquet integer column's value as the id but read a CSV cell's "
            "text in base 16, and the schema's input.format is unset (each training file's format came from its "
            "name), so the export cannot tell which rule trained the model: give the id as a string (read in "
            "base 16, as a text file's cell), or re-export with input.format set in the schema")


def _integer_cell(value: Any) -> tuple[Optional[int], Optional[str]]:
    """A number as a Parquet integer (or whole-float) column's value, as read.py reads it."""
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if not (np.isfinite(x) and x == np.floor(x) and abs(x) < 2.0**63):
            return None, (f"{x!r} is not a whole number, but hash = \"int_modulo\" takes the column's values as "
                          "integer ids")
        value = int(x)
    v = int(value)
    if not -2**63 <= v < 2**63:
        return None, f"{v} does not fit a 64-bit integer column (the ids training read)"
    return v, None


def detached(schema: FeatureSchema) -> FeatureSchema:
    """``schema`` for rows that are not lines of a text file (records, JSON lines, Parquet): located by
    row, so that an error message never re-scans a file as CSV to find a line."""
    split = schema.split if schema.split.by != "day" else SplitSpec()  # (days apply to criteo_tsv only)
    return dataclasses.replace(schema, input=dataclasses.replace(schema.input, format="parquet"), split=split)


def text_problem(text: str) -> Optional[str]:
    """Why ``text`` cannot be a cell (a lone UTF-16 surrogate, as JSON's "\\udfff" or a Python str may
    hold, has no UTF-8 form, so no training file held it), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"not valid UTF-8 text: a lone surrogate {text[e.start]!r} at character {e.start} (a training "
                "file's cell is UTF-8 text; give the text it held)")
    return None


# -- rows -> raw batches (every column as text, as a CSV file holds it) --------------------------
def _cell(value: Any, delimiter: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(the cell's text, None) or (None, why it is not a cell value)."""
    if isinstance(value, str):
        return (None, why) if (why := text_problem(value)) else (value, None)
    if value is None:
        return value, None
    if isinstance(value, bool):
        return None, "true/false is not a cell value: give a number or a string (as the training file held it)"
    if isinstance(value, (int, np.integer)):
        return str(int(value)), None
    if isinstance(value, (float, np.floating)):
        return repr(float(value)), None  # the shortest text that reads back as the same double
    if isinstance(value, (list, tuple)) and delimiter is not None:
        parts = [_cell(v, None) for v in value]
        bad = next((why for _, why in parts if why), None)
        if bad or any(t is None for t, _ in parts):
            return None, f"a list for a multi-hot column holds strings or numbers only ({bad or 'null inside'})"
        return delimiter.join(t for t, _ in parts), None
    return None, f"a {type(value).__name__} is not a cell value: give a number, a string or null"


def records_batch(records: Sequence[Any], schema: FeatureSchema, numbers: Optional[Sequence[int]] = None,
                  first: int = 0, integers: Optional[Mapping[str, str]] = None) -> tuple[pa.RecordBatch, list[FieldProblem]]:
    """The raw batch of ``records`` (one string column per input column; null = missing) and the
    problems found on the way (a record that is not a mapping, a missing key, a value of no cell
    type). ``numbers`` name the records in problems (default: their index from ``first``).
    ``integers`` (integer_columns of the training schema) says what a number means in an int_modulo
    column: ``value`` makes it an integer column as the Parquet file held it (a batch mixing
    numbers and strings there is refused), ``unknown`` refuses it, ``text`` keeps its text."""
    numbers = list(numbers) if numbers is not None else list(range(first, first + len(records)))
    integers = dict(integers or {})
    cols = input_columns(schema)
    nulls = {"", *schema.input.null_values}
    delimiters = {c.name: next(s.delimiter for s in schema.sparse if s.column == c.name and s.multi_hot)
                  for c in cols if c.kind == "list"}
    problems: list[FieldProblem] = []
    cells: dict[str, list[Optional[str]]] = {c.name: [] for c in cols}
    for k, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            problems.append(FieldProblem(numbers[k], "", _short(rec), f"a record is an object of column: value "
                                         f"pairs, not a {type(rec).__name__}"))
        for c in cols:
            value = rec.get(c.name) if isinstance(rec, Mapping) else None
            if isinstance(rec, Mapping) and c.required and c.name not in rec:
                problems.append(FieldProblem(numbers[k], c.name, None, "missing: every record needs this column "
                                             "(null for a missing value)"))
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            rule = integers.get(c.name) if number else None
            if rule == "unknown":
                problems.append(FieldProblem(numbers[k], c.name, value, unknown_rule(c.name, schema)))
                text, why = None, None
            elif rule == "value":
                text, why = _integer_cell(value)
            else:
                text, why = _cell(value, delimiters.get(c.name))
            if why:
                problems.append(FieldProblem(numbers[k], c.name, value, why))
            cells[c.name].append(None if isinstance(text, str) and text in nulls else text)
    arrays = [_column(name, values, numbers, problems) for name, values in cells.items()]
    batch = pa.RecordBatch.from_arrays(arrays, names=list(cells))
    return batch, problems[:MAX_PROBLEMS]


def _column(name: str, values: list[Any], numbers: Sequence[int], problems: list[FieldProblem]) -> pa.Array:
    """A string column, or an int64 one when the cells are integers (an int_modulo column's values,
    as a Parquet file held them). A Parquet column has one type: numbers and strings together are
    refused, the records holding the fewer of the two named."""
    ints = [k for k, v in enumerate(values) if isinstance(v, int)]
    if not ints:
        return pa.array(values, pa.string())
    texts = [k for k, v in enumerate(values) if isinstance(v, str)]
    if texts:
        odd, kind = (ints, "a number") if len(ints) <= len(texts) else (texts, "a string")
        for k in odd:
            problems.append(FieldProblem(numbers[k], name, values[k], f"{kind} among the batch's "
                                         f"{'strings' if kind == 'a number' else 'numbers'}: training read one "
                                         "Parquet column of one type (numbers: their value is the id; strings: read "
                                         "in base 16); send these records in another batch, or all ids alike"))
        return pa.nulls(len(values), pa.string())
    return pa.array(values, pa.int64())


def numeric_columns(raw: pa.RecordBatch, integers: Mapping[str, str]) -> dict[str, str]:
    """The int_modulo columns of a typed batch (a record batch, Parquet) that hold numbers, and their rule."""
    out = {}
    for c, rule in integers.items():
        if c in raw.schema.names:
            kind = raw.schema.field(c).type
            if pa.types.is_integer(kind) or pa.types.is_floating(kind):
                out[c] = rule
    return out


def as_trained(raw: pa.RecordBatch, integers: Mapping[str, str]) -> pa.RecordBatch:
    """A batch's number columns of int_modulo features read as training read them: a model trained
    on text files read a cell's decimal text in base 16, so the numbers become that text (``value``
    keeps them; ``unknown`` is refused by the caller before this)."""
    for c, rule in numeric_columns(raw, integers).items():
        if rule == "text":
            i = raw.schema.get_field_index(c)
            raw = raw.set_column(i, c, pc.cast(raw.column(c), pa.string()))
    return raw


def typed(raw: pa.RecordBatch, schema: FeatureSchema, origin: str, first: int) -> pa.RecordBatch:
    """read.py's typed reads of a raw batch (its absent optional columns read as missing)."""
    for c in optional_columns(schema):
        if c not in raw.schema.names:
            kind = pa.string() if c in read.text_columns(schema) else pa.float64()
            raw = raw.append_column(c, pa.nulls(raw.num_rows, kind))
    return read.typed(raw, schema, Path(origin), first)  # the one typed read of a batch


# -- which row and column failed -----------------------------------------------------------------
def _fails(step: Callable[[pa.RecordBatch], Any], batch: pa.RecordBatch) -> Optional[Exception]:
    try:
        step(batch)
    except (DlrmError, pa.ArrowException) as e:
        return e
    return None


def problems_of(step: Callable[[pa.RecordBatch], Any], batch: pa.RecordBatch, number: Callable[[int], int],
                origin: str, schema: FeatureSchema) -> list[FieldProblem]:
    """The rows ``step`` (read + encode) refuses, found by bisection, each with its column and message."""
    found: list[FieldProblem] = []
    lo = 0
    while lo < batch.num_rows and len(found) < MAX_PROBLEMS and _fails(step, batch.slice(lo)):
        good, bad = 0, batch.num_rows - lo  # the first failing row is within [lo + good, lo + bad)
        while bad - good > 1:
            mid = (good + bad) // 2
            if _fails(step, batch.slice(lo, mid)):
                bad = mid
            else:
                good = mid
        row = lo + bad - 1
        error = _fails(step, batch.slice(row, 1))
        found.append(_problem(error, batch, row, number(row), origin, schema))
        lo = row + 1
    return found


def _problem(error: Optional[Exception], batch: pa.RecordBatch, row: int, number: int, origin: str,
             schema: FeatureSchema) -> FieldProblem:
    text = str(error) if error else "refused"
    m = COLUMN_NAMED.search(text) or _FEATURE.search(text)
    column = m.group(1) if m else ""
    column = {f.name: f.column for f in (*schema.dense, *schema.sparse)}.get(column, column) if m and m.re is _FEATURE \
        else column
    value = _raw_value(batch, column, row)
    if text.startswith(origin):  # the reader's "FILE row R": the problem names its record itself
        text = text.split(": ", 1)[-1]
    return FieldProblem(number, column, value, text)


def _raw_value(batch: pa.RecordBatch, column: str, row: int) -> Any:
    """The cell as given (a typed batch holds it as its typed reads)."""
    for name in (column, read.field_name(read.TEXT, column), read.field_name(read.NUM, column)):
        if column and name in batch.schema.names:
            return batch.column(name)[row].as_py()
    return None
