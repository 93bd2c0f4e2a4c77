"""Per-rank step time: what the rank's device spent, not when the host finished enqueuing.

On CUDA the host runs ahead of the GPU (kernels are queued), so host time over a log window
measures the enqueueing, and the slowest rank's GPU is invisible until a collective waits for
it. ``WindowTimer`` brackets a window with CUDA events on the rank's stream and reads their
elapsed time once per window, right before the gather that syncs anyway; on the CPU it is
host time.
"""

from __future__ import annotations

import time
from typing import Any

import torch


class WindowTimer:
    """``start()`` at a window's beginning, ``elapsed_s()`` at its end (also restarts the window)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._start: Any = None

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._start = self._mark()

    def elapsed_s(self) -> float:
        end = self._mark()
        if self.cuda:
            end.synchronize()  # the window's kernels are done: the one wait per log interval
            seconds = self._start.elapsed_time(end) / 1000.0
        else:
            seconds = end - self._start
        self._start = end
        return seconds
