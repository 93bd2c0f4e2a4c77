"""Progressive ("next-day") validation records: their fields, their mean and their table.

When a run trains day partitions in time order, each partition is scored by the model as it
stands before training on it (training/progressive.py decides when). Each score is one
``metrics.jsonl`` record of kind ``progressive``::

    {"kind": "progressive", "step": 300, "partition": 4, "rows": 20000, "samples": 20000,
     "auc": 0.74, "ne": 0.91, "logloss": 0.48, "calibration": 1.02, "accuracy": 0.79, "ctr": 0.21,
     "auc_exact": true}

``step`` is the model's step when it was scored (the partition's first training step), ``rows``
the partition's rows, ``samples`` the labelled rows scored (all of them). The same records
are listed in summary.json (``progressive``) with their mean over the partitions after the
first (``progressive_mean``): the first partition is scored by a model that has seen no day
before it (random weights, or a warm start's), so it says little about how well training on
yesterday predicts today. This module works on plain records (dicts): the trainer, the
summary, dlrm-report and its plots share it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from dlrm_dist.metrics.eval import METRIC_NAMES

PROGRESSIVE = "progressive"
# The metrics averaged over partitions and shown per partition (tables, panels).
SHOWN = ("auc", "ne", "logloss")
# The numeric fields of a progressive record (each a number or null when read back).
NUMBER_FIELDS = METRIC_NAMES + ("samples", "rows")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_after_first(records: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The mean of auc, ne and logloss over the partitions after the first (in step order).

    None when fewer than two partitions were scored. A metric that is not finite in some
    partition (an NE of a day without clicks) is averaged over the others; ``partitions``
    says which were averaged.
    """
    ordered = sorted(records, key=lambda r: r["step"])[1:]
    if not ordered:
        return None
    out: dict[str, Any] = {"partitions": [r["partition"] for r in ordered]}
    for name in SHOWN:
        values = [r[name] for r in ordered if _finite(r.get(name))]
        out[name] = sum(values) / len(values) if values else None
    return out


def _cell(value: Any, width: int) -> str:
    return f"{value:>{width}.4f}" if _finite(value) else f"{'-':>{width}}"


def table_lines(records: list[dict[str, Any]], indent: str = "  ") -> list[str]:
    """The per-partition table printed at the end of a run (and by dlrm-report): one line each.

    ``records`` are progressive records; the last line is the mean after the first partition.
    """
    if not records:
        return []
    lines = [f"{indent}{'partition':>9}  {'step':>8}  {'rows':>10}  " + "  ".join(f"{n:>8}" for n in SHOWN)]
    for r in sorted(records, key=lambda r: r["step"]):
        rows = r.get("rows")
        lines.append(f"{indent}{r['partition']:>9}  {r['step']:>8}  "
                     + (f"{rows:>10,}" if isinstance(rows, int) else f"{'-':>10}") + "  "
                     + "  ".join(_cell(r.get(n), 8) for n in SHOWN))
    mean = mean_after_first(records)
    if mean is not None:
        label = f"mean of {len(mean['partitions'])} after the first"
        lines.append(f"{indent}{label:>32}  " + "  ".join(_cell(mean.get(n), 8) for n in SHOWN))
    return lines


def partition_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, body) of next-day AUC by partition: one row per partition, one column per run.

    ``rows`` are dlrm-report's summary rows (metrics/plots.py), each with its ``progressive``
    list; empty when no run has progressive records.
    """
    runs = [r for r in rows if r.get("progressive")]
    partitions = sorted({p["partition"] for r in runs for p in r["progressive"]})
    if not partitions:
        return [], []
    by_run = [{p["partition"]: p.get("auc") for p in r["progressive"]} for r in runs]
    body = [[part, *(scores.get(part) for scores in by_run)] for part in partitions]
    return ["partition", *(f"{r['run']} next-day AUC" for r in runs)], body
