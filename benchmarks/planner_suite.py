"""The planner suite: dlrm_dist's planner beside TorchRec's default on seeded instances.

Instances come from benchmarks/planner_instances.py (issue 22's 300-table UVM case and
``--count`` generated ones). For each: our plan's bottleneck, plan time and fit; TorchRec's
default EmbeddingShardingPlanner (all its proposers, its partitioner and perf model) on the
same inputs; both plans rated by the same estimator (planner.plan_file_for: TorchRec's
per-shard estimates, summed per rank). TorchRec's search space is estimated by our
enumeration (torchrec_default.OurEstimatesEnumerator: equal shard for shard, checked by
tests/unit/test_planner_estimates.py) and its proposals are capped by its own
``timeout_seconds`` (its best plan so far is kept; ``torchrec_timed_out`` says TorchRec's total
time, enumeration included, reached that limit), so the suite takes minutes instead of hours.

TorchRec runs in a worker process with a hard limit per instance in CPU seconds
(``--torchrec-limit``; wall clock would depend on the load of the shared machine, which left a
niced worker a few percent of a core at load 17): its enumeration is not covered by its own
proposal timeout, and one instance must not eat the whole run. An instance over the limit (or
over ``--torchrec-wall-limit`` wall seconds, a backstop) is recorded as ``torchrec_error: "over
the N CPU-s limit"`` (no comparison) and the worker is restarted. TorchRec's own proposal
timeout (``--torchrec-timeout``) is counted in the worker's CPU seconds too (the clock of
TorchRec's planner module is replaced in the worker), so the load does not decide how many
proposals TorchRec evaluates. While the
worker plans TorchRec's side, this process plans ours (two processes, so both plan times
are taken under the same sharing of the machine). Rows are written to OUT.json / OUT.md after
every instance, so an interrupted run is still a record, and ``--resume`` continues one.

    .venv/bin/python benchmarks/planner_suite.py [--quick] [--count 44] [--torchrec-timeout 20]
        [--torchrec-limit 150] [--out benchmarks/results/planner-suite] [--resume]
        [--torchrec-from benchmarks/results/2026-12-01-planner-suite-full.json]

``--torchrec-from RECORD.json`` plans only our side and takes TorchRec's figures from an earlier record's
row of the same instance (its inputs compared field by field; an instance whose inputs differ is refused).
TorchRec's plan does not depend on our partitioner (its search space comes from options.py's estimates,
its proposers and partitioner are its own), so after a change to partitioner.py alone this re-rates every
instance in the time of our side; the row says ``torchrec_from`` and keeps the earlier run's uptimes.

Goal (issue 22): never worse than TorchRec on any instance, median ratio ours/TorchRec <= 0.9.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.planner_instances import Instance, suite  # noqa: E402
from dlrm_dist.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from dlrm_dist.logs import quiet_libraries  # noqa: E402
from dlrm_dist.planning.errors import PlanError  # noqa: E402
from dlrm_dist.planning.planner import make_plan_file, plan_file_for  # noqa: E402

MODULE = "sparse"
QUICK = 8  # issue 22's instance + the first 7 generated ones


def _ours(inst: Instance) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()

    def took() -> dict[str, float]:
        return {"ours_seconds": round(time.perf_counter() - start, 3), "ours_cpu_seconds": round(time.process_time() - cpu, 3)}

    try:
        pf = make_plan_file(inst.inputs, MODULE)
    except PlanError as e:
        return {**took(), "ours_error": str(e)[:300]}
    s = pf.estimates.summary
    return {**took(), "ours_bottleneck_ms": s.estimated_iteration_ms, "ours_fits": s.fits,
            "ours_imbalance": s.cost_imbalance}


def _torchrec(inst: Instance, timeout: Optional[int]) -> dict[str, Any]:
    from dlrm_dist.planning.torchrec_default import plan_with_torchrec

    start = time.perf_counter()
    try:
        result = plan_with_torchrec(inst.inputs, fast=True, timeout_seconds=timeout)
    except Exception as e:  # TorchRec's planner raises its PlannerError (or others) when nothing fits
        return {"torchrec_seconds": round(time.perf_counter() - start, 3), "torchrec_error": f"{type(e).__name__}: {str(e)[:300]}"}
    pf = plan_file_for(result.plan, inst.inputs, "torchrec_default", MODULE)
    s = pf.estimates.summary
    return {"torchrec_seconds": round(result.seconds, 3), "torchrec_bottleneck_ms": s.estimated_iteration_ms,
            "torchrec_own_rating_ms": result.bottleneck_ms, "torchrec_fits": s.fits,
            "torchrec_imbalance": s.cost_imbalance,
            "torchrec_timed_out": bool(timeout and result.seconds >= timeout)}


class _CpuClock:
    """``time`` for TorchRec's planner module whose ``time()`` is this process's CPU time."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.process_time()


