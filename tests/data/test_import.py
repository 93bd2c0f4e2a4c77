"""`dlrm-data import-torchrec`: TorchRec-layout Criteo days -> the columnar layout, once.

The input is written by TorchRec's own ``BinaryCriteoUtils.tsv_to_npys`` from the committed
Criteo sample (three days); the output must hold the arrays read directly from those files
(ids modulo --max-ind-range, TorchRec's split), which are the batches the old Criteo loader
read from such a directory (ids modulo max_ind_range at load; the two loaders' batches were
compared whole while both existed). Hand-made days cover ids already in range and bad input.
"""

from __future__ import annotations

import errno
import json
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from dlrm_dist.cli.data_main import main as data_main
from dlrm_dist.data.columnar import import_torchrec, layout
from dlrm_dist.data.columnar.dataset import ColumnarDataset
from dlrm_dist.data.columnar.import_torchrec import ImportOptions
from dlrm_dist.data.npy import NpyWriter
from dlrm_dist.features.builtin import criteo_schema, criteo_sparse_names
from dlrm_dist.fileio import DirectoryBusyError, DirLock, DiskFullError

NAMES = criteo_sparse_names()
DAY_ROWS = (70, 70, 60)
KINDS = ("dense", "sparse", "labels")


def _day(directory: Path, d: int, kind: str) -> Path:
    return directory / f"day_{d}_{kind}.npy"


