"""JSON encoding of the dataclasses and enums inside a TorchRec ParameterSharding.

TorchRec has no public, complete, round-trip format (its ``_serialize`` is write-only and
drops cache params), so plan files encode every field generically: enums by class and
name, dataclasses by class and fields. Decoding only instantiates enums and dataclasses
of TorchRec and fbgemm, so a plan file cannot name arbitrary code; every malformed value
(an unknown member or field, a wrong type, NaN) is a ValueError saying what was expected,
which the plan-file model reports with its path.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import math
import typing
from typing import Any, Union

_ALLOWED_PREFIXES = ("torchrec.", "fbgemm_gpu.")
_ENUM_KEYS, _DATACLASS_KEYS, _TUPLE_KEYS = {"enum", "name"}, {"dataclass", "fields"}, {"tuple"}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(name: Any) -> type:
    if not isinstance(name, str):
        raise ValueError(f"a class must be named as 'module:Class', got {name!r}")
    module, _, qual = name.partition(":")
    if not module.startswith(_ALLOWED_PREFIXES) or not qual:
        raise ValueError(f"plan file names class {name!r}; only torchrec/fbgemm classes are allowed")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise ValueError(f"plan file names class {name!r}, which this TorchRec/fbgemm does not have") from None
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


def _decode_enum(data: dict[str, Any]) -> enum.Enum:
    cls = _resolve(data["enum"])
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
        raise ValueError(f"{data['enum']!r} is not an enum")
    if not isinstance(data["name"], str) or data["name"] not in cls.__members__:
        raise ValueError(f"{cls.__name__} has no member {data['name']!r}; valid: {', '.join(cls.__members__)}")
    return cls[data["name"]]


def check_field(cls: type, name: str, hint: Any, value: Any) -> None:
    """``value`` of ``cls``'s field ``name`` agrees with its type hint (a scalar, an enum or a class)."""
    if value is None:
        return
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union else [hint]
    if len(args) != 1:
        return  # unions of several types: left to TorchRec
    kind = args[0]
    where = f"{cls.__name__}.{name}"
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    if isinstance(kind, type) and kind not in (bool, int, float, str) and not isinstance(value, kind):
        what = "enum" if issubclass(kind, enum.Enum) else "object"
        raise ValueError(f"{where} must be a {kind.__name__} {what}, got {value!r}")


def _decode_dataclass(data: dict[str, Any]) -> Any:
    cls = _resolve(data["dataclass"])
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"{data['dataclass']!r} is not a dataclass")
    if not isinstance(data["fields"], dict):
        raise ValueError(f"the fields of a {cls.__name__} must be an object, got {data['fields']!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data["fields"]) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid: {', '.join(names)}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a forward reference TorchRec cannot resolve: no hints to check
        hints = {}
    values = {k: decode(v) for k, v in data["fields"].items()}
    for k, v in values.items():
        check_field(cls, k, hints.get(k), v)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot build a {cls.__name__} from these fields: {e}") from None


def decode(data: Any) -> Any:
    """The inverse of ``encode``; a ValueError says what in ``data`` is malformed."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        raise ValueError(f"numbers in a plan file must be finite, got {data!r}")
    if not isinstance(data, dict):
        return data
    if set(data) == _ENUM_KEYS:
        return _decode_enum(data)
    if set(data) == _DATACLASS_KEYS:
        return _decode_dataclass(data)
    if set(data) == _TUPLE_KEYS and isinstance(data["tuple"], list):
        return tuple(decode(v) for v in data["tuple"])
    raise ValueError(f"unrecognised value in plan file: {str(data)[:80]} (expected {{enum, name}}, "
                     "{dataclass, fields} or {tuple})")
