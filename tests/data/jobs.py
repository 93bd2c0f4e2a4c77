"""Tiny schema-driven preprocessing jobs for the tests of data directories (writers, locks, reruns).

Two jobs over one small CSV that differ only in the schema (a hash feature's buckets), a
clean run's arrays as the reference, and a snapshot of a directory (every file's bytes) to
show that a refused run changed nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_dist.data.columnar.preprocess import Options, Report, preprocess
from dlrm_dist.features.schema import SPLITS, FeatureSchema, from_dict
from dlrm_dist.fileio import LOCK_FILE

HEADER = "uid,color,tags,price,ts,rating"


def rows(n: int) -> list[str]:
    """``n`` deterministic rows: ids 0..4, three colours, tag lists, a missing price now and then."""
    colors, tags = ("red", "blue", "green"), ("a|b", "", "c", "a|c|b", "b")
    return [f"{i % 5},{colors[i % 3]},{tags[i % 5]},{'' if i % 7 == 3 else i * 10},{i},{1 + i % 5}" for i in range(n)]


def write_csv(directory: Path, n: int = 12, name: str = "data.csv") -> Path:
    p = directory / name
    p.write_text("\n".join([HEADER, *rows(n)]) + "\n")
    return p


def schema_dict(hash_buckets: int = 7, uid_buckets: int = 5) -> dict[str, Any]:
    return {
        "name": "tiny",
        "label": {"column": "rating", "threshold": 4},
        "split": {"by": "random", "fractions": [0.6, 0.2, 0.2], "seed": 3},
        "dense": [{"name": "price", "transform": "standardize", "fill": 30.0}],
        "sparse": [
            {"name": "uid", "kind": "identity", "buckets": uid_buckets},
            {"name": "color", "kind": "vocab"},
            {"name": "color_h", "column": "color", "kind": "hash", "buckets": hash_buckets},
            {"name": "tags", "kind": "vocab", "delimiter": "|"},
        ],
    }


JOBS = {"A": schema_dict(7), "B": schema_dict(11)}


def run(inputs: list[Path], out: Path, schema: dict[str, Any] | FeatureSchema, **kw: Any) -> Report:
    s = schema if isinstance(schema, FeatureSchema) else from_dict(schema)
    return preprocess(Options(s, list(inputs), out, progress=False, **kw))


def arrays(out: Path) -> dict[str, Any]:
    """Everything a loader reads: every split's arrays, the vocabularies, the split rows of meta.json."""
    got: dict[str, Any] = {f"{s}/{p.name}": np.load(p) for s in SPLITS for p in sorted((out / s).glob("*.npy"))}
    got.update({f"vocab/{p.name}": json.loads(p.read_text()) for p in sorted((out / "vocab").glob("*.json"))})
    meta = json.loads((out / "meta.json").read_text())
    got["meta"] = {k: meta[k] for k in ("schema", "splits", "rows_read", "skipped")}
    return got


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        if isinstance(want[k], np.ndarray):
            assert got[k].dtype == want[k].dtype, k
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        else:
            assert got[k] == want[k], k


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (but the lock file, whose holder record changes) and its bytes."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}
