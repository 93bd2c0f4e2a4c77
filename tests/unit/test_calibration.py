"""The calibration file and the calibrated cost model (no measuring: a synthetic calibration).

- the file format: round trip, damage named by field, wrong format/version, a plan for another
  device refused;
- the model: least-squares fits and the interpolation between measured dims/rows, in closed form;
- ``dlrm-plan make --calibration``: each shard's compute is the calibration's kernel cost for the
  ids it looks up (table-wise: the global batch's), its comms are bytes over the measured
  bandwidth, and the predicted step adds the overhead, dense part and latencies;
- topology honesty: make and inspect print the topology first and name what was assumed;
  ``--topology this-machine`` takes this machine's memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlrm_dist.cli.plan_main import main
from dlrm_dist.planning import calibration, planfile
from dlrm_dist.planning.calibration import CalibrationError, KernelModel, KernelPoint, fit_collective, fit_line
from dlrm_dist.planning.prediction import predicted_step_ms
from tests import calibration_helper as ch

BATCH = 64


def _write(tmp_path: Path, data: dict, name: str = "machine.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _tables(tmp_path: Path) -> Path:
    path = tmp_path / "tables.json"
    path.write_text(json.dumps({"tables": [{"name": "t_a", "rows": 1000, "dim": 16, "pooling_factor": 4},
                                           {"name": "t_b", "rows": 100_000, "dim": 64, "pooling_factor": 10}]}))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the file ---------------------------------------------------------------------------------
def test_a_calibration_round_trips(tmp_path: Path) -> None:
    cal = calibration.from_data(ch.calibration_data(), "synthetic")
    calibration.write(cal, tmp_path / "c.json")
    again = calibration.read(tmp_path / "c.json")
    assert again == cal and json.loads((tmp_path / "c.json").read_text()) == cal.to_data()


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["embedding"][0].update(fwd_ms=-1.0), "embedding[0].fwd_ms"),
    (lambda d: d["all_to_all"].update(bandwidth_gbps=0), "all_to_all.bandwidth_gbps"),
    (lambda d: d.update(world_size="2"), "world_size"),
    (lambda d: d["embedding"].append(dict(d["embedding"][0])), "embedding[8] measures the same"),
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.update(format="dlrm_dist.sharding_plan"), "not a dlrm_dist calibration file"),
])
def test_damage_is_one_error_naming_the_field(tmp_path: Path, edit, says) -> None:
    data = ch.calibration_data()
    edit(data)
    with pytest.raises(CalibrationError) as e:
        calibration.read(_write(tmp_path, data))
    assert says in str(e.value) and str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_make_refuses_a_calibration_of_another_device(tmp_path: Path, capsys) -> None:
    cal = _write(tmp_path, ch.calibration_data(device="cuda"))
    code, _, err = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "2", "--device", "cpu",
                        "--calibration", str(cal), "-o", str(tmp_path / "p.json"))
    assert code == 2 and "calibration: measured on cuda" in err and not (tmp_path / "p.json").exists()


# -- the model --------------------------------------------------------------------------------
def test_fits_in_closed_form() -> None:
    assert fit_line([1.0, 2.0, 4.0], [3.0, 5.0, 9.0]) == pytest.approx((1.0, 2.0))
    assert fit_line([2.0], [6.0]) == pytest.approx((0.0, 3.0))  # one point: through the origin
    assert fit_line([1.0, 2.0], [5.0, 4.0]) == pytest.approx((4.5, 0.0))  # falling: noise, a flat cost
    latency, bw = fit_collective([(0, 0.5), (10**9, 1000.5)])  # 1e9 bytes in 1 s more: 1 GB/s
    assert latency == pytest.approx(0.5) and bw == pytest.approx(1.0)


def test_kernel_costs_interpolate_in_log_dim_and_rows_and_clamp() -> None:
    def point(dim: int, rows: int, per_id: float) -> list[KernelPoint]:
        return [KernelPoint(kernel="fused", optimizer="sgd", dim=dim, rows=rows, pooling_factor=1.0, ids=n,
                            fwd_ms=per_id * n, bwd_ms=2 * per_id * n) for n in (100, 200)]

    model = KernelModel(point(16, 1000, 1e-3) + point(64, 1000, 3e-3) + point(16, 100_000, 5e-3) + point(64, 100_000, 7e-3))
    assert model.ms("fused", "sgd", 32, 1000, 1000) == pytest.approx((2.0, 4.0))  # halfway in log2 between 16 and 64
    assert model.ms("fused", "sgd", 16, 10_000, 1000) == pytest.approx((3.0, 6.0))  # halfway in log10 rows
    assert model.ms("fused", "sgd", 4096, 10**9, 1000) == pytest.approx((7.0, 14.0))  # clamped at the largest
    assert model.ms("dense", "adagrad", 16, 1000, 1000) == pytest.approx((1.0, 2.0))  # nearest measured kernel


# -- calibrated plans -------------------------------------------------------------------------
def test_a_calibrated_plan_costs_shards_with_the_measured_kernels(tmp_path: Path, capsys) -> None:
    cal = _write(tmp_path, ch.calibration_data())
    plan = tmp_path / "p.json"
    code, out, _ = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--calibration", str(cal), "--device", "cpu",
                        "--batch-size-per-rank", str(BATCH), "--dense-flops-per-sample", "1e6",
                        "--dense-parameters", "100000", "-o", str(plan))
    assert code == 0, out
    pf = planfile.read(plan)
    assert pf.inputs.topology.world_size == 2  # the calibration's world size when none is given
    lookups = {"t_a": 4, "t_b": 10}
    rows = pf.plan.plan["model.sparse_arch"]
    for rank in pf.estimates.per_rank:
        tables = [t for t, ps in rows.items() if rank.rank in (ps.ranks or [])]
        assert all(rows[t].sharding_type == "table_wise" for t in tables)
        ids = [BATCH * 2 * lookups[t] for t in tables]  # table-wise: the global batch's ids
        assert rank.perf.fwd_compute == pytest.approx(sum(ch.F0 + ch.F1 * n for n in ids))
        assert rank.perf.bwd_compute == pytest.approx(sum(ch.B0 + ch.B1 * n for n in ids))
        # pooled embeddings out: global batch x dim x 4 bytes over the measured all-to-all bandwidth
        out_bytes = sum(BATCH * 2 * {"t_a": 16, "t_b": 64}[t] * 4 for t in tables)
        assert rank.perf.fwd_comms == pytest.approx(out_bytes / (ch.BANDWIDTH_GBPS * 1e9) * 1e3)
    dense = 3 * 1e6 * BATCH / (ch.GFLOPS * 1e9) * 1e3 + ch.LATENCY_MS + 100_000 * 4 / (ch.BANDWIDTH_GBPS * 1e9) * 1e3
    extra = ch.FIXED_MS + 2 * ch.PER_TABLE_MS + dense
    assert predicted_step_ms(pf.inputs, pf.estimates) == pytest.approx([r.cost_ms + extra for r in pf.estimates.per_rank])
    assert "costs: measured, calibrated on test" in out


def test_an_uncalibrated_plan_has_no_step_prediction_and_says_whose_costs(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "p.json"
    code, out, _ = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "2", "--device", "cpu",
                        "-o", str(plan))
    pf = planfile.read(plan)
    assert code == 0 and predicted_step_ms(pf.inputs, pf.estimates) is None
    assert "costs: TorchRec's constant bandwidths" in out
    assert "calibration" not in json.loads(plan.read_text())["inputs"]  # unset: left out of the file


# -- topology honesty -------------------------------------------------------------------------
def test_make_and_inspect_start_with_the_topology_and_what_was_assumed(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "p.json"
    code, out, _ = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "2", "--device", "cpu",
                        "-o", str(plan))
    first = out.splitlines()
    assert code == 0 and first[0].startswith("topology: 2 cpu rank(s), 2 per host") and "DDR 512.00 GB" in first[0]
    assert first[1].startswith("topology: ASSUMED") and "ddr_gb" in first[1] and "this-machine" in first[1]
    assert json.loads(plan.read_text())["planner"]["assumed"] == ["ranks_per_host", "ddr_gb"]
    code, out, _ = _run(capsys, "inspect", str(plan))
    assert code == 0 and out.splitlines()[:2] == first[:2]


def test_this_machine_takes_its_memory_and_one_host(tmp_path: Path, capsys, monkeypatch) -> None:
    from dlrm_dist.cli import plan_make

    monkeypatch.setattr(plan_make, "host_memory_bytes", lambda: 23 * 1024**3)
    plan = tmp_path / "p.json"
    code, out, _ = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "2",
                        "--topology", "this-machine", "-o", str(plan))
    t = planfile.read(plan).inputs.topology
    assert code == 0 and (t.device, t.ranks_per_host, t.ddr_gb) == ("cpu", 2, 23.0)
    assert "ASSUMED" not in out and "DDR 23.00 GB per host" in out.splitlines()[0]
    code, _, _ = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "2", "--ddr-gb", "8",
                      "--topology", "this-machine", "-o", str(plan))
    assert code == 0 and planfile.read(plan).inputs.topology.ddr_gb == 8.0  # a flag wins over the machine


def test_host_memory_reads_the_machine() -> None:
    from dlrm_dist.cli.plan_make import host_memory_bytes

    assert 2**28 < host_memory_bytes() < 2**50
