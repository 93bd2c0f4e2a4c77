"""Declared validation of the planner's files: the strict pydantic base and its error text.

Each file format a user writes or edits here (planner inputs, tables files, plan files) is a
pydantic v2 model derived from :class:`Strict`: strict types (no "4" for 4, no 1.9 for an
integer, no list for an object), finite floats, declared ranges, enums as ``Literal`` from
``dlrm_dist.names``, unknown keys refused. ``problems`` turns one ValidationError, which holds
every problem pydantic found with its location, into short lines such as

    tables[3].pooling_factor: must be a finite number > 0, got nan

by reading what the model declares at that location (its type and bounds), so the message
says what would be valid without a hand-written text per field.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Iterable, Literal, Optional, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

MAX_VALUE_CHARS = 48  # a bad value is quoted up to this length


class Strict(BaseModel):
    """Base of every planner file model: strict, finite, closed (unknown keys are errors)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


def path_of(loc: Iterable[Any]) -> str:
    """pydantic's ``loc`` tuple as ``tables[3].pooling_factor`` (odd dict keys quoted)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).isidentifier():
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out or "(top level)"


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(bare type, constraint metadata) of an annotation, Optional and Annotated removed."""
    metadata: list[Any] = []
    while True:
        if get_origin(annotation) is typing.Annotated:
            annotation, *extra = get_args(annotation)
            for m in extra:
                metadata += m.metadata if isinstance(m, FieldInfo) else [m]
        elif get_origin(annotation) in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation, metadata
            annotation = rest[0]
        else:
            return annotation, metadata


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _declared(model: type[BaseModel], loc: tuple[Any, ...]) -> Optional[tuple[Any, list[Any]]]:
    """The annotation and constraints ``model`` declares at ``loc`` (None if it cannot tell)."""
    annotation, metadata = model, []
    for part in loc:
        annotation, _ = _unwrap(annotation)
        origin, args = get_origin(annotation), get_args(annotation)
        if _is_model(annotation) and isinstance(part, str) and part in annotation.model_fields:
            info = annotation.model_fields[part]
            annotation, metadata = info.annotation, list(info.metadata)
        elif origin in (list, tuple) and isinstance(part, int) and args:
            annotation, metadata = args[0], []
        elif origin is dict and isinstance(part, str) and len(args) == 2:
            annotation, metadata = args[1], []
        else:
            return None
    bare, more = _unwrap(annotation)
    return bare, metadata + more


def _num(x: Any) -> str:
    """A bound as people write it: 1000000 rather than 1000000.0."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e16 else str(x)


def _bounds(metadata: list[Any]) -> str:
    lo = next((m for m in metadata if isinstance(m, (annotated_types.Ge, annotated_types.Gt))), None)
    hi = next((m for m in metadata if isinstance(m, (annotated_types.Le, annotated_types.Lt))), None)
    if lo is not None and hi is not None:
        left = "[" if isinstance(lo, annotated_types.Ge) else "("
        right = "]" if isinstance(hi, annotated_types.Le) else ")"
        low = lo.ge if isinstance(lo, annotated_types.Ge) else lo.gt
        high = hi.le if isinstance(hi, annotated_types.Le) else hi.lt
        return f" in {left}{_num(low)}, {_num(high)}{right}"
    if lo is not None:
        return f" >= {_num(lo.ge)}" if isinstance(lo, annotated_types.Ge) else f" > {_num(lo.gt)}"
    if hi is not None:
        return f" <= {_num(hi.le)}" if isinstance(hi, annotated_types.Le) else f" < {_num(hi.lt)}"
    return ""


def describe(annotation: Any, metadata: list[Any]) -> str:
    """What a value of ``annotation`` with ``metadata`` constraints must be, in words."""
    origin = get_origin(annotation)
    min_len = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), 0)
    max_len = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer" + _bounds(metadata)
    if annotation is float:
        return "a finite number" + _bounds(metadata)
    if annotation is str:
        return "a non-empty string" if min_len else "a string"
    if origin in (list, tuple):
        inner = _unwrap(get_args(annotation)[0]) if get_args(annotation) else None
        items = " of objects" if inner is None or _is_model(inner[0]) else f" (each {describe(*inner)})"
        if max_len is not None and max_len == min_len:
            return f"a list of exactly {min_len}{items}"
        return {0: "a list", 1: "a non-empty list"}.get(min_len, f"a list of at least {min_len}") + items
    if _is_model(annotation):
        return "an object with keys " + ", ".join(annotation.model_fields)
    if origin is dict:
        return "an object"
    return ""


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list) and len(repr(value)) > MAX_VALUE_CHARS:
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _problem(model: type[BaseModel], error: dict[str, Any]) -> str:
    loc, kind = tuple(error["loc"]), error["type"]
    where = path_of(loc)
    if kind == "extra_forbidden":
        parent = _declared(model, loc[:-1])
        valid = ", ".join(parent[0].model_fields) if parent and _is_model(parent[0]) else ""
        return f"{where}: unknown key" + (f"; valid keys here: {valid}" if valid else "")
    if kind in ("value_error", "assertion_error"):
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        return f"{where}: {message}" if loc else message  # a whole-file check names its own paths
    declared = _declared(model, loc)
    wanted = describe(*declared) if declared else ""
    if kind == "missing":
        return f"{where}: missing" + (f" (must be {wanted})" if wanted else "")
    if wanted:
        return f"{where}: must be {wanted}, got {_value(error.get('input'))}"
    return f"{where}: {error['msg'][:1].lower()}{error['msg'][1:]}, got {_value(error.get('input'))}"


def problems(model: type[BaseModel], error: ValidationError) -> list[str]:
    """One line per problem in ``error`` (raised validating ``model``), in the file's order."""
    return [_problem(model, e) for e in error.errors(include_url=False)]


def validate(model: type[BaseModel], data: Any) -> tuple[Optional[BaseModel], list[str]]:
    """``model`` validated from ``data``, or None and every problem found."""
    try:
        return model.model_validate(data), []
    except ValidationError as e:
        return None, problems(model, e)


def joined(origin: str, found: list[str], limit: int = 12) -> str:
    """One line: ``origin: N problem(s): a; b; ...`` (the first ``limit`` of them)."""
    shown = "; ".join(found[:limit]) + (f"; ... and {len(found) - limit} more" if len(found) > limit else "")
    return f"{origin}: {shown}" if len(found) == 1 else f"{origin}: {len(found)} problems: {shown}"
