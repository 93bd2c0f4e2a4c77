"""Declared file formats: strict pydantic v2 models, and one plain line per problem, named by path.

Every file format a user writes or edits (a job config, a feature schema, planner inputs, a
plan file, an export manifest) is a pydantic model (or pydantic dataclass) that is
``STRICT``: no type coercion (TOML and JSON have real types: no "4" for 4, no 1.9 for an
integer), no NaN or infinity, no unknown keys. :class:`Strict` is that base model, frozen.
Constrained types are ``Annotated`` aliases; a :class:`Says` in their metadata is the phrase
a message uses for them. Checks across fields either raise ``problems(...)`` from a model
validator (naming several fields at once) or a ValueError whose text names its own paths.

``messages(error, root)`` turns one ``ValidationError``, which holds every problem pydantic
found with its location, into one line per problem by reading what ``root`` declares at
that location (its type and bounds), so a message says what would be valid without a
hand-written text per field::

    sparse[3].min_count: must be an integer >= 1, got 1.9
    tables[3].pooling_factor: must be a finite number in (0, 1000000], got nan
    model.nope: unknown key; valid keys: arch, bottom_mlp, ...

``joined`` makes the lines one line (a CLI prints ``prog: error: <this>``). A format names a
key-value mapping in its own words (``mapping``: TOML says "table", JSON "object").

Imports pydantic, the standard library and dlrm_dist.errors only: a server checks an export
manifest with it without the training stack.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Annotated, Any, Callable, Iterable, Literal, Optional, Sequence, Union

import annotated_types as at
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

INT64_MAX = 2**63 - 1  # TOML's integer range; an upper bound this high is not worth a word
MAX_PROBLEMS = 20  # a message lists this many, then says how many more
MAX_VALUE_CHARS = 80  # a bad value is quoted up to this length
_CHECKS = "dlrm_checks"  # the error type of ``problems``
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Loc = tuple[Union[str, int], ...]


class Strict(BaseModel):
    """Base of a declared file model: strict, finite, closed (unknown keys are errors), frozen."""

    model_config = ConfigDict(**STRICT, frozen=True)


@dataclasses.dataclass(frozen=True)
class Says:
    """``Annotated`` metadata: what a value of this type must be, as a message says it."""

    text: str


def problems(found: Iterable[tuple[Loc, str]]) -> None:
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
             where: Optional[Callable[[tuple], Optional[str]]] = None, mapping: str = "object") -> list[str]:
    """One line per problem of ``error``, in the file's order; ``root`` is the validated type.

    ``prefix`` puts the paths below an enclosing key; ``where(loc)`` may name the entry a path
    is in (``sparse feature 'user'``), for a reader who knows the entry by its name.
    """
    out: list[str] = []
    for item in error.errors(include_url=False):
        typ, loc = _walk(root, tuple(item["loc"]))
        if item["type"] == _CHECKS:
            found = [(loc + tuple(sub), msg) for sub, msg in item["ctx"]["problems"]]
        else:
            found = [(loc, _explain(item, typ, root, loc, mapping))]
        for at_loc, msg in found:
            named = where(at_loc) if where else None
            whole = tuple(prefix) + at_loc
            # a check of the whole file (a ValueError at the top) names its own paths
            head = f"{path_of(whole)}: " if whole or item["type"] == _CHECKS else ""
            out.append(f"{head}{msg}" + (f" ({named})" if named else ""))
    return out


def validate(model: type[BaseModel], data: Any, mapping: str = "object") -> tuple[Optional[Any], list[str]]:
    """``model`` validated from ``data``, or None and every problem found."""
    try:
        return model.model_validate(data), []
    except ValidationError as e:
        return None, messages(e, model, mapping=mapping)


def joined(origin: str, found: list[str], limit: int = MAX_PROBLEMS) -> str:
    """One line: ``origin: a`` or ``origin: N problems: a; b; ...`` (the first ``limit``)."""
    shown = "; ".join(found[:limit])
    if len(found) > limit:
        shown += f"; and {len(found) - limit} more problem(s)"
    return f"{origin}: {shown}" if len(found) == 1 else f"{origin}: {len(found)} problems: {shown}"


def path_of(loc: Iterable[Union[str, int]]) -> str:
    """pydantic's ``loc`` as the user writes it: ``('plan', 'a.b', 3, 'x')`` -> ``plan['a.b'][3].x``.

    pydantic's ``[key]`` marker (the problem is a key itself) and union tags (booleans,
    which no file's key or index is) are left out.
    """
    out = ""
    for part in loc:
        if part == "[key]" or isinstance(part, bool):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out or "(top level)"


def shown(value: Any, mapping: str = "object") -> str:
    """A bad value quoted as the message shows it: its repr, or its size when that is long."""
    text = repr(value)
    if len(text) <= MAX_VALUE_CHARS:
        return text
    if isinstance(value, dict):
        return f"{_a(mapping)} of {len(value)} key(s)"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    return text[: MAX_VALUE_CHARS - 3] + "..."


def _explain(item: dict[str, Any], typ: Any, root: Any, loc: Loc, mapping: str) -> str:
    kind = item["type"]
    wanted = describe(typ, mapping=mapping) if typ is not None else ""
    if kind in ("missing", "missing_argument", "missing_keyword_argument"):
        return f"is required; must be {wanted}" if wanted else "is required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument", "unexpected_positional_argument"):
        keys = _field_names(_split(_walk(root, loc[:-1])[0])[0])
        return "unknown key" + (f"; valid keys: {', '.join(keys)}" if keys else "")
    if kind in ("value_error", "assertion_error"):
        return str(item.get("ctx", {}).get("error", item["msg"]))
    got = shown(item.get("input"), mapping)
    if wanted:
        return f"must be {wanted}, got {got}"
    return f"{item['msg'][:1].lower()}{item['msg'][1:]}, got {got}"


# -- declared types ---------------------------------------------------------------------------
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


def _fields(typ: Any) -> Optional[dict[str, Any]]:
    fields = getattr(typ, "__pydantic_fields__", None)
    return fields if isinstance(typ, type) and fields is not None else None


def _field_names(typ: Any) -> list[str]:
    return sorted(_fields(typ) or ())


def _member(union: Any, tag: Union[str, int]) -> Optional[Any]:
    """The member of a union that pydantic's ``loc`` part ``tag`` selects (its name or discriminator)."""
    for member in typing.get_args(union):
        bare, _ = _split(member)
        if getattr(bare, "__name__", None) == tag:
            return member
        for info in (_fields(bare) or {}).values():
            ann, _ = _split(info.annotation)
            if typing.get_origin(ann) is Literal and any(_same_tag(a, tag) for a in typing.get_args(ann)):
                return member
    return None


