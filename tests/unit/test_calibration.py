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
from typing import Any

import pytest

from dlrm_dist.cli.plan_main import main
from dlrm_dist.planning import calibration, planfile
from dlrm_dist.planning.calibration import CalibrationError, KernelModel, KernelPoint, fit_collective, fit_line
from dlrm_dist.planning.prediction import local_tables, predicted_step_ms, predicted_work_ms, received, shared_cores_ms
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


def _with_cpu(data: dict, share: float = 0.25, threads: int = 1) -> dict:
    """``data`` whose kernels and step also carry CPU times: ``share`` of the wall times."""
    for point in data["embedding"]:
        point.update(fwd_cpu_ms=point["fwd_ms"] * share, bwd_cpu_ms=point["bwd_ms"] * share)
    data["step"].update(cpu_fixed_ms=ch.FIXED_MS * share, cpu_per_table_ms=ch.PER_TABLE_MS * share)
    data["machine"]["threads_per_rank"] = threads
    return data


def test_work_is_costed_by_cpu_time_when_every_figure_has_it() -> None:
    """Measured under load, a kernel's wall time is its CPU time stretched by the other processes:
    the model takes the CPU time (one thread per rank), the wall time only when that is all there is."""
    cal = calibration.from_data(_with_cpu(ch.calibration_data()), "synthetic")
    assert cal.cost_basis == "cpu"
    fwd, bwd = calibration.kernel_model(cal).ms("fused", "rowwise_adagrad", 16, 1000, 1000)
    assert (fwd, bwd) == pytest.approx((0.25 * (ch.F0 + ch.F1 * 1000), 0.25 * (ch.B0 + ch.B1 * 1000)))
    assert calibration.step_overhead_ms(cal, 2, 0, None, BATCH) == pytest.approx(0.25 * (ch.FIXED_MS + 2 * ch.PER_TABLE_MS))
    assert calibration.from_data(ch.calibration_data(), "old file").cost_basis == "wall"  # files from before
    threads = calibration.from_data(_with_cpu(ch.calibration_data(), threads=2), "two threads")
    assert threads.cost_basis == "wall"  # CPU time of 2 threads is not one rank's wall time on its cores
    assert calibration.kernel_model(threads).ms("fused", "rowwise_adagrad", 16, 1000, 1000) == pytest.approx(
        (ch.F0 + ch.F1 * 1000, ch.B0 + ch.B1 * 1000))
    with pytest.raises(CalibrationError, match="fwd_cpu_ms"):
        KernelModel(calibration.from_data(ch.calibration_data(), "old").embedding, "cpu")


def test_ranks_share_their_hosts_cores() -> None:
    assert shared_cores_ms([10.0, 20.0], 2) == pytest.approx([10.0, 20.0])  # a core each: the work itself
    assert shared_cores_ms([10.0] * 4, 2) == pytest.approx([20.0] * 4)  # 4 ranks on 2 cores: half a core each
    # all four at half speed until the three short ones finish (t = 20), then the long one alone
    assert shared_cores_ms([10.0, 30.0, 10.0, 10.0], 2) == pytest.approx([20.0, 40.0, 20.0, 20.0])
    assert shared_cores_ms([12.0, 0.0, 0.0, 0.0], 2) == pytest.approx([12.0, 0.0, 0.0, 0.0])  # idle ranks take no core


def test_a_four_rank_plan_on_two_cores_predicts_the_shared_step(tmp_path: Path, capsys) -> None:
    cal = _write(tmp_path, ch.calibration_data(world_size=4))
    plan = tmp_path / "p.json"
    code, out, _ = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--calibration", str(cal), "--device", "cpu",
                        "--ranks-per-host", "4", "--batch-size-per-rank", str(BATCH), "-o", str(plan))
    assert code == 0, out
    pf = planfile.read(plan)
    work = predicted_work_ms(pf.inputs, pf.estimates)
    assert work is not None and len(work) == 4
    assert predicted_step_ms(pf.inputs, pf.estimates) == pytest.approx(shared_cores_ms(work, 2))
    assert max(predicted_step_ms(pf.inputs, pf.estimates)) > max(work)  # more ranks than cores: slower than the work


def test_nonnegative_fits_in_closed_form() -> None:
    ones = [1.0, 1.0, 1.0]
    assert calibration.fit_nonnegative([ones, [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]], [2.0, 5.0, 12.0]) == pytest.approx(
        [2.0, 0.3, 1.0])  # exact: 2 + 0.3 x ids + 1.0 x values
    # a term that would fit negative (noise) is 0 and the others are fitted without it
    assert calibration.fit_nonnegative([ones, [0.0, 10.0, 20.0]], [5.0, 4.0, 3.0]) == pytest.approx([4.0, 0.0])
    assert calibration.fit_nonnegative([[1.0, 2.0]], [-1.0, -2.0]) == [0.0]


