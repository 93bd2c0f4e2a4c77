"""What a plan is made from, as files declare it: tables, topology, budgets, batch, optimizer.

Two file formats carry them, each a declared pydantic model (dlrm_dist/validation.py): a full inputs
file (``InputsModel``: ``dlrm-plan make --inputs``, and the ``inputs`` section of every plan
file) and a tables file (``TablesFileModel``: ``dlrm-plan make --tables``, written by
``dlrm-data stats --tables-out``). This module owns those models, their bounds and reading a
file into a validated model. The planner's own values (TableSpec, PlannerInputs, ...) are in
types.py, built from a validated model; a PlannerInputs built in code is checked against the
same model, so one set of rules holds wherever inputs come from. Every problem of a file is
reported at once in one PlanInputError, each with its path (``tables[3].pooling_factor (t_cat_3): ...``).

An inputs file may also hold a ``calibration`` (calibration.py's file, measured on this machine
by ``dlrm-plan calibrate``: its costs replace TorchRec's constants) and a ``dense`` part (the
job's MLP FLOPs and parameters, which a calibrated plan adds to each rank's predicted step).

It imports nothing from the rest of planning but calibration.py's declared format (itself
importing none of planning): together they are the bottom of the planner's layers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from dlrm_dist.config.files import read_data
from dlrm_dist.errors import DlrmError
from dlrm_dist.config.validation import TableName
from dlrm_dist.names import COMPUTE_KERNELS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES, TABLE_PREFIX
from dlrm_dist.planning.calibration import CalibrationModel
from dlrm_dist.validation import Strict, joined, validate

DEVICES = ("cuda", "cpu")
# Bounds beyond any real machine, so that memory and bandwidth in bytes stay finite integers
# (an inf or 1e308 GB budget used to overflow when converted to bytes).
MAX_MEMORY_GB = float(2**20)  # 1 PiB per device or host
MAX_BANDWIDTH_GBPS = 1e6
MAX_WORLD_SIZE = 2**16
MAX_BATCH_SIZE = 2**31 - 1  # ids are indexed with int32 offsets per batch
MAX_POOLING_FACTOR = 1e6  # ids per sample per table
# The one way a managed table is planned: TorchRec shards a remapper and its rows row-wise only,
# and distributed/parallel.py's split_plan runs them with the fused kernel (the sharded managed
# collection resets evicted rows through fbgemm's fused TBE, which the dense kernel lacks).
MANAGED_SHARDING_TYPE = "row_wise"
MANAGED_KERNEL = "fused"

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
    # A managed-collision table (TorchRec's remapper before its rows): sharded row_wise only.
    # Left out of files for a plain table, so files without it read (and are written) as before.
    managed: bool = False

    @model_validator(mode="after")
    def _managed_row_wise(self) -> "TableModel":
        if not self.managed:
            return self
        for key, allowed in (("sharding_types", MANAGED_SHARDING_TYPE), ("compute_kernels", MANAGED_KERNEL)):
            given = getattr(self, key)
            if given is not None and given != [allowed]:
                raise ValueError(f"{key}={given}: a managed table is sharded {MANAGED_SHARDING_TYPE} with the "
                                 f"{MANAGED_KERNEL} kernel only (TorchRec's managed-collision sharder); "
                                 f"use [{allowed!r}] or leave {key} out")
        return self


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


class DenseModel(Strict):
    """The job's dense part (MLPs, interaction), as a calibrated step prediction needs it."""

    flops_per_sample: float = Field(ge=0, le=1e15)  # forward; backward is counted as twice that
    parameters: int = Field(ge=0, le=2**50)  # all-reduced every step


class InputsModel(Strict):
    """A full inputs file (and a plan file's ``inputs`` section)."""

    about: Optional[str] = None  # a note for people; not part of the inputs
    tables: list[TableModel] = Field(min_length=1)
    topology: TopologyModel
    budgets: BudgetsModel = BudgetsModel()
    batch_size_per_rank: int = Field(512, ge=1, le=MAX_BATCH_SIZE)
    optimizer: Literal[EMBEDDING_OPTIMIZERS] = "rowwise_adagrad"
    calibration: Optional[CalibrationModel] = None
    dense: Optional[DenseModel] = None

    _unique = field_validator("tables")(_unique_tables)

    @model_validator(mode="after")
    def _calibrated_device(self) -> "InputsModel":
        if self.calibration is not None and self.calibration.device != self.topology.device:
            raise ValueError(f"calibration: measured on {self.calibration.device}, but topology.device is "
                             f"{self.topology.device!r}: calibrate on the machine the plan is for")
        return self


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


def validated(model: type[Strict], data: Any, origin: str) -> Any:
    """``data`` as a valid ``model``, or one PlanInputError naming ``origin`` and every problem."""
    value, found = validate(model, data)
    if found:
        raise PlanInputError(joined(origin, name_tables(found, data)))
    return value


def _read(path: str) -> dict[str, Any]:
    return read_data(path, "planner inputs file", PlanInputError)


def read_tables_file(path: str) -> TablesFileModel:
    """A tables file: ``{"tables": [{"name", "rows", "dim", "pooling_factor", ...}, ...]}``, validated."""
    return validated(TablesFileModel, _read(path), path)


def read_inputs_file(path: str) -> InputsModel:
    """A full inputs file (tables, topology, budgets, batch_size_per_rank, optimizer), validated."""
    return validated(InputsModel, _read(path), path)