def _worker(conn: Connection) -> None:
    """TorchRec's side, one instance per request, until the parent closes the pipe."""
    quiet_libraries()
    logging.disable(logging.WARNING)
    import torchrec.distributed.planner.planners as planners

    import dlrm_dist.planning.torchrec_default  # noqa: F401 - imported before the first instance's clock starts

    planners.time = _CpuClock()  # its proposal timeout: CPU seconds, whatever the machine's load
    conn.send("ready")
    while True:
        try:
            inst, timeout = conn.recv()
        except EOFError:
            return
        conn.send(_torchrec(inst, timeout))


class TorchRecWorker:
    """A spawned process planning TorchRec's side, killed and replaced when over the limit."""

    def __init__(self, limit: float, wall_limit: float) -> None:
        self.limit, self.wall_limit = limit, wall_limit
        self._ctx = mp.get_context("spawn")  # no fork of a process holding torch's thread pools
        self._start()

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(self.wall_limit) or self._conn.recv() != "ready":
            raise RuntimeError("the TorchRec worker did not start")

    def submit(self, inst: Instance, timeout: Optional[int]) -> None:
        self._sent, self._start_cpu = time.perf_counter(), self._cpu_seconds()
        self._conn.send((inst, timeout))

    def _cpu_seconds(self) -> float:
        """The worker's CPU time (user + system) so far, from /proc."""
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def result(self) -> dict[str, Any]:
        start_cpu = self._start_cpu
        while True:
            wall = time.perf_counter() - self._sent
            cpu = self._cpu_seconds() - start_cpu
            if cpu > self.limit or wall > self.wall_limit or not self._proc.is_alive():
                break
            if self._conn.poll(1.0):
                try:
                    return {**self._conn.recv(), "torchrec_cpu_seconds": round(self._cpu_seconds() - start_cpu, 3)}
                except EOFError:
                    break  # the worker died (killed from outside, out of memory): recorded below
        died = not self._proc.is_alive()
        self.close()
        self._start()
        what = ("the TorchRec worker died" if died else f"over the {self.limit:g} CPU-s limit" if cpu > self.limit
                else f"over the {self.wall_limit:g} s wall limit")
        return {"torchrec_seconds": round(wall, 3), "torchrec_cpu_seconds": round(cpu, 3), "torchrec_error": what}

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        self._conn.close()


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_instance(inst: Instance, worker: TorchRecWorker, timeout: Optional[int]) -> dict[str, Any]:
    before = _uptime()
    worker.submit(inst, timeout)
    row = {**inst.describe(), **_ours(inst)}
    row.update(worker.result())
    if "ours_bottleneck_ms" in row and "torchrec_bottleneck_ms" in row:
        row["ratio_ours_over_torchrec"] = row["ours_bottleneck_ms"] / row["torchrec_bottleneck_ms"]
    row["uptime_before"], row["uptime_after"] = before, _uptime()
    return row


_TORCHREC_KEYS = ("torchrec_seconds", "torchrec_cpu_seconds", "torchrec_bottleneck_ms", "torchrec_own_rating_ms",
                  "torchrec_fits", "torchrec_imbalance", "torchrec_timed_out", "torchrec_error")


def recorded_torchrec(inst: Instance, record: dict[str, dict[str, Any]], path: str) -> dict[str, Any]:
    """TorchRec's figures for ``inst`` from an earlier record's row (``record``: rows by name)."""
    prev = record.get(inst.name)
    if prev is None:
        raise SystemExit(f"planner_suite.py: error: {path} has no row for instance {inst.name}")
    differ = {k: (v, prev.get(k)) for k, v in inst.describe().items() if prev.get(k) != v}
    if differ:
        raise SystemExit(f"planner_suite.py: error: {path}'s row {inst.name} was planned from other inputs: "
                         + ", ".join(f"{k} {b!r} there, {a!r} now" for k, (a, b) in differ.items()))
    return {**{k: prev[k] for k in _TORCHREC_KEYS if k in prev}, "torchrec_from": path,
            "torchrec_uptime_before": prev.get("uptime_before"), "torchrec_uptime_after": prev.get("uptime_after")}


