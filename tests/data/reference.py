"""Independent references the data tests compare the package's outputs with (pure Python)."""

from __future__ import annotations


def fnv1a(text: str) -> int:
    """64-bit FNV-1a of the UTF-8 bytes, written out from the definition."""
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h