def _same_tag(value: Any, tag: Any) -> bool:
    # pydantic writes a boolean discriminator into ``loc`` as 0/1; "1" is not the tag 1, nor 1 the tag True
    if isinstance(value, bool):
        return type(tag) in (bool, int) and tag == value
    return type(value) is type(tag) and value == tag


def _walk(root: Any, loc: Loc) -> tuple[Any, Loc]:
    """(the declared type at ``loc`` below ``root`` or None, ``loc`` without union tags)."""
    typ: Any = root
    kept: list[Union[str, int]] = []
    for part in loc:
        bare, _ = _split(typ)
        if typ is not None and typing.get_origin(bare) in (Union, types.UnionType):
            member = _member(bare, part)
            if member is not None:
                typ = member
                continue
        kept.append(part)
        if typ is None:
            continue
        fields, origin, args = _fields(bare), typing.get_origin(bare), typing.get_args(bare)
        if fields is not None and isinstance(part, str):
            typ = fields[part].rebuild_annotation() if part in fields else None
        elif origin is dict and args:
            typ = args[0] if part == "[key]" else args[1]
        elif origin in (list, tuple) and args and isinstance(part, int):
            typ = args[0] if origin is list or args[-1] is Ellipsis else args[min(part, len(args) - 1)]
        else:
            typ = None
    return typ, tuple(kept)


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def describe(typ: Any, metadata: Sequence[Any] = (), mapping: str = "object") -> str:
    """What a value of ``typ`` (with constraints ``metadata``) must be, in a few plain words.

    ``""`` when the type says nothing a reader could use (the caller then quotes pydantic).
    """
    bare, meta = _split(typ)
    meta = list(metadata) + meta
    said = [m.text for m in meta if isinstance(m, Says)]
    if said:
        return said[-1]
    origin, args = typing.get_origin(bare), typing.get_args(bare)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if bare is bool:
        return "true or false"
    if bare is int:
        return "an integer" + _bounds(meta)
    if bare is float:
        return "a finite number" + _bounds(meta)
    if bare is str:
        pattern = next((m.pattern for m in meta if getattr(m, "pattern", None)), None)
        return _sized("a string", meta, "character") + (f" matching {pattern!r}" if pattern else "")
    if origin in (list, tuple):
        return _list(bare, meta, mapping)
    if origin is dict:
        key, value = args or (str, Any)
        keys, values = describe(key, mapping=mapping), describe(value, mapping=mapping)
        return _sized(_a(mapping), meta, "key") + (f": keys {keys}, values {values}" if keys and values else "")
    if _fields(bare) is not None:
        return f"{_a(mapping)} with keys {', '.join(_field_names(bare))}"
    if origin in (Union, types.UnionType):
        said = [describe(a, mapping=mapping) for a in args]
        return " or ".join(said) if all(said) else ""
    return ""


