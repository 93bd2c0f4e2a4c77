"""A finished (or running) run directory read back: its metrics, summary and plan estimate.

A run directory holds ``metrics.jsonl`` (metrics/log.py), ``summary.json`` (at the end),
``plan.json`` (the plan file it trained with, with per-rank estimates) and ``config.json``
(the resolved config). Only the metrics are required; a run still in progress has no summary.
The file names have their home here; dlrm-train writes them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dlrm_dist.metrics.log import METRICS_FILE
from dlrm_dist.metrics.progressive import PROGRESSIVE
from dlrm_dist.metrics.records import DIVERGED, EVAL, RANK_STEP_MS, TRAIN, RunDirError, is_number, read_records
from dlrm_dist.planning import planfile
from dlrm_dist.planning.errors import PlanError

SUMMARY_FILE = "summary.json"
PLAN_FILE = "plan.json"
CONFIG_FILE = "config.json"

__all__ = ["CONFIG_FILE", "PLAN_FILE", "SUMMARY_FILE", "RunData", "RunDirError", "read_run"]


@dataclass(frozen=True)
class RunData:
    """One run's records, split by kind, and what its plan estimated per rank."""

    name: str
    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    summary: Optional[dict[str, Any]]
    estimated_rank_ms: Optional[list[float]]  # the plan's per-rank cost of the embedding part
    diverged: Optional[dict[str, Any]] = None  # the record a diverged run wrote when it stopped
    notes: list[str] = field(default_factory=list)  # lines skipped or dropped, in words
    predicted_step_ms: Optional[list[float]] = None  # a calibrated plan's whole step per rank (prediction.py)
    progressive: list[dict[str, Any]] = field(default_factory=list)  # next-day scores by partition (progressive.py)

    @property
    def final_eval(self) -> Optional[dict[str, Any]]:
        return self.evals[-1] if self.evals else None

    @property
    def rank_rows(self) -> list[tuple[int, list[Optional[float]]]]:
        """(step, per-rank step ms) of the train records logged at the run's final world size.

        A run resumed at another world size logs another number of ranks from there on;
        per-rank figures are of the last world size (``rank_note`` says so).
        """
        rows = [(r["step"], r[RANK_STEP_MS]) for r in self.train if r.get(RANK_STEP_MS)]
        if not rows:
            return []
        ranks = len(rows[-1][1])
        return [(step, times) for step, times in rows if len(times) == ranks]


def rank_note(run: RunData) -> Optional[str]:
    """Why some train records' per-rank step times are left out of the per-rank figures."""
    sizes = sorted({len(r[RANK_STEP_MS]) for r in run.train if r.get(RANK_STEP_MS)})
    if len(sizes) < 2:
        return None
    last = len(run.rank_rows[-1][1])
    return (f"rank_step_ms holds {' and '.join(map(str, sizes))} ranks in different lines (a resume at "
            f"another world size?): per-rank step times are of the lines with {last}")


def mean_rank_step_ms(run: RunData) -> Optional[list[Optional[float]]]:
    """Each rank's step time averaged over the run's log windows (finite values only)."""
    rows = [times for _, times in run.rank_rows]
    if not rows:
        return None
    means = []
    for column in zip(*rows):
        values = [t for t in column if is_number(t) and math.isfinite(t)]
        means.append(sum(values) / len(values) if values else None)
    return means


def _json(path: Path) -> Optional[dict[str, Any]]:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} cannot be read as JSON ({e})") from None


def _plan_estimate(path: Path) -> Optional[list[float]]:
    if not path.exists():
        return None
    try:
        return [r.cost_ms for r in planfile.read(path).estimates.per_rank]
    except PlanError as e:
        raise RunDirError(str(e)) from None


def _plan_prediction(path: Path) -> Optional[list[float]]:
    if not path.exists():
        return None
    from dlrm_dist.planning.prediction import local_tables, predicted_step_ms

    pf = planfile.read(path)  # already read whole by _plan_estimate: errors were raised there
    return predicted_step_ms(pf.inputs, pf.estimates, local_tables(pf.plan_data()))


def read_run(run_dir: str | Path, name: Optional[str] = None) -> RunData:
    """Reads ``run_dir``; raises RunDirError naming what is missing or damaged."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{d} is not a directory")
    metrics = d / METRICS_FILE
    if not metrics.exists():
        raise RunDirError(f"{d} has no {METRICS_FILE}: not a dlrm-train run directory (train.run_dir)")
    read = read_records(metrics)
    diverged = [r for r in read.records if r["kind"] == DIVERGED]
    run = RunData(
        name=name or d.name,
        train=[r for r in read.records if r["kind"] == TRAIN],
        evals=[r for r in read.records if r["kind"] == EVAL],
        summary=_json(d / SUMMARY_FILE),
        estimated_rank_ms=_plan_estimate(d / PLAN_FILE),
        predicted_step_ms=_plan_prediction(d / PLAN_FILE),
        diverged=diverged[-1] if diverged else None,
        notes=list(read.notes),
        progressive=[r for r in read.records if r["kind"] == PROGRESSIVE],
    )
    note = rank_note(run)
    if note:
        run.notes.append(f"{metrics}: {note}")
    return run
