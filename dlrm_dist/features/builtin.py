"""Built-in schemas: Criteo's shape (13 dense, 26 hashed categorical features) and the demo's.

Criteo's facts live here and nowhere else: its column layout (label, 13 integer columns,
26 hex categorical columns, tab-separated, no header), TorchRec's feature names
(``int_<i>``, ``cat_<i>``) and its dense transform, log(1 + max(x, 0)).
"""

from __future__ import annotations

from typing import Optional, Sequence

from dlrm_dist.features.schema import DenseFeature, FeatureSchema, InputFormat, Label, SparseFeature
from dlrm_dist.names import TABLE_PREFIX

CRITEO_NUM_DENSE = 13
CRITEO_NUM_SPARSE = 26
CRITEO_DEFAULT_BUCKETS = 40_000_000  # MLPerf's max_ind_range for Criteo 1TB

# 26 Criteo-shaped categorical features with a spread of cardinalities, small enough
# that the demo learns most of the teacher's signal in a minute on two CPU cores.
DEMO_TABLE_SIZES = (
    1000, 500, 20000, 8000, 300, 24, 4000, 600, 3, 10000,
    5000, 15000, 3000, 27, 6000, 12000, 10, 3000, 2000, 4, 14000, 18, 15, 9000, 100, 7000,
)


def criteo_dense_names() -> list[str]:
    return [f"int_{i}" for i in range(CRITEO_NUM_DENSE)]


def criteo_sparse_names(count: int = CRITEO_NUM_SPARSE) -> list[str]:
    return [f"cat_{i}" for i in range(count)]


def criteo_schema(table_sizes: Optional[Sequence[int]] = None, name: str = "criteo") -> FeatureSchema:
    """Criteo's columns; ``table_sizes`` (one per sparse feature) default to MLPerf's hash size.

    Giving a different number of table sizes keeps the 13 dense features and makes that
    many Criteo-shaped categorical features (the demo and tests use this).
    """
    sizes = list(table_sizes) if table_sizes is not None else [CRITEO_DEFAULT_BUCKETS] * CRITEO_NUM_SPARSE
    dense = tuple(DenseFeature(n, n, ("clip", "log1p"), clip=(0.0, float("inf"))) for n in criteo_dense_names())
    sparse = tuple(SparseFeature(n, n, "hash", TABLE_PREFIX + n, buckets=int(rows))
                   for n, rows in zip(criteo_sparse_names(len(sizes)), sizes))
    columns = ("label", *criteo_dense_names(), *criteo_sparse_names())
    return FeatureSchema(dense, sparse, Label("label"), input=InputFormat("tsv", "\t", False, columns), name=name)


def demo_schema(table_sizes: Optional[Sequence[int]] = None) -> FeatureSchema:
    """The built-in synthetic demo: Criteo's shape with the demo's table sizes."""
    return criteo_schema(table_sizes or DEMO_TABLE_SIZES, name="demo")


BUILTIN = {"criteo": criteo_schema, "demo": demo_schema}
