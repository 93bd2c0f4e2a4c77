"""Raw Criteo TSV -> per-day binary arrays, in parallel, streamed, resumable.

Kaggle ``train.txt`` is cut into ``kaggle_days`` (7) pseudo-days of equal line counts;
Terabyte ``day_0 .. day_23`` (plain or gzip) map to days 0..23. In both, the LAST day is
split in halves at load time: the FIRST half is validation, the SECOND is test (as
TorchRec and the DLRM reference do).

Worker processes parse chunks of whole lines (parse.py) and transform them (transform.py);
the main process writes them in order to the current day (layout.DayWriter), publishing a
day only when complete. The whole job holds ``--out``'s writer lock (a second job into it is
refused naming the first). A rerun of the same job skips complete days and redoes a
half-written one; a rerun with another input or other options starts over if the recorded
job did not complete, and is refused over a completed one (job.json records what a job was
started with and whether it completed) unless ``overwrite``. Every record is written
atomically; a full disk is named and the day being written is removed, complete days kept.
Malformed lines are counted and the first few reported with file and line number;
``strict`` makes the first one an error.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from tqdm import tqdm

from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.data.criteo import layout
from dlrm_dist.data.criteo.handoff import Unpacked, pack
from dlrm_dist.data.criteo.parse import parse_chunk
from dlrm_dist.data.criteo.sources import Chunk, chunks, count_lines, is_gzip
from dlrm_dist.data.criteo.transform import IdMapper, VocabCounter, dense_transform
from dlrm_dist.data.jobrecord import (JOB, START_OVER, differences, is_complete, job_record, lock_out, mark_complete,
                                      read_job, read_record, write_job)
from dlrm_dist.data.npy import Tally
from dlrm_dist.fileio import atomic_write_bytes, atomic_write_json

REPORTED = 10
LINES = "kaggle_lines.json"  # train.txt's line count, kept so a rerun does not count again


@dataclass
class Options:
    dataset: str  # "kaggle" or "terabyte"
    inputs: list[Path]  # kaggle: [train.txt]; terabyte: day files in day order
    out_dir: Path
    id_mode: str = "hash"
    max_ind_range: int = 0
    frequency_threshold: int = 1
    kaggle_days: int = 7
    workers: int = max(1, os.cpu_count() or 1)
    strict: bool = False
    progress: bool = True
    overwrite: bool = False  # start over in a directory written by another job


@dataclass
class Report:
    lines: int = 0
    written: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    days: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def add_bad(self, path: str, first_line: int, bad: list[tuple[int, str]], strict: bool) -> None:
        """Reports malformed lines (the counts come from the days: a resumed chunk is read twice)."""
        for line, why in bad:
            where = f"{path}:{first_line + line + 1}"
            if strict:
                raise PreprocessError(f"{where}: {why} (--strict stops at the first bad line)")
            if len(self.examples) < REPORTED:
                self.examples.append(f"{where}: {why}")


# -- worker side ------------------------------------------------------------------------------
_MAPPER: Optional[IdMapper] = None


def _init_worker(mapper: Optional[IdMapper]) -> None:
    global _MAPPER
    _MAPPER = mapper


def _count(chunk: Chunk) -> tuple[int, bool]:
    data = chunk.read()
    return data.count(b"\n"), data.endswith(b"\n")


def _work(chunk: Chunk) -> tuple:
    """Parses and transforms a chunk; the arrays travel in shared memory (handoff.py)."""
    if _MAPPER is None:  # vocabulary counting pass: raw ids
        parsed = parse_chunk(chunk.read())
        arrays = [parsed.sparse, parsed.rows]
    elif _MAPPER.mode == "hash" and _MAPPER.max_ind_range > 0:  # the finished arrays straight from the parser
        parsed = parse_chunk(chunk.read(), modulo=_MAPPER.max_ind_range, log_dense=True)
        arrays = [parsed.dense, parsed.sparse.astype(_MAPPER.dtype, copy=False), parsed.labels, parsed.rows]
    else:
        parsed = parse_chunk(chunk.read())
        arrays = [dense_transform(parsed.dense), _MAPPER(parsed.sparse), parsed.labels, parsed.rows]
    return Chunk(chunk.path, chunk.start, chunk.end), pack(arrays), parsed.num_lines, parsed.bad, parsed.num_bad


# -- planning the days ------------------------------------------------------------------------
@dataclass
class DaySource:
    """Lines [first_line, end_line) of ``path`` make output day ``day``."""

    day: int
    path: Path
    first_line: int
    end_line: int


def _count_lines(pool, path: Path) -> int:
    """Lines of a file, counted by the workers (a last line without newline counts)."""
    if is_gzip(path):
        return count_lines(path)
    total, ends_with_newline = 0, True
    for n, ends_with_newline in pool.imap(_count, chunks(path)):
        total += n
    return total + (not ends_with_newline)


def _day_sources(pool, opts: Options) -> list[DaySource]:
    if opts.dataset == "terabyte":
        return [DaySource(d, p, 0, -1) for d, p in enumerate(opts.inputs)]
    path = opts.inputs[0]
    state = opts.out_dir / LINES
    counted = read_record(state, dict, START_OVER) or {}
    if counted.get("size") == path.stat().st_size and isinstance(counted.get("lines"), int):
        total = counted["lines"]
    else:
        total = _count_lines(pool, path)
        atomic_write_json(state, {"size": path.stat().st_size, "lines": total})
    n = opts.kaggle_days
    bounds = [total * d // n for d in range(n + 1)]
    return [DaySource(d, path, bounds[d], bounds[d + 1]) for d in range(n)]


# -- the main loop ----------------------------------------------------------------------------
def _results(pool, path: Path, start_byte: int, bar) -> Iterator[tuple]:
    """(chunk, arrays..., lines, bad, num_bad) in file order; arrays valid until the next item."""
    for chunk, packed, num_lines, bad, num_bad in pool.imap(_work, chunks(path, start_byte)):
        bar.update(chunk.end - chunk.start)
        unpacked = Unpacked(packed)
        try:
            yield (chunk, *unpacked.arrays, num_lines, bad, num_bad)
        finally:
            unpacked.release()


_INF = np.iinfo(np.int64).max


def _resume_point(opts: Options, first: DaySource) -> tuple[int, int]:
    """(byte, line) to start reading at: where the previous complete day said to resume."""
    if opts.dataset != "kaggle" or first.day == 0:
        return 0, 0
    prev = layout.completed_day(opts.out_dir, first.day - 1)
    return (prev["resume_byte"], prev["resume_line"]) if prev else (0, 0)


def _finish(writer: layout.DayWriter, src: DaySource, lines_end: int, resume: tuple[int, int], report: Report) -> None:
    writer.skipped = (lines_end - src.first_line) - writer.rows
    report.days.append(writer.finish({"source": str(src.path), "resume_byte": resume[0], "resume_line": resume[1]}))
    # Rows read are the lines of the days written in this run: a resume rereads part of a
    # chunk of the previous day, which is neither written nor skipped again.
    report.lines += lines_end - src.first_line
    report.written += writer.rows
    report.skipped += writer.skipped


def _write_file(pool, opts: Options, sources: list[DaySource], mapper: IdMapper, report: Report, bar) -> None:
    """Writes every incomplete day whose lines come from ``sources[0].path``."""
    path = sources[0].path
    pending = iter([s for s in sources if layout.completed_day(opts.out_dir, s.day) is None])
    current = next(pending, None)
    if current is None:
        return
    start_byte, line = _resume_point(opts, current)
    bar.update(start_byte)
    tally = Tally()
    writer = layout.DayWriter(opts.out_dir, current.day, mapper.dtype, tally)
    try:
        for chunk, dense, sparse, labels, rows, num_lines, bad, num_bad in _results(pool, path, start_byte, bar):
            report.add_bad(str(path), line, bad, opts.strict)
            lines_end = line + num_lines
            global_rows = rows + line
            while current is not None:
                end = current.end_line if current.end_line >= 0 else _INF
                # Rows are in line order: the day's rows are one contiguous slice (views, no copy).
                a, b = np.searchsorted(global_rows, (current.first_line, end))
                writer.append(dense[a:b], sparse[a:b], labels[a:b])
                if lines_end < end:
                    break  # the day goes on in the next chunk
                # The day ended in this chunk: the next one starts in it (or right after it).
                resume = (chunk.end, lines_end) if lines_end == end else (chunk.start, line)
                _finish(writer, current, end, resume, report)
                current = next(pending, None)
                if current is not None:
                    writer = layout.DayWriter(opts.out_dir, current.day, mapper.dtype, tally)
            line = lines_end
            if current is None:
                break
        if current is not None:  # a day that runs to the end of its file (terabyte)
            _finish(writer, current, line, (-1, line), report)
    except BaseException:
        writer.abort()  # the day being written; the days published before it stay
        raise


def _count_vocab(pool, opts: Options, sources: list[DaySource], bar) -> VocabCounter:
    counter = VocabCounter()
    train = sources[:-1]  # the last day is validation/test: never seen by the vocabulary
    for path in dict.fromkeys(s.path for s in train):
        spans = [(s.first_line, s.end_line if s.end_line >= 0 else np.iinfo(np.int64).max) for s in train if s.path == path]
        line = 0
        for chunk, raw, rows, num_lines, _, _ in _results(pool, path, 0, bar):
            g = rows + line
            keep = np.zeros(len(g), bool)
            for a, b in spans:
                keep |= (g >= a) & (g < b)
            counter.add(raw[keep])
            line += num_lines
    return counter


def _settings(opts: Options) -> dict[str, Any]:
    """Every option that changes what is written."""
    return {"options": {"dataset": opts.dataset, "id_mode": opts.id_mode, "max_ind_range": opts.max_ind_range,
                        "frequency_threshold": opts.frequency_threshold, "kaggle_days": opts.kaggle_days}}


def _clear(out: Path) -> None:
    """Removes what a Criteo preprocessing job writes (only its own names: other files stay)."""
    for p in [*out.glob("day_*"), out / layout.META, out / LINES, out / JOB]:
        p.unlink(missing_ok=True)
    for name in ("day_", layout.META, LINES, JOB):  # atomic writes' temporaries, left by a kill
        for tmp in out.glob(f".{name}*.tmp"):
            tmp.unlink(missing_ok=True)
    shutil.rmtree(out / "vocab", ignore_errors=True)


def _start(opts: Options) -> None:
    """Checks the (locked) directory against this job: another job's completed output is refused
    (naming what differs) unless asked to start over; another job's failed output is cleared."""
    out = opts.out_dir
    record = job_record(opts.inputs, _settings(opts))
    old = None if opts.overwrite else read_job(out)  # --overwrite is the way out of a damaged record
    complete = False
    if opts.overwrite:
        _clear(out)
    elif old is not None:
        diffs = differences(old, record)
        complete = is_complete(old, (out / layout.META).is_file())
        if diffs and complete:
            raise PreprocessError(f"{out} holds the output of another preprocessing job ({'; '.join(diffs)}) "
                                  "that completed; use another --out, or --overwrite to start over")
        if diffs:  # another job that did not complete: its days are not this job's
            _clear(out)
    elif out.is_dir() and any(out.glob("day_*")):
        raise PreprocessError(f"{out} holds day files that no recorded job wrote; use another --out, or --overwrite")
    write_job(out, record, complete=complete)


