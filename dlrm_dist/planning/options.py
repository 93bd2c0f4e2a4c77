"""Enumeration and estimation: every way each table may be sharded, with TorchRec's costs.

This is two stages of TorchRec's planner. The *estimates* are TorchRec's own models, so a plan's
cost means exactly what it means to TorchRec's planner: its default perf estimator
(EmbeddingPerfEstimator) in closed form (shard_perf.py) and its storage estimator
(EmbeddingStorageEstimator) in closed form (shard_storage.py), both equal to TorchRec's float for
float and byte for byte (tests/unit/test_planner_perf.py, test_planner_storage.py), with TorchRec's
shard layouts (shard_layout.py). So planning imports neither TorchRec nor torch: importing them
took longer than planning 1,000 tables. Calibrated inputs keep TorchRec's path
(torchrec_bridge.CalibratedPerfEstimator on a TorchRec ShardingOption, built only on a cache miss).
The *enumeration* is ours, because TorchRec's builds and estimates every shard of every option
(0.3 ms per shard: hours for 1,000 tables on 512 ranks). Two facts, both checked by tests against
TorchRec's own enumerator, make it cheap:
- within an option, shards of equal size get equal estimates, so only one shard per
  distinct size is estimated;
- a shard's perf does not depend on the table's row count (except for data_parallel,
  whose gradient all-reduce does), so perf is cached per (sharding type, kernel, dim,
  pooling factor, cache load factor, shard width). Storage is estimated per table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from dlrm_dist.names import COMPUTE_KERNELS, FUSED_DIM_MULTIPLE, SHARDING_TYPES
from dlrm_dist.planning.inputs import MANAGED_KERNEL, MANAGED_SHARDING_TYPE
from dlrm_dist.planning.shard_layout import shard_layout
from dlrm_dist.planning.shard_perf import Bandwidths, ShardContext, device_bw, shard_perf
from dlrm_dist.planning.shard_storage import shard_storages
from dlrm_dist.planning.storage import check_storage, remapper_bytes
from dlrm_dist.planning.types import PARTITION_BY, PERF_FIELDS, Capacity, Option, PlannerInputs, TableSpec

if TYPE_CHECKING:
    import torch
    from torchrec.distributed.planner.types import ShardingOption

PLANNED_KERNELS = COMPUTE_KERNELS  # key-value and virtual tables need SSD/KV backends: not planned
# TorchRec's EmbeddingBagCollectionSharder: its sharding types per device, in its order (a test keeps them equal).
SHARDER_TYPES: dict[str, tuple[str, ...]] = {
    "cpu": ("data_parallel", "table_wise", "column_wise", "table_column_wise"),
    "cuda": ("data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise",
             "grid_shard"),
}
_CUDA_MODEL_PARALLEL_KERNELS = ("fused", "fused_uvm", "fused_uvm_caching", "key_value", "ssd_virtual_table",
                                "dram_virtual_table", "dram_ssd_virtual_table")


def sharder_kernels(sharding_type: str, device: str) -> tuple[str, ...]:
    """TorchRec's EmbeddingBagCollectionSharder.compute_kernels: dense for data parallel; fused (and on cuda
    the UVM, key-value and virtual-table kernels) otherwise."""
    if sharding_type == "data_parallel":
        return ("dense",)
    return _CUDA_MODEL_PARALLEL_KERNELS if device == "cuda" else ("fused",)


def cache_load_factor(inputs: PlannerInputs, table: TableSpec) -> float:
    """The table's cache load factor, else the budget's (torchrec_bridge.cache_load_factor's rule; a test keeps
    them equal)."""
    return table.cache_load_factor if table.cache_load_factor is not None else inputs.budgets.cache_load_factor


class Enumerator:
    """Builds every table's options for one set of planner inputs."""

    def __init__(self, inputs: PlannerInputs) -> None:
        check_storage(inputs)  # before anything is built: a 2**40-wide table must not be enumerated
        self.inputs = inputs
        # Uncalibrated estimates are TorchRec's default model in closed form (shard_perf.py): no TorchRec import.
        self._bandwidths = Bandwidths.of(inputs) if inputs.calibration is None else None
        self._torchrec: Optional[_TorchRecEstimator] = None
        self._perf_cache: dict[tuple, dict[int, np.ndarray]] = {}
        self._perf_rows: dict[tuple, np.ndarray] = {}  # (cache key, distinct widths) -> their perf rows
        self.capacity = Capacity.of(inputs)
        self._layouts: dict[tuple, tuple] = {}

    # -- TorchRec's side, built only when used (calibrated inputs, tests, benchmarks) ---------------
    @property
    def torchrec(self) -> "_TorchRecEstimator":
        """TorchRec's topology, constraints, sharder data and perf estimator (calibrated if the inputs say)."""
        if self._torchrec is None:
            self._torchrec = _TorchRecEstimator(self.inputs)
        return self._torchrec

    @property
    def params(self) -> dict[str, "torch.Tensor"]:
        """Each table's weight as a meta tensor (its shape and dtype: all TorchRec's estimators read)."""
        return {t.name: self.torchrec.tensor(t) for t in self.inputs.tables}

    def candidates(self, table: TableSpec) -> list[tuple[str, str]]:
        """(sharding type, kernel) pairs allowed by the device, the sharder and the table.

        A managed table has one: row_wise with the fused kernel, the only way TorchRec shards a
        remapper and the kernel sharding runs it with (distributed/parallel.py's split_plan), on
        CPU too, where TorchRec's sharder does not list row_wise but it runs over gloo.
        """
        if table.managed:
            return [(MANAGED_SHARDING_TYPE, MANAGED_KERNEL)]
        device = self.inputs.topology.device
        out = []
        for st in SHARDER_TYPES[device]:
            if st not in SHARDING_TYPES:  # e.g. grid_shard: not planned here
                continue
            if table.sharding_types and st not in table.sharding_types:
                continue
            kernels = [k for k in sharder_kernels(st, device) if k in PLANNED_KERNELS]
            if table.compute_kernels:
                kernels = [k for k in kernels if k in table.compute_kernels]
            if "fused" in kernels and "dense" in kernels:
                kernels.remove("dense")  # as TorchRec: dense only where fused is impossible
            out += [(st, k) for k in kernels]
        return out

    def options(self, index: int) -> list[Option]:
        """All options of table ``index`` (empty if constraints exclude everything).

        A table none of whose options fits one rank's memory also gets its splits: column-wise
        into 2, 4, ... shards (widths fbgemm's fused kernel takes) and, on CPU, row-wise (which
        TorchRec's sharder does not offer for CPU but which runs there over gloo).
        """
        table = self.inputs.tables[index]
        out = [self.base_option(index, st, k) for st, k in self.candidates(table)]
        if out and not any(self._fits_a_rank(o) for o in out):
            out += self._splits(index, table)
        return out

    def _fits_a_rank(self, o: Option) -> bool:
        cap = self.capacity
        return bool(o.hbm.max() <= cap.hbm and o.ddr.max() <= cap.ddr)

    def _splits(self, index: int, table: TableSpec) -> list[Option]:
        allowed = {st for st, _ in self.candidates(table)}
        topo = self.inputs.topology
        out = []
        for st, ranks in (("column_wise", topo.world_size), ("table_column_wise", topo.ranks_per_host)):
            if st not in allowed:
                continue
            for k in range(2, ranks + 1):
                width = table.dim // k
                if table.dim % k == 0 and width % FUSED_DIM_MULTIPLE == 0:
                    out.append(self._option(index, table, st, "fused", col_dim=width))
        if topo.device == "cpu" and not table.managed and (not table.sharding_types or "row_wise" in table.sharding_types):
            out.append(self._option(index, table, "row_wise", "fused"))
        return out

    def all_options(self) -> list[list[Option]]:
        return [self.options(i) for i in range(len(self.inputs.tables))]

    # -- internals ------------------------------------------------------------------------
    def _layout(self, table: TableSpec, st: str, col_dim: Optional[int] = None) -> "_Layout":
        """Shard sizes/offsets (TorchRec's own split) and their distinct sizes, per type."""
        key = (table.name, st, col_dim)
        if key not in self._layouts:
            topo = self.inputs.topology
            sizes, offsets = shard_layout(table.rows, table.dim, topo.world_size, topo.ranks_per_host, st, col_dim)
            self._layouts = {k: v for k, v in self._layouts.items() if k[0] == table.name}  # bounded
            self._layouts[key] = _Layout.of(sizes, offsets)
        return self._layouts[key]

    def base_option(self, index: int, st: str, kernel: str) -> Option:
        """Table ``index`` sharded as TorchRec's enumerator would (``st``, ``kernel``, default shard dim)."""
        return self._option(index, self.inputs.tables[index], st, kernel)

    def _option(self, index: int, table: TableSpec, st: str, kernel: str, col_dim: Optional[int] = None) -> Option:
        return self._estimate(index, table, st, kernel, self._layout(table, st, col_dim), None)

    def option_for(self, index: int, st: str, kernel: str, sizes: list, offsets: list,
                   load_factor: Optional[float]) -> Option:
        """The option of an explicit shard layout (e.g. another planner's), estimated alike."""
        layout = _Layout.of([list(s) for s in sizes], [list(o) for o in offsets])
        return self._estimate(index, self.inputs.tables[index], st, kernel, layout, load_factor)

    def _load_factor(self, table: TableSpec, kernel: str, load_factor: Optional[float]) -> Optional[float]:
        """The cache load factor of a cached kernel's option (the table's, else the budget's); None otherwise."""
        if kernel != "fused_uvm_caching":
            return None
        return load_factor if load_factor is not None else cache_load_factor(self.inputs, table)

    def _estimate(self, index: int, table: TableSpec, st: str, kernel: str, layout: "_Layout",
                  load_factor: Optional[float]) -> Option:
        clf = self._load_factor(table, kernel, load_factor)
        topo = self.inputs.topology
        storage = np.array(shard_storages(layout.distinct, table.rows, table.dim, st, kernel, topo.device,
                                          self.inputs.optimizer, table.pooling_factor, self.inputs.batch_size_per_rank,
                                          topo.world_size, topo.ranks_per_host, clf), dtype=np.int64)
        hbm, ddr = storage[layout.inverse, 0], storage[layout.inverse, 1]
        if table.managed:  # TorchRec's estimator knows no remapper: its buffers sit on the shard's device
            extra = remapper_bytes(layout.sizes_a[:, 0])
            if self.inputs.topology.device == "cuda":
                hbm = hbm + extra
            else:
                ddr = ddr + extra
        perf = self._perf(table, st, kernel, clf, layout)[layout.inverse]
        return Option(index, st, kernel, clf, layout.sizes_a, layout.offsets_a, perf, hbm, ddr)

    def _perf(self, table: TableSpec, st: str, kernel: str, clf: Optional[float], layout: "_Layout") -> np.ndarray:
        """Per distinct shard size: the 6 perf components (ms); TorchRec's (calibrated) estimator on a miss when
        the inputs carry a calibration, else the closed form."""
        # A calibrated kernel cost depends on the rows (cache misses): then the cache is per table size too.
        key = (st, kernel, table.dim, table.pooling_factor, clf, table.rows if self.inputs.calibration else None)
        closed = self._bandwidths is not None
        if closed and st != "data_parallel":  # the closed form is a function of the key and widths: memoised whole
            hit = self._perf_rows.get((key, layout.widths))
            if hit is not None:
                return hit
        cached = self._perf_cache.get(key, {})
        if st == "data_parallel" or any(w not in cached for w in layout.widths):
            values = (self._closed_form(table, st, kernel, clf, layout.distinct) if closed else
                      self.torchrec.estimate(table, st, kernel, layout.distinct, layout.distinct_offsets, clf))
            if st == "data_parallel":  # depends on the table's size: never shared
                return np.stack(values)
            cached.update(dict(zip(layout.widths, values)))
            self._perf_cache[key] = cached
        rows = np.stack([cached[w] for w in layout.widths])
        if closed:
            self._perf_rows[(key, layout.widths)] = rows
        return rows

    def _closed_form(self, table: TableSpec, st: str, kernel: str, clf: Optional[float],
                     distinct: list) -> list[np.ndarray]:
        """TorchRec's default estimate of each distinct shard (shard_perf.py, equal to its estimator)."""
        topo, bw = self.inputs.topology, self._bandwidths
        assert bw is not None
        kernel_bw = device_bw(topo.device, kernel, bw, clf)
        return [np.array(shard_perf(ShardContext(st, int(rows), int(cols), table.pooling_factor,
                                                 self.inputs.batch_size_per_rank, topo.world_size,
                                                 topo.ranks_per_host, kernel_bw, bw)), dtype=np.float64)
                for rows, cols in distinct]


