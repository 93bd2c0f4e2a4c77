"""``dlrm-data import-torchrec DIR --out DIR2``: a TorchRec-layout Criteo directory -> the columnar layout, once.

The input is what TorchRec's ``BinaryCriteoUtils.tsv_to_npys`` writes (and what the old
``dlrm-data preprocess --dataset`` wrote), three files per day ``i = 0 .. N-1``:

    DIR/day_{i}_dense.npy    float32 (n, 13), already transformed (TorchRec takes a log)
    DIR/day_{i}_sparse.npy   int32 or int64 (n, 26): raw values (the hex token's integer)
                             or ids already in range
    DIR/day_{i}_labels.npy   int32, int64 or float32 (n, 1), 0 or 1

The output is the columnar layout (layout.py) the one loader reads, with the built-in Criteo
schema: with ``--max-ind-range M`` every table has M rows and the ids are reduced modulo M
as the old loader reduced raw ids (numpy's floor modulo, so a negative value an old int32
writer wrapped lands where it landed then); without it each table has its largest id + 1
rows and the ids are kept (a negative id, or one past the int32 range — a raw value, not a
row — is refused, naming the file, row and feature). Dense values are kept as they are:
the schema names Criteo's columns and dlrm-data's transform, log(1 + max(x, 0)), while
TorchRec's writer took log(x - min + 2); a model trained on an imported directory serves
inputs transformed as its files were. The split is TorchRec's: every day but the last is
train, the last day's first ceil(n/2) rows val, the rest test.

The same trust rules as ``dlrm-data preprocess``: ``--out``'s writer lock for the whole job,
a job record (the day files with size and mtime, the options) so that a rerun of the same
job reports it complete (or redoes an unfinished one from the start) and another job is
refused over a completed directory unless ``--overwrite``; every array is memory-mapped and
checked by dtype and shape before anything is written, and read in blocks (bounded memory);
cells are checked as they are copied (finite dense values, 0/1 labels); the splits are
written under ``.partial`` names (a full disk names its device and this run's files go) and
meta.json is published last.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from tqdm import tqdm

from dlrm_dist.data.columnar import layout
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.data.jobrecord import JOB, is_complete, job_record, lock_out, mark_complete, read_job
from dlrm_dist.data.npy import open_checked
from dlrm_dist.features.builtin import (
    CRITEO_NUM_DENSE,
    CRITEO_NUM_SPARSE,
    criteo_dense_names,
    criteo_schema,
    criteo_sparse_names,
)
from dlrm_dist.features.schema import SPLITS, FeatureSchema

KINDS = ("dense", "sparse", "labels")
BLOCK_ROWS = 1 << 18  # rows per block read: ~70 MB of dense and int64 ids at most
_DAY_FILE = re.compile(r"day_(\d+)_(dense|sparse|labels)\.npy")


@dataclass
class ImportOptions:
    source: Path
    out_dir: Path
    max_ind_range: Optional[int] = None  # reduce ids modulo this; None: ids are in range already
    overwrite: bool = False
    progress: bool = True


@dataclass
class ImportReport:
    days: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    table_sizes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    up_to_date: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"days": self.days, "rows": self.rows, "table_sizes": self.table_sizes,
                "seconds": round(self.seconds, 3), "up_to_date": self.up_to_date}


@dataclass(frozen=True)
class _Day:
    """One input day's three memory-mapped arrays and their files."""

    files: dict[str, Path]
    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.labels)


# -- the input ------------------------------------------------------------------------------------
def _day_files(source: Path) -> dict[int, dict[str, Path]]:
    """``{day: {kind: path}}`` of the directory's ``day_<i>_<kind>.npy`` files; days 0 .. N-1, all three each."""
    if not source.is_dir():
        what = "is a file, not a directory" if source.exists() else "does not exist"
        raise PreprocessError(f"input directory {str(source)!r} {what}")
    days: dict[int, dict[str, Path]] = {}
    for p in sorted(source.iterdir()):
        m = _DAY_FILE.fullmatch(p.name)
        if m:
            files = days.setdefault(int(m.group(1)), {})
            if m.group(2) in files:  # (day_1_ and day_01_: one day, two files)
                raise PreprocessError(f"{source}: {files[m.group(2)].name} and {p.name} are both day {int(m.group(1))}'s "
                                      f"{m.group(2)} file: keep one")
            files[m.group(2)] = p
    if len(days) < 2:
        raise PreprocessError(f"{source}: {len(days)} day(s) of day_<i>_{{dense,sparse,labels}}.npy files; TorchRec's "
                              "layout needs at least two (training days, then the val/test day)")
    gaps = sorted(set(range(max(days) + 1)) - set(days))
    if gaps:
        raise PreprocessError(f"{source}: day {gaps[0]} is missing (days {sorted(days)}): the days must be 0 .. N-1, "
                              "the last one being val/test")
    for d, files in sorted(days.items()):
        missing = [f"day_{d}_{k}.npy" for k in KINDS if k not in files]
        if missing:
            raise PreprocessError(f"{source}: day {d} is incomplete ({', '.join(missing)} missing)")
    return dict(sorted(days.items()))


