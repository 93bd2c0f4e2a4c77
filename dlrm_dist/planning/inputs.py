"""What a plan is made from: tables, topology, budgets and the job's batch/optimizer.

Two file formats carry them, each a declared pydantic model (dlrm_dist/validation.py): a full inputs
file (``InputsModel``: ``dlrm-plan make --inputs``, and the ``inputs`` section of every plan
file) and a tables file (``TablesFileModel``: ``dlrm-plan make --tables``, written by
``dlrm-data stats --tables-out``). The code uses the frozen dataclasses below, built from a
validated model; a PlannerInputs built in code is checked against the same model, so one
set of rules holds wherever inputs come from. Every problem of a file is reported at once
in one PlanInputError, each with its path (``tables[3].pooling_factor (t_cat_3): ...``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from dlrm_dist.config.files import read_data
from dlrm_dist.errors import DlrmError
from dlrm_dist.config.validation import TableName
from dlrm_dist.names import COMPUTE_KERNELS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES, TABLE_PREFIX
from dlrm_dist.validation import Strict, joined, validate

DEVICES = ("cuda", "cpu")
GB = 1024**3
# Bounds beyond any real machine, so that memory and bandwidth in bytes stay finite integers
# (an inf or 1e308 GB budget used to overflow when converted to bytes).
MAX_MEMORY_GB = float(2**20)  # 1 PiB per device or host
MAX_BANDWIDTH_GBPS = 1e6
MAX_WORLD_SIZE = 2**16
MAX_BATCH_SIZE = 2**31 - 1  # ids are indexed with int32 offsets per batch
MAX_POOLING_FACTOR = 1e6  # ids per sample per table

ShardingType = Literal[SHARDING_TYPES]
ComputeKernel = Literal[COMPUTE_KERNELS]
Name = Annotated[str, Field(min_length=1)]


class PlanInputError(DlrmError):
    """A planner input is invalid; the message names where and what would be valid."""


# -- the declared file formats ----------------------------------------------------------------
class TableModel(Strict):
    """One table of an inputs or tables file."""

    name: TableName
    rows: int = Field(ge=1)
    dim: int = Field(ge=1)
    pooling_factor: float = Field(1.0, gt=0, le=MAX_POOLING_FACTOR)
    feature_names: list[Name] = []
    # Omitted (or null) allows every sharding type / kernel; an empty list would allow none.
    sharding_types: Optional[list[ShardingType]] = Field(None, min_length=1)
    compute_kernels: Optional[list[ComputeKernel]] = Field(None, min_length=1)
    cache_load_factor: Optional[float] = Field(None, gt=0, le=1)


class TopologyModel(Strict):
    world_size: int = Field(ge=1, le=MAX_WORLD_SIZE)
    ranks_per_host: int = Field(ge=1, le=MAX_WORLD_SIZE)
    device: Literal[DEVICES] = "cuda"
    hbm_gb: float = Field(80.0, ge=0, le=MAX_MEMORY_GB)
    ddr_gb: float = Field(512.0, ge=0, le=MAX_MEMORY_GB)  # 0: nothing fits (the no-fit report says so)
    hbm_bw_gbps: Optional[float] = Field(None, gt=0, le=MAX_BANDWIDTH_GBPS)
    ddr_bw_gbps: Optional[float] = Field(None, gt=0, le=MAX_BANDWIDTH_GBPS)
    intra_host_bw_gbps: Optional[float] = Field(None, gt=0, le=MAX_BANDWIDTH_GBPS)
    inter_host_bw_gbps: Optional[float] = Field(None, gt=0, le=MAX_BANDWIDTH_GBPS)

    @model_validator(mode="after")
    def _whole_hosts(self) -> "TopologyModel":
        if self.world_size % self.ranks_per_host:
            raise ValueError(f"world_size={self.world_size} must be a positive multiple of "
                             f"ranks_per_host={self.ranks_per_host} (whole hosts)")
        return self


class BudgetsModel(Strict):
    hbm_share: float = Field(0.9, gt=0, le=1)
    ddr_share: float = Field(0.9, gt=0, le=1)
    cache_load_factor: float = Field(0.2, gt=0, le=1)


def _unique_tables(tables: list[TableModel]) -> list[TableModel]:
    """Table names and the features they serve are each used once (TorchRec keys on both)."""
    table_at: dict[str, int] = {}
    feature_at: dict[str, str] = {}
    for i, t in enumerate(tables):
        if t.name in table_at:
            raise ValueError(f"table {t.name!r} appears twice (tables[{table_at[t.name]}] and tables[{i}])")
        table_at[t.name] = i
        for f in t.feature_names or [t.name.removeprefix(TABLE_PREFIX)]:
            if f in feature_at:
                raise ValueError(f"feature {f!r} is served by two tables ({feature_at[f]!r} and {t.name!r})")
            feature_at[f] = t.name
    return tables


class TablesFileModel(Strict):
    """A tables file: ``{"tables": [...]}``."""

    about: Optional[str] = None
    tables: list[TableModel] = Field(min_length=1)

    _unique = field_validator("tables")(_unique_tables)


class InputsModel(Strict):
    """A full inputs file (and a plan file's ``inputs`` section)."""

    about: Optional[str] = None  # a note for people; not part of the inputs
    tables: list[TableModel] = Field(min_length=1)
    topology: TopologyModel
    budgets: BudgetsModel = BudgetsModel()
    batch_size_per_rank: int = Field(512, ge=1, le=MAX_BATCH_SIZE)
    optimizer: Literal[EMBEDDING_OPTIMIZERS] = "rowwise_adagrad"

    _unique = field_validator("tables")(_unique_tables)


# -- the dataclasses the planner uses -----------------------------------------------------------
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

    @property
    def features(self) -> tuple[str, ...]:
        return self.feature_names or (self.name.removeprefix(TABLE_PREFIX),)

    @staticmethod
    def of(m: TableModel) -> "TableSpec":
        return TableSpec(m.name, m.rows, m.dim, m.pooling_factor, tuple(m.feature_names),
                         tuple(m.sharding_types) if m.sharding_types else None,
                         tuple(m.compute_kernels) if m.compute_kernels else None, m.cache_load_factor)


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

    @property
    def num_hosts(self) -> int:
        return self.world_size // self.ranks_per_host


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

    def __post_init__(self) -> None:
        # Inputs built in code (a job's tables, CLI flags) obey the file format's rules too.
        _validated(InputsModel, self.to_dict(), "planner inputs")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tables"] = [table_dict(t) for t in self.tables]
        return d

    @staticmethod
    def of(m: InputsModel) -> "PlannerInputs":
        return PlannerInputs(
            tables=tuple(TableSpec.of(t) for t in m.tables),
            topology=TopologySpec(**m.topology.model_dump()),
            budgets=Budgets(**m.budgets.model_dump()),
            batch_size_per_rank=m.batch_size_per_rank,
            optimizer=m.optimizer,
        )

    @staticmethod
    def from_dict(d: Any, origin: str = "inputs") -> "PlannerInputs":
        """Inputs from parsed file data; every problem in one PlanInputError naming ``origin``."""
        return PlannerInputs.of(_validated(InputsModel, d, origin))


def table_dict(t: TableSpec) -> dict[str, Any]:
    d = {k: v for k, v in asdict(t).items() if v not in (None, ())}
    for k in ("feature_names", "sharding_types", "compute_kernels"):
        if k in d:
            d[k] = list(d[k])
    return d


def table_labels(data: Any) -> dict[int, str]:
    """``{index: name}`` of the tables in ``data`` that have a string name (for messages)."""
    tables = data.get("tables") if isinstance(data, dict) else None
    if not isinstance(tables, list):
        return {}
    return {i: t["name"] for i, t in enumerate(tables) if isinstance(t, dict) and isinstance(t.get("name"), str)}


def name_tables(found: list[str], data: Any, prefix: str = "") -> list[str]:
    """Adds the table's name after a ``tables[i]...`` path: ``tables[3].dim (t_cat_3): ...``."""
    labels = table_labels(data)
    out = []
    for line in found:
        head, sep, rest = line.partition(": ")
        start = prefix + "tables["
        if sep and head.startswith(start) and head[len(start):].split("]", 1)[0].isdigit():
            index = int(head[len(start):].split("]", 1)[0])
            if index in labels:
                line = f"{head} ({labels[index]}): {rest}"
        out.append(line)
    return out


def _validated(model: type[Strict], data: Any, origin: str) -> Any:
    value, found = validate(model, data)
    if found:
        raise PlanInputError(joined(origin, name_tables(found, data)))
    return value


def _read(path: str) -> dict[str, Any]:
    return read_data(path, "planner inputs file", PlanInputError)


def load_tables(path: str) -> tuple[TableSpec, ...]:
    """A tables file: ``{"tables": [{"name", "rows", "dim", "pooling_factor", ...}, ...]}``."""
    m = _validated(TablesFileModel, _read(path), path)
    return tuple(TableSpec.of(t) for t in m.tables)


def load_inputs(path: str) -> PlannerInputs:
    """A full inputs file: tables, topology, budgets, batch_size_per_rank, optimizer."""
    return PlannerInputs.from_dict(_read(path), origin=path)


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
