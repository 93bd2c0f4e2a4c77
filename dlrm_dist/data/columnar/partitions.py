"""Datasets that grow by day: a columnar directory of day partitions (layout.py), whose first
partition fits the schema and whose later partitions are appended with that fitted schema.

    dlrm-data preprocess --schema S --input day1.csv --out DIR --partition 1
        a new dataset: every row of day1.csv is partition 1, and the schema is fitted on those
        rows (vocabularies, dense statistics: fit.json, vocab/); the schema's [split] is not used
    dlrm-data preprocess --append --out DIR --input day2.csv [--partition N]
        partition N (default: the largest so far + 1) from every row of day2.csv, encoded with
        DIR's fitted schema: nothing is refitted (a value no vocabulary holds goes to an OOV row,
        dense values are scaled by the first fit's statistics, hash and managed ids as always)
    dlrm-data preprocess --refit --schema DIR --input day8.csv --out NEW [--partition N]
        a new dataset, as the first form: the schema as written (DIR's, its fitted statistics
        dropped, or a schema file) fitted anew on day8.csv's rows, which become partition N
        (default: DIR's next number, or 1). NEW must not hold a complete dataset (not DIR, not
        another one): ids of the two datasets are not comparable (other vocabularies, statistics)

Under the output directory's writer lock (fileio.DirLock) for the whole run, by jobrecord.py's rules:

- ``job.json`` is the dataset's job (the first partition's inputs, the schema as written, its
  number, options): rerun once complete it is a no-op; another such job is refused over a
  complete directory, naming what differs, unless ``--overwrite`` (which starts the whole
  directory over), and starts over in an incomplete one;
- ``partition_<N>.job.json`` is partition N's (inputs with size and mtime, options): the same
  append again is a no-op that says so; another input for a published partition is refused
  naming both; an input already published as another partition is refused naming that partition;
  an append that did not complete is started over, whatever it was: the next append removes what
  it left (folders and records of partitions meta.json does not list);
  one refused for its input (a malformed line with --strict, no valid row, a full disk) leaves
  no record behind, so the directory is as it was.

A partition is published last: its folder renamed from ``.partial``, then meta.json rewritten
atomically with it (layout.write_splits / publish_partition), then its record marked complete.
A reader that opens the directory meanwhile sees the partitions it had.

A partition's rows are read and encoded by preprocess.py's one dispatcher (``run_passes``, with
``Options.partition``): a CSV day by staging's one read, a criteo_tsv day by its workers.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dlrm_dist.data.columnar import layout, preprocess
from dlrm_dist.data.columnar.job import Options
from dlrm_dist.data.errors import DataError, PreprocessError
from dlrm_dist.data.jobrecord import (START_OVER, differences, is_complete, job_record, lock_out, mark_complete,
                                      read_job, write_job)
from dlrm_dist.data.partition_list import MAX_PARTITION, listing
from dlrm_dist.data.resolve import schema_differences
from dlrm_dist.errors import DlrmError
from dlrm_dist.fileio import crc32c_of
from dlrm_dist.features.schema import FeatureSchema, SplitSpec

ALL_ROWS = SplitSpec(by="random", fractions=(1.0, 0.0, 0.0))  # every row of a partition's input is its row


@dataclass
class PartitionReport:
    partition: int
    rows: int = 0
    rows_read: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    up_to_date: bool = False
    fitted: bool = False  # this run fitted the schema (a new dataset's first partition)
    partitions: list[int] = field(default_factory=list)  # the directory's partitions after the run
    warnings: list[str] = field(default_factory=list)  # what the read saw that may be a mistake


def for_partitions(schema: FeatureSchema) -> FeatureSchema:
    """``schema`` as partitions encode with it: every row of the input in one split (its [split]
    is not used), the rest unchanged."""
    return dataclasses.replace(schema, split=ALL_ROWS)


def _records_options(opts: Options) -> dict[str, Any]:
    return {"options": {"strict": opts.strict}}


def _check_number(number: int) -> int:
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_PARTITION:
        raise PreprocessError(f"--partition {number!r}: a partition number is an integer in [0, {MAX_PARTITION}] "
                              "(e.g. the day: 1, 2, ... or 20261201)")
    return number


# -- reading what a directory holds ---------------------------------------------------------------
def partitioned_meta(out: Path, doing: str) -> dict[str, Any]:
    """A complete partitioned directory's meta.json, or a PreprocessError saying what ``doing`` needs."""
    if not (out / layout.META).is_file():
        raise PreprocessError(f"{out} holds no complete dataset to {doing}: write its first partition with "
                              f"`dlrm-data preprocess --schema S --input DAY_FILE --out {out} --partition 1`")
    meta = layout.read_meta(out)
    if not layout.is_partitioned(meta):
        raise PreprocessError(f"{out} was preprocessed into train/val/test splits, not day partitions, so there is "
                              f"nothing to {doing}: start a dataset that grows by day with --partition N "
                              "(in another --out)")
    return meta