def run_ours_only(inst: Instance, record: dict[str, dict[str, Any]], path: str) -> dict[str, Any]:
    before = _uptime()
    row = {**inst.describe(), **_ours(inst), **recorded_torchrec(inst, record, path)}
    if "ours_bottleneck_ms" in row and "torchrec_bottleneck_ms" in row:
        row["ratio_ours_over_torchrec"] = row["ours_bottleneck_ms"] / row["torchrec_bottleneck_ms"]
    row["uptime_before"], row["uptime_after"] = before, _uptime()
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["ratio_ours_over_torchrec"] for r in rows if "ratio_ours_over_torchrec" in r]
    return {"instances": len(rows), "compared": len(ratios),
            "median_ratio": statistics.median(ratios) if ratios else None,
            "worst_ratio": max(ratios) if ratios else None,
            "worse_than_torchrec": [r["name"] for r in rows if r.get("ratio_ours_over_torchrec", 0) > 1 + 1e-9],
            "ours_failed": [r["name"] for r in rows if "ours_error" in r],
            "torchrec_failed": [r["name"] for r in rows if "torchrec_error" in r]}


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["| instance | tables | ranks | HBM GB | UVM | ours ms | TorchRec ms | ours / TorchRec | ours s (CPU s) "
             "| TorchRec s (CPU s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = f"{r['ours_bottleneck_ms']:.3f}" if "ours_bottleneck_ms" in r else "no fit"
        theirs = f"{r['torchrec_bottleneck_ms']:.3f}" if "torchrec_bottleneck_ms" in r else "failed"
        ratio = f"{r['ratio_ours_over_torchrec']:.3f}" if "ratio_ours_over_torchrec" in r else "-"
        lines.append(f"| {r['name']} | {r['tables']} | {r['world_size']} | {r['hbm_gb']:g} | {'yes' if r['uvm'] else 'no'} "
                     f"| {ours} | {theirs} | {ratio} | {r['ours_seconds']} ({r.get('ours_cpu_seconds', '-')}) "
                     f"| {r.get('torchrec_seconds', '-')} ({r.get('torchrec_cpu_seconds', '-')}) |")
    lines.append("")
    lines.append(f"summary: {json.dumps(summary)}")
    return "\n".join(lines) + "\n"


def _write(out: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    summary = summarize(rows)
    atomic_write_json(out + ".json", {"meta": meta, "rows": rows, "summary": summary}, indent=1)
    atomic_write_text(out + ".md", markdown(rows, summary))


def _previous(out: Optional[str], resume: bool) -> list[dict[str, Any]]:
    if not (out and resume and Path(out + ".json").exists()):
        return []
    return json.loads(Path(out + ".json").read_text())["rows"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only the first {QUICK} instances")
    p.add_argument("--count", type=int, default=44, help="generated instances (besides issue 22's)")
    p.add_argument("--torchrec-timeout", type=int, default=20, help="TorchRec's own proposal time limit per instance (s)")
    p.add_argument("--torchrec-limit", type=float, default=150.0,
                   help="hard limit for TorchRec's whole planning of one instance (CPU seconds)")
    p.add_argument("--torchrec-wall-limit", type=float, default=1200.0,
                   help="a backstop: TorchRec's planning of one instance stopped after this many wall seconds")
    p.add_argument("--only", help="comma-separated instance names")
    p.add_argument("--out", help="write OUT.json and OUT.md (after every instance)")
    p.add_argument("--resume", action="store_true", help="keep OUT.json's rows and plan only the instances it lacks")
    p.add_argument("--torchrec-from", metavar="RECORD.json",
                   help="plan only our side; TorchRec's figures from this earlier record's rows of the same inputs")
    args = p.parse_args()
    quiet_libraries()
    logging.disable(logging.WARNING)
    instances = suite(args.count)[: QUICK if args.quick else None]
    if args.only:
        instances = [i for i in instances if i.name in args.only.split(",")]
    rows = _previous(args.out, args.resume)
    done = {r["name"] for r in rows}
    meta = {"argv": sys.argv[1:], "torchrec_timeout_s": args.torchrec_timeout, "torchrec_limit_cpu_s": args.torchrec_limit,
            "torchrec_wall_limit_s": args.torchrec_wall_limit,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "uptime_start": _uptime(), "pid": os.getpid()}
    record = ({r["name"]: r for r in json.loads(Path(args.torchrec_from).read_text())["rows"]}
              if args.torchrec_from else None)
    worker = None if record is not None else TorchRecWorker(args.torchrec_limit, args.torchrec_wall_limit)
    try:
        for inst in instances:
            if inst.name in done:
                continue
            row = (run_ours_only(inst, record, args.torchrec_from) if record is not None
                   else run_instance(inst, worker, args.torchrec_timeout))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                _write(args.out, rows, meta)
    finally:
        if worker is not None:
            worker.close()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if args.out:
        _write(args.out, rows, meta)
    print(json.dumps(summarize(rows)), flush=True)


if __name__ == "__main__":
    main()