@pytest.fixture(scope="module")
def torchrec_dir(criteo_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's 200 rows as three days written by TorchRec's BinaryCriteoUtils (raw ids)."""
    from torchrec.datasets.criteo import BinaryCriteoUtils

    d = tmp_path_factory.mktemp("torchrec")
    lines = criteo_sample.read_bytes().splitlines(keepends=True)
    bounds = np.cumsum((0, *DAY_ROWS))
    for day in range(len(DAY_ROWS)):
        src = d / f"day_{day}.tsv"
        src.write_bytes(b"".join(lines[bounds[day] : bounds[day + 1]]))
        with warnings.catch_warnings():  # TorchRec's writer maps a lambda over its datapipe
            warnings.filterwarnings("ignore", message="Local function is not supported by pickle")
            BinaryCriteoUtils.tsv_to_npys(str(src), *(str(_day(d, day, k)) for k in KINDS))
        src.unlink()
    return d


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = data_main(["import-torchrec", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_output_holds_the_arrays_read_directly(torchrec_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = _run(capsys, str(torchrec_dir), "--out", str(tmp_path / "out"), "--max-ind-range", "777", "--json")
    assert code == 0
    summary = json.loads(out)
    half = math.ceil(DAY_ROWS[-1] / 2)
    assert summary["rows"] == {"train": 140, "val": half, "test": DAY_ROWS[-1] - half}
    assert summary["days"] == 3 and summary["table_sizes"] == [777] * 26 and not summary["up_to_date"]
    days = [{k: np.load(_day(torchrec_dir, d, k)) for k in KINDS} for d in range(3)]
    expected = {"train": {k: np.concatenate([days[0][k], days[1][k]]) for k in KINDS},
                "val": {k: days[2][k][:half] for k in KINDS}, "test": {k: days[2][k][half:] for k in KINDS}}
    o = tmp_path / "out"
    for split, want in expected.items():
        np.testing.assert_array_equal(np.load(layout.dense_file(o, split)), want["dense"])
        labels = np.load(layout.labels_file(o, split))
        np.testing.assert_array_equal(labels, want["labels"].reshape(-1).astype(np.float32))
        for c, f in enumerate(NAMES):
            ids = np.load(layout.ids_file(o, split, f))
            assert ids.dtype == np.int32
            np.testing.assert_array_equal(ids, want["sparse"][:, c] % 777)
    assert layout.stored_schema(o) == criteo_schema(buckets=777)
    ds = ColumnarDataset(o, shuffle=False)
    batch = next(ds.batches("train", 20, 1, 2))
    assert batch.sparse_features["cat_5"].values().tolist() == (days[0]["sparse"][10:20, 5] % 777).tolist()
    assert batch.dense_features.tolist() == days[0]["dense"][10:20].tolist()


def _small_dir(directory: Path, rows: tuple[int, ...] = (6, 5, 3), sparse_dtype: type = np.int32) -> Path:
    """Days of ids already in range (as the old `--vocab` preprocessing, or TorchRec's contiguous ids, wrote)."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    for d, n in enumerate(rows):
        np.save(_day(directory, d, "dense"), rng.normal(size=(n, 13)).astype(np.float32))
        np.save(_day(directory, d, "sparse"), rng.integers(0, 9, (n, 26)).astype(sparse_dtype))
        np.save(_day(directory, d, "labels"), rng.integers(0, 2, (n, 1)).astype(np.int32))
    return directory


def test_ids_in_range_keep_their_values_and_size_the_tables(tmp_path: Path) -> None:
    src = _small_dir(tmp_path / "src", sparse_dtype=np.int64)
    r = import_torchrec.import_torchrec(ImportOptions(src, tmp_path / "out", progress=False))
    sparse = np.concatenate([np.load(_day(src, d, "sparse")) for d in range(3)])
    assert r.table_sizes == [int(v) + 1 for v in sparse.max(axis=0)]
    assert layout.stored_schema(tmp_path / "out") == criteo_schema(table_sizes=r.table_sizes)
    np.testing.assert_array_equal(np.load(layout.ids_file(tmp_path / "out", "test", "cat_7")), sparse[-1:, 7])


def test_raw_ids_without_a_range_are_refused(torchrec_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, str(torchrec_dir), "--out", str(tmp_path / "out"))
    assert code == 2 and "raw values, not table rows; give --max-ind-range N" in err, err
    assert "Traceback" not in err and not (tmp_path / "out" / layout.META).exists()
    with pytest.raises(SystemExit) as e:
        data_main(["import-torchrec", str(torchrec_dir), "--out", str(tmp_path / "out"), "--max-ind-range", "0"])
    assert e.value.code == 2 and "'0' is not a positive integer" in capsys.readouterr().err
    code, _, err = _run(capsys, str(torchrec_dir), "--out", str(torchrec_dir), "--max-ind-range", "9")
    assert code == 2 and "is the input directory" in err


def test_a_source_inside_the_outputs_folders_is_refused_and_kept(tmp_path: Path, capsys) -> None:
    """--overwrite clears the output's splits: a source among them would be lost (its arrays mapped, the import
    "succeeding" on them). It is refused before anything is touched."""
    out = tmp_path / "out"
    assert _run(capsys, str(_small_dir(tmp_path / "src")), "--out", str(out), "--max-ind-range", "5")[0] == 0
    src = _small_dir(out / "test" / "days")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = _run(capsys, str(src), "--out", str(out), "--max-ind-range", "5", "--overwrite")
    assert code == 2 and f"lies in the folder test/ of --out {out}, which this job writes" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_rerun_reports_done_refuses_another_job_and_overwrites(tmp_path: Path, capsys) -> None:
    src, out = _small_dir(tmp_path / "src"), tmp_path / "out"
    code, text, _ = _run(capsys, str(src), "--out", str(out), "--max-ind-range", "5")
    assert code == 0 and "imported 3 days, 14 rows" in text and "train 11  val 2  test 1" in text, text
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, text, _ = _run(capsys, str(src), "--out", str(out), "--max-ind-range", "5")
    assert code == 0 and "complete for this job" in text
    code, _, err = _run(capsys, str(src), "--out", str(out), "--max-ind-range", "7")
    assert code == 2 and "holds the output of another job (options max_ind_range 5 -> 7)" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _run(capsys, str(src), "--out", str(out), "--max-ind-range", "7", "--overwrite")[0] == 0
    assert layout.stored_schema(out) == criteo_schema(buckets=7)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = _run(capsys, str(src), "--out", str(tmp_path / "other"))
    assert code == 2 and "is not empty and was not written by dlrm-data" in err
    with DirLock(out, "another writer"):
        with pytest.raises(DirectoryBusyError, match="another writer"):
            import_torchrec.import_torchrec(ImportOptions(src, out, overwrite=True, progress=False))


def test_a_full_disk_is_named_and_leaves_no_split(tmp_path: Path, monkeypatch) -> None:
    src, out = _small_dir(tmp_path / "src"), tmp_path / "out"
    real = NpyWriter._write

    class Full:  # the device fills up after every header (3 splits x 28 files) and a few blocks
        def __init__(self, file) -> None:
            self.file = file

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.file.close()

    def write(self, data) -> None:
        write.calls += 1
        if write.calls == 3 * 30:
            self.file = Full(self.file)
        real(self, data)
    write.calls = 0
    monkeypatch.setattr(NpyWriter, "_write", write)
    with pytest.raises(DiskFullError, match=r"no space left on .* writing .*\.partial"):
        import_torchrec.import_torchrec(ImportOptions(src, out, progress=False))
    assert not (out / layout.META).exists()
    assert not [p for p in out.iterdir() if p.is_dir()]
    monkeypatch.undo()  # space again: the same job, rerun, completes the directory
    r = import_torchrec.import_torchrec(ImportOptions(src, out, progress=False))
    assert r.rows == {"train": 11, "val": 2, "test": 1} and not r.up_to_date
    assert ColumnarDataset(out).split("train").rows == 11


def _set(kind: str, day: int, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def damage(src: Path) -> None:
        np.save(_day(src, day, kind), change(np.load(_day(src, day, kind))))
    return damage


def _cell(a: np.ndarray, row: int, col: int, value: float) -> np.ndarray:
    a = a.copy()
    a[row, col] = value
    return a


@pytest.mark.parametrize("damage, words", [
    (_set("dense", 1, lambda a: _cell(a, 2, 4, np.nan)), ["day_1_dense.npy: row 2, dense feature int_4: nan"]),
    (_set("labels", 2, lambda a: _cell(a, 1, 0, 2)), ["day_2_labels.npy: row 1: label 2 is not 0 or 1"]),
    (_set("sparse", 0, lambda a: _cell(a, 3, 6, -4)), ["day_0_sparse.npy: row 3, feature cat_6", "-4 is negative"]),
    (_set("sparse", 0, lambda a: a.astype(np.float64)), ["day_0_sparse.npy: dtype float64, expected int32 or int64"]),
    (_set("dense", 2, lambda a: a[:, :12]), ["day_2_dense.npy: shape (3, 12), expected (3, 13)"]),
    (_set("sparse", 1, lambda a: a[:4]), ["day_1_sparse.npy: shape (4, 26), expected (5, 26)"]),
    (lambda src: _day(src, 1, "labels").write_bytes(b"\x93NUMPY"), ["day_1_labels.npy: not a readable .npy file"]),
    (lambda src: _day(src, 2, "sparse").unlink(), ["day 2 is incomplete (day_2_sparse.npy missing)"]),
    (lambda src: [_day(src, 1, k).unlink() for k in KINDS], ["day 1 is missing (days [0, 2])"]),
    (lambda src: [_day(src, d, k).unlink() for d in (1, 2) for k in KINDS], ["1 day(s)", "at least two"]),
    (lambda src: [_set(k, 2, lambda a: a[:1])(src) for k in KINDS],  # the last day needs a val and a test row
     ["split(s) ['test'] would be empty (train 11, val 1, test 0 rows"]),
    (lambda src: (src / "day_01_dense.npy").write_bytes(_day(src, 1, "dense").read_bytes()),  # one day, two files
     ["day_01_dense.npy and day_1_dense.npy are both day 1's dense file: keep one"]),
    (lambda src: (src / "job.json").write_text('{"inputs": [], "complete": false}'),  # an old preprocessing, killed
     ["job record (job.json) says the preprocessing that wrote it did not finish"]),
])
def test_bad_input_is_named(tmp_path: Path, capsys, damage, words: list[str]) -> None:
    src = _small_dir(tmp_path / "src")
    damage(src)
    code, _, err = _run(capsys, str(src), "--out", str(tmp_path / "out"))
    assert code == 2 and err.startswith("dlrm-data import-torchrec: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "out" / layout.META).exists()
