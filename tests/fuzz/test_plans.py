"""Fuzzing the planner's files through ``dlrm-plan`` in-process: generated inputs and damaged plans.

Planner inputs: valid ones from a strategy (1-4 small tables, 2-8 ranks), then one mutation
(a wrong type, nan/inf/negative/fractional number, an empty list, an unknown enum name, an
extra key, a removed key). ``dlrm-plan make`` either writes a plan that reads back, agrees
with its inputs (check_plan) and has finite estimates, or exits 2 with one line naming the
entry. Plan files: the committed ``sharding_plans/demo_cpu2.json`` with one field edited or
removed, or its text truncated; ``inspect --json`` exits 0 with finite figures or 2 with one
line, ``validate`` also 1 with its mismatch report. Never a traceback.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

from hypothesis import given
from hypothesis import strategies as st

from dlrm_dist.cli.plan_main import main
from dlrm_dist.names import COMPUTE_KERNELS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES
from dlrm_dist.planning import planfile
from dlrm_dist.planning.check import check_plan
from dlrm_dist.planning.types import ExpectedTable
from dlrm_dist.validation import path_of

ROOT = Path(__file__).resolve().parents[2]
DEMO = json.loads((ROOT / "sharding_plans" / "demo_cpu2.json").read_text())
DELETE = object()  # a mutation that removes the key
BAD_VALUES = st.sampled_from(["7", "", [], {}, True, None, math.nan, math.inf, -math.inf, -1, 0, 1.9, -0.5,
                              2**70, "diagonal", ["warp_drive"], DELETE])


@st.composite
def tables(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        t: dict[str, Any] = {"name": f"t{i}", "rows": draw(st.integers(1, 5000)), "dim": draw(st.sampled_from([4, 8, 16, 32])),
                             "pooling_factor": draw(st.floats(0.1, 20))}
        if draw(st.booleans()):
            t["feature_names"] = [f"f{i}"]
        if draw(st.integers(0, 3)) == 0:
            t["sharding_types"] = draw(st.lists(st.sampled_from(SHARDING_TYPES), min_size=1, max_size=3, unique=True))
        if draw(st.integers(0, 3)) == 0:
            t["compute_kernels"] = draw(st.lists(st.sampled_from(COMPUTE_KERNELS), min_size=1, max_size=2, unique=True))
        if draw(st.integers(0, 3)) == 0:
            t["cache_load_factor"] = draw(st.floats(0.05, 1.0))
        out.append(t)
    return out


@st.composite
def planner_inputs(draw: st.DrawFn) -> dict[str, Any]:
    world = draw(st.sampled_from([2, 4, 8]))
    topology = {"world_size": world, "ranks_per_host": draw(st.sampled_from([r for r in (1, 2, 4, 8) if world % r == 0])),
                "device": draw(st.sampled_from(["cpu", "cuda"])), "hbm_gb": draw(st.floats(0.5, 80)),
                "ddr_gb": draw(st.floats(1, 512))}
    if draw(st.booleans()):
        topology["inter_host_bw_gbps"] = draw(st.floats(1, 100))
    return {"tables": draw(tables()), "topology": topology,
            "budgets": {"hbm_share": draw(st.floats(0.1, 1.0)), "cache_load_factor": draw(st.floats(0.05, 1.0))},
            "batch_size_per_rank": draw(st.integers(1, 4096)), "optimizer": draw(st.sampled_from(EMBEDDING_OPTIMIZERS))}


def leaves(data: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into ``data`` (containers and scalars), for a mutation to pick from."""
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from leaves(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from leaves(v, prefix + (i,))


def mutate(data: Any, path: tuple, value: Any) -> Any:
    """``data`` with ``value`` at ``path`` (DELETE removes it; a new key is added as an extra one)."""
    data = json.loads(json.dumps(data))
    if not path:
        return value if value is not DELETE else {}
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        if isinstance(node, list) or path[-1] in node:  # an extra key that was never there stays absent
            del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def names_the_entry(message: str, path: tuple, data: Any) -> bool:
    """The message names the mutated entry, one of its parents, or the table it belongs to."""
    if not path:  # the whole file was replaced: the message is about the file itself
        return True
    fragments = [path_of(path[:i]) for i in range(1, len(path) + 1)]
    generated = data.get("tables") if isinstance(data, dict) else None
    if path == ("tables",) and isinstance(generated, list):  # the inputs as generated: any table may be named
        fragments += [f"'{t['name']}'" for t in generated if isinstance(t, dict) and "name" in t]
    for i, key in enumerate(path[:-1]):
        if key == "tables" and isinstance(path[i + 1], int):
            fragments.append(f"t{path[i + 1]}")  # generated tables are named t<index>
        if isinstance(key, str) and key.startswith("t_cat_"):
            fragments.append(key)
    return any(f and f in message for f in fragments) or "top level" in message or "fit" in message


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dlrm-plan {command}: error: "), err
    return lines[0]


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _check_written_plan(path: Path) -> None:
    """An independent check of what make wrote: it reads back, covers its tables on its ranks, is finite."""
    pf = planfile.read(path)
    t = pf.inputs.topology
    check_plan(pf.plan, [ExpectedTable(x.name, x.rows, x.dim) for x in pf.inputs.tables], t.world_size, t.device)
    described = pf.estimates.describe()
    assert _finite(described) and len(described["per_rank"]) == t.world_size
    assert all(r["hbm_bytes"] >= 0 and r["ddr_bytes"] >= 0 for r in described["per_rank"])


@given(inputs=planner_inputs(), data=st.data())
def test_make_on_mutated_inputs(tmp_path_factory, capsys, inputs, data) -> None:
    folder = tmp_path_factory.mktemp("make")
    path = data.draw(st.sampled_from(list(leaves(inputs)) + [("topology", "colour"), ("tables", 0, "colour")]))
    value = data.draw(BAD_VALUES)
    mutated = mutate(inputs, path, value)
    if not data.draw(st.integers(0, 5)):  # unmutated: constraints may still rule a table out
        path, mutated = ("tables",), inputs
    (folder / "in.json").write_text(json.dumps(mutated))
    out = folder / "plan.json"
    code, _, err = _run(capsys, ["make", "--inputs", str(folder / "in.json"), "-o", str(out)])
    if code == 0:
        _check_written_plan(out)
        return
    assert code == 2 and not out.exists()
    line = _one_line_error(err, "make")
    if str(folder / "in.json") in line:  # the file was refused: the mutated entry (or a parent) is named
        assert names_the_entry(line, path, mutated), (path, value, line)
    else:  # valid inputs the planner cannot place: the table at fault is named
        names = [t["name"] for t in mutated["tables"]]
        assert any(re.search(rf"\b{re.escape(n)}\b", line) for n in names) or "fit" in line, line


DEMO_PATHS = list(leaves(DEMO))


@given(path=st.sampled_from(DEMO_PATHS), value=BAD_VALUES, cut=st.integers(0, 6), keep=st.integers(1, 99))
def test_inspect_and_validate_damaged_plans(tmp_path_factory, capsys, path, value, cut, keep) -> None:
    folder = tmp_path_factory.mktemp("plan")
    plan = folder / "p.json"
    if cut == 0:  # truncated text
        text = json.dumps(DEMO)
        plan.write_text(text[: len(text) * keep // 100])
    else:
        plan.write_text(json.dumps(mutate(DEMO, path, value)))
    code, out, err = _run(capsys, ["inspect", str(plan), "--json"])
    if code == 0:
        shown = json.loads(out)
        assert _finite(shown) and len(shown["per_rank"]) == shown["inputs"]["topology"]["world_size"]
        assert all(r["cost_ms"] >= 0 and r["ddr_bytes"] >= 0 for r in shown["per_rank"])
    else:
        assert code == 2
        line = _one_line_error(err, "inspect")
        assert cut == 0 and "not valid JSON" in line or names_the_entry(line, path, DEMO), (path, value, line)
    tables = folder / "tables.json"
    tables.write_text(json.dumps({"tables": DEMO["inputs"]["tables"]}))
    code, out, err = _run(capsys, ["validate", str(plan), "--tables", str(tables), "--world-size", "2"])
    assert code in (0, 1, 2), (code, err)
    if code == 1:
        assert out.splitlines()[1].startswith("  - table ")
    elif code == 2:
        _one_line_error(err, "validate")
