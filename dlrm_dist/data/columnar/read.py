"""Reading the inputs: the schema's columns out of CSV/TSV (plain or gzip), Parquet and Criteo TSV
files as record batches of bounded size, in input order (``read_file`` / ``read_inputs`` /
``read_inputs``).

Only the columns the schema names are read, each use typed and checked by columns.py. A
plain CSV/TSV file of several blocks is read in byte ranges on several cores (byte_ranges.py);
a gzip file, or a CSV holding a quote character (a quoted cell may hold a newline), is read
here by one streaming reader, and its quotes scanned once more after (csv_kernel.quotes: pyarrow
reads a quote never closed as a cell holding the rest of the file; cells holding line ends are
noted); Parquet in row batches. A file that is empty, has no data rows, is not the gzip stream
its name says, or is truncated is a PreprocessError naming it; so is a header-less file whose
lines have another number of fields than ``input.columns`` names.

Every batch carries its origin (file, first data row) in its schema metadata, so that the
encoders can name the line of a bad value without being told where the batch came from.

Input format ``criteo_tsv`` is read by its own parallel parser (criteo_tsv.py) into the same
stream (its workers can also run the encoder: preprocess.py's streaming write calls it so).

The typed-read names (``NUM``/``TEXT``, ``field_name``, ``numbers``, ``numeric_columns``,
``text_columns``, ``BadLines``) are columns.py's, imported here for the readers' callers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from dlrm_dist.data.columnar import byte_ranges, columns, criteo_tsv, csv_kernel
from dlrm_dist.data.columnar.columns import (NUM, TEXT, BadLines, Handlers, check_columns, check_uses,  # noqa: F401
                                             csv_names, field_name, numbers, numeric_columns, text_columns, typed)
from dlrm_dist.data.columnar.locate import ORIGIN_FIRST, ORIGIN_PATH, file_format, line_at, open_bytes, origin
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.schema import FeatureSchema

PARQUET_ROWS = 1 << 18


def _read_csv(path: Path, schema: FeatureSchema, fmt: str, wanted: list[str], bad: BadLines) -> Iterator[pa.RecordBatch]:
    handlers = Handlers(path, schema, fmt, bad)
    # Columns with numeric uses only are parsed as numbers by pyarrow (the fast path); a column
    # that is also text is read as text, and its numbers are cast from it (_numeric).
    text = set(text_columns(schema))
    types = {c: pa.string() if c in text else pa.float64() for c in wanted}
    try:
        handlers.names = names = csv_names(path, schema, handlers)
        check_columns(path, names, wanted)
        read_opts = pa_csv.ReadOptions(block_size=columns.BLOCK_BYTES, use_threads=False,
                                       column_names=None if schema.input.header else names)
        convert = pa_csv.ConvertOptions(include_columns=wanted, column_types=types,
                                        null_values=["", *schema.input.null_values],
                                        strings_can_be_null=True, quoted_strings_can_be_null=False)
        reader = handlers.open(read_opts, counted=True, convert=convert)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as e:
                raise handlers.error(e) from None
            yield batch
        if fmt == "csv":  # (pyarrow reads a quote never closed as a cell holding the rest of the file)
            _check_quotes(path, handlers.delimiter, bad)
    finally:
        reader = None  # drop our reference, then wait for Arrow's
        handlers.wait_released()


def _check_quotes(path: Path, delimiter: str, bad: BadLines) -> None:
    """A quote never closed is an error; quoted cells holding line ends are a note in the report (a
    quote left open by mistake, closed by the next quoted cell, reads the rows between as one cell)."""
    with open_bytes(path) as f:
        found = csv_kernel.quotes(f, delimiter)
    if found.unclosed is not None:
        raise PreprocessError(f"{path} line {line_at(path, found.unclosed)}: a quote opens a cell there that no quote "
                              "closes before the end of the file, which would make the rest of the file that cell's "
                              'text; close it, or double a quote meant as text ("")')
    if found.multiline:
        bad.notes.append(f"{path}: {found.multiline:,} quoted cell(s) hold a line end, the first opening at line "
                         f"{line_at(path, found.first_multiline)}: if that is a quote left open by mistake, the rows "
                         "up to the next quote were read as that cell's text")


# -- Parquet ---------------------------------------------------------------------------------------
def _read_parquet(path: Path, wanted: list[str]) -> Iterator[pa.RecordBatch]:
    try:
        f = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise PreprocessError(f"{path}: not a readable Parquet file ({e})") from None
    check_columns(path, f.schema_arrow.names, wanted)
    batches = f.iter_batches(batch_size=PARQUET_ROWS, columns=wanted)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as e:
            raise PreprocessError(f"{path}: a damaged or truncated Parquet file ({e})") from None
        yield batch


def _stamped(batch: pa.RecordBatch, path: Path, first: int) -> pa.RecordBatch:
    return batch.replace_schema_metadata({ORIGIN_PATH: str(path), ORIGIN_FIRST: str(first)})


def read_file(path: Path, schema: FeatureSchema, bad: BadLines) -> Iterator[pa.RecordBatch]:
    """The schema's typed reads of ``path`` in record batches; a file without data rows is refused."""
    check_uses(schema)
    wanted = schema.columns()
    fmt = file_format(path, schema)
    skipped_before = bad.count
    cuts = None if fmt == "parquet" else byte_ranges.cut_ranges(path, schema, fmt)
    if cuts:
        raw = byte_ranges.read_ranges(path, schema, fmt, wanted, bad, cuts)
    else:
        raw = ((b, False) for b in (_read_parquet(path, wanted) if fmt == "parquet"
                                    else _read_csv(path, schema, fmt, wanted, bad)))
    row = 0
    try:
        for batch, is_typed in raw:
            if batch.num_rows:
                yield _stamped(batch, path, row) if is_typed else typed(batch, schema, path, row)
                row += batch.num_rows
    finally:
        raw.close()
    bad.resolve(path, schema)
    if row == 0:
        skipped = bad.count - skipped_before
        why = (f"all of its {skipped} data line(s) are malformed (see the malformed lines reported)" if skipped
               else "it has no data rows (a header only)")
        raise PreprocessError(f"{path}: {why}; every input file must hold data")


def read_inputs(paths: list[Path], schema: FeatureSchema, bad: BadLines,
                workers: Optional[int] = None) -> Iterator[tuple[Path, int, pa.RecordBatch]]:
    """(file, index of the batch's first valid row in that file, batch) over every input in order."""
    if schema.input.format == "criteo_tsv":
        check_uses(schema)
        for path, first, batch, _ in criteo_tsv.read_inputs(paths, schema, bad, workers=workers):
            yield path, first, batch
        return
    for path in paths:
        batches = read_file(path, schema, bad)
        try:
            for batch in batches:
                yield path, origin(batch)[1], batch
        finally:
            batches.close()  # an early stop (an error downstream) ends the file's read here, not at exit
