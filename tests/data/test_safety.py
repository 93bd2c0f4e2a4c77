"""Data and run safety: inputs that once crashed, were silently accepted, or said too little.

Each test failed on the code before the fix it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.data.criteo import layout, sources
from dlrm_dist.data.criteo.preprocess import Options, PreprocessError, preprocess
from dlrm_dist.data.npy import NpyWriter


def _pre(src: Path, out: Path, **kw):
    return preprocess(Options(kw.pop("dataset", "kaggle"), kw.pop("inputs", [src]), out, workers=2, progress=False, **kw))


def test_empty_appends_and_zero_width_rows(tmp_path: Path) -> None:
    """A day that receives no rows from a chunk used to crash in memoryview().cast."""
    w = NpyWriter(tmp_path / "a.npy", np.float32, (3,))
    w.append(np.zeros((0, 3)))
    w.append(np.ones((2, 3)))
    w.close()
    assert np.load(tmp_path / "a.npy").shape == (2, 3)
    w = NpyWriter(tmp_path / "b.npy", np.float32, (0,))  # a schema without dense features
    w.append(np.zeros((5, 0)))
    w.close()
    assert np.load(tmp_path / "b.npy").shape == (5, 0)


def test_fewer_lines_than_days(criteo_sample: Path, tmp_path: Path) -> None:
    src = tmp_path / "five.tsv"
    src.write_text("".join(criteo_sample.read_text().splitlines(keepends=True)[:5]))
    r = _pre(src, tmp_path / "out", max_ind_range=100)
    assert r.written == 5 and [d["rows"] for d in r.days] == [0, 1, 1, 0, 1, 1, 1]


def test_day_boundary_on_a_chunk_end_and_all_malformed_chunks(criteo_sample: Path, tmp_path: Path, monkeypatch) -> None:
    lines = criteo_sample.read_text().splitlines(keepends=True)[:70]
    src = tmp_path / "lines.tsv"
    src.write_text("".join(lines[:40] + ["not a criteo line\n"] * 10 + lines[40:]))
    # One line per chunk: every day boundary falls on a chunk end, and ten chunks hold only
    # malformed lines (each gives its day zero rows).
    monkeypatch.setattr(sources, "CHUNK_BYTES", 1)
    r = _pre(src, tmp_path / "out", max_ind_range=100)
    assert r.written == 70 and r.skipped == 10
    assert sum(d["rows"] for d in r.days) == 70


def test_rerun_with_other_options_or_inputs_is_refused_by_name(criteo_sample: Path, tmp_path: Path) -> None:
    """It used to keep the old days, report "rows read 0" and rewrite meta.json to the new options."""
    out = tmp_path / "out"
    _pre(criteo_sample, out, max_ind_range=1000)
    assert _pre(criteo_sample, out, max_ind_range=1000).written == 0  # the same job: complete, nothing redone
    with pytest.raises(PreprocessError, match=r"another preprocessing job \(options max_ind_range 1000 -> 50\).*--overwrite"):
        _pre(criteo_sample, out, max_ind_range=50)
    with pytest.raises(PreprocessError, match=r"options id_mode 'hash' -> 'vocab'"):
        _pre(criteo_sample, out, id_mode="vocab")
    other = tmp_path / "other.tsv"
    other.write_bytes(criteo_sample.read_bytes())
    with pytest.raises(PreprocessError, match=r"inputs .*criteo_sample_200.tsv.* -> .*other.tsv"):
        _pre(other, out, max_ind_range=1000)
    r = _pre(criteo_sample, out, max_ind_range=50, overwrite=True)
    assert r.written == 200 and layout.read_meta(out)["table_sizes"] == [50] * 26
    assert max(int(np.load(layout.day_file(out, d, "sparse")).max()) for d in range(7)) < 50


def test_rows_read_after_a_resume_are_written_plus_skipped(criteo_sample: Path, tmp_path: Path, monkeypatch) -> None:
    lines = criteo_sample.read_text().splitlines(keepends=True)
    src = tmp_path / "some_bad.tsv"
    src.write_text("".join(lines[:100] + ["bad line\n"] * 3 + lines[100:]))
    monkeypatch.setattr(sources, "CHUNK_BYTES", 4096)  # several chunks, days ending inside them
    out = tmp_path / "out"
    _pre(src, out, max_ind_range=100)
    for d in (4, 5, 6):  # as if killed after day 3
        layout.done_file(out, d).unlink()
    r = _pre(src, out, max_ind_range=100)
    assert [d["day"] for d in r.days] == [4, 5, 6]
    assert r.lines == r.written + r.skipped == sum(d["rows"] + d["skipped"] for d in r.days)


@pytest.fixture()
def days(criteo_sample: Path, tmp_path: Path) -> Path:
    out = tmp_path / "days"
    _pre(criteo_sample, out, max_ind_range=1000)
    return out


@pytest.mark.parametrize("damage, words", [
    # labels 10 rows short: trained silently before
    (lambda d: np.save(layout.day_file(d, 2, "labels"), np.load(layout.day_file(d, 2, "labels"))[:-10]),
     ["day_2_labels.npy", "shape (18, 1)", "(28, 1)"]),
    # 25 sparse columns: crashed after the process group existed
    (lambda d: np.save(layout.day_file(d, 1, "sparse"), np.load(layout.day_file(d, 1, "sparse"))[:, :25]),
     ["day_1_sparse.npy", "shape (29, 25)", "(29, 26)"]),
    (lambda d: layout.day_file(d, 3, "dense").write_bytes(layout.day_file(d, 3, "dense").read_bytes()[:-40]),
     ["day_3_dense.npy", "truncated or corrupt"]),
    (lambda d: layout.day_file(d, 0, "sparse").write_bytes(np.random.default_rng(0).bytes(500)),
     ["day_0_sparse.npy", "not a readable .npy"]),
    (lambda d: np.save(layout.day_file(d, 4, "dense"), np.load(layout.day_file(d, 4, "dense")).astype(np.float64)),
     ["day_4_dense.npy", "float64", "float32"]),
])
def test_day_files_are_checked_before_training(days: Path, damage, words: list[str]) -> None:
    from dlrm_dist.data.criteo.dataset import CriteoDataset, DataError
    from dlrm_dist.features.builtin import criteo_sparse_names

    damage(days)
    with pytest.raises(DataError) as e:
        CriteoDataset(days, criteo_sparse_names())
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


def test_out_of_range_ids_fail_by_feature_not_clamped(days: Path) -> None:
    from dlrm_dist.data.criteo.dataset import CriteoDataset, DataError
    from dlrm_dist.features.builtin import criteo_sparse_names

    meta = layout.read_meta(days)
    meta["table_sizes"][5] = 3  # the files hold ids up to 999
    layout.write_meta(days, meta)
    ds = CriteoDataset(days, criteo_sparse_names(), shuffle=False)
    with pytest.raises(DataError, match=r"feature cat_5 has id \d+ outside its table of 3 rows"):
        for _ in ds.batches("train", 16, 0, 1, 20):
            pass


def test_stats_on_a_half_written_directory_says_which_day(days: Path, capsys) -> None:
    from dlrm_dist.cli.data_main import main as data_main

    (days / layout.META).unlink()
    layout.done_file(days, 5).unlink()
    assert data_main(["stats", str(days)]) == 2
    assert "incomplete: day 5 missing" in capsys.readouterr().err


def test_small_ones_named_clearly(criteo_sample: Path, tmp_path: Path, capsys) -> None:
    from dlrm_dist.cli.data_main import main as data_main
    from dlrm_dist.data.criteo.parse import parse_chunk

    # --workers 0 raised a raw ValueError from multiprocessing
    assert data_main(["preprocess", "--dataset", "kaggle", "--input", str(criteo_sample), "--out",
                      str(tmp_path / "w"), "--workers", "0", "--no-progress"]) == 2
    assert "workers=0 must be >= 1" in capsys.readouterr().err
    # a 19-digit count that fits int64 was "not an integer"; one past int64 still is one
    fields = criteo_sample.read_text().splitlines()[0].split("\t")
    fits = "\t".join(fields[:1] + ["9223372036854775807"] + fields[2:]) + "\n"
    over = "\t".join(fields[:1] + ["9223372036854775808"] + fields[2:]) + "\n"
    parsed = parse_chunk((fits + over).encode())
    assert parsed.num_bad == 1 and parsed.dense[0, 0] == 9223372036854775807
    assert parsed.bad[0][1] == "I1 is an integer beyond 64 bits"


def test_preprocessing_cli_starts_without_torch() -> None:
    """`dlrm-data preprocess` spent 5.4 s importing torchrec before reading a byte."""
    import subprocess
    import sys

    code = ("import sys, dlrm_dist.cli.data_main, dlrm_dist.data.criteo.preprocess, dlrm_dist.data.columnar.preprocess, "
            "dlrm_dist.data.movielens; print(sorted(m for m in ('torch', 'torchrec', 'fbgemm_gpu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
