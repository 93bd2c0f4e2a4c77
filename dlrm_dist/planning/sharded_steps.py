"""A small embedding-heavy job trained step by step under TorchRec's DistributedModelParallel, timed.

This module owns the harness both calibration and the validation benchmark step a sharded model
with: ``StepJob`` (the tables and dense MLP), the model it builds (``_Model``: one
EmbeddingBagCollection at module path ``ebc`` and an MLP), a few fixed random batches,
``ShardedSteps`` (DMP with a given ShardingPlan, fused embedding optimizer, SGD for the MLP; each
step's wall and CPU time), ``sharded_step_ms`` (the mean after a warm-up) and ``thread_sched_ms``
(the calling thread's run and wait time from /proc, the other processes' load). It runs inside an
existing process group and knows nothing of calibration files: planning/measure.py's step and
receiving-side probes, and benchmarks/calibrate_validate.py's plan timings, are built on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class StepJob:
    """A small embedding-heavy job: tables (name, rows, dim, pooling factor) and a dense MLP."""

    tables: tuple[tuple[str, int, int, float], ...]
    mlp: tuple[int, ...] = (64, 1)
    batch_per_rank: int = 512
    optimizer: str = "rowwise_adagrad"

    @property
    def dense_flops_per_sample(self) -> float:
        sizes = [sum(t[2] for t in self.tables), *self.mlp]
        return float(sum(2 * a * b for a, b in zip(sizes, sizes[1:])))

    @property
    def dense_parameters(self) -> int:
        sizes = [sum(t[2] for t in self.tables), *self.mlp]
        return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


class _Model(torch.nn.Module):
    def __init__(self, job: StepJob) -> None:
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=n, embedding_dim=d, num_embeddings=r, feature_names=[f"f_{n}"])
                    for n, r, d, _ in job.tables], device=torch.device("meta"))
        sizes = [sum(t[2] for t in job.tables), *job.mlp]
        layers: list[torch.nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.mlp = torch.nn.Sequential(*layers[:-1])

    def forward(self, kjt: Any) -> torch.Tensor:
        return self.mlp(self.ebc(kjt).values()).squeeze(-1)


def _batches(job: StepJob, count: int, seed: int) -> list[Any]:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        lengths, values = [], []
        for n, rows, _, pf in job.tables:
            per = max(int(round(pf)), 1)
            lengths.append(torch.full((job.batch_per_rank,), per, dtype=torch.int64))
            values.append(torch.randint(0, rows, (job.batch_per_rank * per,), generator=gen))
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=[f"f_{t[0]}" for t in job.tables],
                                                  values=torch.cat(values), lengths=torch.cat(lengths))
        out.append((kjt, torch.randint(0, 2, (job.batch_per_rank,), generator=gen).float()))
    return out


def thread_sched_ms() -> Optional[tuple[float, float]]:
    """(ms on a CPU, ms runnable but waiting for one) of the calling thread so far, from Linux's
    /proc/thread-self/schedstat; None where there is none. The wait is the core given to other
    threads: on a shared machine, the other processes' load."""
    try:
        run_ns, wait_ns, _ = Path("/proc/thread-self/schedstat").read_text().split()[:3]
    except (OSError, ValueError):
        return None
    return int(run_ns) / 1e6, int(wait_ns) / 1e6


class ShardedSteps:
    """``job`` under DistributedModelParallel with ``plan`` (a ShardingPlan) in this process group,
    trained step by step on a few fixed random batches (fused embedding optimizer, SGD for the MLP)."""

    def __init__(self, job: StepJob, plan: Any) -> None:
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        from dlrm_dist.optimizer_registry import mark_in_backward

        model = _Model(job)
        mark_in_backward(model.ebc.parameters(), job.optimizer, lr=0.01, eps=1e-8)
        self.model = DistributedModelParallel(module=model, device=torch.device("cpu"), plan=plan,
                                              sharders=[EmbeddingBagCollectionSharder()])
        self.dense = torch.optim.SGD([p for _, p in in_backward_optimizer_filter(self.model.named_parameters())],
                                     lr=0.01)
        self.data = _batches(job, 4, seed=1234 + dist.get_rank())
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.step = 0
        self.cpu_ms: list[float] = []  # the last run's steps in this process's CPU time

    def run(self, steps: int) -> list[float]:
        """Each step's wall time (ms) on this rank (CPU times in ``cpu_ms``)."""
        times, self.cpu_ms = [], []
        for _ in range(steps):
            kjt, labels = self.data[self.step % len(self.data)]
            self.step += 1
            t0, c0 = time.perf_counter(), time.process_time()
            loss = self.loss_fn(self.model(kjt), labels)
            loss.backward()
            self.dense.step()
            self.dense.zero_grad(set_to_none=True)
            times.append((time.perf_counter() - t0) * 1e3)
            self.cpu_ms.append((time.process_time() - c0) * 1e3)
        return times


def sharded_step_ms(job: StepJob, plan: Any, steps: int, warmup: int = 2) -> dict[str, Any]:
    """This rank's mean step time (ms) of ``job`` under ``plan`` after ``warmup`` steps, and each step's."""
    runner = ShardedSteps(job, plan)
    runner.run(warmup)
    kept = runner.run(steps)
    return {"mean_ms": sum(kept) / len(kept), "steps_ms": kept, "steps_cpu_ms": runner.cpu_ms}
