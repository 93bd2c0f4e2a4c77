"""The versioned plan-file format (JSON, sorted keys, stable order): TorchRec's ShardingPlan in and out.

The declared models and the checks of a file live in planformat.py (no torch); this module
builds TorchRec's ShardingPlan from a checked file and writes one.

A plan file holds everything needed to rebuild the TorchRec ShardingPlan exactly — every
ParameterSharding field, cache params included — plus the inputs it was made from and
the estimates (per-rank memory and cost) it was chosen by:

    {"format": "dlrm_dist.sharding_plan", "version": 2,
     "inputs":    {tables, topology, budgets, batch_size_per_rank, optimizer},
     "plan":      {module path: {table: {sharding_type, compute_kernel, ranks,
                                        shards: [{offsets, sizes, placement}] | null,
                                        cache_params, enforce_hbm, ...}}},
     "estimates": {"per_rank": [...], "summary": {...}},
     "planner":   {"name": ..., "notes": [...]}}

``PlanFileModel`` (version 2) and ``PlanFileV1Model`` (version 1, which stored headroom and
the iteration time twice) declare it; reading a file validates it whole, so every problem
comes back in one PlanError with its path (``plan['model.sparse_arch'].t_cat_0.ranks: ...``).
Estimates must be finite and non-negative and agree with the file's own per-rank figures
and world size: ``dlrm-plan inspect`` never shows a NaN, a negative size or a summary of
another plan as if it were valid.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan

from dlrm_dist.config.files import read_data
from dlrm_dist.fileio import publish_file
from dlrm_dist.planning.codec import encode
from dlrm_dist.planning.errors import PlanError
# The declared models live in planformat.py (no torch); the names are kept importable from here.
from dlrm_dist.planning.planformat import (  # noqa: F401
    FORMAT, READABLE_VERSIONS, VERSION, EstimatesModel, PlanFileModel, PlanFileV1Model, PlannerModel, RankModel,
    ShardingModel, ShardModel, SummaryModel, check_header, checked_parts, estimate_problems, validated,
)
from dlrm_dist.planning.types import PlanEstimates, PlannerInputs

_SPEC_FIELD = "sharding_spec"
_PS_FIELDS = tuple(f.name for f in dataclasses.fields(ParameterSharding) if f.name != _SPEC_FIELD)


@dataclass
class PlanFile:
    """A plan with its provenance; ``plan`` is TorchRec's ShardingPlan."""

    inputs: PlannerInputs
    plan: ShardingPlan
    estimates: PlanEstimates
    planner: dict[str, Any] = field(default_factory=dict)


def _encode_sharding(ps: ParameterSharding) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(ps):
        value = getattr(ps, f.name)
        if f.name == _SPEC_FIELD:
            if value is not None and not isinstance(value, EnumerableShardingSpec):
                raise PlanError(f"cannot store a {type(value).__name__} sharding spec")
            out["shards"] = None if value is None else [
                {"offsets": list(s.shard_offsets), "sizes": list(s.shard_sizes), "placement": str(s.placement)}
                for s in value.shards
            ]
        else:
            out[f.name] = encode(value)
    return out


def to_data(pf: PlanFile) -> dict[str, Any]:
    plan = {
        path: {table: _encode_sharding(ps) for table, ps in module_plan.items()}
        for path, module_plan in pf.plan.plan.items()
    }
    return {"format": FORMAT, "version": VERSION, "inputs": pf.inputs.to_dict(), "plan": plan,
            "estimates": pf.estimates.to_dict(), "planner": pf.planner}


def sharding_spec(m: ShardingModel) -> Optional[EnumerableShardingSpec]:
    if m.shards is None:
        return None
    return EnumerableShardingSpec([
        ShardMetadata(shard_offsets=list(s.offsets), shard_sizes=list(s.sizes), placement=s.placement)
        for s in m.shards
    ])


def parameter_sharding(m: ShardingModel) -> ParameterSharding:
    kept = {f: getattr(m, f) for f in _PS_FIELDS}
    return ParameterSharding(**kept, sharding_spec=sharding_spec(m))


def from_data(d: Any, origin: str = "plan") -> PlanFile:
    """A PlanFile from parsed data; every problem in one PlanError naming ``origin``."""
    parts = checked_parts(d, origin)
    plan = ShardingPlan({
        path: EmbeddingModuleShardingPlan({table: parameter_sharding(ps) for table, ps in tables.items()})
        for path, tables in parts.model.plan.items()
    })
    return PlanFile(parts.inputs, plan, parts.estimates, parts.planner)


def dumps(pf: PlanFile) -> str:
    """Deterministic text: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(to_data(pf), indent=1, sort_keys=True) + "\n"


def write(pf: PlanFile, path: str | Path) -> None:
    """Writes atomically (a reader never sees half a plan); a path that cannot be written is a PlanError."""
    publish_file(path, dumps(pf), "plan file", "plan.json", PlanError)


def read(path: str | Path) -> PlanFile:
    return from_data(read_data(path, "plan file", PlanError), origin=str(path))