def _vocabulary(ctx, opts: Options, sources: list[DaySource], total: int) -> list[np.ndarray]:
    """The training days' vocabulary (computed once, then read back on reruns)."""
    vocab_dir = opts.out_dir / "vocab"
    if (vocab_dir / "done").is_file():
        return [_load_vocab(vocab_dir / f"feature_{j}.npy") for j in range(layout.NUM_SPARSE)]
    with ctx.Pool(opts.workers, _init_worker, (None,)) as pool, \
            tqdm(total=total, unit="B", unit_scale=True, desc="vocabulary", disable=not opts.progress) as bar:
        vocab = _count_vocab(pool, opts, sources, bar).vocab(opts.frequency_threshold)
    vocab_dir.mkdir(exist_ok=True)
    for j, v in enumerate(vocab):
        buffer = io.BytesIO()
        np.save(buffer, v)
        atomic_write_bytes(vocab_dir / f"feature_{j}.npy", buffer.getvalue())
    atomic_write_bytes(vocab_dir / "done", b"ok\n")
    return vocab


def _load_vocab(path: Path) -> np.ndarray:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise PreprocessError(f"{path}: damaged vocabulary ({e}); {START_OVER}") from None
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise PreprocessError(f"{path}: damaged vocabulary (shape {values.shape}, dtype {values.dtype}; "
                              f"expected a 1-d integer array); {START_OVER}")
    return values


