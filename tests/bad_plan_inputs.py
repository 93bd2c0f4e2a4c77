"""Malformed planner inputs and damaged plan files, fed to ``dlrm-plan`` in-process.

Each case is one file a user could write or hand-edit (strings for ints, lists for objects,
nan/inf/negative budgets and bandwidths, NaN pooling factors, unknown kernels and sharding
types, ``ranks: []``, NaN or negative estimates, huge tables, ...) and the subcommand that
reads it. Every one must end in exit 2 with a one-line ``dlrm-plan CMD: error: ...`` naming
the entry; none may raise. ``tests/unit/test_plan_cli.py`` runs them all; run this file to
count the tracebacks directly:

    .venv/bin/python -m tests.bad_plan_inputs
"""

from __future__ import annotations

import copy
import io
import json
import math
import sys
import tempfile
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
DEMO_PLAN = ROOT / "sharding_plans" / "demo_cpu2.json"

SMALL_INPUTS: dict[str, Any] = {
    "tables": [{"name": "t0", "rows": 1000, "dim": 16, "pooling_factor": 1.0},
               {"name": "t1", "rows": 500, "dim": 16, "pooling_factor": 2.0}],
    "topology": {"world_size": 2, "ranks_per_host": 2, "device": "cpu", "ddr_gb": 8.0},
    "budgets": {"hbm_share": 0.9, "ddr_share": 0.9, "cache_load_factor": 0.2},
    "batch_size_per_rank": 64,
    "optimizer": "sgd",
}


@dataclass(frozen=True)
class Case:
    """One bad file: ``edit`` changes a copy of the good data in place (or returns raw text)."""

    name: str
    command: str  # make | inspect | validate
    edit: Callable[[Any], Optional[str]]
    expect: str  # a fragment the error message must contain (the entry it names)


def _set(path: str, value: Any) -> Callable[[Any], None]:
    """An edit that sets ``value`` at a path ("tables/0/rows"); ``...`` deletes the key."""
    def edit(data: Any) -> None:
        *parents, last = path.split("/")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is ...:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def _every_shard(field: str, value: Any) -> Callable[[Any], None]:
    def edit(data: Any) -> None:
        for ps in data["plan"]["model.sparse_arch"].values():
            for shard in ps.get("shards") or []:
                shard[field] = value
    return edit


def _first_sharding(field: str, value: Any) -> Callable[[Any], None]:
    def edit(data: Any) -> None:
        data["plan"]["model.sparse_arch"]["t_cat_0"][field] = value
    return edit


