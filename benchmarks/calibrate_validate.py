"""Does a calibrated plan predict the measured step? (issue 22 item 2's validation)

For each job (embedding-heavy: pooling factors 20-100, tables of 1e5-1e7 rows, a small MLP)
at 2 and 4 CPU ranks over gloo: calibrate this machine at that world size (dlrm-plan
calibrate's code), make candidate plans with that calibration (ours, TorchRec's default
planner, table-wise round robin, greedy by size, row-wise, everything on rank 0), train each
under DistributedModelParallel for a few steps and compare the predicted step (the bottleneck
rank's: every rank waits for it in the all-to-alls) with the measured one. Reports per plan
the error, per job the Spearman rank correlation of predicted vs measured order, and whether
the chosen plan (ours) is the measured fastest or within 5%.

Each plan is timed in rounds that start and end at a barrier (the group's step, the one every
rank waits for) and in every rank's CPU time (its own work: the load on a shared machine
stretches wall time, not CPU time). Per rank, the predicted work (prediction.predicted_work_ms)
is compared with the measured CPU time; the predicted step (the busiest rank's, the host's
cores shared among its ranks) with the measured step.

    .venv/bin/python benchmarks/calibrate_validate.py --out benchmarks/results/2026-12-01-calibrate-validate.json

Prints JSON (and writes it with --out), with ``uptime`` before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_dist.planning import calibration, measure, planfile
from dlrm_dist.planning.baselines import baseline
from dlrm_dist.planning.convert import to_sharding_plan
from dlrm_dist.planning.estimates import estimate
from dlrm_dist.planning.options import Enumerator
from dlrm_dist.planning.planfile import PlanFile
from dlrm_dist.planning.planner import make_plan_file, plan_file_for
from dlrm_dist.planning.prediction import local_tables, predicted_step_ms, predicted_work_ms
from dlrm_dist.planning.sharded_steps import ShardedSteps, StepJob, thread_sched_ms
from dlrm_dist.planning.types import PlannerInputs, TablePlacement

MODULE_PATH = "ebc"  # sharded_steps._Model's EmbeddingBagCollection
JOBS = {
    2: StepJob(tables=(("t0", 10_000_000, 16, 20.0), ("t1", 1_000_000, 64, 50.0), ("t2", 100_000, 64, 100.0),
                       ("t3", 500_000, 32, 20.0), ("t4", 2_000_000, 32, 60.0), ("t5", 200_000, 16, 30.0)),
               mlp=(64, 1), batch_per_rank=256),
    4: StepJob(tables=(("t0", 10_000_000, 16, 30.0), ("t1", 1_000_000, 64, 20.0), ("t2", 100_000, 64, 100.0),
                       ("t3", 500_000, 32, 40.0), ("t4", 2_000_000, 32, 20.0), ("t5", 200_000, 16, 80.0),
                       ("t6", 300_000, 64, 50.0), ("t7", 1_000_000, 16, 20.0)),
               mlp=(64, 1), batch_per_rank=128),
}
CAL_SIZES = measure.Sizes(dims=(16, 32, 64), rows=(100_000, 1_000_000, 10_000_000), pooling_factors=(20.0, 100.0),
                          batch=256, kernels=("fused",), reps=3, step_count=6)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def inputs_for(job: StepJob, world: int, cal: calibration.CalibrationModel) -> PlannerInputs:
    return PlannerInputs.from_dict({
        "tables": [{"name": n, "rows": r, "dim": d, "pooling_factor": pf} for n, r, d, pf in job.tables],
        "topology": {"world_size": world, "ranks_per_host": world, "device": "cpu", "ddr_gb": 20.0},
        "batch_size_per_rank": job.batch_per_rank, "optimizer": job.optimizer, "calibration": cal.to_data(),
        "dense": {"flops_per_sample": job.dense_flops_per_sample, "parameters": job.dense_parameters},
    }, "benchmark job")


def _package(inputs: PlannerInputs, placed: list[TablePlacement], name: str) -> PlanFile:
    t = inputs.topology
    plan = to_sharding_plan(placed, [x.name for x in inputs.tables], t.device, t.ranks_per_host, MODULE_PATH)
    return PlanFile(inputs, plan, estimate(placed, inputs), {"name": name, "notes": []})


def _row_wise(inputs: PlannerInputs) -> PlanFile:
    from torchrec.distributed.sharding_plan import calculate_shard_sizes_and_offsets

    enum = Enumerator(inputs)
    w = inputs.topology.world_size
    placed = []
    for i, t in enumerate(inputs.tables):
        sizes, offsets = calculate_shard_sizes_and_offsets(
            tensor=enum.params[t.name], world_size=w, local_world_size=w, sharding_type="row_wise", col_wise_shard_dim=None)
        placed.append(TablePlacement(enum.option_for(i, "row_wise", "fused", sizes, offsets, None), np.arange(w)))
    return _package(inputs, placed, "row_wise")


def _on_rank0(inputs: PlannerInputs) -> PlanFile:
    placed = baseline("round_robin", Enumerator(inputs))
    return _package(inputs, [TablePlacement(p.option, np.zeros_like(p.ranks)) for p in placed], "unbalanced_rank0")


def candidates(inputs: PlannerInputs) -> list[PlanFile]:
    from dlrm_dist.planning.torchrec_default import plan_with_torchrec

    out = [make_plan_file(inputs, MODULE_PATH)]
    out.append(plan_file_for(plan_with_torchrec(inputs).plan, inputs, "torchrec_default", MODULE_PATH))
    for name in ("round_robin", "greedy_by_size"):
        out.append(_package(inputs, baseline(name, Enumerator(inputs)), name))
    out += [_row_wise(inputs), _on_rank0(inputs)]
    return out


def _timed_round(runner: ShardedSteps, steps: int) -> tuple[float, float, float, float]:
    """(the group's step ms, this rank's mean CPU ms per step, its main thread's CPU ms and
    run-queue wait ms per step) of ``steps`` steps started together.

    Every rank enters the round at a barrier and leaves it at one, so the group's figure is the
    step every rank experiences (the bottleneck's). Without the barriers a rank that finished the
    previous plan early counts its wait for the other ranks into this plan's first step. The CPU
    time is the rank's own work (waiting in a collective costs none), whatever else shares the core.
    The main thread's step splits into its CPU time, its run-queue wait (runnable, but the core was
    another thread's: the machine's other load, or this job's other ranks when they outnumber the
    cores) and the rest, blocked (waiting for the other ranks in a collective).
    """
    import torch.distributed as dist

    dist.barrier()
    s0, t0 = thread_sched_ms(), time.perf_counter()
    runner.run(steps)
    dist.barrier()
    t1, s1 = time.perf_counter(), thread_sched_ms()
    run, wait = ((s1[0] - s0[0]) / steps, (s1[1] - s0[1]) / steps) if s0 and s1 else (math.nan, math.nan)
    return (t1 - t0) * 1e3 / steps, sum(runner.cpu_ms) / steps, run, wait


def _rank_time_plans(job: StepJob, paths: list[str], steps: int, rounds: int) -> list[dict[str, Any]]:
    """Every plan's model built once, then ``rounds`` rounds each timing ``steps`` steps of every plan in
    turn: a load change on the shared machine then moves all plans alike instead of the last ones."""
    import torch.distributed as dist

    runners = [ShardedSteps(job, planfile.read(path).plan) for path in paths]
    for r in runners:
        r.run(2)  # warm-up
    rows: list[list[tuple[float, ...]]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, r in enumerate(runners):
            rows[i].append(_timed_round(r, steps))
    out = []
    for timed in rows:
        g, o, run, wait = (list(x) for x in zip(*timed))
        out.append({"rank": dist.get_rank(), "round_means_ms": g, "mean_ms": float(np.median(g)),
                    "cpu_round_means_ms": o, "cpu_ms": float(np.median(o)),
                    "thread_cpu_ms": float(np.median(run)), "runq_ms": float(np.median(wait))})
    return out


def _placement(pf: PlanFile) -> dict[str, str]:
    """table -> "sharding_type@ranks" (what the record shows of each plan)."""
    out = {}
    for tables in pf.plan.plan.values():
        for name, ps in tables.items():
            out[name] = f"{ps.sharding_type}@{','.join(map(str, sorted(set(ps.ranks or []))))}"
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def run_job(world: int, steps: int, rounds: int, timeout: float) -> dict[str, Any]:
    job = JOBS[world]
    t0 = time.perf_counter()
    cal = measure.calibrate(world, sizes=CAL_SIZES, timeout_s=timeout)
    cal_s, cal_uptime = time.perf_counter() - t0, uptime()
    inputs = inputs_for(job, world, cal)
    plans = candidates(inputs)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, pf in enumerate(plans):
            paths.append(str(Path(d, f"plan{i}.json")))
            planfile.write(pf, paths[-1])
        per_rank = measure.run_ranks(_rank_time_plans, world, job, paths, steps, rounds, timeout_s=timeout)
    rows = []
    for i, pf in enumerate(plans):
        local = local_tables(pf.plan_data())
        predicted = predicted_step_ms(pf.inputs, pf.estimates, local)
        work = predicted_work_ms(pf.inputs, pf.estimates, local)
        cpu = [per_rank[r][i]["cpu_ms"] for r in range(world)]
        measured = [per_rank[r][i]["mean_ms"] for r in range(world)]
        # Every rank waits for the slowest in the all-to-alls: the step is the bottleneck rank's
        # (measured between barriers, so every rank's figure is the group's).
        pred, meas = max(predicted), max(measured)
        runq = [per_rank[r][i]["runq_ms"] for r in range(world)]
        thread = [per_rank[r][i]["thread_cpu_ms"] for r in range(world)]
        blocked = [m - c - q for m, c, q in zip(measured, thread, runq)]
        critical = min(range(world), key=lambda r: blocked[r])  # the rank the others wait for
        rows.append({"plan": pf.planner["name"], "predicted_rank_ms": predicted, "measured_rank_ms": measured,
                     "measured_rank_thread_cpu_ms": thread, "measured_rank_runq_ms": runq,
                     "measured_rank_blocked_ms": blocked, "critical_rank": critical,
                     # the step less the critical rank's waits for a core: an estimate of the step on a
                     # quiet machine when the ranks have a core each (with more ranks than cores the
                     # waits are the job's own ranks too, which the prediction shares the cores for)
                     "measured_step_less_core_waits_ms": (max(measured) - runq[critical]
                                                          if world <= cal.machine.cores else None),
                     "predicted_rank_work_ms": work, "measured_rank_cpu_ms": cpu,
                     "rank_work_errors": [w / c - 1.0 for w, c in zip(work, cpu)],
                     "predicted_step_ms": pred, "measured_step_ms": meas, "error": pred / meas - 1.0,
                     "embedding_estimate_ms": pf.estimates.summary.estimated_iteration_ms,
                     "placement": _placement(pf), "round_means_ms": [per_rank[r][i]["round_means_ms"] for r in range(world)],
                     "cpu_round_means_ms": [per_rank[r][i]["cpu_round_means_ms"] for r in range(world)]})
    pred, meas = [r["predicted_step_ms"] for r in rows], [r["measured_step_ms"] for r in rows]
    fastest = min(meas)
    quiet = [r["measured_step_less_core_waits_ms"] for r in rows]
    by_quiet = None not in quiet and {
        "max_abs_error_less_core_waits": max(abs(p / q - 1.0) for p, q in zip(pred, quiet)),
        "spearman_less_core_waits": spearman(pred, quiet), "chosen_vs_fastest_less_core_waits": quiet[0] / min(quiet) - 1.0}
    return {"world_size": world, "job": dataclasses.asdict(job), "calibration_seconds": cal_s,
            "calibration": cal.to_data(), "plans": rows, "spearman": spearman(pred, meas),
            # the same order judged by work (the busiest rank's CPU time): what the load cannot move
            "spearman_work": spearman([max(r["predicted_rank_work_ms"]) for r in rows],
                                      [max(r["measured_rank_cpu_ms"]) for r in rows]),
            "chosen_vs_fastest": rows[0]["measured_step_ms"] / fastest - 1.0,
            "max_abs_error": max(abs(r["error"]) for r in rows),
            # the same judged on the steps less the critical rank's waits for a core (the other load)
            **(by_quiet or {}),
            "max_abs_rank_work_error": max(abs(e) for r in rows for e in r["rank_work_errors"]),
            "cost_basis": cal.cost_basis, "uptime_after_calibration": cal_uptime}


GOALS = (("max_abs_error", "every plan's step predicted within 25%", lambda v: v <= 0.25),
         ("spearman", "predicted vs measured order, Spearman >= 0.9", lambda v: v >= 0.9),
         ("chosen_vs_fastest", "the chosen plan (ours) the measured fastest or within 5%", lambda v: v <= 0.05))


def summary_md(record: dict[str, Any]) -> str:
    """The record as a Markdown table per job, each goal met or not on the measured wall-clock
    steps, and again on the steps less the critical rank's waits for a core (the other load)."""
    lines = [f"commit {record['commit']}; uptime before: `{record['uptime_before']}`, after: "
             f"`{record['uptime_after']}`", ""]
    for job in record["jobs"]:
        lines += [f"### {job['world_size']} ranks (cost basis {job['cost_basis']}; uptime after calibrating: "
                  f"`{job['uptime_after_calibration']}`)", "",
                  "| plan | predicted step ms | measured step ms | error | less core waits ms | error | "
                  "predicted work ms (per rank) | measured CPU ms (per rank) | run-queue wait ms (per rank) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in job["plans"]:
            quiet = r["measured_step_less_core_waits_ms"]
            q = f"{quiet:.1f} | {r['predicted_step_ms'] / quiet - 1:+.0%}" if quiet else "- | -"
            lines.append(f"| {r['plan']} | {r['predicted_step_ms']:.1f} | {r['measured_step_ms']:.1f} | {r['error']:+.0%} | "
                         f"{q} | {_ms(r['predicted_rank_work_ms'])} | {_ms(r['measured_rank_cpu_ms'])} | "
                         f"{_ms(r['measured_rank_runq_ms'])} |")
        lines.append("")
        for key, goal, met in GOALS:
            verdict = f"- {goal}: {job[key]:.3f} ({'met' if met(job[key]) else 'NOT met'})"
            quiet = job.get(f"{key}_less_core_waits")
            if quiet is not None:
                verdict += f"; less core waits {quiet:.3f} ({'met' if met(quiet) else 'NOT met'})"
            lines.append(verdict)
        lines += [f"- per-rank work vs CPU time: worst {job['max_abs_rank_work_error']:.0%}, Spearman by work "
                  f"{job['spearman_work']:.2f}", ""]
    return "\n".join(lines)


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    p.add_argument("--steps", type=int, default=4, help="steps per plan and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every plan (medians are reported)")
    p.add_argument("--timeout", type=float, default=1500.0)
    p.add_argument("--out")
    p.add_argument("--md", help="also write the summary table (Markdown) here")
    args = p.parse_args()
    record: dict[str, Any] = {"uptime_before": uptime(), "commit": subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(), "jobs": []}
    for world in args.worlds:
        record["jobs"].append(run_job(world, args.steps, args.rounds, args.timeout))
        print(json.dumps({k: v for k, v in record["jobs"][-1].items() if k not in ("calibration", "job")}, indent=1),
              file=sys.stderr, flush=True)
    record["uptime_after"] = uptime()
    text = json.dumps(record, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.md:
        Path(args.md).write_text(summary_md(record) + "\n")
    print(text)


if __name__ == "__main__":
    main()
