"""Planning errors, and the report that says what would make a plan fit."""

from __future__ import annotations

import math
from dlrm_dist.errors import DlrmError
from dlrm_dist.planning.types import GB, Capacity, Option, PlannerInputs


class PlanError(DlrmError):
    """The requested placement cannot be built; the message says why and what would work."""


class NoFitError(PlanError):
    """The tables do not fit in the topology's memory budgets."""


def _gb(x: float) -> str:
    return f"{x / GB:.2f} GB"


def fit_report(options: list[list[Option]], inputs: PlannerInputs, cap: Capacity, failed: list[int]) -> str:
    """Which tables do not fit, bytes needed against available per rank, and what would fit."""
    t = inputs.topology
    n = t.world_size
    lines = [f"the tables do not fit on {n} x {t.device} rank(s) with these budgets "
             f"(per rank: HBM {_gb(cap.hbm)}, DDR {_gb(cap.ddr)})."]
    names = [inputs.tables[i].name for i in failed] or [x.name for x in inputs.tables]
    lines.append(f"tables that could not be placed: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    for i in failed[:10]:
        smallest = min(options[i], key=lambda o: o.hbm.max() + o.ddr.max())
        lines.append(f"{inputs.tables[i].name}: smallest shard needs HBM {_gb(smallest.hbm.max())} + "
                     f"DDR {_gb(smallest.ddr.max())} ({smallest.sharding_type}/{smallest.kernel})")
    in_hbm = sum(min((o.hbm.sum() for o in opts if o.kernel in ("fused", "dense")), default=0) for opts in options)
    host = sum(min((o.ddr.sum() + o.hbm.sum() for o in opts), default=0) for opts in options)
    lines.append(f"needed in total: {_gb(in_hbm)} to hold every table in device memory, "
                 f"{_gb(host)} at the least with UVM; available: HBM {_gb(cap.hbm * n)}, DDR {_gb(cap.ddr * n)}.")
    hints = []
    host_fits = host <= cap.ddr * n
    if t.device == "cuda":
        lf = inputs.budgets.cache_load_factor
        if host_fits:  # only useful when host memory can take what leaves the devices
            hints.append(f"a smaller cache load factor (now {lf}) moves more of each cached table to host memory")
        per_rank = max(in_hbm / n / max(inputs.budgets.hbm_share, 1e-9) / GB, 0)
        if per_rank > t.hbm_gb:  # only a remedy when it is more than the devices have
            hints.append(f"HBM of at least {per_rank:.1f} GB per device would hold every table in HBM")
        if cap.hbm > 0:
            hints.append(f"a world size of at least {math.ceil(in_hbm / cap.hbm)} would hold every table in HBM")
    if cap.ddr > 0 and not host_fits:
        hints.append(f"a world size of at least {math.ceil(host / cap.ddr)} (or more host DDR) is needed for host memory")
    lines.append("would fit: " + "; or ".join(hints) if hints else "")
    return lines[0] + " " + "; ".join(line for line in lines[1:] if line)  # one line, as every CLI error
