"""Criteo logs through the one preprocessing driver (``--schema criteo...``, input criteo_tsv).

What the old Criteo path checked, on the columnar path: malformed lines counted and named by
file:line (``--strict`` stops at the first), a rerun after a failed write completes it, another
job over a completed directory refused by name, Terabyte-style day files (plain and gzip, one
day per file), pseudo-day bounds falling on chunk ends, stats and planner tables, and
TorchRec's own ``BinaryCriteoUtils`` reading the same lines (ids and labels equal).
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.cli.data_main import main as data_main
from dlrm_dist.data.columnar import criteo_tsv, layout, shared_blocks
from dlrm_dist.data.columnar.preprocess import Options, PreprocessError, preprocess
from dlrm_dist.features.builtin import criteo_schema, criteo_sparse_names
from tests.data import reference

NAMES = criteo_sparse_names()


def _pre(inputs: list[Path], out: Path, **kw) -> object:
    strict, overwrite = kw.pop("strict", False), kw.pop("overwrite", False)
    return preprocess(Options(criteo_schema(**kw), inputs, out, strict=strict, overwrite=overwrite,
                              progress=False, workers=2))


def _ids(out: Path, split: str) -> np.ndarray:
    meta, schema, splits = layout.check_directory(out)
    return np.stack([np.asarray(splits[split].ids[f]) for f in NAMES], axis=1)


def _schema_file(tmp_path: Path, **kw) -> str:
    path = tmp_path / "criteo.json"
    path.write_text(json.dumps(criteo_schema(**kw).to_dict()))
    return str(path)


def test_bad_lines_are_counted_reported_by_file_and_line_and_skipped(criteo_sample, tmp_path, capsys) -> None:
    lines = criteo_sample.read_bytes().split(b"\n")
    lines[3] = b"1\t2\t3"
    f = lines[150].split(b"\t")
    f[20] = b"zzzzzzzz"
    lines[150] = b"\t".join(f)
    bad = tmp_path / "train.txt"
    bad.write_bytes(b"\n".join(lines))
    code = data_main(["preprocess", "--schema", _schema_file(tmp_path, days=7, buckets=100), "--input", str(bad),
                      "--out", str(tmp_path / "o"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "rows read 200  skipped 2" in out and "train 169  val 15  test 14" in out
    assert f"{bad}:4: 3 fields instead of 40" in out and f"{bad}:151: C7 is not 8 hex digits" in out
    assert layout.read_meta(tmp_path / "o")["skipped"] == 2
    with pytest.raises(PreprocessError, match=r"train.txt:4: 3 fields instead of 40 \(--strict"):
        _pre([bad], tmp_path / "strict", days=7, buckets=100, strict=True)


def test_a_stopped_read_leaves_no_shared_memory(criteo_sample, tmp_path, monkeypatch) -> None:
    """Blocks the workers made after --strict stopped the read were left in /dev/shm (until reboot)."""
    bad = tmp_path / "train.txt"
    bad.write_bytes(b"1\t2\t3\n" + criteo_sample.read_bytes() * 5)
    monkeypatch.setattr(criteo_tsv, "CHUNK_BYTES", 2048)  # many chunks in flight when the first one stops it
    before = set(shared_blocks.SHM_DIR.iterdir())
    with pytest.raises(PreprocessError, match="--strict"):
        _pre([bad], tmp_path / "strict", days=7, buckets=100, strict=True)
    new = {p.name for p in set(shared_blocks.SHM_DIR.iterdir()) - before}
    assert not {n for n in new if n.startswith(("psm_", f"dlrm_dist_{os.getpid()}_"))}, new


def test_an_encoder_error_in_a_worker_names_the_line(criteo_sample, tmp_path) -> None:
    """Workers encode their chunks without knowing their line numbers: the main process says where."""
    schema = criteo_schema(days=7, buckets=10)
    sparse = tuple(s if s.name != "cat_3" else s.__class__(s.name, s.column, "identity", s.table, buckets=10)
                   for s in schema.sparse)
    schema = schema.__class__(schema.dense, sparse, schema.label, schema.split, schema.input, schema.name)
    first_big = 1 + next(i for i, line in enumerate(criteo_sample.read_text().splitlines())
                         if int(line.split("\t")[17] or "0", 16) >= 10)
    with pytest.raises(PreprocessError, match=rf"criteo_sample_200.tsv line {first_big}: identity feature 'cat_3' "
                                              r"has id \d+ outside \[0, 10\)"):
        preprocess(Options(schema, [criteo_sample], tmp_path / "o", progress=False, workers=2))
    assert not list((tmp_path / "o").glob("*.partial"))


def test_a_rerun_after_a_failed_write_completes_it_and_other_jobs_are_refused(criteo_sample, tmp_path,
                                                                              monkeypatch) -> None:
    out = tmp_path / "out"
    reference_dir = tmp_path / "ref"
    _pre([criteo_sample], reference_dir, days=7, buckets=1000)
    from dlrm_dist.data.columnar import job

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process was stopped halfway through the write pass
    monkeypatch.setattr(job, "_halve_holdout", killed)
    with pytest.raises(KeyboardInterrupt):
        _pre([criteo_sample], out, days=7, buckets=1000)
    assert not (out / layout.META).exists() and not list(out.glob("*.partial"))
    monkeypatch.undo()
    r = _pre([criteo_sample], out, days=7, buckets=1000)
    assert r.rows == {"train": 171, "val": 15, "test": 14}
    for split in ("train", "val", "test"):
        assert np.array_equal(_ids(out, split), _ids(reference_dir, split))
    assert _pre([criteo_sample], out, days=7, buckets=1000).up_to_date  # the same job: complete, nothing redone
    with pytest.raises(PreprocessError, match=r"another job \(schema sparse\) that completed.*--overwrite"):
        _pre([criteo_sample], out, days=7, buckets=50)
    r = _pre([criteo_sample], out, days=7, buckets=50, overwrite=True)
    assert r.rows_read == 200 and int(_ids(out, "train").max()) < 50


def test_terabyte_day_files_gzip_and_plain_one_day_per_file(criteo_sample, tmp_path) -> None:
    lines = criteo_sample.read_bytes().splitlines(keepends=True)
    files = []
    for d in range(3):
        p = tmp_path / (f"day_{d}" if d != 1 else "day_1.gz")
        data = b"".join(lines[d * 60 : (d + 1) * 60 + (20 if d == 2 else 0)])
        p.write_bytes(gzip.compress(data) if d == 1 else data)
        files.append(p)
    r = _pre(files, tmp_path / "o", buckets=500)
    assert r.rows == {"train": 120, "val": 40, "test": 40}
    expected = [[int(t or "0", 16) % 500 for t in line.decode().rstrip("\n").split("\t")[14:]] for line in lines]
    assert _ids(tmp_path / "o", "train").tolist() == expected[:120]
    assert _ids(tmp_path / "o", "test").tolist() == expected[160:]
    with pytest.raises(PreprocessError, match="at least two files"):
        _pre(files[:1], tmp_path / "one", buckets=500)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(b"".join(lines))[:-30])
    with pytest.raises(PreprocessError, match="cut.gz: not a complete gzip file"):
        _pre([files[0], tmp_path / "cut.gz"], tmp_path / "cut", buckets=500)


def test_day_bounds_on_chunk_ends_with_all_malformed_chunks(criteo_sample, tmp_path, monkeypatch) -> None:
    lines = criteo_sample.read_text().splitlines(keepends=True)[:70]
    src = tmp_path / "lines.tsv"
    src.write_text("".join(lines[:40] + ["not a criteo line\n"] * 10 + lines[40:]))
    # One line per chunk: every day bound falls on a chunk end, and ten chunks hold only malformed lines.
    monkeypatch.setattr(criteo_tsv, "CHUNK_BYTES", 1)
    r = _pre([src], tmp_path / "out", days=7, buckets=100)
    expected = reference.criteo(src.read_text().splitlines(), 7, buckets=100)
    assert r.skipped == 10 and r.rows == {s: len(expected[s][2]) for s in expected}
    assert _ids(tmp_path / "out", "val").tolist() == expected["val"][1]


def test_fewer_lines_than_days_is_named(criteo_sample, tmp_path) -> None:
    src = tmp_path / "five.tsv"
    src.write_text("".join(criteo_sample.read_text().splitlines(keepends=True)[:5]))
    with pytest.raises(PreprocessError, match=r"split\(s\) \['test'\] would be empty \(train 4, val 1, test 0"):
        _pre([src], tmp_path / "out", days=7, buckets=100)


def test_stats_and_planner_tables(criteo_sample, tmp_path, capsys) -> None:
    _pre([criteo_sample], tmp_path, days=7, buckets=1000)
    tables = tmp_path / "tables.json"
    assert data_main(["stats", str(tmp_path), "--tables-out", str(tables), "--dim", "16", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    expected = reference.criteo(criteo_sample.read_text().splitlines(), 7, buckets=1000)
    assert s["splits"]["train"]["rows"] == 171
    assert s["splits"]["val"]["label_rate"] == pytest.approx(np.mean(expected["val"][2]))
    train = np.array(expected["train"][1])
    assert [f["cardinality"] for f in s["features"]] == [len(np.unique(train[:, j])) for j in range(26)]
    t = json.loads(tables.read_text())["tables"]
    assert len(t) == 26 and t[0] == {"name": "t_cat_0", "rows": 1000, "dim": 16, "pooling_factor": 1.0,
                                     "feature_names": ["cat_0"]}


def test_torchrec_reads_the_same_ids_and_labels(criteo_sample, tmp_path) -> None:
    """TorchRec's BinaryCriteoUtils on the same day files: its raw ids modulo buckets are ours (MLPerf's
    hashing), its labels are ours. (Its dense values are log(x - min + 2), not DLRM's log(1 + max(x, 0)).)"""
    from torchrec.datasets.criteo import BinaryCriteoUtils

    lines = criteo_sample.read_bytes().splitlines(keepends=True)
    files = []
    for d in range(2):
        files.append(tmp_path / f"day_{d}.tsv")
        files[-1].write_bytes(b"".join(lines[d * 100 : (d + 1) * 100]))
    with warnings.catch_warnings():  # TorchRec's writer maps a lambda over its datapipe
        warnings.filterwarnings("ignore", message="Local function is not supported by pickle")
        for d, f in enumerate(files):
            BinaryCriteoUtils.tsv_to_npys(str(f), *(str(tmp_path / f"tr_{d}_{k}.npy") for k in ("d", "s", "l")))
    _pre(files, tmp_path / "o", buckets=777)
    theirs = [np.load(tmp_path / f"tr_{d}_s.npy") % 777 for d in range(2)]
    assert np.array_equal(_ids(tmp_path / "o", "train"), theirs[0])
    assert np.array_equal(np.concatenate([_ids(tmp_path / "o", "val"), _ids(tmp_path / "o", "test")]), theirs[1])
    meta, schema, splits = layout.check_directory(tmp_path / "o")
    assert np.array_equal(splits["train"].labels, np.load(tmp_path / "tr_0_l.npy").reshape(-1))


def test_bad_arguments(criteo_sample, tmp_path, capsys) -> None:
    with pytest.raises(PreprocessError, match="not found"):
        _pre([tmp_path / "nope.txt"], tmp_path / "o", days=7)
    assert data_main(["preprocess", "--schema", _schema_file(tmp_path, days=7), "--input", str(criteo_sample),
                      "--out", str(tmp_path / "w"), "--workers", "0", "--no-progress"]) == 2
    assert "--workers 0: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --dataset kaggle is gone: the schema says what runs
        data_main(["preprocess", "--dataset", "kaggle", "--input", str(criteo_sample), "--out", str(tmp_path / "x")])