def _list(bare: Any, meta: list[Any], mapping: str) -> str:
    args = [a for a in typing.get_args(bare) if a is not Ellipsis]
    fixed = typing.get_origin(bare) is tuple and len(args) > 1 and Ellipsis not in typing.get_args(bare)
    if fixed:
        meta = meta + [at.Len(len(args), len(args))]
    item = args[0] if args else Any
    if _fields(_split(item)[0]) is not None:
        return _sized("a list", meta, "item") + f" of {mapping}s"
    each = describe(item, mapping=mapping) if item is not Any else ""
    return _sized("a list", meta, "item") + (f" (each {each})" if each else "")


def _sized(what: str, meta: list[Any], unit: str) -> str:
    """``what`` with its declared length: "a non-empty list", "a string of 2 to 8 characters"."""
    lo = max((m.min_length for m in meta if isinstance(m, (at.MinLen, at.Len))), default=0)
    hi = min((m.max_length for m in meta if isinstance(m, (at.MaxLen, at.Len)) and m.max_length is not None),
             default=None)
    if hi is not None and lo == hi:
        return f"{what} of exactly {lo}" + (f" {unit}(s)" if unit != "item" else "")
    if lo and hi is not None:
        return f"{what} of {lo} to {hi} {unit}s"
    if lo == 1:
        return "a non-empty " + what.split(" ", 1)[1]  # what is "a list", "an object", ...
    if lo:
        return f"{what} of at least {lo} {unit}s"
    if hi is not None:
        return f"{what} of at most {hi} {unit}(s)"
    return what


def _num(x: Any) -> str:
    """A bound as people write it: 1000000 rather than 1000000.0."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e16 else str(x)


def _bounds(meta: list[Any]) -> str:
    """" >= 1", " in (0, 1]": the declared range (an upper bound of INT64_MAX left out)."""
    lo: Optional[tuple[str, Any]] = None
    hi: Optional[tuple[str, Any]] = None
    for m in meta:
        if not isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le, at.Interval)):
            continue
        for attr in ("gt", "ge", "lt", "le"):
            value = getattr(m, attr, None)
            if value is None or (attr == "le" and value == INT64_MAX):
                continue
            if attr in ("gt", "ge"):
                lo = (attr, value)
            else:
                hi = (attr, value)
    if lo and hi:
        left, right = "[" if lo[0] == "ge" else "(", "]" if hi[0] == "le" else ")"
        return f" in {left}{_num(lo[1])}, {_num(hi[1])}{right}"
    bound = lo or hi
    if bound is None:
        return ""
    sign = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[bound[0]]
    return f" {sign} {_num(bound[1])}"
