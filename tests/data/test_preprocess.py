"""Preprocessing the real sample: layouts, both id modes, splits, bad input, resume, gzip."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.cli.data_main import main as data_main
from dlrm_dist.data.criteo import layout
from dlrm_dist.data.criteo.dataset import CriteoDataset, DataError
from dlrm_dist.data.criteo.parse import parse_chunk
from dlrm_dist.data.criteo.preprocess import Options, PreprocessError, preprocess
from dlrm_dist.data.criteo.stats import compute_stats
from dlrm_dist.features.builtin import criteo_sparse_names

NAMES = criteo_sparse_names()


def _pre(src: Path, out: Path, **kw) -> object:
    return preprocess(Options(kw.pop("dataset", "kaggle"), kw.pop("inputs", [src]), out, workers=2, progress=False, **kw))


def test_hash_mode_layout_and_values(criteo_sample, tmp_path) -> None:
    r = _pre(criteo_sample, tmp_path, max_ind_range=1000)
    assert (r.lines, r.written, r.skipped) == (200, 200, 0)
    assert [d["rows"] for d in r.days] == [200 * (d + 1) // 7 - 200 * d // 7 for d in range(7)]
    parsed = parse_chunk(criteo_sample.read_bytes())
    dense = np.concatenate([np.load(layout.day_file(tmp_path, d, "dense")) for d in range(7)])
    sparse = np.concatenate([np.load(layout.day_file(tmp_path, d, "sparse")) for d in range(7)])
    labels = np.concatenate([np.load(layout.day_file(tmp_path, d, "labels")) for d in range(7)])
    assert dense.dtype == np.float32 and dense.shape == (200, 13) and labels.shape == (200, 1)
    np.testing.assert_allclose(dense, np.log1p(np.maximum(parsed.dense, 0)), rtol=1e-6)
    np.testing.assert_array_equal(sparse, parsed.sparse % 1000)
    meta = layout.read_meta(tmp_path)
    assert meta["table_sizes"] == [1000] * 26 and meta["val_test_day"] == 6


def test_vocab_mode_contiguous_ids_from_training_days_only(criteo_sample, tmp_path) -> None:
    _pre(criteo_sample, tmp_path, id_mode="vocab", frequency_threshold=2)
    meta = layout.read_meta(tmp_path)
    parsed = parse_chunk(criteo_sample.read_bytes())
    train_rows = 200 * 6 // 7
    for f in (0, 2, 13):
        values, counts = np.unique(parsed.sparse[:train_rows, f], return_counts=True)
        vocab = np.sort(values[(counts >= 2) & (values != 0)])
        assert meta["table_sizes"][f] == len(vocab) + 1
        ids = np.concatenate([np.load(layout.day_file(tmp_path, d, "sparse"))[:, f] for d in range(7)])
        expected = np.array([np.searchsorted(vocab, v) + 1 if v in set(vocab) else 0 for v in parsed.sparse[:, f]])
        np.testing.assert_array_equal(ids, expected)


def test_val_is_first_half_and_test_second_half_of_last_day(criteo_sample, tmp_path) -> None:
    _pre(criteo_sample, tmp_path, max_ind_range=1000)
    last = np.load(layout.day_file(tmp_path, 6, "labels")).reshape(-1)
    ds = CriteoDataset(tmp_path, NAMES)
    half = math.ceil(len(last) / 2)
    assert len(ds.splits["val"]) == half and len(ds.splits["test"]) == len(last) - half
    np.testing.assert_array_equal(ds.splits["val"].read(0, half)[2], last[:half])
    np.testing.assert_array_equal(ds.splits["test"].read(0, len(last) - half)[2], last[half:])
    dense_last = np.load(layout.day_file(tmp_path, 6, "dense"))
    assert not np.array_equal(ds.splits["val"].read(0, 5)[0], ds.splits["test"].read(0, 5)[0])
    np.testing.assert_array_equal(ds.splits["test"].read(0, 3)[0], dense_last[half : half + 3])


def test_bad_lines_are_counted_reported_and_skipped(criteo_sample, tmp_path, capsys) -> None:
    lines = criteo_sample.read_bytes().split(b"\n")
    lines[3] = b"1\t2\t3"
    f = lines[150].split(b"\t")
    f[20] = b"zzzzzzzz"
    lines[150] = b"\t".join(f)
    bad = tmp_path / "train.txt"
    bad.write_bytes(b"\n".join(lines))
    code = data_main(["preprocess", "--dataset", "kaggle", "--input", str(bad), "--out", str(tmp_path / "o"),
                      "--max-ind-range", "100", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "rows read 200  written 198  skipped 2" in out
    assert f"{bad}:4: 3 fields instead of 40" in out and f"{bad}:151: C7 is not 8 hex digits" in out
    assert sum(d["skipped"] for d in (json.loads(p.read_text()) for p in (tmp_path / "o").glob("*.done.json"))) == 2
    with pytest.raises(PreprocessError, match=r"train.txt:4: 3 fields instead of 40 \(--strict"):
        _pre(bad, tmp_path / "strict", max_ind_range=100, strict=True)


def test_resume_skips_complete_days_and_redoes_a_half_written_one(criteo_sample, tmp_path) -> None:
    _pre(criteo_sample, tmp_path, max_ind_range=1000)
    reference = {d: np.load(layout.day_file(tmp_path, d, "sparse")) for d in range(7)}
    stamp = layout.day_file(tmp_path, 1, "dense").stat().st_mtime_ns
    # Day 3 was being written when the process died; day 4 never started.
    for kind in layout.KINDS:
        shutil.move(layout.day_file(tmp_path, 3, kind), layout.day_file(tmp_path, 3, kind).with_suffix(".npy.partial"))
        layout.day_file(tmp_path, 4, kind).unlink()
    layout.done_file(tmp_path, 3).unlink()
    layout.done_file(tmp_path, 4).unlink()
    r = _pre(criteo_sample, tmp_path, max_ind_range=1000)
    assert [d["day"] for d in r.days] == [3, 4]
    assert layout.day_file(tmp_path, 1, "dense").stat().st_mtime_ns == stamp  # untouched
    for d in range(7):
        np.testing.assert_array_equal(np.load(layout.day_file(tmp_path, d, "sparse")), reference[d])
    assert not list(tmp_path.glob("*.partial"))


def test_terabyte_days_gzip_and_plain(criteo_sample, tmp_path) -> None:
    lines = criteo_sample.read_bytes().splitlines(keepends=True)
    files = []
    for d in range(3):
        p = tmp_path / f"day_{d}" if d != 1 else tmp_path / "day_1.gz"
        data = b"".join(lines[d * 60 : (d + 1) * 60 + (20 if d == 2 else 0)])
        p.write_bytes(gzip.compress(data) if d == 1 else data)
        files.append(p)
    r = _pre(criteo_sample, tmp_path / "o", dataset="terabyte", inputs=files, max_ind_range=500)
    assert [d["rows"] for d in r.days] == [60, 60, 80]
    ds = CriteoDataset(tmp_path / "o", NAMES)
    assert (len(ds.splits["train"]), len(ds.splits["val"]), len(ds.splits["test"])) == (120, 40, 40)


def test_stats_and_planner_tables(criteo_sample, tmp_path) -> None:
    _pre(criteo_sample, tmp_path, max_ind_range=1000)
    s = compute_stats(tmp_path)
    parsed = parse_chunk(criteo_sample.read_bytes())
    train = 200 * 6 // 7
    assert [d["rows"] for d in s["days"]] == [200 * (d + 1) // 7 - 200 * d // 7 for d in range(7)]
    assert s["days"][0]["label_rate"] == pytest.approx(parsed.labels[:28].mean())
    assert [f["cardinality"] for f in s["features"]] == [len(np.unique(parsed.sparse[:train, f] % 1000)) for f in range(26)]
    assert {f["pooling_factor"] for f in s["features"]} == {1.0}
    tables = tmp_path / "tables.json"
    assert data_main(["stats", str(tmp_path), "--tables-out", str(tables), "--dim", "16", "--json"]) == 0
    t = json.loads(tables.read_text())["tables"]
    assert len(t) == 26 and t[0] == {"name": "t_cat_0", "rows": 1000, "dim": 16, "pooling_factor": 1.0, "feature_names": ["cat_0"]}


def test_torchrec_layout_loads_as_is(criteo_sample, tmp_path) -> None:
    """Files written by TorchRec's own BinaryCriteoUtils (raw ids, no meta.json) load with a hash range."""
    from torchrec.datasets.criteo import BinaryCriteoUtils

    for d in range(2):
        src = tmp_path / f"day_{d}.tsv"
        src.write_bytes(b"".join(criteo_sample.read_bytes().splitlines(keepends=True)[d * 100 : (d + 1) * 100]))
        with warnings.catch_warnings():  # TorchRec's writer maps a lambda over its datapipe
            warnings.filterwarnings("ignore", message="Local function is not supported by pickle")
            BinaryCriteoUtils.tsv_to_npys(str(src), *(str(layout.day_file(tmp_path, d, k)) for k in layout.KINDS))
    with pytest.raises(DataError, match="raw ids and no meta.json: give data.max_ind_range"):
        CriteoDataset(tmp_path, NAMES)
    ds = CriteoDataset(tmp_path, NAMES, max_ind_range=777, shuffle=False)
    batch = next(ds.batches("train", 20, 0, 1))
    raw = parse_chunk(criteo_sample.read_bytes()).sparse
    assert batch.sparse_features["cat_0"].values().tolist() == (raw[:20, 0] % 777).tolist()


def test_bad_arguments(criteo_sample, tmp_path) -> None:
    with pytest.raises(PreprocessError, match="not found"):
        _pre(tmp_path / "nope.txt", tmp_path)
    with pytest.raises(PreprocessError, match="at least two day files"):
        _pre(criteo_sample, tmp_path, dataset="terabyte", inputs=[criteo_sample])
    with pytest.raises(DataError, match="does not exist"):
        CriteoDataset(tmp_path / "none", NAMES)
