"""NpyWriter starts the disk's writeback as it goes (the final fsync then waits for little)."""

from __future__ import annotations

import numpy as np

from dlrm_dist.data import npy


def test_writeback_is_started_as_the_file_grows_and_the_file_is_unchanged(tmp_path, monkeypatch) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(npy, "start_writeback", lambda fd, offset, length: started.append((offset, length)))
    rows = np.arange(npy.WRITEBACK_EVERY * 3 // 2 // 8, dtype=np.int64)  # 1.5 times the step a block
    w = npy.NpyWriter(tmp_path / "a.npy", np.int64, ())
    for _ in range(3):
        w.append(rows)
    w.close()
    header = 128
    assert started == [(0, header + rows.nbytes), (header + rows.nbytes, rows.nbytes), (header + 2 * rows.nbytes, rows.nbytes)]
    assert np.array_equal(np.load(tmp_path / "a.npy", mmap_mode="r")[-len(rows):], rows)


def test_the_real_call_is_harmless(tmp_path) -> None:
    with open(tmp_path / "b", "wb") as f:
        f.write(b"x" * 4096)
        npy.start_writeback(f.fileno(), 0, 4096)
        npy.start_writeback(f.fileno(), 1 << 40, 10)  # beyond the end: nothing to write
    assert (tmp_path / "b").read_bytes() == b"x" * 4096
