"""Inspect a plan file: its topology, per-rank costs and memory, a summary, optionally measured times.

Reads the plan without torch or TorchRec (planning/planview.py), so it starts in about a second.
A calibrated plan (dlrm-plan make --calibration) also shows each rank's predicted training step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated, Optional

from pydantic import ConfigDict, Field

from dlrm_dist.cli.render import rank_table, summary_text
from dlrm_dist.config.files import read_data
from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.planview import PlanView, read_consistent_view
from dlrm_dist.planning.prediction import local_tables, predicted_step_ms
from dlrm_dist.planning.summary import topology_lines
from dlrm_dist.validation import Strict, joined, validate

HELP = "show a plan per rank and in summary (--json, --html, --measured)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="a plan file")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with per-rank bars")
    p.add_argument("--measured", metavar="RUN_DIR", help="a training run's directory: show measured step times")


class _MeasuredModel(Strict):
    """The one field of a run's summary.json read here (the rest belongs to dlrm-train)."""

    model_config = ConfigDict(extra="ignore")
    rank_step_ms: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)


def measured_step_ms(run_dir: str, world_size: int) -> list[float]:
    """Per-rank mean step times recorded by dlrm-train in RUN_DIR/summary.json."""
    from dlrm_dist.metrics.runs import SUMMARY_FILE  # the run directory's layout belongs to metrics/runs.py

    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise PlanError(f"{path}: no such file (is {run_dir} a dlrm-train run directory?)")
    data = read_data(path, "run summary", PlanError)
    m, found = validate(_MeasuredModel, data)
    if found:
        raise PlanError(joined(str(path), found))
    times = list(m.rank_step_ms)
    if len(times) != world_size:
        raise PlanError(f"{path} has step times of {len(times)} rank(s); the plan is for {world_size}")
    return times


def _write_html(pf: PlanView, path: str, measured: Optional[list[float]]) -> None:
    from dlrm_dist.cli.plan_html import write_html

    try:
        write_html(pf, path, measured)
    except OSError as e:
        raise PlanError(f"cannot write --html {path!r}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    pf = read_consistent_view(args.plan)
    est = pf.estimates
    predicted = predicted_step_ms(pf.inputs, est, local_tables(pf.shardings))
    measured: Optional[list[float]] = None
    if args.measured:
        measured = measured_step_ms(args.measured, pf.inputs.topology.world_size)
    if args.html:
        _write_html(pf, args.html, measured)
    if args.json:
        out = {"plan": args.plan, "planner": pf.planner, "inputs": pf.inputs.to_dict(), **est.describe()}
        if measured:
            out["measured_step_ms"] = measured
        if predicted:
            out["predicted_step_ms"] = predicted
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    t = pf.inputs.topology
    print("\n".join(topology_lines(pf.inputs, pf.planner.get("assumed", []))))
    print(f"{args.plan}: {len(pf.inputs.tables)} tables on {t.world_size} x {t.device} "
          f"({t.ranks_per_host} per host), planner {pf.planner.get('name', '?')}")
    for note in pf.planner.get("notes", []):
        print(f"note: {note}")
    print(rank_table(est, measured))
    print(summary_text(est.summary))
    if predicted:
        print("predicted training step per rank (calibrated: embeddings + dense + overhead): "
              + ", ".join(f"{p:.2f}" for p in predicted) + " ms")
    if measured:
        print("measured: mean training step per rank (dense + embeddings + data) against the embedding "
              "estimate; the ratio's spread across ranks shows imbalance the model did not predict")
    if args.html:
        print(f"wrote {args.html}")
    return 0
