"""Declared validation: the pydantic v2 conventions of every file format a user writes, and
one plain message per problem.

A format (a feature schema, a job config section) is a pydantic model or dataclass with
``STRICT``: no type coercion (TOML and JSON have real types), no NaN or infinity, no unknown
keys. Constrained types are ``Annotated`` aliases; a ``Says`` in their metadata is the phrase
a message uses for them. Checks across fields raise ``problems(...)`` from a model
validator, so one validator can name several fields. (Pydantic runs a model's validator
only once its own fields are valid: a file with a wrong type and a cross-field mistake
hears about the second after fixing the first.)

``messages(error, root)`` turns one ``ValidationError`` into one line per problem, with the
path written as the user wrote it::

    sparse[3].min_count: must be an integer >= 1, got 1.9
    split.fractions: must be three finite numbers >= 0 (train, val, test) summing to 1, got [0.5, 0.1]
    model.nope: unknown key; valid keys: arch, bottom_mlp, ...
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from typing import Annotated, Any, Callable, Iterable, Literal, Optional, Sequence, Union

import annotated_types as at
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

INT64_MAX = 2**63 - 1  # TOML's integer range; numpy's int64 (ids, offsets, seeds) holds it
MAX_PROBLEMS = 20  # a message lists this many, then says how many more
_CHECKS = "dlrm_checks"  # the error type of ``problems``


@dataclasses.dataclass(frozen=True)
class Says:
    """``Annotated`` metadata: what a value of this type must be, as a message says it."""

    text: str


# -- constrained types shared by the formats -------------------------------------------------
def count(minimum: int = 1) -> Any:
    """An integer in [minimum, 2**63 - 1]."""
    return Annotated[int, Field(ge=minimum, le=INT64_MAX)]


def finite(*, gt: Optional[float] = None, ge: Optional[float] = None) -> Any:
    """A finite float (an integer is accepted), optionally bounded below."""
    return Annotated[float, Field(gt=gt, ge=ge)]


Count = count()  # a positive int64
Finite = finite()

IDENTIFIER_RE = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"
IDENTIFIER_TEXT = "an identifier (ASCII letters, digits, _, -, ., not starting with '.', at most 128 characters)"
# Names that become file names or TorchRec names: nothing that can leave a directory.
Identifier = Annotated[str, Field(pattern=IDENTIFIER_RE), Says(IDENTIFIER_TEXT)]


def _fspath(value: Any) -> Any:
    # Code (not files: TOML has no path type) may pass a pathlib.Path where a path belongs.
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A path a job reads or writes: any non-empty text without NUL (which no file system takes).
PathText = Annotated[str, BeforeValidator(_fspath), Field(pattern=r"^[^\x00]+$"),
                     Says("a path (non-empty, no NUL character)")]


def problems(found: Iterable[tuple[tuple[Union[str, int], ...], str]]) -> None:
    """Raises one pydantic error carrying every ``(path below the model, message)`` found.

    Used by model validators, so that a cross-field check names the field it is about
    (``sparse[2].dim``) and several of them are reported together.
    """
    found = list(found)
    if found:
        summary = "; ".join(msg for _, msg in found)
        raise PydanticCustomError(_CHECKS, "{summary}", {"summary": summary, "problems": found})


# -- ValidationError -> plain lines ------------------------------------------------------------
def messages(error: ValidationError, root: Any, prefix: Sequence[Union[str, int]] = (),
             where: Optional[Callable[[tuple], Optional[str]]] = None) -> list[str]:
    """One line per problem of ``error``; ``root`` is the validated model (for the field types).

    ``where(loc)`` may name the entry a path is in (``sparse feature 'user'``), for a reader
    who knows the entry by its name rather than its position.
    """
    out: list[str] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        if item["type"] == _CHECKS:
            found = [(loc + tuple(sub), msg) for sub, msg in item["ctx"]["problems"]]
        else:
            found = [(loc, _explain(item, _type_at(root, loc), root, loc))]
        for at, msg in found:
            named = where(at) if where else None
            out.append(f"{_path(tuple(prefix) + at)}: {msg}" + (f" ({named})" if named else ""))
    return out


def joined(lines: list[str]) -> str:
    """The problems as one line (a CLI prints ``prog: error: <this>``)."""
    shown = lines[:MAX_PROBLEMS]
    more = len(lines) - len(shown)
    return "; ".join(shown) + (f"; and {more} more problem(s)" if more else "")


def _explain(item: dict[str, Any], typ: Any, root: Any, loc: tuple) -> str:
    kind = item["type"]
    if kind in ("missing", "missing_argument", "missing_keyword_argument"):
        return f"is required; must be {describe(typ)}" if typ is not None else "is required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument", "unexpected_positional_argument"):
        keys = _field_names(_type_at(root, loc[:-1]))
        return "unknown key" + (f"; valid keys: {', '.join(keys)}" if keys else "")
    if kind in ("value_error", "assertion_error"):
        return str(item["ctx"]["error"])
    if typ is None:
        return item["msg"]
    return f"must be {describe(typ)}, got {_shown(item['input'])}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _path(loc: Sequence[Union[str, int]]) -> str:
    """``('sparse', 3, 'min_count')`` -> ``sparse[3].min_count``; odd keys quoted."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker: the problem is the key itself (its type says so)
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "(top level)"


