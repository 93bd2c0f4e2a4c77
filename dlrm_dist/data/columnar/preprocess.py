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

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm_dist.data.columnar import encode, job, layout, staging
from dlrm_dist.data.columnar.criteo_tsv import count_lines
from dlrm_dist.data.columnar.encode import HOLDOUT, Days, Encoded
from dlrm_dist.data.columnar.job import HOLDOUT as _HOLDOUT
from dlrm_dist.data.columnar.job import Options, Report, bar, fitted_schema, refuse_empty_splits, time_cutoffs
from dlrm_dist.data.columnar.read import BadLines, read_encoded, read_inputs
from dlrm_dist.data.columnar.staging import Moments
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.data.jobrecord import job_record, lock_out, mark_complete
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import SPLITS, FeatureSchema

_COMPACT_EVERY = 64  # record batches of vocabulary counts merged at a time


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
    return schema, cutoffs, job.write_outputs(opts, schema, cutoffs, report, _write_rows, days), report


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
