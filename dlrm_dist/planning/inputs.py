"""What a plan is made from: tables, topology, budgets and the job's batch/optimizer.

All of it can be read from JSON or TOML files (``load_inputs``) or built from a training
Config (``inputs_from_config``). Every malformed value is a PlanInputError naming the
file, the table and the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from dlrm_dist.errors import DlrmError
from dlrm_dist.config.files import read_data
from dlrm_dist.names import COMPUTE_KERNELS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES, TABLE_PREFIX

DEVICES = ("cuda", "cpu")
GB = 1024**3


class PlanInputError(DlrmError):
    """A planner input is invalid; the message names where and what would be valid."""


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
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tables"] = [_table_dict(t) for t in self.tables]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any], origin: str = "inputs") -> "PlannerInputs":
        try:
            tables = tuple(_table_from(t, origin, i) for i, t in enumerate(d["tables"]))
            topology = TopologySpec(**_only(d["topology"], TopologySpec, f"{origin}: topology"))
            budgets = Budgets(**_only(d.get("budgets", {}), Budgets, f"{origin}: budgets"))
        except KeyError as e:
            raise PlanInputError(f"{origin}: missing section {e}") from None
        except TypeError as e:
            raise PlanInputError(f"{origin}: {e}") from None
        unknown = sorted(set(d) - {"tables", "topology", "budgets", "batch_size_per_rank", "optimizer", "about"})
        if unknown:
            raise PlanInputError(f"{origin}: unknown field(s) {unknown}")
        rest = {k: d[k] for k in ("batch_size_per_rank", "optimizer") if k in d}
        return PlannerInputs(tables=tables, topology=topology, budgets=budgets, **rest)


def _table_dict(t: TableSpec) -> dict[str, Any]:
    d = {k: v for k, v in asdict(t).items() if v not in (None, ())}
    for k in ("feature_names", "sharding_types", "compute_kernels"):
        if k in d:
            d[k] = list(d[k])
    return d


def _only(d: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise PlanInputError(f"{where}: unknown field(s) {unknown}; valid: {', '.join(sorted(names))}")
    return d


def _table_from(d: dict[str, Any], origin: str, index: int) -> TableSpec:
    where = f"{origin}: table #{index} ({d.get('name', '?')})"
    d = dict(_only(d, TableSpec, where))
    for k in ("feature_names", "sharding_types", "compute_kernels"):
        if k in d and d[k] is not None:
            d[k] = tuple(d[k])
    try:
        return TableSpec(**d)
    except TypeError as e:
        raise PlanInputError(f"{where}: {e}") from None


def _validate(p: PlannerInputs) -> None:
    topo, b = p.topology, p.budgets
    if topo.device not in DEVICES:
        raise PlanInputError(f"topology.device={topo.device!r}; choose one of {', '.join(DEVICES)}")
    if topo.world_size < 1 or topo.ranks_per_host < 1 or topo.world_size % topo.ranks_per_host:
        raise PlanInputError(
            f"topology.world_size={topo.world_size} must be a positive multiple of "
            f"topology.ranks_per_host={topo.ranks_per_host}"
        )
    for name in ("hbm_share", "ddr_share"):
        if not 0 < getattr(b, name) <= 1:
            raise PlanInputError(f"budgets.{name}={getattr(b, name)} must be in (0, 1]")
    if not 0 < b.cache_load_factor <= 1:
        raise PlanInputError(f"budgets.cache_load_factor={b.cache_load_factor} must be in (0, 1]")
    if p.optimizer not in EMBEDDING_OPTIMIZERS:
        raise PlanInputError(f"optimizer={p.optimizer!r}; choose one of {', '.join(EMBEDDING_OPTIMIZERS)}")
    if p.batch_size_per_rank < 1:
        raise PlanInputError(f"batch_size_per_rank={p.batch_size_per_rank} must be >= 1")
    if not p.tables:
        raise PlanInputError("no tables to plan")
    seen: set[str] = set()
    for t in p.tables:
        _validate_table(t)
        if t.name in seen:
            raise PlanInputError(f"table {t.name!r} appears twice")
        seen.add(t.name)


def _validate_table(t: TableSpec) -> None:
    if t.rows < 1 or t.dim < 1:
        raise PlanInputError(f"table {t.name!r}: rows={t.rows} and dim={t.dim} must be >= 1")
    if t.pooling_factor <= 0:
        raise PlanInputError(f"table {t.name!r}: pooling_factor={t.pooling_factor} must be > 0")
    for value, allowed, what in ((t.sharding_types, SHARDING_TYPES, "sharding_types"), (t.compute_kernels, COMPUTE_KERNELS, "compute_kernels")):
        bad = sorted(set(value or ()) - set(allowed))
        if bad:
            raise PlanInputError(f"table {t.name!r}: unknown {what} {bad}; valid: {', '.join(allowed)}")
    if t.cache_load_factor is not None and not 0 < t.cache_load_factor <= 1:
        raise PlanInputError(f"table {t.name!r}: cache_load_factor={t.cache_load_factor} must be in (0, 1]")


def _read(path: str) -> dict[str, Any]:
    return read_data(path, "planner inputs file", PlanInputError)


def load_tables(path: str) -> tuple[TableSpec, ...]:
    """A tables file: ``{"tables": [{"name", "rows", "dim", "pooling_factor", ...}, ...]}``."""
    d = _read(path)
    if "tables" not in d:
        raise PlanInputError(f"{path}: expected a top-level 'tables' list")
    return tuple(_table_from(t, path, i) for i, t in enumerate(d["tables"]))


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
