"""Reading a plan without torch or TorchRec (``dlrm-plan inspect`` / ``validate`` start fast).

- ``inspect`` and ``validate`` import neither torch nor TorchRec (a fresh interpreter checks
  ``sys.modules``): before, reading a plan imported both, 10-40 s on this machine;
- the torch-free pieces say what TorchRec's do: our Perf has TorchRec's fields and total; the
  view's check lists exactly check_plan's problems; the overlap check refuses what torch's
  EnumerableShardingSpec refuses.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm_dist.planning import planfile
from dlrm_dist.planning.check import PlanMismatchError, check_plan
from dlrm_dist.planning.perf import Perf
from dlrm_dist.planning.planformat import ShardModel, overlapping
from dlrm_dist.planning.planview import read_view, view_problems
from dlrm_dist.planning.types import ExpectedTable

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sharding_plans" / "demo_cpu2.json"

_NO_TORCH = """
import sys
from dlrm_dist.cli.plan_main import main
codes = [main(["inspect", {plan!r}]), main(["inspect", {plan!r}, "--json"]),
         main(["validate", {plan!r}, "--tables", {tables!r}, "--world-size", "2"])]
loaded = sorted(m for m in ("torch", "torchrec", "fbgemm_gpu") if m in sys.modules)
print("RESULT", codes, loaded)
"""


def test_inspect_and_validate_import_neither_torch_nor_torchrec(tmp_path: Path) -> None:
    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps({"tables": [t for t in json.loads(DEMO.read_text())["inputs"]["tables"]]}))
    script = _NO_TORCH.format(plan=str(DEMO), tables=str(tables))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert result == ["RESULT [0, 0, 0] []"], done.stderr[-2000:]


def test_our_perf_is_torchrecs() -> None:
    from torchrec.distributed.planner.types import Perf as TorchRecPerf

    assert [(f.name, f.default) for f in dataclasses.fields(Perf)] == \
           [(f.name, f.default) for f in dataclasses.fields(TorchRecPerf)]
    values = (1.5, 2.25, 3.0, 4.5, 5.75, 6.0)
    ours, theirs = Perf(*values), TorchRecPerf(*values)
    assert ours.total == theirs.total and dataclasses.astuple(ours + ours) == dataclasses.astuple(theirs + theirs)


def _expected(rows_edit: dict[str, tuple[int, int]] = {}, drop: str = "", add: str = "") -> list[ExpectedTable]:
    tables = [ExpectedTable(t["name"], *rows_edit.get(t["name"], (t["rows"], t["dim"])))
              for t in json.loads(DEMO.read_text())["inputs"]["tables"] if t["name"] != drop]
    return tables + ([ExpectedTable(add, 10, 16)] if add else [])


@pytest.mark.parametrize("tables, world, device", [
    (_expected(), 2, "cpu"),
    (_expected(), 1, "cpu"),
    (_expected(), 2, "cuda"),
    (_expected({"t_cat_2": (19_999, 16), "t_cat_0": (1000, 32)}), 2, "cpu"),
    (_expected({"t_cat_3": (9000, 16)}), 2, "cpu"),
    (_expected(drop="t_cat_4", add="t_new"), 2, "cpu"),
])
def test_the_views_check_lists_what_check_plan_lists(tables, world, device) -> None:
    try:
        check_plan(planfile.read(DEMO).plan, tables, world, device)
        expected: list[str] = []
    except PlanMismatchError as e:
        expected = e.problems
    assert view_problems(read_view(DEMO), tables, world, device) == expected


def test_overlap_refuses_what_torch_refuses() -> None:
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata

    boxes = [((0, 0), (4, 4)), ((4, 0), (4, 4)), ((2, 2), (4, 4)), ((0, 4), (8, 4)), ((3, 3), (1, 1)), ((8, 0), (0, 4))]
    for layout in itertools.combinations(boxes, 3):
        shards = [ShardModel(offsets=list(o), sizes=list(s), placement="rank:0/cpu") for o, s in layout]
        try:
            EnumerableShardingSpec([ShardMetadata(list(o), list(s), "rank:0/cpu") for o, s in layout])
            torch_refuses = False
        except ValueError:
            torch_refuses = True
        assert (overlapping(shards) is not None) == torch_refuses, layout


def test_the_light_command_table_agrees_with_the_commands() -> None:
    """plan_main lists help texts without importing the commands; the trainer's tables path is repeated."""
    from dlrm_dist.cli import plan_make
    from dlrm_dist.cli.plan_main import COMMANDS, command_module
    from dlrm_dist.model.dlrm import DLRMTrain

    assert {name: command_module(name).HELP for name in COMMANDS} == {name: h for name, (_, h) in COMMANDS.items()}
    assert plan_make.TABLES_PATH == DLRMTrain.TABLES_PATH
