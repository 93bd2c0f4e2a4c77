"""The synthetic generator: determinism, world-size-invariant slicing, shapes, signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_dist.data.synthetic import SyntheticData, SyntheticSpec
from dlrm_dist.features import demo_schema
from dlrm_dist.features.schema import from_dict


def _data(**kw) -> SyntheticData:
    return SyntheticData(SyntheticSpec(**kw), demo_schema([50, 1000, 7]))


def test_deterministic_and_slice_invariant() -> None:
    d = _data(pooling_factor=3, variable_pooling=True)
    whole, p_whole = d.samples("train", 100, 64)
    a, _ = d.samples("train", 100, 20)
    b, _ = d.samples("train", 120, 44)
    np.testing.assert_array_equal(whole.dense, np.concatenate([a.dense, b.dense]))
    np.testing.assert_array_equal(whole.labels, np.concatenate([a.labels, b.labels]))
    for t in range(3):
        np.testing.assert_array_equal(whole.values[t], np.concatenate([a.values[t], b.values[t]]))
        np.testing.assert_array_equal(whole.lengths[t], np.concatenate([a.lengths[t], b.lengths[t]]))
    again, _ = _data(pooling_factor=3, variable_pooling=True).samples("train", 100, 64)
    np.testing.assert_array_equal(again.dense, whole.dense)


def test_ranks_partition_global_batch() -> None:
    d = _data()
    full = next(d.batches("train", 64, rank=0, world_size=1, num_batches=1, start_batch=3))
    parts = [next(d.batches("train", 64, rank=r, world_size=4, num_batches=1, start_batch=3)) for r in range(4)]
    assert torch.equal(full.dense_features, torch.cat([p.dense_features for p in parts]))
    assert torch.equal(full.labels, torch.cat([p.labels for p in parts]))
    for f in d.feature_names:
        assert torch.equal(full.sparse_features[f].values(), torch.cat([p.sparse_features[f].values() for p in parts]))


def test_splits_differ_and_ids_in_range() -> None:
    d = _data(pooling_factor=2)
    tr, _ = d.samples("train", 0, 500)
    ev, _ = d.samples("eval", 0, 500)
    assert not np.array_equal(tr.dense, ev.dense)
    for t, rows in enumerate((50, 1000, 7)):
        assert tr.values[t].min() >= 0 and tr.values[t].max() < rows
        assert (tr.lengths[t] == 2).all() and len(tr.values[t]) == 1000


def test_variable_pooling_mean_and_range() -> None:
    d = _data(pooling_factor=4, variable_pooling=True)
    b, _ = d.samples("train", 0, 20000)
    lengths = b.lengths[1]
    assert lengths.min() == 1 and lengths.max() == 7
    assert abs(lengths.mean() - 4.0) < 0.05


def test_power_law_popularity() -> None:
    ids = _data(zipf_alpha=1.2).samples("train", 0, 20000)[0].values[1]
    counts = np.sort(np.bincount(ids, minlength=1000))[::-1]
    assert counts[:10].sum() > 0.3 * counts.sum()  # a few hot ids dominate
    uniform = np.bincount(_data(zipf_alpha=0.0).samples("train", 0, 20000)[0].values[1], minlength=1000)
    assert uniform.max() < 5 * uniform.mean()


def test_teacher_has_signal_and_dense_is_log_scaled() -> None:
    d = SyntheticData(SyntheticSpec(), demo_schema([50, 1000, 7]), eval_batches=10)
    block, prob = d.samples("eval", 0, 20000)
    assert 0.15 < block.labels.mean() < 0.6
    assert abs(block.labels.mean() - prob.mean()) < 0.02
    assert d.teacher_auc(global_batch_size=2000) > 0.7 and d.eval_batch_count(2000) == 10
    assert (block.dense >= 0).all() and block.dense.max() < 20


def test_any_schema_shape_shared_tables_and_no_dense() -> None:
    """Dense count from the schema (zero included); shared tables draw from the shared table's rows."""
    schema = from_dict({"sparse": [
        {"name": "g1", "kind": "hash", "buckets": 9, "table": "genre"},
        {"name": "u", "kind": "identity", "buckets": 500},
        {"name": "g2", "kind": "hash", "buckets": 9, "table": "genre"},
    ]})
    d = SyntheticData(SyntheticSpec(pooling_factor=2), schema)
    block, prob = d.samples("train", 0, 4000)
    assert block.dense.shape == (4000, 0) and d.feature_names == ["g1", "u", "g2"]
    assert max(block.values[0].max(), block.values[2].max()) < 9 and block.values[1].max() >= 9
    assert d.bag_lengths() == {"g1": 2.0, "u": 2.0, "g2": 2.0}
    assert 0.05 < block.labels.mean() < 0.95 and prob.std() > 0.05  # the teacher still has signal
