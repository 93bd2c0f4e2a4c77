"""What the planner needs to know about a preprocessed Criteo directory.

Rows and label rate per day, per-feature cardinality (distinct ids in the training days)
and mean pooling factor (ids per sample: 1 for one-hot Criteo, the multi-hot sizes when
expanded), computed in row blocks over the memory-mapped files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from dlrm_dist.data.criteo import layout
from dlrm_dist.data.criteo.dataset import CriteoDataset, _discover_days
from dlrm_dist.features.builtin import criteo_sparse_names
from dlrm_dist.names import TABLE_PREFIX

BLOCK = 1 << 20


def compute_stats(directory: str | Path, max_ind_range: int = 0, multi_hot: Optional[Sequence[int]] = None) -> dict[str, Any]:
    directory = Path(directory)
    ds = CriteoDataset(directory, criteo_sparse_names(), max_ind_range=max_ind_range, multi_hot=multi_hot)
    days = []
    for d in _discover_days(directory):
        labels = np.load(layout.day_file(directory, d, "labels"), mmap_mode="r")
        positives = sum(int(labels[i : i + BLOCK].sum()) for i in range(0, len(labels), BLOCK))
        days.append({"day": d, "rows": len(labels), "label_rate": positives / max(len(labels), 1)})
    seen = [np.zeros(size, dtype=bool) for size in ds.table_sizes]
    for part in ds.splits["train"].parts:
        for lo in range(part.start, part.stop, BLOCK):
            block = np.asarray(part.sparse[lo : min(lo + BLOCK, part.stop)], dtype=np.int64)
            if ds._modulo is not None:  # noqa: SLF001 - raw ids are hashed as the loader does
                block %= ds._modulo  # noqa: SLF001
            for f in range(block.shape[1]):
                seen[f][block[:, f]] = True
    hot = ds._offsets  # noqa: SLF001
    features = [
        {"feature": ds.feature_names[f], "table_size": ds.table_sizes[f], "cardinality": int(seen[f].sum()),
         "pooling_factor": float(len(hot[f])) if hot else 1.0}
        for f in range(len(seen))
    ]
    return {"directory": str(directory), "days": days, "train_rows": len(ds.splits["train"]),
            "val_rows": len(ds.splits["val"]), "test_rows": len(ds.splits["test"]), "features": features}


def tables_file(stats: dict[str, Any], dim: int) -> dict[str, Any]:
    """A planner tables file (dlrm-plan make --tables) for these features."""
    return {"tables": [
        {"name": TABLE_PREFIX + f["feature"], "rows": f["table_size"], "dim": dim,
         "pooling_factor": f["pooling_factor"], "feature_names": [f["feature"]]}
        for f in stats["features"]
    ]}
