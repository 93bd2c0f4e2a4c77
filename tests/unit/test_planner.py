"""The planner: memory budgets, UVM caching, CPU honesty, no-fit errors, quality, checks."""

from __future__ import annotations

import pytest

from dlrm_dist.model.dlrm import DLRMTrain
from dlrm_dist.planning.check import PlanMismatchError, check_plan
from dlrm_dist.planning.errors import NoFitError
from dlrm_dist.planning.planner import baseline_plan_file, make_plan_file, plan_file_for
from dlrm_dist.planning.torchrec_default import plan_with_torchrec
from dlrm_dist.planning.types import GB, Budgets, ExpectedTable, PlannerInputs, TableSpec, TopologySpec
from tests.unit.test_planfile import PLANS

TABLES = DLRMTrain.TABLES_PATH  # the trainer's module path, as dlrm-plan make keys plans

BIG = tuple(TableSpec(f"big{i}", 40_000_000, 128, 4.0) for i in range(4)) + tuple(
    TableSpec(f"small{i}", 10_000 * (i + 1), 64, 2.0) for i in range(12))


def _inputs(world: int = 8, hbm: float = 80.0, **kw) -> PlannerInputs:
    return PlannerInputs(tables=BIG, topology=TopologySpec(world, min(world, 8), hbm_gb=hbm, ddr_gb=1024.0),
                         batch_size_per_rank=512, optimizer="adagrad", **kw)


def _kernels(pf) -> set[str]:
    return {ps.compute_kernel for mp in pf.plan.plan.values() for ps in mp.values()}


def test_fits_in_hbm_without_cache() -> None:
    pf = make_plan_file(_inputs(hbm=80.0), TABLES)
    assert _kernels(pf) <= {"fused", "dense"}
    s = pf.estimates.summary
    assert s.hbm_headroom_bytes >= 0
    assert all(r.hbm_bytes <= s.hbm_budget_bytes for r in pf.estimates.per_rank)


def test_budget_limited_uses_uvm_caching_within_budget() -> None:
    pf = make_plan_file(_inputs(hbm=16.0), TABLES)  # 4 x 40M x 128 x (4 + 4 adagrad) bytes = 164 GB > 8 x 14.4 GB
    assert "fused_uvm_caching" in _kernels(pf)
    cached = [ps for mp in pf.plan.plan.values() for ps in mp.values() if ps.compute_kernel == "fused_uvm_caching"]
    assert all(ps.cache_params.load_factor == 0.2 for ps in cached)
    s = pf.estimates.summary
    assert s.hbm_headroom_bytes >= 0 and s.ddr_headroom_bytes >= 0


def test_per_table_load_factor_overrides_global() -> None:
    tables = tuple(TableSpec(t.name, t.rows, t.dim, t.pooling_factor, cache_load_factor=0.05 if t.name == "big0" else None)
                   for t in BIG)
    inputs = PlannerInputs(tables=tables, topology=TopologySpec(8, 8, hbm_gb=16.0, ddr_gb=1024.0), optimizer="adagrad")
    shardings = next(iter(make_plan_file(inputs, TABLES).plan.plan.values()))
    factors = {n: ps.cache_params.load_factor for n, ps in shardings.items() if ps.cache_params}
    assert factors.get("big0", 0.05) == 0.05 and all(v == 0.2 for n, v in factors.items() if n != "big0")


def test_nothing_fits_names_tables_bytes_and_remedies() -> None:
    with pytest.raises(NoFitError) as e:
        make_plan_file(_inputs(world=2, hbm=4.0, budgets=Budgets(ddr_share=0.05)), TABLES)
    msg = str(e.value)
    for words in ("do not fit on 2 x cuda", "per rank: HBM 3.60 GB", "big1", "needed in total", "would fit:",
                  "world size of at least", "is needed for host memory"):
        assert words in msg, f"{words!r} not in:\n{msg}"
    # host memory is too small anyway: moving more of each table to it would not fit either
    assert "cache load factor" not in msg
    cached_only = tuple(TableSpec(t.name, t.rows, t.dim, t.pooling_factor, compute_kernels=("fused", "fused_uvm_caching"))
                        for t in BIG)
    with pytest.raises(NoFitError) as e:  # 1 TB of host memory: a smaller cache would fit
        make_plan_file(PlannerInputs(tables=cached_only, topology=TopologySpec(2, 2, hbm_gb=4.0, ddr_gb=1024.0),
                                     batch_size_per_rank=512, optimizer="adagrad"), TABLES)
    assert "a smaller cache load factor (now 0.2)" in str(e.value) and "needed for host memory" not in str(e.value)


