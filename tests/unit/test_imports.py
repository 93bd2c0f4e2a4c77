"""The import graph goes one way: pieces never import the trainer; the CLIs need no process group."""

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
