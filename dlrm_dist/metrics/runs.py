"""A finished (or running) run directory read back: its metrics, summary and plan estimate.

A run directory holds ``metrics.jsonl`` (metrics/log.py), ``summary.json`` (at the end),
``plan.json`` (the plan file it trained with, with per-rank estimates) and ``config.json``
(the resolved config). Only the metrics are required; a run still in progress has no summary.
The file names have their home here; dlrm-train writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dlrm_dist.errors import DlrmError
from dlrm_dist.metrics.log import METRICS_FILE, read_metrics
from dlrm_dist.planning import planfile
from dlrm_dist.planning.errors import PlanError

SUMMARY_FILE = "summary.json"
PLAN_FILE = "plan.json"
CONFIG_FILE = "config.json"


class RunDirError(DlrmError):
    """A directory given as a run directory is not one, or its files cannot be read."""


@dataclass(frozen=True)
class RunData:
    """One run's records, split by kind, and what its plan estimated per rank."""

    name: str
    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    summary: Optional[dict[str, Any]]
    estimated_rank_ms: Optional[list[float]]  # the plan's per-rank cost of the embedding part

    @property
    def final_eval(self) -> Optional[dict[str, Any]]:
        return self.evals[-1] if self.evals else None


def _json(path: Path) -> Optional[dict[str, Any]]:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} cannot be read as JSON ({e})") from None


def read_run(run_dir: str | Path, name: Optional[str] = None) -> RunData:
    """Reads ``run_dir``; raises RunDirError naming what is missing or damaged."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{d} is not a directory")
    metrics = d / METRICS_FILE
    if not metrics.exists():
        raise RunDirError(f"{d} has no {METRICS_FILE}: not a dlrm-train run directory (train.run_dir)")
    try:
        records = read_metrics(metrics)
    except ValueError as e:
        raise RunDirError(f"{metrics} has a line that is not JSON ({e})") from None
    estimated = None
    if (d / PLAN_FILE).exists():
        try:
            estimated = [r.cost_ms for r in planfile.read(d / PLAN_FILE).estimates.per_rank]
        except PlanError as e:
            raise RunDirError(str(e)) from None
    return RunData(
        name=name or d.name,
        train=[r for r in records if r.get("kind") == "train"],
        evals=[r for r in records if r.get("kind") == "eval"],
        summary=_json(d / SUMMARY_FILE),
        estimated_rank_ms=estimated,
    )
