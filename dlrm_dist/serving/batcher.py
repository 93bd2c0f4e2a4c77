"""Micro-batching: concurrent scoring requests queued on the event loop and scored together.

The HTTP server (server.py) hands each request's records to ``MicroBatcher.submit`` and
awaits its own scores. One worker task takes queued requests in arrival order into a batch
until it holds ``max_batch_rows`` rows or the oldest request has waited ``max_wait_ms``,
then makes ONE model call for the whole batch in a worker thread (the event loop keeps
accepting and parsing requests meanwhile), and gives each request its own slice back.
A request is never split: one larger than ``max_batch_rows`` is scored alone.

Record problems (a missing column, an unparsable cell) are the requests' own: the model
call names the rows it refused by their index in the batch; each request that holds such
a row fails with its problems re-indexed within that request (``RecordsRejected``), and the
others are scored again without it, so one bad request never fails its neighbours.

Only asyncio, numpy and the standard library: the scoring function is injected.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

Records = Sequence[Mapping[str, Any]]
ScoreFn = Callable[[Records], np.ndarray]
# An exception's record problems (objects with a 0-based ``.record`` index into the scored
# list), or None when the exception is not about records.
ProblemsOf = Callable[[BaseException], Optional[list[Any]]]


class RecordsRejected(Exception):
    """Some of one request's records were refused: ``problems`` as (index in the request, problem)."""

    def __init__(self, problems: list[tuple[int, Any]]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the request's records")
        self.problems = problems


class BatcherClosed(Exception):
    """The server is shutting down: no new request is taken."""


@dataclass
class _Request:
    records: Records
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchCounts:
    """What the batcher has done so far (for /metadata and the tests)."""

    batches: int = 0
    model_calls: int = 0
    rows: int = 0
    requests: int = 0


class MicroBatcher:
    """Gathers concurrent ``submit`` calls into model calls of at most ``max_batch_rows`` rows.

    ``start()`` and ``close()`` run on the serving event loop (the app's lifespan);
    ``close()`` scores everything already queued, then stops the worker and its thread.
    """

    def __init__(self, score: ScoreFn, problems_of: ProblemsOf, max_batch_rows: int, max_wait_ms: float) -> None:
        if max_batch_rows < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch_rows {max_batch_rows} must be >= 1 and max_wait_ms {max_wait_ms} >= 0")
        self._score = score
        self._problems_of = problems_of
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self.counts = BatchCounts()
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        self._arrived: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None
        self._closing = False
        # One model call at a time: torch already spreads one call over the cores.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlrm-serve-score")

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done() and not self._closing

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="dlrm-serve-batcher")

    async def close(self) -> None:
        """Scores what is queued, then stops (new submits get BatcherClosed)."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._worker is not None:
            await self._worker
        self._thread.shutdown(wait=True)

    async def submit(self, records: Records) -> np.ndarray:
        """The scores of ``records`` (float64, one per record), scored with whatever else is queued."""
        if not self.running:
            raise BatcherClosed("the server is shutting down")
        if not records:
            return np.zeros(0, dtype=np.float64)
        request = _Request(records, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued_rows += len(records)
        assert self._arrived is not None
        self._arrived.set()
        return await request.future

    # -- the worker ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while self._queue or not self._closing:
            batch = await self._collect()
            try:
                await self._score_batch(batch)
            except Exception as error:  # noqa: BLE001 - a fault here must not leave requests waiting forever
                logger.exception("the batcher failed on a batch of %d request(s)", len(batch))
                for r in batch:
                    self._fail(r, error, None)

    async def _collect(self) -> list[_Request]:
        """The next batch: waits for a first request, then until the batch is full or the oldest's wait is up."""
        assert self._arrived is not None
        while not self._queue:
            if self._closing:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._queue[0].arrived + self.max_wait_s
        while self._queued_rows < self.max_batch_rows and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self._take()

    def _take(self) -> list[_Request]:
        """Queued requests in arrival order, as many as fit in one batch (always at least one)."""
        batch = [self._queue.popleft()]
        rows = len(batch[0].records)
        while self._queue and rows + len(self._queue[0].records) <= self.max_batch_rows:
            batch.append(self._queue.popleft())
            rows += len(batch[-1].records)
        self._queued_rows -= rows
        return batch

    async def _score_batch(self, batch: list[_Request]) -> None:
        if not batch:
            return
        waited = time.monotonic() - batch[0].arrived
        started = time.monotonic()
        pending = [r for r in batch if not r.future.done()]  # a client that went away is not scored
        calls = 0
        while pending:
            calls += 1
            try:
                scores = await self._call([rec for r in pending for rec in r.records])
            except Exception as error:  # noqa: BLE001 - every failure goes to the requests it concerns
                rest = self._reject(pending, error)
                if rest is None:  # the error names no row we can place: each request meets its own
                    calls += await self._score_each(pending)
                    break
                pending = rest
                continue
            self._deliver(pending, scores)
            break
        self.counts.batches += 1
        self.counts.model_calls += calls
        self.counts.rows += sum(len(r.records) for r in batch)
        self.counts.requests += len(batch)
        logger.debug("batch: %d request(s), %d row(s), %d model call(s), oldest waited %.1f ms, scored in %.1f ms",
                     len(batch), sum(len(r.records) for r in batch), calls, waited * 1e3,
                     (time.monotonic() - started) * 1e3)

    async def _call(self, records: Records) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._score, records)

    async def _score_each(self, pending: list[_Request]) -> int:
        for r in pending:
            try:
                self._deliver([r], await self._call(r.records))
            except Exception as error:  # noqa: BLE001
                self._fail(r, error, self._problems_of(error))
        return len(pending)

    @staticmethod
    def _deliver(pending: list[_Request], scores: np.ndarray) -> None:
        start = 0
        for r in pending:
            end = start + len(r.records)
            if not r.future.done():
                r.future.set_result(np.asarray(scores[start:end], dtype=np.float64))
            start = end

    def _reject(self, pending: list[_Request], error: Exception) -> Optional[list[_Request]]:
        """Fails the requests ``error`` is about and returns the others (to score again), or None.

        A record error names rows by their index in the batch: each request holding one fails
        with its own rows' problems. None when the error places no row (it is not about
        records, or names an index outside the batch) and more than one request is pending.
        """
        problems = self._problems_of(error)
        if len(pending) == 1:
            self._fail(pending[0], error, problems)
            return []
        starts = np.cumsum([0] + [len(r.records) for r in pending])
        owned: dict[int, list[tuple[int, Any]]] = {}
        for p in problems or []:
            index = getattr(p, "record", None)
            if not isinstance(index, int) or not 0 <= index < starts[-1]:
                return None
            owner = int(np.searchsorted(starts, index, side="right")) - 1
            owned.setdefault(owner, []).append((index - int(starts[owner]), p))
        if not owned:
            return None
        for owner, mine in owned.items():
            self._fail(pending[owner], error, [p for _, p in mine], [i for i, _ in mine])
        return [r for i, r in enumerate(pending) if i not in owned]

    @staticmethod
    def _fail(request: _Request, error: Exception, problems: Optional[list[Any]],
              indexes: Optional[list[int]] = None) -> None:
        """``request`` fails with ``error`` or, given its problems, with RecordsRejected (``indexes``:
        each problem's row within the request; by default the problem's own ``record``)."""
        if request.future.done():
            return
        if problems is None:
            request.future.set_exception(error)
            return
        rows = indexes if indexes is not None else [getattr(p, "record", 0) for p in problems]
        request.future.set_exception(RecordsRejected(list(zip(rows, problems))))
