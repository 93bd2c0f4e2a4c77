"""shard_storage.py's closed-form storage equals TorchRec's EmbeddingStorageEstimator, byte for byte.

The grid crosses table sizes (7 rows to beyond 2**31 rows, dims the fused kernel can and cannot
split), every planned sharding type with TorchRec's own shard layouts (uneven row-wise splits
included), every kernel, both devices, every embedding optimizer, pooling factors below and above
one, load factors (and none: TorchRec's 0.2), and world sizes of one and several hosts. The
TorchRec side is built the way the planner used to build it: a meta EmbeddingBagCollection whose
weights carry the in-backward optimizer (how TorchRec learns the optimizer state's size). Also
here: every enumerated option's estimates equal TorchRec's estimators' (calibrated ones included),
and the enumeration's distinct-shard helper and partition map equal the numpy / TorchRec ones.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import Topology
from torchrec.distributed.planner.enumerators import get_partition_by_type
from torchrec.distributed.planner.shard_estimators import EmbeddingStorageEstimator
from torchrec.distributed.planner.types import Shard, ShardingOption
from torchrec.distributed.planner.utils import build_sharder_data_map, sharder_name
from torchrec.distributed.sharding_plan import calculate_shard_sizes_and_offsets
from torchrec.distributed.types import CacheParams

from dlrm_dist.names import SHARDING_TYPES
from dlrm_dist.planning.calibration import CalibrationModel
from dlrm_dist.planning.options import Enumerator, distinct_rows
from dlrm_dist.planning.shard_storage import shard_storages
from dlrm_dist.planning.torchrec_bridge import meta_module
from dlrm_dist.planning.types import PARTITION_BY, PERF_FIELDS, PlannerInputs, TableSpec, TopologySpec
from tests.calibration_helper import calibration_data

SHAPES = ((7, 20), (123_457, 64), (60_000_001, 128), (2**31 + 11, 8))
KERNELS = ("dense", "fused", "fused_uvm", "fused_uvm_caching")
OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
POOLING = (0.5, 3.7)
LOAD_FACTORS = (None, 0.35)
TOPOLOGIES = ((2, 2), (24, 8))  # (world size, ranks per host)


def _tables() -> tuple[TableSpec, ...]:
    return tuple(TableSpec(f"t{i}", r, d) for i, (r, d) in enumerate(SHAPES))


def _layouts(tensor, sharding_type: str, world: int, local: int, dim: int) -> list[list[list[int]]]:
    """TorchRec's shard sizes for this type (column-wise: its default split and a 2-way one)."""
    col_dims = [None] + ([dim // 2] if sharding_type in ("column_wise", "table_column_wise") and dim % 8 == 0 else [])
    return [calculate_shard_sizes_and_offsets(tensor=tensor, world_size=world, local_world_size=local,
                                              sharding_type=sharding_type, col_wise_shard_dim=c)[0] for c in col_dims]


@functools.lru_cache(maxsize=None)
def _estimator_inputs(world: int, local: int, device: str) -> tuple:
    sharder = EmbeddingBagCollectionSharder()
    return (Topology(world_size=world, local_world_size=local, compute_device=device),
            build_sharder_data_map({sharder_name(sharder.module_type): sharder}))


def _torchrec(ebc, name: str, tensor, sizes, st: str, kernel: str, device: str, world: int, local: int,
              pf: float, clf) -> list[tuple[int, int]]:
    topology, data = _estimator_inputs(world, local, device)
    so = ShardingOption(name=name, tensor=tensor, module=("", ebc), input_lengths=[pf], batch_size=512,
                        compute_kernel=kernel, sharding_type=st, partition_by=get_partition_by_type(st),
                        shards=[Shard(size=list(s), offset=[0, 0]) for s in sizes],
                        cache_params=CacheParams(load_factor=clf) if clf is not None else None, is_pooled=True)
    EmbeddingStorageEstimator(topology).estimate([so], data)
    return [(s.storage.hbm, s.storage.ddr) for s in so.shards]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_storage_equals_torchrec(optimizer: str) -> None:
    tables = _tables()
    inputs = PlannerInputs(tables=tables, topology=TopologySpec(2, 2), optimizer=optimizer)
    ebc = meta_module(inputs)
    params = EmbeddingBagCollectionSharder().shardable_parameters(ebc)
    checked = 0
    for t, st, (world, local) in itertools.product(tables, SHARDING_TYPES, TOPOLOGIES):
        for sizes in _layouts(params[t.name], st, world, local, t.dim):
            # The optimizer only scales the state: the other optimizers on a smaller grid (test time).
            full = optimizer == "rowwise_adagrad"
            kernels, pooling = (KERNELS, POOLING) if full else (("fused", "fused_uvm_caching"), POOLING[1:])
            for kernel, device, pf, clf in itertools.product(kernels, ("cuda", "cpu"), pooling, LOAD_FACTORS):
                if clf is not None and kernel != "fused_uvm_caching":
                    continue  # the planner gives a load factor to the cached kernel only
                want = _torchrec(ebc, t.name, params[t.name], sizes, st, kernel, device, world, local, pf, clf)
                got = shard_storages(sizes, t.rows, t.dim, st, kernel, device, optimizer, pf, 512, world, local, clf)
                assert got == want, (t, st, kernel, device, pf, clf, world, local, sizes[:3])
                checked += 1
    assert checked > 200


def test_partition_by_equals_torchrec() -> None:
    assert PARTITION_BY == {st: get_partition_by_type(st) for st in SHARDING_TYPES}


def _reference_inputs() -> list[PlannerInputs]:
    """A cuda, a cpu, a calibrated and a six-host cuda instance with bandwidth flags, with tables of every kind
    (constraints, splits, a load factor)."""
    tables = (TableSpec("t_a", 100_000, 64, 20.0), TableSpec("t_b", 1_000, 16, 1.0, cache_load_factor=0.4),
              TableSpec("t_c", 50_000_000, 128, 5.0), TableSpec("t_d", 77_777, 20, 1.5, sharding_types=("table_wise",)))
    cal = CalibrationModel.model_validate(calibration_data(world_size=4))
    return [PlannerInputs(tables=tables, topology=TopologySpec(8, 4, "cuda", hbm_gb=16.0), optimizer="adam"),
            PlannerInputs(tables=tables, topology=TopologySpec(4, 2, "cpu", hbm_gb=0.0, ddr_gb=64.0)),
            PlannerInputs(tables=tables, topology=TopologySpec(4, 4, "cpu", hbm_gb=0.0, ddr_gb=128.0), calibration=cal),
            PlannerInputs(tables=tables, topology=TopologySpec(24, 4, "cuda", hbm_gb=24.0, hbm_bw_gbps=1500.0,
                                                               ddr_bw_gbps=80.0, intra_host_bw_gbps=200.0,
                                                               inter_host_bw_gbps=25.0), batch_size_per_rank=1000)]


@pytest.mark.parametrize("which", range(4))
def test_enumerated_estimates_equal_torchrec(which: int) -> None:
    """Every option's storage is TorchRec's storage estimator's, and its perf (closed form: shard_perf.py; or
    the calibrated estimator's) TorchRec's (or the calibrated) perf estimator's, on a ShardingOption of the
    planner's former kind (a meta EBC's marked weight)."""
    inputs = _reference_inputs()[which]
    enum = Enumerator(inputs)
    ebc = meta_module(inputs)
    params = EmbeddingBagCollectionSharder().shardable_parameters(ebc)
    storage = EmbeddingStorageEstimator(enum.torchrec.topology, constraints=enum.torchrec.constraints)
    for i, t in enumerate(inputs.tables):
        for o in enum.options(i):
            so = ShardingOption(name=t.name, tensor=params[t.name], module=("", ebc), input_lengths=[t.pooling_factor],
                                batch_size=inputs.batch_size_per_rank, compute_kernel=o.kernel,
                                sharding_type=o.sharding_type, partition_by=get_partition_by_type(o.sharding_type),
                                shards=[Shard(size=[int(x) for x in s], offset=[int(x) for x in f])
                                        for s, f in zip(o.sizes, o.offsets)],
                                cache_params=CacheParams(load_factor=o.cache_load_factor) if o.cache_load_factor else None,
                                is_pooled=True, feature_names=list(t.features))
            storage.estimate([so], enum.torchrec.sharder_data)
            enum.torchrec.perf_estimator.estimate([so], enum.torchrec.sharder_data)
            where = (t.name, o.sharding_type, o.kernel, len(o.sizes))
            assert o.hbm.tolist() == [s.storage.hbm for s in so.shards], where
            assert o.ddr.tolist() == [s.storage.ddr for s in so.shards], where
            # Shards of equal width share one perf (options.py's cache): TorchRec's default perf does not depend
            # on a shard's rows; a calibrated one does, so uneven row splits are compared uncalibrated only.
            even = len({tuple(s) for s in o.sizes.tolist()}) == len({int(w) for w in o.sizes[:, 1]})
            if inputs.calibration is None or even:
                want = [[getattr(s.perf, f) for f in PERF_FIELDS] for s in so.shards]
                assert o.perf.tolist() == want, where


def test_distinct_rows_equals_numpy_unique() -> None:
    rng = np.random.default_rng(0)
    cases = [[[5, 4]], [[3, 8]] * 7 + [[2, 8]] * 3, [[0, 16], [4, 16], [4, 16], [3, 16], [0, 16]]]
    cases += [rng.integers(0, 4, size=(int(rng.integers(1, 40)), 2)).tolist() for _ in range(50)]
    for sizes in cases:
        _, rep, inverse = np.unique(np.asarray(sizes, dtype=np.int64), axis=0, return_index=True, return_inverse=True)
        got_rep, got_inverse = distinct_rows(sizes)
        assert got_rep.tolist() == rep.tolist() and got_inverse.tolist() == inverse.reshape(-1).tolist(), sizes
