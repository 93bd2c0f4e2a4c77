"""Planner inputs: files, flags, and every kind of bad value named with its path."""

from __future__ import annotations

import json
import math

import pytest

from dlrm_dist.planning.inputs import InputsModel, PlanInputError, TableModel
from dlrm_dist.planning.types import PlannerInputs, TableSpec, TopologySpec
from dlrm_dist.validation import describe, path_of

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
    assert PlannerInputs.load(str(tmp_path / "in.json")).topology.world_size == 4
    assert TableSpec.load_all(str(tmp_path / "t.toml"))[0].pooling_factor == 2.5


@pytest.mark.parametrize("changes, words", [
    ({"topology__device": "tpu"}, ["topology.device: must be one of cuda, cpu, got 'tpu'"]),
    ({"topology__world_size": 5}, ["topology: world_size=5 must be a positive multiple of ranks_per_host=2"]),
    ({"budgets__hbm_share": 1.5}, ["budgets.hbm_share: must be a finite number in (0, 1], got 1.5"]),
    ({"budgets__cache_load_factor": 0}, ["budgets.cache_load_factor: must be a finite number in (0, 1], got 0"]),
    ({"optimizer": "lamb"}, ["optimizer: must be one of sgd, adagrad, rowwise_adagrad, adam, got 'lamb'"]),
    ({"tables": [{"name": "t0", "rows": 0, "dim": 16}]}, ["tables[0].rows (t0): must be an integer >= 1, got 0"]),
    ({"tables": [{"name": "t0", "rows": 1, "dim": 16, "sharding_types": ["diagonal"]}]},
     ["tables[0].sharding_types[0] (t0): must be one of", "row_wise", "got 'diagonal'"]),
    ({"tables": [{"name": "t0", "rows": 1, "dim": 16, "colour": 3}]},
     ["tables[0].colour (t0): unknown key; valid keys: cache_load_factor, compute_kernels, dim, feature_names, managed, name"]),
    ({"tables": [{"name": "t0", "rows": 1, "dim": 4}, {"name": "t0", "rows": 2, "dim": 4}]},
     ["tables: table 't0' appears twice (tables[0] and tables[1])"]),
    ({"tables": [{"name": "a", "rows": 1, "dim": 4, "feature_names": ["f"]},
                 {"name": "b", "rows": 2, "dim": 4, "feature_names": ["f"]}]},
     ["feature 'f' is served by two tables ('a' and 'b')"]),
    ({"topology__nvlink": True}, ["topology.nvlink: unknown key"]),
    ({"tables": [{"name": "t0", "rows": 1, "dim": 16, "pooling_factor": math.nan}]},
     ["tables[0].pooling_factor (t0): must be a finite number in (0, 1000000], got nan"]),
    ({"tables": [{"name": "t0", "rows": 1.9, "dim": 16}]}, ["tables[0].rows (t0): must be an integer >= 1, got 1.9"]),
    ({"tables": [{"name": "t0", "rows": True, "dim": 16}]}, ["tables[0].rows (t0): must be an integer >= 1, got True"]),
    ({"tables": [{"name": "t0", "rows": 1, "dim": 16, "compute_kernels": []}]},
     ["tables[0].compute_kernels (t0): must be a non-empty list"]),
    ({"topology__hbm_gb": math.inf}, ["topology.hbm_gb: must be a finite number in [0, 1048576], got inf"]),
    ({"topology__ddr_bw_gbps": -1.0}, ["topology.ddr_bw_gbps: must be a finite number in (0, 1000000], got -1.0"]),
    ({"topology": [4, 2]}, ["topology: must be an object with keys ddr_bw_gbps, ddr_gb, device, hbm_bw_gbps, hbm_gb, inter_host_bw_gbps, intra_host_bw_gbps, ranks_per_host, world_size, got [4, 2]"]),
    ({"batch_size_per_rank": "64"}, ["batch_size_per_rank: must be an integer in [1, 2147483647], got '64'"]),
    # found by the red team: TorchRec's module dict raised a KeyError traceback for these
    ({"tables": [{"name": "a.b", "rows": 1, "dim": 4}]}, ["tables[0].name (a.b): must be a table name", "no '.'"]),
    ({"tables": [{"name": "../x", "rows": 1, "dim": 4}]}, ["tables[0].name (../x): must be a table name"]),
])
def test_bad_inputs_are_named(changes: dict, words: list[str]) -> None:
    with pytest.raises(PlanInputError) as e:
        PlannerInputs.from_dict(_with(**changes), origin="job.json")
    message = str(e.value)
    assert message.startswith("job.json: ") and "\n" not in message
    for w in words:
        assert w in message, f"{w!r} not in {message}"


