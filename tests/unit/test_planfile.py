"""Plan files: file -> plan -> file identical, plan -> file -> plan equal, clear errors."""

from __future__ import annotations

import dataclasses
import json
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
    for change, words in (({"version": 99}, "version 99 is not supported"), ({"format": "x"}, "not a dlrm_dist plan")):
        (tmp_path / "p.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(PlanError, match=words):
            planfile.read(tmp_path / "p.json")
    (tmp_path / "p.json").write_text(json.dumps({**good, "estimates": {"per_rank": [], "summary": {}}}))
    with pytest.raises(PlanError, match="the estimates section is malformed"):
        planfile.read(tmp_path / "p.json")
    del good["plan"]
    (tmp_path / "p.json").write_text(json.dumps(good))
    with pytest.raises(PlanError, match=r"missing section\(s\) \['plan'\]"):
        planfile.read(tmp_path / "p.json")
    with pytest.raises(PlanError, match="plan file .* does not exist"):
        planfile.read(tmp_path / "none.json")


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
