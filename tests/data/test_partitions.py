"""Datasets that grow by day: the first partition fits the schema, appends reuse it, each partition
has its own job record, a partition is published last, and training reads the partitions in
time order (PartitionedDataset). No process group: CLIs in-process, datasets read directly."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.cli import data_main
from dlrm_dist.config.loader import load_config
from dlrm_dist.data import HasPartitions, PartitionSpan
from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.dataset import ColumnarDataset, PartitionedDataset
from dlrm_dist.data.columnar.partitions import Options, append, for_partitions, new_dataset
from dlrm_dist.data.columnar.stats import compute_stats
from dlrm_dist.data.errors import DataError, PreprocessError
from dlrm_dist.errors import DlrmError
from dlrm_dist.fileio import DirectoryBusyError, DirLock
from tests.data import days
from tests.data.jobs import write_csv

ROWS = {1: 40, 2: 37, 3: 45}


@pytest.fixture(scope="module")
def grown_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset of days 1..3 (day 1 fitted, 2 and 3 appended), built once per module."""
    where = tmp_path_factory.mktemp("days")
    for day, n in ROWS.items():
        path = days.write_day(where, day, n)
        if day == 1:
            new_dataset(Options(days.schema(), [path], where / "D", partition=1, progress=False))
        else:
            append(Options(None, [path], where / "D", append=True, progress=False))
    return where / "D"


