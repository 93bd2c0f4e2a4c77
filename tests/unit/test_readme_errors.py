"""The README's error table names every DlrmError the package defines, with its exit code."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import dlrm_dist
from dlrm_dist.errors import DlrmError

README = Path(__file__).resolve().parents[2] / "README.md"


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def test_the_error_table_matches_the_code() -> None:
    for module in pkgutil.walk_packages(dlrm_dist.__path__, "dlrm_dist."):
        importlib.import_module(module.name)
    in_code = {cls.__name__: cls.exit_code for cls in _subclasses(DlrmError) if cls.__module__.startswith("dlrm_dist")}
    table = README.read_text().split("**Errors and exit codes** (every class derives from `DlrmError`):", 1)[1]
    rows = re.findall(r"^\| `(\w+)` \| .* \| (\d) \|$", table.split("\n\n", 2)[1], re.M)
    in_readme = {name: int(code) for name, code in rows}
    assert in_readme == in_code
