"""Plans for every forced sharding type and from TorchRec's planner, with no process group."""

from __future__ import annotations

import json

import pytest
import torch

from dlrm_dist.config import load_config
from dlrm_dist.planning import PlanError, format_plan, plan_rows
from dlrm_dist.training.build import prepare
from dlrm_dist.distributed.env import DistEnv

SMALL = ["--data.schema=demo:table_sizes=100/2000/50/700", "--model.bottom_mlp=13-32-16", "--model.top_mlp=16-1"]


def _env(world: int, local: int | None = None) -> DistEnv:
    return DistEnv(0, world, 0, local or world, torch.device("cpu"), "gloo")


@pytest.mark.parametrize(
    "st, kernel",
    [("data_parallel", "dense"), ("table_wise", "fused"), ("row_wise", "fused"), ("column_wise", "fused"),
     ("table_row_wise", "fused"), ("table_column_wise", "fused")],
)
def test_forced_types(st: str, kernel: str) -> None:
    plan = prepare(load_config(SMALL + [f"--sharding-type={st}"]), _env(4, 2)).plan
    rows = plan_rows(plan)
    assert len(rows) == 4
    assert {r["sharding_type"] for r in rows} == {st}
    assert {r["compute_kernel"] for r in rows} == {kernel}
    for r in rows:
        if st != "data_parallel":  # shards tile the table exactly
            area = sum(s["sizes"][0] * s["sizes"][1] for s in r["shards"])
            rows_of_table = {"t_cat_0": 100, "t_cat_1": 2000, "t_cat_2": 50, "t_cat_3": 700}[r["table"]]
            assert area == rows_of_table * 16
        if st in ("table_row_wise", "table_column_wise"):  # stays within one host of 2 ranks
            assert {s["rank"] // 2 for s in r["shards"]} in ({0}, {1})
    assert f"{st}=4" in format_plan(plan)


def test_table_wise_balances_by_size() -> None:
    plan = prepare(load_config(SMALL + ["--sharding-type=table_wise"]), _env(2)).plan
    where = {r["table"]: r["ranks"][0] for r in plan_rows(plan)}
    assert where["t_cat_1"] != where["t_cat_3"]  # the two largest tables are apart


def test_column_wise_that_cannot_split_is_named() -> None:
    cfg = load_config(SMALL + ["--sharding-type=column_wise", "--model.embedding_dim=8", "--model.bottom_mlp=13-32-8"])
    with pytest.raises(PlanError, match=r"embedding_dim=8 cannot be split column-wise into 4.*multiple of 16"):
        prepare(cfg, _env(4))


@pytest.mark.parametrize("planner", ["dlrm_dist", "torchrec"])
def test_planner_plan_covers_every_table(planner: str) -> None:
    plan = prepare(load_config([f"--sharding.planner={planner}"]), _env(2)).plan
    rows = plan_rows(plan)
    assert len(rows) == 26
    assert {r["sharding_type"] for r in rows} <= {"data_parallel", "table_wise", "column_wise", "table_column_wise"}
    ranks = {rank for r in rows for rank in r["ranks"]}
    assert ranks == {0, 1}


def test_a_plan_for_another_world_size_is_refused(tmp_path) -> None:
    """A 2-rank plan used to run on 4 ranks without a word, leaving ranks 2-3 without tables."""
    from dlrm_dist.cli.plan_main import main as plan_main

    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps({"tables": [{"name": f"t_cat_{i}", "rows": r, "dim": 16, "feature_names": [f"cat_{i}"]}
                                             for i, r in enumerate((100, 2000, 50, 700))]}))
    plan = tmp_path / "p2.json"
    assert plan_main(["make", "--tables", str(tables), "--world-size", "2", "--device", "cpu", "-o", str(plan)]) == 0
    args = ["--data.schema=demo:table_sizes=100/2000/50/700", "--model.bottom_mlp=13-32-16", "--model.top_mlp=16-1", f"--plan={plan}"]
    assert prepare(load_config(args), _env(2)).plan  # the right world size plans fine
    with pytest.raises(PlanError, match=r"made for 2 ranks, but this job has 4: make one for 4 .* or run on 2 ranks"):
        prepare(load_config(args), _env(4, 2))


def test_a_table_too_large_for_the_machine_is_refused_before_the_model_is_built(monkeypatch) -> None:
    """dim = 2**40 used to reach build_model, which tried to allocate 140 TB (RuntimeError from the allocator)."""
    import dlrm_dist.training.build as build

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the storage check")
    monkeypatch.setattr(build, "build_model", no_model)
    dim = 2**40
    cfg = load_config(["--data.schema=demo:table_sizes=100/2000/50/700", f"--model.embedding_dim={dim}",
                       f"--model.bottom_mlp=13-32-{dim}", "--model.top_mlp=16-1"])
    with pytest.raises(PlanError) as e:
        prepare(cfg, _env(2))
    message = str(e.value)
    assert "table t_cat_1: 2,000 rows x 1,099,511,627,776 dim needs at least 17,592,186,044,416,000 bytes" in message
    assert "the memory budget is " in message and "2 cpu rank(s)" in message and "\n" not in message
