"""What a preprocessing job's passes share, below both ways of running them (staging.py's one
read and preprocess.py's streaming write): the job's options and report, the progress bar, the
time split's cut-offs, and the writing of its folders (``write_outputs``: the three splits, a
day split's last day to a holdout halved into val and test at the end, or one day partition).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from tqdm import tqdm

from dlrm_dist.data.columnar import encode, layout
from dlrm_dist.data.columnar.columns import BadLines
from dlrm_dist.data.columnar.criteo_tsv import count_lines
from dlrm_dist.data.columnar.encode import Days
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.schema import SPLITS, FeatureSchema

HOLDOUT = "holdout"  # split by day: the last day's rows, halved into val and test at the end
TARGETS = {**dict(enumerate(SPLITS)), encode.HOLDOUT: HOLDOUT}  # encode.split_of's codes -> writer names
_BLOCK = 1 << 18  # rows copied at a time from the holdout
FRACTION_SLACK = 0.02  # a realised time-split fraction further than this from the schema's is warned about


def targets(writers: dict[str, Any]) -> list[tuple[int, Any]]:
    """(encode.split_of's code, its writer) for every split this run writes (a partition writes one)."""
    return [(k, writers[s]) for k, s in TARGETS.items() if s in writers]


@dataclass
class Options:
    """One ``dlrm-data preprocess`` job (the CLI builds it): train/val/test splits (preprocess.py),
    or with ``partition`` / ``append`` / ``refit`` a day partition of a dataset that grows by day
    (partitions.py)."""

    schema: Optional[FeatureSchema]  # the schema as written; --append: None (the directory's fitted one)
    inputs: list[Path]
    out_dir: Path
    strict: bool = False
    overwrite: bool = False
    progress: bool = True
    workers: int = max(1, os.cpu_count() or 1)  # criteo_tsv: parsing and encoding processes
    partition: Optional[int] = None  # the day partition to write (partitions.py; unset there: the next number)
    append: bool = False  # add the partition with the directory's fitted schema
    refit: bool = False  # a new dataset, the schema as written fitted anew on the inputs
    schema_source: Optional[Path] = None  # refit: the directory the schema came from


@dataclass
class Report:
    """What a run read and wrote (the CLI prints it; meta.json records it)."""

    rows_read: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    up_to_date: bool = False
    split_fractions: dict[str, float] = field(default_factory=dict)  # a time split's realised shares of the rows
    warnings: list[str] = field(default_factory=list)

    def read(self, rows: int, bad: BadLines) -> None:
        """What the read came to: ``rows`` valid rows and ``bad``'s malformed lines."""
        self.rows_read, self.skipped, self.examples = rows + bad.count, bad.count, bad.examples
        self.warnings.extend(bad.notes)


def bar(opts: Options, desc: str) -> tqdm:
    """The progress bar of a pass over rows (off without ``opts.progress``)."""
    return tqdm(desc=desc, unit=" rows", unit_scale=True, disable=not opts.progress)


def days_of(opts: Options) -> Optional[Days]:
    """Which day each row is in (split by day): pseudo-days need the inputs' line counts."""
    s = opts.schema.split
    if s.by != "day":
        return None
    if s.days is None and len(opts.inputs) < 2:
        raise PreprocessError(f"split by day with one day per input file needs at least two files (the last is val "
                              f"and test), got {len(opts.inputs)}; give split.days to cut one file into pseudo-days")
    return Days.cut(opts.inputs, count_lines(opts.inputs, opts.workers) if s.days else None, s.days)


def vocab_tables(schema: FeatureSchema) -> list[str]:
    """The tables whose ids are a fitted vocabulary (kind vocab)."""
    return [t for t in schema.table_names if schema.features_of(t)[0].kind == "vocab"]


def known_fit(opts: Options) -> Optional[dict[str, Any]]:
    """The job's fitted state when no fit is to run: fit.json (a rerun after the fit), or, for a
    schema with nothing to fit, the empty fit (written now, as a fit would be); None: fit."""
    done = layout.read_fit(opts.out_dir)
    if done is None and not (vocab_tables(opts.schema) or any(d.fitted for d in opts.schema.dense)):
        done = {"vocab_rows": {}, "scales": {}}
        layout.write_fit(opts.out_dir, done)
    return done


def time_cutoffs(schema: FeatureSchema, t: np.ndarray, report: Report) -> tuple[float, float]:
    """The times where val and test begin: quantiles of every row's time at the fractions. Rows
    with one time stay in one split, so with ties the realised fractions differ from those asked:
    they go into ``report`` (``split_fractions``), with a warning for any off by more than 0.02."""
    s = schema.split
    f = s.fractions
    # A cut-off after which no split has a share is never reached (inf): with val and test both 0
    # every row is train, those at the latest time too (where quantile 1.0 would put val's cut-off).
    cutoffs = (float(np.quantile(t, f[0])) if f[1] + f[2] > 0 else math.inf,
               float(np.quantile(t, f[0] + f[1])) if f[2] > 0 else math.inf)
    val, test = int((t >= cutoffs[0]).sum()), int((t >= cutoffs[1]).sum())
    rows = {"train": len(t) - val, "val": val - test, "test": test}
    how = f" by time column {s.column!r} (cut-offs {cutoffs[0]:g}, {cutoffs[1]:g}: ties stay together)"
    refuse_empty_splits(schema, rows, how)
    report.split_fractions = {k: n / max(len(t), 1) for k, n in rows.items()}
    off = [k for k, want in zip(SPLITS, f) if abs(report.split_fractions[k] - want) > FRACTION_SLACK]
    if off:
        got = ", ".join(f"{k} {report.split_fractions[k]:.3f} (asked {want:g})" for k, want in zip(SPLITS, f))
        report.warnings.append(f"the split{how} gives {got}: {off} off by more than {FRACTION_SLACK} because rows "
                               f"with one time stay in one split; use a finer time column or other fractions")
    return cutoffs


def refuse_empty_splits(schema: FeatureSchema, rows: dict[str, int], how: str = "") -> None:
    """A split given a share of the rows that ends up with none is an error now, at preprocessing,
    rather than at the evaluation that would read it after training."""
    f = dict(zip(SPLITS, schema.split.fractions))
    empty = [s for s in SPLITS if f[s] > 0 and rows.get(s, 0) == 0]
    if empty:
        counts = ", ".join(f"{s} {rows.get(s, 0)}" for s in SPLITS)
        if schema.split.by == "day":  # (its fractions are not the user's: the days decide)
            raise PreprocessError(f"split(s) {empty} would be empty ({counts} rows of {sum(rows.values())}{how}): a "
                                  "split by day trains on every day but the last and halves the last day into val "
                                  "and test; give the last day more rows (or use fewer pseudo-days)")
        raise PreprocessError(f"split(s) {empty} would be empty ({counts} rows of {sum(rows.values())}{how}, "
                              f"fractions {list(schema.split.fractions)}): give more rows, other fractions, "
                              "or a fraction of 0 for a split you do not want")


def _halve_holdout(out: Path, schema: FeatureSchema, writers: dict[str, layout.SplitWriter]) -> None:
    """The last day's first ceil(n/2) valid rows -> val, the rest -> test (TorchRec's convention),
    copied in blocks from the closed holdout files."""
    rows = writers.pop(HOLDOUT).close()["rows"]
    held = layout.open_split(out, HOLDOUT + layout.PARTIAL, schema, rows)
    half = math.ceil(rows / 2)
    for split, lo, hi in (("val", 0, half), ("test", half, rows)):
        for a in range(lo, hi, _BLOCK):
            b = min(a + _BLOCK, hi)
            ids = {}
            for f in schema.sparse:
                off = held.offsets[f.name]
                ids[f.name] = (held.ids[f.name][a:b], None) if off is None else \
                    (held.ids[f.name][off[a]:off[b]], np.diff(off[a : b + 1]))
            writers[split].append(np.ones(b - a, bool), held.dense[a:b], held.labels[a:b], ids)
    del held
    shutil.rmtree(out / (HOLDOUT + layout.PARTIAL))


class _NoRows:
    """A partition's val and test writers: its schema's split (every row "train") gives them none.
    A row sent here is an internal error, named by the partition and the row (over all inputs)."""

    def __init__(self, partition: int, split: str) -> None:
        self.partition, self.split = partition, split
        self.seen: dict[str, int] = {}  # rows passed over so far, per file kind (the rows', each feature's)

    def append(self, keep: np.ndarray, *arrays: Any) -> None:
        self.append_rows(keep)

    def append_rows(self, keep: np.ndarray, *arrays: Any) -> None:
        self._none(keep, "")

    def append_ids(self, keep: np.ndarray, name: str, *arrays: Any) -> None:
        self._none(keep, name)

    def _none(self, keep: np.ndarray, kind: str) -> None:
        rows = self.seen.get(kind, 0)
        if np.any(keep):
            row = rows + int(np.flatnonzero(keep)[0])
            raise PreprocessError(f"partition {self.partition}: row {row + 1} of the inputs was put in split "
                                  f"{self.split!r}, but every row of a partition is its own (an internal error "
                                  "of dlrm_dist's split: please report it)")
        self.seen[kind] = rows + len(keep)


def write_outputs(opts: Options, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]], report: Report,
                  rows: Callable[..., None], days: Optional[Days] = None) -> dict[str, Any]:
    """Writes and publishes the job's folders (layout.write_splits), filled by ``rows`` (the write
    pass: staging.py's or preprocess.py's streaming one), which appends each row to ``writers[split]``:
    the three splits (a day split's last day to a holdout folder first, halved into val and test
    at the end), or with ``opts.partition`` that partition's one folder, as "train"."""
    if opts.partition is not None:
        name = layout.partition_split(opts.partition)

        def fill_partition(writers: dict[str, layout.SplitWriter]) -> None:
            others = {s: _NoRows(opts.partition, s) for s in SPLITS[1:]}
            rows(opts, schema, cutoffs, report, {"train": writers[name], **others}, days)
            if writers[name].labels.rows == 0:
                raise PreprocessError(f"{', '.join(map(str, opts.inputs))}: no valid rows ({report.skipped} malformed "
                                      f"line(s)), so partition {opts.partition} would be empty")

        return layout.write_splits(opts.out_dir, schema, fill_partition, names=(name,))

    def fill(writers: dict[str, layout.SplitWriter]) -> None:
        rows(opts, schema, cutoffs, report, writers, days)
        if days is not None:
            _halve_holdout(opts.out_dir, schema, writers)

    layout.remove_partials(opts.out_dir, (HOLDOUT,))  # a killed day-split run's holdout
    return layout.write_splits(opts.out_dir, schema, fill, extra=(HOLDOUT,) if days is not None else ())


def fitted_schema(schema: FeatureSchema, fit: dict[str, Any]) -> FeatureSchema:
    """``schema`` with a fit pass's result (fit.json: vocabulary rows, dense scales)."""
    return schema.with_fitted(fit["vocab_rows"], {k: tuple(v) for k, v in fit["scales"].items()})
