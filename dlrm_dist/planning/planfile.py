"""The versioned plan-file format (JSON, sorted keys, stable order).

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

Version 2 stores each estimate once (types.py); version-1 files still load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan

from dlrm_dist.config.files import read_data
from dlrm_dist.planning.codec import decode, encode
from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.inputs import PlannerInputs
from dlrm_dist.planning.types import PlanEstimates

FORMAT = "dlrm_dist.sharding_plan"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: headroom and the iteration time stored twice (read by types.py)
_SPEC_FIELD = "sharding_spec"


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


def _decode_sharding(d: dict[str, Any], where: str) -> ParameterSharding:
    d = dict(d)
    shards = d.pop("shards", None)
    names = {f.name for f in dataclasses.fields(ParameterSharding)} - {_SPEC_FIELD}
    unknown = sorted(set(d) - names)
    if unknown:
        raise PlanError(f"{where}: unknown field(s) {unknown}")
    spec = None
    if shards is not None:
        spec = EnumerableShardingSpec([
            ShardMetadata(shard_offsets=list(s["offsets"]), shard_sizes=list(s["sizes"]), placement=s["placement"])
            for s in shards
        ])
    return ParameterSharding(**{k: decode(v) for k, v in d.items()}, sharding_spec=spec)


def to_data(pf: PlanFile) -> dict[str, Any]:
    plan = {
        path: {table: _encode_sharding(ps) for table, ps in module_plan.items()}
        for path, module_plan in pf.plan.plan.items()
    }
    return {"format": FORMAT, "version": VERSION, "inputs": pf.inputs.to_dict(), "plan": plan,
            "estimates": pf.estimates.to_dict(), "planner": pf.planner}


def from_data(d: dict[str, Any], origin: str = "plan") -> PlanFile:
    if d.get("format") != FORMAT:
        raise PlanError(f"{origin}: not a dlrm_dist plan file (format {d.get('format')!r}, expected {FORMAT!r})")
    version = d.get("version")
    if version not in READABLE_VERSIONS:
        raise PlanError(f"{origin}: plan file version {version!r} is not supported (this reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))})")
    missing = [k for k in ("inputs", "plan", "estimates") if k not in d]
    if missing:
        raise PlanError(f"{origin}: missing section(s) {missing}")
    plan = ShardingPlan({})
    for path, tables in d["plan"].items():
        module_plan = EmbeddingModuleShardingPlan()
        for table, ps in tables.items():
            module_plan[table] = _decode_sharding(ps, f"{origin}: {path}.{table}")
        plan.plan[path] = module_plan
    inputs = PlannerInputs.from_dict(d["inputs"], origin=f"{origin}: inputs")
    try:
        estimates = PlanEstimates.from_dict(d["estimates"], version)
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"{origin}: the estimates section is malformed ({type(e).__name__}: {e})") from None
    return PlanFile(inputs, plan, estimates, d.get("planner", {}))


def dumps(pf: PlanFile) -> str:
    """Deterministic text: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(to_data(pf), indent=1, sort_keys=True) + "\n"


def write(pf: PlanFile, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dumps(pf))


def read(path: str | Path) -> PlanFile:
    return from_data(read_data(path, "plan file", PlanError), origin=str(path))