def _refuse_unfinished(source: Path) -> None:
    """An input written by this package's old preprocessing that did not finish has days missing."""
    job = read_job(source)
    if job is not None and not is_complete(job, (source / layout.META).is_file()):
        raise PreprocessError(f"{source}: its job record ({JOB}) says the preprocessing that wrote it did not "
                              "finish (days may be missing): finish it first")


def _open_day(files: dict[str, Path]) -> _Day:
    labels = open_checked(files["labels"], (np.int32, np.int64, np.float32), (None, 1))
    n = len(labels)
    dense = open_checked(files["dense"], np.float32, (n, CRITEO_NUM_DENSE))
    sparse = open_checked(files["sparse"], (np.int32, np.int64), (n, CRITEO_NUM_SPARSE))
    return _Day(files, dense, sparse, labels)


def open_days(source: Path) -> list[_Day]:
    """Every day of ``source``, each file memory-mapped and checked (dtype, shape, rows agreeing)."""
    _refuse_unfinished(source)
    return [_open_day(files) for files in _day_files(source).values()]


def _blocks(rows: int, lo: int = 0) -> Iterator[tuple[int, int]]:
    for a in range(lo, rows, BLOCK_ROWS):
        yield a, min(a + BLOCK_ROWS, rows)


def _first_bad(mask: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first True of a 2-D mask."""
    r, c = np.argwhere(mask)[0]
    return int(r), int(c)


# -- the table sizes ----------------------------------------------------------------------------
def table_sizes(days: list[_Day], bar: tqdm) -> list[int]:
    """Each sparse column's largest id + 1 over every day (one pass over the ids), checked to be table rows."""
    top = np.full(CRITEO_NUM_SPARSE, -1, np.int64)
    names = criteo_sparse_names()
    for day in days:
        for lo, hi in _blocks(day.rows):
            block = np.asarray(day.sparse[lo:hi])
            if block.size and block.min() < 0:
                r, c = _first_bad(block < 0)
                raise PreprocessError(f"{day.files['sparse']}: row {lo + r}, feature {names[c]} (column {c}): id "
                                      f"{int(block[r, c])} is negative; give --max-ind-range N to reduce raw values "
                                      "modulo N")
            top = np.maximum(top, block.max(axis=0, initial=-1))
            bar.update(hi - lo)
    big = np.flatnonzero(top + 1 > layout.INT32_ROWS)
    if big.size:
        c = int(big[0])
        raise PreprocessError(f"feature {names[c]} (column {c} of the sparse files) has ids up to {int(top[c]):,}: "
                              "raw values, not table rows; give --max-ind-range N to reduce them modulo N "
                              "(MLPerf uses 40000000)")
    return [max(int(t) + 1, 1) for t in top]


def import_schema(sizes: list[int], max_ind_range: Optional[int]) -> FeatureSchema:
    """The built-in Criteo schema with the imported tables (split by day: one day per input day file)."""
    if max_ind_range is not None:
        return criteo_schema(buckets=max_ind_range)
    return criteo_schema(table_sizes=sizes)


# -- the job record and the output directory --------------------------------------------------------
def _job(opts: ImportOptions, days: list[_Day]) -> dict[str, Any]:
    inputs = [day.files[k] for day in days for k in KINDS]
    return job_record(inputs, {"import": "torchrec", "options": {"max_ind_range": opts.max_ind_range}})


def _done(out: Path) -> ImportReport:
    meta = layout.read_meta(out)
    schema = layout.stored_schema(out)
    return ImportReport(days=meta["imported_from"]["days"], rows={s: meta["splits"][s]["rows"] for s in SPLITS},
                        table_sizes=[schema.table_rows(f.table) for f in schema.sparse], up_to_date=True)


# -- writing -------------------------------------------------------------------------------------
def _checked_block(day: _Day, lo: int, hi: int, sizes: np.ndarray,
                   modulo: Optional[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows lo..hi of a day: dense (finite), labels (0/1, float32), ids (int64, in their tables)."""
    dense = np.asarray(day.dense[lo:hi])
    if not np.isfinite(dense).all():
        r, c = _first_bad(~np.isfinite(dense))
        raise PreprocessError(f"{day.files['dense']}: row {lo + r}, dense feature {criteo_dense_names()[c]}: "
                              f"{dense[r, c]} is not a finite number")
    labels = np.asarray(day.labels[lo:hi]).reshape(-1)
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise PreprocessError(f"{day.files['labels']}: row {lo + int(bad[0])}: label {labels[bad[0]]} is not 0 or 1")
    ids = np.asarray(day.sparse[lo:hi]).astype(np.int64)
    if modulo is not None:
        ids %= modulo
    elif ids.size and ((ids < 0) | (ids >= sizes)).any():  # the input changed since the table sizes were taken
        r, c = _first_bad((ids < 0) | (ids >= sizes))
        raise PreprocessError(f"{day.files['sparse']}: row {lo + r}, feature {criteo_sparse_names()[c]}: id "
                              f"{int(ids[r, c])} is outside its table of {int(sizes[c])} rows (the file changed "
                              "during the import?)")
    return dense, labels.astype(np.float32), ids


def _pieces(days: list[_Day]) -> Iterator[tuple[str, _Day, int, int]]:
    """(split, day, lo, hi) blocks in order: training days whole, then the last day's two halves."""
    *train, last = days
    for day in train:
        for lo, hi in _blocks(day.rows):
            yield "train", day, lo, hi
    half = math.ceil(last.rows / 2)
    for split, a, b in (("val", 0, half), ("test", half, last.rows)):
        for lo, hi in _blocks(b, a):
            yield split, last, lo, hi


def split_rows(days: list[_Day]) -> dict[str, int]:
    half = math.ceil(days[-1].rows / 2)
    return {"train": sum(d.rows for d in days[:-1]), "val": half, "test": days[-1].rows - half}


def _refuse_empty(source: Path, days: list[_Day]) -> None:
    rows = split_rows(days)
    empty = [s for s in SPLITS if rows[s] == 0]
    if empty:
        counts = ", ".join(f"{s} {n}" for s, n in rows.items())
        raise PreprocessError(f"{source}: split(s) {empty} would be empty ({counts} rows: train = days 0 .. "
                              f"{len(days) - 2}, val/test = the halves of day {len(days) - 1}, {days[-1].rows} rows)")


def _write(opts: ImportOptions, days: list[_Day], schema: FeatureSchema, bar: tqdm) -> dict[str, Any]:
    """Writes and publishes the three splits through the layout's one writer (layout.write_splits)."""
    sizes = np.asarray([schema.table_rows(f.table) for f in schema.sparse], np.int64)

    def fill(writers: dict[str, layout.SplitWriter]) -> None:
        for split, day, lo, hi in _pieces(days):
            dense, labels, ids = _checked_block(day, lo, hi, sizes, opts.max_ind_range)
            bags = {f: (ids[:, k], None) for k, f in enumerate(schema.sparse_names)}
            writers[split].append(np.ones(hi - lo, bool), dense, labels, bags)
            bar.update(hi - lo)

    return layout.write_splits(opts.out_dir, schema, fill)


# -- the job -------------------------------------------------------------------------------------
def _bar(opts: ImportOptions, desc: str, total: int) -> tqdm:
    return tqdm(desc=desc, total=total, unit=" rows", unit_scale=True, disable=not opts.progress)


def _check_options(opts: ImportOptions) -> None:
    if opts.max_ind_range is not None and (isinstance(opts.max_ind_range, bool) or opts.max_ind_range < 1):
        raise PreprocessError(f"--max-ind-range {opts.max_ind_range!r}: give a positive integer (e.g. 40000000)")
    if opts.out_dir.resolve() == opts.source.resolve():
        raise PreprocessError(f"--out {opts.out_dir} is the input directory: give another directory")


def import_torchrec(opts: ImportOptions) -> ImportReport:
    """Converts (or confirms) ``opts.source`` into the columnar layout at ``opts.out_dir``."""
    _check_options(opts)
    days = open_days(opts.source)
    _refuse_empty(opts.source, days)
    with lock_out(opts.out_dir, "dlrm-data import-torchrec"):
        if layout.begin_job(opts.out_dir, _job(opts, days), opts.overwrite,
                            [day.files[k] for day in days for k in KINDS]):
            return _done(opts.out_dir)
        report = _run(opts, days)
        mark_complete(opts.out_dir)
    return report


def _run(opts: ImportOptions, days: list[_Day]) -> ImportReport:
    started = time.perf_counter()
    total = sum(d.rows for d in days)
    if opts.max_ind_range is None:
        with _bar(opts, "table sizes", total) as bar:
            sizes = table_sizes(days, bar)
    else:
        sizes = [opts.max_ind_range] * CRITEO_NUM_SPARSE
    schema = import_schema(sizes, opts.max_ind_range)
    layout.output_files(opts.out_dir, schema)  # every path checked to stay inside --out before one is written
    with _bar(opts, "import", total) as bar:
        splits = _write(opts, days, schema, bar)
    layout.write_meta(opts.out_dir, {
        "schema": schema.to_dict(), "splits": splits, "rows_read": total, "skipped": 0, "malformed_examples": [],
        "time_cutoffs": None,
        "imported_from": {"format": "torchrec", "directory": str(opts.source.resolve()), "days": len(days)},
    })
    return ImportReport(days=len(days), rows={s: splits[s]["rows"] for s in SPLITS}, table_sizes=sizes,
                        seconds=time.perf_counter() - started)
