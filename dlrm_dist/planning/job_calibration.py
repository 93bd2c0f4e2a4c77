"""Calibration inside a training job (``sharding.calibration = "auto" | PATH``).

Before the job's plan is final, the job measures this machine over its own process group (its
backend and world size: measure.measure_in_group) on a grid made from its own tables (their
dims, row counts and pooling factors, at the job's global batch), or reuses a calibration file
that matches it, and then plans again with the measured costs in the planner inputs, and with the
job's dense part (its MLPs and interaction: FLOPs per sample and parameters, counted from the
model) so that the plan predicts the whole step (prediction.py), not its embeddings only. ``auto``
keeps the file as RUN_DIR/calibration.json (a resumed or repeated run reuses it; one that no
longer matches is measured again and overwritten); a path names a file the user keeps: reused
if it matches, measured and written there if it does not exist, refused by name if it was
measured for another job shape (world size, backend, device, host, torch or fbgemm version).

Rank 0 decides (reads the file, or gathers every rank's figures and builds the calibration) and
broadcasts the result, so every rank plans with the same figures and raises the same error;
distributed/plan_sync.py then makes every rank train rank 0's plan.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

from dlrm_dist.planning import calibration
from dlrm_dist.planning.calibration import CalibrationError, CalibrationModel
from dlrm_dist.planning.inputs import DenseModel
from dlrm_dist.planning.planfile import PlanFile
from dlrm_dist.planning.types import PlannerInputs, TableSpec

logger = logging.getLogger(__name__)

AUTO = "auto"
RUN_DIR_FILE = "calibration.json"
MAX_GRID = 3  # per axis: the smallest, the median and the largest of the job's values


def calibration_path(setting: str, run_dir: str) -> Path:
    """The file ``setting`` means: RUN_DIR/calibration.json for ``auto``, else the path given."""
    return Path(run_dir, RUN_DIR_FILE) if setting == AUTO else Path(setting)


def mismatch(cal: CalibrationModel, world_size: int, backend: str, device: str, optimizer: str) -> Optional[str]:
    """Why ``cal`` does not describe this job (None when it does)."""
    import fbgemm_gpu
    import torch

    m = cal.machine
    wanted = {"world_size": (cal.world_size, world_size), "backend": (cal.backend, backend),
              "device": (cal.device, device), "machine.host": (m.host, socket.gethostname()),
              "machine.torch": (m.torch, torch.__version__),
              "machine.fbgemm": (m.fbgemm, getattr(fbgemm_gpu, "__version__", "?"))}
    for name, (found, job) in wanted.items():
        if found != job:
            return f"{name} is {found!r}, this job's is {job!r}"
    measured = {p.optimizer for p in cal.embedding}
    if optimizer not in measured:
        return f"its kernels were measured with {', '.join(sorted(measured))}, this job's optimizer is {optimizer!r}"
    return None


def _spread(values: Sequence[float]) -> tuple[float, ...]:
    """At most MAX_GRID of ``values``: the smallest, the median and the largest."""
    v = sorted(set(values))
    return tuple(sorted({v[0], v[len(v) // 2], v[-1]}))[:MAX_GRID]


def job_sizes(tables: Sequence[TableSpec], world_size: int, batch_per_rank: int, optimizer: str) -> Any:
    """The measuring grid of this job's tables: their dims, rows and pooling factors, the fused
    kernel at the global batch (a table-wise shard looks up the whole batch's ids)."""
    from dlrm_dist.planning import measure

    dims = [t.dim for t in tables]
    # every rank allocates its tables at once: no grid row larger than measure.Sizes allows at the widest dim
    cap = measure.Sizes.max_table_bytes // (4 * max(dims))
    rows = [min(t.rows, cap) for t in tables]
    pooling = [max(t.pooling_factor, 1.0) for t in tables]
    # the all-to-all of one step's pooled embeddings (float32), and a message far below and above it
    exchanged = batch_per_rank * world_size * sum(dims) * 4
    return measure.Sizes(dims=tuple(int(d) for d in _spread(dims)), rows=tuple(int(r) for r in _spread(rows)),
                         pooling_factors=tuple(sorted({min(pooling), max(pooling)})),
                         batch=batch_per_rank * world_size, kernels=("fused",), optimizer=optimizer,
                         comm_bytes=tuple(sorted({1 << 10, exchanged, 8 * exchanged})), gemm=((512, 512, 256),),
                         reps=3, step_count=4,
                         # the receiving side at the job's own batch per rank
                         receive_probes=tuple((d, pf, batch_per_rank) for d, pf, _ in measure.Sizes.receive_probes))


def _measure(inputs: PlannerInputs, world_size: int, backend: str) -> Optional[CalibrationModel]:
    """Every rank measures; rank 0 builds the calibration (None on the other ranks)."""
    import torch.distributed as dist

    from dlrm_dist.planning import measure

    sizes = job_sizes(inputs.tables, world_size, inputs.batch_size_per_rank, inputs.optimizer)
    raw = measure.measure_in_group(sizes)
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, raw)
    return measure.build(gathered, world_size, backend) if dist.get_rank() == 0 else None