def _truncate(data: Any) -> str:
    text = json.dumps(data)
    return text[: len(text) // 2]


NAN, INF = math.nan, math.inf

INPUT_CASES = [
    Case("rows as a string", "make", _set("tables/0/rows", "1000"), "tables[0].rows"),
    Case("dim as a float", "make", _set("tables/1/dim", 16.5), "tables[1].dim"),
    Case("name as a number", "make", _set("tables/0/name", 5), "tables[0].name"),
    Case("tables as an object", "make", _set("tables", {"name": "t0", "rows": 1, "dim": 4}), "tables"),
    Case("a table as a list", "make", _set("tables/0", [1, 2]), "tables[0]"),
    Case("no tables", "make", _set("tables", []), "tables"),
    Case("topology as a list", "make", _set("topology", []), "topology"),
    Case("world_size as a string", "make", _set("topology/world_size", "2"), "topology.world_size"),
    Case("world_size 0", "make", _set("topology/world_size", 0), "topology.world_size"),
    Case("hbm_gb nan", "make", _set("topology/hbm_gb", NAN), "topology.hbm_gb"),
    Case("ddr_gb inf", "make", _set("topology/ddr_gb", INF), "topology.ddr_gb"),
    Case("ddr_gb negative", "make", _set("topology/ddr_gb", -8.0), "topology.ddr_gb"),
    Case("hbm bandwidth nan", "make", _set("topology/hbm_bw_gbps", NAN), "topology.hbm_bw_gbps"),
    Case("inter-host bandwidth negative", "make", _set("topology/inter_host_bw_gbps", -5.0),
         "topology.inter_host_bw_gbps"),
    Case("pooling factor nan", "make", _set("tables/0/pooling_factor", NAN), "tables[0].pooling_factor"),
    Case("pooling factor inf", "make", _set("tables/1/pooling_factor", INF), "tables[1].pooling_factor"),
    Case("pooling factor as a string", "make", _set("tables/0/pooling_factor", "2"), "tables[0].pooling_factor"),
    Case("unknown kernel", "make", _set("tables/0/compute_kernels", ["warp_drive"]), "tables[0].compute_kernels[0]"),
    Case("unknown sharding type", "make", _set("tables/1/sharding_types", ["diagonal"]), "tables[1].sharding_types[0]"),
    Case("sharding types as a string", "make", _set("tables/1/sharding_types", "table_wise"),
         "tables[1].sharding_types"),
    Case("feature names as a string", "make", _set("tables/0/feature_names", "cat_0"), "tables[0].feature_names"),
    Case("hbm_share nan", "make", _set("budgets/hbm_share", NAN), "budgets.hbm_share"),
    Case("cache load factor inf", "make", _set("budgets/cache_load_factor", INF), "budgets.cache_load_factor"),
    Case("budgets as a list", "make", _set("budgets", [0.9]), "budgets"),
    Case("batch size as a float", "make", _set("batch_size_per_rank", 1.5), "batch_size_per_rank"),
    Case("optimizer as a number", "make", _set("optimizer", 5), "optimizer"),
    Case("extra key in topology", "make", _set("topology/nvlink", True), "topology.nvlink"),
    Case("dim 2**40", "make", _set("tables/0/dim", 2**40), "t0"),
    Case("rows 2**62", "make", _set("tables/1/rows", 2**62), "t1"),
    Case("inputs not an object", "make", lambda d: "[1, 2]", "top level"),
]

PLAN_CASES = [
    Case("ranks: []", "inspect", _first_sharding("ranks", []), "t_cat_0"),
    Case("ranks as a string", "inspect", _first_sharding("ranks", "0"), "t_cat_0"),
    Case("unknown sharding type", "inspect", _first_sharding("sharding_type", "diagonal"), "t_cat_0"),
    Case("unknown kernel", "inspect", _first_sharding("compute_kernel", "warp_drive"), "t_cat_0"),
    Case("shard placement garbage", "inspect", _every_shard("placement", "garbage"), "placement"),
    Case("shard offsets a string", "inspect", _every_shard("offsets", "0,0"), "offsets"),
    Case("shard sizes negative", "inspect", _every_shard("sizes", [-5, 16]), "sizes"),
    Case("plan as a list", "inspect", _set("plan", []), "plan"),
    Case("a table's sharding a string", "inspect", _set("plan/model.sparse_arch", {"t_cat_0": "table_wise"}), "t_cat_0"),
    Case("unknown enum member", "inspect",
         _first_sharding("cache_params", {"dataclass": "torchrec.distributed.types:CacheParams",
                                          "fields": {"algorithm": {"enum": "fbgemm_gpu.tbe.cache.cache_config:CacheAlgorithm",
                                                                   "name": "PSYCHIC"}}}), "t_cat_0"),
    Case("unknown dataclass field", "inspect",
         _first_sharding("cache_params", {"dataclass": "torchrec.distributed.types:CacheParams",
                                          "fields": {"colour": 3}}), "t_cat_0"),
    Case("foreign class", "inspect",
         _first_sharding("cache_params", {"dataclass": "os:system", "fields": {}}), "t_cat_0"),
    Case("estimate nan", "inspect", _set("estimates/per_rank/0/fwd_compute", NAN), "per_rank[0].fwd_compute"),
    Case("estimate inf", "inspect", _set("estimates/summary/estimated_iteration_ms", INF),
         "summary.estimated_iteration_ms"),
    Case("estimate negative", "inspect", _set("estimates/per_rank/1/ddr_bytes", -10), "per_rank[1].ddr_bytes"),
    Case("estimate as a string", "inspect", _set("estimates/summary/cost_imbalance", "low"), "summary.cost_imbalance"),
    Case("per_rank as an object", "inspect", _set("estimates/per_rank", {}), "per_rank"),
    Case("per_rank of another world size", "inspect", lambda d: d["estimates"]["per_rank"].pop() and None, "per_rank"),
    Case("shards_by_type a list", "inspect", _set("estimates/per_rank/0/shards_by_type", [1]),
         "per_rank[0].shards_by_type"),
    Case("bottleneck table unnamed", "inspect", _set("estimates/summary/bottleneck_tables/0/table", 7),
         "bottleneck_tables[0].table"),
    Case("bottleneck rank out of range", "inspect", _set("estimates/summary/bottleneck_rank", 9),
         "bottleneck_rank"),
    Case("inputs pooling factor nan", "inspect", _set("inputs/tables/0/pooling_factor", NAN),
         "tables[0].pooling_factor"),
    Case("inputs rows a string", "validate", _set("inputs/tables/3/rows", "8000"), "tables[3].rows"),
    Case("version a string", "inspect", _set("version", "2"), "version"),
    Case("planner a list", "inspect", _set("planner", []), "planner"),
    Case("estimates missing", "validate", _set("estimates", ...), "estimates"),
    Case("truncated", "inspect", _truncate, "not valid JSON"),
    Case("truncated (validate)", "validate", _truncate, "not valid JSON"),
]

CASES = INPUT_CASES + PLAN_CASES


@dataclass(frozen=True)
class Outcome:
    case: Case
    code: Optional[int]
    err: str
    traceback: Optional[str]


def _write_case(case: Case, folder: Path) -> Path:
    good = SMALL_INPUTS if case.command == "make" else json.loads(DEMO_PLAN.read_text())
    data = copy.deepcopy(good)
    text = case.edit(data)
    path = folder / "case.json"
    path.write_text(text if isinstance(text, str) else json.dumps(data))  # NaN/Infinity as Python writes them
    return path


def argv_for(case: Case, path: Path, folder: Path) -> list[str]:
    """The ``dlrm-plan`` arguments that read ``path`` the way ``case.command`` does."""
    if case.command == "make":
        return ["make", "--inputs", str(path), "-o", str(folder / "out.json")]
    if case.command == "validate":
        tables = folder / "tables.json"
        tables.write_text(json.dumps({"tables": json.loads(DEMO_PLAN.read_text())["inputs"]["tables"]}))
        return ["validate", str(path), "--tables", str(tables), "--world-size", "2"]
    return ["inspect", str(path)]


def run_case(case: Case, folder: Path) -> Outcome:
    """Runs one case in-process; a raised exception is recorded as a traceback."""
    from dlrm_dist.cli.plan_main import main

    path = _write_case(case, folder)
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv_for(case, path, folder))
    except SystemExit as e:  # argparse
        return Outcome(case, int(e.code or 0), err.getvalue(), None)
    except BaseException:  # noqa: BLE001 - counting exactly these is the point
        return Outcome(case, None, err.getvalue(), traceback.format_exc())
    return Outcome(case, code, err.getvalue(), None)


def main() -> int:
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            outcomes.append(run_case(case, folder))
    tracebacks = [o for o in outcomes if o.traceback]
    for o in outcomes:
        last = o.traceback.strip().splitlines()[-1] if o.traceback else o.err.strip().replace("\n", " | ")[:160]
        status = "TRACEBACK" if o.traceback else f"exit {o.code}"
        print(f"{o.case.command:<8} {o.case.name:<34} {status:<10} {last}")
    print(json.dumps({"cases": len(outcomes), "tracebacks": len(tracebacks),
                      "exit_2": sum(o.code == 2 for o in outcomes),
                      "other_exit": sum(o.code not in (2, None) for o in outcomes)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
