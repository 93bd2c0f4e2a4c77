"""``dlrm-data preprocess --schema``: any CSV/TSV/Parquet/Criteo TSV input -> the columnar layout (layout.py).

One dispatcher (``run_passes``) picks how the inputs are read, by what the schema's input and
split need, and every job (train/val/test splits here, a day partition for partitions.py) goes
through it, into the one writer (layout.write_splits):

- CSV, TSV and Parquet split by random or time: staging.py's one read (the time cut-offs, the fit
  and the write from the staged columns);
- ``criteo_tsv`` inputs and splits by day: streaming passes in bounded memory (one record batch
  at a time). ``time`` split: read the time column for the cut-offs (8 bytes per row held);
  ``day`` split with ``days``: count the inputs' lines (worker processes, at disk speed); then the
  fit, when the schema has vocabularies or standardize/minmax (the training split only); then
  the write: every row encoded (encode.encode_batch; criteo_tsv's reader runs it in its worker
  processes) and appended to its split's files; by day, the last day's rows go to a holdout whose
  first ceil(n/2) rows become val and the rest test once n is known.

Either way the fit is saved (fit.json, vocab/) so that a rerun does not redo it, the folders are
written under ``.partial`` names renamed at the end, and meta.json is written last.

A run holds ``--out``'s writer lock (fileio.DirLock) from before it reads anything there
until its last file is published: a second job into the same directory is refused naming
the first. It records what it was started with (job.json: inputs with size and mtime, the
schema as written, options, whether it completed). A rerun with the same job resumes (or
reports it complete); a different job starts over in the directory of a job that did not
complete, and is refused over a completed one, naming what differs, unless ``overwrite``.
Every path is checked to stay inside ``--out`` before anything is written; every JSON file
is written atomically; a full disk is named and this run's ``.partial`` files are removed.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from dlrm_dist.data.columnar import encode, layout, staging
from dlrm_dist.data.columnar.criteo_tsv import count_lines
from dlrm_dist.data.columnar.encode import HOLDOUT, Days, Encoded
from dlrm_dist.data.columnar.read import BadLines, PreprocessError, read_encoded, read_inputs
from dlrm_dist.data.jobrecord import job_record, lock_out, mark_complete
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import SPLITS, FeatureSchema

_COMPACT_EVERY = 64  # record batches of vocabulary counts merged at a time
_HOLDOUT = "holdout"  # split by day: the last day's rows, halved into val and test at the end
_BLOCK = 1 << 18  # rows copied at a time from the holdout


@dataclass
class Options:
    schema: FeatureSchema
    inputs: list[Path]
    out_dir: Path
    strict: bool = False
    overwrite: bool = False
    progress: bool = True
    workers: int = max(1, os.cpu_count() or 1)  # criteo_tsv: parsing and encoding processes
    partition: Optional[int] = None  # write this day partition's folder (partitions.py) instead of the splits


@dataclass
class Report:
    rows_read: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    up_to_date: bool = False
    split_fractions: dict[str, float] = field(default_factory=dict)  # a time split's realised shares of the rows
    warnings: list[str] = field(default_factory=list)


def check_inputs(inputs: list[Path]) -> None:
    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing or not inputs:
        raise PreprocessError(f"input file(s) not found: {missing or 'none given'}")


# -- the job record -----------------------------------------------------------------------------
def _job(opts: Options) -> dict[str, Any]:
    return job_record(opts.inputs, {"schema": opts.schema.without_fitted().stable_dict(), "options": {"strict": opts.strict}})


def _done(out: Path) -> Report:
    meta = layout.read_meta(out)
    fractions = meta.get("split_fractions") or {}
    return Report(rows_read=meta["rows_read"], rows={s: meta["splits"][s]["rows"] for s in SPLITS},
                  skipped=meta["skipped"], up_to_date=True, split_fractions={s: fractions[s] for s in fractions and SPLITS})


# -- passes ---------------------------------------------------------------------------------------
def bar(opts: Any, desc: str, total: Optional[int] = None) -> tqdm:
    """The progress bar of a pass over rows (off without ``opts.progress``)."""
    return tqdm(desc=desc, total=total, unit=" rows", unit_scale=True, disable=not opts.progress)


def _time_cutoffs(opts: Options, report: Report) -> Optional[tuple[float, float]]:
    """The times where val and test begin, from a pass over the time column."""
    if opts.schema.split.by != "time":
        return None
    times = []
    with bar(opts, "time split") as shown:
        for _, _, batch in read_inputs(opts.inputs, opts.schema, BadLines(strict=opts.strict), workers=opts.workers):
            times.append(encode.times_of(batch, opts.schema))
            shown.update(batch.num_rows)
    return time_cutoffs(opts.schema, np.concatenate(times) if times else np.zeros(0), report)


FRACTION_SLACK = 0.02  # a realised time-split fraction further than this from the schema's is warned about


def time_cutoffs(schema: FeatureSchema, t: np.ndarray, report: Report) -> tuple[float, float]:
    """The times where val and test begin: quantiles of every row's time at the fractions. Rows
    with one time stay in one split, so with ties the realised fractions differ from those asked:
    they go into ``report`` (``split_fractions``), with a warning for any off by more than 0.02."""
    s = schema.split
    f = s.fractions
    cutoffs = float(np.quantile(t, f[0])), float(np.quantile(t, f[0] + f[1])) if f[2] > 0 else float("inf")
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
        raise PreprocessError(f"split(s) {empty} would be empty ({counts} rows of {sum(rows.values())}{how}, "
                              f"fractions {list(schema.split.fractions)}): give more rows, other fractions, "
                              "or a fraction of 0 for a split you do not want")


class Moments:
    """Count, mean, sum of squared deviations (merged per batch: no catastrophic sum of squares),
    minimum and maximum of one dense feature over the training split."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n, self.mean, self.m2, self.min, self.max = 0, 0.0, 0.0, np.inf, -np.inf

    def add(self, x: np.ndarray) -> None:
        if not x.size:
            return
        with np.errstate(over="ignore", invalid="ignore"):
            n, mean = x.size, float(x.mean())
            m2 = float(((x - mean) ** 2).sum())
            total = self.n + n
            delta = mean - self.mean
            self.m2 += m2 + delta * delta * self.n * n / total
            self.mean += delta * n / total
        self.n = total
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))

    def scale(self, kind: str) -> tuple[float, float]:
        """(shift, divisor) of standardize/minmax; a constant feature keeps divisor 1."""
        if self.n == 0:
            return 0.0, 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            shift, divisor = (self.min, self.max - self.min) if kind == "minmax" else \
                (self.mean, float(np.sqrt(max(self.m2 / self.n, 0.0))))
        if not (np.isfinite(shift) and np.isfinite(divisor)):
            raise PreprocessError(
                f"dense feature {self.name!r}: its {kind} statistics over the training split overflow (values "
                f"from {self.min:g} to {self.max:g}); add log1p or clip = [lo, hi] before {kind}")
        # A constant feature's std comes out as rounding noise (~1e-16 of its mean), which would
        # blow that noise up to +-1: below float precision of the values it counts as zero.
        constant = divisor <= 1e-12 * max(abs(shift), abs(self.min), abs(self.max))
        return shift, 1.0 if divisor <= 0 or constant else divisor


