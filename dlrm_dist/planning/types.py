"""The planner's contracts: every value that crosses a stage, in one place (as TorchRec's
``planner/types.py`` holds its Topology, ShardingOption, Perf and Storage).

- inputs: :class:`TableSpec`, :class:`TopologySpec`, :class:`Budgets`, :class:`PlannerInputs`
  (what a plan is made from; each checked against its declared file format in inputs.py,
  however it was built) and :class:`Capacity` (the per-rank memory the budgets leave);
- the job a training run plans for (:class:`JobSpec`) and the tables its model has
  (:class:`ExpectedTable`);
- options and placements: :class:`Option` (one way to shard one table, with TorchRec's
  per-shard estimates) and :class:`TablePlacement` (an option with a rank per shard);
- estimates: :class:`RankEstimate`, :class:`TableCost`, :class:`PlanSummary`,
  :class:`PlanEstimates`. The per-rank time is TorchRec's own
  :class:`~torchrec.distributed.planner.types.Perf` (its fields are the breakdown,
  ``Perf.total`` the cost), beside memory and IO bytes, as TorchRec's planner keeps ``Perf``
  and ``Storage`` per shard. Everything that follows from other figures (cost, headroom,
  imbalance, samples/s) is a property, so a plan file stores each number once. Plan-file form
  (``to_dict``/``from_dict``), version 2; version-1 files are read by
  ``from_dict(..., version=1)``, which drops the numbers version 1 stored twice.

The behaviour lives with the stages (file formats and loading in inputs.py, enumeration in
options.py, placement arithmetic in placement.py, ...). From the rest of planning this module
imports only inputs.py's declared formats (the rules a PlannerInputs is checked against), so
every stage can import it and none of them imports another stage for a type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from typing import TYPE_CHECKING

import numpy as np

from dlrm_dist.names import TABLE_PREFIX
# TorchRec's Perf without TorchRec: plan files are read (inspect, validate) without importing it.
from dlrm_dist.planning.perf import Perf
from dlrm_dist.planning.calibration import CalibrationModel
from dlrm_dist.planning.inputs import (
    DenseModel, InputsModel, TableModel, read_inputs_file, read_tables_file, validated,
)

if TYPE_CHECKING:
    import torch

GB = 1024**3

# The fields of TorchRec's Perf, and those its ``total`` counts: input_dist_comms is reported
# but not counted (it overlaps with the previous batch).
PERF_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Perf))
COST_PARTS: tuple[str, ...] = tuple(f for f in PERF_FIELDS if f != "input_dist_comms")
# A shard's cost is TorchRec's Perf.total: the perf columns it counts, weighted 1.
COST_WEIGHTS = np.array([1.0 if f in COST_PARTS else 0.0 for f in PERF_FIELDS])
# Where each sharding type's shards may go, as TorchRec's enumerators.get_partition_by_type says
# (a test keeps them equal): any rank (device), the ranks of one host (host), or fixed (uniform).
PARTITION_BY: dict[str, str] = {"data_parallel": "uniform", "table_wise": "device", "column_wise": "device",
                                "row_wise": "uniform", "table_row_wise": "host", "table_column_wise": "host"}


# -- inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    """One embedding table and its optional per-table constraints."""

    name: str
    rows: int
    dim: int
    pooling_factor: float = 1.0
    feature_names: tuple[str, ...] = ()
    sharding_types: Optional[tuple[str, ...]] = None  # allowed types (None = all)
    compute_kernels: Optional[tuple[str, ...]] = None  # allowed kernels (None = all)
    cache_load_factor: Optional[float] = None  # overrides the global cache budget
    managed: bool = False  # a managed-collision table: row_wise + fused only, its remapper's memory counted

    @property
    def features(self) -> tuple[str, ...]:
        return self.feature_names or (self.name.removeprefix(TABLE_PREFIX),)

    def to_dict(self) -> dict[str, Any]:
        """The table as a tables file writes it (unset constraints left out)."""
        d = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        if not self.managed:  # plain tables' files stay as they were before the key existed
            del d["managed"]
        for k in ("feature_names", "sharding_types", "compute_kernels"):
            if k in d:
                d[k] = list(d[k])
        return d

    @staticmethod
    def of(m: TableModel) -> "TableSpec":
        return TableSpec(m.name, m.rows, m.dim, m.pooling_factor, tuple(m.feature_names),
                         tuple(m.sharding_types) if m.sharding_types else None,
                         tuple(m.compute_kernels) if m.compute_kernels else None, m.cache_load_factor,
                         m.managed)

    @staticmethod
    def load_all(path: str) -> tuple["TableSpec", ...]:
        """The tables of a tables file (``dlrm-plan make --tables``, ``dlrm-data stats --tables-out``)."""
        return tuple(TableSpec.of(t) for t in read_tables_file(path).tables)


@dataclass(frozen=True)
class TopologySpec:
    """The devices a plan is for; bandwidths in GB/s (None = TorchRec's defaults)."""

    world_size: int
    ranks_per_host: int
    device: str = "cuda"
    hbm_gb: float = 80.0  # per device (ignored on cpu)
    ddr_gb: float = 512.0  # per host
    hbm_bw_gbps: Optional[float] = None
    ddr_bw_gbps: Optional[float] = None
    intra_host_bw_gbps: Optional[float] = None
    inter_host_bw_gbps: Optional[float] = None


@dataclass(frozen=True)
class Budgets:
    """Shares of memory the embeddings may use, and the UVM cache budget."""

    hbm_share: float = 0.9  # the rest is for dense parameters, activations, buffers
    ddr_share: float = 0.9
    cache_load_factor: float = 0.2  # share of a UVM-cached table's rows kept in HBM


@dataclass(frozen=True)
class PlannerInputs:
    """Everything a plan is made from."""

    tables: tuple[TableSpec, ...]
    topology: TopologySpec
    budgets: Budgets = field(default_factory=Budgets)
    batch_size_per_rank: int = 512
    optimizer: str = "rowwise_adagrad"
    # Measured costs (calibration.py's file) in place of TorchRec's constants, and the job's dense
    # part for a calibrated step prediction; both left out of the file when unset.
    calibration: Optional[CalibrationModel] = None
    dense: Optional[DenseModel] = None

    def __post_init__(self) -> None:
        # Inputs built in code (a job's tables, CLI flags) obey the file format's rules too.
        validated(InputsModel, self.to_dict(), "planner inputs")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(tables=[t.to_dict() for t in self.tables], topology=asdict(self.topology), budgets=asdict(self.budgets))
        for name in ("calibration", "dense"):
            value = d.pop(name)
            if value is not None:
                d[name] = value.model_dump(mode="json")
        return d

    @staticmethod
    def of(m: InputsModel) -> "PlannerInputs":
        return PlannerInputs(
            tables=tuple(TableSpec.of(t) for t in m.tables),
            topology=TopologySpec(**m.topology.model_dump()),
            budgets=Budgets(**m.budgets.model_dump()),
            batch_size_per_rank=m.batch_size_per_rank,
            optimizer=m.optimizer,
            calibration=m.calibration,
            dense=m.dense,
        )

    @staticmethod
    def from_dict(d: Any, origin: str = "inputs") -> "PlannerInputs":
        """Inputs from parsed file data; every problem in one PlanInputError naming ``origin``."""
        return PlannerInputs.of(validated(InputsModel, d, origin))

    @staticmethod
    def load(path: str) -> "PlannerInputs":
        """A full inputs file: tables, topology, budgets, batch_size_per_rank, optimizer."""
        return PlannerInputs.of(read_inputs_file(path))


@dataclass(frozen=True)
class Capacity:
    """Per-rank memory the embeddings may use (budgets applied)."""

    hbm: float
    ddr: float

    @staticmethod
    def of(inputs: PlannerInputs) -> "Capacity":
        t, b = inputs.topology, inputs.budgets
        hbm = t.hbm_gb * GB * b.hbm_share if t.device == "cuda" else 0.0
        return Capacity(hbm=hbm, ddr=t.ddr_gb * GB / t.ranks_per_host * b.ddr_share)


# -- a training job and its model's tables -----------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """What the plan must fit: the job's ranks, device, batch and embedding optimizer."""

    world_size: int
    local_size: int
    device: torch.device
    batch_size_per_rank: int
    optimizer: str = "adagrad"
    pooling_factors: tuple[float, ...] = ()  # per table (default 1.0)


@dataclass(frozen=True)
class ExpectedTable:
    """A table as the model has it: what a plan's shards must tile."""

    name: str
    rows: int
    dim: int


# -- options and placements --------------------------------------------------------------------
@dataclass
class Option:
    """One way to shard one table: its shards with TorchRec's per-shard estimates."""

    table: int  # index into PlannerInputs.tables
    sharding_type: str
    kernel: str
    cache_load_factor: Optional[float]
    sizes: np.ndarray  # (S, 2) rows x cols of each shard
    offsets: np.ndarray  # (S, 2)
    perf: np.ndarray  # (S, 6) ms, columns as PERF_FIELDS
    hbm: np.ndarray  # (S,) bytes
    ddr: np.ndarray  # (S,) bytes

    def __post_init__(self) -> None:
        # Derived once: the partitioner reads these many thousands of times.
        self.placement: str = PARTITION_BY[self.sharding_type]  # device | host | uniform
        self.shard_cost: np.ndarray = self.perf @ COST_WEIGHTS  # (S,) ms per shard, as Perf.total
        self.total_cost: float = float(self.shard_cost.sum())
        self.max_cost: float = float(self.shard_cost.max())


@dataclass
class TablePlacement:
    """An option with the rank of each of its shards (the partitioner's refinement moves shards)."""

    option: Option
    ranks: np.ndarray  # (S,) rank of each shard


# -- estimates ---------------------------------------------------------------------------------
def _imbalance(values: Sequence[float]) -> float:
    """max/mean - 1 (0 when everything is 0); never below 0, which rounding of equal loads could give."""
    mean = sum(values) / len(values) if values else 0.0
    return max(max(values) / mean - 1.0, 0.0) if mean > 0 else 0.0


def _fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``d`` that are fields of dataclass ``cls`` (a missing one raises KeyError)."""
    return {f.name: d[f.name] for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class RankEstimate:
    """One rank: TorchRec's perf breakdown (ms per iteration), memory, IO bytes, shards."""

    rank: int
    perf: Perf
    hbm_bytes: int
    ddr_bytes: int
    input_bytes: int  # ids received per iteration (TorchRec's IO-size model)
    output_bytes: int  # pooled embeddings sent per iteration
    num_tables: int
    shards_by_type: dict[str, int]
    hbm_by_type: dict[str, int]
    ddr_by_type: dict[str, int]

    @property
    def cost_ms(self) -> float:
        """TorchRec's Perf.total: what the planner balances."""
        return self.perf.total

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "perf"}
        return {**d, **dataclasses.asdict(self.perf)}

    def describe(self) -> dict[str, Any]:
        """``to_dict`` with the derived cost: what ``--json`` prints."""
        return {**self.to_dict(), "cost_ms": self.cost_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankEstimate":
        perf = Perf(**{f: float(d[f]) for f in PERF_FIELDS})
        kept = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name != "perf"}
        return cls(perf=perf, **kept)


