"""Raw-row scoring tests' data: small raw files of every feature kind and of MovieLens' shape,
preprocessed as a user would, and the raw rows that landed in each split.

``every_kind`` has each dense transform (none, clip, log1p, standardize, minmax, a fill) and
each sparse kind (vocab by frequency with min_count and two OOV buckets, vocab by value,
fnv1a and int_modulo hashes, identity, multi-hot vocab with mean pooling, multi-hot hash
features sharing a table, a prefix). ``movielens`` is examples/movielens100k.toml over rows
of ratings.tsv's shape (a time split, null_values, a missing release year).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_dist.data.columnar import encode, layout, read
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.features.io import load_schema
from dlrm_dist.features.schema import FeatureSchema, from_dict

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS_SCHEMA = ROOT / "examples" / "movielens100k.toml"
TAGS = ["news", "film", "food", "kids", "cars", "art"]

EVERY_KIND: dict[str, Any] = {
    "name": "every_kind",
    "label": {"column": "clicked"},
    "split": {"by": "random", "fractions": [0.6, 0.2, 0.2], "seed": 5},
    "dense": [
        {"name": "price", "transform": ["clip", "log1p"], "clip": [0, 1e6], "fill": 3.0},
        {"name": "views", "transform": "standardize"},
        {"name": "age", "transform": "minmax", "fill": 30.0},
        {"name": "raw_score", "column": "score"},
        {"name": "score_clipped", "column": "score", "transform": "clip", "clip": [-1, 1]},
    ],
    "sparse": [
        {"name": "city", "kind": "vocab", "min_count": 2, "oov_buckets": 2, "dim": 8},
        {"name": "item", "kind": "vocab", "order": "value", "dim": 8},
        {"name": "user", "kind": "identity", "buckets": 50, "dim": 8},
        {"name": "ad", "kind": "hash", "buckets": 97, "dim": 8},
        {"name": "hexid", "kind": "hash", "hash": "int_modulo", "buckets": 41, "dim": 8},
        {"name": "tags", "kind": "vocab", "delimiter": "|", "pooling": "mean", "dim": 8},
        {"name": "kw1", "kind": "hash", "buckets": 64, "delimiter": ";", "table": "keywords", "dim": 8},
        {"name": "kw2", "kind": "hash", "buckets": 64, "delimiter": ";", "table": "keywords", "dim": 8},
        {"name": "zip3", "column": "zip", "kind": "vocab", "prefix": 3, "dim": 8},
    ],
}
EVERY_KIND_COLUMNS = ["row_id", "price", "views", "age", "score", "city", "item", "user", "ad", "hexid", "tags",
                      "kw1", "kw2", "zip", "clicked"]


def every_kind_rows(n: int, seed: int = 0) -> list[list[str]]:
    """``n`` raw CSV rows (cells as text; some empty) with a label the features explain in part."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        user, city = int(rng.integers(0, 50)), int(rng.zipf(1.5)) % 40
        tags = "|".join(rng.choice(TAGS, int(rng.integers(0, 4)), replace=False))
        kw = lambda: ";".join(f"k{int(x)}" for x in rng.integers(0, 30, int(rng.integers(0, 3))))  # noqa: E731
        price = "" if rng.random() < 0.1 else f"{rng.lognormal(2, 1):.3f}"
        age = "" if rng.random() < 0.1 else str(int(rng.integers(18, 70)))
        logit = (user % 7 - 3) * 0.4 + (0.8 if "news" in tags else -0.2) + (city % 3 - 1) * 0.5
        out.append([f"r{i}", price, str(int(rng.poisson(5))), age, f"{rng.normal(0, 1.5):.4f}", f"c{city}",
                    f"item{int(rng.integers(0, 25)):02d}", str(user), f"ad-{int(rng.integers(0, 300))}",
                    f"{int(rng.integers(0, 4096)):x}", tags, kw(), kw(), f"{int(rng.integers(100, 130))}{i % 100:02d}",
                    str(int(rng.random() < 1 / (1 + np.exp(-logit))))])
    return out


def movielens_rows(n: int, seed: int = 1) -> list[list[str]]:
    """Rows of ratings.tsv's shape (movielens.COLUMNS), timestamps increasing with ties."""
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    out = []
    for i in range(n):
        user, item = int(rng.integers(1, 944)), int(rng.integers(1, 1683))
        year = "unkonwn" if rng.random() < 0.05 else str(int(rng.integers(1930, 1999)))
        g = "|".join(rng.choice(genres, int(rng.integers(1, 4)), replace=False))
        rating = int(np.clip(round(rng.normal(3.5 + (user % 3 - 1) * 0.5, 1)), 1, 5))
        out.append([str(user), str(item), str(rating), str(880_000_000 + (i // 2) * 60), str(int(rng.integers(15, 70))),
                    "MF"[user % 2], ["tech", "student", "artist", "writer", "none"][user % 5],
                    f"{int(rng.integers(10, 99))}{int(rng.integers(100, 999))}", year, g])
    return out


MOVIELENS_COLUMNS = ["user_id", "item_id", "rating", "timestamp", "age", "gender", "occupation", "zip_code",
                     "release_year", "genres"]


def write_table(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def preprocessed(tmp: Path, name: str, schema: FeatureSchema, raw: Path) -> Path:
    out = tmp / f"{name}-data"
    preprocess(Options(schema, [raw], out, progress=False))
    return out


def split_codes(raw: Path, data_dir: Path) -> np.ndarray:
    """Each raw row's split (0 train, 1 val, 2 test), as preprocessing assigned it (encode.split_of)."""
    meta = layout.read_meta(data_dir)
    schema = from_dict(meta["schema"])
    cutoffs = tuple(float("inf") if c is None else c for c in meta["time_cutoffs"]) if meta.get("time_cutoffs") else None
    codes, row0 = [], 0
    for batch in read.read_file(raw, schema, read.BadLines(strict=True)):
        codes.append(encode.split_of(batch, schema, row0, cutoffs))
        row0 += batch.num_rows
    return np.concatenate(codes)


def jsonl_records(header: list[str], rows: list[list[str]], schema: FeatureSchema) -> list[dict[str, Any]]:
    """The rows as JSON records: dense cells as numbers, identity ids as integers, multi-hot cells as
    lists, empty cells as null (every other cell the text the file holds)."""
    dense = {d.column for d in schema.dense}
    ident = {s.column for s in schema.sparse if s.kind == "identity"}
    multi = {s.column: s.delimiter for s in schema.sparse if s.multi_hot}
    out = []
    for r in rows:
        rec: dict[str, Any] = {}
        for c, v in zip(header, r):
            if v == "" or v in schema.input.null_values:
                rec[c] = None
            elif c in dense:
                rec[c] = float(v) if "." in v or "e" in v else int(v)
            elif c in ident:
                rec[c] = int(v)
            elif c in multi:
                rec[c] = v.split(multi[c])
            else:
                rec[c] = v
        out.append(rec)
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def schema_of(name: str) -> FeatureSchema:
    return from_dict(EVERY_KIND) if name == "every_kind" else load_schema(str(MOVIELENS_SCHEMA))
