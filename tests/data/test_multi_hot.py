"""MLPerf's synthetic multi-hot expansion as a loader option of ColumnarDataset, for any schema.

Feature f's id x becomes the bag {(x + o_fk) mod rows_f : k < h_f}, o_f0 = 0, the other
offsets drawn from the seed. Checked against a pure-Python reference (one-hot and
delimiter features, padding) and against the offsets the Criteo loader drew for the same
tables and seed (recorded from it; its batches were compared whole while it existed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.dataset import ColumnarDataset, multi_hot_offsets
from dlrm_dist.data.errors import DataError
from dlrm_dist.features.builtin import criteo_schema
from dlrm_dist.features.schema import FeatureSchema
from tests.data import jobs


def _reference_offsets(schema: FeatureSchema, sizes: list[int], seed: int) -> dict[str, list[int]]:
    """The offsets by their definition: o_f0 = 0, then h_f - 1 integers in [1, max(rows_f, 2)) drawn
    feature by feature, in schema order, from numpy's generator seeded by (seed, 7)."""
    rng = np.random.default_rng([seed, 7])
    per_feature = sizes * len(schema.sparse) if len(sizes) == 1 else sizes
    out = {}
    for f, h in zip(schema.sparse, per_feature):
        rows = schema.table_rows(f.table)
        out[f.name] = [0] + [int(v) for v in rng.integers(1, max(rows, 2), h - 1)]
    return out


def _reference_bags(ds: ColumnarDataset, split: str, lo: int, hi: int, feature: str,
                    offsets: list[int]) -> tuple[list[int], list[int]]:
    """Rows lo..hi of one feature expanded by plain Python loops over the files' ids."""
    data = ds.split(split)
    rows = ds.schema.table_rows(next(f.table for f in ds.schema.sparse if f.name == feature))
    ids, off = np.load(layout.ids_file(ds.directory, split, feature)).tolist(), data.offsets[feature]
    values, lengths = [], []
    for r in range(lo, hi):
        bag = ids[int(off[r]) : int(off[r + 1])] if off is not None else [ids[r]]
        values += [(x + o) % rows for x in bag for o in offsets]
        lengths.append(len(bag) * len(offsets))
    return values, lengths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CSV job (an identity, a vocab, a hash and a '|'-delimited vocab feature)."""
    d = tmp_path_factory.mktemp("tiny")
    jobs.run([jobs.write_csv(d, n=40)], d / "out", jobs.schema_dict(hash_buckets=3))
    return d / "out"


@pytest.mark.parametrize("sizes", [[3], [2, 1, 4, 3]])
def test_bags_match_a_python_reference(tiny: Path, sizes: list[int]) -> None:
    ds = ColumnarDataset(tiny, shuffle=False, seed=11, multi_hot=sizes)
    offsets = _reference_offsets(ds.schema, sizes, seed=11)
    assert {f: o.tolist() for f, o in ds._offsets.items()} == offsets
    plain = ColumnarDataset(tiny, shuffle=False, seed=11)
    n = ds.split("train").rows
    block = ds.block("train", 0, n)
    for i, f in enumerate(ds.feature_names):
        values, lengths = _reference_bags(ds, "train", 0, n, f, offsets[f])
        assert block.values[i].tolist() == values and block.lengths[i].tolist() == lengths, f
        assert ds.bag_lengths()[f] == pytest.approx(plain.bag_lengths()[f] * len(offsets[f]))
    assert ds.bag_lengths()["tags"] > len(offsets["tags"])  # the delimiter feature's bags hold several ids


def test_padded_eval_rows_are_expanded_like_the_first_row(tiny: Path) -> None:
    ds = ColumnarDataset(tiny, shuffle=False, seed=2, multi_hot=[2])
    rows = ds.split("eval").rows
    block = ds.block("eval", 0, rows + 3)
    first = ds.block("eval", 0, 1)
    for i in range(len(ds.feature_names)):
        h = int(first.lengths[i][0])
        assert block.lengths[i][-3:].tolist() == [h] * 3
        assert block.values[i][-3 * h :].tolist() == np.tile(first.values[i], 3).tolist()
    assert block.labels[-3:].tolist() == [-1.0] * 3


def test_sizes_are_checked_by_name(tiny: Path) -> None:
    with pytest.raises(DataError, match=r"multi_hot has 2 sizes for the 4 sparse features \(uid .. tags\)"):
        ColumnarDataset(tiny, multi_hot=[2, 3])
    with pytest.raises(DataError, match=r"integers >= 1.*color=0, color_h=True"):
        ColumnarDataset(tiny, multi_hot=[1, 0, True, 2])
    assert ColumnarDataset(tiny, multi_hot=[]).bag_lengths() == ColumnarDataset(tiny).bag_lengths()


# The Criteo loader's offsets (data/criteo/dataset.py, CriteoDataset._multi_hot_offsets, run before it was
# deleted; test_same_bags_as_the_criteo_loader compared whole batches of both loaders while both existed) for
# these table sizes (a one-row table among them), these per-feature sizes and seed 5.
CRITEO_SIZES = [51, 38, 31, 1, 19, 3, 5, 1, 11, 48, 39, 54, 30, 36, 58, 44, 38, 33, 34, 56, 17, 49, 40, 1, 24, 51]
CRITEO_HOT = [3, 1, 4, 4, 5, 1, 1, 5, 1, 3, 1, 2, 3, 3, 3, 1, 1, 1, 1, 4, 3, 4, 2, 4, 4, 2]
CRITEO_OFFSETS = [[0, 16, 26], [0], [0, 26, 9, 29], [0, 1, 1, 1], [0, 18, 9, 15, 9], [0], [0], [0, 1, 1, 1, 1], [0],
                  [0, 10, 42], [0], [0, 26], [0, 17, 2], [0, 8, 30], [0, 52, 44], [0], [0], [0], [0], [0, 15, 7, 28],
                  [0, 4, 5], [0, 18, 5, 11], [0, 31], [0, 1, 1, 1], [0, 7, 14, 21], [0, 27]]


def test_same_offsets_as_the_criteo_loader() -> None:
    """A seed gives the bags the Criteo loader gave: the same offsets, drawn in the same order."""
    schema = criteo_schema(CRITEO_SIZES)
    got = multi_hot_offsets(schema, CRITEO_HOT, seed=5)
    assert [got[f].tolist() for f in schema.sparse_names] == CRITEO_OFFSETS
    assert _reference_offsets(schema, CRITEO_HOT, seed=5) == dict(zip(schema.sparse_names, CRITEO_OFFSETS))


def test_columnar_data_has_no_teacher(tiny: Path) -> None:
    """The teacher's AUC is the synthetic source's capability only (the trainer asks where it exists)."""
    from dlrm_dist.data import HasTeacher, teacher_auc

    ds = ColumnarDataset(tiny)
    assert not isinstance(ds, HasTeacher) and teacher_auc(ds, 8) is None
