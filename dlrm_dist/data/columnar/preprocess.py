"""``dlrm-data preprocess --schema``: any CSV/TSV/Parquet/Criteo TSV input -> the columnar layout (layout.py).

One dispatcher (``run_passes``) picks how the inputs are read, by what the job needs, and every
job (train/val/test splits here, a day partition for partitions.py) goes through it, into the
one writer (job.write_outputs -> layout.write_splits):

- a job with something to fit (vocabularies, standardize/minmax), or a time split's cut-offs,
  in any input format and split: staging.py's one read (the cut-offs, the fit and the write
  from the staged columns); a CSV/TSV/Parquet job with nothing to fit finishes each block as
  it is read there too;
- a ``criteo_tsv`` job with nothing (more) to fit, split by day or random: one streaming write,
  each record batch encoded in criteo_tsv's worker processes (its fused parse+encode path where
  the schema allows) and appended to its split's files.

By day, the last day's rows go to a holdout whose first ceil(n/2) rows become val and the rest
test once n is known (pseudo-days ``split.days`` count the inputs' lines first, at disk speed).
The fit is saved (fit.json, vocab/) so that a rerun does not redo it, the folders are written
under ``.partial`` names renamed at the end, and meta.json is written last.

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
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from dlrm_dist.data.columnar import criteo_tsv, encode, job, layout, staged, staging
from dlrm_dist.data.columnar.columns import BadLines, check_uses
from dlrm_dist.data.columnar.encode import Days, Encoded
from dlrm_dist.data.columnar.job import (Options, Report, bar, days_of, fitted_schema, known_fit, refuse_empty_splits,
                                         targets, vocab_tables)
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.data.jobrecord import job_record, lock_out, mark_complete
from dlrm_dist.features.schema import SPLITS, FeatureSchema


def check_inputs(inputs: list[Path]) -> None:
    """Every input is a file, and none is given twice (by one name or two: its rows would be read
    twice, and a split by day tells the inputs apart by file)."""
    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing or not inputs:
        raise PreprocessError(f"input file(s) not found: {missing or 'none given'}")
    seen: dict[tuple[int, int], int] = {}
    for k, p in enumerate(inputs):
        st = Path(p).stat()
        first = seen.setdefault((st.st_dev, st.st_ino), k)
        if first != k:
            same = "" if str(inputs[first]) == str(p) else f" (the file {inputs[first]} is)"
            raise PreprocessError(f"input {p} is given twice{same}: give each input file once")


# -- the job record -----------------------------------------------------------------------------
def _job(opts: Options) -> dict[str, Any]:
    return job_record(opts.inputs, {"schema": opts.schema.without_fitted().stable_dict(), "options": {"strict": opts.strict}})


def _done(out: Path) -> Report:
    meta = layout.read_meta(out)
    fractions = meta.get("split_fractions") or {}
    return Report(rows_read=meta["rows_read"], rows={s: meta["splits"][s]["rows"] for s in SPLITS},
                  skipped=meta["skipped"], up_to_date=True, split_fractions={s: fractions[s] for s in fractions and SPLITS})


# -- passes ---------------------------------------------------------------------------------------
def _write_rows(opts: Options, schema: FeatureSchema, cutoffs: Optional[tuple[float, float]], report: Report,
                writers: dict[str, Any], days: Optional[Days]) -> None:
    """The streaming write pass of a criteo_tsv job with nothing to fit: every row encoded by
    ``schema`` (its vocabularies read from the directory: a rerun after the fit) in criteo_tsv's
    workers, appended to its split's writer."""
    vocabs = {t: pa.array(layout.read_vocab(opts.out_dir, t)) for t in vocab_tables(schema)}
    encoder = lambda batch: encode.encode_batch(batch, schema, vocabs)  # noqa: E731 (run by workers: fork)
    from_arrays = lambda arrays: Encoded.from_arrays(schema, arrays)  # noqa: E731
    bad = BadLines(strict=opts.strict)
    check_uses(schema)
    stream = criteo_tsv.read_inputs(opts.inputs, schema, bad, encoder=encoder, from_arrays=from_arrays,
                                    workers=opts.workers)
    row0 = 0
    with bar(opts, "preprocess") as shown:
        for _, _, batch, enc in stream:
            split = encode.split_of(batch, schema, row0, cutoffs, days)
            for k, writer in targets(writers):
                writer.append(split == k, enc.dense, enc.labels, enc.ids)
            row0 += batch.num_rows
            shown.update(batch.num_rows)
    report.read(row0, bad)


def run_passes(opts: Options) -> tuple[FeatureSchema, Optional[tuple[float, float]], dict[str, Any], Report]:
    """The conversion of a (locked, checked) job, by the passes its inputs and split need (module
    docstring); writes fit.json, vocab/ and the folders, not meta.json. Returns (fitted schema,
    time cut-offs, each folder's rows and bag lengths, report)."""
    # A killed run's stage (a SIGKILL skips its removal), whichever pass this run takes: a rerun after
    # the fit streams and would never reach staging.run.
    shutil.rmtree(opts.out_dir / staged.STAGING, ignore_errors=True)
    days = days_of(opts)
    if opts.schema.input.format == "criteo_tsv" and opts.schema.split.by != "time":
        done = known_fit(opts)
        if done is not None:  # nothing to fit: the workers encode, the main process only writes
            schema = fitted_schema(opts.schema, done)
            report = Report()
            return schema, None, job.write_outputs(opts, schema, None, report, _write_rows, days), report
    return staging.run(opts, days)


def preprocess(opts: Options) -> Report:
    """Runs (or resumes, or confirms) the whole conversion; returns what was read and written."""
    check_inputs(opts.inputs)
    layout.output_files(opts.out_dir, opts.schema)  # every path it would write, checked before any is
    with lock_out(opts.out_dir, "dlrm-data preprocess"):
        if layout.begin_job(opts.out_dir, _job(opts), opts.overwrite, opts.inputs):
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
        "time_cutoffs": [c if math.isfinite(c) else None for c in cutoffs] if cutoffs else None,  # (None: no row's)
        "split_fractions": report.split_fractions or None,
    })
    return report
