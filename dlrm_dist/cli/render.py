"""Text rendering of plan estimates: per-rank tables and summaries (presentation only)."""

from __future__ import annotations

from typing import Optional

from dlrm_dist.planning.types import PlanEstimates, PlanSummary

GB = 1024**3
MB = 1024**2


def gb(x: float) -> str:
    return f"{x / GB:.2f}G"


def rank_table(est: PlanEstimates, measured: Optional[list[float]] = None) -> str:
    """One line per rank: estimated times, memory against budget, IO bytes, shards by type."""
    head = (f"{'rank':>4} {'cost ms':>9} {'fwd cmp':>8} {'fwd com':>8} {'bwd cmp':>8} {'bwd com':>8} {'in-dist':>8} "
            f"{'HBM used/budget':>16} {'DDR used/budget':>16} {'in MB':>8} {'out MB':>8}")
    if measured:
        head += f" {'meas ms':>8} {'meas/est':>8}"
    lines = [head + "  shards"]
    hb, db = est.summary.hbm_budget_bytes, est.summary.ddr_budget_bytes
    for r in est.per_rank:
        p = r.perf
        line = (f"{r.rank:>4} {r.cost_ms:>9.4f} {p.fwd_compute:>8.4f} {p.fwd_comms:>8.4f} "
                f"{p.bwd_compute:>8.4f} {p.bwd_comms:>8.4f} {p.input_dist_comms:>8.4f} "
                f"{gb(r.hbm_bytes) + '/' + gb(hb):>16} {gb(r.ddr_bytes) + '/' + gb(db):>16} "
                f"{r.input_bytes / MB:>8.2f} {r.output_bytes / MB:>8.2f}")
        if measured:
            m = measured[r.rank]
            ratio = f"{m / r.cost_ms:.1f}" if r.cost_ms else "-"  # a rank with no estimated cost has no ratio
            line += f" {m:>8.2f} {ratio:>8}"
        shards = ", ".join(f"{k}={v}" for k, v in r.shards_by_type.items())
        lines.append(f"{line}  {shards}")
    return "\n".join(lines)


def summary_text(s: PlanSummary) -> str:
    """The summary block under the per-rank table."""
    drivers = ", ".join(f"{d.table} ({d.cost_ms:.4f} ms)" for d in s.bottleneck_tables)
    sps = s.estimated_samples_per_s
    return "\n".join([
        f"bottleneck: rank {s.bottleneck_rank} at {s.estimated_iteration_ms:.4f} ms; driven by {drivers}",
        f"imbalance (max/mean - 1): cost {s.cost_imbalance:.3f}, HBM {s.hbm_imbalance:.3f}, DDR {s.ddr_imbalance:.3f}",
        f"memory headroom on the fullest rank: HBM {gb(s.hbm_headroom_bytes)}, DDR {gb(s.ddr_headroom_bytes)}",
        f"all-to-all bytes per sample: {s.all_to_all_bytes_per_sample:,.0f}",
        f"estimated embedding iteration: {s.estimated_iteration_ms:.4f} ms at global batch "
        f"{s.global_batch_size:,} -> {sps:,.0f} samples/s" if sps else "estimated iteration: n/a",
    ])
