"""The shared-memory blocks criteo_tsv.py's workers hand their arrays in (shared_blocks.py): which
blocks a read's sweep removes, what a vanished block says, how freed blocks go back to the workers."""

from __future__ import annotations

import _posixshmem
import os
import queue
import secrets
import signal
from pathlib import Path

import pyarrow as pa
import pytest

from dlrm_dist.data.columnar import criteo_tsv, shared_blocks
from dlrm_dist.data.columnar.columns import BadLines
from dlrm_dist.data.columnar.encode import Days
from dlrm_dist.data.columnar.locate import LINE_FIELD, ORIGIN_FIRST, ORIGIN_PATH
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.errors import interrupt_on_sigterm
from dlrm_dist.features.builtin import criteo_schema

SHM = shared_blocks.SHM_DIR


def _dead_prefix() -> str:
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process of this namespace has it
    return f"dlrm_dist_{dead}_{secrets.token_hex(4)}_"


def _block(name: str) -> None:
    os.close(_posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT, mode=0o600))


def test_a_read_whose_lock_is_held_keeps_its_blocks_whatever_its_pid() -> None:
    """A read in another pid namespace sharing /dev/shm has a pid that is dead here: its blocks are
    kept while its lock is held, and removed with the lock file once it is not."""
    prefix = _dead_prefix()
    lock = shared_blocks.hold_read_lock(prefix)
    _block(prefix + "00")
    try:
        assert shared_blocks.remove_stale_blocks() == 0
        assert (SHM / (prefix + "00")).exists() and (SHM / (prefix + shared_blocks.LOCK)).exists()
    finally:
        os.close(lock)  # the read is gone (killed: its lock file and block stay behind)
    assert shared_blocks.remove_stale_blocks() == 1
    assert not list(SHM.glob(prefix + "*"))


def test_blocks_the_sweep_may_not_remove_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's block in the sticky /dev/shm (unlink refused) is theirs to remove: skipped, not
    a traceback that would stop every later read."""
    prefix = _dead_prefix()
    _block(prefix + "00")
    unlink = _posixshmem.shm_unlink

    def refused(name: str) -> None:
        if name.startswith("/" + prefix):
            raise PermissionError(13, "Permission denied", name)
        unlink(name)

    monkeypatch.setattr(_posixshmem, "shm_unlink", refused)
    try:
        assert shared_blocks.remove_stale_blocks() == 0
    finally:
        monkeypatch.undo()
        unlink("/" + prefix + "00")


def test_a_vanished_block_is_a_named_error() -> None:
    name = _dead_prefix() + "00"
    with pytest.raises(PreprocessError, match=f"{name} of this read vanished"):
        shared_blocks.mapped_block(name)


def test_freed_blocks_reach_the_queue_from_the_reading_loop_only() -> None:
    """A weakref callback (maybe inside the garbage collector) only notes the name; ``drain`` puts it
    on the queue, and not once the read has ended."""
    free: queue.SimpleQueue = queue.SimpleQueue()
    recycle = shared_blocks.Recycler(free)
    recycle("a")
    recycle("b")
    assert free.empty()
    recycle.drain()
    assert [free.get_nowait(), free.get_nowait()] == ["a", "b"]
    recycle("c")
    recycle.open = False
    recycle.drain()
    assert free.empty()


def test_a_freed_block_is_written_again_by_the_next_chunk() -> None:
    """A worker takes a block the reading process handed back (drained onto the queue) before making a new
    one, and writes through the mapping it kept."""
    free: queue.SimpleQueue = queue.SimpleQueue()
    recycle, prefix, specs = shared_blocks.Recycler(free), _dead_prefix(), [("<i4", (8,))]
    first, (a,) = shared_blocks.pooled_block(specs, prefix, free)
    try:
        a[:] = 7
        second, _ = shared_blocks.pooled_block(specs, prefix, free)  # none free yet: a new block
        recycle(first)
        recycle.drain()
        again, (b,) = shared_blocks.pooled_block(specs, prefix, free)
        assert second != first and again == first and b.tolist() == [7] * 8
    finally:
        for name in {first, second}:
            shared_blocks.unlink(name)
            shared_blocks._WORKER_MAPS.pop(name, None)  # noqa: SLF001 - this process is not a worker


def test_a_file_that_grew_after_its_lines_were_counted_is_refused() -> None:
    """Pseudo-days are cut from line counts taken before the read: lines past a file's count would land
    in another file's day (or in train past the last), silently; they are a named error instead."""
    days = Days.cut([Path("a.tsv"), Path("b.tsv")], [10, 5], 3)

    def batch(path: str, lines: list[int]) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array(lines)], names=[LINE_FIELD]).replace_schema_metadata(
            {ORIGIN_PATH: path, ORIGIN_FIRST: "0"})

    assert days.of(batch("a.tsv", [0, 4, 9])).tolist() == [0, 0, 1]
    assert days.of(batch("b.tsv", [0, 4])).tolist() == [2, 2]
    with pytest.raises(PreprocessError, match=r"a.tsv: line 11 is past the 10 lines counted"):
        days.of(batch("a.tsv", [9, 10]))
    with pytest.raises(PreprocessError, match=r"b.tsv: line 6 is past the 5 lines counted"):
        days.of(batch("b.tsv", [5]))


def _killed(chunk: object) -> None:
    """A worker's task that dies as the OOM killer would kill it (pickled by name: forked workers)."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_is_an_error_not_a_read_that_waits_forever(criteo_sample: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("the read waited for a dead worker's task")

    monkeypatch.setattr(criteo_tsv, "_work", _killed)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with pytest.raises(PreprocessError, match="a worker process died"):
            list(criteo_tsv.read_inputs([criteo_sample], criteo_schema(days=7, buckets=100), BadLines(), workers=1))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not list(SHM.glob(f"dlrm_dist_{os.getpid()}_*"))


def _handlers(_: object) -> tuple[object, object]:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_workers_leave_interrupts_to_the_reading_process() -> None:
    """Ctrl-C reaches every process of the group: a worker ignores it (the reading process stops the read and
    terminates the pool), and the pool's SIGTERM ends a worker at once, not by the handler the fork copied."""
    with interrupt_on_sigterm(), criteo_tsv._forked_pool(1) as pool:  # noqa: SLF001
        assert pool.map(_handlers, [0]) == [(signal.SIG_IGN, signal.SIG_DFL)]
