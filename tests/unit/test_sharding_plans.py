"""Every committed plan in sharding_plans/ is what the planner makes from its inputs today."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlrm_dist.model.dlrm import DLRMTrain
from dlrm_dist.planning import planfile
from dlrm_dist.planning.planner import make_plan_file
from dlrm_dist.planning.types import PlannerInputs

ROOT = Path(__file__).resolve().parents[2] / "sharding_plans"
REQUIRED = {"demo_cpu2", "criteo_kaggle_gpu2", "criteo_kaggle_gpu8", "mlperf_dcnv2_criteo1tb_gpu8x80gb",
            "mlperf_dcnv2_criteo1tb_gpu64x80gb", "mlperf_dcnv2_criteo1tb_gpu8x16gb_uvm"}


def test_required_plans_exist() -> None:
    assert REQUIRED <= {p.stem for p in (ROOT / "inputs").glob("*.json")}
    assert {p.stem for p in ROOT.glob("*.json")} == {p.stem for p in (ROOT / "inputs").glob("*.json")}


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "inputs").glob("*.json")))
def test_regenerates_identically(name: str) -> None:
    inputs = PlannerInputs.load(str(ROOT / "inputs" / f"{name}.json"))
    regenerated = planfile.dumps(make_plan_file(inputs, DLRMTrain.TABLES_PATH))
    assert regenerated == (ROOT / f"{name}.json").read_text(), (
        f"sharding_plans/{name}.json is stale: run `make plans` and commit the result")


def test_uvm_variant_needs_the_cache() -> None:
    pf = planfile.read(ROOT / "mlperf_dcnv2_criteo1tb_gpu8x16gb_uvm.json")
    kernels = {ps.compute_kernel for mp in pf.plan.plan.values() for ps in mp.values()}
    assert "fused_uvm_caching" in kernels
