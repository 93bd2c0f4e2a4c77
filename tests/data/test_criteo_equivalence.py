"""The built-in Criteo schema on the columnar path against a pure-Python reference (reference.py).

The committed 200-row sample, preprocessed with ``criteo_schema(days=7, buckets=...)`` or
``vocab_min_count=...``: train = pseudo-days 0..5, val = the first half of day 6, test = the
second half; ids, dense values and labels equal to the reference's, exactly (both compute
log1p in float64 of the same integer and round it to float32 once).

Before the old ``data/criteo`` path was deleted this test compared the two paths on the same
sample (commit 8ba8609): ids and labels equal, dense bit for bit equal to its hash mode and
within 1 ulp of its --vocab mode (which computed log1p in float32, on 61 of 2,600 values).
"""

from __future__ import annotations

import numpy as np
import pytest

from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.features.builtin import criteo_schema, criteo_sparse_names
from tests.data import reference


@pytest.mark.parametrize("kw", [{"buckets": 1000}, {"buckets": 40_000_000}, {"vocab_min_count": 2}],
                         ids=["hash-1000", "hash-mlperf", "vocab-2"])
def test_builtin_criteo_schema_matches_the_reference(criteo_sample, tmp_path, kw) -> None:
    preprocess(Options(criteo_schema(days=7, **kw), [criteo_sample], tmp_path, progress=False, workers=2))
    meta, schema, splits = layout.check_directory(tmp_path)
    expected = reference.criteo(criteo_sample.read_text().splitlines(), 7, **kw)
    assert {s: a.rows for s, a in splits.items()} == {"train": 171, "val": 15, "test": 14}
    for split, a in splits.items():
        dense, ids, labels = expected[split]
        assert a.dense.dtype == np.float32 and np.array_equal(a.dense, np.array(dense, np.float32)), split
        assert np.stack([a.ids[f] for f in criteo_sparse_names()], axis=1).tolist() == ids, split
        assert a.labels.tolist() == labels, split
    if "vocab_min_count" in kw:  # K values by value + the shared id 0 for rare and missing values
        train_ids = np.array(expected["train"][1])
        assert [schema.table_rows(t) for t in schema.table_names] == \
            [len(layout.read_vocab(tmp_path, t)) + 1 for t in schema.table_names]
        assert all(schema.table_rows(t) > int(train_ids[:, j].max()) for j, t in enumerate(schema.table_names))
