"""The CUDA-only choices, tested on the CPU with CUDA stand-ins (issue 24 items 6 and 10):
the pipeline for cached tables, TF32 through the fp32_precision API, device-time step
windows, and fbgemm's optimizer step restored on resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchrec.distributed.types import ParameterSharding, ShardingPlan

import dlrm_dist.distributed.parallel as parallel
from dlrm_dist.training.timing import WindowTimer


def _plan(*kernels: str) -> ShardingPlan:
    return ShardingPlan({"model.sparse_arch": {f"t{i}": ParameterSharding("table_wise", k, [0])
                                               for i, k in enumerate(kernels)}})


def test_cached_tables_on_cuda_train_through_the_prefetch_pipeline(monkeypatch) -> None:
    made = []
    monkeypatch.setattr(parallel, "PrefetchTrainPipelineSparseDist", lambda *a, **k: made.append(("prefetch", k)) or "P")
    monkeypatch.setattr(parallel, "TrainPipelineSparseDist", lambda *a, **k: made.append(("sparse", k)) or "S")
    cached = SimpleNamespace(plan=_plan("fused", "fused_uvm_caching"))
    plain = SimpleNamespace(plan=_plan("fused", "fused_uvm", "dense"))
    assert parallel.uses_cache(cached.plan) and not parallel.uses_cache(plain.plan)
    assert parallel.train_pipeline(cached, None, torch.device("cuda", 0)) == "P"
    assert parallel.train_pipeline(plain, None, torch.device("cuda", 0)) == "S"
    assert parallel.train_pipeline(cached, None, torch.device("cpu")) == "S"  # no streams on the CPU
    assert all(k == {"execute_all_batches": True} for _, k in made)


def test_tf32_through_the_fp32_precision_api_only() -> None:
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        parallel.set_matmul_precision(True, torch.device("cuda", 0))
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
        parallel.set_matmul_precision(False, torch.device("cuda", 0))
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        # Had a legacy flag been set, torch would now raise on reading the mixed state.
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


class _FakeEvent:
    """torch.cuda.Event stand-in: 'device time' advances 40 ms per recorded event."""

    clock = 0.0
    synced: list = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing

    def record(self) -> None:
        _FakeEvent.clock += 40.0
        self.t = _FakeEvent.clock

    def synchronize(self) -> None:
        _FakeEvent.synced.append(self.t)

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return end.t - self.t


def test_step_windows_are_device_time_on_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    timer = WindowTimer(torch.device("cuda", 0))
    timer.start()
    assert timer.elapsed_s() == pytest.approx(0.04) and len(_FakeEvent.synced) == 1  # one wait per window
    assert timer.elapsed_s() == pytest.approx(0.04)  # the next window starts where this one ended
    cpu = WindowTimer(torch.device("cpu"))
    cpu.start()
    assert 0 <= cpu.elapsed_s() < 1


def test_resume_sets_the_fused_optimizers_step() -> None:
    seen = []
    model = SimpleNamespace(fused_optimizer=SimpleNamespace(set_optimizer_step=seen.append))
    parallel.restore_optimizer_step(model, 15)
    parallel.restore_optimizer_step(SimpleNamespace(), 15)  # no fused tables: nothing to do
    assert seen == [15]
