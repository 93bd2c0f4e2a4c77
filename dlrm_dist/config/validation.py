"""The job config's and the feature schema's declared types, on dlrm_dist.validation's mechanism.

A format (a feature schema, a job config section) is a pydantic model or dataclass with
``STRICT``; the shared mechanism (strict base, ``Says``, ``problems`` for cross-field
checks, ``messages``/``joined`` turning a ValidationError into one line) lives in
dlrm_dist/validation.py. This module keeps what these formats add: their constrained types
(counts in TOML's int64 range, finite floats, identifiers, paths), their word for a
key-value mapping ("table", as TOML says it), and ``unwrap`` for the lax CLI parsing of
``--section.key=value`` overrides (config/loader.py). (Pydantic runs a model's validator
only once its own fields are valid: a file with a wrong type and a cross-field mistake
hears about the second after fixing the first.)

    sparse[3].min_count: must be an integer >= 1, got 1.9
    split.fractions: must be three finite numbers >= 0 (train, val, test) summing to 1, got [0.5, 0.1]
    model.nope: unknown key; valid keys: arch, bottom_mlp, ...
"""

from __future__ import annotations

import os
import types
import typing
from typing import Annotated, Any, Callable, Optional, Sequence, Union

from pydantic import BeforeValidator, Field, ValidationError

from dlrm_dist import validation
from dlrm_dist.validation import INT64_MAX, STRICT, Says, joined, problems

__all__ = ["INT64_MAX", "STRICT", "Says", "joined", "problems", "messages", "unwrap", "count", "finite",
           "Count", "Finite", "Identifier", "IDENTIFIER_RE", "IDENTIFIER_TEXT", "TableName", "TABLE_RE", "PathText",
           "PartitionList", "partition_list_problem"]

MAPPING = "table"  # what a config or schema message calls a key-value mapping (TOML's word)


def messages(error: ValidationError, root: Any, prefix: Sequence[Union[str, int]] = (),
             where: Optional[Callable[[tuple], Optional[str]]] = None) -> list[str]:
    """dlrm_dist.validation.messages in this format's words (a mapping is a "table")."""
    return validation.messages(error, root, prefix, where, mapping=MAPPING)


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
# TorchRec keeps tables in an nn.ModuleDict, whose keys cannot hold "." (torch raises KeyError);
# the feature schema and the planner's tables files both name tables.
TABLE_RE = r"^[A-Za-z0-9_-]{1,128}$"
TableName = Annotated[str, Field(pattern=TABLE_RE),
                      Says("a table name (ASCII letters, digits, _, -; no '.': TorchRec module names cannot hold it)")]


def _fspath(value: Any) -> Any:
    # Code (not files: TOML has no path type) may pass a pathlib.Path where a path belongs.
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A path a job reads or writes: any non-empty text without NUL (which no file system takes).
PathText = Annotated[str, BeforeValidator(_fspath), Field(pattern=r"^[^\x00]+$"),
                     Says("a path (non-empty, no NUL character)")]


# data.partitions: day partitions as text, "1-7" or "1,3,5-7" (data/partition_list.py reads it; the
# order and range rules are DataConfig's check, which names the item that breaks them).
PartitionList = Annotated[str, Says("partition numbers and ranges joined by commas, as text, e.g. '1-7' or '1,3,5-7'")]


def partition_list_problem(text: str) -> Optional[str]:
    """What is wrong with a partition list (order, ranges, bounds), or None."""
    from dlrm_dist.data.partition_list import PartitionListError, parse_partitions

    try:
        parse_partitions(text)
    except PartitionListError as e:
        return str(e)
    return None


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
