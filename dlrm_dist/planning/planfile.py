"""The versioned plan-file format (JSON, sorted keys, stable order), declared as pydantic models.

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
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.planner.types import Perf
from torchrec.distributed.types import CacheParams, EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan

from dlrm_dist.config.files import read_data
from dlrm_dist.fileio import atomic_write_text, disk_full
from dlrm_dist.names import COMPUTE_KERNELS, SHARDING_TYPES
from dlrm_dist.planning.codec import check_field, decode, encode
from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.inputs import InputsModel, name_tables
from dlrm_dist.planning.types import PlanEstimates, PlannerInputs
from dlrm_dist.validation import Strict, joined, validate

FORMAT = "dlrm_dist.sharding_plan"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: headroom and the iteration time stored twice (read by types.py)
_SPEC_FIELD = "sharding_spec"
_CODEC_FIELDS = ("cache_params", "bounds_check_mode", "output_dtype", "key_value_params")
_PLACEMENT = re.compile(r"rank:(\d+)/(cpu|cuda:\d+)")
_REL_TOL = 1e-9  # stored summary figures against the ones recomputed from the per-rank rows

Count = Annotated[int, Field(ge=0)]
Bytes = Annotated[int, Field(ge=0)]
Ms = Annotated[float, Field(ge=0)]


# -- the plan section ---------------------------------------------------------------------------
class ShardModel(Strict):
    offsets: list[Count] = Field(min_length=2, max_length=2)  # (row, column)
    sizes: list[Count] = Field(min_length=2, max_length=2)
    placement: str

    @field_validator("placement")
    @classmethod
    def _placement(cls, v: str) -> str:
        if not _PLACEMENT.fullmatch(v):
            raise ValueError(f"must look like rank:N/cpu or rank:N/cuda:M, got {v!r}")
        return v

    @property
    def rank(self) -> int:
        return int(_PLACEMENT.fullmatch(self.placement).group(1))  # type: ignore[union-attr]


class ShardingModel(Strict):
    """One table's ParameterSharding; ``shards`` stands for its EnumerableShardingSpec."""

    sharding_type: Literal[SHARDING_TYPES]
    compute_kernel: Literal[COMPUTE_KERNELS]
    ranks: Optional[list[Count]] = Field(None, min_length=1)
    shards: Optional[list[ShardModel]] = Field(None, min_length=1)
    # TorchRec/fbgemm dataclasses and enums, stored by codec.py and decoded (and checked) here.
    cache_params: Any = None
    bounds_check_mode: Any = None
    output_dtype: Any = None
    key_value_params: Any = None
    enforce_hbm: Optional[bool] = None
    stochastic_rounding: Optional[bool] = None

    @field_validator(*_CODEC_FIELDS)
    @classmethod
    def _decoded(cls, v: Any, info: Any) -> Any:
        value = decode(v)
        check_field(ParameterSharding, info.field_name, _PS_HINTS.get(info.field_name), value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ShardingModel":
        replicated = self.sharding_type == "data_parallel"
        if replicated != (self.shards is None):
            raise ValueError("data_parallel tables are replicated and have no shards; every other sharding "
                             f"type needs its shards (sharding_type {self.sharding_type!r}, "
                             f"{'no' if self.shards is None else len(self.shards)} shards)")
        if self.shards is not None and self.ranks != [s.rank for s in self.shards]:
            raise ValueError(f"ranks {self.ranks} do not match the shards' placements "
                             f"{[s.rank for s in self.shards]}")
        lf = self.cache_params.load_factor if isinstance(self.cache_params, CacheParams) else None
        if lf is not None and not 0 < lf <= 1:
            raise ValueError(f"cache_params.load_factor must be in (0, 1], got {lf!r}")
        self.sharding_spec()  # overlapping shards are refused by torch's own check
        return self

    def sharding_spec(self) -> Optional[EnumerableShardingSpec]:
        if self.shards is None:
            return None
        try:
            return EnumerableShardingSpec([
                ShardMetadata(shard_offsets=list(s.offsets), shard_sizes=list(s.sizes), placement=s.placement)
                for s in self.shards
            ])
        except ValueError as e:
            raise ValueError(f"shards: {e}") from None

    def parameter_sharding(self) -> ParameterSharding:
        kept = {f: getattr(self, f) for f in _PS_FIELDS}
        return ParameterSharding(**kept, sharding_spec=self.sharding_spec())


_PS_HINTS = typing.get_type_hints(ParameterSharding)
_PS_FIELDS = tuple(f.name for f in dataclasses.fields(ParameterSharding) if f.name != _SPEC_FIELD)
TableName = Annotated[str, Field(min_length=1)]
ModulePlan = Annotated[dict[TableName, ShardingModel], Field(min_length=1)]


# -- the estimates section ----------------------------------------------------------------------
class TableCostModel(Strict):
    table: TableName
    cost_ms: Ms


class RankModel(Strict):
    rank: Count
    fwd_compute: Ms
    fwd_comms: Ms
    bwd_compute: Ms
    bwd_comms: Ms
    prefetch_compute: Ms
    input_dist_comms: Ms
    hbm_bytes: Bytes
    ddr_bytes: Bytes
    input_bytes: Bytes
    output_bytes: Bytes
    num_tables: Count
    shards_by_type: dict[Literal[SHARDING_TYPES], Count]
    hbm_by_type: dict[Literal[SHARDING_TYPES], Bytes]
    ddr_by_type: dict[Literal[SHARDING_TYPES], Bytes]


class _SummaryFigures(Strict):
    """The summary figures both plan-file versions store; each version adds its own (maxima, headroom)."""

    bottleneck_rank: Count
    bottleneck_tables: list[TableCostModel]
    estimated_iteration_ms: Ms
    cost_imbalance: float = Field(ge=0)
    hbm_imbalance: float = Field(ge=0)
    ddr_imbalance: float = Field(ge=0)
    hbm_budget_bytes: Bytes
    ddr_budget_bytes: Bytes
    all_to_all_bytes_per_sample: float = Field(ge=0)
    global_batch_size: int = Field(ge=1)


class SummaryModel(_SummaryFigures):
    max_hbm_bytes: Bytes
    max_ddr_bytes: Bytes


class EstimatesModel(Strict):
    per_rank: list[RankModel] = Field(min_length=1)
    summary: SummaryModel


class RankV1Model(RankModel):
    cost_ms: Ms  # version 1 stored Perf.total beside its parts


class SummaryV1Model(_SummaryFigures):
    """Version 1 stored headroom (budget - max, negative when over) instead of the maxima."""

    bottleneck_ms: Ms
    estimated_samples_per_s: Optional[float] = Field(None, ge=0)
    hbm_headroom_bytes: int
    ddr_headroom_bytes: int


class EstimatesV1Model(EstimatesModel):
    per_rank: list[RankV1Model] = Field(min_length=1)
    summary: SummaryV1Model


class PlannerModel(Strict):
    name: str = ""
    notes: list[str] = []
    # Topology fields nobody gave (the inputs format's defaults were assumed); summaries say so first.
    assumed: list[Literal[tuple(InputsModel.model_fields["topology"].annotation.model_fields)]] = []


# -- the whole file -----------------------------------------------------------------------------
class PlanFileModel(Strict):
    """A version-2 plan file."""

    format: Literal[FORMAT]
    version: Literal[2]
    inputs: InputsModel
    plan: Annotated[dict[TableName, ModulePlan], Field(min_length=1)]
    estimates: EstimatesModel
    planner: PlannerModel = PlannerModel()

    @model_validator(mode="after")
    def _ranks_exist(self) -> "PlanFileModel":
        n = self.inputs.topology.world_size
        per_rank = self.estimates.per_rank
        if [r.rank for r in per_rank] != list(range(n)):
            raise ValueError(f"estimates.per_rank: must hold ranks 0..{n - 1} in order (the world size is {n}), "
                             f"got ranks {[r.rank for r in per_rank][:16]}")
        if self.estimates.summary.bottleneck_rank >= n:
            raise ValueError(f"estimates.summary.bottleneck_rank: must be a rank below the world size {n}, "
                             f"got {self.estimates.summary.bottleneck_rank}")
        return self


class PlanFileV1Model(PlanFileModel):
    """A version-1 plan file (read, never written)."""

    version: Literal[1]
    estimates: EstimatesV1Model


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


def _close(stored: float, recomputed: float) -> bool:
    return math.isclose(stored, recomputed, rel_tol=_REL_TOL, abs_tol=1e-12)


def estimate_problems(est: PlanEstimates, inputs: PlannerInputs) -> list[str]:
    """Summary figures that disagree with the per-rank rows they summarise (an edited file)."""
    s, rows = est.summary, est.per_rank
    cost = [Perf(**{f.name: getattr(r.perf, f.name) for f in dataclasses.fields(Perf)}).total for r in rows]
    expected = {
        "estimated_iteration_ms": (s.estimated_iteration_ms, max(cost)),
        "max_hbm_bytes": (s.max_hbm_bytes, max(r.hbm_bytes for r in rows)),
        "max_ddr_bytes": (s.max_ddr_bytes, max(r.ddr_bytes for r in rows)),
        "global_batch_size": (s.global_batch_size, inputs.batch_size_per_rank * inputs.topology.world_size),
    }
    return [f"estimates.summary.{k}: {stored!r} does not agree with the per-rank estimates and inputs ({want!r})"
            for k, (stored, want) in expected.items() if not _close(stored, want)]


def _check_header(d: Any, origin: str) -> int:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        found = d.get("format") if isinstance(d, dict) else None
        raise PlanError(f"{origin}: not a dlrm_dist plan file (format {found!r}, expected {FORMAT!r})")
    version = d.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise PlanError(f"{origin}: plan file version {version!r} is not supported (this reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))})")
    return version


def from_data(d: Any, origin: str = "plan") -> PlanFile:
    """A PlanFile from parsed data; every problem in one PlanError naming ``origin``."""
    version = _check_header(d, origin)
    m, found = validate(PlanFileV1Model if version == 1 else PlanFileModel, d)
    if found:
        raise PlanError(joined(origin, name_tables(found, d.get("inputs"), prefix="inputs.")))
    inputs = PlannerInputs.of(m.inputs)
    plan = ShardingPlan({
        path: EmbeddingModuleShardingPlan({table: ps.parameter_sharding() for table, ps in tables.items()})
        for path, tables in m.plan.items()
    })
    estimates = PlanEstimates.from_dict(m.estimates.model_dump(), version)
    problems = estimate_problems(estimates, inputs)
    if problems:
        raise PlanError(joined(origin, problems) + " (edited by hand? remake it with dlrm-plan make)")
    return PlanFile(inputs, plan, estimates, m.planner.model_dump(exclude=None if m.planner.assumed else {"assumed"}))


def dumps(pf: PlanFile) -> str:
    """Deterministic text: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(to_data(pf), indent=1, sort_keys=True) + "\n"


def write(pf: PlanFile, path: str | Path) -> None:
    """Writes atomically (a reader never sees half a plan); a path that cannot be written is a PlanError."""
    target, text = Path(path), dumps(pf)
    if target.is_dir():
        raise PlanError(f"plan file {str(path)!r} is a directory; give a file name such as {str(target / 'plan.json')!r}")
    try:
        with disk_full(target, len(text)):
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, text)
    except OSError as e:
        raise PlanError(f"cannot write plan file {str(path)!r}: {e.strerror or e}") from None


def read(path: str | Path) -> PlanFile:
    return from_data(read_data(path, "plan file", PlanError), origin=str(path))