def test_every_problem_is_reported_at_once() -> None:
    data = _with(tables=[{"name": "t0", "rows": "1", "dim": 1.9}, {"name": "t1", "rows": 1, "dim": 4, "x": 1}],
                 budgets={"hbm_share": math.nan})
    with pytest.raises(PlanInputError) as e:
        PlannerInputs.from_dict(data, origin="job.json")
    assert str(e.value).startswith("job.json: 4 problems: tables[0].rows (t0): must be an integer >= 1, got '1'; ")
    for w in ("tables[0].dim (t0)", "tables[1].x (t1): unknown key", "budgets.hbm_share: must be a finite number"):
        assert w in str(e.value)


def test_inputs_built_in_code_obey_the_same_rules() -> None:
    topo = TopologySpec(world_size=2, ranks_per_host=2, device="cpu")
    with pytest.raises(PlanInputError, match=r"planner inputs: tables\[0\].pooling_factor \(t\): must be a finite"):
        PlannerInputs(tables=(TableSpec("t", 10, 4, pooling_factor=math.nan),), topology=topo)
    with pytest.raises(PlanInputError, match=r"topology.hbm_gb: must be a finite number"):
        PlannerInputs(tables=(TableSpec("t", 10, 4),), topology=TopologySpec(2, 2, hbm_gb=-1.0))


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(PlanInputError, match="does not exist"):
        PlannerInputs.load(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanInputError, match="bad.json' is not valid JSON"):
        PlannerInputs.load(str(tmp_path / "bad.json"))
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(PlanInputError, match=r"t.json: tables: is required; must be a non-empty list of objects"):
        TableSpec.load_all(str(tmp_path / "t.json"))
    (tmp_path / "t.json").write_text('{"tables": [{"name": "a", "rows": 3, "dim": NaN}]}')
    with pytest.raises(PlanInputError, match=r"tables\[0\].dim \(a\): must be an integer >= 1, got nan"):
        TableSpec.load_all(str(tmp_path / "t.json"))


def test_to_dict_round_trip() -> None:
    p = PlannerInputs.from_dict(_with(tables=[{"name": "t0", "rows": 3, "dim": 8, "compute_kernels": ["fused"],
                                                "cache_load_factor": 0.3}]))
    assert PlannerInputs.from_dict(p.to_dict()) == p


def test_messages_come_from_the_declared_model() -> None:
    """The words after "must be" are read from each field's type and bounds, not written per field."""
    assert path_of(("tables", 3, "pooling_factor")) == "tables[3].pooling_factor"
    assert path_of(("plan", "model.sparse_arch", "t0")) == "plan['model.sparse_arch'].t0"
    field = TableModel.model_fields["cache_load_factor"]
    assert describe(float, field.metadata) == "a finite number in (0, 1]"
    assert set(InputsModel.model_fields) == {"about", "tables", "topology", "budgets", "batch_size_per_rank",
                                             "optimizer", "calibration", "dense"}


def test_tables_files_written_by_dlrm_data_stats_load(tmp_path) -> None:
    """``dlrm-data stats --tables-out`` writes what ``dlrm-plan make --tables`` reads; an empty feature is named."""
    from dlrm_dist.data.columnar.stats import tables_file as columnar_tables

    criteo = columnar_tables({"features": [{"feature": "cat_0", "pooling_factor": 1.0}],
                              "tables": [{"name": "t_cat_0", "rows": 1000, "dim": None, "features": ["cat_0"]}]}, 16)
    (tmp_path / "criteo.json").write_text(json.dumps(criteo))
    assert TableSpec.load_all(str(tmp_path / "criteo.json")) == (TableSpec("t_cat_0", 1000, 16, 1.0, ("cat_0",)),)
    stats = {"features": [{"feature": "a", "pooling_factor": 2.5}, {"feature": "b", "pooling_factor": 0.0}],
             "tables": [{"name": "ta", "rows": 50, "dim": None, "features": ["a"]},
                        {"name": "tb", "rows": 9, "dim": 8, "features": ["b"]}]}
    (tmp_path / "columnar.json").write_text(json.dumps(columnar_tables(stats, 32)))
    with pytest.raises(PlanInputError, match=r"tables\[1\].pooling_factor \(tb\): must be a finite number in \(0, "):
        TableSpec.load_all(str(tmp_path / "columnar.json"))
