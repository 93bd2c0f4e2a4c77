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
from json.encoder import encode_basestring_ascii as _json_string  # json.dumps' escaping (ensure_ascii)
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from dlrm_dist.config.files import read_data
from dlrm_dist.fileio import publish_file
from dlrm_dist.planning.codec import decode, encode
from dlrm_dist.planning.errors import PlanError
# The declared models live in planformat.py (no torch); the names are kept importable from here.
from dlrm_dist.planning.planformat import (  # noqa: F401
    FORMAT, READABLE_VERSIONS, VERSION, EstimatesModel, PlanFileModel, PlanFileV1Model, PlannerModel, RankModel,
    ShardingModel, ShardModel, SummaryModel, check_header, checked_parts, estimate_problems, validated,
)
from dlrm_dist.planning.types import PlanEstimates, PlannerInputs

if TYPE_CHECKING:
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec
    from torchrec.distributed.types import ParameterSharding, ShardingPlan

_SPEC_FIELD = "sharding_spec"


@dataclass(frozen=True)
class EncodedPlan:
    """A plan already in the plan file's form, ``{module path: {table: entry}}`` (what ``to_data`` writes
    under "plan"): the planner writes it without importing TorchRec (convert.plan_entries)."""

    entries: dict[str, dict[str, dict[str, Any]]]

    def sharding_plan(self) -> "ShardingPlan":
        from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingPlan

        return ShardingPlan({path: EmbeddingModuleShardingPlan({t: _sharding_of_entry(e) for t, e in tables.items()})
                             for path, tables in self.entries.items()})


@dataclass
class PlanFile:
    """A plan with its provenance; ``plan`` is TorchRec's ShardingPlan.

    ``plan`` may be given as an :class:`EncodedPlan` (``dlrm-plan make``'s, which imports no TorchRec):
    it then becomes a ShardingPlan the first time it is read, and a file written before that is
    written from the encoded form, which is the same text (tests/unit/test_planner_perf.py).
    """

    inputs: PlannerInputs
    plan: "ShardingPlan"
    estimates: PlanEstimates
    planner: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.plan, EncodedPlan):
            self.__dict__["_encoded"] = self.plan
            del self.__dict__["plan"]  # read through __getattr__, converted once

    def __getattr__(self, name: str) -> Any:
        encoded = self.__dict__.get("_encoded")
        if name != "plan" or encoded is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        plan = encoded.sharding_plan()
        self.__dict__["plan"] = plan
        return plan

    def plan_data(self) -> dict[str, Any]:
        """The "plan" part of the file: the encoded form while the ShardingPlan was never built, else encoded
        from it (it may have been replaced)."""
        if "plan" not in self.__dict__:
            return self.__dict__["_encoded"].entries
        return {path: {table: _encode_sharding(ps) for table, ps in module_plan.items()}
                for path, module_plan in self.plan.plan.items()}


def _ps_fields() -> tuple[str, ...]:
    from torchrec.distributed.types import ParameterSharding

    return tuple(f.name for f in dataclasses.fields(ParameterSharding) if f.name != _SPEC_FIELD)


def _sharding_of_entry(entry: dict[str, Any]) -> "ParameterSharding":
    """TorchRec's ParameterSharding of one encoded entry (its shards as an EnumerableShardingSpec)."""
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
    from torchrec.distributed.types import ParameterSharding

    shards = entry["shards"]
    spec = None if shards is None else EnumerableShardingSpec([
        ShardMetadata(shard_offsets=list(s["offsets"]), shard_sizes=list(s["sizes"]), placement=s["placement"])
        for s in shards])
    return ParameterSharding(**{f: decode(entry[f]) for f in _ps_fields()}, sharding_spec=spec)


def _encode_sharding(ps: "ParameterSharding") -> dict[str, Any]:
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec

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
    return {"format": FORMAT, "version": VERSION, "inputs": pf.inputs.to_dict(), "plan": pf.plan_data(),
            "estimates": pf.estimates.to_dict(), "planner": pf.planner}


