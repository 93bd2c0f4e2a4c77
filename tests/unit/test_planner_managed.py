"""The planner and managed-collision tables: only row_wise + fused is offered for them (the one
way sharding accepts), and their remapper's memory is counted in each shard's storage.
No process group: a CPU model on one process, explicit topologies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dlrm_dist.planning.inputs import PlanInputError
from dlrm_dist.planning.options import Enumerator
from dlrm_dist.planning.planner import make_plan_file
from dlrm_dist.planning.storage import MANAGED_ROW_BYTES, MANAGED_SHARD_BYTES, remapper_bytes, table_bytes
from dlrm_dist.planning.types import PlannerInputs, TableSpec, TopologySpec

SCHEMA = {"name": "m", "dense": [{"name": "x"}], "label": "y",
          "sparse": [{"name": "user", "kind": "managed", "buckets": 1000},
                     {"name": "item", "kind": "hash", "buckets": 16}]}


def _model():
    from dlrm_dist.config.sections import ModelConfig
    from dlrm_dist.features.schema import from_dict
    from dlrm_dist.model.dlrm import build_model
    from dlrm_dist.model.spec import resolve_model

    spec = resolve_model(ModelConfig(embedding_dim=8, top_mlp="8-1", bottom_mlp="1-8"), from_dict(SCHEMA))
    return build_model(spec, 0, torch.device("cpu"))


def test_the_default_planner_plans_a_jobs_managed_table_row_wise_and_sharding_accepts_it() -> None:
    from dlrm_dist.distributed.parallel import split_plan
    from dlrm_dist.planning.plan import make_plan
    from dlrm_dist.planning.types import JobSpec

    model = _model()
    job = JobSpec(world_size=2, local_size=2, device=torch.device("cpu"), batch_size_per_rank=64)
    pf = make_plan(model, job)
    assert {t.name: t.managed for t in pf.inputs.tables} == {"t_user": True, "t_item": False}
    (module_plan,) = pf.plan.plan.values()
    user = module_plan["t_user"]
    assert (user.sharding_type, user.compute_kernel) == ("row_wise", "fused")
    assert [p.placement.rank() for p in user.sharding_spec.shards] == [0, 1]
    # On CPU TorchRec's sharder offers no row_wise: the plain table keeps the types it always had.
    assert module_plan["t_item"].sharding_type in ("table_wise", "column_wise", "table_column_wise", "data_parallel")
    split = split_plan(pf.plan, model)  # refused (ManagedPlanError) before the planner knew the table
    assert set(split.plan["model.managed_arch"]) == {"t_user"}


def test_torchrecs_planner_plans_it_row_wise_on_cpu_too() -> None:
    """TorchRec's CPU sharder lists no row_wise: without ours listing it, its planner raised a
    RuntimeError for the managed table; the plain table keeps TorchRec's CPU choices."""
    from dlrm_dist.planning.plan import make_plan
    from dlrm_dist.planning.types import JobSpec

    job = JobSpec(world_size=2, local_size=2, device=torch.device("cpu"), batch_size_per_rank=64)
    pf = make_plan(_model(), job, planner="torchrec")
    (module_plan,) = pf.plan.plan.values()
    assert (module_plan["t_user"].sharding_type, module_plan["t_user"].compute_kernel) == ("row_wise", "fused")
    assert module_plan["t_item"].sharding_type != "row_wise"
    assert pf.estimates.summary.max_ddr_bytes > 0


@pytest.mark.parametrize("device", ["cpu", "cuda"], ids=["cpu-topology", "cuda-topology"])  # simulated: no GPU
def test_only_row_wise_fused_is_offered_for_a_managed_table(device: str) -> None:
    tables = (TableSpec("t_a", 50_000, 64, 4.0, managed=True), TableSpec("t_b", 50_000, 64, 4.0))
    inputs = PlannerInputs(tables=tables, topology=TopologySpec(4, 4, device=device))
    e = Enumerator(inputs)
    assert {(o.sharding_type, o.kernel) for o in e.options(0)} == {("row_wise", "fused")}
    assert len({o.sharding_type for o in e.options(1)}) > 1  # the plain twin keeps its choices
    pf = make_plan_file(inputs, module_path="m")
    placed = pf.plan.plan["m"]
    assert "managed tables ['t_a']: planned row_wise with the fused kernel only" in " ".join(pf.planner["notes"])
    assert (placed["t_a"].sharding_type, placed["t_a"].compute_kernel) == ("row_wise", "fused")