def test_the_receive_side_is_fitted_from_the_probes_less_the_step_overhead() -> None:
    from dlrm_dist.planning.measure import _receive_fit

    step = {"cpu_fixed_ms": 2.0, "cpu_per_table_ms": 0.5}
    points = [{"tables": 4, "ids": ids, "values": values, "cpu_ms": 2.0 + 4 * 0.5 + 3.0 + 1e-4 * ids + 2e-4 * values}
              for ids, values in ((4096, 8192), (65536, 8192), (4096, 65536))]
    fit = _receive_fit(points, step)
    assert fit == pytest.approx({"receive_fixed_ms": 3.0, "receive_per_id_ms": 1e-4, "receive_per_value_ms": 2e-4})
    assert _receive_fit([], step) == {} and _receive_fit(points, {"fixed_ms": 1.0}) == {}  # 1 rank; no CPU times


def test_every_rank_pays_the_receiving_side_of_the_all_to_alls(tmp_path: Path, capsys) -> None:
    """Measured at 2 ranks: a rank holding no table used 8-9 ms of CPU per step where the overhead and the
    dense part predicted 3 ms. Its batch's ids go out and its pooled embeddings come back wherever the
    tables are: every rank pays it, by the calibration's receive_* figures."""
    data = ch.calibration_data()
    data["step"].update(receive_fixed_ms=2.0, receive_per_id_ms=1e-3, receive_per_value_ms=5e-4)
    plans = {}
    for name, d in (("new", data), ("old", ch.calibration_data())):
        plan = tmp_path / f"{name}.json"
        code, out, _ = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--calibration", str(_write(tmp_path, d, f"{name}-cal.json")),
                            "--device", "cpu", "--batch-size-per-rank", str(BATCH), "-o", str(plan))
        assert code == 0, out
        plans[name] = planfile.read(plan)
    ids, values = BATCH * (4 + 10), BATCH * (16 + 64)  # t_a: pooling 4, dim 16; t_b: pooling 10, dim 64
    new, old = (predicted_work_ms(pf.inputs, pf.estimates) for pf in (plans["new"], plans["old"]))
    assert new == pytest.approx([w + 2.0 + 1e-3 * ids + 5e-4 * values for w in old])  # old files: no receive figures
    assert "receiving side 2 ms + 1e+03 ms per 1e6 ids + 500 ms per 1e6 values" in calibration.describe(
        calibration.from_data(data, "x"))
    cal = calibration.from_data(data, "x")
    assert calibration.receive_ms(cal, 0.0, 0.0) == 0.0  # no all-to-all (one rank, data-parallel tables): nothing
    # a data-parallel table is looked up on every rank: its ids and embeddings go through no all-to-all
    pf = plans["new"]
    assert local_tables(pf.plan_data()) == frozenset()
    assert received(pf.inputs, 1, local={"t_a"}) == (BATCH * 10, BATCH * 64)
    entries = {"m": {"t_a": {"sharding_type": "data_parallel"}, "t_b": {"sharding_type": "table_wise"}}}
    assert local_tables(entries) == {"t_a"}
    fewer = predicted_work_ms(pf.inputs, pf.estimates, local={"t_a"})
    assert fewer == pytest.approx([w - 1e-3 * BATCH * 4 - 5e-4 * BATCH * 16 for w in new])


def test_collectives_cost_their_cpu_time_as_work_and_their_wall_time_otherwise() -> None:
    """4 ranks on 2 cores: an all-reduce's wall time (5.4 ms latency measured) is mostly waiting for the
    other ranks' turn on a core, which the predicted step already shares the cores for; its work is its
    CPU time. Files without CPU figures, and the wall basis, keep the wall fit."""
    data = _with_cpu(ch.calibration_data())
    for kind in ("all_to_all", "all_reduce"):
        data[kind].update(cpu_latency_ms=0.1, cpu_bandwidth_gbps=4.0)
    cal = calibration.from_data(data, "cpu collectives")
    assert cal.all_reduce.on("cpu") == (0.1, 4.0) and cal.all_reduce.on("wall") == (ch.LATENCY_MS, ch.BANDWIDTH_GBPS)
    compute = 3 * 1e6 * BATCH / (ch.GFLOPS * 1e9) * 1e3
    assert calibration.dense_ms(cal, 1e6, 100_000, BATCH) == pytest.approx(compute + 0.1 + 4e5 / 4e9 * 1e3)
    assert calibration.step_overhead_ms(cal, 0, 4, None, BATCH) == pytest.approx(0.25 * ch.FIXED_MS + 4 * 0.1)
    wall = calibration.from_data(_with_cpu(ch.calibration_data()), "wall collectives")  # no cpu_* figures
    assert calibration.dense_ms(wall, 1e6, 100_000, BATCH) == pytest.approx(
        compute + ch.LATENCY_MS + 4e5 / (ch.BANDWIDTH_GBPS * 1e9) * 1e3)
    from dlrm_dist.planning.torchrec_bridge import calibrated_bandwidths

    assert calibrated_bandwidths(cal, "rowwise_adagrad")["intra_host_bw"] == pytest.approx(4.0 * 1e9 / 1000)


