"""Stable 64-bit hashes over numpy arrays (the same on every run and machine)."""

from __future__ import annotations

import numpy as np

U64 = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mix (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x.astype(U64) + U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
        return z ^ (z >> U64(31))


def unit_uniform(z: np.ndarray) -> np.ndarray:
    """The top 53 bits of 64-bit hashes as floats in [0, 1)."""
    return (z >> U64(11)).astype(np.float64) * (1.0 / (1 << 53))