class _VocabCounts:
    """Value counts of one table, merged in pyarrow (bounded by the table's distinct values)."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []

    def add(self, values: pa.Array) -> None:
        vc = pc.value_counts(pc.drop_null(values))
        self.parts.append(pa.table({"v": vc.field("values"), "c": vc.field("counts")}))
        if len(self.parts) >= _COMPACT_EVERY:
            self.parts = [self._merged()]

    def _merged(self) -> pa.Table:
        if not self.parts:
            return pa.table({"v": pa.array([], pa.string()), "c": pa.array([], pa.int64())})
        t = pa.concat_tables(self.parts).group_by("v").aggregate([("c", "sum")])
        return t.rename_columns(["v", "c"])

    def vocabulary(self, min_count: int, order: str) -> list:
        t = self._merged()
        t = t.filter(pc.greater_equal(t["c"], min_count))
        # most frequent first, ties by value; or by value (the old Criteo --vocab: ids 1..K by value)
        t = t.sort_by([("c", "descending"), ("v", "ascending")] if order == "frequency" else [("v", "ascending")])
        return t["v"].to_pylist()


def _days(opts: Options) -> Optional[Days]:
    """Which day each row is in (split by day): pseudo-days need the inputs' line counts."""
    s = opts.schema.split
    if s.by != "day":
        return None
    if s.days is None and len(opts.inputs) < 2:
        raise PreprocessError(f"split by day with one day per input file needs at least two files (the last is val "
                              f"and test), got {len(opts.inputs)}; give split.days to cut one file into pseudo-days")
    return Days.cut(opts.inputs, count_lines(opts.inputs, opts.workers) if s.days else None, s.days)