@pytest.fixture
def grown(grown_once: Path, tmp_path: Path) -> Path:
    """A copy of the dataset of days 1..3 in ``tmp_path/D``, its day files linked into ``tmp_path``
    (a link resolves to the file the job records name)."""
    shutil.copytree(grown_once, tmp_path / "D")
    for day in ROWS:
        (tmp_path / f"day{day}.csv").symlink_to(grown_once.parent / f"day{day}.csv")
    return tmp_path / "D"


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = data_main.main(["preprocess", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _arrays(out: Path, number: int) -> layout.SplitArrays:
    meta, schema, splits = layout.check_directory(out)
    return splits[layout.partition_split(number)]


# -- append ---------------------------------------------------------------------------------------
def test_append_encodes_with_the_first_fit(grown: Path, tmp_path: Path) -> None:
    meta = layout.read_meta(grown)
    assert sorted(layout.partitions_of(meta)) == [1, 2, 3] and meta["fitted_on"] == 1 and meta["splits"] == {}
    assert {n: e["rows"] for n, e in layout.partitions_of(meta).items()} == ROWS
    day1, day2 = days.day_rows(1, ROWS[1]), days.day_rows(2, ROWS[2])
    # the vocabulary is day 1's values only (min_count 1: every one), most frequent first
    vocab = layout.read_vocab(grown, "t_item")
    assert set(vocab) == {x["item"] for x in day1}
    ids = np.asarray(_arrays(grown, 2).ids["item"])
    for x, i in zip(day2, ids):
        assert i == (2 + vocab.index(x["item"]) if x["item"] in vocab else i) and (x["item"] in vocab) == (i >= 2)
    assert any(x["item"] not in vocab for x in day2)  # (the day brings values the fit never saw: OOV rows)
    # dense statistics stay the first fit's: day 2 is standardized by day 1's mean and std
    p1 = np.array([x["price"] for x in day1])
    dense2 = np.asarray(_arrays(grown, 2).dense)[:, 0]
    np.testing.assert_allclose(dense2, (np.array([x["price"] for x in day2]) - p1.mean()) / p1.std(), rtol=1e-5, atol=1e-6)
    assert json.loads((grown / layout.FIT).read_text())["scales"]["price"] == pytest.approx([p1.mean(), p1.std()])
    # identity ids are the values; a managed feature's raw id of a value is the same on every day
    assert list(np.asarray(_arrays(grown, 2).ids["user"])) == [x["user"] for x in day2]
    raw = {}
    for day in (1, 2, 3):
        for x, m in zip(days.day_rows(day, ROWS[day]), np.asarray(_arrays(grown, day).ids["user_m"])):
            assert raw.setdefault(x["user"], int(m)) == int(m)


def test_the_first_partition_is_every_row_fitted_on_them(tmp_path: Path) -> None:
    path = days.write_day(tmp_path, 1, 50)
    r = new_dataset(Options(days.schema(), [path], tmp_path / "D", partition=7, progress=False))
    assert (r.partition, r.rows, r.fitted, r.partitions) == (7, 50, True, [7])
    labels = np.asarray(_arrays(tmp_path / "D", 7).labels)
    assert list(labels) == [x["clicked"] for x in days.day_rows(1, 50)]  # every row, in order: no split
    # the next append numbers itself after the largest partition
    r2 = append(Options(None, [days.write_day(tmp_path, 2)], tmp_path / "D", append=True, progress=False))
    assert (r2.partition, r2.fitted, r2.partitions) == (8, False, [7, 8])


def test_rerun_of_an_append_is_a_no_op_that_says_so(grown: Path, tmp_path: Path, capsys) -> None:
    before = days.snapshot(grown)
    code, out, _ = _cli(capsys, "--append", "--out", str(grown), "--input", str(tmp_path / "day3.csv"), "--partition", "3")
    assert code == 0 and "partition 3 is complete from this input: nothing to do" in out
    # the same command as the one that appended day 3 (no --partition: "the largest + 1" then, 4 now)
    code, out, _ = _cli(capsys, "--append", "--out", str(grown), "--input", str(tmp_path / "day3.csv"))
    assert code == 0 and "partition 3 is complete from this input: nothing to do" in out
    (tmp_path / "s.json").write_text(json.dumps(days.schema_dict()))  # the first partition's job, again
    code, out, _ = _cli(capsys, "--schema", str(tmp_path / "s.json"), "--input", str(tmp_path / "day1.csv"),
                        "--out", str(grown), "--partition", "1")
    assert code == 0 and "partition 1 is complete from this input: nothing to do" in out
    assert days.snapshot(grown) == before


def test_another_file_for_a_partition_is_refused_by_name(grown: Path, tmp_path: Path, capsys) -> None:
    before = days.snapshot(grown)
    other = days.write_day(tmp_path, 4, name="day4.csv")
    code, _, err = _cli(capsys, "--append", "--out", str(grown), "--input", str(other), "--partition", "2")
    assert code == 2 and "partition 2 of" in err and "day2.csv" in err and "day4.csv" in err
    # the same file again as another partition would train on its rows twice
    code, _, err = _cli(capsys, "--append", "--out", str(grown), "--input", str(tmp_path / "day2.csv"))
    assert code == 2 and "day2.csv is partition 2's input already" in err
    assert days.snapshot(grown) == before
    # a copy of day 2 under another name (cp -p keeps its size and mtime): the same bytes, refused
    copy = tmp_path / "copy_of_day2.csv"
    shutil.copy2(tmp_path / "day2.csv", copy)
    code, _, err = _cli(capsys, "--append", "--out", str(grown), "--input", str(copy))
    assert code == 2 and "copy_of_day2.csv holds the same bytes as" in err and "partition 2's input" in err, err
    assert days.snapshot(grown) == before
    # a file changed since (another size) for its own partition is refused too
    assert _cli(capsys, "--append", "--out", str(grown), "--input", str(other))[0] == 0
    appended = days.snapshot(grown)
    days.write_day(tmp_path, 4, 44, name="day4.csv")
    code, _, err = _cli(capsys, "--append", "--out", str(grown), "--input", str(other), "--partition", "4")
    assert code == 2 and "partition 4 of" in err and "changed since" in err and "day4.csv" in err
    assert days.snapshot(grown) == appended


def test_append_holds_the_directory_lock(grown: Path, tmp_path: Path, monkeypatch) -> None:
    day4 = days.write_day(tmp_path, 4)
    with DirLock(grown, "another writer"):
        with pytest.raises(DirectoryBusyError, match="another writer"):
            append(Options(None, [day4], grown, append=True, progress=False))
    held = []
    publish = layout.publish_partition

    def publish_checking_the_lock(*args, **kwargs):  # the lock is still held when meta.json is rewritten
        with pytest.raises(DirectoryBusyError):
            DirLock(grown, "a second writer").acquire()
        held.append(True)
        return publish(*args, **kwargs)

    monkeypatch.setattr(layout, "publish_partition", publish_checking_the_lock)
    assert append(Options(None, [day4], grown, append=True, progress=False)).partition == 4 and held


def test_a_half_written_partition_is_never_seen(grown: Path, tmp_path: Path, monkeypatch) -> None:
    day4 = days.write_day(tmp_path, 4, 50)
    meta_before = (grown / layout.META).read_bytes()
    calls = []
    real_append = layout.SplitWriter.append

    def killed_after_one_block(self, *args):  # a kill (KeyboardInterrupt) midway through the rows
        calls.append(1)
        real_append(self, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(layout.SplitWriter, "append", killed_after_one_block)
    with pytest.raises(KeyboardInterrupt):
        append(Options(None, [day4], grown, append=True, progress=False))
    monkeypatch.undo()
    assert calls and (grown / layout.META).read_bytes() == meta_before
    assert not (grown / "partition_4").exists() and not (grown / "partition_4.partial").exists()
    assert json.loads((grown / layout.partition_job(4)).read_text())["complete"] is False
    with pytest.raises(DataError, match=r"eval_partition=4: no such partition .* it holds partitions 1-3"):
        PartitionedDataset(grown, [1, 2, 3], eval_partition=4)

    # killed after the folder's rename, before meta.json: still not there for a reader
    def killed_before_publishing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(layout, "publish_partition", killed_before_publishing)
    with pytest.raises(KeyboardInterrupt):
        append(Options(None, [day4], grown, append=True, progress=False))
    monkeypatch.undo()
    assert (grown / "partition_4").is_dir() and (grown / layout.META).read_bytes() == meta_before
    assert sorted(layout.partitions_of(layout.read_meta(grown))) == [1, 2, 3]
    layout.check_directory(grown)
    # the rerun starts the append over and publishes it
    r = append(Options(None, [day4], grown, append=True, progress=False))
    assert (r.partition, r.rows, r.up_to_date) == (4, 50, False)
    assert list(np.asarray(_arrays(grown, 4).labels)) == [x["clicked"] for x in days.day_rows(4, 50)]
    assert json.loads((grown / layout.partition_job(4)).read_text())["complete"] is True
    # what a killed append of another partition left is removed by the next append, whichever it is
    monkeypatch.setattr(layout, "publish_partition", killed_before_publishing)
    with pytest.raises(KeyboardInterrupt):
        append(Options(None, [days.write_day(tmp_path, 6)], grown, partition=6, append=True, progress=False))
    monkeypatch.undo()
    (grown / "partition_7.partial").mkdir()
    assert (grown / "partition_6").is_dir() and (grown / layout.partition_job(6)).is_file()
    assert append(Options(None, [days.write_day(tmp_path, 5)], grown, append=True, progress=False)).partition == 5
    assert sorted(p.name for p in grown.glob("partition_*")) == [
        f"partition_{n}{suffix}" for n in (1, 2, 3, 4, 5) for suffix in ("", ".job.json")]


def test_refused_input_leaves_the_directory_as_it_was(grown: Path, tmp_path: Path) -> None:
    before = days.snapshot(grown)
    header_only = tmp_path / "empty.csv"
    header_only.write_text(days.HEADER + "\n")
    with pytest.raises(DlrmError, match="empty.csv: it has no data rows"):
        append(Options(None, [header_only], grown, append=True, progress=False))
    malformed = tmp_path / "malformed.csv"
    malformed.write_text(days.HEADER + "\n1,it1\n2,it2\n")
    with pytest.raises(DlrmError, match=r"malformed.csv: all of its 2 data line\(s\) are malformed"):
        append(Options(None, [malformed], grown, append=True, progress=False))
    bad = tmp_path / "bad.csv"
    bad.write_text(days.HEADER + "\n1,it1,2.0,t1,1\n2,it2\n")
    with pytest.raises(DlrmError, match="bad.csv"):
        append(Options(None, [bad], grown, append=True, strict=True, progress=False))
    assert days.snapshot(grown) == before


def test_an_interrupted_first_partition_resumes_with_its_fit(tmp_path: Path, monkeypatch) -> None:
    day1, out = days.write_day(tmp_path, 1, 30), tmp_path / "D"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(layout, "publish_partition", killed)
    with pytest.raises(KeyboardInterrupt):
        new_dataset(Options(days.schema(), [day1], out, partition=1, progress=False))
    monkeypatch.undo()
    assert (out / layout.FIT).is_file() and not (out / layout.META).exists()
    fitted = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in [out / layout.FIT, *(out / "vocab").iterdir()]}
    r = new_dataset(Options(days.schema(), [day1], out, partition=1, progress=False))
    assert (r.rows, r.up_to_date) == (30, False)
    # the rerun encodes with the fit.json and vocabularies of the killed run instead of refitting
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in [out / layout.FIT, *(out / "vocab").iterdir()]} \
        == fitted
    assert json.loads((out / layout.JOB).read_text())["complete"] is True
    # another first partition over the incomplete directory of a failed job starts over (job.json's rule)
    shutil.rmtree(out)
    monkeypatch.setattr(layout, "publish_partition", killed)
    with pytest.raises(KeyboardInterrupt):
        new_dataset(Options(days.schema(), [day1], out, partition=1, progress=False))
    monkeypatch.undo()
    day2 = days.write_day(tmp_path, 2, 25)
    r = new_dataset(Options(days.schema(), [day2], out, partition=2, progress=False))
    assert (r.partition, r.rows, r.partitions) == (2, 25, [2]) and not (out / "partition_1").exists()
    assert set(layout.read_vocab(out, "t_item")) == {x["item"] for x in days.day_rows(2, 25)}


def test_a_day_is_read_once_and_encoded_as_preprocess_encodes_it(tmp_path: Path, monkeypatch) -> None:
    """A partition goes through preprocess's one dispatcher: a CSV day is read once (staging's one
    read: fit and write from the staged columns, not a fit pass and a write pass over the file),
    and its arrays are those ``dlrm-data preprocess`` writes for the same rows as its train split."""
    from dlrm_dist.data.columnar import read
    from dlrm_dist.data.columnar.preprocess import preprocess

    day1, reads, real = days.write_day(tmp_path, 1, 30), [], read.read_file
    monkeypatch.setattr(read, "read_file", lambda path, *a, **k: reads.append(Path(path).name) or real(path, *a, **k))
    new_dataset(Options(days.schema(), [day1], tmp_path / "D", partition=1, progress=False))
    day2 = days.write_day(tmp_path, 2, 25)
    append(Options(None, [day2], tmp_path / "D", append=True, progress=False))
    assert reads == ["day1.csv", "day2.csv"]
    preprocess(Options(for_partitions(days.schema()), [day1], tmp_path / "P", progress=False))  # (all rows: train)
    got = layout.check_directory(tmp_path / "D")[2]["partition_1"]
    want = layout.check_directory(tmp_path / "P")[2]["train"]
    assert np.array_equal(got.dense, want.dense) and np.array_equal(got.labels, want.labels)
    assert all(np.array_equal(got.ids[f], want.ids[f]) for f in want.ids)


def test_append_refusals_name_what_is_wrong(grown: Path, tmp_path: Path, capsys) -> None:
    day4 = str(days.write_day(tmp_path, 4))
    (tmp_path / "s.json").write_text(json.dumps(days.schema_dict()))
    other = days.schema_dict()
    other["sparse"][0]["buckets"] = 999
    (tmp_path / "other.json").write_text(json.dumps(other))
    killed = grown / "partition_5.partial"
    killed.mkdir()
    cases = [
        (["--schema", str(tmp_path / "s.json"), "--input", day4, "--out", str(grown), "--partition", "4"],
         "is a complete dataset of partitions 1-3 (fitted on partition 1), started by another job"),
        (["--append", "--schema", str(tmp_path / "other.json"), "--input", day4, "--out", str(grown)],
         "the schema differs from the one"),
        (["--append", "--out", str(tmp_path / "nowhere"), "--input", day4], "holds no complete dataset to append to"),
        (["--append", "--refit", "--out", str(grown), "--input", day4], "choose one"),
        (["--append", "--overwrite", "--out", str(grown), "--input", day4], "does not apply to --append"),
        (["--refit", "--schema", str(grown), "--out", str(grown), "--input", day4], "the directory the schema comes from"),
        (["--input", day4, "--out", str(tmp_path / "x")], "--schema is required"),
        (["--append", "--out", str(grown), "--input", str(tmp_path / "missing.csv")], "not found"),
        (["--append", "--out", str(grown), "--input", day4, day4], "is given twice"),
        (["--append", "--out", str(grown), "--input", str(days.write_day(killed, 4))],
         "day4.csv lies in the folder partition_5.partial/ of --out"),  # (a killed append's: cleared)
    ]
    for argv, message in cases:
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and message in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere").exists() and (killed / "day4.csv").is_file()


def test_append_to_a_directory_of_splits_is_refused(tmp_path: Path, capsys) -> None:
    from tests.data.jobs import JOBS

    (tmp_path / "s.json").write_text(json.dumps(JOBS["A"]))
    data = write_csv(tmp_path, 30)
    assert data_main.main(["preprocess", "--schema", str(tmp_path / "s.json"), "--input", str(data), "--out",
                           str(tmp_path / "S"), "--no-progress"]) == 0
    code, _, err = _cli(capsys, "--append", "--out", str(tmp_path / "S"), "--input", str(data))
    assert code == 2 and "train/val/test splits, not day partitions" in err
    with pytest.raises(DataError, match="no day partitions"):
        PartitionedDataset(tmp_path / "S", [1])


def test_refit_makes_a_new_dataset(grown: Path, tmp_path: Path, capsys) -> None:
    day4 = days.write_day(tmp_path, 4)
    code, _, err = _cli(capsys, "--refit", "--schema", str(grown), "--input", str(day4), "--out", str(grown.parent / "R"))
    assert code == 0, err
    meta = layout.read_meta(grown.parent / "R")
    assert sorted(layout.partitions_of(meta)) == [4] and meta["fitted_on"] == 4  # the old directory's next number
    assert set(layout.read_vocab(grown.parent / "R", "t_item")) == {x["item"] for x in days.day_rows(4, 40)}
    # refused into a complete dataset (another one): nothing changes there
    before = days.snapshot(grown.parent / "R")
    code, _, err = _cli(capsys, "--refit", "--schema", str(grown), "--input", str(tmp_path / "day1.csv"),
                        "--out", str(grown.parent / "R"))
    assert code == 2 and "holds a complete dataset (partitions 4)" in err
    assert days.snapshot(grown.parent / "R") == before


# -- stats -----------------------------------------------------------------------------------------
def test_stats_per_partition_match_an_independent_count(grown: Path, capsys) -> None:
    s = compute_stats(grown)
    rows = {d: days.day_rows(d, n) for d, n in ROWS.items()}
    seen_users: set = set()
    vocab = {x["item"] for x in rows[1]}
    for p in s["partitions"]:
        day = rows[p["partition"]]
        assert p["rows"] == len(day) and p["label_rate"] == pytest.approx(np.mean([x["clicked"] for x in day]))
        new_users = sum(x["user"] not in seen_users for x in day)
        f = p["features"]
        if p["partition"] == 1:
            assert p["new_id_rate"] is None and f["user"]["new_id_rate"] is None
        else:
            assert f["user"]["new_id_rate"] == pytest.approx(new_users / len(day))
            assert f["user_m"]["new_id_rate"] == pytest.approx(new_users / len(day))  # raw ids: the same users
        assert f["user"]["new_distinct"] == len({x["user"] for x in day} - seen_users)
        assert f["item"]["oov_rate"] == pytest.approx(sum(x["item"] not in vocab for x in day) / len(day))
        seen_users |= {x["user"] for x in day}
        if p["partition"] > 1:  # pooled over features: new ids of every feature over all of their ids
            pooled = sum(v["new_ids"] for v in f.values()) / sum(v["ids"] for v in f.values())
            assert p["new_id_rate"] == pytest.approx(pooled)
    assert data_main.main(["stats", str(grown)]) == 0
    out = capsys.readouterr().out
    assert "3 partition(s) (1-3), schema fitted on partition 1" in out and "new-id rate" in out
    assert data_main.main(["stats", str(grown), "--json"]) == 0
    assert [p["rows"] for p in json.loads(capsys.readouterr().out)["partitions"]] == list(ROWS.values())


# -- training over partitions -------------------------------------------------------------------------
def _key(batch) -> list[float]:
    return batch.dense_features[:, 0].tolist()


def test_partition_spans_and_the_training_stream(grown: Path) -> None:
    gbs = 8
    data = PartitionedDataset(grown, [1, 2], eval_partition=3, seed=5)
    assert isinstance(data, HasPartitions) and not isinstance(ColumnarDataset.__new__(ColumnarDataset), HasPartitions)
    spans = data.partition_spans(gbs)
    assert spans == [PartitionSpan(1, 0, 40 // gbs, 40, "partition_1"), PartitionSpan(2, 5, 37 // gbs, 37, "partition_2")]
    assert data.splits["train"].rows == 77 and "val" not in data.splits and data.eval_split == "partition_3"
    per_epoch = sum(s.batches for s in spans)
    stream = [_key(b) for b in data.batches("train", gbs, 0, 1, num_batches=2 * per_epoch)]
    dense = {n: np.asarray(_arrays(grown, n).dense)[:, 0] for n in (1, 2)}
    for epoch in range(2):
        for span in spans:  # each partition's full batches, each once per epoch, in time order
            got = stream[epoch * per_epoch + span.start_batch: epoch * per_epoch + span.start_batch + span.batches]
            starts = sorted(int(np.flatnonzero(np.isclose(dense[span.partition], b[0]))[0]) for b in got)
            assert starts == [k * gbs for k in range(span.batches)]
            for b in got:
                lo = int(np.flatnonzero(np.isclose(dense[span.partition], b[0]))[0])
                np.testing.assert_allclose(b, dense[span.partition][lo: lo + gbs], rtol=1e-6)
    assert stream[:per_epoch] != stream[per_epoch:]  # another permutation each epoch
    # every rank reads its slice of the same global batch, at any world size; a resume is the same stream
    for world in (2, 4):
        ranks = [[_key(b) for b in data.batches("train", gbs, r, world, num_batches=per_epoch + 2)] for r in range(world)]
        assert [sum((ranks[r][i] for r in range(world)), []) for i in range(per_epoch + 2)] == stream[:per_epoch + 2]
    resumed = [_key(b) for b in PartitionedDataset(grown, [1, 2], 3, seed=5).batches("train", gbs, 0, 1, 4, start_batch=3)]
    assert resumed == stream[3:7]
    # the eval split and a partition's split: every row, padding labelled -1
    evals = list(data.batches("eval", gbs, 0, 1, data.eval_batch_count(gbs)))
    labels = np.concatenate([b.labels.numpy() for b in evals])
    assert len(evals) == math.ceil(45 / gbs) and (labels[:45] >= 0).all() and (labels[45:] == -1).all()
    one = list(data.batches("partition_2", gbs, 0, 1, math.ceil(37 / gbs)))
    assert np.concatenate([b.labels.numpy() for b in one])[:37].tolist() == np.asarray(_arrays(grown, 2).labels).tolist()
    assert data.bag_lengths()["tags"] == pytest.approx(
        sum(len(x["tags"].split("|")) if x["tags"] else 0 for d in (1, 2) for x in days.day_rows(d, ROWS[d])) / 77)


def test_partition_selection_refusals(grown: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DataError, match=r"holds day partitions \(1-3\).*--data.partitions=1-2 --data.eval_partition=3"):
        ColumnarDataset(grown)
    with pytest.raises(DataError, match=r"partition\(s\) 5,7 do not exist .* it holds partitions 1-3"):
        PartitionedDataset(grown, [1, 5, 7])
    with pytest.raises(DataError, match="leaves no later partition"):
        PartitionedDataset(grown, [1, 2, 3])
    with pytest.raises(DataError, match="eval_partition=9: no such partition .* it holds partitions 1-3"):
        PartitionedDataset(grown, [1], eval_partition=9)
    with pytest.raises(DataError, match="eval_partition=2 is also in data.partitions"):
        PartitionedDataset(grown, [1, 2], eval_partition=2)
    assert PartitionedDataset(grown, [1]).eval_partition == 2  # unset: the next day
    with caplog.at_level(logging.WARNING, logger="dlrm_dist.data.columnar.dataset"):
        assert PartitionedDataset(grown, [1, 3], eval_partition=2).eval_partition == 2  # a past day: allowed, said
    assert "data.eval_partition=2 is earlier than partition 3 the run trains on" in caplog.text
    with pytest.raises(DataError, match="no training partition has a full global batch"):
        next(PartitionedDataset(grown, [1, 2]).batches("train", 64, 0, 1, 1))
    for argv, message in [
        (["--data.partitions=1-2"], "data.partitions applies to data.source = columnar only"),
        (["--data.partitions=1", "--data.eval_partition=3"], "data.eval_partition applies to data.source = columnar"),
        (["--data.eval_partition=3"], "data.eval_partition: needs data.partitions"),
        ([f"--data.data_dir={grown}", "--data.source=columnar", "--data.partitions=1-3", "--data.eval_partition=2"],
         "data.eval_partition: 2 is also in data.partitions='1-3'"),
        ([f"--data.data_dir={grown}", "--data.source=columnar", "--data.partitions=3,1"], "does not come after"),
    ]:
        with pytest.raises(DlrmError, match=message):
            load_config(argv)


def test_build_data_opens_the_partitions_the_config_names(grown: Path) -> None:
    from dlrm_dist.data.resolve import build_data, job_schema

    cfg = load_config(["--data.source=columnar", f"--data.data_dir={grown}", "--data.partitions=1,2"])
    data = build_data(cfg, job_schema(cfg))
    assert isinstance(data, PartitionedDataset) and (data.partitions, data.eval_partition) == ([1, 2], 3)
    # a config copied with another eval split (dlrm-predict --split test) is refused by name, not a traceback
    test = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_split="test"))
    with pytest.raises(DlrmError, match="data.eval_split='test': a run over day partitions .* has no val or test"):
        build_data(test, job_schema(test))


def test_a_row_outside_a_partitions_split_is_a_named_error() -> None:
    """An internal invariant (every row of a partition is "train"), said as the other errors are."""
    from dlrm_dist.data.columnar.job import _NoRows

    writer = _NoRows(7, "val")
    writer.append(np.zeros(4, bool))
    with pytest.raises(PreprocessError, match=r"partition 7: row 6 of the inputs was put in split 'val'"):
        writer.append(np.array([False, True, True]))
