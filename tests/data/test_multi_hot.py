"""MLPerf's synthetic multi-hot expansion as a loader option of ColumnarDataset, for any schema.

Feature f's id x becomes the bag {(x + o_fk) mod rows_f : k < h_f}, o_f0 = 0, the other
offsets drawn from the seed. Checked against a pure-Python reference (one-hot and
delimiter features, shared tables, padding) and against the bags the Criteo loader made
from the same ids with the same seed (while that loader exists).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.dataset import ColumnarDataset
from dlrm_dist.data.errors import DataError
from dlrm_dist.features.builtin import criteo_schema
from dlrm_dist.features.schema import SPLITS, FeatureSchema
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


def _write_columnar(out: Path, schema: FeatureSchema, parts: dict[str, tuple]) -> None:
    """A columnar directory written file by file (one-hot features only): parts[split] = (dense, sparse, labels)."""
    meta = {"schema": schema.to_dict(), "splits": {}}
    for s in SPLITS:
        dense, sparse, labels = parts[s]
        (out / s).mkdir(parents=True)
        np.save(layout.dense_file(out, s), dense.astype(np.float32))
        np.save(layout.labels_file(out, s), labels.reshape(-1).astype(np.float32))
        for k, f in enumerate(schema.sparse):
            np.save(layout.ids_file(out, s, f.name), sparse[:, k].astype(layout.id_dtype(f.buckets)))
        meta["splits"][s] = {"rows": len(labels), "bag_lengths": {f.name: 1.0 for f in schema.sparse}}
    layout.write_meta(out, meta)


def test_same_bags_as_the_criteo_loader(tmp_path: Path) -> None:
    """The Criteo loader's multi-hot (before it goes): same ids, same seed -> the same batches."""
    from dlrm_dist.data.criteo import layout as criteo_layout
    from dlrm_dist.data.criteo.dataset import CriteoDataset

    rng = np.random.default_rng(0)
    sizes = [int(v) for v in rng.integers(1, 60, 26)]
    sizes[3] = 1  # a table of one row: its offsets are drawn from [1, 2)
    days = []
    for d, n in enumerate((37, 30, 23)):
        sparse = np.stack([rng.integers(0, m, n) for m in sizes], axis=1).astype(np.int32)
        days.append((rng.normal(size=(n, 13)).astype(np.float32), sparse, rng.integers(0, 2, (n, 1)).astype(np.int32)))
        for kind, a in zip(criteo_layout.KINDS, days[-1]):
            np.save(criteo_layout.day_file(tmp_path, d, kind), a)
    (tmp_path / "meta.json").write_text(json.dumps({"days": [{"day": d, "rows": len(a[2])} for d, a in enumerate(days)],
                                                    "table_sizes": sizes}))
    half = 12  # ceil(23 / 2)
    train = tuple(np.concatenate([days[0][k], days[1][k]]) for k in range(3))
    last = days[2]
    schema = criteo_schema(sizes)
    _write_columnar(tmp_path / "columnar", schema, {"train": train, "val": tuple(a[:half] for a in last),
                                                    "test": tuple(a[half:] for a in last)})
    multi_hot = [int(v) for v in rng.integers(1, 6, 26)]
    for hot in ([4], multi_hot):
        old = CriteoDataset(tmp_path, schema.sparse_names, seed=5, multi_hot=hot)
        new = ColumnarDataset(tmp_path / "columnar", seed=5, multi_hot=hot)
        assert new.bag_lengths() == old.bag_lengths()
        for split, count in (("train", 9), ("eval", None)):
            for rank in (0, 1):
                pairs = zip(old.batches(split, 10, rank, 2, count), new.batches(split, 10, rank, 2, count), strict=True)
                for a, b in pairs:
                    assert _labelled_rows(a) == _labelled_rows(b)


def _labelled_rows(batch) -> list[tuple]:
    """Each row that counts (label 0 or 1) as (label, dense, every feature's bag): the two loaders
    fill an evaluation batch's ignored rows (label -1) with different copies."""
    bags = {f: jt.values().split(jt.lengths().tolist()) for f, jt in batch.sparse_features.to_dict().items()}
    return [(float(y), batch.dense_features[r].tolist(), {f: b[r].tolist() for f, b in sorted(bags.items())})
            for r, y in enumerate(batch.labels.tolist()) if y >= 0]


def test_columnar_data_has_no_teacher(tiny: Path) -> None:
    """The teacher's AUC is the synthetic source's capability only (the trainer asks where it exists)."""
    from dlrm_dist.data import HasTeacher, teacher_auc

    ds = ColumnarDataset(tiny)
    assert not isinstance(ds, HasTeacher) and teacher_auc(ds, 8) is None
