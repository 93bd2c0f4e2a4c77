"""dlrm_dist.fileio: atomic writes, one writer per directory, paths kept inside, full disks named."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from dlrm_dist import fileio


def test_atomic_write_leaves_old_or_new_and_no_temporaries(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    fileio.atomic_write_json(f, {"x": 1})
    fileio.atomic_write_json(f, {"x": 2})
    assert f.read_text() == '{"x": 2}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(ValueError):  # NaN is not JSON: refused, old file kept
        fileio.atomic_write_json(f, {"x": float("nan")})
    assert f.read_text() == '{"x": 2}\n'


def _hold(directory: str, ready: "mp.synchronize.Event", done: "mp.synchronize.Event") -> None:
    with fileio.DirLock(directory, "test holder"):
        ready.set()
        done.wait(30)


def test_second_writer_is_refused_naming_the_holder_and_a_dead_holder_never_blocks(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    p.start()
    try:
        assert ready.wait(60)
        with pytest.raises(fileio.DirectoryBusyError, match=rf"pid {p.pid} on host .*test holder"):
            fileio.DirLock(tmp_path).acquire()
    finally:
        p.kill()  # a dead holder: the kernel drops its flock
        p.join(30)
    with fileio.DirLock(tmp_path) as lock:
        assert lock.held


def test_inside_refuses_escapes(tmp_path: Path) -> None:
    assert fileio.inside(tmp_path, "vocab", "a.json") == (tmp_path / "vocab" / "a.json").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(fileio.UnsafePathError, match="outside"):
            fileio.inside(tmp_path, bad)
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(fileio.UnsafePathError):
        fileio.inside(tmp_path, "link", "x")


def test_disk_full_is_named(tmp_path: Path) -> None:
    with pytest.raises(fileio.DiskFullError, match=r"no space left on .* writing .*f.bin \(needed about 2.0 MB\)"):
        with fileio.disk_full(tmp_path / "f.bin", 2 * 2**20):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(PermissionError):
        with fileio.disk_full(tmp_path / "f.bin"):
            raise PermissionError("other errors pass through")
