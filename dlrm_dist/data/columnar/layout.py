"""The on-disk layout of schema-driven preprocessed data: one folder per split, one file per column.

    DIR/meta.json                    the fitted schema, rows and mean bag lengths per split;
                                     written last: its presence means the directory is complete
    DIR/job.json                     what the preprocessing run was started with (inputs with
                                     size and mtime, the schema as written, options) and
                                     whether it completed
    DIR/fit.json                     the fit pass's result (vocabulary rows, dense statistics)
    DIR/vocab/<table>.json           a vocabulary table's values, id = oov_buckets + position
                                     (strings, or integers for criteo_tsv's integer fields)
    DIR/<split>/dense.npy            float32 (N, num_dense), transformed
    DIR/<split>/labels.npy           float32 (N,), 0 or 1
    DIR/<split>/<feature>.ids.npy    int32 (int64 for tables of 2**31 rows or more, and for a
                                     managed feature's raw ids in [0, 2**63 - 1)): one id
                                     per row, or all ids of all bags for a multi-hot feature
    DIR/<split>/<feature>.offsets.npy  int64 (N + 1,), multi-hot features only

A directory that grows by day holds day partitions instead of the three splits (``dlrm-data
preprocess --partition N``, then ``--append``; partitions.py writes them):

    DIR/meta.json                    as above, with "splits": {} and "partitions": {"N": {"rows",
                                     "bag_lengths", "inputs", "rows_read", "skipped", ...}} (every
                                     published partition) and "fitted_on": the partition whose rows
                                     fitted the schema (vocabularies, dense statistics)
    DIR/job.json                     the dataset's job: the first partition's, which fitted the schema
    DIR/partition_<N>.job.json       partition N's own job record (inputs with size and mtime, options)
    DIR/partition_<N>/...            the files of a split (dense.npy, labels.npy, <feature>.ids.npy,
                                     <feature>.offsets.npy), every row of partition N's input

A partition is written under ``partition_<N>.partial``, renamed to ``partition_<N>``, and only
then added to meta.json (rewritten atomically, last): a reader that reads meta.json never sees a
partition that is not complete. ``partition_<N>`` is also the split name that ``batches`` takes.

Every file is a plain .npy, memory-mapped at load time. ``check_directory`` validates every
file against meta.json and each other before any process group exists: every split, every
partition.

Every path below is built with ``fileio.inside``: a feature or table name that would leave
the directory (``../x``, an absolute name) is refused even if it got past the schema. The
JSON files are written atomically; a damaged one is a DataError naming it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from dlrm_dist.data.errors import DataError, PreprocessError
from dlrm_dist.data.npy import NpyWriter, Tally, open_checked
from dlrm_dist.data.jobrecord import JOB, START_OVER, differences, is_complete, read_job, read_record, write_job
from dlrm_dist.fileio import LOCK_FILE, UnsafePathError, atomic_write_json, inside
from dlrm_dist.features.schema import SPLITS, FeatureSchema, SparseFeature, from_dict

FORMAT = "dlrm_dist.columnar"
VERSION = 1
META = "meta.json"
FIT = "fit.json"
VOCAB_DIR = "vocab"
INT32_ROWS = 2**31 - 1


def id_dtype(rows: int) -> np.dtype:
    return np.dtype(np.int32 if rows <= INT32_ROWS else np.int64)


def _file_in(directory: Path, folder: str, name: str) -> Path:
    """``directory/folder/name``, refused unless it is a file directly in that folder (no ``..``,
    no ``/``, no absolute name, no symlink out): names come from a schema, paths from here."""
    path = inside(directory, folder, name)
    if path.parent != inside(directory, folder):
        raise UnsafePathError(f"refusing to write {folder}/{name}: the name would place it in {path.parent}, "
                              f"not in {Path(directory) / folder} (feature and table names must not hold '/')")
    return path


def dense_file(directory: Path, split: str) -> Path:
    return _file_in(directory, split, "dense.npy")


def labels_file(directory: Path, split: str) -> Path:
    return _file_in(directory, split, "labels.npy")


def ids_file(directory: Path, split: str, feature: str) -> Path:
    return _file_in(directory, split, f"{feature}.ids.npy")


def offsets_file(directory: Path, split: str, feature: str) -> Path:
    return _file_in(directory, split, f"{feature}.offsets.npy")


def vocab_file(directory: Path, table: str) -> Path:
    return _file_in(directory, VOCAB_DIR, f"{table}.json")


def output_files(directory: Path, schema: FeatureSchema, splits: tuple[str, ...] = SPLITS) -> list[Path]:
    """Every file a preprocessing job by ``schema`` writes in ``splits`` and vocab/ (each checked
    to stay inside ``directory``): called before the job writes anything."""
    files = [vocab_file(directory, t) for t in schema.table_names if schema.features_of(t)[0].kind == "vocab"]
    for s in splits:
        files += [dense_file(directory, s), labels_file(directory, s)]
        files += [ids_file(directory, s, f.name) for f in schema.sparse]
        files += [offsets_file(directory, s, f.name) for f in schema.sparse if f.multi_hot]
    return files


def _kept(keep: np.ndarray) -> Optional[np.ndarray | slice]:
    """A block's rows to keep: None for none, every row as a slice (a block wholly in one split,
    as by day nearly always: no copies), else the mask."""
    if not keep.any():
        return None
    return slice(None) if keep.all() else keep


class SplitWriter:
    """The files of one split, appended block by block under ``DIR/<split>.partial``."""

    def __init__(self, out: Path, split: str, schema: FeatureSchema, tally: Tally, durable: bool = True) -> None:
        (out / split).mkdir(parents=True, exist_ok=True)
        self.schema, self.durable = schema, durable
        self.writers: list[NpyWriter] = []
        self.dense = self._open(dense_file(out, split), np.float32, (schema.num_dense,), tally)
        self.labels = self._open(labels_file(out, split), np.float32, (), tally)
        self.ids, self.offsets, self.nvalues = {}, {}, {}
        for f in schema.sparse:
            dtype = id_dtype(schema.id_range(f))
            self.ids[f.name] = self._open(ids_file(out, split, f.name), dtype, (), tally)
            if f.multi_hot:
                self.offsets[f.name] = self._open(offsets_file(out, split, f.name), np.int64, (), tally)
                self.offsets[f.name].append(np.zeros(1, np.int64))
            self.nvalues[f.name] = 0

    def _open(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...], tally: Tally) -> NpyWriter:
        self.writers.append(NpyWriter(path, dtype, row_shape, tally, durable=self.durable))
        return self.writers[-1]

    def append(self, keep: np.ndarray, dense: np.ndarray, labels: np.ndarray, ids: dict[str, tuple]) -> None:
        """The rows ``keep`` selects of a block: dense matrix, labels and every feature's (ids, bag
        lengths or None)."""
        self.append_rows(keep, dense, labels)
        for name, (values, lengths) in ids.items():
            self.append_ids(keep, name, values, lengths)

    def append_rows(self, keep: np.ndarray, dense: np.ndarray, labels: np.ndarray) -> None:
        """A block's dense rows and labels (``keep``: which go here). The files of one feature
        (``append_ids``) and those of the rows are independent: different threads may append to
        them at once, each in block order."""
        keep = _kept(keep)
        if keep is not None:
            self.dense.append(dense[keep])
            self.labels.append(labels[keep])

    def append_ids(self, keep: np.ndarray, name: str, values: np.ndarray, lengths: Optional[np.ndarray]) -> None:
        """A block's ids of feature ``name`` (``lengths``: its rows' bag lengths; None: one id a row)."""
        whole = _kept(keep)
        if whole is None:
            return
        if lengths is None:
            self.ids[name].append(values[whole])
            self.nvalues[name] += len(values[whole])
            return
        kept_lengths = lengths[whole]
        self.ids[name].append(values if isinstance(whole, slice) else values[np.repeat(keep, lengths)])
        self.offsets[name].append(self.nvalues[name] + np.cumsum(kept_lengths))
        self.nvalues[name] += int(kept_lengths.sum())

    def close(self) -> dict[str, Any]:
        for w in self.writers:
            w.close()
        rows = self.labels.rows
        return {"rows": rows, "bag_lengths": {f: n / rows if rows else 0.0 for f, n in self.nvalues.items()}}

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


PARTIAL = ".partial"  # a split being written: DIR/<split>.partial, renamed when every split is complete


def remove_partials(directory: Path, names: tuple[str, ...] = SPLITS) -> None:
    """A killed or failed run's partial split folders."""
    for s in names:
        shutil.rmtree(Path(directory) / (s + PARTIAL), ignore_errors=True)