def test_a_table_too_big_for_any_rank_is_split_on_cpu() -> None:
    """60M x 128 on 2 or 4 ranks of 64 GB host memory: it fits split, so the planner splits it."""
    big = (TableSpec("big", 60_000_000, 128, 1.0),)
    for world, per_host in ((2, 2), (4, 2)):
        inputs = PlannerInputs(tables=big, topology=TopologySpec(world, per_host, device="cpu", ddr_gb=64.0))
        pf = make_plan_file(inputs, TABLES)
        ps = next(iter(pf.plan.plan.values()))["big"]
        assert ps.sharding_type in ("column_wise", "table_column_wise", "row_wise") and len(ps.sharding_spec.shards) > 1
        assert pf.estimates.summary.ddr_headroom_bytes >= 0


def test_cpu_plans_honestly_without_cache() -> None:
    tables = tuple(TableSpec(f"t{i}", 1000 * (i + 1), 16, compute_kernels=("fused_uvm_caching", "fused")) for i in range(6))
    inputs = PlannerInputs(tables=tables, topology=TopologySpec(2, 2, device="cpu", ddr_gb=16.0))
    pf = make_plan_file(inputs, TABLES)
    assert _kernels(pf) <= {"fused", "dense"}
    assert all(ps.cache_params is None for mp in pf.plan.plan.values() for ps in mp.values())
    note = " ".join(pf.planner["notes"])
    assert "no UVM or UVM-caching kernels on CPU" in note and "fused_uvm_caching" not in _kernels(pf)
    assert "requested for" in note


def test_quality_against_torchrec_default() -> None:
    """Kaggle DLRM on 8 GPUs: no worse than 1.05x TorchRec's bottleneck, by TorchRec's own rating."""
    inputs = PlannerInputs.load(str(next(p for p in PLANS if p.stem == "criteo_kaggle_gpu8").parent / "inputs" / "criteo_kaggle_gpu8.json"))
    ours = make_plan_file(inputs, TABLES).estimates.summary.estimated_iteration_ms
    theirs = plan_with_torchrec(inputs)
    bridged = plan_file_for(theirs.plan, inputs, "torchrec", TABLES).estimates.summary.estimated_iteration_ms
    assert bridged == pytest.approx(theirs.bottleneck_ms, rel=1e-9)  # same estimates as TorchRec's planner
    assert ours <= 1.05 * theirs.bottleneck_ms


def test_plans_for_many_simulated_gpus() -> None:
    tables = tuple(TableSpec(f"t{i}", 1000 + 97_000 * i, (32, 64, 128)[i % 3], float(1 + i % 7)) for i in range(120))
    pf = make_plan_file(PlannerInputs(tables=tables, topology=TopologySpec(512, 8), batch_size_per_rank=128),
                        TABLES)
    ranks = {r for mp in pf.plan.plan.values() for ps in mp.values() for r in ps.ranks}
    assert max(ranks) < 512 and len(pf.estimates.per_rank) == 512


def test_baselines_are_worse_or_over_budget() -> None:
    inputs = _inputs(hbm=80.0)
    ours = make_plan_file(inputs, TABLES).estimates.summary
    for name in ("round_robin", "greedy_by_size"):
        s = baseline_plan_file(name, inputs, TABLES).estimates.summary
        assert s.estimated_iteration_ms >= ours.estimated_iteration_ms or not s.fits


def test_check_lists_every_mismatch() -> None:
    pf = make_plan_file(PlannerInputs(tables=BIG[:2] + BIG[4:6], topology=TopologySpec(8, 8)), TABLES)
    expected = [ExpectedTable("big0", 40_000_000, 64), ExpectedTable("small0", 10_000, 64),
                ExpectedTable("small1", 20_000, 64), ExpectedTable("new", 5, 4)]
    with pytest.raises(PlanMismatchError) as e:
        check_plan(pf.plan, expected, world_size=1, device="cpu", origin="p.json")
    msg = str(e.value)
    for words in ("table new is in the model but missing from the plan", "table big1 is in the plan but not in the model",
                  "table big0", "different rows or dim", "but the world size is 1", "placed on cuda, but this job runs on cpu"):
        assert words in msg, f"{words!r} not in:\n{msg}"
    check_plan(pf.plan, [ExpectedTable(t.name, t.rows, t.dim) for t in BIG[:2] + BIG[4:6]], 8, "cuda")
    assert GB == 1024**3


def test_a_uvm_only_table_does_not_push_the_others_out_of_hbm() -> None:
    """Tables constrained to UVM kernels: the rest still fit in HBM and stay there."""
    uvm = tuple(TableSpec(f"uvm_only{i}", 1_000_000, 64, compute_kernels=("fused_uvm_caching",)) for i in range(2))
    pf = make_plan_file(PlannerInputs(tables=uvm + BIG[4:], topology=TopologySpec(8, 8, hbm_gb=80.0)), TABLES)
    kernels = {n: ps.compute_kernel for mp in pf.plan.plan.values() for n, ps in mp.items()}
    assert {kernels["uvm_only0"], kernels["uvm_only1"]} == {"fused_uvm_caching"}
    assert {k for n, k in kernels.items() if not n.startswith("uvm_only")} <= {"fused", "dense"}
