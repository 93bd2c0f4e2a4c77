"""Reading JSON or TOML data files with errors that name the file and the problem."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.errors import DlrmError


def read_data(path: str | Path, what: str = "file", error: type[DlrmError] = ConfigError) -> dict[str, Any]:
    """The parsed contents of a ``.toml`` or (otherwise) JSON file."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {str(path)!r} is a directory, not a file")
    if not p.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    kind = "TOML" if p.suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(p.read_text()) if kind == "TOML" else json.loads(p.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what} {str(path)!r} is not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {str(path)!r} must hold an object at the top level")
    return data
