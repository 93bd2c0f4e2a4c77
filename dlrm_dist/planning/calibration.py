"""The calibration file: this machine's measured costs, and the cost model built from them.

``dlrm-plan calibrate`` measures (planning/measure.py) and writes one of these; ``dlrm-plan
make --calibration F`` puts it in the planner inputs, where it replaces TorchRec's constant
bandwidths (torchrec_bridge.py turns it into a Topology and a calibrated estimator). The file
is a declared, versioned pydantic model like the other file formats::

    {"format": "dlrm_dist.calibration", "version": 1,
     "machine":   {host, cpu, cores, threads_per_rank, torch, fbgemm, created},
     "device": "cpu", "backend": "gloo", "world_size": 2,
     "embedding": [{kernel, optimizer, dim, rows, pooling_factor, ids, fwd_ms, bwd_ms,
                    fwd_cpu_ms, bwd_cpu_ms}, ...],
     "all_to_all": {latency_ms, bandwidth_gbps, cpu_latency_ms, cpu_bandwidth_gbps,
                    points: [{bytes, ms, cpu_ms}, ...]},
     "all_reduce": {...},
     "dense": {gemm_gflops, points: [{m, n, k, ms}, ...]},
     "step": {fixed_ms, per_table_ms, cpu_fixed_ms, cpu_per_table_ms,
              receive_fixed_ms, receive_per_id_ms, receive_per_value_ms}}

The model (pure arithmetic, no torch, so a plan file with a calibration reads without it):
an embedding kernel call costs ``c0 + c1 * ids`` (fwd and bwd apart; bwd includes fbgemm's
fused optimizer update), fitted by least squares per (kernel, optimizer, dim, rows) over the
pooling factors measured and interpolated in log(dim) and log(rows) between measured points
(clamped at the edges). A collective costs ``latency + bytes / bandwidth``. The dense part costs
3 x its forward FLOPs (forward + backward) at the measured GEMM rate plus an all-reduce of its
gradients. ``step`` is what a sharded training step costs beyond all of that (TorchRec's input
distribution, KJT handling, optimizer bookkeeping), measured on a tiny sharded model, and the
receiving side of the all-to-alls (per step, per id a rank's batch sends out, per pooled value it
gets back), measured on the ranks of probes whose tables are all on rank 0.

Work, not waiting: each kernel and step figure is also measured in CPU time (the rank process's
``time.process_time``; the ``*_cpu_ms`` fields). On a shared machine the wall time of a call is
its CPU time stretched by whatever else wants the core (measured on this 2-core VM at load 10:
fbgemm's fused backward 93-139 ms wall for 21-28 ms of CPU, the same CPU time alone or beside a
second rank), so a calibration taken under load is several times too slow in wall time but right
in CPU time. With one thread per rank the model therefore costs kernels and the step overhead by
their CPU time when the file has it (``cost_basis`` says which), and prediction.py turns the
ranks' work into a wall-clock step by sharing the host's cores among its ranks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence

from pydantic import Field, model_validator

from dlrm_dist.config.files import read_data
from dlrm_dist.errors import DlrmError
from dlrm_dist.fileio import publish_file
from dlrm_dist.validation import Strict, joined, validate

FORMAT = "dlrm_dist.calibration"
VERSION = 1
KERNELS = ("fused", "dense")  # what fbgemm runs on CPU (UVM kernels become host tables there)
MAX_MS = 1e9
MAX_COUNT = 2**62

Ms = Annotated[float, Field(gt=0, le=MAX_MS)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]


class CalibrationError(DlrmError):
    """A calibration file is unreadable or invalid, or does not fit the plan asked of it."""


# -- the declared file format ---------------------------------------------------------------
class MachineModel(Strict):
    """Where the figures were measured (for people and for the plan's notes)."""

    host: str
    cpu: str
    cores: int = Field(ge=1)
    threads_per_rank: int = Field(ge=1)
    torch: str
    fbgemm: str
    created: str  # ISO-8601 UTC


class KernelPoint(Strict):
    """One measured embedding kernel call: ``ids`` lookups into a ``rows`` x ``dim`` table."""

    kernel: Literal[KERNELS]
    optimizer: str = Field(min_length=1)
    dim: int = Field(ge=1, le=2**20)
    rows: Count
    pooling_factor: float = Field(gt=0, le=1e6)
    ids: Count  # per call (batch x pooling factor)
    fwd_ms: Ms
    bwd_ms: Ms  # backward with the fused optimizer update (fused) or + the optimizer step (dense)
    fwd_cpu_ms: Optional[Ms] = None  # the same calls' CPU time (absent in files from before it was measured)
    bwd_cpu_ms: Optional[Ms] = None


class CommPoint(Strict):
    bytes: int = Field(ge=0, le=MAX_COUNT)  # per rank
    ms: Ms
    cpu_ms: Optional[Ms] = None  # the slowest rank's CPU time of the same call (absent in older files)


class CollectiveFit(Strict):
    """``latency_ms + bytes / bandwidth``, fitted to ``points``; ``cpu_*`` the same fitted to the
    points' CPU times (the work of a collective; the rest of its wall time is waiting for the other
    ranks, which with more ranks than cores is their turn on the core: prediction.py shares the
    cores for that, so counting it again as work would count it twice)."""

    latency_ms: float = Field(ge=0, le=MAX_MS)
    bandwidth_gbps: float = Field(gt=0, le=1e6)  # 1e9 bytes/s per rank
    points: list[CommPoint] = Field(min_length=1)
    cpu_latency_ms: Optional[float] = Field(None, ge=0, le=MAX_MS)
    cpu_bandwidth_gbps: Optional[float] = Field(None, gt=0, le=1e6)

    def ms(self, nbytes: float) -> float:
        return self.latency_ms + nbytes / (self.bandwidth_gbps * 1e9) * 1e3

    def on(self, basis: Literal["cpu", "wall"]) -> tuple[float, float]:
        """(latency ms, bandwidth GB/s) on ``basis``: the CPU-time fit when asked and measured, else the wall one."""
        if basis == "cpu" and self.cpu_latency_ms is not None and self.cpu_bandwidth_gbps is not None:
            return self.cpu_latency_ms, self.cpu_bandwidth_gbps
        return self.latency_ms, self.bandwidth_gbps

    def cost_ms(self, basis: Literal["cpu", "wall"], nbytes: float) -> float:
        latency, bandwidth = self.on(basis)
        return latency + nbytes / (bandwidth * 1e9) * 1e3


class GemmPoint(Strict):
    m: Count
    n: Count
    k: Count
    ms: Ms


class DenseFit(Strict):
    gemm_gflops: float = Field(gt=0, le=1e9)
    points: list[GemmPoint] = Field(min_length=1)


class StepFit(Strict):
    """A sharded step's cost beyond kernels, collectives and GEMMs: ``fixed + per_table x tables``,
    plus the receiving side of the all-to-alls that every rank pays whatever it holds, in CPU time:
    ``receive_fixed_ms`` per step, ``receive_per_id_ms`` per id its batch sends to the tables'
    owners and ``receive_per_value_ms`` per pooled embedding value it gets back (and returns the
    gradient of)."""

    fixed_ms: float = Field(ge=0, le=MAX_MS)
    per_table_ms: float = Field(ge=0, le=MAX_MS)
    cpu_fixed_ms: Optional[float] = Field(None, ge=0, le=MAX_MS)  # the same in CPU time
    cpu_per_table_ms: Optional[float] = Field(None, ge=0, le=MAX_MS)
    receive_fixed_ms: Optional[float] = Field(None, ge=0, le=MAX_MS)  # absent in files from before it was measured
    receive_per_id_ms: Optional[float] = Field(None, ge=0, le=MAX_MS)
    receive_per_value_ms: Optional[float] = Field(None, ge=0, le=MAX_MS)


class CalibrationModel(Strict):
    """A calibration file (version 1)."""

    format: Literal[FORMAT]
    version: Literal[1]
    machine: MachineModel
    device: Literal["cpu", "cuda"]
    backend: Literal["gloo", "nccl"]
    world_size: int = Field(ge=1, le=2**16)
    embedding: list[KernelPoint] = Field(min_length=1)
    all_to_all: CollectiveFit
    all_reduce: CollectiveFit
    dense: DenseFit
    step: StepFit

    @model_validator(mode="after")
    def _one_point_per_setting(self) -> "CalibrationModel":
        seen: dict[tuple, int] = {}
        for i, p in enumerate(self.embedding):
            key = (p.kernel, p.optimizer, p.dim, p.rows, p.ids)
            if key in seen:
                raise ValueError(f"embedding[{i}] measures the same kernel, optimizer, dim, rows and ids as "
                                 f"embedding[{seen[key]}]")
            seen[key] = i
        return self

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @property
    def cost_basis(self) -> Literal["cpu", "wall"]:
        """What the model costs work by: CPU time with one thread per rank when every figure has it
        (a rank's CPU time is its wall time on a core of its own, whatever the load was while
        measuring), else the wall times measured."""
        has_cpu = all(p.fwd_cpu_ms is not None and p.bwd_cpu_ms is not None for p in self.embedding)
        has_cpu = has_cpu and self.step.cpu_fixed_ms is not None and self.step.cpu_per_table_ms is not None
        return "cpu" if has_cpu and self.machine.threads_per_rank == 1 else "wall"


def from_data(data: Any, origin: str) -> CalibrationModel:
    """A validated calibration; every problem in one CalibrationError naming ``origin``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise CalibrationError(f"{origin}: not a dlrm_dist calibration file (format {found!r}, expected {FORMAT!r}; "
                               "make one with dlrm-plan calibrate)")
    if data.get("version") != VERSION or isinstance(data.get("version"), bool):
        raise CalibrationError(f"{origin}: calibration file version {data.get('version')!r} is not supported "
                               f"(this reads version {VERSION})")
    model, found = validate(CalibrationModel, data)
    if found:
        raise CalibrationError(joined(origin, found))
    return model


def read(path: str | Path) -> CalibrationModel:
    return from_data(read_data(path, "calibration file", CalibrationError), str(path))


def dumps(cal: CalibrationModel) -> str:
    import json

    return json.dumps(cal.to_data(), indent=1, sort_keys=True) + "\n"


def write(cal: CalibrationModel, path: str | Path) -> None:
    """Writes atomically; a path that cannot be written is a CalibrationError."""
    publish_file(path, dumps(cal), "calibration file", "machine.json", CalibrationError)


# -- fitting --------------------------------------------------------------------------------
def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = c0 + c1 x`` with both coefficients >= 0 (one point: through the origin)."""
    n = len(xs)
    if n == 1 or len(set(xs)) == 1:
        mean_x, mean_y = sum(xs) / n, sum(ys) / n
        return 0.0, mean_y / mean_x if mean_x else 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    c1 = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    c0 = my - c1 * mx
    if c1 < 0:  # noise: a cost cannot fall with more work
        return my, 0.0
    if c0 < 0:
        return 0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    return c0, c1


def _solve(a: list[list[float]], b: list[float]) -> Optional[list[float]]:
    """``a x = b`` by Gaussian elimination with partial pivoting; None when ``a`` is singular."""
    n = len(b)
    m = [row[:] + [v] for row, v in zip(a, b)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12 * max(abs(m[r][c]) for r in range(n) for c in range(n)):
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            m[r] = [x - f * y for x, y in zip(m[r], m[col])]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def fit_nonnegative(columns: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float]:
    """Least-squares ``y = sum_k c_k x_k`` (no constant) with every ``c_k >= 0``, for the few terms a
    calibration fits: the best fit over every subset of terms left free (the others 0)."""
    k = len(columns)
    best, best_residual = [0.0] * k, sum(y * y for y in ys)
    for mask in range(1, 1 << k):
        free = [i for i in range(k) if mask >> i & 1]
        gram = [[sum(a * b for a, b in zip(columns[i], columns[j])) for j in free] for i in free]
        coef = _solve(gram, [sum(a * y for a, y in zip(columns[i], ys)) for i in free])
        if coef is None or any(c < 0 for c in coef):
            continue
        full = [0.0] * k
        for i, c in zip(free, coef):
            full[i] = c
        residual = sum((y - sum(full[i] * columns[i][n] for i in range(k))) ** 2 for n, y in enumerate(ys))
        if residual < best_residual - 1e-15:
            best, best_residual = full, residual
    return best


def fit_collective(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(latency ms, bandwidth GB/s) of ``(bytes, ms)`` points."""
    c0, c1 = fit_line([float(b) for b, _ in points], [ms for _, ms in points])
    bandwidth = 1.0 / (c1 * 1e6) if c1 > 0 else 1e6  # c1 is ms per byte; GB/s = 1e9 bytes/s
    return c0, min(bandwidth, 1e6)


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Piecewise-linear in log(x) between measured points, clamped at the ends."""
    pts = sorted(zip(xs, ys))
    if x <= pts[0][0]:
        return pts[0][1]
    if x >= pts[-1][0]:
        return pts[-1][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return pts[-1][1]


class KernelModel:
    """The embedding kernels' cost: ``c0 + c1 * ids`` per call, interpolated over dim and rows.

    ``basis="cpu"`` fits the points' CPU times (every point must have them), ``"wall"`` their wall times.
    """

    def __init__(self, points: Sequence[KernelPoint], basis: Literal["cpu", "wall"] = "wall") -> None:
        if basis == "cpu" and any(p.fwd_cpu_ms is None or p.bwd_cpu_ms is None for p in points):
            raise CalibrationError("a CPU-time kernel model needs every point's fwd_cpu_ms and bwd_cpu_ms")
        groups: dict[tuple, list[KernelPoint]] = defaultdict(list)
        for p in points:
            groups[(p.kernel, p.optimizer, p.rows, p.dim)].append(p)
        # (kernel, optimizer) -> rows -> dim -> (fwd c0, c1, bwd c0, c1)
        self._fits: dict[tuple[str, str], dict[int, dict[int, tuple[float, ...]]]] = defaultdict(lambda: defaultdict(dict))
        for (kernel, opt, rows, dim), ps in groups.items():
            ids = [float(p.ids) for p in ps]
            fwd = [p.fwd_cpu_ms if basis == "cpu" else p.fwd_ms for p in ps]
            bwd = [p.bwd_cpu_ms if basis == "cpu" else p.bwd_ms for p in ps]
            self._fits[(kernel, opt)][rows][dim] = (*fit_line(ids, fwd), *fit_line(ids, bwd))

    def kernels(self) -> set[str]:
        return {k for k, _ in self._fits}

    def optimizers(self, kernel: str) -> set[str]:
        return {o for k, o in self._fits if k == kernel}

    def _coefficients(self, kernel: str, optimizer: str, dim: int, rows: int) -> tuple[float, ...]:
        key = (kernel, optimizer)
        if key not in self._fits:  # another optimizer measured: the nearest thing there is
            key = next(k for k in sorted(self._fits) if k[0] == kernel)
        by_rows = self._fits[key]
        at_rows = {r: [_interp(dim, list(d), [c[i] for c in d.values()]) for i in range(4)] for r, d in by_rows.items()}
        return tuple(_interp(rows, list(at_rows), [c[i] for c in at_rows.values()]) for i in range(4))

    def ms(self, kernel: str, optimizer: str, dim: int, rows: int, ids: float) -> tuple[float, float]:
        """(fwd ms, bwd ms) of one call; an unmeasured kernel is costed as the nearest measured one."""
        if kernel not in self.kernels():
            kernel = "fused" if "fused" in self.kernels() else sorted(self.kernels())[0]
        f0, f1, b0, b1 = self._coefficients(kernel, optimizer, dim, max(rows, 1))
        return f0 + f1 * ids, b0 + b1 * ids


# -- what the planner and the step prediction use ---------------------------------------------
BYTES_PER_PARAM = 4


def kernel_model(cal: CalibrationModel) -> KernelModel:
    """The calibration's kernel costs on its cost basis (what the planner and the prediction use)."""
    return KernelModel(cal.embedding, cal.cost_basis)


def dense_ms(cal: CalibrationModel, flops_per_sample: float, parameters: int, batch_per_rank: int) -> float:
    """Per rank and step: forward + backward GEMMs (3 x forward FLOPs) and the gradient all-reduce."""
    compute = 3.0 * flops_per_sample * batch_per_rank / (cal.dense.gemm_gflops * 1e9) * 1e3
    reduce = cal.all_reduce.cost_ms(cal.cost_basis, parameters * BYTES_PER_PARAM) if cal.world_size > 1 or parameters else 0.0
    return compute + reduce


def receive_ms(cal: CalibrationModel, ids: float, values: float) -> float:
    """A rank's receiving side of one step's all-to-alls (none without one: ``ids`` and ``values``
    0): the ``ids`` of its batch sent to the tables' owners, the ``values`` (pooled embedding
    floats) received and their gradients sent back, and what taking part costs at all.

    The owners' side is in their shards' comms estimates (TorchRec's: bytes over the measured
    bandwidth); this is the rest, which a rank pays for its own batch wherever the tables are
    (measured: a 2-rank rank holding no tables 8-9 ms of CPU where fixed + dense predicted 3 ms).
    0 for a one-rank calibration (no all-to-all) and for files from before it was measured.
    """
    step = cal.step
    if not ids and not values:
        return 0.0
    return ((step.receive_fixed_ms or 0.0) + (step.receive_per_id_ms or 0.0) * ids
            + (step.receive_per_value_ms or 0.0) * values)


def step_overhead_ms(cal: CalibrationModel, num_tables: int, collectives: int,
                     dense: Optional[tuple[float, int]], batch_per_rank: int,
                     received: tuple[float, float] = (0.0, 0.0)) -> float:
    """What a rank's step costs besides its embedding shards' estimates (the same on every rank).

    ``collectives``: all-to-alls per step (each pays the measured latency; their bytes are in
    the shards' comms estimates); ``dense``: (forward FLOPs per sample, parameters) or None;
    ``received``: (ids, pooled values) of the rank's batch that go through the all-to-alls.
    """
    if cal.cost_basis == "cpu":
        fixed, per_table = cal.step.cpu_fixed_ms or 0.0, cal.step.cpu_per_table_ms or 0.0
    else:
        fixed, per_table = cal.step.fixed_ms, cal.step.per_table_ms
    latency = cal.all_to_all.on(cal.cost_basis)[0]
    extra = fixed + per_table * num_tables + collectives * latency + receive_ms(cal, *received)
    if dense is not None:
        extra += dense_ms(cal, dense[0], dense[1], batch_per_rank)
    return extra


def describe(cal: CalibrationModel) -> str:
    """One line for a plan's notes and the CLI."""
    m = cal.machine
    return (f"calibrated on {m.host} ({m.cpu}, {m.cores} cores, {m.threads_per_rank} thread(s) per rank) "
            f"at {m.created}, {cal.world_size} {cal.device} rank(s) over {cal.backend}: all-to-all "
            f"{cal.all_to_all.bandwidth_gbps:.3g} GB/s + {cal.all_to_all.latency_ms:.3g} ms, all-reduce "
            f"{cal.all_reduce.bandwidth_gbps:.3g} GB/s + {cal.all_reduce.latency_ms:.3g} ms, GEMM "
            f"{cal.dense.gemm_gflops:.3g} GFLOP/s, step overhead {cal.step.fixed_ms:.3g} ms + "
            f"{cal.step.per_table_ms:.3g} ms per table, receiving side {_ms(cal.step.receive_fixed_ms)} ms + "
            f"{_ms(cal.step.receive_per_id_ms, 1e6)} ms per 1e6 ids + {_ms(cal.step.receive_per_value_ms, 1e6)} ms "
            f"per 1e6 values; kernels costed by {cal.cost_basis} time")


def _ms(figure: Optional[float], per: float = 1.0) -> str:
    return "?" if figure is None else f"{figure * per:.3g}"