def _done(out: Path, number: int) -> PartitionReport:
    meta = layout.read_meta(out)
    published = layout.partitions_of(meta, out)
    entry = published.get(number, {})
    return PartitionReport(number, rows=entry.get("rows", 0), rows_read=entry.get("rows_read", 0),
                           skipped=entry.get("skipped", 0), up_to_date=True, partitions=list(published))


# -- writing one partition --------------------------------------------------------------------------
def _write(opts: Options, schema: FeatureSchema, number: int) -> tuple[dict[str, Any], Any]:
    """Partition ``number``'s folder from every row of the inputs, by preprocess.py's dispatcher:
    encoded by the directory's fit (fit.json, vocab/: an append), or, a new dataset's first, with
    ``schema`` fitted on them first. Returns (its entry for meta.json, the driver's report)."""
    job = dataclasses.replace(opts, schema=for_partitions(schema), inputs=list(opts.inputs), partition=number)
    _, _, written, report = preprocess.run_passes(job)
    entry = {**written[layout.partition_split(number)], "inputs": [str(Path(p).resolve()) for p in opts.inputs],
             "rows_read": report.rows_read, "skipped": report.skipped, "malformed_examples": report.examples}
    return entry, report


def _publish(opts: Options, meta: dict[str, Any], number: int, entry: dict[str, Any], report: Any,
             started: float) -> PartitionReport:
    """Partition ``number`` added to meta.json (rewritten, last), its record marked complete."""
    published = layout.publish_partition(opts.out_dir, meta, number, entry)
    mark_complete(opts.out_dir, layout.partition_job(number))
    return PartitionReport(number, rows=entry["rows"], rows_read=report.rows_read, skipped=report.skipped,
                           examples=report.examples, seconds=time.perf_counter() - started, warnings=report.warnings,
                           partitions=list(layout.partitions_of(published, opts.out_dir)))


def _partition_record(opts: Options, number: int) -> dict[str, Any]:
    """The partition's job record; ``contents`` (size and CRC32C of each input) finds a day's file
    appended again under another name or path, which path, size and mtime alone do not."""
    contents = [dict(zip(("size", "crc32c"), crc32c_of(p))) for p in opts.inputs]
    return job_record(opts.inputs, {"partition": number, "contents": contents, **_records_options(opts)})


# -- a new dataset: the first partition fits the schema -----------------------------------------------
def _first_number(opts: Options) -> int:
    if opts.partition is not None:
        return _check_number(opts.partition)
    if opts.refit and opts.schema_source is not None and (opts.schema_source / layout.META).is_file():
        meta = layout.read_meta(opts.schema_source)
        published = layout.partitions_of(meta, opts.schema_source)
        return max(published) + 1 if published else 1
    return 1


def _refuse_refit_into(out: Path, job: dict[str, Any], source: Optional[Path]) -> None:
    """--refit writes a new dataset: not into a complete one (unless it is this very job, done)."""
    if source is not None and out.resolve() == Path(source).resolve():
        raise PreprocessError(f"--refit --out {out}: that is the directory the schema comes from; --refit writes a "
                              "new dataset fitted on the input: give a new --out (to add a day with its fitted "
                              f"schema instead: --append --out {out})")
    if not (out / layout.META).is_file():
        return
    old = read_job(out)
    if old is not None and not differences(old, job):
        return  # the same refit, complete: a no-op (begin_job says so)
    meta = layout.read_meta(out)
    held = (f"partitions {listing(layout.partitions_of(meta, out))}" if layout.is_partitioned(meta)
            else "train/val/test splits")
    raise PreprocessError(f"--refit --out {out}: it holds a complete dataset ({held}); --refit writes a new dataset "
                          "fitted on the input, never into an existing one: give a new --out")


