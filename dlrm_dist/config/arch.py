"""Parses DLRM architecture strings such as ``"13-512-256-64-16"``."""

from __future__ import annotations

from dlrm_dist.config.errors import ConfigError


def parse_mlp(spec: str, name: str) -> list[int]:
    """``"13-512-256"`` -> ``[13, 512, 256]``; every width a positive integer."""
    parts = str(spec).strip().split("-")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"{name}={spec!r} is not an architecture string; "
            "write layer widths joined by '-', e.g. '13-512-256-64-16'"
        ) from None
    if any(s <= 0 for s in sizes):
        raise ConfigError(f"{name}={spec!r} has a non-positive layer width")
    return sizes