def sharding_spec(m: ShardingModel) -> Optional["EnumerableShardingSpec"]:
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata

    if m.shards is None:
        return None
    return EnumerableShardingSpec([
        ShardMetadata(shard_offsets=list(s.offsets), shard_sizes=list(s.sizes), placement=s.placement)
        for s in m.shards
    ])


def parameter_sharding(m: ShardingModel) -> "ParameterSharding":
    from torchrec.distributed.types import ParameterSharding

    kept = {f: getattr(m, f) for f in _ps_fields()}
    return ParameterSharding(**kept, sharding_spec=sharding_spec(m))


def from_data(d: Any, origin: str = "plan") -> PlanFile:
    """A PlanFile from parsed data; every problem in one PlanError naming ``origin``."""
    from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingPlan

    parts = checked_parts(d, origin)
    plan = ShardingPlan({
        path: EmbeddingModuleShardingPlan({table: parameter_sharding(ps) for table, ps in tables.items()})
        for path, tables in parts.model.plan.items()
    })
    return PlanFile(parts.inputs, plan, parts.estimates, parts.planner)


def dumps(pf: PlanFile) -> str:
    """Deterministic text: sorted keys, fixed indentation, trailing newline."""
    return sorted_json(to_data(pf)) + "\n"


class _NotPlain(Exception):
    """A value sorted_json does not write itself (json.dumps then writes or refuses it)."""


def sorted_json(value: Any) -> str:
    """``json.dumps(value, indent=1, sort_keys=True)``, the same text, about three times faster.

    The standard library writes indented JSON with its pure-Python encoder (its C encoder does no
    indentation), and a 10,000-table plan file is 8 MB of one-number lines. Plain data (dicts with
    string keys, lists, tuples, strings, ints, floats, bools, None) is written here with the standard
    library's own string escaping and number formats; anything else goes to json.dumps.
    """
    out: list[str] = []
    try:
        _write(value, "\n", out)
    except _NotPlain:
        return json.dumps(value, indent=1, sort_keys=True)
    return "".join(out)


def _float_text(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (_INF, -_INF):
        return "Infinity" if x > 0 else "-Infinity"
    return float.__repr__(x)


_INF = float("inf")


def _write(v: Any, newline: str, out: list[str]) -> None:
    """Appends ``v``'s text at the indentation ``newline`` ends with (json.encoder._make_iterencode's layout)."""
    t = type(v)
    if t is str:
        out.append(_json_string(v))
    elif t is int:
        out.append(int.__repr__(v))
    elif t is float:
        out.append(_float_text(v))
    elif isinstance(v, str):
        out.append(_json_string(v))
    elif v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        out.append(int.__repr__(v))
    elif isinstance(v, float):
        out.append(_float_text(v))
    elif isinstance(v, dict):
        if not v:
            out.append("{}")
            return
        if not all(isinstance(k, str) for k in v):
            raise _NotPlain  # json's key coercion and sorting of mixed keys: left to it
        inner = newline + " "
        out.append("{")
        for i, k in enumerate(sorted(v)):
            out.append("," + inner if i else inner)
            out.append(_json_string(k))
            out.append(": ")
            _write(v[k], inner, out)
        out.append(newline + "}")
    elif isinstance(v, (list, tuple)):
        if not v:
            out.append("[]")
            return
        inner = newline + " "
        if all(type(x) is int for x in v):  # shard sizes, offsets, ranks: most of a plan file's lines
            out.append("[" + inner + ("," + inner).join(map(int.__repr__, v)) + newline + "]")
            return
        out.append("[")
        for i, x in enumerate(v):
            out.append("," + inner if i else inner)
            _write(x, inner, out)
        out.append(newline + "]")
    else:
        raise _NotPlain


def write(pf: PlanFile, path: str | Path) -> None:
    """Writes atomically (a reader never sees half a plan); a path that cannot be written is a PlanError."""
    publish_file(path, dumps(pf), "plan file", "plan.json", PlanError)


def read(path: str | Path) -> PlanFile:
    return from_data(read_data(path, "plan file", PlanError), origin=str(path))