def _refuse_another_first_partition(out: Path, job: dict[str, Any]) -> None:
    """A complete dataset that grows by day, given another first partition: most likely a day that
    was meant to be appended (begin_job would refuse it too, without saying so)."""
    old = read_job(out)
    if old is None or not (out / layout.META).is_file() or not differences(old, job):
        return
    meta = layout.read_meta(out)
    if layout.is_partitioned(meta):
        raise PreprocessError(f"{out} is a complete dataset of partitions {listing(layout.partitions_of(meta, out))} "
                              f"(fitted on partition {meta.get('fitted_on')}), started by another job "
                              f"({'; '.join(differences(old, job))}): to add this day with its fitted schema use "
                              "--append; to start the directory over, --overwrite")


def new_dataset(opts: Options) -> PartitionReport:
    """``--partition N`` (or ``--refit``): a new dataset whose partition N is every row of the inputs,
    the schema fitted on them; or, rerun, a no-op once complete (jobrecord.py's rules)."""
    if opts.schema is None:
        raise PreprocessError("a new dataset needs --schema (a schema file, a built-in name, or a directory whose "
                              "schema as written to use)")
    preprocess.check_inputs(opts.inputs)
    number, out = _first_number(opts), Path(opts.out_dir)
    schema = opts.schema.without_fitted()
    layout.output_files(out, schema, (layout.partition_split(number),))  # every path checked before any is written
    job = job_record(opts.inputs, {"schema": schema.stable_dict(), "partition": number, **_records_options(opts)})
    with lock_out(out, "dlrm-data preprocess --partition"):
        if opts.refit:
            _refuse_refit_into(out, job, opts.schema_source)
        elif not opts.overwrite:
            _refuse_another_first_partition(out, job)
        if layout.begin_job(out, job, opts.overwrite, opts.inputs):
            return _done(out, number)
        started = time.perf_counter()
        write_job(out, _partition_record(opts, number), name=layout.partition_job(number))
        entry, driver_report = _write(opts, schema, number)  # (fitted over every row: all "train")
        fitted = preprocess.fitted_schema(schema, layout.read_fit(out))  # (with its own [split], as written)
        meta = {"schema": fitted.to_dict(), "splits": {}, "partitions": {}, "fitted_on": number}
        report = _publish(opts, meta, number, entry, driver_report, started)
        mark_complete(out)
    report.fitted, report.seconds = True, time.perf_counter() - started
    return report


# -- a later day: appended with the directory's fitted schema ------------------------------------------
def _same_schema(out: Path, given: Optional[FeatureSchema], stored: FeatureSchema) -> None:
    if given is None:
        return
    diffs = schema_differences(given, stored)
    if diffs:
        raise PreprocessError(f"--append --schema: the schema differs from the one {out} was fitted with "
                              f"({'; '.join(diffs)}); an appended partition is encoded with the directory's fitted "
                              "schema: drop --schema, or start a new dataset with --refit")


def _refuse_published_input(out: Path, published: dict[int, dict[str, Any]], record: dict[str, Any],
                            number: int) -> None:
    """An input file already published as another partition: the same file (path, size and
    modification time) or the same bytes under another name (size and CRC32C: a copy of a day)."""
    mine = {(i["path"], i["size"], i["mtime_ns"]) for i in record["inputs"]}
    my_bytes = {(c["size"], c["crc32c"]): path for c, path in zip(record["contents"], record["inputs"])}
    for other in published:
        if other == number:
            continue
        old = read_job(out, layout.partition_job(other)) or {}
        same = [i["path"] for i in old.get("inputs", []) if (i.get("path"), i.get("size"), i.get("mtime_ns")) in mine]
        if same:
            raise PreprocessError(f"{same[0]} is partition {other}'s input already (same size and modification time): "
                                  f"appending it as partition {number} would train on its rows twice; give the "
                                  "next day's file")
        old_bytes = [(c.get("size"), c.get("crc32c")) for c in old.get("contents", []) if isinstance(c, dict)]
        for (size, crc), path in zip(old_bytes, old.get("inputs", [])):
            if (size, crc) in my_bytes:
                raise PreprocessError(f"{my_bytes[size, crc]['path']} holds the same bytes as {path.get('path')}, "
                                      f"partition {other}'s input ({size:,} bytes, CRC32C {crc}): appending it as "
                                      f"partition {number} would train on those rows twice; give the next day's file")