def test_a_job_counts_its_dense_part_from_the_model() -> None:
    import torch

    from dlrm_dist.model.interaction import DotInteraction
    from dlrm_dist.planning.job_calibration import dense_part

    with torch.device("meta"):
        bottom = torch.nn.Sequential(torch.nn.Linear(13, 8), torch.nn.ReLU())
        dot = DotInteraction(num_sparse=3, dim=8, dense_dim=8)  # [dense, 3 embeddings]: n = 4
        top = torch.nn.Sequential(torch.nn.Linear(dot.out_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    dense = dense_part([bottom, dot, top])
    weights = 13 * 8 + dot.out_features * 16 + 16
    assert dense.parameters == weights + 8 + 16 + 1  # weights and biases: all all-reduced
    assert dense.flops_per_sample == pytest.approx(2 * weights + 2 * 4 * 4 * 8)  # + the interaction's x x^T
    no_dense = DotInteraction(num_sparse=3, dim=8, dense_dim=0)
    assert dense_part([no_dense]).flops_per_sample == pytest.approx(2 * 3 * 3 * 8)


# -- calibration inside a job (sharding.calibration) ---------------------------------------------
def _job_cal(tmp_path: Path, **machine: Any) -> Path:
    import socket

    import fbgemm_gpu
    import torch

    data = ch.calibration_data()
    data["machine"].update({"host": socket.gethostname(), "torch": torch.__version__,
                            "fbgemm": getattr(fbgemm_gpu, "__version__", "?"), **machine})
    return _write(tmp_path, data, f"job-{len(machine)}.json")


def test_a_job_reuses_a_matching_file_and_refuses_a_named_one_of_another_shape(tmp_path: Path) -> None:
    from dlrm_dist.planning.job_calibration import _decide, calibration_path

    path = _job_cal(tmp_path)
    data, error = _decide(path, True, 2, "gloo", "cpu", "rowwise_adagrad")
    assert error is None and data == calibration.read(path).to_data()  # reused as it is
    data, error = _decide(path, True, 4, "gloo", "cpu", "rowwise_adagrad")
    assert data is None and "world_size is 2, this job's is 4" in error and str(path) in error
    _, error = _decide(path, True, 2, "gloo", "cpu", "adam")
    assert "measured with rowwise_adagrad, this job's optimizer is 'adam'" in error
    # auto's own file: another shape is measured again (None, None), as is a missing or damaged file
    assert _decide(path, False, 4, "gloo", "cpu", "rowwise_adagrad") == (None, None)
    assert _decide(tmp_path / "none.json", True, 2, "gloo", "cpu", "rowwise_adagrad") == (None, None)
    (tmp_path / "bad.json").write_text("{")
    assert _decide(tmp_path / "bad.json", False, 2, "gloo", "cpu", "rowwise_adagrad") == (None, None)
    _, error = _decide(tmp_path / "bad.json", True, 2, "gloo", "cpu", "rowwise_adagrad")
    assert "bad.json" in error
    other = _job_cal(tmp_path, host="elsewhere")
    assert "machine.host is 'elsewhere'" in _decide(other, True, 2, "gloo", "cpu", "rowwise_adagrad")[1]
    assert calibration_path("auto", "runs/a") == Path("runs/a/calibration.json")
    assert calibration_path("m.json", "runs/a") == Path("m.json")


def test_a_job_measures_its_own_tables() -> None:
    from dlrm_dist.planning.job_calibration import job_sizes
    from dlrm_dist.planning.types import TableSpec

    tables = [TableSpec("a", 100, 8, 1.0), TableSpec("b", 10**9, 64, 30.0), TableSpec("c", 5000, 16, 0.5),
              TableSpec("d", 700, 16, 4.0)]
    sizes = job_sizes(tables, world_size=2, batch_per_rank=128, optimizer="adagrad")
    assert sizes.dims == (8, 16, 64) and sizes.pooling_factors == (1.0, 30.0) and sizes.batch == 256
    cap = sizes.max_table_bytes // (4 * 64)  # no grid table larger than a rank may allocate at the widest dim
    assert sizes.rows == (100, 5000, cap) and sizes.kernels == ("fused",) and sizes.optimizer == "adagrad"
    assert 256 * (8 + 64 + 16 + 16) * 4 in sizes.comm_bytes
    assert {batch for _, _, batch in sizes.receive_probes} == {128}  # the receiving side at the job's batch per rank


def test_calibration_beside_a_fixed_plan_is_refused_by_name() -> None:
    from dlrm_dist.config import load_config
    from dlrm_dist.config.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sharding.calibration='auto' chooses a plan by measured costs, but "
                                          r"sharding.sharding_type='row_wise' already fixes it"):
        load_config(["--sharding.calibration=auto", "--sharding.sharding_type=row_wise"])
    assert load_config(["--sharding.calibration=auto"]).sharding.calibration == "auto"


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
