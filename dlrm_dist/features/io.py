"""Reading a schema from a file, a built-in name or an inline config section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlrm_dist.config.files import read_data
from dlrm_dist.features.builtin import BUILTIN
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema, from_dict


def load_schema(source: str | Path | dict[str, Any]) -> FeatureSchema:
    """A schema from a dict (an inline section), a built-in name (criteo, demo) or a TOML/JSON file."""
    if isinstance(source, dict):
        return from_dict(source, "[features]")
    text = str(source)
    if text in BUILTIN and not Path(text).exists():
        return BUILTIN[text]()
    if not Path(text).is_file():
        raise SchemaError(f"schema {text!r} is neither a file nor a built-in schema ({', '.join(BUILTIN)})")
    return from_dict(read_data(text, "schema file", SchemaError), f"schema file {text!r}")
