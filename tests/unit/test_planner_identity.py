"""`dlrm-plan make`'s plans stay byte-identical while the planner is made faster.

Each instance below is planned and its plan file text (planfile.dumps: sorted keys, every shard,
estimate and note; plan files hold no timings) is hashed; the digests in
tests/unit/data/planner_identity.json were written by the planner as it was before the speed work
(commit efbd305), so any change of a shard, a rank, a kernel or an estimate's last bit fails here.
The instances cover what the enumeration distinguishes: cuda with and without UVM caching, tables
too big for one rank (column-/row-wise splits), one that fits nowhere (its report), cpu topologies, managed tables,
per-table constraints and load factors, and every embedding optimizer. Calibrated plans are not
hashed here (the calibration's cost model is being changed on its own); test_planner_storage.py
checks that a calibrated enumeration's estimates are TorchRec's calibrated estimator's.

To record digests of a deliberate plan change: ``python tests/unit/test_planner_identity.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script (--write) too

from benchmarks.planner_instances import generate  # noqa: E402
from dlrm_dist.planning import planfile  # noqa: E402
from dlrm_dist.planning.errors import NoFitError  # noqa: E402
from dlrm_dist.planning.planner import make_plan_file  # noqa: E402
from dlrm_dist.planning.types import Budgets, PlannerInputs, TableSpec, TopologySpec  # noqa: E402

GOLDEN = Path(__file__).with_name("data") / "planner_identity.json"
MODULE_PATH = "model.sparse_arch"
SUITE_SEEDS = (1004, 1027, 1022, 1043, 1019, 1009)  # small instances of the suite's generator


def _mixed(device: str, optimizer: str, world: int, per_host: int, hbm_gb: float, ddr_gb: float) -> PlannerInputs:
    """Tables of every kind the enumeration treats apart: one-hot and multi-hot, constrained, own load factor,
    a table too big for one rank, dims the fused kernel can and cannot split."""
    tables = (
        TableSpec("t_small", 1_000, 16, 1.0),
        TableSpec("t_multi", 250_000, 64, 12.5),
        TableSpec("t_wide", 40_000, 128, 3.0, sharding_types=("column_wise", "table_wise")),
        TableSpec("t_rw", 2_000_000, 32, 7.0, sharding_types=("row_wise", "table_row_wise", "table_wise")),
        TableSpec("t_clf", 3_000_000, 64, 2.0, cache_load_factor=0.35),
        TableSpec("t_odd", 77_777, 20, 1.5),
        TableSpec("t_big", 60_000_000, 128, 4.0),
        TableSpec("t_fused", 500_000, 48, 9.0, compute_kernels=("fused",)),
    )
    return PlannerInputs(tables=tables, topology=TopologySpec(world, per_host, device, hbm_gb=hbm_gb, ddr_gb=ddr_gb),
                         budgets=Budgets(cache_load_factor=0.15), batch_size_per_rank=1024, optimizer=optimizer)


def _managed() -> PlannerInputs:
    tables = (TableSpec("t_m", 400_000, 64, 4.0, managed=True), TableSpec("t_p", 50_000, 32, 2.0),
              TableSpec("t_q", 9_000, 16, 1.0))
    return PlannerInputs(tables=tables, topology=TopologySpec(4, 4, "cuda", hbm_gb=16.0, ddr_gb=128.0),
                         batch_size_per_rank=512, optimizer="adagrad")


INSTANCES: dict[str, Callable[[], PlannerInputs]] = {
    **{f"suite_{s}": (lambda s=s: generate(s).inputs) for s in SUITE_SEEDS},
    "mixed_cuda_8x16g_rowwise": lambda: _mixed("cuda", "rowwise_adagrad", 8, 8, 16.0, 256.0),
    "mixed_cuda_16x24g_adam": lambda: _mixed("cuda", "adam", 16, 8, 24.0, 512.0),
    "mixed_cuda_4x80g_sgd": lambda: _mixed("cuda", "sgd", 4, 4, 80.0, 512.0),
    "mixed_cpu_2x128g_adagrad": lambda: _mixed("cpu", "adagrad", 2, 2, 0.0, 128.0),
    "mixed_cpu_4x2hosts": lambda: _mixed("cpu", "rowwise_adagrad", 4, 2, 0.0, 96.0),
    "managed_cuda": _managed,
}


def digest(inputs: PlannerInputs) -> dict[str, object]:
    """The plan file's hash and bottleneck, or the no-fit report's text (which must not change either)."""
    try:
        pf = make_plan_file(inputs, module_path=MODULE_PATH)
    except NoFitError as e:
        return {"no_fit": str(e)}
    text = planfile.dumps(pf)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(),
            "bottleneck_ms": pf.estimates.summary.estimated_iteration_ms}


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, object]]:
    return json.loads(GOLDEN.read_text())


def test_every_instance_has_a_digest(golden: dict[str, dict[str, object]]) -> None:
    assert sorted(golden) == sorted(INSTANCES)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_plan_is_unchanged(name: str, golden: dict[str, dict[str, object]]) -> None:
    got = digest(INSTANCES[name]())
    want = golden[name]
    assert got.get("no_fit") == want.get("no_fit"), f"{name}: the no-fit report changed"
    assert got.get("bottleneck_ms") == want.get("bottleneck_ms"), f"{name}: bottleneck changed"
    assert got.get("sha256") == want.get("sha256"), f"{name}: the plan file's text changed (same bottleneck)"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_planner_identity.py --write   (records the current planner's digests)")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({n: digest(f()) for n, f in sorted(INSTANCES.items())}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
