"""Plan files: file -> plan -> file identical, plan -> file -> plan equal, clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from torchrec.distributed.types import CacheParams, ParameterSharding
from fbgemm_gpu.tbe.cache.cache_config import CacheAlgorithm

from dlrm_dist.planning import planfile
from dlrm_dist.planning.codec import decode, encode
from dlrm_dist.planning.errors import PlanError

PLANS = sorted((Path(__file__).resolve().parents[2] / "sharding_plans").glob("*.json"))


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.stem)
def test_file_plan_file_is_identical(path: Path) -> None:
    text = path.read_text()
    assert planfile.dumps(planfile.read(path)) == text


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.stem)
def test_plan_file_plan_is_equal(path: Path) -> None:
    pf = planfile.read(path)
    again = planfile.from_data(json.loads(planfile.dumps(pf)))
    assert again.plan == pf.plan and again.inputs == pf.inputs


def test_every_parameter_sharding_field_survives() -> None:
    pf = planfile.read(next(p for p in PLANS if "uvm" in p.stem))
    module = next(iter(pf.plan.plan))
    table = next(t for t, ps in pf.plan.plan[module].items() if ps.cache_params)
    full = dataclasses.replace(
        pf.plan.plan[module][table],
        cache_params=CacheParams(algorithm=CacheAlgorithm.LFU, load_factor=0.35, reserved_memory=1.5,
                                 prefetch_pipeline=True),
        enforce_hbm=True, stochastic_rounding=False,
    )
    pf.plan.plan[module][table] = full
    back = planfile.from_data(json.loads(planfile.dumps(pf))).plan.plan[module][table]
    assert back == full
    assert back.cache_params.algorithm is CacheAlgorithm.LFU and back.cache_params.load_factor == 0.35


def test_codec_refuses_foreign_classes() -> None:
    with pytest.raises(ValueError, match="only torchrec/fbgemm"):
        decode({"dataclass": "os:system", "fields": {}})
    with pytest.raises(TypeError, match="cannot store"):
        encode(object())
    assert decode(encode(ParameterSharding("table_wise", "fused", [0]))) == ParameterSharding("table_wise", "fused", [0])


def test_bad_files_name_the_problem(tmp_path) -> None:
    good = json.loads(PLANS[0].read_text())
    for change, words in (({"version": 99}, "version 99 is not supported"), ({"format": "x"}, "not a dlrm_dist plan"),
                          ({"version": True}, "version True is not supported")):
        (tmp_path / "p.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(PlanError, match=words):
            planfile.read(tmp_path / "p.json")
    (tmp_path / "p.json").write_text(json.dumps({**good, "estimates": {"per_rank": [], "summary": {}}}))
    with pytest.raises(PlanError, match=r"estimates.per_rank: must be a non-empty list of objects, got \[\]; "
                                        r"estimates.summary.bottleneck_rank: is required; must be an integer >= 0"):
        planfile.read(tmp_path / "p.json")
    del good["plan"]
    (tmp_path / "p.json").write_text(json.dumps(good))
    with pytest.raises(PlanError, match=r"p.json: plan: is required; must be a non-empty object"):
        planfile.read(tmp_path / "p.json")
    with pytest.raises(PlanError, match="plan file .* does not exist"):
        planfile.read(tmp_path / "none.json")


def _damaged(tmp_path: Path, edit) -> str:
    data = json.loads((ROOT / "sharding_plans" / "demo_cpu2.json").read_text())
    edit(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(PlanError) as e:
        planfile.read(tmp_path / "p.json")
    assert "\n" not in str(e.value)
    return str(e.value)


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("where, value, words", [
    (("per_rank", 0, "fwd_compute"), math.nan, "estimates.per_rank[0].fwd_compute: must be a finite number >= 0, got nan"),
    (("per_rank", 1, "bwd_comms"), math.inf, "estimates.per_rank[1].bwd_comms: must be a finite number >= 0, got inf"),
    (("per_rank", 0, "hbm_bytes"), -1, "estimates.per_rank[0].hbm_bytes: must be an integer >= 0, got -1"),
    (("summary", "cost_imbalance"), -0.5, "estimates.summary.cost_imbalance: must be a finite number >= 0, got -0.5"),
    (("summary", "all_to_all_bytes_per_sample"), math.nan, "all_to_all_bytes_per_sample: must be a finite number"),
    (("summary", "estimated_iteration_ms"), 0.1, "estimated_iteration_ms: 0.1 does not agree with the per-rank"),
    (("summary", "max_ddr_bytes"), 5, "max_ddr_bytes: 5 does not agree"),
    (("summary", "global_batch_size"), 7, "global_batch_size: 7 does not agree"),
    (("summary", "bottleneck_rank"), 2, "bottleneck_rank: must be a rank below the world size 2, got 2"),
])
def test_estimates_that_are_not_valid_figures_are_refused(tmp_path, where, value, words) -> None:
    """NaN, inf, negative or inconsistent estimates used to be shown by inspect as if valid."""
    def edit(data):
        node = data["estimates"]
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value
    assert words in _damaged(tmp_path, edit)


def test_shardings_are_checked_with_their_paths(tmp_path) -> None:
    table = "plan['model.sparse_arch'].t_cat_2"

    def sharding(**changes):
        return lambda d: d["plan"]["model.sparse_arch"]["t_cat_2"].update(changes)
    assert f"{table}.ranks: must be a non-empty list (each an integer >= 0), got []" in _damaged(tmp_path, sharding(ranks=[]))
    assert f"{table}: ranks [1] do not match the shards' placements [0]" in _damaged(tmp_path, sharding(ranks=[1]))
    assert f"{table}.compute_kernel: must be one of dense, fused" in _damaged(tmp_path, sharding(compute_kernel="x"))
    assert "data_parallel tables are replicated and have no shards" in _damaged(
        tmp_path, sharding(sharding_type="data_parallel"))
    shard = {"offsets": [0, 0], "sizes": [20000, 16], "placement": "rank:0/cpu"}
    assert f"{table}: shards: shards 0 and 1 overlap" in _damaged(tmp_path, sharding(shards=[shard, shard], ranks=[0, 0]))
    assert f"{table}.shards[0].placement: must look like rank:N/cpu" in _damaged(
        tmp_path, sharding(shards=[{**shard, "placement": "rank:x"}]))
    lfu = {"dataclass": "torchrec.distributed.types:CacheParams", "fields": {"load_factor": math.nan}}
    assert f"{table}.cache_params: numbers in a plan file must be finite, got nan" in _damaged(
        tmp_path, sharding(cache_params=lfu))
    lfu["fields"] = {"load_factor": 3.0}
    assert "cache_params.load_factor must be in (0, 1], got 3.0" in _damaged(tmp_path, sharding(cache_params=lfu))
    lfu["fields"] = {"load_factor": "high"}
    assert "CacheParams.load_factor must be a finite number, got 'high'" in _damaged(tmp_path, sharding(cache_params=lfu))
    assert f"{table}.output_dtype: ParameterSharding.output_dtype must be a DataType" in _damaged(
        tmp_path, sharding(output_dtype={"enum": "fbgemm_gpu.tbe.cache.cache_config:CacheAlgorithm", "name": "LRU"}))


def test_the_model_declares_every_parameter_sharding_field() -> None:
    """A TorchRec upgrade that adds a ParameterSharding field must be declared in the plan-file model."""
    declared = set(planfile.ShardingModel.model_fields) - {"shards"}
    assert declared == {f.name for f in dataclasses.fields(ParameterSharding)} - {"sharding_spec"}
    from dlrm_dist.planning.types import PERF_FIELDS
    assert set(PERF_FIELDS) < set(planfile.RankModel.model_fields)


def test_version_1_files_still_load() -> None:
    """A version-1 file (headroom and the iteration time stored twice) reads to the same estimates."""
    root = Path(__file__).resolve().parents[2]
    old = planfile.read(root / "tests" / "plans" / "demo_cpu2_v1.json")
    new = planfile.read(root / "sharding_plans" / "demo_cpu2.json")
    assert json.loads((root / "tests" / "plans" / "demo_cpu2_v1.json").read_text())["version"] == 1
    assert old.plan == new.plan and old.inputs == new.inputs
    assert old.estimates.summary == new.estimates.summary
    assert [r.to_dict() for r in old.estimates.per_rank] == [r.to_dict() for r in new.estimates.per_rank]
    v1 = json.loads((root / "tests" / "plans" / "demo_cpu2_v1.json").read_text())["estimates"]["summary"]
    assert new.estimates.summary.ddr_headroom_bytes == v1["ddr_headroom_bytes"]
    assert new.estimates.summary.estimated_samples_per_s == pytest.approx(v1["estimated_samples_per_s"])
    assert planfile.to_data(old)["version"] == planfile.VERSION  # written back in the current format


def test_estimates_store_each_figure_once() -> None:
    """Derived figures are properties: the file holds no number that another one determines."""
    pf = planfile.read(PLANS[0])
    stored = planfile.to_data(pf)["estimates"]
    assert not {"bottleneck_ms", "hbm_headroom_bytes", "estimated_samples_per_s", "fits"} & set(stored["summary"])
    assert "cost_ms" not in stored["per_rank"][0]
    s = pf.estimates.summary
    assert s.estimated_iteration_ms == max(r.cost_ms for r in pf.estimates.per_rank)
    assert s.max_ddr_bytes == max(r.ddr_bytes for r in pf.estimates.per_rank)
    assert pf.estimates.describe()["summary"]["ddr_headroom_bytes"] == s.ddr_budget_bytes - s.max_ddr_bytes
