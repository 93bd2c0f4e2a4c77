"""Jobs that must run one after another, on a shared thread pool, without a thread waiting.

staging.py stages each vocabulary table's values batch after batch through one interner, which
is not thread-safe and gives ids in order of first sight: a table's jobs must run one at a time,
in batch order. Waiting for them batch by batch (all tables of batch k before any of batch k+1)
leaves a core idle while the largest table finishes. ``Serial`` keeps a queue per table instead:
its next job is handed to the pool when the previous one ends, so the pool's threads go on with
other tables' jobs, of later batches too, meanwhile.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Executor, Future
from typing import Any, Callable


class Serial:
    """Runs the jobs given to ``submit`` on ``pool`` one after another, in the order submitted,
    never two at once. A job cancelled (its Future's ``cancel``) while queued never runs; once
    handed to the pool (the one before it ended) it is running and cannot be cancelled, so the
    pool must run every job it takes (no ``shutdown(cancel_futures=True)`` while jobs are queued:
    a job the pool drops would be running for ever)."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._queue: deque[tuple[Future, Callable[..., Any], tuple]] = deque()
        self._busy = False  # a job of this queue is on the pool (running or waiting for a thread)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)``'s Future: it runs once every job submitted before it has ended."""
        job: Future = Future()
        with self._lock:
            self._queue.append((job, fn, args))
            if self._busy:
                return job
            self._busy = True
        self._next()
        return job

    def _next(self) -> None:
        with self._lock:
            # A cancelled job is done only once told so (until then concurrent.futures.wait does not
            # count it): it is told here, in its turn, and nothing is handed on for it.
            while self._queue and not self._queue[0][0].set_running_or_notify_cancel():
                self._queue.popleft()
            if not self._queue:
                self._busy = False
                return
            item = self._queue.popleft()
        try:
            self.pool.submit(self._run, *item)
        except BaseException as e:  # (a pool shut down: this job and those queued fail, none is left waiting)
            with self._lock:
                queued, self._queue, self._busy = [item, *self._queue], deque(), False
            for job, _, _ in queued:
                if job is item[0] or job.set_running_or_notify_cancel():
                    job.set_exception(e)
            raise

    def _run(self, job: Future, fn: Callable[..., Any], args: tuple) -> None:
        """Runs a job already marked running (``_next``), then hands on the next."""
        try:
            job.set_result(fn(*args))
        except BaseException as e:  # (the caller's wait sees it, as a pool job's would)
            job.set_exception(e)
        finally:
            self._next()