def preprocess(opts: Options) -> Report:
    """Runs the whole conversion (holding ``--out``'s lock); returns what was read, written and skipped."""
    _check(opts)
    with lock_out(opts.out_dir, "dlrm-data preprocess"):
        _start(opts)
        report = _convert(opts)
        mark_complete(opts.out_dir)
    return report


def _convert(opts: Options) -> Report:
    report = Report()
    start = time.perf_counter()
    ctx = mp.get_context("fork")
    mapper = IdMapper(opts.id_mode, opts.max_ind_range)
    # Hash mode needs nothing from a first pass: one pool counts the lines and writes the days.
    pool = ctx.Pool(opts.workers, _init_worker, (mapper if opts.id_mode == "hash" else None,))
    try:
        sources = _day_sources(pool, opts)
        total = sum(p.stat().st_size for p in dict.fromkeys(s.path for s in sources))
        if opts.id_mode == "vocab":
            pool.terminate()
            mapper.vocab = _vocabulary(ctx, opts, sources, total)
            pool = ctx.Pool(opts.workers, _init_worker, (mapper,))
        with tqdm(total=total, unit="B", unit_scale=True, desc="preprocess", disable=not opts.progress) as bar:
            for path in dict.fromkeys(s.path for s in sources):
                _write_file(pool, opts, [s for s in sources if s.path == path], mapper, report, bar)
    finally:
        pool.terminate()
    report.seconds = time.perf_counter() - start
    _write_meta(opts, sources, mapper)
    return report