@dataclass(frozen=True)
class TableCost:
    """A table's cost on the bottleneck rank (one of the tables driving it)."""

    table: str
    cost_ms: float


@dataclass(frozen=True)
class PlanSummary:
    """The plan as a whole: the bottleneck, balance, memory against budget, traffic."""

    bottleneck_rank: int
    bottleneck_tables: tuple[TableCost, ...]  # the top tables of the bottleneck rank by cost
    estimated_iteration_ms: float  # the bottleneck rank's cost: the embedding part's iteration time
    cost_imbalance: float  # max/mean - 1 over ranks
    hbm_imbalance: float
    ddr_imbalance: float
    hbm_budget_bytes: int  # per rank
    ddr_budget_bytes: int
    max_hbm_bytes: int  # on the fullest rank
    max_ddr_bytes: int
    all_to_all_bytes_per_sample: float
    global_batch_size: int

    @property
    def hbm_headroom_bytes(self) -> int:
        return self.hbm_budget_bytes - self.max_hbm_bytes

    @property
    def ddr_headroom_bytes(self) -> int:
        return self.ddr_budget_bytes - self.max_ddr_bytes

    @property
    def fits(self) -> bool:
        return self.hbm_headroom_bytes >= 0 and self.ddr_headroom_bytes >= 0

    @property
    def estimated_samples_per_s(self) -> Optional[float]:
        ms = self.estimated_iteration_ms
        return self.global_batch_size / (ms / 1000.0) if ms > 0 else None

    @classmethod
    def of(cls, per_rank: Sequence[RankEstimate], drivers: Sequence[TableCost], hbm_budget: int, ddr_budget: int,
           a2a_bytes_per_sample: float, global_batch_size: int) -> "PlanSummary":
        """The summary of ``per_rank`` (bottleneck, imbalance and maxima computed here)."""
        cost = [r.cost_ms for r in per_rank]
        hbm, ddr = [r.hbm_bytes for r in per_rank], [r.ddr_bytes for r in per_rank]
        top = max(range(len(cost)), key=cost.__getitem__)
        return cls(bottleneck_rank=top, bottleneck_tables=tuple(drivers), estimated_iteration_ms=cost[top],
                   cost_imbalance=_imbalance(cost), hbm_imbalance=_imbalance(hbm), ddr_imbalance=_imbalance(ddr),
                   hbm_budget_bytes=int(hbm_budget), ddr_budget_bytes=int(ddr_budget), max_hbm_bytes=max(hbm),
                   max_ddr_bytes=max(ddr), all_to_all_bytes_per_sample=a2a_bytes_per_sample,
                   global_batch_size=global_batch_size)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["bottleneck_tables"] = [dataclasses.asdict(t) for t in self.bottleneck_tables]
        return d

    def describe(self) -> dict[str, Any]:
        """``to_dict`` with the derived figures: what ``--json`` prints."""
        return {**self.to_dict(), "hbm_headroom_bytes": self.hbm_headroom_bytes,
                "ddr_headroom_bytes": self.ddr_headroom_bytes, "fits": self.fits,
                "estimated_samples_per_s": self.estimated_samples_per_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlanSummary":
        d = dict(d)
        d["bottleneck_tables"] = tuple(TableCost(**t) for t in d["bottleneck_tables"])
        return cls(**_fields(cls, d))


@dataclass(frozen=True)
class PlanEstimates:
    """Per-rank estimates and their summary, as a plan file holds them."""

    per_rank: tuple[RankEstimate, ...]
    summary: PlanSummary

    def to_dict(self) -> dict[str, Any]:
        return {"per_rank": [r.to_dict() for r in self.per_rank], "summary": self.summary.to_dict()}

    def describe(self) -> dict[str, Any]:
        """Every figure, derived ones included (``dlrm-plan inspect --json``)."""
        return {"per_rank": [r.describe() for r in self.per_rank], "summary": self.summary.describe()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], version: int) -> "PlanEstimates":
        """Reads a plan file's ``estimates`` section (``version`` of the plan-file format)."""
        summary = dict(d["summary"])
        if version == 1:  # version 1 stored headroom (budget - max) and the iteration time twice
            summary["max_hbm_bytes"] = summary["hbm_budget_bytes"] - summary["hbm_headroom_bytes"]
            summary["max_ddr_bytes"] = summary["ddr_budget_bytes"] - summary["ddr_headroom_bytes"]
        return cls(tuple(RankEstimate.from_dict(r) for r in d["per_rank"]), PlanSummary.from_dict(summary))