@pytest.mark.parametrize("device,rows,world", [("cpu", 1000, 2), ("cuda", 1001, 4)])
def test_a_managed_shard_stores_its_remappers_buffers_on_top_of_the_plain_one(device: str, rows: int,
                                                                                world: int) -> None:
    tables = (TableSpec("t_m", rows, 16, managed=True), TableSpec("t_p", rows, 16))
    inputs = PlannerInputs(tables=tables, topology=TopologySpec(world, world, device=device))
    e = Enumerator(inputs)
    managed, plain = e.base_option(0, "row_wise", "fused"), e.base_option(1, "row_wise", "fused")
    shard_rows = managed.sizes[:, 0]
    assert shard_rows.sum() == rows and len(set(shard_rows.tolist())) == (1 if rows % world == 0 else 2)
    extra = shard_rows * MANAGED_ROW_BYTES + MANAGED_SHARD_BYTES
    on, off = (managed.hbm - plain.hbm, managed.ddr - plain.ddr) if device == "cuda" else \
        (managed.ddr - plain.ddr, managed.hbm - plain.hbm)
    assert on.tolist() == extra.tolist() and off.tolist() == [0] * world
    assert table_bytes(tables[0], "sgd") - table_bytes(tables[1], "sgd") == rows * 24 + 8224


@pytest.mark.parametrize("eviction", ["lfu", "lru"])
def test_the_count_is_every_buffer_torchrecs_remapper_registers(eviction: str) -> None:
    """The independent check: the module the sharder builds per shard, its buffers' bytes."""
    from torchrec.modules.mc_modules import LFU_EvictionPolicy, LRU_EvictionPolicy, MCHManagedCollisionModule

    policy = LRU_EvictionPolicy() if eviction == "lru" else LFU_EvictionPolicy()
    for rows in (1, 333):
        m = MCHManagedCollisionModule(zch_size=rows, device=torch.device("cpu"), eviction_policy=policy,
                                      eviction_interval=1, input_hash_size=2**63 - 1, name="t")
        assert sum(b.numel() * b.element_size() for b in m.buffers()) == remapper_bytes(rows)


def test_tables_files_carry_managed_only_when_set(tmp_path: Path) -> None:
    from dlrm_dist.data.columnar.stats import tables_file

    stats = {"features": [{"feature": "user", "pooling_factor": 1.0}, {"feature": "item", "pooling_factor": 2.0}],
             "tables": [{"name": "t_user", "rows": 8, "dim": 4, "features": ["user"], "managed": True},
                        {"name": "t_item", "rows": 16, "dim": 4, "features": ["item"]}]}
    written = tables_file(stats, 8)
    assert [t.get("managed") for t in written["tables"]] == [True, None]
    (tmp_path / "t.json").write_text(json.dumps(written))
    specs = TableSpec.load_all(str(tmp_path / "t.json"))
    assert [t.managed for t in specs] == [True, False]
    assert [t.to_dict() for t in specs] == written["tables"]  # a plain table's dict has no key: old files unchanged
    for key, bad in (("sharding_types", ["table_wise"]), ("compute_kernels", ["dense"])):
        (tmp_path / "b.json").write_text(json.dumps({"tables": [{**written["tables"][0], key: bad}]}))
        with pytest.raises(PlanInputError, match=rf"tables\[0\] \(t_user\).*{key}=.*managed table is sharded row_wise"):
            TableSpec.load_all(str(tmp_path / "b.json"))
