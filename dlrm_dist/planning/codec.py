"""JSON encoding of the dataclasses and enums inside a TorchRec ParameterSharding.

TorchRec has no public, complete, round-trip format (its ``_serialize`` is write-only and
drops cache params), so plan files encode every field generically: enums by class and
name, dataclasses by class and fields. Decoding only instantiates classes from TorchRec
and fbgemm, so a plan file cannot name arbitrary code.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from typing import Any

_ALLOWED_PREFIXES = ("torchrec.", "fbgemm_gpu.")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(name: str) -> type:
    module, _, qual = name.partition(":")
    if not module.startswith(_ALLOWED_PREFIXES):
        raise ValueError(f"plan file names class {name!r}; only torchrec/fbgemm classes are allowed")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def encode(value: Any) -> Any:
    """Plain JSON data for ``value`` (None, scalars, lists, enums, dataclasses)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return {"enum": _qualname(type(value)), "name": value.name}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"dataclass": _qualname(type(value)), "fields": fields}
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    raise TypeError(f"cannot store a {type(value).__name__} in a plan file: {value!r}")


def decode(data: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "enum" in data:
        return _resolve(data["enum"])[data["name"]]
    if "dataclass" in data:
        cls = _resolve(data["dataclass"])
        return cls(**{k: decode(v) for k, v in data["fields"].items()})
    if "tuple" in data:
        return tuple(decode(v) for v in data["tuple"])
    raise ValueError(f"unrecognised value in plan file: {data!r}")
