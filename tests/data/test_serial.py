"""serial.Serial: a queue's jobs run one at a time in order on a shared pool, none waits for a thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from dlrm_dist.data.columnar.serial import Serial


def test_a_queues_jobs_run_in_order_one_at_a_time_while_other_queues_run() -> None:
    running, ran, lock = {0: 0, 1: 0}, {0: [], 1: []}, threading.Lock()
    overlap = []

    def job(q: int, k: int) -> int:
        with lock:
            running[q] += 1
            overlap.append(running[q] > 1)
        time.sleep(0.002)
        with lock:
            ran[q].append(k)
            running[q] -= 1
        return k * k

    with ThreadPoolExecutor(max_workers=4) as pool:
        queues = [Serial(pool), Serial(pool)]
        jobs = [(k, queues[k % 2].submit(job, k % 2, k)) for k in range(40)]
        wait([j for _, j in jobs], timeout=30)
    assert [j.result() for _, j in jobs] == [k * k for k, _ in jobs]
    assert ran == {0: list(range(0, 40, 2)), 1: list(range(1, 40, 2))} and not any(overlap)


def test_a_cancelled_job_never_runs_and_a_failed_one_does_not_stop_the_queue() -> None:
    gate, ran = threading.Event(), []
    with ThreadPoolExecutor(max_workers=1) as pool:
        q = Serial(pool)
        first = q.submit(lambda: gate.wait(timeout=30) and ran.append("first"))
        failing = q.submit(lambda: 1 / 0)
        dropped = q.submit(ran.append, "dropped")
        last = q.submit(ran.append, "last")
        assert dropped.cancel()  # (queued behind the running one: not started)
        gate.set()
        wait([first, failing, dropped, last], timeout=30)
    assert ran == ["first", "last"] and dropped.cancelled()
    with pytest.raises(ZeroDivisionError):
        failing.result()


def test_a_pool_shut_down_fails_the_queued_jobs_instead_of_leaving_them_waiting() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    q = Serial(pool)
    first = q.submit(gate.wait, 30)
    queued = [q.submit(time.sleep, 0) for _ in range(3)]
    pool.shutdown(wait=False)  # (the running job hands the next on to a pool that takes no more)
    gate.set()
    wait([first, *queued], timeout=30)
    assert first.result() is True
    for job in queued:
        with pytest.raises(RuntimeError, match="shutdown"):
            job.result()
