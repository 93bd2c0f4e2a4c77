"""Simple placements to set a plan beside: what the planner bought.

Both put every table whole on one rank (table_wise, the in-HBM kernel) and ignore cost:
- round_robin: table i on rank i mod N;
- greedy_by_size: largest table first, onto the rank with the least memory so far.
A baseline may exceed the memory budget; its estimates then show negative headroom.
"""

from __future__ import annotations

import numpy as np

from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.options import Enumerator
from dlrm_dist.planning.types import Option, PlannerInputs, TablePlacement

BASELINES = ("round_robin", "greedy_by_size")


def _table_wise(enumerator: Enumerator, index: int) -> Option:
    tw = [o for o in enumerator.options(index) if o.sharding_type == "table_wise"]
    if not tw:
        raise PlanError(f"table {enumerator.inputs.tables[index].name} does not allow table_wise; no baseline")
    return min(tw, key=lambda o: (o.kernel != "fused", o.total_cost))


def baseline(name: str, enumerator: Enumerator) -> list[TablePlacement]:
    """The placement of baseline ``name``."""
    inputs: PlannerInputs = enumerator.inputs
    n = inputs.topology.world_size
    options = [_table_wise(enumerator, i) for i in range(len(inputs.tables))]
    if name == "round_robin":
        return [TablePlacement(o, np.array([i % n])) for i, o in enumerate(options)]
    if name == "greedy_by_size":
        memory = np.zeros(n)
        placed: list[TablePlacement] = [None] * len(options)  # type: ignore[list-item]
        for i in sorted(range(len(options)), key=lambda i: -int(options[i].hbm.sum() + options[i].ddr.sum())):
            r = int(np.argmin(memory))
            memory[r] += options[i].hbm.sum() + options[i].ddr.sum()
            placed[i] = TablePlacement(options[i], np.array([r]))
        return placed
    raise PlanError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
