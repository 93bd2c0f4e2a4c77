"""The README's layout section names every package and top-level module of dlrm_dist, and
every top-level directory of the repository, and nothing that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1].splitlines()


def _named(lines: list[str]) -> tuple[set[str], set[str]]:
    """(entries under dlrm_dist/, top-level entries) as the block names them."""
    inner, top = set(), set()
    for line in lines:
        m = re.match(r"^(\s*)(\S+/|\S+\.py)\s", line + " ")
        if not m:
            continue
        if len(m.group(1)) in (0, 2):  # deeper lines continue an entry's description
            (inner if m.group(1) else top).add(m.group(2).rstrip("/"))
    return inner, top


def test_layout_matches_the_tree() -> None:
    inner, top = _named(_layout_block())
    package = ROOT / "dlrm_dist"
    actual = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    actual |= {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    assert inner == actual
    assert "dlrm_dist" in top
    for name in top:
        assert (ROOT / name).exists(), name
    for required in ("launch", "sharding_plans", "benchmarks", "tests", "examples", "docs"):
        assert required in top, required