def write_splits(directory: Path, schema: FeatureSchema, fill: Callable[[dict[str, "SplitWriter"]], None],
                 names: tuple[str, ...] = SPLITS, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The one way split folders are written: a :class:`SplitWriter` per name (train/val/test, or
    one partition's ``partition_<N>``) and per ``extra`` folder (scratch, never published, so not
    fsynced: ``fill`` must close and pop it), filled by ``fill``, then published together (renamed from their ``.partial`` names over any
    folder of that name: a killed run's, or the previous job's). On any failure (a full disk, bad
    data, an interrupt) this run's partial files are removed and what earlier runs completed is
    kept. meta.json is not touched. Returns each folder's rows and bag lengths."""
    out = Path(directory)
    remove_partials(out, (*names, *extra))  # a killed run's leftovers
    writers: dict[str, SplitWriter] = {}
    try:
        tally = Tally()
        for s in (*names, *extra):
            writers[s] = SplitWriter(out, s + PARTIAL, schema, tally, durable=s in names)
        fill(writers)
        written = {s: w.close() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        remove_partials(out, (*names, *extra))
        raise
    for s in names:
        shutil.rmtree(out / s, ignore_errors=True)
        (out / (s + PARTIAL)).rename(out / s)
    return written


def publish_partition(directory: Path, meta: dict[str, Any], number: int, entry: dict[str, Any]) -> dict[str, Any]:
    """meta.json with partition ``number`` added (written atomically: from now on readers see it)."""
    partitions = {str(n): e for n, e in partitions_of(meta, directory).items()}
    partitions[str(int(number))] = entry
    new = {k: v for k, v in meta.items() if k not in ("format", "version")}
    new["partitions"] = dict(sorted(partitions.items(), key=lambda kv: int(kv[0])))
    write_meta(directory, new)
    return read_meta(directory)


def one_kind(values: list) -> bool:
    """All strings, or all integers (JSON integers load back exactly; a bool is not one)."""
    return all(isinstance(v, str) for v in values) or all(type(v) is int for v in values)


def read_vocab(directory: Path, table: str) -> list[str] | list[int]:
    """A vocabulary table's values; missing or damaged is a DataError naming the file."""
    path = vocab_file(directory, table)
    values = read_record(path, list, START_OVER)
    if values is None:
        raise DataError(f"{path}: missing (the fit pass wrote no vocabulary for table {table!r}); {START_OVER}")
    if not one_kind(values):
        raise DataError(f"{path}: damaged (a vocabulary is a JSON array of strings, or of integers); {START_OVER}")
    return values


def write_fit(directory: Path, fit: dict[str, Any]) -> None:
    atomic_write_json(Path(directory) / FIT, fit)


def read_fit(directory: Path) -> Optional[dict[str, Any]]:
    """The fit pass's result, or None if it has not run; a damaged file is a DataError naming it."""
    path = Path(directory) / FIT
    fit = read_record(path, dict, START_OVER)
    if fit is not None and not (isinstance(fit.get("vocab_rows"), dict) and isinstance(fit.get("scales"), dict)):
        raise DataError(f"{path}: damaged (no vocab_rows and scales objects); {START_OVER}")
    return fit


def read_meta(directory: str | Path) -> dict[str, Any]:
    p = Path(directory) / META
    if not Path(directory).is_dir():
        what = "is a file, not a directory" if Path(directory).exists() else "does not exist"
        raise DataError(f"data directory {str(directory)!r} {what}")
    meta = read_record(p, dict, "preprocess again (--overwrite)")
    if meta is None:
        raise DataError(f"{directory}: no {META}; the directory is not the output of a finished "
                        "`dlrm-data preprocess --schema` (rerun it to complete it)")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{p}: format {meta.get('format')!r} version {meta.get('version')!r}; "
                        f"expected {FORMAT} version {VERSION}")
    return meta


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Publishes meta.json (atomically: its presence means the directory is complete)."""
    atomic_write_json(Path(directory) / META, {"format": FORMAT, "version": VERSION, **meta}, indent=1, sort_keys=True)


def stored_schema(directory: str | Path) -> FeatureSchema:
    """The fitted schema a preprocessed directory was written with."""
    return from_dict(read_meta(directory)["schema"], f"{Path(directory) / META}")


@dataclass
class SplitArrays:
    """A split's memory-mapped arrays."""

    rows: int
    dense: np.ndarray
    labels: np.ndarray
    ids: dict[str, np.ndarray]
    offsets: dict[str, Optional[np.ndarray]]


def _open_feature(directory: Path, split: str, f: SparseFeature, rows: int, table_rows: int) -> tuple:
    dtype = id_dtype(table_rows)
    if not f.multi_hot:
        return open_checked(ids_file(directory, split, f.name), dtype, (rows,)), None
    offsets = open_checked(offsets_file(directory, split, f.name), np.dtype(np.int64), (rows + 1,))
    ids = open_checked(ids_file(directory, split, f.name), dtype, (None,))
    if offsets[0] != 0 or offsets[-1] != len(ids):
        raise DataError(f"{offsets_file(directory, split, f.name)}: offsets run from {offsets[0]} to "
                        f"{offsets[-1]}, but {ids_file(directory, split, f.name).name} holds {len(ids)} ids")
    return ids, offsets


def open_split(directory: str | Path, split: str, schema: FeatureSchema, rows: int) -> SplitArrays:
    """Every file of ``split``, each checked against ``rows`` and the schema."""
    d = Path(directory)
    dense = open_checked(dense_file(d, split), np.dtype(np.float32), (rows, schema.num_dense))
    labels = open_checked(labels_file(d, split), np.dtype(np.float32), (rows,))
    ids, offsets = {}, {}
    for f in schema.sparse:
        ids[f.name], offsets[f.name] = _open_feature(d, split, f, rows, schema.id_range(f))
    return SplitArrays(rows, dense, labels, ids, offsets)


def check_directory(directory: str | Path) -> tuple[dict[str, Any], FeatureSchema, dict[str, SplitArrays]]:
    """meta.json, the stored schema and every split (a partitioned directory's: every partition,
    by its split name ``partition_<N>``), all files checked; raises DataError naming the file."""
    meta = read_meta(directory)
    schema = from_dict(meta["schema"], f"{Path(directory) / META}")
    rows = {s: int(split_entry(meta, s, directory)["rows"]) for s in split_names(meta, directory)}
    return meta, schema, {s: open_split(directory, s, schema, n) for s, n in rows.items()}


# -- day partitions ---------------------------------------------------------------------------------
PARTITION = "partition_"  # partition N's folder, and its split name: partition_<N>


def partition_split(number: int) -> str:
    """The split name (and folder) of partition ``number``."""
    return f"{PARTITION}{int(number)}"


def partition_job(number: int) -> str:
    """The file name of partition ``number``'s job record."""
    return f"{partition_split(number)}.job.json"


def partitions_of(meta: dict[str, Any], directory: str | Path = "") -> dict[int, dict[str, Any]]:
    """The published partitions of a directory's meta.json, by number in increasing order ({} for a
    directory of train/val/test splits); a damaged entry is a DataError naming meta.json."""
    found = meta.get("partitions")
    if found is None:
        return {}
    where = Path(directory) / META
    if not isinstance(found, dict):
        raise DataError(f"{where}: damaged (\"partitions\" is not an object); preprocess again (--overwrite)")
    out = {}
    for key, entry in found.items():
        if not (key.isascii() and key.isdigit() and str(int(key)) == key and isinstance(entry, dict)
                and type(entry.get("rows")) is int and entry["rows"] >= 0 and isinstance(entry.get("bag_lengths"), dict)):
            raise DataError(f"{where}: damaged (partition entry {key!r} is not a number with rows and bag_lengths); "
                            "preprocess again (--overwrite)")
        out[int(key)] = entry
    return dict(sorted(out.items()))


def pooled_bag_lengths(entries: list[dict[str, Any]], features: list[str]) -> dict[str, float]:
    """Each feature's mean bag length over several partitions' meta.json entries, weighted by their rows."""
    total = max(sum(int(e["rows"]) for e in entries), 1)
    return {f: sum(float(e["bag_lengths"][f]) * int(e["rows"]) for e in entries) / total for f in features}


def is_partitioned(meta: dict[str, Any]) -> bool:
    """A directory of day partitions (``--partition`` / ``--append``) rather than train/val/test splits."""
    return "partitions" in meta


def split_names(meta: dict[str, Any], directory: str | Path = "") -> list[str]:
    """Every split a complete directory holds: train/val/test, or each partition's ``partition_<N>``."""
    if is_partitioned(meta):
        return [partition_split(n) for n in partitions_of(meta, directory)]
    return list(SPLITS)


def split_entry(meta: dict[str, Any], split: str, directory: str | Path = "") -> dict[str, Any]:
    """meta.json's record of one split or partition (rows, bag lengths)."""
    if split.startswith(PARTITION) and is_partitioned(meta):
        return partitions_of(meta, directory)[int(split[len(PARTITION):])]
    entry = meta.get("splits", {}).get(split) if isinstance(meta.get("splits"), dict) else None
    if not isinstance(entry, dict) or type(entry.get("rows")) is not int:
        raise DataError(f"{Path(directory) / META}: damaged (no rows for split {split!r}); preprocess again (--overwrite)")
    return entry


# -- a job's claim on its output directory ------------------------------------------------------
_RECORDS = (META, JOB, FIT)


def _leftovers(directory: Path) -> list[Path]:
    """Temporaries of the atomic record and vocabulary writes a kill left behind."""
    return [*(tmp for name in _RECORDS for tmp in directory.glob(f".{name}.*.tmp")),
            *(directory / VOCAB_DIR).glob(".*.json.*.tmp")]


def clear(directory: Path) -> None:
    """Removes what a job writing this layout writes: its records (partitions' too), vocab/, the
    splits, the partitions and every ``<name>.partial`` staging folder (other files stay)."""
    clear_unpublished(directory, ())
    for name in _RECORDS:
        (directory / name).unlink(missing_ok=True)
    for d in [directory / VOCAB_DIR, *(directory / s for s in SPLITS), *directory.glob("*.partial")]:
        if d.is_dir():
            shutil.rmtree(d)


def clear_unpublished(directory: Path, published: Any) -> None:
    """Removes what killed appends left (the caller holds the lock, so no write of ours is in
    flight): partition folders and job records of partitions not in ``published`` (meta.json's),
    every ``partition_<N>.partial`` folder, and the temporaries of record writes."""
    keep = {partition_split(n) for n in published}
    for d in directory.glob(PARTITION + "*"):
        name = d.name.removesuffix(PARTIAL)
        number = name[len(PARTITION):]
        if d.is_dir() and number.isascii() and number.isdigit() and (d.name != name or name not in keep):
            shutil.rmtree(d)
    for record in directory.glob(f"{PARTITION}*.job.json"):
        if record.name.removesuffix(".job.json") not in keep:
            record.unlink(missing_ok=True)
    for tmp in [*_leftovers(directory), *directory.glob(f".{PARTITION}*.job.json.*.tmp")]:
        tmp.unlink(missing_ok=True)


def _foreign(directory: Path) -> bool:
    """The directory holds files, but no job record: not ours to write into (a lock file and a
    killed first run's temporary record are ours)."""
    ours = {LOCK_FILE, *(p.name for p in _leftovers(directory))} if directory.is_dir() else set()
    return directory.is_dir() and any(p.name not in ours for p in directory.iterdir())


def _written(name: str) -> bool:
    """A folder of the layout's, which jobs write and clear: vocab/, the splits, partitions, staging."""
    return name in (VOCAB_DIR, *SPLITS) or name.endswith(PARTIAL) or name.startswith(PARTITION)


def refuse_inputs_inside(directory: Path, inputs: Sequence[Path | str]) -> None:
    """A PreprocessError for an input that a job writing this layout would remove or replace: a file
    in one of its folders (``_written``) or one of its records, by the path given (a link there is
    removed with its folder) or by the file it resolves to. Checked before anything is cleared, so
    a job never destroys its own input; a file elsewhere in the directory is left alone."""
    root = Path(directory).resolve()
    for p in inputs:
        for where in (Path(p).parent.resolve() / Path(p).name, Path(p).resolve()):
            try:
                rel = where.relative_to(root)
            except ValueError:
                continue
            if (len(rel.parts) > 1 and _written(rel.parts[0])) or \
                    (len(rel.parts) == 1 and rel.name in (*_RECORDS, LOCK_FILE)):
                what = f"the folder {rel.parts[0]}/" if len(rel.parts) > 1 else f"the place of its record {rel.name}"
                raise PreprocessError(f"input {p} lies in {what} of --out {directory}, which this job writes (and "
                                      "clears on a new start): move the input out of there, or give another --out")


def begin_job(directory: Path, job: dict[str, Any], overwrite: bool, inputs: Sequence[Path] = ()) -> bool:
    """Checks the (locked) output directory against ``job`` (jobrecord.py's rules) and records
    it; True when this job completed there already (nothing to do).

    Any command writing this layout (``dlrm-data preprocess``, ``dlrm-data import-torchrec``)
    starts this way, so one rule holds for all: the same job resumes or is done, another job
    clears an incomplete directory and is refused over a complete one (naming what differs)
    unless ``overwrite``, and a directory with files but no job record is not written into; no
    input (``inputs`` as given, and the record's) may lie where the job writes.
    """
    # (before anything is cleared; the inputs as given too: the record's are resolved, past a link)
    refuse_inputs_inside(directory, [*inputs, *(i["path"] for i in job["inputs"])])
    old = None if overwrite else read_job(directory)  # --overwrite is the way out of a damaged record
    if overwrite:
        clear(directory)
    elif old is not None:
        diffs, meta_written = differences(old, job), (directory / META).is_file()
        complete = is_complete(old, meta_written)
        if diffs and complete:
            raise PreprocessError(f"{directory} holds the output of another job ({'; '.join(diffs)}) that "
                                  "completed; use another --out, or --overwrite to start over")
        if diffs:  # another job that did not complete (e.g. the schema it failed on): start over
            clear(directory)
        elif complete and meta_written:  # (a completed job whose meta.json went is written again)
            return True
    elif _foreign(directory):
        raise PreprocessError(f"{directory} is not empty and was not written by dlrm-data; use another --out, "
                              "or --overwrite")
    for tmp in _leftovers(directory):  # under the lock no write of ours is in flight: these are a kill's
        tmp.unlink(missing_ok=True)
    write_job(directory, job)
    return False
