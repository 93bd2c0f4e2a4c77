"""Reading JSON or TOML data files with errors that name the file and the problem.

Text is UTF-8. A UTF-8 byte-order mark (which some editors write) is accepted and
dropped; any other encoding is refused naming the first bad byte's offset, line and
column. JSON keys must be unique (TOML already refuses duplicates), and a file nested
too deeply for the parsers is refused rather than crashing them.
"""

from __future__ import annotations

import codecs
import json
import tomllib
from pathlib import Path
from typing import Any

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.errors import DlrmError

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class _DuplicateKey(ValueError):
    pass


def decode_utf8(raw: bytes, name: str, error: type[DlrmError]) -> str:
    """``raw`` as text; a leading UTF-8 BOM dropped, anything not UTF-8 named by byte offset."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    elif raw.startswith(_UTF16_BOMS):
        raise error(f"{name} is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(f"{name} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} "
                    f"(line {line}, column {column}); save it as UTF-8") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _parse(text: str, kind: str) -> Any:
    if kind == "TOML":
        return tomllib.loads(text)
    return json.loads(text, object_pairs_hook=_unique_keys)


def read_data(path: str | Path, what: str = "file", error: type[DlrmError] = ConfigError) -> dict[str, Any]:
    """The parsed contents of a ``.toml`` or (otherwise) JSON file."""
    p = Path(path)
    name = f"{what} {str(path)!r}"
    if p.is_dir():
        raise error(f"{name} is a directory, not a file")
    if not p.is_file():
        raise error(f"{name} does not exist")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise error(f"{name} cannot be read: {e.strerror or e}") from None
    kind = "TOML" if p.suffix == ".toml" else "JSON"
    text = decode_utf8(raw, name, error)
    try:
        data = _parse(text, kind)
    except RecursionError:
        raise error(f"{name} is not valid {kind}: nested too deeply") from None
    except ValueError as e:  # TOMLDecodeError, JSONDecodeError, a duplicate key, an integer too long
        raise error(f"{name} is not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{name} must hold an object at the top level")
    return data
