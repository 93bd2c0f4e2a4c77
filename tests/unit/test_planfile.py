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
    del good["plan"]
    (tmp_path / "p.json").write_text(json.dumps(good))
    with pytest.raises(PlanError, match=r"missing section\(s\) \['plan'\]"):
        planfile.read(tmp_path / "p.json")
    with pytest.raises(PlanError, match="plan file .* does not exist"):
        planfile.read(tmp_path / "none.json")