# -- field types --------------------------------------------------------------------------------
def _split(typ: Any) -> tuple[Any, list[Any]]:
    """(bare type, Annotated metadata), Optional removed."""
    meta: list[Any] = []
    while True:
        if typing.get_origin(typ) is Annotated:
            # Field(...) nested in a list item stays a FieldInfo; at the top it is already unpacked
            for m in typ.__metadata__:
                meta += list(m.metadata) if isinstance(m, FieldInfo) else [m]
            typ = typ.__origin__
            continue
        if typing.get_origin(typ) in (Union, types.UnionType):
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            if len(args) == 1:
                typ = args[0]
                continue
        return typ, meta


def unwrap(typ: Any) -> tuple[Any, bool]:
    """(the bare type, whether None is allowed): ``Optional[Annotated[int, ...]]`` -> (int, True)."""
    if typ is None:
        return None, False
    optional = False
    while True:
        origin = typing.get_origin(typ)
        if origin is Annotated:
            typ = typ.__origin__
        elif origin in (Union, types.UnionType) and type(None) in typing.get_args(typ):
            optional = True
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            typ = args[0] if len(args) == 1 else Union[tuple(args)]
        else:
            return typ, optional


def _fields(typ: Any) -> Optional[dict[str, Any]]:
    fields = getattr(typ, "__pydantic_fields__", None)
    return fields if isinstance(typ, type) and fields is not None else None


def _field_names(typ: Any) -> list[str]:
    return sorted(_fields(typ) or ())


def _type_at(root: Any, loc: tuple) -> Any:
    """The declared type of the value at ``loc`` below ``root`` (None if it has none)."""
    typ = root
    for part in loc:
        bare, _ = _split(typ)
        fields, origin, args = _fields(bare), typing.get_origin(bare), typing.get_args(bare)
        if fields is not None and isinstance(part, str):
            if part not in fields:
                return None
            typ = fields[part].rebuild_annotation()
        elif origin is dict and args:
            typ = args[0] if part == "[key]" else args[1]
        elif origin in (list, tuple) and args and isinstance(part, int):
            typ = args[0] if origin is list or args[-1] is Ellipsis else args[min(part, len(args) - 1)]
        else:
            return None
    return typ


def describe(typ: Any) -> str:
    """What a value of ``typ`` must be, in a few plain words."""
    bare, meta = _split(typ)
    said = [m.text for m in meta if isinstance(m, Says)]
    if said:
        return said[-1]
    if bare is bool:
        return "true or false"
    if bare is int:
        return "an integer" + _bounds(meta)
    if bare is float:
        return "a finite number" + _bounds(meta)
    if bare is str:
        return "a string" + _lengths(meta, "character")
    if typing.get_origin(bare) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(bare))
    if typing.get_origin(bare) is list:
        (item,) = typing.get_args(bare) or (Any,)
        return f"a list{_lengths(meta, 'item')}, each item {describe(item)}"
    if typing.get_origin(bare) is dict:
        key, value = typing.get_args(bare) or (str, Any)
        return f"a table: keys {describe(key)}, values {describe(value)}"
    if _fields(bare) is not None:
        return "a table (keys: " + ", ".join(_field_names(bare)) + ")"
    return "a value"


def _bounds(meta: list[Any]) -> str:
    parts = []
    for m in meta:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(m, attr, None)
            if isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le, at.Interval)) and value is not None:
                if not (attr == "le" and value == INT64_MAX):  # TOML's own limit: not worth a word
                    parts.append(f"{sign} {int(value) if float(value).is_integer() else value}")
    return (" " + " and ".join(parts)) if parts else ""


def _lengths(meta: list[Any], unit: str) -> str:
    lo = next((m.min_length for m in meta if isinstance(m, (at.MinLen, at.Len))), 0)
    hi = next((m.max_length for m in meta if isinstance(m, (at.MaxLen, at.Len))), None)
    if hi is not None and lo == hi:
        return f" of {lo} {unit}(s)"
    if lo and hi is not None:
        return f" of {lo} to {hi} {unit}s"
    if lo:
        return f" of at least {lo} {unit}(s)" if lo > 1 else " (not empty)"
    if hi is not None:
        return f" of at most {hi} {unit}(s)"
    return ""

