"""The import graph goes one way: pieces never import the trainer; the CLIs need no process group;
the planner's contracts sit below its stages, and the planner knows no model's layout."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dlrm_dist"
# Modules that may build and run training: the trainer package and the entry point.
TRAINING = ("dlrm_dist.training", "dlrm_dist.train")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _module(path: Path) -> str:
    return ".".join(("dlrm_dist",) + path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")


def test_no_piece_imports_the_trainer() -> None:
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        if name.startswith(TRAINING):
            continue
        bad = [m for m in _imports(path) if m.startswith(TRAINING)]
        if bad:
            offenders[name] = bad
    assert not offenders, offenders


def test_the_clis_do_not_set_up_distributed_training() -> None:
    for path in (PACKAGE / "cli").glob("*.py"):
        bad = [m for m in _imports(path) if m.startswith(("dlrm_dist.distributed", "torch.distributed"))]
        assert not bad, (path.name, bad)


def _planning_imports(name: str) -> set[str]:
    return {m for m in _imports(PACKAGE / "planning" / f"{name}.py") if m.startswith("dlrm_dist.planning")}


def test_the_planner_contracts_sit_below_its_stages() -> None:
    """calibration.py + inputs.py (declared file formats) and perf.py -> types.py (the contracts) -> every
    stage; never back up."""
    assert _planning_imports("calibration") == set() and _planning_imports("perf") == set()
    assert _planning_imports("inputs") == {"dlrm_dist.planning.calibration"}
    assert _planning_imports("types") == {"dlrm_dist.planning.inputs", "dlrm_dist.planning.calibration",
                                          "dlrm_dist.planning.perf"}


def test_the_planner_and_the_parallel_wrapping_know_no_model_layout() -> None:
    """Module paths and data-parallel parts are the model's to say (DLRMTrain), not hard-coded below it."""
    for package in ("planning", "distributed"):
        for path in (PACKAGE / package).glob("*.py"):
            text = path.read_text()
            bad = [m for m in _imports(path) if m.startswith(("dlrm_dist.model", "dlrm_dist.training"))
                   and m != "dlrm_dist.model.init"]  # weights.py fills shards with the model's init
            assert not bad, (path.name, bad)
            for attr in ('"sparse_arch"', '"dense_arch"', '"over_arch"', '"residual_arch"', '"model.sparse_arch"'):
                assert attr not in text, (path.name, attr)


# The preprocessing stack, bottom up: a module imports only modules before it, and only at its top
# (no import inside a function to get round a cycle). Readers below staging below the dispatcher
# below partitions; the CLI imports them lazily (it starts without loading them).
DATA_STACK = ("locate", "layout", "kernels", "tsv_rows", "tsv_kernel", "build_kernels", "columns", "encode", "criteo_fused", "shared_blocks", "criteo_tsv",
              "csv_kernel", "byte_ranges", "read", "job", "fit", "staged", "serial", "staging_read", "staging", "preprocess", "partitions")


def _stack_imports(path: Path) -> tuple[set[str], set[str]]:
    """(columnar modules imported at module top, columnar modules imported anywhere else)."""
    prefix = "dlrm_dist.data.columnar"
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}

    def named(node: ast.AST) -> set[str]:
        if isinstance(node, ast.ImportFrom) and node.module == prefix:
            return {a.name for a in node.names}
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(prefix + "."):
            return {node.module.removeprefix(prefix + ".").split(".")[0]}
        if isinstance(node, ast.Import):
            inner = [a.name.removeprefix(prefix + ".") for a in node.names if a.name.startswith(prefix + ".")]
            return {name.split(".")[0] for name in inner}
        return set()

    at_top, inside = set(), set()
    for node in ast.walk(tree):
        (at_top if id(node) in top else inside).update(named(node))
    return at_top, inside


def test_the_data_stack_imports_one_way_at_module_top() -> None:
    columnar = PACKAGE / "data" / "columnar"
    for i, name in enumerate(DATA_STACK):
        path = columnar / f"{name}.py"
        if not path.exists():  # (a module of the list not written yet)
            continue
        at_top, inside = _stack_imports(path)
        assert not inside, (name, "imports inside a function", inside)
        upward = {m for m in at_top if m in DATA_STACK and DATA_STACK.index(m) >= i}
        assert not upward, (name, "imports a module at or above it", upward)
