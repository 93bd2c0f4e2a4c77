"""Our enumeration reproduces TorchRec's enumerator + estimators exactly, shard for shard.

This is what licenses the fast path in options.py (one shard per distinct size, perf
cached per signature): every option's shard sizes, offsets, perf and storage must equal
what TorchRec's own EmbeddingEnumerator produces.
"""

from __future__ import annotations

import math

import pytest
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator

from dlrm_dist.planning.options import Enumerator
from dlrm_dist.planning.torchrec_bridge import constraints, meta_module, torchrec_topology
from dlrm_dist.planning.types import PERF_FIELDS, Budgets, PlannerInputs, TableSpec, TopologySpec

TABLES = (
    TableSpec("a", 1000, 64, 3.0),
    TableSpec("b", 5_000_000, 128, 1.0),
    TableSpec("c", 123_457, 32, 12.0, cache_load_factor=0.5),
    TableSpec("d", 77, 128, 2.0),  # fewer rows than ranks: empty row-wise shards
    TableSpec("e", 2_000_000, 64, 1.0),  # same signature as "a" for most options: cache reuse
)


@pytest.mark.parametrize("device, world, local", [("cuda", 16, 8), ("cpu", 4, 2)])
def test_matches_torchrec_enumerator(device: str, world: int, local: int) -> None:
    inputs = PlannerInputs(tables=TABLES, topology=TopologySpec(world, local, device=device, hbm_gb=40, ddr_gb=256),
                           budgets=Budgets(cache_load_factor=0.2), batch_size_per_rank=256, optimizer="adagrad")
    ref = EmbeddingEnumerator(torchrec_topology(inputs), batch_size=256, constraints=constraints(inputs)).enumerate(
        meta_module(inputs), [EmbeddingBagCollectionSharder()])
    theirs = {(o.name, o.sharding_type, o.compute_kernel): o for o in ref if o.compute_kernel in
              ("dense", "fused", "fused_uvm", "fused_uvm_caching")}
    enumerator = Enumerator(inputs)
    ours = {(inputs.tables[o.table].name, o.sharding_type, o.kernel): o
            for opts in enumerator.all_options() for o in opts}
    assert set(ours) == set(theirs)
    for key, o in ours.items():
        t = theirs[key]
        assert o.sizes.tolist() == [s.size for s in t.shards], key
        assert o.offsets.tolist() == [s.offset for s in t.shards], key
        for i, s in enumerate(t.shards):
            for j, f in enumerate(PERF_FIELDS):
                assert math.isclose(o.perf[i, j], getattr(s.perf, f), rel_tol=1e-12, abs_tol=1e-15), (key, i, f)
            assert math.isclose(o.shard_cost[i], s.perf.total, rel_tol=1e-12), (key, i)
            assert (o.hbm[i], o.ddr[i]) == (s.storage.hbm, s.storage.ddr), (key, i)
    assert len(enumerator._perf_cache) < len(ours)  # the cache was used