def _check(opts: Options) -> None:
    if opts.dataset not in ("kaggle", "terabyte"):
        raise PreprocessError(f"dataset {opts.dataset!r}: choose kaggle or terabyte")
    if opts.id_mode not in ("hash", "vocab"):
        raise PreprocessError(f"id mode {opts.id_mode!r}: choose hash or vocab")
    missing = [str(p) for p in opts.inputs if not p.is_file()]
    if missing or not opts.inputs:
        raise PreprocessError(f"input file(s) not found: {missing or 'none given'}")
    if opts.dataset == "kaggle" and len(opts.inputs) != 1:
        raise PreprocessError(f"kaggle takes one input (train.txt), got {len(opts.inputs)}")
    if opts.dataset == "terabyte" and len(opts.inputs) < 2:
        raise PreprocessError("terabyte needs at least two day files (the last is validation/test)")
    if opts.workers < 1:
        raise PreprocessError(f"workers={opts.workers} must be >= 1 (worker processes parsing the input)")
    if opts.kaggle_days < 2:
        raise PreprocessError(f"kaggle_days={opts.kaggle_days} must be >= 2 (the last is validation/test)")
    if opts.id_mode == "hash" and opts.max_ind_range < 0:
        raise PreprocessError(f"max_ind_range={opts.max_ind_range} must be >= 0 (0 = keep raw ids)")


def _write_meta(opts: Options, sources: list[DaySource], mapper: IdMapper) -> None:
    days = [layout.completed_day(opts.out_dir, s.day) for s in sources]
    layout.write_meta(opts.out_dir, {
        "format": "dlrm_dist.criteo", "version": 1, "dataset": opts.dataset,
        "id_mode": opts.id_mode, "max_ind_range": opts.max_ind_range,
        "frequency_threshold": opts.frequency_threshold if opts.id_mode == "vocab" else None,
        "table_sizes": mapper.table_sizes(),
        "dense_transform": "log(1 + max(x, 0))",
        "days": [{"day": d["day"], "rows": d["rows"], "skipped": d["skipped"]} for d in days if d],
        "train_days": [s.day for s in sources[:-1]],
        "val_test_day": sources[-1].day,
        "val_test_split": "validation = first half of the last day, test = second half",
    })
