"""What a resumable preprocessing job was started with, and refusing a rerun that differs.

``DIR/job.json`` holds the inputs (absolute path, size, modification time) and every
setting. A rerun with the same record resumes; one with another record is refused with
what differs named, unless the caller starts over (``--overwrite``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

JOB = "job.json"


def job_record(inputs: Sequence[Path], settings: dict[str, Any]) -> dict[str, Any]:
    files = [{"path": str(Path(p).resolve()), "size": Path(p).stat().st_size, "mtime_ns": Path(p).stat().st_mtime_ns}
             for p in inputs]
    return {"inputs": files, **settings}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two job records."""
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


def read_job(directory: Path) -> dict[str, Any] | None:
    p = Path(directory) / JOB
    return json.loads(p.read_text()) if p.is_file() else None


def write_job(directory: Path, record: dict[str, Any]) -> None:
    (Path(directory) / JOB).write_text(json.dumps(record, indent=1) + "\n")