@dataclass(frozen=True)
class _Layout:
    """One shard layout: sizes and offsets (lists and int64 arrays) and its distinct shard sizes, in ascending
    order, with each shard's position among them (``inverse``) and their widths."""

    sizes_a: np.ndarray
    offsets_a: np.ndarray
    distinct: list
    distinct_offsets: list
    inverse: np.ndarray
    widths: tuple[int, ...]

    @classmethod
    def of(cls, sizes: list, offsets: list) -> "_Layout":
        if sizes.count(sizes[0]) == len(sizes):  # one size (table-, column-wise, data parallel): no search
            rep, inverse = np.zeros(1, dtype=np.intp), np.zeros(len(sizes), dtype=np.intp)
        else:
            rep, inverse = distinct_rows(sizes)
        distinct = [list(sizes[i]) for i in rep]
        return cls(_int_array(sizes), _int_array(offsets), distinct, [list(offsets[i]) for i in rep], inverse,
                   tuple(int(c) for _, c in distinct))


def _int_array(rows: list) -> np.ndarray:
    """``np.asarray(rows, dtype=np.int64)``; a repeated row (a data-parallel layout's 64) broadcast, not parsed."""
    if len(rows) > 1 and rows.count(rows[0]) == len(rows):
        out = np.empty((len(rows), len(rows[0])), dtype=np.int64)
        out[:] = rows[0]
        return out
    return np.asarray(rows, dtype=np.int64)


