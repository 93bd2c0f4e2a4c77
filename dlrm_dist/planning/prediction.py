"""A calibrated plan's predicted training step per rank (no torch: read from the plan file alone).

A rank's step = its embedding shards' estimated cost (Perf.total: kernels from the calibration,
all-to-all bytes over the measured bandwidth) + what every rank pays alike: the calibration's
step overhead (fixed + per table), the latency of the all-to-alls beyond the one sharding group
the overhead was measured with (input ids, forward and backward embeddings, and the splits:
four per group), and the dense part (the inputs' ``dense``: GEMMs at the measured rate, the
gradient all-reduce). Without a calibration there is no step prediction: TorchRec's constant
bandwidths estimate the embedding part only, often 100x below a CPU step.
"""

from __future__ import annotations

from typing import Optional, Sequence

from dlrm_dist.planning.calibration import step_overhead_ms
from dlrm_dist.planning.types import PlanEstimates, PlannerInputs

COLLECTIVES_PER_GROUP = 4


def sharding_groups(shards_by_type: Sequence[dict[str, int]]) -> int:
    """Sharding types with shards anywhere (TorchRec runs one set of all-to-alls per type)."""
    return len({t for by_type in shards_by_type for t, n in by_type.items() if n and t != "data_parallel"})


def predicted_step_ms(inputs: PlannerInputs, estimates: PlanEstimates) -> Optional[list[float]]:
    """Per rank: the predicted training step (ms), or None when the plan was not calibrated."""
    cal = inputs.calibration
    if cal is None:
        return None
    groups = sharding_groups([r.shards_by_type for r in estimates.per_rank])
    dense = (inputs.dense.flops_per_sample, inputs.dense.parameters) if inputs.dense is not None else None
    extra = step_overhead_ms(cal, len(inputs.tables), COLLECTIVES_PER_GROUP * max(groups - 1, 0), dense,
                             inputs.batch_size_per_rank)
    return [r.cost_ms + extra for r in estimates.per_rank]
