"""What the planner and a person need to know about a columnar directory.

Rows and positive rate per split; per feature its table, the table's rows, the distinct ids
seen in training and the mean bag length (the planner's pooling factor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlrm_dist.data.columnar import layout
from dlrm_dist.features.schema import SPLITS

BLOCK = 1 << 20


def _label_rate(labels: np.ndarray) -> float:
    total = sum(float(labels[i : i + BLOCK].sum()) for i in range(0, len(labels), BLOCK))
    return total / max(len(labels), 1)


def compute_stats(directory: str | Path) -> dict[str, Any]:
    meta, schema, splits = layout.check_directory(directory)
    train = splits["train"]
    features = []
    for f in schema.sparse:
        rows = schema.table_rows(f.table)
        ids = train.ids[f.name]
        if f.managed:  # raw ids (the remapper maps them to rows): the distinct ids seen, which may pass rows
            cardinality = int(np.unique(np.asarray(ids)).size)
        else:
            seen = np.zeros(rows, dtype=bool)
            for i in range(0, len(ids), BLOCK):
                seen[np.asarray(ids[i : i + BLOCK])] = True
            cardinality = int(seen.sum())
        features.append({"feature": f.name, "table": f.table, "table_size": rows, "cardinality": cardinality,
                         "pooling_factor": float(meta["splits"]["train"]["bag_lengths"][f.name])})
    return {
        "directory": str(directory), "schema": schema.name, "num_dense": schema.num_dense,
        "splits": {s: {"rows": splits[s].rows, "label_rate": _label_rate(splits[s].labels)} for s in SPLITS},
        "features": features,
        "tables": [{"name": t.name, "rows": schema.table_rows(t.name), "dim": schema.features_of(t.name)[0].dim,
                    "features": [f.name for f in schema.features_of(t.name)],
                    **({"managed": True} if t.remapper is not None else {})} for t in schema.tables(0)],
    }


def tables_file(stats: dict[str, Any], default_dim: int) -> dict[str, Any]:
    """A planner tables file (dlrm-plan make --tables): a shared table's pooling is its features' sum."""
    pooling = {f["feature"]: f["pooling_factor"] for f in stats["features"]}
    return {"tables": [
        {"name": t["name"], "rows": t["rows"], "dim": t["dim"] or default_dim,
         "pooling_factor": sum(pooling[f] for f in t["features"]), "feature_names": t["features"],
         **({"managed": True} if t.get("managed") else {})}
        for t in stats["tables"]
    ]}