def _fit_pass(opts: Options, cutoffs: Optional[tuple[float, float]], days: Optional[Days]) -> dict[str, Any]:
    """The fit pass: vocabularies and dense statistics of the training split (fit.json, if a run
    already wrote it)."""
    done = layout.read_fit(opts.out_dir)
    if done is not None:
        return done
    schema = opts.schema
    vocab_tables = {f.table for f in schema.sparse if f.kind == "vocab"}
    fitted = [d for d in schema.dense if d.fitted]
    result: dict[str, Any] = {"vocab_rows": {}, "scales": {}}
    if vocab_tables or fitted:
        counts = {t: _VocabCounts() for t in vocab_tables}
        moments = {d.name: Moments(d.name) for d in fitted}
        row0 = 0
        with bar(opts, "fit (train split)") as shown:
            for path, first, batch in read_inputs(opts.inputs, schema, BadLines(strict=opts.strict),
                                                  workers=opts.workers):
                train = encode.split_of(batch, schema, row0, cutoffs, days) == 0
                row0 += batch.num_rows
                shown.update(batch.num_rows)
                if not train.any():
                    continue
                sub = batch.filter(pa.array(train))
                for f in schema.sparse:
                    if f.kind == "vocab":
                        counts[f.table].add(encode.bags_of(sub, f).values)
                for d in fitted:  # on the whole batch, so that an error names the right line
                    moments[d.name].add(encode.dense_raw(batch, d, schema)[train])
        _save_vocabularies(opts, counts, result)
        result["scales"] = {d.name: moments[d.name].scale(d.fitted) for d in fitted}
    layout.write_fit(opts.out_dir, result)
    return result


def _save_vocabularies(opts: Options, counts: dict[str, "_VocabCounts"], result: dict[str, Any]) -> None:
    (opts.out_dir / layout.VOCAB_DIR).mkdir(exist_ok=True)
    for table, c in counts.items():
        f = opts.schema.features_of(table)[0]
        vocab = c.vocabulary(f.min_count, f.order)
        if not vocab:
            names = [x.name for x in opts.schema.features_of(table)]
            raise SchemaError(f"vocabulary feature(s) {names} (table {table!r}) have no value seen at least "
                              f"{f.min_count} time(s) in the training split: check the column and min_count")
        layout.write_vocab(opts.out_dir, table, vocab)
        result["vocab_rows"][table] = f.oov_buckets + len(vocab)


def _halve_holdout(out: Path, schema: FeatureSchema, writers: dict[str, layout.SplitWriter]) -> None:
    """The last day's first ceil(n/2) valid rows -> val, the rest -> test (TorchRec's convention),
    copied in blocks from the closed holdout files."""
    rows = writers.pop(_HOLDOUT).close()["rows"]
    held = layout.open_split(out, _HOLDOUT + layout.PARTIAL, schema, rows)
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
    shutil.rmtree(out / (_HOLDOUT + layout.PARTIAL))


class _NoRows:
    """A partition's val and test writers: its schema's split (every row "train") gives them none.
    A row sent here is an internal error, named by the partition and the row (over all inputs)."""

    def __init__(self, partition: int, split: str) -> None:
        self.partition, self.split, self.rows = partition, split, 0

    def append(self, keep: np.ndarray, *arrays: Any) -> None:
        if np.any(keep):
            row = self.rows + int(np.flatnonzero(keep)[0])
            raise PreprocessError(f"partition {self.partition}: row {row + 1} of the inputs was put in split "
                                  f"{self.split!r}, but every row of a partition is its own (an internal error "
                                  "of dlrm_dist's split: please report it)")
        self.rows += len(keep)


