"""What the planner and a person need to know about a columnar directory.

Rows and positive rate per split; per feature its table, the table's rows, the distinct ids
seen in training and the mean bag length (the planner's pooling factor).

A directory of day partitions: the same per feature over every partition together, and per
partition (in increasing number) its rows, positive rate and ``NEW_ID_RATE``:

    new-id rate   the share of the partition's ids (every id of every row: a multi-hot bag's
                  each) equal to no id of the same feature in any lower-numbered partition,
                  per feature and pooled over all sparse features; none for the first partition.
                  Ids are compared as stored: a managed feature's raw ids (exactly the new
                  users/items), a hash feature's buckets (a new value hashed onto a bucket seen
                  before is not new), a vocabulary feature's rows (new values go to its OOV rows:
                  see the OOV share)
    OOV share     vocabulary features: the share of the partition's ids in the OOV rows (values
                  the fit did not keep: unseen on the fitted partition, rarer than min_count, or
                  missing)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from dlrm_dist.data.columnar import layout
from dlrm_dist.features.schema import SPLITS

BLOCK = 1 << 20


def _label_rate(labels: np.ndarray) -> float:
    total = sum(float(labels[i : i + BLOCK].sum()) for i in range(0, len(labels), BLOCK))
    return total / max(len(labels), 1)


NEW_ID_RATE = ("the share of the partition's ids equal to no id of the same feature in any lower-numbered "
               "partition (as stored: managed raw ids, hash buckets, vocabulary rows), per feature and pooled")


def compute_stats(directory: str | Path) -> dict[str, Any]:
    meta, schema, splits = layout.check_directory(directory)
    if layout.is_partitioned(meta):
        return _partitioned_stats(directory, meta, schema, splits)
    train = splits["train"]
    cardinality = {f.name: _Seen(f, schema.id_range(f)).added(train.ids[f.name]) for f in schema.sparse}
    return {
        "directory": str(directory), "schema": schema.name, "num_dense": schema.num_dense,
        "splits": {s: {"rows": splits[s].rows, "label_rate": _label_rate(splits[s].labels)} for s in SPLITS},
        "features": _features(schema, cardinality, meta["splits"]["train"]["bag_lengths"]),
        "tables": _tables(schema),
    }


def _features(schema: Any, cardinality: dict[str, int], pooling: dict[str, float]) -> list[dict[str, Any]]:
    """Per sparse feature: its table, the table's rows, distinct ids seen, mean bag length."""
    return [{"feature": f.name, "table": f.table, "table_size": schema.table_rows(f.table),
             "cardinality": cardinality[f.name], "pooling_factor": float(pooling[f.name])} for f in schema.sparse]


def _tables(schema: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "rows": schema.table_rows(t.name), "dim": schema.features_of(t.name)[0].dim,
             "features": [f.name for f in schema.features_of(t.name)],
             **({"managed": True} if t.remapper is not None else {})} for t in schema.tables(0)]


class _Seen:
    """The distinct ids of one feature in the partitions so far: a flag per table row, or (a managed
    feature's raw ids, from a 63-bit space) a sorted array of them."""

    def __init__(self, f: Any, id_range: int) -> None:
        self.managed = f.managed
        self.flags = None if f.managed else np.zeros(id_range, bool)
        self.sorted = np.zeros(0, np.int64)

    def count(self) -> int:
        return int(self.sorted.size if self.managed else self.flags.sum())

    def added(self, ids: np.ndarray) -> int:
        """The distinct ids seen once ``ids`` are added."""
        self.add(ids)
        return self.count()

    def add(self, ids: np.ndarray) -> tuple[int, int]:
        """Adds a partition's ids; (its ids seen in no earlier partition, distinct such ids)."""
        if self.managed:
            distinct = np.unique(np.asarray(ids, np.int64))
            new = distinct[~_member(distinct, self.sorted)]
            occurrences = int(_member(np.asarray(ids, np.int64), new).sum()) if new.size else 0
            self.sorted = np.union1d(self.sorted, new)
            return occurrences, int(new.size)
        here = np.zeros_like(self.flags)
        occurrences = 0
        for i in range(0, len(ids), BLOCK):
            block = np.asarray(ids[i : i + BLOCK])
            occurrences += int((~self.flags[block]).sum())
            here[block] = True
        distinct = int((here & ~self.flags).sum())
        self.flags |= here
        return occurrences, distinct


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in ``sorted_set`` (sorted, unique)."""
    if not sorted_set.size:
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[at] == values


def _rate(part: int, whole: int) -> Optional[float]:
    return part / whole if whole else None


def _feature_by_partition(f: Any, id_range: int, arrays: list[layout.SplitArrays]) -> tuple[list[dict[str, Any]], int]:
    """One feature's ids, new ids and OOV share in each partition (in order), and its distinct ids
    over all of them (one feature at a time: a table's flags are its rows in bytes)."""
    seen, out = _Seen(f, id_range), []
    for k, data in enumerate(arrays):
        ids = data.ids[f.name]
        new, distinct = seen.add(ids)
        row: dict[str, Any] = {"ids": len(ids), "new_ids": new, "new_distinct": distinct,
                               "new_id_rate": _rate(new, len(ids)) if k else None}
        if f.kind == "vocab":
            oov = sum(int((np.asarray(ids[i : i + BLOCK]) < f.oov_buckets).sum()) for i in range(0, len(ids), BLOCK))
            row["oov_rate"] = _rate(oov, len(ids))
        out.append(row)
    return out, seen.count()


def _partitioned_stats(directory: str | Path, meta: dict[str, Any], schema: Any,
                       splits: dict[str, layout.SplitArrays]) -> dict[str, Any]:
    """Per partition rows, positive rate, new-id and OOV rates (module docstring); per feature over all of them."""
    entries = layout.partitions_of(meta, directory)
    arrays = [splits[layout.partition_split(n)] for n in entries]
    by_feature, cardinality = {}, {}
    for f in schema.sparse:
        by_feature[f.name], cardinality[f.name] = _feature_by_partition(f, schema.id_range(f), arrays)
    parts = []
    for k, (number, entry) in enumerate(entries.items()):
        features = {name: rows[k] for name, rows in by_feature.items()}
        new, ids = sum(v["new_ids"] for v in features.values()), sum(v["ids"] for v in features.values())
        parts.append({"partition": number, "split": layout.partition_split(number), "rows": arrays[k].rows,
                      "label_rate": _label_rate(arrays[k].labels), "inputs": entry.get("inputs", []),
                      "new_id_rate": _rate(new, ids) if k else None, "features": features})
    pooling = layout.pooled_bag_lengths(list(entries.values()), schema.sparse_names)
    return {"directory": str(directory), "schema": schema.name, "num_dense": schema.num_dense, "splits": {},
            "fitted_on": meta.get("fitted_on"), "new_id_rate": NEW_ID_RATE, "partitions": parts,
            "features": _features(schema, cardinality, pooling), "tables": _tables(schema)}


def tables_file(stats: dict[str, Any], default_dim: int) -> dict[str, Any]:
    """A planner tables file (dlrm-plan make --tables): a shared table's pooling is its features' sum."""
    pooling = {f["feature"]: f["pooling_factor"] for f in stats["features"]}
    return {"tables": [
        {"name": t["name"], "rows": t["rows"], "dim": t["dim"] or default_dim,
         "pooling_factor": sum(pooling[f] for f in t["features"]), "feature_names": t["features"],
         **({"managed": True} if t.get("managed") else {})}
        for t in stats["tables"]
    ]}