def _decide(path: Path, explicit: bool, world_size: int, backend: str, device: str,
            optimizer: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """Rank 0: (a matching file's data or None = measure, an error message or None)."""
    if not path.exists():
        return None, None
    try:
        cal = calibration.read(path)
    except CalibrationError as e:
        return None, str(e) if explicit else None
    why = mismatch(cal, world_size, backend, device, optimizer)
    if why is None:
        return cal.to_data(), None
    if explicit:
        return None, (f"sharding.calibration={str(path)!r} does not describe this job ({why}): point it at "
                      "another file (it is measured and written there) or use auto")
    logger.info("calibration %s does not describe this job (%s): measuring again", path, why)
    return None, None


def _publish(measured: Optional[CalibrationModel], path: Path, world_size: int,
             backend: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """Rank 0: writes the measured calibration; (its data, None) or (None, why it could not)."""
    assert measured is not None
    try:
        calibration.write(measured, path)
    except CalibrationError as e:
        return None, str(e)
    logger.info("calibrated this machine over %d %s rank(s): %s (%s)", world_size, backend, path,
                calibration.describe(measured))
    return measured.to_data(), None


def calibrate_job(setting: str, run_dir: str, inputs: PlannerInputs, world_size: int, rank: int, backend: str,
                  device: str) -> CalibrationModel:
    """The job's calibration (reused or measured in the process group), the same on every rank."""
    import torch.distributed as dist

    path = calibration_path(setting, run_dir)
    decision: list[Any] = [_decide(path, setting != AUTO, world_size, backend, device, inputs.optimizer)
                           if rank == 0 else None]
    dist.broadcast_object_list(decision, src=0)
    data, error = decision[0]
    if error:
        raise CalibrationError(error)
    if data is None:
        measured = _measure(inputs, world_size, backend)
        box: list[Any] = [_publish(measured, path, world_size, backend) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)  # an unwritable path fails every rank alike
        data, error = box[0]
        if error:
            raise CalibrationError(error)
    else:
        logger.info("reusing calibration %s", path)
    return calibration.from_data(data, str(path))


def _keyed(plan: Any, module_path: str) -> Any:
    """``plan``'s tables under ``module_path`` (TorchRec's planner names its own module path)."""
    from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingPlan

    tables: dict[str, Any] = {}
    for module_plan in plan.plan.values():
        tables.update(module_plan)
    return ShardingPlan({module_path: EmbeddingModuleShardingPlan(tables)})


def dense_part(modules: Sequence[Any]) -> DenseModel:
    """The dense part of a model from its data-parallel ``modules`` (DLRM.dense_modules): the
    parameters all-reduced every step, and the forward FLOPs per sample.

    Every weight matrix (a parameter of two or more dimensions: Linear layers, DCN's low-rank
    factors) costs one multiply-add per element per sample; a dot interaction adds its pairwise
    products (a batched n x d by d x n matrix product per sample: any submodule with a
    ``flops_per_sample()`` says its own, so the planner knows no model class). Biases and
    element-wise work are left out: small beside the GEMMs this costs at the calibrated rate.
    """
    params = [p for m in modules for p in m.parameters()]
    flops = sum(2.0 * p.numel() for p in params if p.dim() >= 2)
    for m in modules:
        for sub in m.modules():
            own = getattr(sub, "flops_per_sample", None)
            if callable(own):
                flops += float(own())
    return DenseModel(flops_per_sample=flops, parameters=sum(p.numel() for p in params))


def replan(pf: PlanFile, cal: CalibrationModel, planner: str, dense: Optional[DenseModel] = None) -> PlanFile:
    """``pf``'s job planned again by ``planner`` with ``cal``'s measured costs in its inputs, and
    ``dense`` (the job's dense part) when given."""
    from dlrm_dist.planning.planner import make_plan_file, plan_file_for
    from dlrm_dist.planning.torchrec_default import plan_with_torchrec

    inputs = dataclasses.replace(pf.inputs, calibration=cal, dense=dense if dense is not None else pf.inputs.dense)
    (module_path,) = pf.plan.plan.keys()
    if planner == "torchrec":
        return plan_file_for(_keyed(plan_with_torchrec(inputs).plan, module_path), inputs, "torchrec_default",
                             module_path=module_path)
    return make_plan_file(inputs, module_path=module_path)


def calibrated_plan(pf: PlanFile, setting: Optional[str], run_dir: str, rank: int, world_size: int,
                    backend: str, device: str, planner: str, dense: Optional[DenseModel] = None) -> PlanFile:
    """The job's plan made with its calibration and ``dense`` part (``setting`` unset: ``pf``
    unchanged). Needs the process group: every rank takes part in measuring."""
    if not setting:
        return pf
    cal = calibrate_job(setting, run_dir, pf.inputs, world_size, rank, backend, device)
    return replan(pf, cal, planner, dense)


def with_job_calibration(prepared: Any, env: Any) -> Any:
    """A prepared job (training/build.Prepared) whose plan was made with ``sharding.calibration``'s
    figures; unchanged when the job has none. ``env``: the job's DistEnv (the group exists)."""
    cfg = prepared.cfg
    if not cfg.sharding.calibration:
        return prepared
    pf = calibrated_plan(prepared.plan_file, cfg.sharding.calibration, cfg.train.run_dir, env.rank, env.world_size,
                         env.backend, env.device.type, cfg.sharding.planner, dense_part(prepared.model.dense_modules()))
    return prepared if pf is prepared.plan_file else dataclasses.replace(prepared, plan_file=pf)
