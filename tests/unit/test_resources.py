"""The memory a rank plans with: the container's cgroup limit, not the node's RAM; device memory
left to the dense part as TorchRec's heuristic leaves it; a plan of another host size refused
(issue 24 item 4, no process group)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dlrm_dist.config import load_config
from dlrm_dist.distributed import resources
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.planning import PlanError
from dlrm_dist.planning.plan import make_plan
from dlrm_dist.planning.types import JobSpec
from dlrm_dist.training.build import prepare

GB = 1024**3
SMALL = ["--data.schema=demo:table_sizes=100/2000/50/700", "--model.bottom_mlp=13-32-16", "--model.top_mlp=16-1"]


def _cgroups(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc)
    return root, tmp_path / "proc_cgroup"


def test_cgroup_v2_limit_of_the_process_or_an_ancestor(tmp_path: Path, monkeypatch) -> None:
    root, proc = _cgroups(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/memory.max": "max\n", "kubepods/pod1/memory.max": f"{8 * GB}\n",
        "kubepods/pod1/ctr/memory.max": "max\n"})
    assert resources.cgroup_memory_limit(root, proc) == 8 * GB  # the pod's limit binds its container
    monkeypatch.setattr(resources, "physical_memory_bytes", lambda: 2048 * GB)
    assert resources.host_memory_bytes(root, proc) == 8 * GB  # torchx --memMB 8192, not the node's 2 TB
    monkeypatch.setattr(resources, "physical_memory_bytes", lambda: 4 * GB)
    assert resources.host_memory_bytes(root, proc) == 4 * GB  # a limit above RAM changes nothing


def test_cgroup_v1_and_unlimited(tmp_path: Path) -> None:
    root, proc = _cgroups(tmp_path, "4:memory:/slurm/job7\n1:cpu:/\n", {
        "memory/slurm/job7/memory.limit_in_bytes": f"{400000 * 1024 * 1024}\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n"})  # v1's "no limit"
    assert resources.cgroup_memory_limit(root, proc) == 400000 * 1024 * 1024
    root, proc = _cgroups(tmp_path / "none", "0::/\n", {"memory.max": "max\n"})
    assert resources.cgroup_memory_limit(root, proc) is None


def test_the_planner_sees_the_cgroup_limit_and_leaves_the_dense_reservation(monkeypatch) -> None:
    monkeypatch.setattr(resources, "host_memory_bytes", lambda *a: 6 * GB)
    prepared = prepare(load_config(SMALL), DistEnv(0, 2, 0, 2, torch.device("cpu"), "gloo"))
    ebc = prepared.model.model.sparse_arch
    reserved = resources.dense_reservation_bytes(prepared.model, [ebc], 1024, [1.0] * 4)
    dense = sum(p.numel() * 4 for n, p in prepared.model.named_parameters() if "embedding_bags" not in n)
    dense += sum(b.numel() * b.element_size() for b in prepared.model.buffers())
    assert reserved == 6 * dense + 20 * 1024 * 4 * 8  # TorchRec's HeuristicalStorageReservation multipliers
    assert prepared.plan_file.inputs.topology.ddr_gb == pytest.approx((6 * GB - 2 * reserved) / GB)


def test_cuda_planning_subtracts_the_reservation_from_device_memory(monkeypatch) -> None:
    monkeypatch.setattr(resources, "device_memory_bytes", lambda d: 80 * GB)
    monkeypatch.setattr(resources, "host_memory_bytes", lambda *a: 1024 * GB)
    prepared = prepare(load_config(SMALL), DistEnv(0, 2, 0, 2, torch.device("cpu"), "gloo"))
    job = JobSpec(world_size=8, local_size=8, device=torch.device("cuda", 0), batch_size_per_rank=512)
    topo = make_plan(prepared.model, job).inputs.topology
    ebc = prepared.model.model.sparse_arch
    reserved = resources.dense_reservation_bytes(prepared.model, [ebc], 512, [1.0] * 4)
    assert topo.hbm_gb == pytest.approx((80 * GB - reserved) / GB) and topo.ddr_gb == 1024


def test_a_plan_for_other_hosts_is_refused(tmp_path: Path) -> None:
    """8 ranks as 2 x 4 with a plan for 1 x 8: shards of rank 5 would be placed on cuda:5."""
    from dlrm_dist.cli.plan_main import main as plan_main

    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps({"tables": [{"name": f"t_cat_{i}", "rows": r, "dim": 16, "feature_names": [f"cat_{i}"]}
                                             for i, r in enumerate((100, 2000, 50, 700))]}))
    plan = tmp_path / "p8.json"
    assert plan_main(["make", "--tables", str(tables), "--world-size", "8", "--ranks-per-host", "8",
                      "--device", "cpu", "-o", str(plan)]) == 0
    cfg = load_config(SMALL + [f"--plan={plan}"])
    assert prepare(cfg, DistEnv(0, 8, 0, 8, torch.device("cpu"), "gloo")).plan
    with pytest.raises(PlanError, match=r"made for 8 ranks per host, but this job runs 4 per host.*--ranks-per-host 4"):
        prepare(cfg, DistEnv(0, 8, 0, 4, torch.device("cpu"), "gloo"))
