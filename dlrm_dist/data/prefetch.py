"""Batches made off the training thread: a bounded queue filled by a background thread.

The producer runs the source iterator unchanged (the same batches in the same order, so
which samples a rank sees does not change); numpy's generators and copies release the
GIL, so building the next batches overlaps the model's step. On CUDA the producer pins
each batch's memory, so TorchRec's pipeline can copy it to the device without blocking.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

_DONE = object()


class Prefetcher:
    """Iterates ``source`` ``depth`` items ahead in a daemon thread; errors re-raise here."""

    def __init__(self, source: Iterator[Any], depth: int = 2, pin_memory: bool = False) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source, pin_memory), daemon=True,
                                        name="dlrm_dist-prefetch")
        self._thread.start()

    def _run(self, source: Iterator[Any], pin_memory: bool) -> None:
        try:
            for item in source:
                if not self._put(item.pin_memory() if pin_memory else item):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(e)

    def _put(self, item: Any) -> bool:
        """Queues ``item`` unless stopped first (then False); never blocks past a ``close``."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stops the producer (an abandoned iterator must not keep a thread running)."""
        self._stop.set()
        self._thread.join(timeout=5)
