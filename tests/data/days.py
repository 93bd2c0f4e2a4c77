"""Tiny day files for the tests of datasets that grow by day (partitions.py): a schema with every
kind of feature and a deterministic CSV per day whose users and items drift, so that each day
brings ids no earlier day had.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from dlrm_dist.features.schema import FeatureSchema, from_dict

HEADER = "user,item,price,tags,clicked"


def schema_dict() -> dict[str, Any]:
    return {
        "name": "days",
        "label": "clicked",
        "dense": [{"name": "price", "transform": "standardize", "fill": 0.0}],
        "sparse": [
            {"name": "user", "kind": "identity", "buckets": 1000},
            {"name": "item", "kind": "vocab", "oov_buckets": 2},
            {"name": "user_m", "column": "user", "kind": "managed", "buckets": 64},
            {"name": "tags", "kind": "hash", "buckets": 50, "delimiter": "|"},
        ],
    }


def schema() -> FeatureSchema:
    return from_dict(schema_dict(), "the days schema")


def day_rows(day: int, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows of day ``day``: users and items drift by day (a window that moves)."""
    r = random.Random(seed * 1000 + day)
    out = []
    for _ in range(n):
        out.append({"user": r.randrange(day * 10, day * 10 + 40), "item": f"it{r.randrange(day * 3, day * 3 + 12)}",
                    "price": round(r.random() * 100, 2),
                    "tags": "|".join(f"t{r.randrange(9)}" for _ in range(r.randrange(3))),
                    "clicked": int(r.random() < 0.3)})
    return out


def write_day(directory: Path, day: int, n: int = 40, seed: int = 0, name: str = "") -> Path:
    path = Path(directory) / (name or f"day{day}.csv")
    lines = [HEADER] + [f"{x['user']},{x['item']},{x['price']},{x['tags']},{x['clicked']}" for x in day_rows(day, n, seed)]
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes under ``directory`` (the writer lock's holder record aside)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*"))
            if p.is_file() and p.name != ".dlrm_dist.lock"}
