"""The loader on the real Criteo sample (a columnar directory of the built-in schema): rank
slices, shuffling, last batches, multi-hot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_dist.data.columnar.dataset import ColumnarDataset
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.data.errors import DataError
from dlrm_dist.metrics.eval import EvalMetrics
from dlrm_dist.features.builtin import criteo_schema, criteo_sparse_names

NAMES = criteo_sparse_names()


@pytest.fixture(scope="module")
def data_dir(criteo_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("criteo")
    preprocess(Options(criteo_schema(days=7, buckets=1000), [criteo_sample], out, workers=2, progress=False))
    return out


def _key(batch) -> list:
    return batch.dense_features[:, 0].tolist()


def test_ranks_read_slices_of_the_same_global_batches(data_dir) -> None:
    ds = ColumnarDataset(data_dir, seed=3)
    whole = list(ds.batches("train", 16, 0, 1, num_batches=12))
    halves = [list(ds.batches("train", 16, r, 2, num_batches=12)) for r in range(2)]
    for b, (x, y) in zip(whole, zip(*halves)):
        assert torch.equal(b.dense_features, torch.cat([x.dense_features, y.dense_features]))
        assert torch.equal(b.labels, torch.cat([x.labels, y.labels]))
        for f in NAMES:
            assert torch.equal(b.sparse_features[f].values(), torch.cat([x.sparse_features[f].values(), y.sparse_features[f].values()]))


def test_block_shuffle_is_seeded_and_visits_every_batch_once_per_epoch(data_dir) -> None:
    per_epoch = 171 // 16  # training rows // global batch: the last partial batch is dropped
    a = [_key(b) for b in ColumnarDataset(data_dir, seed=1).batches("train", 16, 0, 1, num_batches=2 * per_epoch)]
    again = [_key(b) for b in ColumnarDataset(data_dir, seed=1).batches("train", 16, 0, 1, num_batches=per_epoch)]
    other = [_key(b) for b in ColumnarDataset(data_dir, seed=2).batches("train", 16, 0, 1, num_batches=per_epoch)]
    plain = [_key(b) for b in ColumnarDataset(data_dir, shuffle=False).batches("train", 16, 0, 1, num_batches=per_epoch)]
    assert a[:per_epoch] == again and a[:per_epoch] != other
    assert sorted(map(tuple, a[:per_epoch])) == sorted(map(tuple, plain))  # a permutation of the batches
    assert sorted(map(tuple, a[per_epoch:])) == sorted(map(tuple, plain)) and a[per_epoch:] != a[:per_epoch]
    resumed = [_key(b) for b in ColumnarDataset(data_dir, seed=1).batches("train", 16, 0, 1, num_batches=3, start_batch=5)]
    assert resumed == a[5:8]


@pytest.mark.parametrize("world", [1, 2])
def test_eval_covers_every_row_once(data_dir, world: int) -> None:
    ds = ColumnarDataset(data_dir)
    n = ds.splits["val"].rows
    labels = []
    for r in range(world):
        for b in ds.batches("eval", 8, r, world, ds.eval_batch_count(8)):
            labels.append((r, b.labels))
    valid = sum(int((lab >= 0).sum()) for _, lab in labels)
    padded = sum(int((lab < 0).sum()) for _, lab in labels)
    assert valid == n and padded == ds.eval_batch_count(8) * 8 - n
    m = EvalMetrics()  # padding rows (label -1) never reach the metrics
    m.update(torch.zeros(4), torch.tensor([1.0, 0.0, -1.0, -1.0]))
    out = m.compute(step=0)
    assert out.auc == 0.5 and out.samples == 2


def test_multi_hot_expansion(data_dir) -> None:
    hot = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
    one = next(ColumnarDataset(data_dir, shuffle=False).batches("train", 16, 0, 1))
    multi = next(ColumnarDataset(data_dir, shuffle=False, multi_hot=hot).batches("train", 16, 0, 1))
    for f, h in zip(NAMES, hot):
        kjt = multi.sparse_features[f]
        assert kjt.lengths().tolist() == [h] * 16
        bags = kjt.values().reshape(16, h)
        assert torch.equal(bags[:, 0], one.sparse_features[f].values())  # offset 0 keeps the id itself
        assert int(bags.max()) < 1000 and int(bags.min()) >= 0
    with pytest.raises(DataError, match="multi_hot has 2 sizes for the 26 sparse features"):
        ColumnarDataset(data_dir, multi_hot=[2, 3])
    with pytest.raises(DataError, match="fewer than one global batch"):  # 171 training rows
        next(ColumnarDataset(data_dir).batches("train", 4096, 0, 1))
    assert np.array_equal(multi.labels.numpy(), one.labels.numpy())