def write_outputs(opts: Options, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]], report: Report,
                  days: Optional[Days] = None, rows: Optional[Callable[..., None]] = None) -> dict[str, Any]:
    """Writes and publishes the job's folders (layout.write_splits), filled by ``rows`` (this
    module's write pass; staging.py passes its own), which appends each row to ``writers[split]``:
    the three splits (a day split's last day to a holdout folder first, halved into val and test
    at the end), or with ``opts.partition`` that partition's one folder, as "train"."""
    write = rows or _write_rows
    if opts.partition is not None:
        name = layout.partition_split(opts.partition)

        def fill_partition(writers: dict[str, layout.SplitWriter]) -> None:
            write(opts, schema, cutoffs, report, {"train": writers[name], **{s: _NoRows(opts.partition, s) for s in SPLITS[1:]}}, days)
            if writers[name].labels.rows == 0:
                raise PreprocessError(f"{', '.join(map(str, opts.inputs))}: no valid rows ({report.skipped} malformed "
                                      f"line(s)), so partition {opts.partition} would be empty")

        return layout.write_splits(opts.out_dir, schema, fill_partition, names=(name,))

    def fill(writers: dict[str, layout.SplitWriter]) -> None:
        write(opts, schema, cutoffs, report, writers, days)
        if days is not None:
            _halve_holdout(opts.out_dir, schema, writers)

    layout.remove_partials(opts.out_dir, (_HOLDOUT,))  # a killed day-split run's holdout
    return layout.write_splits(opts.out_dir, schema, fill, extra=(_HOLDOUT,) if days is not None else ())


def _write_rows(opts: Options, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]], report: Report,
                writers: dict[str, Any], days: Optional[Days] = None) -> None:
    """The streaming write pass: every row of the inputs encoded by ``schema`` (its vocabularies
    read from the directory) into its split's writer."""
    vocabs = {t: pa.array(layout.read_vocab(opts.out_dir, t))
              for t in schema.table_names if schema.features_of(t)[0].kind == "vocab"}
    encoder = lambda batch: encode.encode_batch(batch, schema, vocabs)  # noqa: E731 (run by workers: fork)
    from_arrays = lambda arrays: Encoded.from_arrays(schema, arrays)  # noqa: E731
    targets = {**dict(enumerate(SPLITS)), HOLDOUT: _HOLDOUT}  # split code -> writer
    bad = BadLines(strict=opts.strict)
    row0 = 0
    with bar(opts, "preprocess") as shown:
        for path, first, batch, enc in read_encoded(opts.inputs, schema, bad, encoder, from_arrays, opts.workers):
            split = encode.split_of(batch, schema, row0, cutoffs, days)
            for k, s in targets.items():
                if s in writers:
                    writers[s].append(split == k, enc.dense, enc.labels, enc.ids)
            row0 += batch.num_rows
            shown.update(batch.num_rows)
    report.rows_read, report.skipped, report.examples = row0 + bad.count, bad.count, bad.examples


def fitted_schema(schema: FeatureSchema, fit: dict[str, Any]) -> FeatureSchema:
    """``schema`` with a fit pass's result (fit.json: vocabulary rows, dense scales)."""
    return schema.with_fitted(fit["vocab_rows"], {k: tuple(v) for k, v in fit["scales"].items()})


def run_passes(opts: Options) -> tuple[FeatureSchema, Optional[tuple[float, float]], dict[str, Any], Report]:
    """The conversion of a (locked, checked) job, by the passes its inputs and split need (module
    docstring); writes fit.json, vocab/ and the folders, not meta.json. Returns (fitted schema,
    time cut-offs, each folder's rows and bag lengths, report)."""
    if staging.supported(opts.schema):
        return staging.run(opts)
    report = Report()
    cutoffs = _time_cutoffs(opts, report)
    days = _days(opts)
    schema = fitted_schema(opts.schema, _fit_pass(opts, cutoffs, days))
    return schema, cutoffs, write_outputs(opts, schema, cutoffs, report, days), report


def preprocess(opts: Options) -> Report:
    """Runs (or resumes, or confirms) the whole conversion; returns what was read and written."""
    check_inputs(opts.inputs)
    layout.output_files(opts.out_dir, opts.schema)  # every path it would write, checked before any is
    with lock_out(opts.out_dir, "dlrm-data preprocess"):
        if layout.begin_job(opts.out_dir, _job(opts), opts.overwrite):
            return _done(opts.out_dir)
        report = _run(opts)
        mark_complete(opts.out_dir)
    return report


def _run(opts: Options) -> Report:
    started = time.perf_counter()
    schema, cutoffs, splits, report = run_passes(opts)
    report.rows = {s: splits[s]["rows"] for s in SPLITS}
    refuse_empty_splits(opts.schema, report.rows)
    report.seconds = time.perf_counter() - started
    layout.write_meta(opts.out_dir, {
        "schema": schema.to_dict(), "splits": splits, "rows_read": report.rows_read,
        "skipped": report.skipped, "malformed_examples": report.examples,
        "time_cutoffs": list(cutoffs) if cutoffs else None, "split_fractions": report.split_fractions or None,
    })
    return report
