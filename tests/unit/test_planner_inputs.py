"""Planner inputs: files, flags, and every kind of bad value named."""

from __future__ import annotations

import json

import pytest

from dlrm_dist.planning.inputs import PlanInputError, PlannerInputs, load_inputs, load_tables

GOOD = {"tables": [{"name": "t0", "rows": 100, "dim": 16}], "topology": {"world_size": 4, "ranks_per_host": 2}}


def _with(**changes) -> dict:
    d = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if key:
            d.setdefault(section, {})[key] = value
        else:
            d[section] = value
    return d


def test_json_and_toml_files(tmp_path) -> None:
    (tmp_path / "in.json").write_text(json.dumps(GOOD))
    (tmp_path / "t.toml").write_text('[[tables]]\nname = "x"\nrows = 5\ndim = 8\npooling_factor = 2.5\n')
    assert load_inputs(str(tmp_path / "in.json")).topology.world_size == 4
    assert load_tables(str(tmp_path / "t.toml"))[0].pooling_factor == 2.5


@pytest.mark.parametrize("changes, words", [
    ({"topology__device": "tpu"}, ["topology.device='tpu'", "cuda, cpu"]),
    ({"topology__world_size": 5}, ["world_size=5", "multiple of", "ranks_per_host=2"]),
    ({"budgets__hbm_share": 1.5}, ["budgets.hbm_share=1.5"]),
    ({"budgets__cache_load_factor": 0}, ["cache_load_factor=0"]),
    ({"optimizer": "lamb"}, ["optimizer='lamb'", "rowwise_adagrad"]),
    ({"tables": [{"name": "t0", "rows": 0, "dim": 16}]}, ["t0", "rows=0"]),
    ({"tables": [{"name": "t0", "rows": 1, "dim": 16, "sharding_types": ["diagonal"]}]}, ["t0", "diagonal", "row_wise"]),
    ({"tables": [{"name": "t0", "rows": 1, "dim": 16, "colour": 3}]}, ["table #0 (t0)", "colour"]),
    ({"tables": [{"name": "t0", "rows": 1, "dim": 4}, {"name": "t0", "rows": 2, "dim": 4}]}, ["'t0' appears twice"]),
    ({"topology__nvlink": True}, ["topology", "nvlink"]),
])
def test_bad_inputs_are_named(changes: dict, words: list[str]) -> None:
    with pytest.raises(PlanInputError) as e:
        PlannerInputs.from_dict(_with(**changes), origin="job.json")
    for w in words:
        assert w in str(e.value), f"{w!r} not in {e.value}"


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(PlanInputError, match="does not exist"):
        load_inputs(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanInputError, match="bad.json' is not valid JSON"):
        load_inputs(str(tmp_path / "bad.json"))
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(PlanInputError, match="top-level 'tables'"):
        load_tables(str(tmp_path / "t.json"))


def test_to_dict_round_trip() -> None:
    p = PlannerInputs.from_dict(_with(tables=[{"name": "t0", "rows": 3, "dim": 8, "compute_kernels": ["fused"],
                                                "cache_load_factor": 0.3}]))
    assert PlannerInputs.from_dict(p.to_dict()) == p
