"""Calibration on 2 spawned gloo ranks (in process, with a timeout): ``dlrm-plan calibrate --quick``
then a plan made with the file it wrote, and ``sharding.calibration`` inside a training job.

The file must hold every kernel setting of the quick grid measured on the slowest rank (wall and
CPU time), collective fits whose points they were fitted to, a positive GEMM rate; a plan made
with it must cost its shards with it (TorchRec's constants would give other figures) and predict
a step above the embedding estimate.

In a job (one process group, two trainings through the trainer's own entry): ``auto`` measures
the job's own tables over its 2 ranks, keeps RUN_DIR/calibration.json and trains the plan made
with it (the run's plan.json carries the calibration and the job's dense part, and costs its
shards with the calibration); a second job
naming that file reuses it (no new measurement: the file is unchanged, the log says so).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlrm_dist.cli.plan_main import main
from dlrm_dist.planning import calibration, measure, planfile
from dlrm_dist.planning.prediction import predicted_step_ms, predicted_work_ms
from tests.dist_helper import run_ranks
from tests.multiprocess.train_worker import train_jobs
from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
JOB = SMALL_JOB + ["--train.steps=4", "--train.eval_interval=0", "--synthetic.eval_batches=1"]


def test_calibrate_on_two_ranks_then_plan_with_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "machine.json"
    code = main(["calibrate", "--out", str(out), "--world-size", "2", "--quick", "--timeout", "240"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    cal = calibration.read(out)
    tiny = measure.TINY
    assert (cal.world_size, cal.backend, cal.device) == (2, "gloo", "cpu")
    settings = {(p.kernel, p.dim, p.rows, p.ids) for p in cal.embedding}
    assert settings == {(k, d, r, int(tiny.batch * pf)) for k in tiny.kernels for r in tiny.rows for d in tiny.dims
                        for pf in tiny.pooling_factors}
    assert all(p.fwd_cpu_ms and p.bwd_cpu_ms for p in cal.embedding) and cal.step.cpu_fixed_ms is not None
    assert None not in (cal.step.receive_fixed_ms, cal.step.receive_per_id_ms, cal.step.receive_per_value_ms)
    assert [p.bytes for p in cal.all_to_all.points] == list(tiny.comm_bytes) and cal.dense.gemm_gflops > 0
    assert "wrote" in printed.out and "all-to-all" in printed.out

    # table-wise pinned: on measured costs the planner may rightly prefer data parallel for so small a
    # table (a CI run did), and the check below is of the fused kernel's cost on the one owning rank
    table = {"name": "t0", "rows": 2000, "dim": 8, "pooling_factor": 2, "sharding_types": ["table_wise"]}
    (tmp_path / "tables.json").write_text(json.dumps({"tables": [table]}))
    plan = tmp_path / "p.json"
    assert main(["make", "--tables", str(tmp_path / "tables.json"), "--calibration", str(out),
                 "--topology", "this-machine", "--batch-size-per-rank", "32", "-o", str(plan)]) == 0
    pf = planfile.read(plan)
    fwd, bwd = calibration.kernel_model(cal).ms("fused", "rowwise_adagrad", 8, 2000, 32 * 2 * 2)
    owner = next(r for r in pf.estimates.per_rank if r.num_tables)
    assert owner.perf.fwd_compute == fwd and owner.perf.bwd_compute == bwd
    predicted = predicted_step_ms(pf.inputs, pf.estimates)
    assert predicted is not None and all(p > r.cost_ms for p, r in zip(predicted, pf.estimates.per_rank))


def test_a_job_calibrates_itself_then_a_second_reuses_the_file(tmp_path: Path) -> None:
    kept = tmp_path / "auto" / "calibration.json"
    run_ranks(train_jobs, 2, str(tmp_path), {"auto": JOB + ["--sharding.calibration=auto"],
                                             "reuse": JOB + [f"--sharding.calibration={kept}"]}, timeout=300)
    cal = calibration.read(kept)
    assert (cal.world_size, cal.backend, cal.device) == (2, "gloo", "cpu")
    # the job's own grid: its dims (8), its row counts' spread (50, 80/100, 200), at its global batch of 64
    assert {p.dim for p in cal.embedding} == {8} and {p.rows for p in cal.embedding} == {50, 100, 200}
    assert {p.ids % 64 for p in cal.embedding} == {0} and {p.kernel for p in cal.embedding} == {"fused"}
    model = calibration.kernel_model(cal)
    for name in ("auto", "reuse"):
        pf = planfile.read(tmp_path / name / "plan.json")
        assert pf.inputs.calibration == cal, name  # the plan trained was made with the measured costs
        dense = pf.inputs.dense  # and with the job's dense part, counted from its model: the whole step predicted
        assert dense is not None and dense.parameters > 0 and dense.flops_per_sample > 0, name
        dense_ms = calibration.dense_ms(cal, dense.flops_per_sample, dense.parameters, pf.inputs.batch_size_per_rank)
        work = predicted_work_ms(pf.inputs, pf.estimates)
        assert all(w >= r.cost_ms + dense_ms for w, r in zip(work, pf.estimates.per_rank)), name
        assert json.loads((tmp_path / name / "summary.json").read_text())["steps"] == 4
        (tables,) = pf.plan.plan.values()
        specs = {t.name: t for t in pf.inputs.tables}
        batch = pf.inputs.batch_size_per_rank * 2
        for rank, est in enumerate(pf.estimates.per_rank):  # a table-wise shard looks up the global batch's ids
            mine = [n for n, ps in tables.items() if ps.sharding_type == "table_wise" and ps.ranks == [rank]]
            if len(mine) == est.num_tables:
                assert est.perf.fwd_compute == pytest.approx(sum(model.ms(
                    "fused", pf.inputs.optimizer, specs[n].dim, specs[n].rows, batch * specs[n].pooling_factor)[0]
                    for n in mine)), (name, rank)
    assert "calibrated this machine over 2 gloo rank(s)" in (tmp_path / "auto.log").read_text()
    assert "reusing calibration" in (tmp_path / "reuse.log").read_text()
    assert not (tmp_path / "reuse" / "calibration.json").exists()
