"""A small TOML writer for the fuzz tests (the venv has a TOML reader only).

Everything is written as top-level ``key = value`` lines with inline arrays and tables, so
any nesting is expressible; ``None`` values (which TOML cannot say) are left out, as a
user would leave out an unset key.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    return key if _BARE.match(key) else _string(key)


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def dumps(data: dict[str, Any]) -> str:
    return "".join(f"{_key(str(k))} = {value(v)}\n" for k, v in data.items() if v is not None)
