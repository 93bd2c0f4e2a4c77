"""The plan-file format's declared models (pydantic), and reading a file into them; no torch.

planfile.py turns a validated model into TorchRec's ShardingPlan and writes files; this module
only declares and checks them, so a plan is read and checked (``dlrm-plan inspect``,
``validate``: planview.py) without importing torch or TorchRec. The format:

    {"format": "dlrm_dist.sharding_plan", "version": 2,
     "inputs":    {tables, topology, budgets, batch_size_per_rank, optimizer[, calibration, dense]},
     "plan":      {module path: {table: {sharding_type, compute_kernel, ranks,
                                        shards: [{offsets, sizes, placement}] | null,
                                        cache_params, enforce_hbm, ...}}},
     "estimates": {"per_rank": [...], "summary": {...}},
     "planner":   {"name": ..., "notes": [...], "assumed": [...]}}

``PlanFileModel`` (version 2) and ``PlanFileV1Model`` (version 1, which stored headroom and
the iteration time twice) declare it; every problem comes back in one PlanError with its path.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from dlrm_dist.names import COMPUTE_KERNELS, SHARDING_TYPES
from dlrm_dist.planning.codec import check_field, decode
from dlrm_dist.planning.errors import PlanError
from dlrm_dist.planning.inputs import InputsModel, name_tables
from dlrm_dist.planning.types import PlanEstimates, PlannerInputs
from dlrm_dist.validation import Strict, joined, validate

FORMAT = "dlrm_dist.sharding_plan"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: headroom and the iteration time stored twice (read by types.py)
CODEC_FIELDS = ("cache_params", "bounds_check_mode", "output_dtype", "key_value_params")
_PLACEMENT = re.compile(r"rank:(\d+)/(cpu|cuda:\d+)")

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
    # TorchRec/fbgemm dataclasses and enums, stored by codec.py and decoded (and checked) here;
    # TorchRec is imported only when one is set (a CPU plan has none, and reads without it).
    cache_params: Any = None
    bounds_check_mode: Any = None
    output_dtype: Any = None
    key_value_params: Any = None
    enforce_hbm: Optional[bool] = None
    stochastic_rounding: Optional[bool] = None

    @field_validator(*CODEC_FIELDS)
    @classmethod
    def _decoded(cls, v: Any, info: Any) -> Any:
        if v is None:
            return None
        from torchrec.distributed.types import ParameterSharding

        value = decode(v)
        check_field(ParameterSharding, info.field_name, parameter_sharding_hints().get(info.field_name), value)
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
        lf = getattr(self.cache_params, "load_factor", None)
        if lf is not None and not 0 < lf <= 1:
            raise ValueError(f"cache_params.load_factor must be in (0, 1], got {lf!r}")
        overlap = overlapping(self.shards or [])
        if overlap:
            i, j = overlap
            raise ValueError(f"shards: shards {i} and {j} overlap ({self.shards[i].offsets}+{self.shards[i].sizes} "
                             f"and {self.shards[j].offsets}+{self.shards[j].sizes})")
        return self


def overlapping(shards: list[ShardModel]) -> Optional[tuple[int, int]]:
    """The first pair of shards sharing a weight (torch's EnumerableShardingSpec refuses them too)."""
    order = sorted(range(len(shards)), key=lambda i: shards[i].offsets)
    for a_pos, i in enumerate(order):  # sorted by row offset: stop once a shard starts below i's end
        a = shards[i]
        for j in order[a_pos + 1:]:
            b = shards[j]
            if b.offsets[0] >= a.offsets[0] + a.sizes[0]:
                break
            if all(a.offsets[d] < b.offsets[d] + b.sizes[d] and b.offsets[d] < a.offsets[d] + a.sizes[d]
                   for d in range(2)):
                return min(i, j), max(i, j)
    return None


@functools.lru_cache(maxsize=1)
def parameter_sharding_hints() -> dict[str, Any]:
    from torchrec.distributed.types import ParameterSharding

    return typing.get_type_hints(ParameterSharding)


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


def check_header(d: Any, origin: str) -> int:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        found = d.get("format") if isinstance(d, dict) else None
        raise PlanError(f"{origin}: not a dlrm_dist plan file (format {found!r}, expected {FORMAT!r})")
    version = d.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise PlanError(f"{origin}: plan file version {version!r} is not supported (this reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))})")
    return version


def validated(d: Any, origin: str) -> tuple[int, PlanFileModel]:
    """(version, model) of parsed plan-file data; every problem in one PlanError naming ``origin``."""
    version = check_header(d, origin)
    m, found = validate(PlanFileV1Model if version == 1 else PlanFileModel, d)
    if found:
        raise PlanError(joined(origin, name_tables(found, d.get("inputs"), prefix="inputs.")))
    return version, m


_REL_TOL = 1e-9  # stored summary figures against the ones recomputed from the per-rank rows


def _close(stored: float, recomputed: float) -> bool:
    return math.isclose(stored, recomputed, rel_tol=_REL_TOL, abs_tol=1e-12)


def estimate_problems(est: PlanEstimates, inputs: PlannerInputs) -> list[str]:
    """Summary figures that disagree with the per-rank rows they summarise (an edited file)."""
    s, rows = est.summary, est.per_rank
    cost = [r.perf.total for r in rows]
    expected = {
        "estimated_iteration_ms": (s.estimated_iteration_ms, max(cost)),
        "max_hbm_bytes": (s.max_hbm_bytes, max(r.hbm_bytes for r in rows)),
        "max_ddr_bytes": (s.max_ddr_bytes, max(r.ddr_bytes for r in rows)),
        "global_batch_size": (s.global_batch_size, inputs.batch_size_per_rank * inputs.topology.world_size),
    }
    return [f"estimates.summary.{k}: {stored!r} does not agree with the per-rank estimates and inputs ({want!r})"
            for k, (stored, want) in expected.items() if not _close(stored, want)]


@dataclass(frozen=True)
class CheckedParts:
    """A plan file's validated parts: everything but TorchRec's ShardingPlan (planfile.py builds it)."""

    model: PlanFileModel
    inputs: PlannerInputs
    estimates: PlanEstimates
    planner: dict[str, Any]


def checked_parts(d: Any, origin: str) -> CheckedParts:
    """Validates parsed plan-file data whole, estimates against their own rows included."""
    version, m = validated(d, origin)
    inputs = PlannerInputs.of(m.inputs)
    estimates = PlanEstimates.from_dict(m.estimates.model_dump(), version)
    problems = estimate_problems(estimates, inputs)
    if problems:
        raise PlanError(joined(origin, problems) + " (edited by hand? remake it with dlrm-plan make)")
    planner = m.planner.model_dump(exclude=None if m.planner.assumed else {"assumed"})
    return CheckedParts(m, inputs, estimates, planner)
