"""`dlrm-plan` end to end (in process): make, inspect (--json, --html, --measured), diff,
validate, compare — and its errors."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from torchrec.distributed.planner.types import Perf

from dlrm_dist.cli.plan_main import main
from tests.bad_plan_inputs import CASES, run_case

ROOT = Path(__file__).resolve().parents[2]
KAGGLE = ROOT / "sharding_plans" / "criteo_kaggle_gpu8.json"


def _tables(tmp_path: Path) -> Path:
    f = tmp_path / "tables.json"
    f.write_text(json.dumps({"tables": [{"name": f"t{i}", "rows": 10_000 * (i + 1), "dim": 64, "pooling_factor": 2}
                                        for i in range(10)]}))
    return f


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_make_then_inspect_json(tmp_path, capsys) -> None:
    plan = tmp_path / "p.json"
    code, out, _ = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "4", "--ranks-per-host", "2",
                        "--hbm-gb", "16", "-o", str(plan))
    assert code == 0 and "wrote" in out and "bottleneck: rank" in out and plan.is_file()
    code, out, _ = _run(capsys, "inspect", str(plan), "--json")
    data = json.loads(out)
    assert code == 0 and len(data["per_rank"]) == 4
    s = data["summary"]
    for key in ("bottleneck_rank", "bottleneck_tables", "cost_imbalance", "hbm_headroom_bytes",
                "all_to_all_bytes_per_sample", "estimated_iteration_ms", "estimated_samples_per_s"):
        assert key in s
    r = data["per_rank"][0]
    for key in ("fwd_compute", "bwd_compute", "fwd_comms", "bwd_comms", "hbm_bytes", "ddr_bytes",
                "input_bytes", "output_bytes", "shards_by_type"):
        assert key in r
    assert s["cost_imbalance"] == pytest.approx(max(x["cost_ms"] for x in data["per_rank"]) /
                                                (sum(x["cost_ms"] for x in data["per_rank"]) / 4) - 1)


def test_inspect_text_shows_ranks_and_summary(capsys) -> None:
    code, out, _ = _run(capsys, "inspect", str(KAGGLE))
    assert code == 0
    lines = out.splitlines()
    assert sum(1 for line in lines if line.strip()[:1].isdigit() and "G/" in line) == 8  # one line per rank
    for words in ("bottleneck: rank", "imbalance", "headroom", "all-to-all bytes per sample", "samples/s"):
        assert words in out


class _Bars(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rects: list[dict[str, str]] = []
        self.charts: list[str] = []
        self.data = ""
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "rect":
            self.rects.append(a)
        if tag == "svg":
            self.charts.append(a.get("data-chart", ""))
        self._in_data = tag == "script" and a.get("id") == "plan-data"

    def handle_data(self, data):
        if self._in_data:
            self.data += data


def test_html_bars_match_the_estimates(tmp_path, capsys) -> None:
    page = tmp_path / "plan.html"
    code, _, _ = _run(capsys, "inspect", str(KAGGLE), "--html", str(page))
    assert code == 0
    parser = _Bars()
    parser.feed(page.read_text())
    assert parser.charts == ["Estimated cost per rank", "HBM per rank", "DDR per rank"]
    est = json.loads(parser.data)["estimates"]
    cost_rects = [r for r in parser.rects if r["data-part"] in ("fwd_compute", "fwd_comms", "bwd_compute", "bwd_comms", "prefetch_compute")]
    for rank in range(8):
        drawn = sum(float(r["data-value"]) for r in cost_rects if r["data-rank"] == str(rank))
        assert drawn == pytest.approx(est["per_rank"][rank]["cost_ms"])
    heights = {int(r["data-rank"]): float(r["height"]) for r in parser.rects if r["data-part"] == "fwd_compute"}
    assert len(heights) == 8 and max(heights.values()) > 0
    assert "<script src" not in page.read_text() and "http" not in page.read_text().split("<svg")[0]


def test_measured(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"rank_step_ms": [70.0 + r for r in range(8)]}))
    code, out, _ = _run(capsys, "inspect", str(KAGGLE), "--measured", str(run_dir), "--json")
    assert code == 0 and json.loads(out)["measured_step_ms"][7] == 77.0
    code, out, _ = _run(capsys, "inspect", str(KAGGLE), "--measured", str(run_dir))
    assert "meas ms" in out and "77.00" in out
    (run_dir / "summary.json").write_text(json.dumps({"rank_step_ms": [1.0, 2.0]}))
    code, _, err = _run(capsys, "inspect", str(KAGGLE), "--measured", str(run_dir))
    assert code == 2 and "step times of 2 rank(s); the plan is for 8" in err


def test_diff(capsys) -> None:
    a = ROOT / "sharding_plans" / "mlperf_dcnv2_criteo1tb_gpu8x80gb.json"
    b = ROOT / "sharding_plans" / "mlperf_dcnv2_criteo1tb_gpu8x16gb_uvm.json"
    code, out, _ = _run(capsys, "diff", str(a), str(b), "--json")
    data = json.loads(out)
    assert code == 0 and data["tables"]
    assert any("resharded" in c["change"] or "cache" in c["change"] for c in data["tables"])
    assert data["summary"]["estimated_iteration_ms"]["a"] < data["summary"]["estimated_iteration_ms"]["b"]
    code, out, _ = _run(capsys, "diff", str(a), str(a))
    assert "0 table(s) differ" in out


def test_validate(tmp_path, capsys) -> None:
    tables = tmp_path / "t.json"
    inputs = json.loads((ROOT / "sharding_plans" / "inputs" / "criteo_kaggle_gpu8.json").read_text())
    tables.write_text(json.dumps({"tables": inputs["tables"]}))
    code, out, _ = _run(capsys, "validate", str(KAGGLE), "--tables", str(tables), "--world-size", "8")
    assert code == 0 and "OK" in out
    inputs["tables"][3]["rows"] += 1
    inputs["tables"].append({"name": "extra", "rows": 5, "dim": 16})
    tables.write_text(json.dumps({"tables": inputs["tables"]}))
    code, out, _ = _run(capsys, "validate", str(KAGGLE), "--tables", str(tables), "--world-size", "4")
    assert code == 1
    assert "table extra is in the model but missing" in out and "t_cat_3" in out and "world size is 4" in out


def test_compare_with_baselines(capsys) -> None:
    code, out, _ = _run(capsys, "compare", str(KAGGLE), "--json")
    rows = {r["planner"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == {"dlrm_dist", "round_robin", "greedy_by_size"}
    assert rows["dlrm_dist"]["bottleneck_ms"] <= min(r["bottleneck_ms"] for r in rows.values() if r["fits"])


def test_errors_are_clear(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "inspect", str(tmp_path / "missing.json"))
    assert code == 2 and "does not exist" in err
    code, _, err = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "-o", str(tmp_path / "x.json"))
    assert code == 2 and "--world-size" in err
    code, _, err = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "6", "--ranks-per-host", "4",
                        "-o", str(tmp_path / "x.json"))
    assert code == 2 and "world_size=6 must be a positive multiple" in err


def _plan(tmp_path: Path, capsys, name: str, tables: list[dict], world: int = 2) -> Path:
    f, out = tmp_path / f"{name}_tables.json", tmp_path / f"{name}.json"
    f.write_text(json.dumps({"tables": tables}))
    code, _, err = _run(capsys, "make", "--tables", str(f), "--world-size", str(world), "--device", "cpu", "-o", str(out))
    assert code == 0, err
    return out


def test_diff_says_resized_with_both_sizes(tmp_path, capsys) -> None:
    """It used to call a resized table "moved ranks [0] -> ranks [0]"."""
    tables = [{"name": f"t{i}", "rows": 1000 * (i + 1), "dim": 16} for i in range(4)]
    a = _plan(tmp_path, capsys, "a", tables)
    tables[2]["rows"] = 5000
    b = _plan(tmp_path, capsys, "b", tables)
    code, out, _ = _run(capsys, "diff", str(a), str(b), "--json")
    changes = {c["table"]: c["change"] for c in json.loads(out)["tables"]}
    assert code == 0 and changes["t2"].startswith("resized 3000x16 -> 5000x16")


def test_hand_edited_plan_is_refused_not_shown(tmp_path, capsys) -> None:
    """Shards moved to rank 7 of a 2-rank plan: inspect used to show the stored estimates as if fine."""
    plan = _plan(tmp_path, capsys, "p", [{"name": "t0", "rows": 1000, "dim": 16}, {"name": "t1", "rows": 900, "dim": 16}])
    data = json.loads(plan.read_text())
    for ps in data["plan"]["model.sparse_arch"].values():
        for shard in ps.get("shards") or []:
            shard["placement"] = "rank:7/cpu"
        ps["ranks"] = [7] * len(ps.get("ranks") or [7])
    plan.write_text(json.dumps(data))
    for command in (["inspect", str(plan)], ["diff", str(plan), str(plan)], ["compare", str(plan)]):
        code, out, err = _run(capsys, *command)
        assert code == 2 and "on rank 7, but the world size is 2" in err and "edited by hand" in err, (command, err)


def test_plan_file_path_that_is_a_directory(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "inspect", str(tmp_path))
    assert code == 2 and "is a directory, not a file" in err


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.command}-{c.name}")
def test_bad_files_exit_2_naming_the_entry(tmp_path, case) -> None:
    """~60 malformed inputs and damaged plans (tests/bad_plan_inputs.py): 25 raised tracebacks, 16 were accepted."""
    outcome = run_case(case, tmp_path)
    assert outcome.traceback is None, outcome.traceback
    lines = outcome.err.strip().splitlines()
    assert outcome.code == 2 and len(lines) == 1, outcome.err
    assert lines[0].startswith(f"dlrm-plan {case.command}: error: ") and case.expect in lines[0], lines[0]


@pytest.mark.parametrize("rows, dim, words", [
    (1000, 2**40, "table huge: 1,000 rows x 1,099,511,627,776 dim needs at least 4,398,046,511,104,000 bytes"),
    (2**62, 16, "beyond int64, which TorchRec's sizes use"),
    (10**9, 1024, "would fit: a world size of at least 1,060 with this memory per rank"),
])
def test_huge_tables_are_refused_by_the_storage_check(tmp_path, capsys, rows, dim, words) -> None:
    """dim = 2**40 used to end in a MemoryError (after trying to allocate), rows = 2**62 in an overflow."""
    tables = tmp_path / "t.json"
    tables.write_text(json.dumps({"tables": [{"name": "small", "rows": 10, "dim": 16},
                                             {"name": "huge", "rows": rows, "dim": dim}]}))
    code, _, err = _run(capsys, "make", "--tables", str(tables), "--world-size", "2", "--device", "cpu",
                        "--ddr-gb", "8", "--optimizer", "sgd", "-o", str(tmp_path / "p.json"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert words in err and "table small" not in err
    assert "the memory budget is 7,730,941,132 bytes (7.20 GB = 2 cpu rank(s) x (HBM 0.00 GB + DDR 3.60 GB)" in err
    assert not (tmp_path / "p.json").exists()


def test_validate_lists_every_mismatch_and_refuses_world_size_0(tmp_path, capsys) -> None:
    tables = tmp_path / "t.json"
    tables.write_text(json.dumps({"tables": [{"name": "t_cat_0", "rows": 5, "dim": 16}]}))
    code, out, _ = _run(capsys, "validate", str(KAGGLE), "--tables", str(tables), "--world-size", "8")
    lines = out.splitlines()
    assert code == 1 and lines[0].endswith("on 8 x cuda:") and len(lines) > 20
    assert all(line.startswith("  - table ") for line in lines[1:])
    code, _, err = _run(capsys, "validate", str(KAGGLE), "--tables", str(tables), "--world-size", "0")
    assert code == 2 and "--world-size=0 must be >= 1" in err


def test_make_flags_are_checked_like_a_file(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "2", "--hbm-gb", "nan",
                        "--cache-load-factor", "-1", "-o", str(tmp_path / "x.json"))
    assert code == 2 and "tables.json + flags: 2 problems: topology.hbm_gb: must be a finite number" in err
    assert "budgets.cache_load_factor: must be a finite number in (0, 1], got -1.0" in err
    code, _, err = _run(capsys, "make", "--tables", str(_tables(tmp_path)), "--world-size", "2", "-o", str(tmp_path))
    assert code == 2 and "is a directory; give a file name" in err


def test_measured_summary_is_checked(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for text, words in (('{"rank_step_ms": [70, NaN]}', "rank_step_ms[1]: must be a finite number > 0, got nan"),
                        ('{"rank_step_ms": "fast"}', "rank_step_ms: must be a non-empty list"),
                        ("{", "is not valid JSON")):
        (run_dir / "summary.json").write_text(text)
        code, _, err = _run(capsys, "inspect", str(KAGGLE), "--measured", str(run_dir))
        assert code == 2 and words in err, err


def test_measured_ratio_of_a_rank_without_cost_is_not_nan() -> None:
    from dlrm_dist.cli.render import rank_table
    from dlrm_dist.planning import planfile

    est = planfile.read(KAGGLE).estimates
    idle = dataclasses.replace(est.per_rank[0], perf=Perf(0.0, 0.0, 0.0, 0.0))
    table = rank_table(dataclasses.replace(est, per_rank=(idle, *est.per_rank[1:])), [70.0 + r for r in range(8)])
    first = table.splitlines()[1]
    assert "nan" not in table and first.split()[0] == "0" and "70.00        -" in first