def _last_from_this_input(out: Path, published: dict[int, dict[str, Any]], record: dict[str, Any]) -> Optional[int]:
    """The largest partition, when an ``--append`` without ``--partition`` has its complete job's input
    and options (``record`` is this append's, for the next number): the same command run again."""
    if not published:
        return None
    last = max(published)
    old = read_job(out, layout.partition_job(last))
    same = old is not None and is_complete(old, True) and not differences(old, {**record, "partition": last})
    return last if same else None


def _refuse_other_input(out: Path, number: int, old: dict[str, Any], record: dict[str, Any]) -> None:
    was = [i.get("path") for i in old.get("inputs", [])]
    raise PreprocessError(f"partition {number} of {out} was written from {was}; this append's input differs "
                          f"({'; '.join(differences(old, record))}): a published partition is never rewritten "
                          "(a run may be reading it); append this file as another partition (--partition M), or "
                          "start a new dataset")


def append(opts: Options) -> PartitionReport:
    """``--append``: partition N of an existing partitioned directory from every row of the inputs,
    encoded by its fitted schema (nothing refitted); a no-op if that partition is complete from
    the same input, refused if it holds another's."""
    if opts.overwrite:
        raise PreprocessError("--append --overwrite: --overwrite starts a whole directory over and does not apply "
                              "to --append (a published partition is never rewritten: a run may be reading it)")
    if opts.refit:
        raise PreprocessError("--append --refit: --append adds a partition with the directory's fitted schema; "
                              "--refit makes a new dataset fitted on the input (a new --out): choose one")
    preprocess.check_inputs(opts.inputs)
    out = Path(opts.out_dir)
    if not out.is_dir():  # (before the lock, which would create it)
        partitioned_meta(out, "append to")
    with lock_out(out, "dlrm-data preprocess --append"):
        meta = partitioned_meta(out, "append to")
        stored = layout.stored_schema(out)
        if layout.read_fit(out) is None:  # (the passes would fit this day instead: other vocabularies)
            raise DataError(f"{out / layout.FIT}: missing, and an appended partition is encoded with the fit of "
                            f"partition {meta.get('fitted_on')} it holds; {START_OVER}")
        _same_schema(out, opts.schema, stored)
        published = layout.partitions_of(meta, out)
        number = _check_number(opts.partition) if opts.partition is not None else max(published, default=0) + 1
        layout.output_files(out, stored, (layout.partition_split(number),))
        record, name = _partition_record(opts, number), layout.partition_job(number)
        if opts.partition is None and (last := _last_from_this_input(out, published, record)) is not None:
            return _done(out, last)  # a rerun of the append that made it (its number was "the largest + 1")
        old = read_job(out, name)
        if old is not None and is_complete(old, number in published):
            if differences(old, record):
                _refuse_other_input(out, number, old, record)
            return _done(out, number)
        if old is None and number in published:
            raise PreprocessError(f"partition {number} of {out} exists but has no job record ({name}); a published "
                                  "partition is never rewritten: append this file as another partition (--partition M)")
        _refuse_published_input(out, published, record, number)
        layout.refuse_inputs_inside(out, opts.inputs)
        layout.clear_unpublished(out, published)  # (an append that did not complete starts over, whichever it was)
        write_job(out, record, name=name)
        started = time.perf_counter()
        try:
            entry, report = _write(opts, stored, number)
            return _publish(opts, meta, number, entry, report, started)
        except DlrmError:  # refused input (bad lines, no rows, a full disk): nothing was published, no record kept
            (out / name).unlink(missing_ok=True)
            raise
