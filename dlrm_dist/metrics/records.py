"""metrics.jsonl read back: lenient about what a running or killed run leaves, strict about damage.

The file is written one line per record by ``MetricsLog`` (metrics/log.py). A reader meets:

- a last line cut short (a run still writing it, or killed mid-write): skipped, with a note;
- a run that restarted from a checkpoint and logged its steps again (a killed run's lines
  past its checkpoint, then the resumed run's): a record whose step does not exceed an
  earlier record of its kind starts over there, and the earlier records at that step or
  later (of every kind) are dropped, with a note, as TensorBoard purges them;
- non-finite numbers (``NaN``/``Infinity`` tokens, which older files hold): read as None;
- damage (a line that is not UTF-8, not JSON or not an object, no integer ``step``, no
  ``kind``, a metric that is not a number, a ``rank_step_ms`` that is not a list of
  numbers, a ``progressive`` record without an integer ``partition``): ``RunDirError``
  naming the file, the line and the field.

Records of kinds other than ``train``, ``eval``, ``progressive`` (metrics/progressive.py) and
``diverged`` are kept and ignored by the report (a newer writer may add kinds).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrm_dist.errors import DlrmError
from dlrm_dist.metrics.eval import METRIC_NAMES
from dlrm_dist.metrics.progressive import NUMBER_FIELDS, PROGRESSIVE

TRAIN, EVAL, DIVERGED = "train", "eval", "diverged"
# The numeric fields the report reads, by kind; each must be a number or null.
NUMBERS = {TRAIN: ("loss", "samples_per_s", "lr_factor", "dense_lr", "embedding_lr"),
           EVAL: METRIC_NAMES + ("samples",), PROGRESSIVE: NUMBER_FIELDS}
RANK_STEP_MS = "rank_step_ms"


class RunDirError(DlrmError):
    """A directory given as a run directory is not one, or its files cannot be read."""


@dataclass
class MetricsRecords:
    """The records a single run would have written, in order, and what was skipped or dropped."""

    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_line(raw: bytes, where: str) -> Any:
    """One line's JSON value (``NaN``/``Infinity`` accepted); ValueError says why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not UTF-8 text (byte {e.start + 1})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{where} is not a metrics record (nested too deeply)") from None


def check_record(value: Any, where: str) -> dict[str, Any]:
    """A record with its step and kind checked and non-finite numbers as None; ValueError names the field."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} is {_type_name(value)}, not a JSON object (one record per line)")
    step = value.get("step")
    if "step" not in value:
        raise ValueError(f"{where} has no \"step\" (every record has its training step)")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"{where}: \"step\" is {_short(step)}, expected an integer >= 0")
    kind = value.get("kind")
    if not isinstance(kind, str):
        raise ValueError(f"{where}: \"kind\" is {_short(kind) if 'kind' in value else 'missing'}, "
                         f"expected a string such as \"{TRAIN}\" or \"{EVAL}\"")
    for name in NUMBERS.get(kind, ()):
        if name in value and value[name] is not None and not is_number(value[name]):
            raise ValueError(f"{where}: \"{name}\" is {_short(value[name])}, expected a number or null")
    if kind == PROGRESSIVE:
        partition = value.get("partition")
        if not isinstance(partition, int) or isinstance(partition, bool):
            raise ValueError(f"{where}: \"partition\" is {_short(partition) if 'partition' in value else 'missing'}, "
                             "expected the partition's number (an integer)")
    if kind == TRAIN and value.get(RANK_STEP_MS) is not None:
        times = value[RANK_STEP_MS]
        if not isinstance(times, list) or not all(t is None or is_number(t) for t in times):
            raise ValueError(f"{where}: \"{RANK_STEP_MS}\" is {_short(times)}, "
                             "expected a list of numbers (ms, one per rank)")
    return finite_or_none(value)


def _restart(kept: list[tuple[int, dict[str, Any]]], record: dict[str, Any]) -> int:
    """Drops the kept records a restart at ``record``'s step supersedes; returns how many."""
    step, kind = record["step"], record["kind"]
    if not any(r["kind"] == kind and r["step"] >= step for _, r in kept):
        return 0
    before = len(kept)
    kept[:] = [(n, r) for n, r in kept if r["step"] < step]
    return before - len(kept)


def read_records(path: str | Path) -> MetricsRecords:
    """Reads a metrics.jsonl file; raises RunDirError naming the file and line of any damage."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RunDirError(f"{path} cannot be read ({e.strerror or e})") from None
    lines = data.split(b"\n")
    out = MetricsRecords()
    kept: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}: line {number}"
        cut = number == len(lines)  # no newline after it: the writer may still be on it
        try:
            value = parse_line(raw, where)
        except ValueError as e:
            if cut:  # a record cut anywhere is never valid JSON: its closing brace comes last
                out.notes.append(f"{where} is cut short (a run still writing, or killed mid-write): skipped")
                continue
            raise RunDirError(str(e)) from None
        try:
            record = check_record(value, where)
        except ValueError as e:
            raise RunDirError(str(e)) from None
        dropped = _restart(kept, record)
        if dropped:
            out.notes.append(f"{where} logs step {record['step']} again (a restart from a checkpoint): "
                             f"{dropped} earlier record(s) at step {record['step']} or later dropped")
        kept.append((number, record))
    out.records = [r for _, r in kept]
    return out