class _TorchRecEstimator:
    """TorchRec's estimator on ShardingOptions built like its enumerator's: for calibrated inputs (whose
    kernel costs CalibratedPerfEstimator replaces) and for the tests that hold the closed form to TorchRec's.

    No model is built: TorchRec's estimators read a table's shape and element size from a meta tensor
    of that shape, and the module only for its type (one stand-in EmbeddingBagCollection of one tiny
    table). Importing it costs seconds, so it is built only when used.
    """

    def __init__(self, inputs: PlannerInputs) -> None:
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.planner.utils import build_sharder_data_map, sharder_name

        from dlrm_dist.planning.torchrec_bridge import constraints, perf_estimator, torchrec_topology

        self.inputs = inputs
        self.topology = torchrec_topology(inputs)
        self.constraints = constraints(inputs)
        sharder = EmbeddingBagCollectionSharder()
        self.sharder_data = build_sharder_data_map({sharder_name(sharder.module_type): sharder})
        self.perf_estimator = perf_estimator(inputs, self.topology, self.constraints)  # calibrated if the inputs say
        self._module = _stand_in_module()
        self._tensors: dict[str, "torch.Tensor"] = {}

    def tensor(self, table: TableSpec) -> "torch.Tensor":
        import torch

        if table.name not in self._tensors:
            self._tensors[table.name] = torch.empty((table.rows, table.dim), dtype=torch.float32, device="meta")
        return self._tensors[table.name]

    def sharding_option(self, table: TableSpec, st: str, kernel: str, sizes: list, offsets: list,
                        clf: Optional[float]) -> "ShardingOption":
        from torchrec.distributed.planner.types import Shard, ShardingOption
        from torchrec.distributed.types import CacheParams

        return ShardingOption(
            name=table.name,
            tensor=self.tensor(table),
            module=("", self._module),
            input_lengths=[table.pooling_factor],
            batch_size=self.inputs.batch_size_per_rank,
            compute_kernel=kernel,
            sharding_type=st,
            partition_by=PARTITION_BY[st],
            shards=[Shard(size=list(s), offset=list(o)) for s, o in zip(sizes, offsets)],
            cache_params=CacheParams(load_factor=clf) if clf is not None else None,
            is_pooled=True,
            feature_names=list(table.features),
        )

    def estimate(self, table: TableSpec, st: str, kernel: str, sizes: list, offsets: list,
                 clf: Optional[float]) -> list[np.ndarray]:
        """The 6 perf components of each shard of ``sizes``, by TorchRec's (calibrated) estimator."""
        so = self.sharding_option(table, st, kernel, sizes, offsets, clf)
        self.perf_estimator.estimate([so], self.sharder_data)
        return [np.array([getattr(s.perf, f) for f in PERF_FIELDS]) for s in so.shards]


def _stand_in_module() -> Any:
    """The module a ShardingOption names: TorchRec's estimators read only its type (the sharder's key),
    whether it is weighted and whether it has feature processors; never its tables."""
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    one = EmbeddingBagConfig(name="stand_in", embedding_dim=4, num_embeddings=1, feature_names=["stand_in"])
    return EmbeddingBagCollection(tables=[one], device=torch.device("meta"))


def distinct_rows(sizes: list) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(sizes, axis=0, return_index=True, return_inverse=True)``'s index and inverse, without its
    sort of the whole array: the first occurrence of each distinct shard size, in ascending order of the
    sizes, and each shard's position among them. A layout has one to three distinct sizes among up to
    hundreds of shards, and np.unique along an axis cost 0.3 ms per option."""
    rows = [tuple(r) for r in sizes]  # python ints (ours, ShardMetadata's) or numpy ints: both hash as ints
    first: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(r, i)
    ordered = sorted(first)
    position = {r: j for j, r in enumerate(ordered)}
    return (np.array([first[r] for r in ordered], dtype=np.intp),
            np.array([position[r] for r in rows], dtype=np.intp))
