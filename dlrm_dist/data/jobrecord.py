"""What a resumable preprocessing job was started with, whether it completed, and reading the
small JSON records a preprocessing directory holds.

``DIR/job.json`` holds the inputs (absolute path, size, modification time), every setting,
and ``complete`` (false until the job's last file is published). A directory of day partitions
also holds one record per partition (``DIR/partition_<N>.job.json``, the same fields), to which
the same rules apply partition by partition. The rules a rerun follows
(applied by each preprocessing command under its directory lock):

- the same job resumes an incomplete directory, or reports a complete one as done;
- another job over an *incomplete* directory starts over: what the failed job wrote is
  cleared (a failed run must not block the rerun that fixes its schema);
- another job over a *complete* directory is refused, naming what differs, unless the
  caller starts over (``--overwrite``).

Every record is written atomically (temporary name, fsync, rename), so a kill leaves the old
record or the new one; a damaged one (truncated, not JSON, wrong shape) is a DataError
naming the file and what to do, never a JSONDecodeError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from dlrm_dist.data.errors import DataError
from dlrm_dist.fileio import LOCK_FILE, DirLock, atomic_write_json, disk_full

JOB = "job.json"
COMPLETE = "complete"  # the job record's key saying the job finished (not compared between jobs)
START_OVER = "rerun with --overwrite to start over"


def lock_out(directory: Path, what: str) -> DirLock:
    """Takes an output directory's writer lock for a whole job, before anything in it is read or removed.

    A second live writer is refused naming its pid and host (DirectoryBusyError, exit 2); a
    path that cannot be a directory is a DataError naming it.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DataError(f"output directory {directory} is a file: give a directory")
    try:
        with disk_full(directory / LOCK_FILE):
            return DirLock(directory, what).acquire()
    except OSError as e:  # a parent that is a file, no permission, a read-only filesystem
        raise DataError(f"output directory {directory}: cannot create or lock it ({e.strerror or e})") from None


def job_record(inputs: Sequence[Path], settings: dict[str, Any]) -> dict[str, Any]:
    files = [{"path": str(Path(p).resolve()), "size": Path(p).stat().st_size, "mtime_ns": Path(p).stat().st_mtime_ns}
             for p in inputs]
    return {"inputs": files, **settings}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two job records (whether each completed is not one)."""
    old, new = _without_state(old), _without_state(new)
    out = []
    old_paths, new_paths = [i["path"] for i in old.get("inputs", [])], [i["path"] for i in new["inputs"]]
    if old_paths != new_paths:
        out.append(f"inputs {old_paths} -> {new_paths}")
    elif old["inputs"] != new["inputs"]:
        changed = [n["path"] for o, n in zip(old["inputs"], new["inputs"]) if o != n]
        out.append(f"input file(s) changed since (size or modification time): {changed}")
    for key in sorted((set(old) | set(new)) - {"inputs"}):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key} {k}" + ("" if isinstance(a.get(k), (dict, list)) or isinstance(b.get(k), (dict, list))
                                    else f" {a.get(k)!r} -> {b.get(k)!r}")
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(f"{key} {a!r} -> {b!r}")
    return out


def _without_state(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != COMPLETE}


def read_record(path: Path, expected: type, remedy: str) -> Any:
    """A JSON file this package wrote, of type ``expected`` (dict or list), or None if absent.

    Anything else (unreadable, truncated, not JSON, another type) is a DataError naming the
    file and ``remedy`` (what the user should do).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: damaged ({type(e).__name__}: {e}); {remedy}") from None
    if not isinstance(value, expected):
        raise DataError(f"{path}: damaged (holds a JSON {type(value).__name__}, expected a JSON "
                        f"{'object' if expected is dict else 'array'}); {remedy}")
    return value


def read_job(directory: Path, name: str = JOB) -> Optional[dict[str, Any]]:
    """The directory's job record (or the one named ``name``, e.g. a partition's), or None; a
    damaged one is a DataError naming the file."""
    path = Path(directory) / name
    job = read_record(path, dict, START_OVER)
    if job is None:
        return None
    inputs = job.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and isinstance(i.get("path"), str) for i in inputs):
        raise DataError(f"{path}: damaged (no list of inputs with paths); {START_OVER}")
    return job


def is_complete(job: dict[str, Any], meta_written: bool) -> bool:
    """Whether the job finished: its record says so, or its last file (``meta_written``) exists.

    meta.json is published just before the record is marked: a kill between the two must not
    make a finished directory look like a failed one that another job may clear.
    """
    return bool(job.get(COMPLETE)) or meta_written


def write_job(directory: Path, record: dict[str, Any], complete: bool = False, name: str = JOB) -> None:
    """Records ``record`` as the directory's job (or as the record ``name``), incomplete until
    ``complete`` (atomically)."""
    atomic_write_json(Path(directory) / name, {**_without_state(record), COMPLETE: complete}, indent=1)


def mark_complete(directory: Path, name: str = JOB) -> None:
    """Records that the directory's job (or the job of record ``name``) finished: its last file is published."""
    job = read_job(directory, name)
    if job is None:
        raise DataError(f"{Path(directory) / name}: missing at the end of the job; {START_OVER}")
    write_job(directory, job, complete=True, name=name)
