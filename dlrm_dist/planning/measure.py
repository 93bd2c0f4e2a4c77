"""Measuring this machine for a calibration file (``dlrm-plan calibrate``), and timing sharded steps.

Every figure comes from the code a training job runs, in wall time and in the rank process's CPU
time (``time.process_time``: the work, whatever else shares the core; calibration.py says why):
- embedding kernels: fbgemm's ``SplitTableBatchedEmbeddingBagsCodegen`` on CPU host memory with
  the fused optimizer (the ``fused`` kernel TorchRec's sharded EBC uses) and fbgemm's
  ``DenseTableBatchedEmbeddingBagsCodegen`` plus a torch optimizer step (``dense``), per dim,
  rows and pooling factor; measured on every rank at once, so a rank sees the contention its
  job will (4 ranks on 2 cores get half a core each);
- all-to-all and all-reduce over the job's backend and world size, per message size (wall and CPU
  time: a collective's CPU time is its work, the rest waiting for the other ranks);
- the dense part's GEMM rate (float32 matmul of the sizes small MLPs use);
- the rest of a sharded training step (TorchRec's input distribution, KJT handling, the
  optimizer), from a tiny DistributedModelParallel model stepped with 1 and 4 tables;
- the receiving side of the all-to-alls: the CPU time of the ranks holding no table when every
  table is on rank 0, for three probes (a base, many ids, many pooled values), so the cost per
  step, per id sent and per pooled value received can be told apart.

This module owns the grid (``Sizes``), the kernel, collective, GEMM, step and receiving-side
measurements, spawning ranks, and fitting every rank's raw figures into a CalibrationModel
(``build``). The sharded-step harness the step probes run on (``StepJob``, ``ShardedSteps``,
``sharded_step_ms``, ``thread_sched_ms``) is planning/sharded_steps.py's.

``calibrate(...)`` spawns the ranks itself (torch.multiprocessing, gloo, a timeout);
``measure_in_group(...)`` is the same inside an existing process group (a job calibrating
itself). ``run_ranks`` (here) and ``ShardedSteps`` (sharded_steps.py) are also what
benchmarks/calibrate_validate.py times plans with.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

from dlrm_dist.planning.calibration import (
    VERSION, FORMAT, CalibrationError, CalibrationModel, fit_collective, fit_line, fit_nonnegative, KernelModel,
)
from dlrm_dist.planning.sharded_steps import StepJob, sharded_step_ms

RANK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Sizes:
    """What to measure (defaults: the grid ``dlrm-plan calibrate`` runs, about a minute)."""

    dims: tuple[int, ...] = (16, 64, 128)
    rows: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)
    pooling_factors: tuple[float, ...] = (1.0, 20.0, 100.0)
    batch: int = 512  # samples per call; the ids are batch x pooling factor
    kernels: tuple[str, ...] = ("fused", "dense")
    dense_max_rows: int = 1_000_000  # the dense kernel's optimizer step touches every row: not larger
    max_table_bytes: int = 1_500_000_000  # per rank, all ranks at once: 4 ranks x 1.5 GB fit a 23 GB host
    optimizer: str = "rowwise_adagrad"
    comm_bytes: tuple[int, ...] = (1 << 10, 1 << 16, 1 << 20, 1 << 23)
    gemm: tuple[tuple[int, int, int], ...] = ((512, 512, 256), (2048, 256, 512), (2048, 512, 64))
    reps: int = 3
    step_tables: tuple[int, ...] = (1, 4)
    step_count: int = 8
    # the receiving-side probes: (dim, pooling factor, batch per rank) of 4 small tables all on rank 0:
    # a base, many ids, many pooled values
    receive_probes: tuple[tuple[int, float, int], ...] = ((8, 4.0, 256), (8, 64.0, 256), (64, 4.0, 256))


TINY = Sizes(dims=(8, 16), rows=(1000, 4000), pooling_factors=(1.0, 4.0), batch=32, comm_bytes=(256, 4096),
             gemm=((64, 64, 32),), reps=1, step_tables=(1, 2), step_count=2, dense_max_rows=4000,
             receive_probes=((4, 2.0, 32), (4, 8.0, 32), (16, 2.0, 32)))


# -- spawning ranks -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(fn: Callable[..., Any], rank: int, world_size: int, port: int, backend: str, out_dir: str,
                timeout_s: float, args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        from dlrm_dist.logs import quiet_libraries

        quiet_libraries()
        torch.set_num_threads(threads_per_rank(world_size))
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        result = fn(*args)
        dist.barrier()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - the parent reports the rank's traceback in one error
        Path(out_dir, f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def threads_per_rank(world_size: int) -> int:
    return max(1, (os.cpu_count() or 1) // world_size)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
              timeout_s: float = RANK_TIMEOUT_S) -> list[Any]:
    """``fn(*args)`` on ``world_size`` spawned ranks in one process group; each rank's JSON result.

    A rank that fails, or ranks still running after ``timeout_s``, stop everything with one
    CalibrationError (the failing rank's last line, or the timeout).
    """
    ctx = mp.get_context("spawn")
    port = _free_port()
    with tempfile.TemporaryDirectory() as out:
        procs = [ctx.Process(target=_rank_entry, args=(fn, r, world_size, port, backend, out, timeout_s, args),
                             daemon=True) for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        try:
            for p in procs:
                p.join(max(deadline - time.monotonic(), 0.0))
        finally:
            alive = [p for p in procs if p.is_alive()]
            for p in alive:
                p.kill()
                p.join()
        errors = sorted(Path(out).glob("rank*.err"))
        if errors:
            last = errors[0].read_text().strip().splitlines()[-1]
            raise CalibrationError(f"{errors[0].stem} failed: {last}")
        if alive:
            raise CalibrationError(f"{len(alive)} of {world_size} rank(s) still running after {timeout_s:.0f} s: "
                                   "stopped (raise --timeout, or measure when the machine is less loaded)")
        if any(p.exitcode != 0 for p in procs):
            raise CalibrationError(f"a rank exited with {[p.exitcode for p in procs]} and no traceback")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]


# -- embedding kernels ------------------------------------------------------------------------
def fbgemm_optimizer(name: str) -> Any:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    table = {"rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "adagrad": EmbOptimType.EXACT_ADAGRAD,
             "sgd": EmbOptimType.EXACT_SGD, "adam": EmbOptimType.ADAM}
    if name not in table:
        raise CalibrationError(f"optimizer {name!r} cannot be calibrated; choose one of {', '.join(table)}")
    return table[name]


def _kernel_module(kernel: str, rows: int, dim: int, optimizer: str) -> tuple[torch.nn.Module, Optional[torch.optim.Optimizer]]:
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice, DenseTableBatchedEmbeddingBagsCodegen, EmbeddingLocation, SplitTableBatchedEmbeddingBagsCodegen,
    )

    if kernel == "fused":
        module = SplitTableBatchedEmbeddingBagsCodegen(
            [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=fbgemm_optimizer(optimizer),
            learning_rate=0.01, eps=1e-8, pooling_mode=PoolingMode.SUM)
        return module, None
    module = DenseTableBatchedEmbeddingBagsCodegen([(rows, dim)], pooling_mode=PoolingMode.SUM, use_cpu=True)
    # TorchRec's dense kernel leaves the update to the job's optimizer over the whole weight.
    return module, torch.optim.Adagrad(module.parameters(), lr=0.01)


@dataclass(frozen=True)
class KernelTime:
    """One kernel setting's medians over the timed calls: wall and CPU ms, forward and backward."""

    ids: int
    fwd_ms: float
    bwd_ms: float
    fwd_cpu_ms: float
    bwd_cpu_ms: float


def time_kernel(kernel: str, rows: int, dim: int, pooling_factor: float, batch: int, optimizer: str,
                reps: int) -> KernelTime:
    """The median of ``reps`` calls after a warm-up (a job's steady state), wall and CPU time."""
    module, opt = _kernel_module(kernel, rows, dim, optimizer)
    per_sample = max(int(round(pooling_factor)), 1)
    ids = batch * per_sample
    gen = torch.Generator().manual_seed(rows + dim)
    indices = torch.randint(0, rows, (ids,), generator=gen)
    offsets = torch.arange(0, batch + 1, dtype=torch.int64) * per_sample
    fwd, bwd, fwd_cpu, bwd_cpu = [], [], [], []
    for i in range(reps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        out = module(indices, offsets)
        t1, c1 = time.perf_counter(), time.process_time()
        out.backward(torch.ones_like(out))
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        t2, c2 = time.perf_counter(), time.process_time()
        if i:  # the first call allocates and warms caches
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            fwd_cpu.append(c1 - c0)
            bwd_cpu.append(c2 - c1)
    return KernelTime(ids, *(statistics.median(x) * 1e3 for x in (fwd, bwd, fwd_cpu, bwd_cpu)))


def measure_kernels(sizes: Sizes) -> list[dict[str, Any]]:
    points = []
    for kernel in sizes.kernels:
        for rows in sizes.rows:
            if kernel == "dense" and rows > sizes.dense_max_rows:
                continue
            for dim in sizes.dims:
                if rows * dim * 4 > sizes.max_table_bytes:
                    continue
                for pf in sizes.pooling_factors:
                    t = time_kernel(kernel, rows, dim, pf, sizes.batch, sizes.optimizer, sizes.reps)
                    points.append({"kernel": kernel, "optimizer": sizes.optimizer, "dim": dim, "rows": rows,
                                   "pooling_factor": float(pf), "ids": t.ids, "fwd_ms": max(t.fwd_ms, 1e-6),
                                   "bwd_ms": max(t.bwd_ms, 1e-6), "fwd_cpu_ms": max(t.fwd_cpu_ms, 1e-6),
                                   "bwd_cpu_ms": max(t.bwd_cpu_ms, 1e-6)})
    return points


# -- collectives and GEMMs --------------------------------------------------------------------
def _time_collective(kind: str, nbytes: int, reps: int) -> tuple[float, float]:
    """The slowest rank's best wall and CPU time (ms) of one collective of ``nbytes`` per rank."""
    world = dist.get_world_size()
    numel = max(nbytes // 4, world)
    numel -= numel % world
    x, y = torch.ones(numel), torch.empty(numel)
    best, best_cpu = float("inf"), float("inf")
    for i in range(reps + 1):
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        if kind == "all_to_all":
            dist.all_to_all_single(y, x)
        else:
            dist.all_reduce(x)
        if i:
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
    slowest = torch.tensor([best * 1e3, best_cpu * 1e3])
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(slowest[0].item()), float(slowest[1].item())


def measure_collectives(sizes: Sizes) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in ("all_to_all", "all_reduce"):
        out[kind] = []
        for b in sizes.comm_bytes:
            wall, cpu = _time_collective(kind, b, max(sizes.reps, 3))
            out[kind].append({"bytes": b, "ms": max(wall, 1e-6), "cpu_ms": max(cpu, 1e-6)})
    return out


def measure_gemm(sizes: Sizes) -> list[dict[str, Any]]:
    points = []
    for m, n, k in sizes.gemm:
        a, b = torch.randn(m, k), torch.randn(k, n)
        best = float("inf")
        for i in range(max(sizes.reps, 3) + 1):
            t0 = time.perf_counter()
            a @ b
            if i:
                best = min(best, time.perf_counter() - t0)
        points.append({"m": m, "n": n, "k": k, "ms": max(best * 1e3, 1e-6)})
    return points


# -- the step probes (on planning/sharded_steps.py's harness) ---------------------------------
def _tw_plan(job: StepJob, world_size: int, on_rank0: bool = False) -> Any:
    """Table-wise, tables round-robin over ranks (the step-overhead probe's plan), or all on rank 0
    (the receiving-side probe's)."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
    from torchrec.distributed.types import ShardingPlan

    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=n, embedding_dim=d, num_embeddings=r,
                                                             feature_names=[f"f_{n}"]) for n, r, d, _ in job.tables],
                                 device=torch.device("meta"))
    per = {n: table_wise(rank=0 if on_rank0 else i % world_size, compute_kernel="fused")
           for i, (n, _, _, _) in enumerate(job.tables)}
    return ShardingPlan({"ebc": construct_module_sharding_plan(ebc, per, local_size=world_size,
                                                               world_size=world_size, device_type="cpu")})


def measure_step(sizes: Sizes) -> dict[str, Any]:
    """A tiny sharded step with 1 and more tables: its cost beyond the modeled parts is the overhead."""
    world = dist.get_world_size()
    out = []
    for count in sizes.step_tables:
        job = StepJob(tables=tuple((f"t{i}", 1000, 16, 1.0) for i in range(count)), mlp=(8, 1), batch_per_rank=64)
        result = sharded_step_ms(job, _tw_plan(job, world), sizes.step_count)
        slowest = torch.tensor([min(result["steps_ms"]), statistics.median(result["steps_cpu_ms"])])
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        out.append({"tables": count, "ms": float(slowest[0].item()), "cpu_ms": float(slowest[1].item())})
    return {"points": out, "receive": measure_receive(sizes)}


RECEIVE_TABLES = 4


def measure_receive(sizes: Sizes) -> list[dict[str, Any]]:
    """The receiving side of the all-to-alls: every table on rank 0, the other ranks' CPU time per
    step (the slowest's); their own batch's ids go out and its pooled embeddings come back. One
    rank has no all-to-all: nothing to measure."""
    world = dist.get_world_size()
    if world == 1:
        return []
    out = []
    for dim, pf, batch in sizes.receive_probes:
        job = StepJob(tables=tuple((f"t{i}", 1000, dim, pf) for i in range(RECEIVE_TABLES)), mlp=(8, 1),
                      batch_per_rank=batch)
        result = sharded_step_ms(job, _tw_plan(job, world, on_rank0=True), sizes.step_count)
        mine = torch.tensor([statistics.median(result["steps_cpu_ms"]) if dist.get_rank() else 0.0])
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        per = max(int(round(pf)), 1)
        out.append({"tables": RECEIVE_TABLES, "ids": batch * per * RECEIVE_TABLES,
                    "values": batch * dim * RECEIVE_TABLES, "cpu_ms": float(mine.item())})
    return out


# -- the whole calibration --------------------------------------------------------------------
def measure_in_group(sizes: Sizes) -> dict[str, Any]:
    """Every measurement, in the current process group (all ranks take part); raw figures."""
    dist.barrier()
    kernels = measure_kernels(sizes)
    dist.barrier()
    comms = measure_collectives(sizes)
    gemm = measure_gemm(sizes)
    step = measure_step(sizes)
    return {"embedding": kernels, **comms, "gemm": gemm, "step": step}


def _machine(world_size: int) -> dict[str, Any]:
    import fbgemm_gpu

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count() or 1,
            "threads_per_rank": threads_per_rank(world_size), "torch": torch.__version__,
            "fbgemm": getattr(fbgemm_gpu, "__version__", "?"),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _slowest_kernels(per_rank: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per kernel setting, the slowest rank's figure (the one a step waits for)."""
    out = []
    for points in zip(*per_rank):
        p = dict(points[0])
        p["fwd_ms"] = max(q["fwd_ms"] for q in points)
        p["bwd_ms"] = max(q["bwd_ms"] for q in points)
        for key in ("fwd_cpu_ms", "bwd_cpu_ms"):
            if all(key in q for q in points):
                p[key] = max(q[key] for q in points)
        out.append(p)
    return out


def build(raw: Sequence[dict[str, Any]], world_size: int, backend: str) -> CalibrationModel:
    """The calibration file of every rank's raw figures (collectives and steps: already the slowest rank's)."""
    first = raw[0]
    embedding = _slowest_kernels([r["embedding"] for r in raw])
    fits = {}
    for kind in ("all_to_all", "all_reduce"):
        latency, bandwidth = fit_collective([(p["bytes"], p["ms"]) for p in first[kind]])
        fits[kind] = {"latency_ms": latency, "bandwidth_gbps": bandwidth, "points": first[kind]}
        if all("cpu_ms" in p for p in first[kind]):
            cpu_latency, cpu_bandwidth = fit_collective([(p["bytes"], p["cpu_ms"]) for p in first[kind]])
            fits[kind].update(cpu_latency_ms=cpu_latency, cpu_bandwidth_gbps=cpu_bandwidth)
    gflops = [2.0 * p["m"] * p["n"] * p["k"] / (p["ms"] * 1e-3) / 1e9 for p in first["gemm"]]
    step = _step_fit(first["step"]["points"], embedding, fits["all_to_all"]["latency_ms"])
    step.update(_receive_fit(first["step"].get("receive", []), step))
    data = {"format": FORMAT, "version": VERSION, "machine": _machine(world_size), "device": "cpu",
            "backend": backend, "world_size": world_size, "embedding": embedding, **fits,
            "dense": {"gemm_gflops": sorted(gflops)[len(gflops) // 2], "points": first["gemm"]}, "step": step}
    return CalibrationModel.model_validate(data)


def _step_fit(points: list[dict[str, Any]], embedding: list[dict[str, Any]], latency_ms: float) -> dict[str, float]:
    """fixed + per_table x tables: the probe's step time less its (tiny) kernels and collective latencies."""
    from dlrm_dist.planning.calibration import KernelPoint

    kernel_points = [KernelPoint(**p) for p in embedding]
    has_cpu = all("cpu_ms" in p for p in points) and all(q.fwd_cpu_ms is not None for q in kernel_points)
    out = {}
    for basis, key, names in (("wall", "ms", ("fixed_ms", "per_table_ms")),
                              ("cpu", "cpu_ms", ("cpu_fixed_ms", "cpu_per_table_ms"))):
        if basis == "cpu" and not has_cpu:
            continue
        fwd, bwd = KernelModel(kernel_points, basis).ms("fused", embedding[0]["optimizer"], 16, 1000, 64.0)
        xs = [float(p["tables"]) for p in points]
        # the collectives' latency is waiting (not CPU work) but part of the wall-clock probe
        ys = [max(p[key] - p["tables"] * (fwd + bwd) - (4 * latency_ms if basis == "wall" else 0.0), 0.0)
              for p in points]
        out.update(zip(names, fit_line(xs, ys)))
    return out


def _receive_fit(points: list[dict[str, Any]], step: dict[str, float]) -> dict[str, float]:
    """receive_fixed_ms, _per_id_ms and _per_value_ms: the probes' CPU time on a rank holding no
    table, less the step overhead every rank pays (fixed + per table), fitted over ids and values."""
    if not points or "cpu_fixed_ms" not in step:
        return {}
    ys = [max(p["cpu_ms"] - step["cpu_fixed_ms"] - step["cpu_per_table_ms"] * p["tables"], 0.0) for p in points]
    columns = [[1.0] * len(points)] + [[float(p[k]) for p in points] for k in ("ids", "values")]
    fixed, per_id, per_value = fit_nonnegative(columns, ys)
    return {"receive_fixed_ms": fixed, "receive_per_id_ms": per_id, "receive_per_value_ms": per_value}


def _rank_measure(sizes: Sizes) -> dict[str, Any]:
    return measure_in_group(sizes)


def calibrate(world_size: int, backend: str = "gloo", sizes: Sizes = Sizes(),
              timeout_s: float = RANK_TIMEOUT_S) -> CalibrationModel:
    """Spawns ``world_size`` ranks over ``backend``, measures, and returns the calibration."""
    if backend != "gloo":
        raise CalibrationError(f"backend {backend!r}: this machine calibrates over gloo (CPU ranks) only")
    raw = run_ranks(_rank_measure, world_size, sizes, backend=backend, timeout_s=timeout_s)
    return build(raw, world_size, backend)
