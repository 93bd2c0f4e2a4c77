"""Reading a schema from a file, a built-in name (with parameters) or an inline config section.

A built-in schema is named ``NAME`` or ``NAME:key=value,key=value`` — the same text on the
command line (``--data.schema=criteo:days=7,buckets=1000000``), in a TOML file (``schema =
"demo:table_sizes=100/200/300"``) and for ``dlrm-data preprocess --schema``. The keys are the
keyword parameters of ``features.builtin.BUILTIN[NAME]``; a value is read as the parameter's
declared type: an integer (a count, >= 1), a list of integers separated by ``/`` (no commas,
which already separate the parameters), or text. An unknown name or key, or a value that does not
read, is a SchemaError naming it and listing what is valid. A file of that name wins over a
built-in (``./demo`` is read as a file).
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable

from dlrm_dist.config.files import read_data
from dlrm_dist.features.builtin import BUILTIN
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema, from_dict

LIST_SEPARATOR = "/"


def load_schema(source: str | Path | dict[str, Any]) -> FeatureSchema:
    """A schema from a dict (an inline section), a built-in name with optional parameters
    (``criteo:days=7``, see the module docstring) or a TOML/JSON file."""
    if isinstance(source, dict):
        return from_dict(source, "[features]")
    text = str(source)
    name = text.partition(":")[0]
    if name in BUILTIN and not Path(text).is_file():  # (a directory named like a built-in is no schema file)
        return builtin_schema(text)
    if not Path(text).is_file():
        raise SchemaError(f"schema {text!r} is neither a file nor a built-in schema ({', '.join(BUILTIN)}; "
                          "parameters as NAME:key=value,key=value)")
    return from_dict(read_data(text, "schema file", SchemaError), f"schema file {text!r}")


def builtin_schema(text: str) -> FeatureSchema:
    """``BUILTIN[NAME](**params)`` for ``NAME[:key=value,...]``; every bad parameter named at once."""
    name, _, rest = text.partition(":")
    make = BUILTIN[name]
    accepted = parameters(make)
    params: dict[str, Any] = {}
    found: list[str] = []
    for item in (p.strip() for p in rest.split(",") if p.strip()):  # a trailing comma is harmless
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key:
            found.append(f"{item!r} is not key=value")
        elif key not in accepted:
            found.append(f"unknown parameter {key!r}; valid: {_listed(accepted)}")
        elif key in params:
            found.append(f"parameter {key!r} is given twice")
        else:
            try:
                params[key] = read_parameter(value, accepted[key])
            except ValueError as e:
                found.append(f"{key}={value!r}: {e}")
    if found:
        raise SchemaError(f"schema {text!r}: {'; '.join(found)}")
    try:
        return make(**params)
    except (SchemaError, ValueError) as e:  # a value the schema itself refuses (e.g. too few table sizes)
        raise SchemaError(f"schema {text!r}: {e}") from None


def parameters(make: Callable[..., FeatureSchema]) -> dict[str, Any]:
    """The keyword parameters of a built-in schema function, each with its declared type."""
    hints = typing.get_type_hints(make)
    return {n: hints.get(n, str) for n, p in inspect.signature(make).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def read_parameter(text: str, typ: Any) -> Any:
    """``text`` as ``typ``: int (>= 1), a ``/``-separated list of them, or text (ValueError saying which)."""
    kind = _kind(typ)
    if kind is int:
        return _count(text)
    if kind is list:
        try:
            return [_count(p) for p in text.split(LIST_SEPARATOR)]
        except ValueError:
            raise ValueError(f"must be integers >= 1 separated by {LIST_SEPARATOR!r}, e.g. 100{LIST_SEPARATOR}200"
                             ) from None
    if not text:
        raise ValueError("must not be empty")
    return text


def _count(text: str) -> int:
    t = text.strip()
    if not t.isascii() or not t.isdigit() or int(t) < 1:
        raise ValueError("must be an integer >= 1")
    return int(t)


def _kind(typ: Any) -> type:
    """int, list or str: how a parameter of declared type ``typ`` (``Optional[...]`` unwrapped) is read."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        typ = args[0] if len(args) == 1 else str
    if typ is int:
        return int
    if typing.get_origin(typ) in (list, tuple, collections.abc.Sequence):
        return list
    return str


_KIND_WORDS = {int: "an integer", list: f"integers separated by {LIST_SEPARATOR!r}", str: "text"}


def _listed(accepted: dict[str, Any]) -> str:
    return ", ".join(f"{k} ({_KIND_WORDS[_kind(t)]})" for k, t in accepted.items())
