"""Built-in schemas: Criteo's shape (13 dense, 26 hashed categorical features) and the demo's.

Criteo's facts live here and nowhere else: its column layout (label, 13 integer columns,
26 hex categorical columns, tab-separated, no header: input format ``criteo_tsv``), TorchRec's
feature names (``int_<i>``, ``cat_<i>``), its dense transform, log(1 + max(x, 0)), its ids
(MLPerf's hex value modulo ``buckets``, or a vocabulary by value with 0 for rare values) and
its split (every day but the last is train; the last day's halves are val and test).
"""

from __future__ import annotations

from typing import Optional, Sequence

from dlrm_dist.features.schema import DenseFeature, FeatureSchema, InputFormat, Label, SparseFeature, SplitSpec
from dlrm_dist.features.errors import SchemaError
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


def criteo_columns() -> tuple[str, ...]:
    """The 40 fields of a Criteo line, in file order."""
    return ("label", *criteo_dense_names(), *criteo_sparse_names())


def _criteo_sparse(name: str, rows: int, vocab_min_count: Optional[int]) -> SparseFeature:
    if vocab_min_count is not None:  # the old --vocab: ids 1..K by value, rare and missing values -> 0
        return SparseFeature(name, name, "vocab", TABLE_PREFIX + name, order="value", min_count=vocab_min_count)
    return SparseFeature(name, name, "hash", TABLE_PREFIX + name, buckets=int(rows), hash="int_modulo")


def criteo_schema(table_sizes: Optional[Sequence[int]] = None, name: str = "criteo", *,
                  buckets: Optional[int] = None, days: Optional[int] = None,
                  vocab_min_count: Optional[int] = None) -> FeatureSchema:
    """Criteo's columns read as MLPerf and TorchRec read them.

    Sparse ids are the hex value modulo ``buckets`` (default 40,000,000, MLPerf's) or
    per-feature ``table_sizes``; ``vocab_min_count = N`` makes each a vocabulary of the
    values seen at least N times in training, ids 1..K by value, rare and missing -> 0.
    The split is by day: ``days = N`` cuts the input's lines into N pseudo-days (Kaggle's
    train.txt: 7), else each input file is one day (Terabyte's day_0 .. day_23).
    Under another ``name``, a different number of table sizes keeps the 13 dense features and
    makes that many Criteo-shaped categorical features (the demo and tests use this); Criteo
    itself needs 26 (fewer would drop fields of every line).
    """
    if table_sizes is not None and buckets is not None:
        raise SchemaError("criteo schema: give table_sizes (one per feature) or buckets (one for all), not both")
    if vocab_min_count is not None and (table_sizes is not None or buckets is not None):
        raise SchemaError("criteo schema: vocab_min_count sizes each table by its vocabulary; drop buckets / "
                          "table_sizes (they apply to hashed ids)")
    if name == "criteo" and table_sizes is not None and len(table_sizes) != CRITEO_NUM_SPARSE:
        raise SchemaError(f"criteo schema: table_sizes has {len(table_sizes)} sizes; Criteo lines have "
                          f"{CRITEO_NUM_SPARSE} categorical features: give {CRITEO_NUM_SPARSE} (or buckets = N for all)")
    default = CRITEO_DEFAULT_BUCKETS if buckets is None else buckets
    sizes = list(table_sizes) if table_sizes is not None else [default] * CRITEO_NUM_SPARSE
    dense = tuple(DenseFeature(n, n, ("clip", "log1p"), clip=(0.0, float("inf"))) for n in criteo_dense_names())
    sparse = tuple(_criteo_sparse(n, rows, vocab_min_count) for n, rows in zip(criteo_sparse_names(len(sizes)), sizes))
    return FeatureSchema(dense, sparse, Label("label"), split=SplitSpec("day", days=days),
                         input=InputFormat("criteo_tsv", "\t", False, criteo_columns()), name=name)


def demo_schema(table_sizes: Optional[Sequence[int]] = None) -> FeatureSchema:
    """The built-in synthetic demo: Criteo's shape with the demo's table sizes."""
    return criteo_schema(table_sizes or DEMO_TABLE_SIZES, name="demo")


BUILTIN = {"criteo": criteo_schema, "demo": demo_schema}
