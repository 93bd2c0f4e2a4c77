"""Fuzzing the calibration file: generated valid files, then one mutation, through the reader
and through ``dlrm-plan make --calibration`` (in process).

A valid calibration (1-3 dims x 1-2 row counts x 1-3 id counts, any positive costs) reads back
equal to what was written, and every cost the model gives from it is finite and >= 0. One
mutation (a wrong type, nan/inf/negative/zero, an empty list, an unknown kernel, an extra key,
a removed key, a duplicate point) either still reads (and then the same holds) or is one
CalibrationError line naming the file. ``dlrm-plan make`` with it exits 0 with finite estimates
or 2 with one line. Never a traceback; never a file written on a refusal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dlrm_dist.cli.plan_main import main
from dlrm_dist.planning import calibration
from dlrm_dist.planning.calibration import CalibrationError, KernelModel
from tests import calibration_helper as ch

DELETE = object()
BAD_VALUES = st.sampled_from(["7", "", [], {}, True, None, math.nan, math.inf, -math.inf, -1, 0, 1.9, 2**70,
                              "warp_drive", DELETE])
POSITIVE = st.floats(1e-6, 1e4, allow_nan=False)


@st.composite
def calibrations(draw: st.DrawFn) -> dict[str, Any]:
    dims = tuple(draw(st.lists(st.sampled_from([4, 8, 16, 64, 128]), min_size=1, max_size=3, unique=True)))
    rows = tuple(draw(st.lists(st.integers(1, 10**7), min_size=1, max_size=2, unique=True)))
    ids = tuple(draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=3, unique=True)))
    data = ch.calibration_data(world_size=draw(st.sampled_from([1, 2, 4])), dims=dims, rows=rows, ids=ids)
    for p in data["embedding"]:
        p["fwd_ms"], p["bwd_ms"] = draw(POSITIVE), draw(POSITIVE)
    data["all_to_all"]["bandwidth_gbps"] = draw(POSITIVE)
    data["step"]["fixed_ms"] = draw(st.floats(0, 100))
    return data


def _paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d[:2]):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(data: dict[str, Any], path: tuple, value: Any) -> None:
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


def _check_model(cal: calibration.CalibrationModel) -> None:
    model = KernelModel(cal.embedding)
    for dim in (4, 16, 1000):
        for rows in (1, 5000, 10**8):
            costs = model.ms("fused", "rowwise_adagrad", dim, rows, 1234.0)
            assert all(math.isfinite(c) and c >= 0 for c in costs)
    assert math.isfinite(calibration.dense_ms(cal, 1e6, 10**6, 512))


@given(calibrations(), st.data())
def test_a_calibration_reads_back_or_is_refused_in_one_line(tmp_path_factory, data: dict[str, Any], draw: st.DataObject) -> None:
    tmp = tmp_path_factory.mktemp("cal")
    if draw.draw(st.booleans()):
        path = draw.draw(st.sampled_from(_paths(data)))
        _mutate(data, path, draw.draw(BAD_VALUES))
    elif draw.draw(st.booleans()):
        data["embedding"].append(dict(data["embedding"][0]))  # the same setting twice
    file = tmp / "machine.json"
    file.write_text(json.dumps(data))
    try:
        cal = calibration.read(file)
    except CalibrationError as e:
        assert str(file) in str(e) and "\n" not in str(e) and "Traceback" not in str(e)
        return
    calibration.write(cal, tmp / "again.json")
    assert calibration.read(tmp / "again.json") == cal
    _check_model(cal)


@given(calibrations(), st.booleans())
def test_make_with_a_calibration_plans_or_exits_2(tmp_path_factory, capsys, data: dict[str, Any], damage: bool) -> None:
    tmp = tmp_path_factory.mktemp("make")
    if damage:
        data["embedding"][0]["fwd_ms"] = -1.0
    (tmp / "machine.json").write_text(json.dumps(data))
    (tmp / "tables.json").write_text(json.dumps({"tables": [{"name": "t0", "rows": 500, "dim": 16, "pooling_factor": 3},
                                                            {"name": "t1", "rows": 9000, "dim": 8}]}))
    plan = tmp / "p.json"
    code = main(["make", "--tables", str(tmp / "tables.json"), "--calibration", str(tmp / "machine.json"),
                 "--device", "cpu", "-o", str(plan), "--json"])
    out = capsys.readouterr()
    if damage:
        assert code == 2 and len(out.err.strip().splitlines()) == 1 and "machine.json" in out.err and not plan.exists()
        return
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert math.isfinite(summary["estimated_iteration_ms"]) and summary["estimated_iteration_ms"] >= 0
