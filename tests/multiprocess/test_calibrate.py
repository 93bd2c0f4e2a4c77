"""``dlrm-plan calibrate --quick`` on 2 spawned gloo ranks (in process, with a timeout), then a
plan made with the file it wrote.

The file must hold every kernel setting of the quick grid measured on the slowest rank, collective
fits whose points they were fitted to, a positive GEMM rate; a plan made with it must cost its
shards with it (TorchRec's constants would give other figures) and predict a step above the
embedding estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

from dlrm_dist.cli.plan_main import main
from dlrm_dist.planning import calibration, measure, planfile
from dlrm_dist.planning.prediction import predicted_step_ms


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
    assert [p.bytes for p in cal.all_to_all.points] == list(tiny.comm_bytes) and cal.dense.gemm_gflops > 0
    assert "wrote" in printed.out and "all-to-all" in printed.out

    (tmp_path / "tables.json").write_text(json.dumps({"tables": [{"name": "t0", "rows": 2000, "dim": 8, "pooling_factor": 2}]}))
    plan = tmp_path / "p.json"
    assert main(["make", "--tables", str(tmp_path / "tables.json"), "--calibration", str(out),
                 "--topology", "this-machine", "--batch-size-per-rank", "32", "-o", str(plan)]) == 0
    pf = planfile.read(plan)
    fwd, bwd = calibration.KernelModel(cal.embedding).ms("fused", "rowwise_adagrad", 8, 2000, 32 * 2 * 2)
    owner = next(r for r in pf.estimates.per_rank if r.num_tables)
    assert owner.perf.fwd_compute == fwd and owner.perf.bwd_compute == bwd
    predicted = predicted_step_ms(pf.inputs, pf.estimates)
    assert predicted is not None and all(p > r.cost_ms for p, r in zip(predicted, pf.estimates.per_rank))
